"""`task.json`: optional per-task metadata (description, persona, input template, labels, defaults)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from app.registry.errors import InvalidPrompt
from app.registry.peft_format import TASK_FILE
from app.render import TaskStyle, apply_template

MAX_TASK_BYTES = 64 * 1024
_KEYS = {
    "description",
    "system_prompt",
    "template",
    "labels",
    "constrain_to_labels",
    "defaults",
    "info",
}


@dataclass(frozen=True)
class SamplingDefaults:
    """Per-task defaults a request's own parameters override."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TaskMeta:
    description: str | None = None
    system_prompt: str | None = None
    template: str | None = None  # e.g. "Review: {input}\nSentiment:"
    labels: tuple[str, ...] = ()
    # Answers are exactly one of the labels (constrained decoding), unless a request asks for
    # JSON itself: a classifier task can never answer off-label.
    constrain_to_labels: bool = False
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    info: str = "{}"  # free-form JSON object (training figures ...), kept as canonical text

    @property
    def style(self) -> TaskStyle:
        """What this task contributes to its prompts (rendered by `app.render`)."""
        return TaskStyle(template=self.template, system_prompt=self.system_prompt)

    def apply_template(self, text: str) -> str:
        return apply_template(self.template, text)


def _bad(reason: str) -> InvalidPrompt:
    return InvalidPrompt(reason, file=TASK_FILE)


def _opt_str(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise _bad(f"{key} must be a string, got {type(value).__name__}")
    return value


def _number(raw: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _bad(f"defaults.{key} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _parse_defaults(raw: Any) -> SamplingDefaults:
    if raw is None:
        return SamplingDefaults()
    if not isinstance(raw, dict):
        raise _bad("defaults must be an object")
    unknown = set(raw) - {"temperature", "top_p", "top_k", "max_tokens", "stop"}
    if unknown:
        raise _bad(f"unknown keys in defaults: {sorted(unknown)}")
    top_k, max_tokens = _number(raw, "top_k", 0, 1e9), _number(raw, "max_tokens", 1, 1e9)
    stop = raw.get("stop")
    if stop is not None and not (
        isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop)
    ):
        raise _bad("defaults.stop must be a list of at most 4 non-empty strings")
    return SamplingDefaults(
        temperature=_number(raw, "temperature", 0.0, 2.0),
        top_p=_number(raw, "top_p", 0.0, 1.0),
        top_k=None if top_k is None else int(top_k),
        max_tokens=None if max_tokens is None else int(max_tokens),
        stop=None if stop is None else tuple(stop),
    )


def parse_task_meta(data: bytes | None) -> TaskMeta:
    if data is None:
        return TaskMeta()
    if len(data) > MAX_TASK_BYTES:
        raise _bad(f"file is {len(data)} bytes, over the {MAX_TASK_BYTES}-byte limit")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"not valid UTF-8 JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise _bad("must be a JSON object")
    unknown = set(raw) - _KEYS
    if unknown:
        raise _bad(f"unknown keys {sorted(unknown)} (allowed: {sorted(_KEYS)})")
    template = _opt_str(raw, "template")
    if template is not None and "{input}" not in template:
        raise _bad("template must contain the placeholder {input}")
    labels = raw.get("labels", [])
    if not (isinstance(labels, list) and all(isinstance(x, str) and x for x in labels)):
        raise _bad("labels must be a list of non-empty strings")
    info = raw.get("info", {})
    if not isinstance(info, dict):
        raise _bad("info must be an object")
    constrained = raw.get("constrain_to_labels", False)
    if not isinstance(constrained, bool):
        raise _bad("constrain_to_labels must be true or false")
    if constrained and len(labels) < 2:
        raise _bad("constrain_to_labels needs at least two labels")
    return TaskMeta(
        description=_opt_str(raw, "description"),
        system_prompt=_opt_str(raw, "system_prompt"),
        template=template,
        labels=tuple(labels),
        constrain_to_labels=constrained,
        defaults=_parse_defaults(raw.get("defaults")),
        info=json.dumps(info, sort_keys=True),
    )
