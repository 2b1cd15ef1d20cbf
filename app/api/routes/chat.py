"""POST /v1/chat/completions: the model's chat template; the soft prompt goes before it."""

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
from app.api.inputs import chat_prompts
from app.api.logprobs import chat_logprobs
from app.api.routes.common import ERRORS
from app.api.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    Usage,
)
from app.api.state import Runtime, Services
from app.api.tracking import Tracker
from app.engine import RequestOutput
from fastapi import APIRouter, Request

router = APIRouter(dependencies=[ApiKeyDep], tags=["inference"])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**ERRORS, 408: ERRORS[503]},
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, runtime: RuntimeDep, services: ServicesDep
) -> Any:
    return await tracked(
        runtime, "chat", lambda tracker: _chat(body, request, runtime, services, tracker)
    )


async def _chat(
    body: ChatCompletionRequest,
    request: Request,
    runtime: Runtime,
    services: Services,
    tracker: Tracker,
) -> Any:
    settings, tokenizer = services.settings, services.base.tokenizer
    check_supported(body, settings.max_n)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
    if (body.top_logprobs or 0) > settings.max_logprobs:
        raise ApiError(
            400, f"top_logprobs must be <= {settings.max_logprobs}", param="top_logprobs"
        )
    tracker.model = body.model
    target = resolve_target(services, body.model)
    tracker.task = target.name
    rendered = chat_prompts(tokenizer, body.messages, target.meta.style)
    tracker.prompt_text, prompt = rendered.texts[0], rendered.ids[0]
    tracker.prompt_tokens = len(prompt)
    params = sampling_params(
        body,
        target.meta,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        default_max_tokens=settings.default_chat_max_tokens,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )
    requests = fan_out(
        [prompt],
        body.n,
        params,
        target.soft_prompt,
        deadline(tracker, body, settings.request_timeout_s),
    )
    submission = submit(services, requests, runtime)
    response_id, created = f"chatcmpl-{tracker.request_id}", int(time.time())

    def usage() -> Usage:
        made = tracker.completion_tokens
        return Usage(
            prompt_tokens=len(prompt), completion_tokens=made, total_tokens=len(prompt) + made
        )

    if body.stream:
        started: set[int] = set()

        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
            return ChatCompletionChunk(
                id=response_id,
                created=created,
                model=target.name,
                system_fingerprint=target.fingerprint,
                choices=choices,
                usage=usage,
            ).model_dump_json()

        def render(out: RequestOutput) -> list[str]:
            i = choice_index(out.request_id)
            chunks = []
            if i not in started:
                started.add(i)
                chunks.append(
                    chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
                )
            logprobs = chat_logprobs(tokenizer, list(out.logprobs)) if body.logprobs else None
            if out.text or logprobs:
                chunks.append(
                    chunk(
                        [
                            ChatChunkChoice(
                                index=i, delta=ChatDelta(content=out.text), logprobs=logprobs
                            )
                        ]
                    )
                )
            if out.finish_reason is not None:
                done = ChatChunkChoice(
                    index=i, delta=ChatDelta(), finish_reason=finish_text(out.finish_reason)
                )
                chunks.append(chunk([done]))
            return chunks

        def closing() -> list[str]:
            wanted = body.stream_options and body.stream_options.include_usage
            return [chunk([], usage())] if wanted else []

        return stream(submission, tracker, render, closing)

    results = await collect(submission, request, len(requests), tracker)
    choices = [
        ChatChoice(
            index=i,
            message=AssistantMessage(content=r.text),
            logprobs=chat_logprobs(tokenizer, r.logprobs) if body.logprobs else None,
            finish_reason=finish_text(r.finish_reason) or "stop",
        )
        for i, r in enumerate(results)
    ]
    tracker.finish(200, choices[0].finish_reason)
    return ChatCompletionResponse(
        id=response_id,
        created=created,
        model=target.name,
        system_fingerprint=target.fingerprint,
        choices=choices,
        usage=usage(),
    )
