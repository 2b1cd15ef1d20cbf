"""OpenAI-compatible request and response bodies. No torch here: plain data only."""

from __future__ import annotations

from typing import Literal

from app.api.tool_schemas import (
    NamedToolChoice,
    ResponseFormat,
    ToolCallBody,
    ToolSpec,
)
from app.render import ChatMessage, ToolCall
from pydantic import BaseModel, ConfigDict, Field, model_validator


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = Field(
        False, description="vLLM's extension: every chunk carries the usage so far"
    )


class SamplingFields(BaseModel):
    """Fields shared by completions and chat. Unknown top-level fields are accepted and ignored
    (logged once per name), as vLLM does: clients send fields from newer API versions."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="a task name, or the base model's id for no soft prompt")
    max_tokens: int | None = Field(None, ge=0, description="0: score the prompt only (echo)")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, description="extension: 0 disables")
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    ignore_eos: bool = Field(False, description="extension: keep generating past EOS")
    timeout: float | None = Field(
        None, gt=0, description="extension: seconds; may only lower the server's"
    )
    response_format: ResponseFormat | None = None


PromptInput = str | list[str] | list[int] | list[list[int]]
FinishText = Literal["stop", "length", "tool_calls"]


class CompletionRequest(SamplingFields):
    prompt: PromptInput
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)
    prompt_logprobs: int | None = Field(
        None, ge=0, description="vLLM's extension: log-probabilities of the prompt's tokens, top k"
    )


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageBody(BaseModel):
    """One message as OpenAI sends it; `app.render.ChatMessage` is what gets rendered. Agent
    histories: an assistant turn may carry `tool_calls` (and `content: null`), and a `tool`
    message answers one call by its `tool_call_id`."""

    model_config = ConfigDict(title="ChatMessage")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallBody] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessageBody:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (null only for an assistant with tool_calls)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def to_message(self) -> ChatMessage:
        calls = tuple(
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
            for c in self.tool_calls or ()
        )
        return ChatMessage(
            role=self.role, content=self.text(), tool_calls=calls, tool_call_id=self.tool_call_id
        )


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageBody] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Accepted and ignored: Softserve stores nothing, has no reasoning mode, and makes at most
    # the calls the model writes.
    store: bool | None = None
    reasoning_effort: str | None = None
    parallel_tool_calls: bool | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None


# -- responses ----------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(
        description="leading prompt tokens a KV slot still held from an earlier request (not "
        "computed again); never more than prompt_tokens"
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape; with `echo`, the prompt's tokens come first and the first of
    them has no log-probability (null), as nothing precedes it."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class PromptLogprob(BaseModel):
    """One entry of vLLM's `prompt_logprobs` (keyed by the token id, as a string)."""

    logprob: float
    decoded_token: str


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishText | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(TopLogprobOut):
    top_logprobs: list[TopLogprobOut]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobOut]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallBody] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishText


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishText | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str = Field(description="the base model every task runs on")
    kind: str | None = Field(None, description="soft-prompt kind, None for the base model")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


HealthStatus = Literal["ok", "loading", "draining", "unhealthy"]


class Health(BaseModel):
    status: HealthStatus
    detail: str | None = None


class PromptInfo(BaseModel):
    id: str = Field(description="the task name; use it as `model`")
    object: Literal["prompt"] = "prompt"
    kind: Literal["PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"]
    num_virtual_tokens: int
    version: int
    sha256: str = Field(description="of adapter_model.safetensors")
    created: int
    description: str | None = None
    system_prompt: bool = Field(description="whether task.json sets a chat system prompt")
    template: str | None = None
    labels: list[str] = Field(default_factory=list)


class SkippedInfo(BaseModel):
    path: str
    reason: str


class PromptList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PromptInfo]
    skipped: list[SkippedInfo] = Field(
        description="folders that failed validation, with the reason"
    )


class PromptDeleted(BaseModel):
    id: str
    object: Literal["prompt"] = "prompt"
    deleted: bool
