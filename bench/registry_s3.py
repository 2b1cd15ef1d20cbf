"""The S3 side of `bench.registry_scale`: fill a bucket with prompts in the registry's layout, and
measure (in a fresh process) start-up, and the API calls and time of a poll."""

from __future__ import annotations

import hashlib
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from safetensors.torch import save

from app.registry import PromptFiles, S3Location, S3Options
from app.registry.s3_layout import Pointer, object_key, pointer_key, version_id

CONFIG = '{{"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": {p}}}'


def populate_bucket(client: Any, where: S3Location, count: int, tokens: int, hidden: int) -> None:
    """`count` tasks, written as a writer would (version objects, then the pointer), in parallel."""
    gen = torch.Generator().manual_seed(0)
    tables = [
        save({"prompt_embeddings": torch.randn(tokens, hidden, generator=gen)})
        for _ in range(count)
    ]

    def one(i: int) -> None:
        task, vid = f"task-{i:05d}", version_id(1, f"{i:016x}")
        files = {
            "adapter_config.json": CONFIG.format(p=tokens).encode(),
            "adapter_model.safetensors": tables[i],
        }
        for name, data in files.items():
            client.put_object(
                Bucket=where.bucket, Key=object_key(where, task, vid, name), Body=data
            )
        sha = hashlib.sha256(tables[i]).hexdigest()
        pointer = Pointer(1, vid, sha, tuple(sorted(files)), time.time())
        client.put_object(Bucket=where.bucket, Key=pointer_key(where, task), Body=pointer.encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))


def measure_s3(url: str, endpoint: str, spec: Any, rss: Any) -> dict[str, float]:
    """Runs in the child: start-up, idle polls, a poll that loads one changed task, lookups."""
    from app.registry.s3 import S3Registry

    where = S3Location.parse(url)
    options = S3Options(endpoint_url=endpoint, gc_grace_s=3600)  # no collection in the polls
    # boto3's import and first client are a one-off cost, not per-prompt growth: pay it first.
    S3Registry(where, spec, options=options).bucket.check()
    before = rss()
    start = time.perf_counter()
    registry = S3Registry(where, spec, options=options)
    registry.load_all()
    seconds = time.perf_counter() - start
    startup_calls = registry.bucket.calls
    growth = rss() - before
    idle = []
    for _ in range(20):
        registry.sync()
        idle.append(registry.last_poll)
    # One task changed by another replica: the poll reads its pointer and its version.
    writer = S3Registry(where, spec, options=options)
    name = registry.entries()[0].name
    old = registry.get(name).soft_prompt.table
    files = PromptFiles(
        CONFIG.format(p=old.shape[0]).encode(), save({"prompt_embeddings": old + 1})
    )
    writer.put(name, files)
    registry.sync()
    changed = registry.last_poll
    names = [e.name for e in registry.entries()]
    start = time.perf_counter()
    for i in range(100_000):
        registry.get(names[i % len(names)])
    return {
        "entries": len(registry),
        "startup_s": seconds,
        "startup_calls": startup_calls,
        "rss_growth_bytes": growth,
        "tensor_bytes": sum(e.nbytes for e in registry.entries()),
        "poll_s": statistics.median(p.seconds for p in idle),
        "poll_calls": max(p.calls for p in idle),
        "changed_poll_s": changed.seconds,
        "changed_poll_calls": changed.calls,
        "lookup_ns": (time.perf_counter() - start) / 100_000 * 1e9,
    }
