"""The one prompt renderer: text in, token ids out, for serving, training, evaluation and
distillation alike. A soft prompt is trained on exactly the ids it is later served with.

Rules (each lives here and nowhere else):
- Completions: the task's template (`{input}` replaced by the text), tokenized with the
  tokenizer's defaults (special tokens included), as a plain `tokenizer(text)` call does.
- Chat: the model's chat template with a generation prompt, tokenized without special tokens
  (the template writes its own). `developer` messages count as `system` messages.
- The system-prompt rule: a task's system prompt goes first *unless any* message is already a
  system message (the caller's own persona wins, wherever it sits in the conversation).
- A soft prompt never appears in the text: the engine puts its KV prefix in front of these ids.

Torch-free and free of app imports (its ruff.toml enforces it), so every layer may use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SYSTEM_ROLES = ("system", "developer")


class RenderError(ValueError):
    """The messages cannot be rendered for this model (no chat template, or the template refused
    them); the API answers 400 naming `messages`."""


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system, developer, user or assistant
    content: str


@dataclass(frozen=True)
class TaskStyle:
    """What a task's task.json contributes to its prompts (nothing, for the bare model)."""

    template: str | None = None  # e.g. "Review: {input}\nSentiment:"
    system_prompt: str | None = None


@dataclass(frozen=True)
class Rendered:
    text: str  # what the model reads (logged, echoed)
    ids: tuple[int, ...]


def apply_template(template: str | None, text: str) -> str:
    return template.replace("{input}", text) if template else text


def render_completion(tokenizer: Any, style: TaskStyle, text: str) -> Rendered:
    prompt = apply_template(style.template, text)
    return Rendered(text=prompt, ids=tuple(tokenizer(prompt)["input_ids"]))


def with_system_prompt(
    messages: Sequence[ChatMessage], system_prompt: str | None
) -> tuple[ChatMessage, ...]:
    """The system-prompt rule (see the module docstring)."""
    if system_prompt is None or any(m.role in SYSTEM_ROLES for m in messages):
        return tuple(messages)
    return (ChatMessage("system", system_prompt), *messages)


def chat_text(tokenizer: Any, messages: Sequence[ChatMessage], generation: bool = True) -> str:
    """The chat template's text; `generation` adds the assistant's opening (a prompt to answer)."""
    if not tokenizer.chat_template:
        raise RenderError("the base model has no chat template: use /v1/completions")
    turns = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.content}
        for m in messages
    ]
    try:
        text = tokenizer.apply_chat_template(
            turns, add_generation_prompt=generation, tokenize=False
        )
    except Exception as exc:  # template errors (e.g. roles the template refuses)
        raise RenderError(f"chat template failed: {exc}") from None
    return str(text)


def chat_ids(
    tokenizer: Any, messages: Sequence[ChatMessage], generation: bool = True
) -> tuple[int, ...]:
    text = chat_text(tokenizer, messages, generation)
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_chat(tokenizer: Any, style: TaskStyle, messages: Sequence[ChatMessage]) -> Rendered:
    """A conversation as the server sends it to the engine: system-prompt rule, template, ids."""
    text = chat_text(tokenizer, with_system_prompt(messages, style.system_prompt))
    return Rendered(text=text, ids=tuple(tokenizer(text, add_special_tokens=False)["input_ids"]))
