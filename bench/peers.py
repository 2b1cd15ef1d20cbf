"""Softserve against the servers a user would pick instead, same machine, same weights, one run:
llama.cpp's `llama-server` (F32 and Q8_0 GGUFs of the same fp32 weights) and, if given, vLLM CPU.

Closed loop over HTTP (streamed completions, greedy, 64 tokens, EOS ignored): 1, 8 and 32
concurrent streams, each sending requests back to back; aggregate tok/s = all completion tokens /
wall time, TTFT = first streamed text. Then the persona case: 8 streams of chat over three
personas, the peers sent each persona's long system prompt as a system message, Softserve the
persona's soft prompt (model = persona, no system message). Servers take turns (interleaved
rounds, medians), so machine noise hits all alike; ratios are Softserve / peer.

    bash bench/setup_peers.sh                 # once, ~10 min: builds llama-server, GGUFs
    .venv/bin/python -m bench.peers [--rounds 3] [--quick] [--softserve-args "--dtype float32"]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import results_dir, write
from tests.live import free_port, wait_healthy

PROMPT = "Write a long story about a dragon who lives in a castle by the sea. Once upon a time,"
PERSONAS = ("pirate", "terse-expert", "kind-teacher")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "personas"
QUESTIONS = [
    "What is the capital of France?",
    "How do I keep basil alive indoors?",
    "Why is the sky blue?",
    "Tell me a fun fact about octopuses.",
    "What should I pack for a weekend hike?",
    "How does a bicycle gear work?",
    "Why do cats purr?",
    "What is a good way to learn to cook?",
]


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    model: str  # the `model` field for plain completions
    personas: bool  # Softserve: soft prompts; peers: long system prompts


@dataclass(frozen=True)
class Run:
    tokens: int
    seconds: float
    ttfts: tuple[float, ...]

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds


async def _stream(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[int, float]:
    start = time.perf_counter()
    first, tokens, chunks = 0.0, 0, 0
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
            choice = (chunk.get("choices") or [{}])[0]
            text = choice.get("text") or (choice.get("delta") or {}).get("content")
            if text:
                chunks += 1
                first = first or time.perf_counter() - start
    return tokens or chunks, first


def _body(server: Server, index: int, persona_case: bool, max_tokens: int) -> tuple[str, dict]:
    common = {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    common["stream_options"] = {"include_usage": True}
    if not persona_case:
        return "/v1/completions", {"model": server.model, "prompt": PROMPT, **common}
    persona = PERSONAS[index % len(PERSONAS)]
    question = {"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}
    if server.personas:
        return "/v1/chat/completions", {"model": persona, "messages": [question], **common}
    system = (EXAMPLES / f"{persona}.txt").read_text().strip()
    messages = [{"role": "system", "content": system}, question]
    return "/v1/chat/completions", {"model": server.model, "messages": messages, **common}


async def closed_loop(
    server: Server, streams: int, per_stream: int, persona_case: bool, max_tokens: int
) -> Run:
    # A fresh connection per request, for every server alike: llama-server drops kept-alive
    # connections after a streamed answer, and a reused dead one fails the request.
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as client:

        async def worker(w: int) -> list[tuple[int, float]]:
            out = []
            for i in range(per_stream):
                path, body = _body(server, w * per_stream + i, persona_case, max_tokens)
                out.append(await _stream(client, path, body))
            return out

        start = time.perf_counter()
        results = await asyncio.gather(*(worker(w) for w in range(streams)))
        seconds = time.perf_counter() - start
    flat = [r for rs in results for r in rs]
    return Run(sum(t for t, _ in flat), seconds, tuple(f for _, f in flat))


def start_llama(binary: Path, gguf: Path, slots: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [str(binary), "-m", str(gguf), "--alias", "x", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-t", "2", "-tb", "2", "-c", str(2048 * slots), "-np", str(slots), "-cb"]
    cmd += ["-b", "2048", "-ub", "512"]
    log = results_dir() / "tmp" / f"llama-server-{gguf.stem}.log"  # why, if it crashes
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, 120, alive=lambda: proc.poll() is None)
    return proc, url


def start_softserve(extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = os.environ | {"SOFTSERVE_LOG_LEVEL": "warning", "SOFTSERVE_REQUEST_TIMEOUT_S": "600"}
    cmd = [sys.executable, "-m", "app", "serve", "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, 300, alive=lambda: proc.poll() is None)
    return proc, url


def _model_id(url: str) -> str:
    return str(httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers-dir", type=Path, default=Path.home() / ".cache/softserve/peers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--softserve-args", default="", help="extra `softserve serve` flags")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.quick:
        args.rounds, levels = 1, [1, 8]
    binary = args.peers_dir / "build" / "bin" / "llama-server"
    ggufs = {t: args.peers_dir / f"smollm2-135m-{t}.gguf" for t in ("f32", "q8_0")}
    if not binary.is_file() or not all(p.is_file() for p in ggufs.values()):
        sys.exit(f"peers missing in {args.peers_dir}: run `bash bench/setup_peers.sh` first")

    procs: list[subprocess.Popen[bytes]] = []
    try:
        proc, url = start_softserve(shlex.split(args.softserve_args))
        procs.append(proc)
        servers = [Server("softserve", url, _model_id(url), personas=True)]
        for tag, gguf in ggufs.items():
            proc, url = start_llama(binary, gguf, max(levels))
            procs.append(proc)
            servers.append(Server(f"llama-server {tag.upper()}", url, "x", personas=False))
        cases = [(f"{c} streams", c, False) for c in levels] + [("personas, 8 streams", 8, True)]
        runs: dict[str, dict[str, list[Run]]] = {
            c: {s.name: [] for s in servers} for c, _, _ in cases
        }
        for label, streams, persona_case in cases:
            per_stream = max(2, 16 // streams) if not args.quick else 1
            for server in servers:  # warm-up: one request each (caches, first allocations)
                asyncio.run(closed_loop(server, 1, 1, persona_case, 4))
            for _ in range(args.rounds):
                for server in servers:
                    run = asyncio.run(
                        closed_loop(server, streams, per_stream, persona_case, args.max_tokens)
                    )
                    runs[label][server.name].append(run)
                    print(f"{label:22s} {server.name:20s} {run.tok_s:7.1f} tok/s", flush=True)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    report(runs, args)


def report(runs: dict[str, dict[str, list[Run]]], args: argparse.Namespace) -> None:
    rows = []
    for label, by_server in runs.items():
        soft = by_server["softserve"]
        soft_tps = statistics.median(r.tok_s for r in soft)
        soft_ttft = statistics.median(f for r in soft for f in r.ttfts)
        for name, server_runs in by_server.items():
            tps = statistics.median(r.tok_s for r in server_runs)
            ttft = statistics.median(f for r in server_runs for f in r.ttfts)
            rows.append(
                {
                    "case": label,
                    "server": name,
                    "tok_s": round(tps, 1),
                    "ttft_ms": round(ttft * 1000, 1),
                    "softserve_tok_s_ratio": round(soft_tps / tps, 2),
                    "softserve_ttft_ratio": round(soft_ttft / ttft, 2) if ttft else None,
                    "runs_tok_s": [round(r.tok_s, 1) for r in server_runs],
                }
            )
    print("\n| case | server | tok/s | TTFT ms | Softserve tok/s ratio | Softserve TTFT ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['server']} | {r['tok_s']} | {r['ttft_ms']} | "
            f"{r['softserve_tok_s_ratio']}x | {r['softserve_ttft_ratio']}x |"
        )
    write(
        "peers",
        {
            "rows": rows,
            "softserve_args": args.softserve_args,
            "rounds": args.rounds,
            "max_tokens": args.max_tokens,
            "prompt": PROMPT,
            "cpu_count": os.cpu_count(),
        },
    )
    _plot(rows)


def _plot(rows: list[dict[str, Any]]) -> None:
    from bench.common import plot_bars

    cases = list(dict.fromkeys(r["case"] for r in rows))
    servers = list(dict.fromkeys(r["server"] for r in rows))
    series = {
        s: [next(r["tok_s"] for r in rows if r["case"] == c and r["server"] == s) for c in cases]
        for s in servers
    }
    plot_bars(
        "peers", "Aggregate output tok/s (same machine, same weights)", cases, series, "tok/s"
    )
    print(f"results in {results_dir()}")


if __name__ == "__main__":
    main()
