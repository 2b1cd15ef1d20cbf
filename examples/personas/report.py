"""Print the persona distillation table from the JSON files that train.sh leaves in runs/personas/.

For each persona: how closely the soft-prompted greedy answer follows the teacher's (the frozen
model under the long system prompt) on held-out questions, next to the bare model with no persona
at all and the teacher itself (its figures are the ceiling), and the prompt tokens each request
no longer sends.

    python examples/personas/report.py [--runs runs/personas] [--prompts prompts]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PERSONAS = ("pirate", "terse-expert", "kind-teacher")


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _figures(fig: dict[str, Any]) -> str:
    return (
        f"{fig['exact']}/{fig['total']} ({fig['exact_match']:.2f}) | {fig['prefix_match']:.2f} | "
        f"{fig['token_accuracy']:.2f} | {fig['mean_token_loss']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=Path, default=Path("runs/personas"))
    parser.add_argument("--prompts", type=Path, default=Path("prompts"))
    args = parser.parse_args()
    print(
        "| persona | answered by | exact match | answer prefix match | token accuracy "
        "| mean token loss | prompt tokens (with system prompt -> without) | training |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for persona in PERSONAS:
        soft = args.runs / f"{persona}.eval.json"
        if not soft.exists():
            continue
        counts = _load(args.runs / f"{persona}-eval.counts.json")
        tokens = (
            f"{counts['prompt_tokens_with_system']:.0f} -> {counts['prompt_tokens_without']:.0f}"
        )
        train = _load(args.prompts / persona / "task.json")["info"]["training"]
        virtual = train["virtual_tokens"]
        trained = (
            f"{train['steps']} steps, {train['seconds']:.0f} s, {train['train_examples']} chats, "
            f"{virtual} virtual tokens"
        )
        print(f"| {persona} | soft prompt | {_figures(_load(soft))} | {tokens} | {trained} |")
        none = _load(args.runs / f"{persona}.none.json")
        print(f"| {persona} | bare model, no persona | {_figures(none)} | | |")
        teacher = args.runs / f"{persona}.teacher.json"
        if teacher.exists():
            print(f"| {persona} | long system prompt | {_figures(_load(teacher))} | | |")


if __name__ == "__main__":
    main()
