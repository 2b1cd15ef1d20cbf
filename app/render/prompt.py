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

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SYSTEM_ROLES = ("system", "developer")


class RenderError(ValueError):
    """The messages cannot be rendered for this model (no chat template, or the template refused
    them); the API answers 400 naming `messages`."""


@dataclass(frozen=True)
class ToolCall:
    """A call an assistant turn made (OpenAI's `tool_calls` entry); `arguments` is JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system, developer, user, assistant or tool
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns of an agent history
    tool_call_id: str | None = None  # a tool message: the call it answers


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


def template_knows_tools(tokenizer: Any) -> bool:
    """Whether the chat template renders `tool_calls` itself (else they are written as text)."""
    return "tool_calls" in str(tokenizer.chat_template or "")


def _arguments(text: str) -> Any:
    # HF chat templates expect the arguments as a mapping (they `tojson` it); keep bad JSON as is.
    try:
        return json.loads(text)
    except ValueError:
        return text


def _call_text(call: ToolCall) -> str:
    """A call written into the assistant's text for templates that know no tools: the common
    `<tool_call>` form (Hermes, Qwen, SmolLM3), so the model still sees what it called."""
    body = json.dumps({"name": call.name, "arguments": _arguments(call.arguments)})
    return f"<tool_call>\n{body}\n</tool_call>"


def _turn(message: ChatMessage, knows_tools: bool) -> dict[str, Any]:
    role = "system" if message.role == "developer" else message.role
    turn: dict[str, Any] = {"role": role, "content": message.content}
    if message.tool_calls and knows_tools:
        turn["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": _arguments(c.arguments)},
            }
            for c in message.tool_calls
        ]
    elif message.tool_calls:
        calls = "\n".join(_call_text(c) for c in message.tool_calls)
        turn["content"] = f"{message.content}\n{calls}" if message.content else calls
    if message.tool_call_id is not None:
        turn["tool_call_id"] = message.tool_call_id
    return turn


def chat_text(
    tokenizer: Any,
    messages: Sequence[ChatMessage],
    generation: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The chat template's text; `generation` adds the assistant's opening (a prompt to answer).
    `tools` (OpenAI's function specs) go to the template, which may list them."""
    if not tokenizer.chat_template:
        raise RenderError("the base model has no chat template: use /v1/completions")
    knows_tools = template_knows_tools(tokenizer)
    turns = [_turn(m, knows_tools) for m in messages]
    try:
        text = tokenizer.apply_chat_template(
            turns,
            add_generation_prompt=generation,
            tokenize=False,
            tools=[dict(t) for t in tools] if tools else None,
        )
    except Exception as exc:  # template errors (e.g. roles the template refuses)
        raise RenderError(f"chat template failed: {exc}") from None
    return str(text)


def chat_ids(
    tokenizer: Any, messages: Sequence[ChatMessage], generation: bool = True
) -> tuple[int, ...]:
    text = chat_text(tokenizer, messages, generation)
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_chat(
    tokenizer: Any,
    style: TaskStyle,
    messages: Sequence[ChatMessage],
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> Rendered:
    """A conversation as the server sends it to the engine: system-prompt rule, template, ids."""
    text = chat_text(tokenizer, with_system_prompt(messages, style.system_prompt), tools=tools)
    return Rendered(text=text, ids=tuple(tokenizer(text, add_special_tokens=False)["input_ids"]))
