"""POST /v1/chat/completions: the model's chat template; the soft prompt goes before it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.api.delivery import ChoiceResult, finish_text
from app.api.deps import ApiKeyDep, RuntimeDep, ServicesDep
from app.api.errors import ApiError
from app.api.inputs import Prompts, chat_prompts
from app.api.logprobs import chat_logprobs
from app.api.pipeline import ChoiceOutput, Reply, generate
from app.api.routes.common import ERRORS
from app.api.sampling import check_supported, sampling_params
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
from app.engine import SamplingParams
from app.registry import TaskMeta
from app.render import TaskStyle
from app.settings import Settings
from fastapi import APIRouter, Request

router = APIRouter(dependencies=[ApiKeyDep], tags=["inference"])


@dataclass(frozen=True)
class Chat:
    """The chat `Endpoint` of the generation pipeline."""

    body: ChatCompletionRequest
    tokenizer: Any
    settings: Settings
    name: str = "chat"

    def check(self) -> None:
        body, settings = self.body, self.settings
        check_supported(body, settings.max_n)
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
        if (body.top_logprobs or 0) > settings.max_logprobs:
            raise ApiError(
                400, f"top_logprobs must be <= {settings.max_logprobs}", param="top_logprobs"
            )

    def render(self, style: TaskStyle) -> Prompts:
        return chat_prompts(self.tokenizer, self.body.messages, style)

    def sampling(self, meta: TaskMeta) -> SamplingParams:
        body = self.body
        return sampling_params(
            body,
            meta.defaults,
            max_tokens=body.max_completion_tokens or body.max_tokens,
            default_max_tokens=self.settings.default_chat_max_tokens,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        )

    def _chunk(
        self, reply: Reply, choices: list[ChatChunkChoice], usage: Usage | None = None
    ) -> str:
        return ChatCompletionChunk(
            id=f"chatcmpl-{reply.request_id}",
            created=reply.created,
            model=reply.target.name,
            system_fingerprint=reply.target.fingerprint,
            choices=choices,
            usage=usage,
        ).model_dump_json()

    def chunks(self, reply: Reply, choice: ChoiceOutput) -> list[str]:
        out, i = choice.output, choice.index
        chunks = []
        if choice.first:
            opening = ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))
            chunks.append(self._chunk(reply, [opening]))
        logprobs = chat_logprobs(self.tokenizer, list(out.logprobs)) if self.body.logprobs else None
        if out.text or logprobs:
            delta = ChatChunkChoice(index=i, delta=ChatDelta(content=out.text), logprobs=logprobs)
            chunks.append(self._chunk(reply, [delta]))
        if out.finish_reason is not None:
            done = ChatChunkChoice(
                index=i, delta=ChatDelta(), finish_reason=finish_text(out.finish_reason)
            )
            chunks.append(self._chunk(reply, [done]))
        return chunks

    def usage_chunk(self, reply: Reply, usage: Usage) -> str:
        return self._chunk(reply, [], usage)

    def respond(
        self, reply: Reply, results: list[ChoiceResult], usage: Usage
    ) -> ChatCompletionResponse:
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=r.text),
                logprobs=chat_logprobs(self.tokenizer, r.logprobs) if self.body.logprobs else None,
                finish_reason=finish_text(r.finish_reason) or "stop",
            )
            for i, r in enumerate(results)
        ]
        return ChatCompletionResponse(
            id=f"chatcmpl-{reply.request_id}",
            created=reply.created,
            model=reply.target.name,
            system_fingerprint=reply.target.fingerprint,
            choices=choices,
            usage=usage,
        )


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**ERRORS, 408: ERRORS[503]},
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, runtime: RuntimeDep, services: ServicesDep
) -> Any:
    endpoint = Chat(body, services.base.tokenizer, services.settings)
    return await generate(runtime, services, request, endpoint)
