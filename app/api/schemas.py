"""OpenAI-compatible request and response bodies. No torch here: plain data only."""

from __future__ import annotations

from typing import Literal

from app.render import ChatMessage
from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by completions and chat; unknown fields are rejected, as OpenAI does."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a task name, or the base model's id for no soft prompt")
    max_tokens: int | None = Field(None, ge=1)
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


PromptInput = str | list[str] | list[int] | list[list[int]]
FinishText = Literal["stop", "length"]


class CompletionRequest(SamplingFields):
    prompt: PromptInput
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageBody(BaseModel):
    """One message as OpenAI sends it; `app.render.ChatMessage` is what gets rendered."""

    model_config = ConfigDict(title="ChatMessage")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def to_message(self) -> ChatMessage:
        return ChatMessage(role=self.role, content=self.text())


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageBody] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


# -- responses ----------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishText | None = None


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
    content: str


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
