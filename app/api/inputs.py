"""Request bodies -> rendered prompts, through `app.render` (the renderer training uses too)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.api.errors import ApiError
from app.api.schemas import ChatMessageBody, PromptInput
from app.render import RenderError, TaskStyle, render_chat, render_completion


@dataclass(frozen=True)
class Prompts:
    """A request's prompts, rendered: one per prompt of a completions body, one for a chat."""

    texts: tuple[str, ...]  # what the model reads (logged)
    ids: tuple[tuple[int, ...], ...]
    sent: tuple[str, ...]  # what the caller sent, before any template (echoed)

    @property
    def tokens(self) -> int:
        return sum(len(p) for p in self.ids)


def _batch(prompt: PromptInput) -> list[str | list[int]]:
    """OpenAI's four prompt shapes as a list of prompts (a flat id list is one prompt)."""
    items: list[str] | list[list[int]] | list[int]
    items = [prompt] if isinstance(prompt, str) else prompt
    if not items:
        raise ApiError(400, "prompt must not be empty", param="prompt")
    if all(isinstance(p, int) for p in items):
        return [[int(t) for t in items]]  # type: ignore[arg-type]
    return list(items)  # type: ignore[arg-type]


def completion_prompts(tokenizer: Any, prompt: PromptInput, style: TaskStyle) -> Prompts:
    """Text prompts get the task's template; token-id prompts are taken as they are."""
    texts: list[str] = []
    ids: list[tuple[int, ...]] = []
    sent: list[str] = []
    for item in _batch(prompt):
        if isinstance(item, str):
            rendered = render_completion(tokenizer, style, item)
            texts.append(rendered.text)
            ids.append(rendered.ids)
            sent.append(item)
            continue
        if item and not all(0 <= t < len(tokenizer) for t in item):
            raise ApiError(400, f"token ids must be in [0, {len(tokenizer)})", param="prompt")
        texts.append(str(tokenizer.decode(item)))
        ids.append(tuple(item))
        sent.append(texts[-1])
    return Prompts(texts=tuple(texts), ids=tuple(ids), sent=tuple(sent))


def chat_prompts(
    tokenizer: Any,
    messages: list[ChatMessageBody],
    style: TaskStyle,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> Prompts:
    try:
        rendered = render_chat(tokenizer, style, [m.to_message() for m in messages], tools)
    except RenderError as exc:
        raise ApiError(400, str(exc), param="messages") from None
    return Prompts(texts=(rendered.text,), ids=(rendered.ids,), sent=(rendered.text,))
