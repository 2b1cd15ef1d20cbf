"""POST /v1/completions: text in, text out; the task's input template applies to string prompts."""

from __future__ import annotations

import time
from typing import Any

from app.api.deps import ApiKeyDep, RuntimeDep, ServicesDep
from app.api.errors import ApiError
from app.api.generation import (
    check_supported,
    choice_index,
    collect,
    deadline,
    fan_out,
    finish_text,
    resolve_target,
    sampling_params,
    stream,
    submit,
    tracked,
)
from app.api.inputs import completion_prompts
from app.api.logprobs import completion_logprobs
from app.api.routes.common import ERRORS
from app.api.schemas import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Usage,
)
from app.api.state import Runtime, Services
from app.api.tracking import Tracker
from app.engine import RequestOutput
from fastapi import APIRouter, Request

router = APIRouter(dependencies=[ApiKeyDep], tags=["inference"])


def _check(body: CompletionRequest, max_n: int, max_logprobs: int) -> None:
    check_supported(body, max_n)
    if body.suffix:
        raise ApiError(400, "suffix is not supported", param="suffix")
    if body.best_of not in (None, body.n):
        raise ApiError(400, "best_of must equal n", param="best_of")
    if body.logprobs is not None and body.logprobs > max_logprobs:
        raise ApiError(400, f"logprobs must be <= {max_logprobs}", param="logprobs")
    if body.echo and body.logprobs is not None:
        raise ApiError(400, "echo together with logprobs is not supported", param="echo")


@router.post(
    "/v1/completions", response_model=CompletionResponse, responses={**ERRORS, 408: ERRORS[503]}
)
async def create_completion(
    body: CompletionRequest, request: Request, runtime: RuntimeDep, services: ServicesDep
) -> Any:
    return await tracked(
        runtime, "completions", lambda tracker: _complete(body, request, runtime, services, tracker)
    )


async def _complete(
    body: CompletionRequest,
    request: Request,
    runtime: Runtime,
    services: Services,
    tracker: Tracker,
) -> Any:
    settings, tokenizer = services.settings, services.base.tokenizer
    _check(body, settings.max_n, settings.max_logprobs)
    tracker.model = body.model
    target = resolve_target(services, body.model)
    tracker.task = target.name
    rendered = completion_prompts(tokenizer, body.prompt, target.meta.style)
    texts, prompts = list(rendered.texts), list(rendered.ids)
    tracker.prompt_tokens = sum(len(p) for p in prompts)
    tracker.prompt_text = "\n".join(texts)
    params = sampling_params(
        body,
        target.meta,
        max_tokens=body.max_tokens,
        default_max_tokens=settings.default_max_tokens,
        logprobs=body.logprobs,
    )
    requests = fan_out(
        prompts,
        body.n,
        params,
        target.soft_prompt,
        deadline(tracker, body, settings.request_timeout_s),
    )
    submission = submit(services, requests, runtime)
    created = int(time.time())
    echo = [texts[i // body.n] if body.echo else "" for i in range(len(requests))]

    def response(choices: list[CompletionChoice], usage: Usage | None) -> CompletionResponse:
        return CompletionResponse(
            id=f"cmpl-{tracker.request_id}",
            created=created,
            model=target.name,
            system_fingerprint=target.fingerprint,
            choices=choices,
            usage=usage,
        )

    def usage() -> Usage:
        used = tracker.prompt_tokens
        return Usage(
            prompt_tokens=used,
            completion_tokens=tracker.completion_tokens,
            total_tokens=used + tracker.completion_tokens,
        )

    if body.stream:
        started: set[int] = set()

        def render(out: RequestOutput) -> list[str]:
            i = choice_index(out.request_id)
            text = out.text if i in started else echo[i] + out.text
            started.add(i)
            if not text and out.finish_reason is None and not out.logprobs:
                return []
            logprobs = (
                completion_logprobs(tokenizer, list(out.logprobs))
                if body.logprobs is not None
                else None
            )
            choice = CompletionChoice(
                index=i, text=text, logprobs=logprobs, finish_reason=finish_text(out.finish_reason)
            )
            return [response([choice], None).model_dump_json()]

        def closing() -> list[str]:
            wanted = body.stream_options and body.stream_options.include_usage
            return [response([], usage()).model_dump_json()] if wanted else []

        return stream(submission, tracker, render, closing)

    results = await collect(submission, request, len(requests), tracker)
    choices = [
        CompletionChoice(
            index=i,
            text=echo[i] + r.text,
            logprobs=completion_logprobs(tokenizer, r.logprobs, len(echo[i]))
            if body.logprobs is not None
            else None,
            finish_reason=finish_text(r.finish_reason),
        )
        for i, r in enumerate(results)
    ]
    tracker.finish(200, choices[0].finish_reason)
    return response(choices, usage())
