"""Application state, built in the lifespan: the services every route depends on."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.api.metrics import Metrics
from app.api.tracking import Gate
from app.engine import Engine, EngineConfig
from app.model import BaseModel
from app.registry import Limits, PromptRegistry, RegistryWatcher, open_registry
from app.scheduler import Scheduler, SchedulerConfig
from app.settings import Settings


@dataclass(frozen=True)
class Services:
    settings: Settings
    base: BaseModel
    registry: PromptRegistry
    engine: Engine
    scheduler: Scheduler
    watcher: RegistryWatcher
    started: float = field(default_factory=time.time)


@dataclass
class Runtime:
    """Mutable holder on `app.state`: empty while the model loads, then the services."""

    settings: Settings
    metrics: Metrics
    gate: Gate
    services: Services | None = None
    load_error: str | None = None

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        metrics = Metrics(settings.top_task_labels)
        return cls(settings=settings, metrics=metrics, gate=Gate(settings.max_requests, metrics))


def build_services(settings: Settings, base: BaseModel, metrics: Metrics) -> Services:
    limits = Limits(
        max_virtual_tokens=settings.max_virtual_tokens, max_tensor_bytes=settings.max_upload_bytes
    )
    registry = open_registry(settings.prompts, base.spec, limits, settings.s3_options)
    registry.load_all()
    watcher = RegistryWatcher(registry, settings.registry_poll_s)
    watcher.start()
    engine = Engine(
        base,
        EngineConfig(
            max_batch_size=settings.max_batch_size,
            max_waiting=settings.max_in_flight,
            kv_prefix_cache_mib=settings.kv_cache_mib,
            max_context=settings.max_context,
        ),
    )
    scheduler = Scheduler(
        engine,
        SchedulerConfig(
            max_in_flight=settings.max_in_flight, max_queued_tokens=settings.max_queued_tokens
        ),
        observer=metrics,
    )
    scheduler.start()
    metrics.attach(engine, scheduler, registry)
    return Services(
        settings=settings,
        base=base,
        registry=registry,
        engine=engine,
        scheduler=scheduler,
        watcher=watcher,
    )
