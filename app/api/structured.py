"""What a request asks the answer to be, as an engine constraint: `response_format` (JSON), a
task's labels (`task.json` `constrain_to_labels`), or a tool call that `tool_choice` demands.
And the other half of tools: calls parsed out of the answer into OpenAI's `tool_calls`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.api.errors import ApiError
from app.api.grammar import JSON_OPTIONS, Grammar, Grammars
from app.api.tool_schemas import NamedToolChoice, ResponseFormat, ToolSpec
from app.registry import TaskMeta

# The tool-call form of the common tool-aware chat templates (Hermes, Qwen, SmolLM3), and the
# form `app.render` writes past calls in for templates that know no tools.
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(CALL_OPEN) + r"\s*(\{.*?\})\s*" + re.escape(CALL_CLOSE), re.DOTALL)


@dataclass(frozen=True)
class ParsedCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True)
class ParsedAnswer:
    content: str | None  # the text around the calls (None when there is none)
    calls: tuple[ParsedCall, ...]


def response_constraint(
    fmt: ResponseFormat | None, meta: TaskMeta, grammars: Grammars
) -> Grammar | None:
    """JSON when the request asks for it; else the task's labels when task.json says so."""
    if fmt is not None and fmt.type == "json_object":
        return grammars.json_schema({"type": "object"}, "response_format")
    if fmt is not None and fmt.type == "json_schema":
        assert fmt.json_schema is not None
        schema = fmt.json_schema.schema_ or {"type": "object"}
        if fmt.json_schema.strict is not False:
            schema = closed(schema)
        return grammars.json_schema(schema, "response_format.json_schema.schema")
    if meta.constrain_to_labels:
        return grammars.choice(meta.labels, "model")
    return None


def closed(schema: Any) -> Any:
    """Objects that do not say otherwise get no properties beyond the listed ones (as OpenAI's
    strict mode and vLLM's default grammar backend do): a model cannot wander into extra keys."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    is_object = out.get("type") == "object" or "properties" in out
    if is_object and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _call_schema(tool: ToolSpec) -> dict[str, Any]:
    parameters = closed(tool.function.parameters or {"type": "object"})
    return {
        "type": "object",
        "properties": {"name": {"const": tool.function.name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def demanded_tools(
    tools: Sequence[ToolSpec], choice: str | NamedToolChoice | None
) -> list[ToolSpec]:
    """The tools one of which must be called (empty: the model may answer in text)."""
    if isinstance(choice, NamedToolChoice):
        named = [t for t in tools if t.function.name == choice.function.name]
        if not named:
            raise ApiError(
                400,
                f"tool_choice names {choice.function.name!r}, not in tools",
                param="tool_choice",
            )
        return named
    return list(tools) if choice == "required" else []


def tool_call_constraint(tools: Sequence[ToolSpec], grammars: Grammars) -> Grammar:
    """Exactly one call, in the template's `<tool_call>` form, to one of `tools`, its arguments
    valid against that tool's parameters schema."""
    schema = (
        {"anyOf": [_call_schema(t) for t in tools]} if len(tools) > 1 else _call_schema(tools[0])
    )
    body = json.dumps({**schema, "x-guidance": JSON_OPTIONS})  # compact, as response_format
    grammar = f"start: {json.dumps(CALL_OPEN + chr(10))} call {json.dumps(chr(10) + CALL_CLOSE)}\ncall: %json {body}"
    return grammars.lark(grammar, "tool_choice")


def parse_tool_calls(text: str) -> ParsedAnswer:
    """Calls written as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; anything that
    does not parse as a call stays text."""
    calls: list[ParsedCall] = []
    kept: list[str] = []
    at = 0
    for match in _CALL.finditer(text):
        try:
            raw = json.loads(match.group(1))
        except ValueError:
            continue
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            continue
        arguments = raw.get("arguments", {})
        calls.append(
            ParsedCall(
                id=f"call_{uuid.uuid4().hex[:24]}",
                name=raw["name"],
                arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
            )
        )
        kept.append(text[at : match.start()])
        at = match.end()
    kept.append(text[at:])
    content = "".join(kept).strip() if calls else text
    return ParsedAnswer(content=content or None, calls=tuple(calls))
