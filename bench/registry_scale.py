"""Scale of the registry: start-up time and memory (RSS) with 10, 1,000 and 10,000 registered
prompts, the cost of a lookup and of a poll for changes. Each size loads in a fresh process so
RSS is its own. With --s3, the same for the S3 backend (10 and 1,000 prompts in a bucket of a
local S3 API server, moto, reached over HTTP): start-up time and API calls, and the calls and
time of a poll, idle and with one task changed by another replica.

    .venv/bin/python -m bench.registry_scale [--quick] [--s3]
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save

from app.model import load_model_spec
from app.registry import S3Location
from app.settings import Settings
from bench.common import base_args, machine, plot_bars, write
from bench.registry_s3 import measure_s3, populate_bucket

CONFIG = '{{"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": {p}}}'


def populate(root: Path, count: int, tokens: int, hidden: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for i in range(count):
        folder = root / f"task-{i:05d}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(CONFIG.format(p=tokens))
        table = torch.randn(tokens, hidden, generator=gen)
        (folder / "adapter_model.safetensors").write_bytes(save({"prompt_embeddings": table}))


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(root: Path, model: str) -> dict[str, float]:
    """Runs in the child: load the registry, report time, RSS growth and lookup cost."""
    from app.registry.store import Registry

    spec = load_model_spec(model, Settings().cache_dir)
    # One-off costs (first safetensors read, allocator arenas) are not per-prompt growth: pay
    # them on a one-prompt registry first.
    with tempfile.TemporaryDirectory() as warm:
        populate(Path(warm), 1, 20, spec.hidden_size)
        Registry(Path(warm), spec).load_all()
    before = rss_bytes()
    start = time.perf_counter()
    registry = Registry(root, spec)
    registry.load_all()
    seconds = time.perf_counter() - start
    growth = rss_bytes() - before
    names = [e.name for e in registry.entries()]
    tensor_bytes = sum(e.nbytes for e in registry.entries())
    picks = [random.Random(0).choice(names) for _ in range(100_000)]
    start = time.perf_counter()
    for name in picks:
        registry.get(name)
    lookup_ns = (time.perf_counter() - start) / len(picks) * 1e9
    polls = []
    for _ in range(20):
        start = time.perf_counter()
        registry.sync()
        polls.append(time.perf_counter() - start)
    return {
        "entries": len(registry),
        "startup_s": seconds,
        "rss_growth_bytes": growth,
        "tensor_bytes": tensor_bytes,
        "lookup_ns": lookup_ns,
        "poll_s": statistics.median(polls),
    }


def run_s3(sizes: list[int], model: str, tokens: int, hidden: int) -> list[dict[str, float]]:
    """A local S3 API server (the tests' moto harness), one bucket per size, a child each."""
    from tests.s3server import CREDENTIALS, s3_server

    os.environ.update(CREDENTIALS)
    rows = []
    with s3_server() as s3:
        for count in sizes:
            bucket = s3.bucket(f"bench-{count}")
            populate_bucket(s3.client(), S3Location(bucket, "reg"), count, tokens, hidden)
            child = [sys.executable, "-m", "bench.registry_scale", "--child-s3"]
            child += [f"s3://{bucket}/reg", s3.endpoint, model]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out))
    return rows


def print_s3(rows: list[dict[str, float]]) -> None:
    print(
        f"{'S3 prompts':>10} {'start-up s':>10} {'calls':>6} {'RSS/tensors':>11} "
        f"{'idle poll: calls':>16} {'ms':>6} {'1 changed: calls':>16} {'ms':>6}"
    )
    for r in rows:
        print(
            f"{r['entries']:>10} {r['startup_s']:>10.2f} {r['startup_calls']:>6} "
            f"{r['rss_growth_bytes'] / r['tensor_bytes']:>10.2f}x {r['poll_calls']:>16} "
            f"{r['poll_s'] * 1000:>6.1f} {r['changed_poll_calls']:>16} {r['changed_poll_s'] * 1000:>6.1f}"
        )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(measure(Path(sys.argv[2]), sys.argv[3])))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--child-s3":
        spec = load_model_spec(sys.argv[4], Settings().cache_dir)
        print(json.dumps(measure_s3(sys.argv[2], sys.argv[3], spec, rss_bytes)))
        return
    parser = base_args(__doc__)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    parser.add_argument("--s3", action="store_true", help="also the S3 backend (local moto)")
    args = parser.parse_args()
    sizes = [10, 100, 1000] if args.quick else [10, 1000, 10000]
    spec = load_model_spec(args.model, Settings().cache_dir)
    rows = []
    for count in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            populate(Path(tmp), count, args.virtual_tokens, spec.hidden_size)
            child = [sys.executable, "-m", "bench.registry_scale", "--child", tmp, args.model]
            result = json.loads(
                subprocess.run(child, check=True, capture_output=True, text=True).stdout
            )
        result["rss_over_tensors"] = result["rss_growth_bytes"] / result["tensor_bytes"]
        rows.append(result)
    s3_rows = []
    if args.s3:
        sizes = [10, 100] if args.quick else [10, 1000]
        s3_rows = run_s3(sizes, args.model, args.virtual_tokens, spec.hidden_size)
    print(
        f"{'prompts':>8} {'start-up s':>10} {'RSS growth MiB':>15} {'tensors MiB':>12} "
        f"{'ratio':>6} {'lookup ns':>10} {'poll ms':>8}"
    )
    for r in rows:
        print(
            f"{r['entries']:>8} {r['startup_s']:>10.2f} {r['rss_growth_bytes'] / 2**20:>15.1f} "
            f"{r['tensor_bytes'] / 2**20:>12.1f} {r['rss_over_tensors']:>5.2f}x {r['lookup_ns']:>10.0f}"
            f" {r['poll_s'] * 1000:>8.1f}"
        )
    if s3_rows:
        print_s3(s3_rows)
    print(
        "targets: RSS growth <= 1.2x the tensors (the KV-prefix cache is filled lazily, "
        "bounded by kv_cache_mib); lookup cost flat"
    )
    write(
        "registry_scale",
        {
            "machine": machine(args),
            "virtual_tokens": args.virtual_tokens,
            "rows": rows,
            "s3_rows": s3_rows,
        },
    )
    plot_bars(
        "registry_scale",
        "Registry start-up and memory by number of prompts",
        [str(r["entries"]) for r in rows],
        {
            "RSS growth / tensor bytes": [r["rss_over_tensors"] for r in rows],
            "lookup (us)": [r["lookup_ns"] / 1000 for r in rows],
        },
        "ratio / microseconds",
    )


if __name__ == "__main__":
    main()
