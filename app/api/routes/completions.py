"""POST /v1/completions: text in, text out; the task's input template applies to string prompts."""

from __future__ import annotations

import time
import uuid
from typing import Any

from app.api.deps import ApiKeyDep, ServicesDep
from app.api.errors import ApiError
from app.api.generation import (
    Target,
    check_supported,
    choice_index,
    collect,
    fan_out,
    finish_text,
    resolve_target,
    sampling_params,
    sse_events,
    submit,
)
from app.api.render import completion_logprobs
from app.api.routes.common import ERRORS
from app.api.schemas import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    PromptInput,
    Usage,
)
from app.engine import RequestOutput
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

router = APIRouter(dependencies=[ApiKeyDep], tags=["inference"])


def _prompts(
    tokenizer: Any, prompt: PromptInput, target: Target
) -> tuple[list[str], list[tuple[int, ...]]]:
    """Returns (the prompt texts, for echo; the token ids)."""
    items: list[str] | list[list[int]] | list[int]
    items = [prompt] if isinstance(prompt, str) else prompt
    if not items:
        raise ApiError(400, "prompt must not be empty", param="prompt")
    batch: list[str | list[int]] = (
        [[int(t) for t in items]] if all(isinstance(p, int) for p in items) else list(items)  # type: ignore[arg-type]
    )
    texts, ids = [], []
    for item in batch:
        if isinstance(item, str):
            text = target.meta.apply_template(item)
            texts.append(text)
            ids.append(tuple(tokenizer(text)["input_ids"]))
        elif isinstance(item, list):
            texts.append(str(tokenizer.decode(item)))
            ids.append(tuple(item))
        else:
            raise ApiError(
                400, "prompt must be a string, a list of strings, or token ids", param="prompt"
            )
    return texts, ids


@router.post("/v1/completions", response_model=CompletionResponse, responses=ERRORS)
async def create_completion(
    body: CompletionRequest, request: Request, services: ServicesDep
) -> Any:
    settings, tokenizer = services.settings, services.base.tokenizer
    target = resolve_target(services, body.model)
    check_supported(body, settings.max_n)
    if body.suffix:
        raise ApiError(400, "suffix is not supported", param="suffix")
    if body.best_of not in (None, body.n):
        raise ApiError(400, "best_of must equal n", param="best_of")
    if body.logprobs is not None and body.logprobs > settings.max_logprobs:
        raise ApiError(400, f"logprobs must be <= {settings.max_logprobs}", param="logprobs")
    if body.echo and body.logprobs is not None:
        raise ApiError(400, "echo together with logprobs is not supported", param="echo")
    texts, prompts = _prompts(tokenizer, body.prompt, target)
    params = sampling_params(
        body,
        target.meta,
        max_tokens=body.max_tokens,
        default_max_tokens=settings.default_max_tokens,
        logprobs=body.logprobs,
    )
    requests = fan_out(prompts, body.n, params, target.soft_prompt)
    submission = submit(services, requests)
    response_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    echo = [texts[i // body.n] if body.echo else "" for i in range(len(requests))]

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        return CompletionResponse(
            id=response_id,
            created=created,
            model=target.name,
            system_fingerprint=target.fingerprint,
            choices=choices,
            usage=usage,
        ).model_dump_json()

    if body.stream:
        started: set[int] = set()
        completion_tokens = [0] * len(requests)

        def render(out: RequestOutput) -> list[str]:
            i = choice_index(out.request_id)
            completion_tokens[i] = out.completion_tokens
            text = out.text if i in started else echo[i] + out.text
            started.add(i)
            if not text and out.finish_reason is None and not out.logprobs:
                return []
            logprobs = (
                completion_logprobs(tokenizer, list(out.logprobs))
                if body.logprobs is not None
                else None
            )
            return [
                chunk(
                    [
                        CompletionChoice(
                            index=i,
                            text=text,
                            logprobs=logprobs,
                            finish_reason=finish_text(out.finish_reason),
                        )
                    ]
                )
            ]

        def closing() -> list[str]:
            if not (body.stream_options and body.stream_options.include_usage):
                return []
            used = sum(len(p) for p in prompts)
            return [
                chunk(
                    [],
                    Usage(
                        prompt_tokens=used,
                        completion_tokens=sum(completion_tokens),
                        total_tokens=used + sum(completion_tokens),
                    ),
                )
            ]

        return StreamingResponse(
            sse_events(submission, render, closing), media_type="text/event-stream"
        )

    results = await collect(submission, request, len(requests))
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
    used, made = sum(len(p) for p in prompts), sum(len(r.token_ids) for r in results)
    return CompletionResponse(
        id=response_id,
        created=created,
        model=target.name,
        system_fingerprint=target.fingerprint,
        choices=choices,
        usage=Usage(prompt_tokens=used, completion_tokens=made, total_tokens=used + made),
    )
