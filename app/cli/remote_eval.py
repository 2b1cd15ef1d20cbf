"""`softserve eval --server URL`: the same figures, asked of a running server over HTTP.

The server exposes no forced-token likelihoods, so here a label is judged by the greedy answer
(the first label it starts with) and the token loss is not reported.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import httpx

from app.cli.args import read_template, read_text_arg
from app.render import apply_template, with_system_prompt
from app.train.data import Example, TextExample


def _model_and_template(client: httpx.Client, args: argparse.Namespace) -> tuple[str, str | None]:
    if args.prompt:
        return str(args.prompt), None  # the server applies the task's own template
    models = client.get("/v1/models").raise_for_status().json()["data"]
    base = next(m["id"] for m in models if "kind" not in m or m.get("kind") is None)
    return base, read_template(args.hard_prompt) if args.hard_prompt else None


def _answer(
    client: httpx.Client,
    model: str,
    template: str | None,
    system: str | None,
    example: Example,
    budget: int,
) -> str:
    body: dict[str, Any] = {"model": model, "max_tokens": budget, "temperature": 0}
    if isinstance(example, TextExample):
        text = apply_template(template, example.input)
        r = client.post("/v1/completions", json={**body, "prompt": text}).raise_for_status()
        return str(r.json()["choices"][0]["text"])
    last = max(i for i, m in enumerate(example.messages) if m.role == "assistant")
    # The server's rule, applied here because the server does not know a hard system prompt.
    turns = with_system_prompt(example.messages[:last], system)
    messages = [{"role": m.role, "content": m.content} for m in turns]
    r = client.post("/v1/chat/completions", json={**body, "messages": messages}).raise_for_status()
    return str(r.json()["choices"][0]["message"]["content"])


def _expected(example: Example) -> str:
    if isinstance(example, TextExample):
        return example.output
    return [m for m in example.messages if m.role == "assistant"][-1].content


def remote_figures(
    args: argparse.Namespace, examples: Sequence[Example], labels: Sequence[str]
) -> dict[str, Any]:
    key = args.api_key or os.environ.get("SOFTSERVE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=args.server, headers=headers, timeout=120) as client:
        model, template = _model_and_template(client, args)
        system = read_text_arg(args.system_prompt).strip() if args.system_prompt else None
        answers = [
            _answer(client, model, template, system, e, 8 if labels else 256).strip()
            for e in examples
        ]
    expected = [_expected(e).strip() for e in examples]
    if not labels:
        exact = sum(a == e for a, e in zip(answers, expected, strict=True))
        return {"exact_match": exact / len(examples), "exact": exact, "total": len(examples)}
    names = [label.strip() for label in labels]
    predicted = [next((n for n in names if a.startswith(n)), None) for a in answers]
    classes = [
        {
            "label": n,
            "gold": expected.count(n),
            "correct": sum(p == g == n for p, g in zip(predicted, expected, strict=True)),
            "predicted": predicted.count(n),
        }
        for n in names
    ]
    correct = sum(p == g for p, g in zip(predicted, expected, strict=True) if p is not None)
    return {
        "accuracy": correct / len(examples),
        "correct": correct,
        "total": len(examples),
        "classes": classes,
        "unlabelled_answers": predicted.count(None),
    }
