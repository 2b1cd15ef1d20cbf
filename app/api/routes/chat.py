"""POST /v1/chat/completions: the model's chat template; the soft prompt goes before it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.api.delivery import ChoiceResult, finish_text
from app.api.deps import ApiKeyDep, RuntimeDep, ServicesDep
from app.api.errors import ApiError
from app.api.grammar import Grammar, Grammars
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
from app.api.structured import (
    demanded_tools,
    parse_tool_calls,
    response_constraint,
    tool_call_constraint,
)
from app.api.tool_schemas import FunctionCallBody, ToolCallBody, ToolSpec
from app.engine import SamplingParams
from app.registry import TaskMeta
from app.render import TaskStyle, template_knows_tools
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

    def _tools(self) -> list[ToolSpec]:
        """The tools offered to the model (none with `tool_choice: "none"`)."""
        return [] if self.body.tool_choice == "none" else list(self.body.tools or [])

    def _parses_tools(self) -> bool:
        return bool(self._tools()) and template_knows_tools(self.tokenizer)

    def _check_tools(self) -> None:
        body = self.body
        if body.tool_choice not in (None, "none", "auto") and not body.tools:
            raise ApiError(400, "tool_choice needs tools", param="tool_choice")
        demanded = demanded_tools(body.tools or [], body.tool_choice)
        if demanded and not template_knows_tools(self.tokenizer):
            raise ApiError(
                400,
                "the model's chat template has no tool support, so tool_choice cannot demand a "
                "call: use tool_choice 'auto' or 'none' (tools are then only listed)",
                param="tool_choice",
            )

    def check(self) -> None:
        body, settings = self.body, self.settings
        check_supported(body, settings.max_n)
        self._check_tools()
        if body.max_tokens == 0:
            raise ApiError(400, "max_tokens must be >= 1 for chat", param="max_tokens")
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
        if (body.top_logprobs or 0) > settings.max_logprobs:
            raise ApiError(
                400, f"top_logprobs must be <= {settings.max_logprobs}", param="top_logprobs"
            )

    def render(self, style: TaskStyle) -> Prompts:
        tools = [t.model_dump(exclude_none=True) for t in self._tools()]
        return chat_prompts(self.tokenizer, self.body.messages, style, tools or None)

    def constraint(self, meta: TaskMeta, grammars: Grammars) -> Grammar | None:
        demanded = demanded_tools(self.body.tools or [], self.body.tool_choice)
        if demanded:
            return tool_call_constraint(demanded, grammars)
        return response_constraint(self.body.response_format, meta, grammars)

    def _message(self, result: ChoiceResult) -> ChatChoice:
        """The answer; where the template knows tools, calls in it become `tool_calls`."""
        finish = finish_text(result.finish_reason) or "stop"
        if not self._parses_tools():
            return ChatChoice(
                index=0, message=AssistantMessage(content=result.text), finish_reason=finish
            )
        parsed = parse_tool_calls(result.text)
        if not parsed.calls:
            return ChatChoice(
                index=0, message=AssistantMessage(content=result.text), finish_reason=finish
            )
        calls = [
            ToolCallBody(id=c.id, function=FunctionCallBody(name=c.name, arguments=c.arguments))
            for c in parsed.calls
        ]
        message = AssistantMessage(content=parsed.content, tool_calls=calls)
        return ChatChoice(index=0, message=message, finish_reason="tool_calls")

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
            chunks.append(self._chunk(reply, [opening], choice.usage))
        logprobs = chat_logprobs(self.tokenizer, list(out.logprobs)) if self.body.logprobs else None
        if out.text or logprobs:
            delta = ChatChunkChoice(index=i, delta=ChatDelta(content=out.text), logprobs=logprobs)
            chunks.append(self._chunk(reply, [delta], choice.usage))
        if out.finish_reason is not None:
            done = ChatChunkChoice(
                index=i, delta=ChatDelta(), finish_reason=finish_text(out.finish_reason)
            )
            chunks.append(self._chunk(reply, [done], choice.usage))
        return chunks

    def usage_chunk(self, reply: Reply, usage: Usage) -> str:
        return self._chunk(reply, [], usage)

    def respond(
        self, reply: Reply, results: list[ChoiceResult], usage: Usage
    ) -> ChatCompletionResponse:
        choices = [
            self._message(r).model_copy(
                update={
                    "index": i,
                    "logprobs": chat_logprobs(self.tokenizer, r.logprobs)
                    if self.body.logprobs
                    else None,
                }
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
