"""Application state, built in the lifespan: the services every route depends on."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.api.grammar import Grammars
from app.api.metrics import Metrics
from app.api.tracking import Gate
from app.bridge import BridgeConfig, EngineBridge
from app.engine import Backend, Engine, EngineConfig
from app.model import FrozenModel
from app.registry import Limits, PromptRegistry, RegistryWatcher, open_registry
from app.settings import Settings


@dataclass(frozen=True)
class Services:
    settings: Settings
    base: FrozenModel
    registry: PromptRegistry
    engine: Engine
    bridge: EngineBridge
    watcher: RegistryWatcher
    grammars: Grammars  # constrained decoding (structured output, labels, tool calls)
    started: float = field(default_factory=time.time)


@dataclass
class Runtime:
    """Mutable holder on `app.state`: empty while the model loads, then the services."""

    settings: Settings
    metrics: Metrics
    gate: Gate
    services: Services | None = None
    load_error: str | None = None
    ignored_fields: set[str] = field(default_factory=set)  # unknown body fields, logged once

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        metrics = Metrics(settings.top_task_labels)
        return cls(settings=settings, metrics=metrics, gate=Gate(settings.max_requests, metrics))


def engine_config(settings: Settings, *, quantize_in_background: bool) -> EngineConfig:
    """The one mapping of settings to the engine's configuration (the benchmarks use it too)."""
    return EngineConfig(
        max_batch_size=settings.max_batch_size,
        kv_prefix_cache_mib=settings.kv_cache_mib,
        max_context=settings.max_context,
        backend=Backend(settings.backend),
        quantize=settings.quantize,
        int8_max_tokens=settings.int8_max_tokens,
        prefill_chunk=settings.prefill_chunk,
        quantize_in_background=quantize_in_background,
        native_dir=settings.cache_dir / "native" if settings.native_decode else None,
    )


def build_services(settings: Settings, base: FrozenModel, metrics: Metrics) -> Services:
    limits = Limits(
        max_virtual_tokens=settings.max_virtual_tokens, max_tensor_bytes=settings.max_upload_bytes
    )
    registry = open_registry(settings.prompts, base.spec, limits, settings.s3_options)
    registry.load_all()
    watcher = RegistryWatcher(registry, settings.registry_poll_s)
    watcher.start()
    # Answer at once; the int8 kernels take over a second or two later.
    engine = Engine(base, engine_config(settings, quantize_in_background=True))
    bridge = EngineBridge(
        engine,
        BridgeConfig(
            max_in_flight=settings.max_in_flight, max_queued_tokens=settings.max_queued_tokens
        ),
        observer=metrics,
    )
    bridge.start()
    metrics.attach(bridge, registry)
    return Services(
        settings=settings,
        base=base,
        registry=registry,
        engine=engine,
        bridge=bridge,
        watcher=watcher,
        grammars=Grammars(base.tokenizer, base.spec.vocab_size, base.spec.eos_token_ids),
    )
