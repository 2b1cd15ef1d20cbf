"""Prometheus metrics. One CollectorRegistry per app (no module globals); live state (running,
waiting, KV-prefix cache, registry) is read at scrape time, events are observed as they happen."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from app.bridge import BridgeStats, EngineBridge
from app.engine import GenerationRequest
from app.registry import PromptRegistry
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OTHER = "other"


class TaskLabels:
    """Per-task labels for a bounded set only: the first `limit` tasks seen get their own label,
    the rest share "other", so a registry of 10,000 tasks cannot blow up the series count."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, task: str) -> str:
        with self._lock:
            if task in self._known:
                return task
            if len(self._known) < self._limit:
                self._known.add(task)
                return task
            return OTHER


@dataclass(frozen=True)
class LiveSources:
    """Where scrapes read live state: the bridge's typed stats record and the registry."""

    stats: Callable[[], BridgeStats]
    registry: PromptRegistry


class _LiveState(Collector):
    def __init__(self, state: Callable[[], LiveSources | None]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        sources = self._state()
        if sources is None:
            return
        stats, registry = sources.stats(), sources.registry
        cache = stats.engine.prefix_cache
        yield GaugeMetricFamily(
            "softserve_requests_running", "rows in the running batch", value=stats.engine.running
        )
        yield GaugeMetricFamily(
            "softserve_requests_waiting",
            "requests queued for the engine",
            value=stats.engine.waiting,
        )
        yield GaugeMetricFamily(
            "softserve_queued_tokens",
            "prompt + max_tokens not yet running",
            value=stats.queued_tokens,
        )
        yield CounterMetricFamily(
            "softserve_kv_prefix_cache_hits", "KV-prefix cache hits", value=cache.hits
        )
        yield CounterMetricFamily(
            "softserve_kv_prefix_cache_misses",
            "KV-prefix cache misses (computed)",
            value=cache.misses,
        )
        yield GaugeMetricFamily(
            "softserve_kv_prefix_cache_bytes",
            "bytes held by the KV-prefix cache",
            value=cache.bytes,
        )
        yield GaugeMetricFamily(
            "softserve_kv_prefix_cache_entries", "KV prefixes held", value=cache.entries
        )
        yield GaugeMetricFamily(
            "softserve_registry_prompts", "prompts in the registry", value=len(registry)
        )
        yield GaugeMetricFamily(
            "softserve_registry_skipped",
            "prompt folders failing validation",
            value=len(registry.skipped),
        )
        yield CounterMetricFamily(
            "softserve_registry_swaps", "prompts added, replaced or removed", value=registry.swaps
        )


class Metrics:
    """Implements the bridge's observer protocol, plus per-request observations."""

    def __init__(self, top_tasks: int = 20) -> None:
        self.registry = CollectorRegistry()
        self.label = TaskLabels(top_tasks)
        r = self.registry
        self.requests = Counter(
            "softserve_requests",
            "finished HTTP generation requests",
            ["task", "endpoint", "status"],
            registry=r,
        )
        self.rejections = Counter(
            "softserve_rejections", "requests refused before running", ["reason"], registry=r
        )
        self.ttft = Histogram(
            "softserve_time_to_first_token_seconds",
            "arrival to first token",
            ["task"],
            buckets=LATENCY,
            registry=r,
        )
        self.tpot = Histogram(
            "softserve_time_per_output_token_seconds",
            "mean gap between output tokens",
            ["task"],
            buckets=LATENCY,
            registry=r,
        )
        self.e2e = Histogram(
            "softserve_e2e_request_latency_seconds",
            "arrival to last token",
            ["task"],
            buckets=LATENCY,
            registry=r,
        )
        self.queue = Histogram(
            "softserve_queue_time_seconds",
            "submitted to admitted into the batch",
            buckets=LATENCY,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "softserve_prompt_tokens", "prompt tokens in", ["task"], registry=r
        )
        self.output_tokens = Counter(
            "softserve_generation_tokens", "tokens generated", ["task"], registry=r
        )
        self.batch = Histogram(
            "softserve_batch_size",
            "rows per engine step",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.step = Histogram(
            "softserve_engine_step_seconds", "engine step duration", buckets=LATENCY, registry=r
        )
        self._live: LiveSources | None = None
        r.register(_LiveState(lambda: self._live))

    def attach(self, bridge: EngineBridge, registry: PromptRegistry) -> None:
        self._live = LiveSources(stats=bridge.stats, registry=registry)

    # BridgeObserver
    def on_step(self, batch_size: int, prefilled: int, seconds: float) -> None:
        self.batch.observe(batch_size)
        self.step.observe(seconds)

    def on_admitted(self, request: GenerationRequest, queued_s: float) -> None:
        self.queue.observe(queued_s)
