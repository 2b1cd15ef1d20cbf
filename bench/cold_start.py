"""Cold start: time from `softserve serve` to the first answer, first start vs cached start.

    .venv/bin/python -m bench.cold_start [--device cuda] [--runs 2]

The first start uses an empty cache folder (the GGUF is de-quantized and cached); each later start
reuses it. Writes bench/results/cold_start.json and cold_start.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

QUESTION = {"role": "user", "content": "What is the capital of France?"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def time_to_first_answer(cache_dir: Path, prompts: Path, device: str) -> tuple[float, float, str]:
    port = free_port()
    env = {
        **os.environ,
        "SOFTSERVE_CACHE_DIR": str(cache_dir),
        "SOFTSERVE_PROMPTS": str(prompts),
        "SOFTSERVE_DEVICE": device,
    }
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            if proc.poll() is not None:
                raise RuntimeError("server exited during start-up")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        healthy = time.perf_counter() - start
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": "SmolLM2-135M-Instruct",
                "messages": [QUESTION],
                "max_tokens": 20,
                "temperature": 0,
            },
            timeout=120,
        )
        answered = time.perf_counter() - start
        return healthy, answered, r.json()["choices"][0]["message"]["content"]
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2, help="starts in all (the first is uncached)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache, prompts = Path(tmp) / "cache", Path(tmp) / "prompts"
        prompts.mkdir()
        for i in range(args.runs):
            healthy, answered, text = time_to_first_answer(cache, prompts, args.device)
            rows.append(
                {
                    "start": "first (uncached)" if i == 0 else "cached",
                    "healthy_s": healthy,
                    "first_answer_s": answered,
                    "answer": text,
                }
            )
    print(f"{'start':<18} {'healthy (s)':>12} {'first answer (s)':>17}")
    for row in rows:
        print(f"{row['start']:<18} {row['healthy_s']:>12.2f} {row['first_answer_s']:>17.2f}")
    cached = [r["first_answer_s"] for r in rows[1:]]
    if cached:
        print(
            f"first/cached ratio: {rows[0]['first_answer_s'] / min(cached):.1f}x; answer: {rows[-1]['answer']!r}"
        )
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    save({"machine": machine, "runs": rows})


def save(payload: dict[str, Any]) -> None:
    from bench.common import plot_bars, write  # torch comes with them: only after the timings

    write("cold_start", payload)
    rows = payload["runs"]
    plot_bars(
        "cold_start",
        "softserve serve: start to first answer",
        [f"start {i + 1} ({'uncached' if i == 0 else 'cached'})" for i in range(len(rows))],
        {
            "healthy": [r["healthy_s"] for r in rows],
            "first answer": [r["first_answer_s"] for r in rows],
        },
        "seconds",
    )


if __name__ == "__main__":
    main()
