"""Serving over HTTP, open loop (like `vllm bench serve`): Poisson arrivals at several rates,
100 tasks with Zipf popularity, streamed completions; TTFT, time per output token, end-to-end
latency (p50, p99) and throughput per rate, plus one run with a prompt swap (PUT) every second.

    .venv/bin/python -m bench.serve_http [--device cuda] [--rates 0.5,1,2,4] [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from safetensors.torch import save

from app.model import load_model_spec
from app.settings import Settings
from bench.common import base_args, machine, write
from bench.registry_scale import populate
from tests.live import free_port, wait_healthy

WORDS = [
    "the",
    "a",
    "film",
    "story",
    "cast",
    "plot",
    "music",
    "scene",
    "long",
    "short",
    "warm",
    "cold",
    "slow",
    "fast",
    "bright",
    "dark",
]


@dataclass(frozen=True)
class Result:
    ok: bool
    ttft: float
    e2e: float
    tokens: int

    @property
    def tpot(self) -> float:
        return (self.e2e - self.ttft) / (self.tokens - 1) if self.tokens > 1 else 0.0


def zipf_weights(n: int, s: float) -> list[float]:
    return [1 / (k**s) for k in range(1, n + 1)]


async def one_request(client: httpx.AsyncClient, body: dict[str, Any]) -> Result:
    start = time.perf_counter()
    first, tokens = 0.0, 0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return Result(False, 0.0, time.perf_counter() - start, 0)
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0].get("text") and not first:
                    first = time.perf_counter() - start
    except httpx.HTTPError:
        return Result(False, 0.0, time.perf_counter() - start, 0)
    return Result(tokens > 0, first, time.perf_counter() - start, tokens)


async def swapper(client: httpx.AsyncClient, tables: list[bytes], stop: asyncio.Event) -> int:
    """Replace task-00000 (the most popular) with a new version every second."""
    config = b'{"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 20}'
    swaps = 0
    while not stop.is_set():
        files = {
            "adapter_config.json": ("adapter_config.json", config),
            "adapter_model.safetensors": ("adapter_model.safetensors", tables[swaps % len(tables)]),
        }
        r = await client.put("/v1/prompts/task-00000", files=files)
        swaps += r.status_code in (200, 201)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return swaps


async def run_rate(
    url: str, rate: float, duration: float, tasks: int, args: Any, swap_tables: list[bytes] | None
) -> dict[str, Any]:
    rng = random.Random(int(rate * 1000))
    weights = zipf_weights(tasks, 1.1)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        stop = asyncio.Event()
        swap_task = asyncio.create_task(swapper(client, swap_tables, stop)) if swap_tables else None
        pending = []
        start = time.perf_counter()
        t = 0.0
        while True:
            t += rng.expovariate(rate)
            if t > duration:
                break
            await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
            task = f"task-{rng.choices(range(tasks), weights)[0]:05d}"
            prompt = " ".join(rng.choice(WORDS) for _ in range(args.prompt_words))
            body = {
                "model": task,
                "prompt": prompt,
                "max_tokens": args.output_len,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            pending.append(asyncio.create_task(one_request(client, body)))
        results = await asyncio.gather(*pending)
        elapsed = time.perf_counter() - start
        stop.set()
        swaps = await swap_task if swap_task else 0
    return summarise(rate, results, elapsed, swaps)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(rate: float, results: list[Result], elapsed: float, swaps: int) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    row: dict[str, Any] = {
        "rate": rate,
        "requests": len(results),
        "failed": len(results) - len(ok),
        "throughput_tok_s": sum(r.tokens for r in ok) / elapsed,
        "swaps": swaps,
    }
    for name, values in (
        ("ttft", [r.ttft for r in ok]),
        ("tpot", [r.tpot for r in ok]),
        ("e2e", [r.e2e for r in ok]),
    ):
        row[f"{name}_p50"], row[f"{name}_p99"] = pct(values, 0.5), pct(values, 0.99)
    return row


def knee(rows: list[dict[str, Any]]) -> float | None:
    """The highest rate before queueing sets in: median TTFT within 3x of the lightest load's.
    Past it, requests wait for a batch slot, and TTFT grows with the length of the run rather
    than with the work per request."""
    best = None
    for row in rows:
        if row["ttft_p50"] > 3 * rows[0]["ttft_p50"]:
            break
        best = float(row["rate"])
    return best


def start_server(args: Any, root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = os.environ | {
        "SOFTSERVE_MODEL": args.model,
        "SOFTSERVE_PROMPTS": str(root),
        "SOFTSERVE_PORT": str(port),
        "SOFTSERVE_DEVICE": args.device,
        "SOFTSERVE_DTYPE": args.dtype,
        "SOFTSERVE_QUANTIZE": args.quantize,
        "SOFTSERVE_BACKEND": args.backend,
        "SOFTSERVE_LOG_LEVEL": "warning",
        "SOFTSERVE_MAX_BATCH_SIZE": str(args.max_batch_size),
        "SOFTSERVE_REQUEST_TIMEOUT_S": "600",
    }
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve"], env=env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, 300, alive=lambda: proc.poll() is None)
    return proc, url


def plot(rows: list[dict[str, Any]], swap: dict[str, Any] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.common import results_dir

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    x = [r["throughput_tok_s"] for r in rows]
    a.plot(x, [r["e2e_p50"] for r in rows], "o-", label="e2e p50")
    a.plot(x, [r["e2e_p99"] for r in rows], "o-", label="e2e p99")
    if swap:
        a.plot(
            [swap["throughput_tok_s"]], [swap["e2e_p99"]], "r*", ms=12, label="p99, swap every 1 s"
        )
    for r in rows:
        a.annotate(f"{r['rate']}/s", (r["throughput_tok_s"], r["e2e_p99"]))
    a.set(
        xlabel="throughput (output tokens/s)", ylabel="latency (s)", title="throughput vs latency"
    )
    a.legend()
    rates = [r["rate"] for r in rows]
    b.plot(rates, [r["ttft_p50"] for r in rows], "o-", label="TTFT p50")
    b.plot(rates, [r["ttft_p99"] for r in rows], "o-", label="TTFT p99")
    b.plot(rates, [r["tpot_p50"] for r in rows], "s-", label="TPOT p50")
    b.set(xlabel="request rate (req/s)", ylabel="seconds", title="TTFT and time per output token")
    b.legend()
    fig.tight_layout()
    fig.savefig(results_dir() / "serve_http.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = base_args(__doc__)
    parser.add_argument("--rates", default="0.5,1,2,4,8")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of arrivals per rate")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--prompt-words", type=int, default=24)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--swap-rate", type=float, help="rate of the swap run (default: the knee)")
    args = parser.parse_args()
    if args.quick:
        args.rates, args.duration, args.tasks, args.output_len = "1,2", 5.0, 10, 8
    rates = [float(r) for r in args.rates.split(",")]
    spec = load_model_spec(args.model, Settings().cache_dir)
    gen = torch.Generator().manual_seed(9)
    swap_tables = [
        save({"prompt_embeddings": torch.randn(20, spec.hidden_size, generator=gen)})
        for _ in range(4)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        populate(Path(tmp), args.tasks, 20, spec.hidden_size)
        proc, url = start_server(args, Path(tmp))
        try:
            asyncio.run(run_rate(url, rates[0], min(5.0, args.duration), args.tasks, args, None))
            rows = []
            for rate in rates:
                rows.append(asyncio.run(run_rate(url, rate, args.duration, args.tasks, args, None)))
                print(json.dumps(rows[-1]))
            at = args.swap_rate or knee(rows) or rates[0]
            swap = asyncio.run(run_rate(url, at, args.duration, args.tasks, args, swap_tables))
        finally:
            proc.terminate()
            proc.wait(60)
    print(
        f"{'rate':>5} {'done':>5} {'fail':>4} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} "
        f"{'TPOT p50':>9} {'TPOT p99':>9} {'e2e p50':>8} {'e2e p99':>8}"
    )
    for r in [*rows, swap]:
        tag = " (swap 1/s)" if r is swap else ""
        print(
            f"{r['rate']:>5} {r['requests']:>5} {r['failed']:>4} {r['throughput_tok_s']:>7.1f} "
            f"{r['ttft_p50']:>9.3f} {r['ttft_p99']:>9.3f} {r['tpot_p50']:>9.3f} "
            f"{r['tpot_p99']:>9.3f} {r['e2e_p50']:>8.2f} {r['e2e_p99']:>8.2f}{tag}"
        )
    print(f"knee: {knee(rows)} req/s; swap run: {swap['swaps']} swaps, {swap['failed']} failed")
    write(
        "serve_http",
        {
            "machine": machine(args),
            "workload": vars(args),
            "rows": rows,
            "knee_rate": knee(rows),
            "swap": swap,
        },
    )
    plot(rows, swap)


if __name__ == "__main__":
    main()
