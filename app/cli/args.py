"""Argument helpers shared by `train`, `eval` and `eval --server` (a leaf: it imports no other
cli module, so the heavy and light halves of the commands never import each other in a circle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def parse_labels(text: str | None) -> tuple[str, ...]:
    """'positive,negative' -> ('positive', 'negative'); a leading space inside is kept."""
    if not text:
        return ()
    labels = tuple(label for label in text.split(",") if label.strip())
    if len(set(labels)) != len(labels):
        raise ValueError(f"--labels {text!r} repeats a label")
    return labels


def read_text_arg(value: str) -> str:
    """A text given inline, or `@path` to read it from a file (few-shot prompts are long)."""
    return Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value


def read_template(value: str) -> str:
    text = read_text_arg(value)
    if "{input}" not in text:
        raise ValueError(f"template {value!r} must contain {{input}}")
    return text


def print_figures(figures: dict[str, Any], out: Path | None) -> None:
    if "accuracy" in figures:
        print(f"accuracy: {figures['accuracy']:.3f} ({figures['correct']}/{figures['total']})")
        for c in figures["classes"]:
            print(
                f"  {c['label']!r}: {c['correct']}/{c['gold']} correct, predicted {c['predicted']} times"
            )
    else:
        print(f"exact match: {figures['exact_match']:.3f} ({figures['exact']}/{figures['total']})")
        # Absent for --server, which sees answers but not the model's scores.
        if figures.get("mean_token_loss") is not None:
            print(f"answer prefix match: {figures['prefix_match']:.3f}")
            print(f"token accuracy: {figures['token_accuracy']:.3f}")
            print(f"mean token loss: {figures['mean_token_loss']:.4f}")
    if out is not None:
        out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
