"""The registry over HTTP: list, inspect, create/replace (multipart PUT) and delete prompts."""

from __future__ import annotations

import asyncio
from typing import Annotated

from app.api.admin import AdminDep
from app.api.deps import ApiKeyDep, ServicesDep
from app.api.errors import ApiError
from app.api.routes.common import ERRORS
from app.api.schemas import PromptDeleted, PromptInfo, PromptList, SkippedInfo
from app.registry import (
    InvalidPrompt,
    PromptEntry,
    PromptFiles,
    StoreUnavailable,
    UnknownTask,
    WriteConflict,
    validate_task_name,
)
from fastapi import APIRouter, File, Request, Response, UploadFile

router = APIRouter(dependencies=[ApiKeyDep], tags=["prompts"])

CONFIG, TENSOR, TASK = "adapter_config.json", "adapter_model.safetensors", "task.json"
ADMIN_ERRORS = {
    **ERRORS,
    403: ERRORS[401] | {"description": "not allowed to change prompts"},
    409: ERRORS[401] | {"description": "another writer changed the task at the same time"},
}


def info(entry: PromptEntry) -> PromptInfo:
    return PromptInfo(
        id=entry.name,
        kind=entry.kind.value,
        num_virtual_tokens=entry.num_virtual_tokens,
        version=entry.version,
        sha256=entry.sha256,
        created=int(entry.created),
        description=entry.meta.description,
        system_prompt=entry.meta.system_prompt is not None,
        template=entry.meta.template,
        labels=list(entry.meta.labels),
    )


def _task(task: str) -> str:
    try:
        return validate_task_name(task)
    except InvalidPrompt as exc:
        raise ApiError(400, str(exc), param="task", code="invalid_task_name") from None


def _unknown(task: str) -> ApiError:
    return ApiError(404, f"no prompt named '{task}'", param="task", code="prompt_not_found")


def _store_error(exc: WriteConflict | StoreUnavailable) -> ApiError:
    if isinstance(exc, WriteConflict):  # a bucket shared by replicas: the other write won
        return ApiError(409, str(exc), param="task", code="write_conflict")
    return ApiError(
        503,
        f"the prompt store is unavailable: {exc}",
        code="store_unavailable",
        headers={"Retry-After": "1"},
    )


@router.get("/v1/prompts", response_model=PromptList, responses=ERRORS)
async def list_prompts(services: ServicesDep) -> PromptList:
    registry = services.registry
    return PromptList(
        data=[info(e) for e in registry.entries()],
        skipped=[SkippedInfo(path=s.path, reason=s.reason) for s in registry.skipped],
    )


@router.get("/v1/prompts/{task}", response_model=PromptInfo, responses=ERRORS)
async def get_prompt(task: str, services: ServicesDep) -> PromptInfo:
    try:
        return info(services.registry.get(_task(task)))
    except UnknownTask:
        raise _unknown(task) from None


async def _read(upload: UploadFile | None, limit: int) -> bytes | None:
    if upload is None:
        return None
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(
            413,
            f"{upload.filename or 'file'} is over the {limit}-byte limit",
            param=upload.filename,
        )
    return data


@router.put(
    "/v1/prompts/{task}",
    response_model=PromptInfo,
    status_code=201,
    responses={**ADMIN_ERRORS, 200: {"model": PromptInfo, "description": "replaced"}},
    dependencies=[AdminDep],
)
async def put_prompt(
    task: str,
    request: Request,
    response: Response,
    services: ServicesDep,
    adapter_config: Annotated[
        UploadFile, File(alias=CONFIG, description="PEFT adapter_config.json")
    ],
    adapter_model: Annotated[
        UploadFile, File(alias=TENSOR, description="PEFT adapter_model.safetensors")
    ],
    task_json: Annotated[
        UploadFile | None, File(alias=TASK, description="optional task.json")
    ] = None,
) -> PromptInfo:
    """Create or replace a task. Validated completely before anything is written; persisted
    atomically; servable when this returns. Running requests finish on the version they hold."""
    name = _task(task)
    extra = sorted(set((await request.form()).keys()) - {CONFIG, TENSOR, TASK})
    if extra:
        hint = (
            " (pickle files are never accepted)" if any(e.endswith(".bin") for e in extra) else ""
        )
        raise ApiError(400, f"unexpected form fields {extra}{hint}", param=extra[0])
    limits = services.registry.limits
    files = PromptFiles(
        adapter_config=await _read(adapter_config, limits.max_config_bytes) or b"",
        adapter_model=await _read(adapter_model, limits.max_tensor_bytes) or b"",
        task=await _read(task_json, limits.max_config_bytes),
    )
    try:
        written = await asyncio.to_thread(services.registry.write, name, files)
    except InvalidPrompt as exc:
        raise ApiError(400, str(exc), param=exc.param, code="invalid_prompt") from None
    except (WriteConflict, StoreUnavailable) as exc:
        raise _store_error(exc) from None
    response.status_code = 201 if written.created else 200
    return info(written.entry)


@router.delete(
    "/v1/prompts/{task}",
    response_model=PromptDeleted,
    responses=ADMIN_ERRORS,
    dependencies=[AdminDep],
)
async def delete_prompt(task: str, services: ServicesDep) -> PromptDeleted:
    name = _task(task)
    try:
        await asyncio.to_thread(services.registry.delete, name)
    except UnknownTask:
        raise _unknown(task) from None
    except (WriteConflict, StoreUnavailable) as exc:
        raise _store_error(exc) from None
    return PromptDeleted(id=name, deleted=True)
