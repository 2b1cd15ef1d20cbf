"""Time to first token over HTTP: a persona as a soft prompt vs the same persona sent as a long
prompt (its system prompt, and its system prompt with its example dialogues), same server, same
held-out questions, interleaved rounds, medians.

    python -m bench.persona_ttft [--prompts prompts] [--concurrency 1,8,16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

import httpx

from app.train.persona import load_persona
from app.train.questions import generate
from bench.common import write
from bench.peers import _model_id, _stream, start_softserve

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "personas"
PERSONAS = ("pirate", "terse-expert", "kind-teacher")
CASES = ("soft prompt", "system prompt", "system prompt + examples")


def _messages(case: str, persona: str, question: str) -> list[dict[str, str]]:
    asked = [{"role": "user", "content": question}]
    if case == "soft prompt":
        return asked
    p = load_persona(EXAMPLES / f"{persona}.txt")
    context = p.context() if case == "system prompt + examples" else p.context()[:1]
    return [{"role": m.role, "content": m.content} for m in context] + asked


async def _round(url: str, base: str, case: str, streams: int, per: int) -> list[float]:
    questions = [q.text for q in generate(10, 60).eval]
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker(w: int) -> list[float]:
            out = []
            for i in range(per):
                n = w * per + i
                persona = PERSONAS[n % 3]
                body: dict[str, Any] = {
                    "model": persona if case == "soft prompt" else base,
                    "messages": _messages(case, persona, questions[n % len(questions)]),
                    "max_tokens": 4,
                    "temperature": 0,
                    "stream": True,
                }
                out.append((await _stream(client, "/v1/chat/completions", body))[1])
            return out

        results = await asyncio.gather(*(worker(w) for w in range(streams)))
    return [t for r in results for t in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", default="prompts")
    parser.add_argument("--concurrency", default="1,8,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-stream", type=int, default=3)
    parser.add_argument("--softserve-args", default="")
    args = parser.parse_args()
    proc, url = start_softserve(["--prompts", args.prompts, *args.softserve_args.split()])
    rows = []
    try:
        base = _model_id(url)
        asyncio.run(_round(url, base, "soft prompt", 2, 1))  # warm-up
        for streams in (int(c) for c in args.concurrency.split(",")):
            ttfts: dict[str, list[float]] = {c: [] for c in CASES}
            for _ in range(args.rounds):  # interleaved: each round runs every case once
                for case in CASES:
                    ttfts[case] += asyncio.run(_round(url, base, case, streams, args.per_stream))
            med = {c: statistics.median(v) * 1000 for c, v in ttfts.items()}
            row = {"concurrency": streams, "median_ttft_ms": med}
            row["soft_vs_system"] = med["soft prompt"] / med["system prompt"]
            row["soft_vs_examples"] = med["soft prompt"] / med["system prompt + examples"]
            rows.append(row)
            print(json.dumps(row))
    finally:
        proc.terminate()
        proc.wait(30)
    print(
        "| concurrent | soft prompt | system prompt | system + examples | soft / system | soft / system + examples |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        m = r["median_ttft_ms"]
        print(
            f"| {r['concurrency']} | {m['soft prompt']:.0f} ms | {m['system prompt']:.0f} ms "
            f"| {m['system prompt + examples']:.0f} ms | {r['soft_vs_system']:.2f}x "
            f"| {r['soft_vs_examples']:.2f}x |"
        )
    write("persona_ttft", {"rows": rows, "prompts": args.prompts})


if __name__ == "__main__":
    main()
