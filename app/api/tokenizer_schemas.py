"""Bodies of the tokenizer endpoints, in vLLM's shapes (what lm-eval's remote tokenizer reads)."""

from __future__ import annotations

from app.api.schemas import ChatMessageBody
from pydantic import BaseModel, ConfigDict, Field, model_validator


class TokenizeRequest(BaseModel):
    """Either `prompt` (the tokenizer alone: a task's template never applies, so these are the
    ids to send as a token-id prompt) or `messages` (rendered exactly as chat renders them)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="a task or the base model (default: the base)")
    prompt: str | None = None
    messages: list[ChatMessageBody] | None = Field(None, min_length=1)
    add_special_tokens: bool | None = Field(
        None, description="default: true for prompt, false for messages (the template writes them)"
    )
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of prompt or messages")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    """The tokenizer's facts a client needs to tokenize as the server does."""

    tokenizer_class: str
    eos_token: str | None
    bos_token: str | None
    pad_token: str | None
    unk_token: str | None
    chat_template: str | None
    model_max_length: int = Field(description="the server's context length")
    vocab_size: int
