"""POST /v1/chat/completions: the model's chat template; the soft prompt goes before it."""

from __future__ import annotations

import time
from typing import Any

from app.api.deps import ApiKeyDep, RuntimeDep, ServicesDep
from app.api.errors import ApiError
from app.api.generation import (
    Target,
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
from app.api.render import chat_logprobs
from app.api.routes.common import ERRORS
from app.api.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessage,
    Usage,
)
from app.api.state import Runtime, Services
from app.api.tracking import Tracker
from app.engine import RequestOutput
from fastapi import APIRouter, Request

router = APIRouter(dependencies=[ApiKeyDep], tags=["inference"])


def chat_prompt(
    tokenizer: Any, messages: list[ChatMessage], target: Target
) -> tuple[str, tuple[int, ...]]:
    turns = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in messages
    ]
    # A persona task's system prompt applies unless the caller brought their own.
    if target.meta.system_prompt and not any(t["role"] == "system" for t in turns):
        turns.insert(0, {"role": "system", "content": target.meta.system_prompt})
    if not tokenizer.chat_template:
        raise ApiError(
            400, "the base model has no chat template: use /v1/completions", param="messages"
        )
    try:
        text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # template errors (e.g. roles the template refuses)
        raise ApiError(400, f"chat template failed: {exc}", param="messages") from None
    return text, tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


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
    tracker.prompt_text, prompt = chat_prompt(tokenizer, body.messages, target)
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
