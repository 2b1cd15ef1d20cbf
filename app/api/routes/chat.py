"""POST /v1/chat/completions: the model's chat template; the soft prompt goes before it."""

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
from app.engine import RequestOutput
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

router = APIRouter(dependencies=[ApiKeyDep], tags=["inference"])


def chat_prompt(tokenizer: Any, messages: list[ChatMessage], target: Target) -> tuple[int, ...]:
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
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, services: ServicesDep
) -> Any:
    settings, tokenizer = services.settings, services.base.tokenizer
    target = resolve_target(services, body.model)
    check_supported(body, settings.max_n)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
    if (body.top_logprobs or 0) > settings.max_logprobs:
        raise ApiError(
            400, f"top_logprobs must be <= {settings.max_logprobs}", param="top_logprobs"
        )
    prompt = chat_prompt(tokenizer, body.messages, target)
    params = sampling_params(
        body,
        target.meta,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        default_max_tokens=settings.default_chat_max_tokens,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )
    requests = fan_out([prompt], body.n, params, target.soft_prompt)
    submission = submit(services, requests)
    response_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    if body.stream:
        started: set[int] = set()
        completion_tokens = [0] * len(requests)

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
            completion_tokens[i] = out.completion_tokens
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
                chunks.append(
                    chunk(
                        [
                            ChatChunkChoice(
                                index=i,
                                delta=ChatDelta(),
                                finish_reason=finish_text(out.finish_reason),
                            )
                        ]
                    )
                )
            return chunks

        def closing() -> list[str]:
            if not (body.stream_options and body.stream_options.include_usage):
                return []
            made = sum(completion_tokens)
            return [
                chunk(
                    [],
                    Usage(
                        prompt_tokens=len(prompt),
                        completion_tokens=made,
                        total_tokens=len(prompt) + made,
                    ),
                )
            ]

        return StreamingResponse(
            sse_events(submission, render, closing), media_type="text/event-stream"
        )

    results = await collect(submission, request, len(requests))
    choices = [
        ChatChoice(
            index=i,
            message=AssistantMessage(content=r.text),
            logprobs=chat_logprobs(tokenizer, r.logprobs) if body.logprobs else None,
            finish_reason=finish_text(r.finish_reason) or "stop",
        )
        for i, r in enumerate(results)
    ]
    made = sum(len(r.token_ids) for r in results)
    return ChatCompletionResponse(
        id=response_id,
        created=created,
        model=target.name,
        system_fingerprint=target.fingerprint,
        choices=choices,
        usage=Usage(
            prompt_tokens=len(prompt), completion_tokens=made, total_tokens=len(prompt) + made
        ),
    )
