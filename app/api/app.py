"""The FastAPI application factory. State is created in the lifespan, never at import."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from app.api.errors import install_error_handlers
from app.api.limits import BodySizeLimit
from app.api.routes import chat, completions, health, metrics, models, prompts, tokenizer
from app.api.state import Runtime, build_services
from app.model import FrozenModel, load_base_model
from app.settings import Settings
from fastapi import FastAPI

from app import __version__

log = logging.getLogger("softserve.api")
T = TypeVar("T")


async def _in_own_thread(fn: Callable[[], T]) -> T:
    """Run `fn` in a thread that ends with it, not in the event loop's executor. Why: a thread
    that ever ran a parallel torch op keeps an OpenMP pool while it lives; once more OpenMP
    threads exist than cores, libgomp throttles their spin-waiting and every matmul of the engine
    thread runs ~2x slower (measured: 17 -> 60 us for one int8 GEMV). A pool dies with its thread."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def work() -> None:
        try:
            result = fn()
        except BaseException as exc:  # delivered to the awaiting task, not lost in the thread
            loop.call_soon_threadsafe(done.set_exception, exc)
        else:
            loop.call_soon_threadsafe(done.set_result, result)

    threading.Thread(target=work, name="softserve-start", daemon=True).start()
    return await done


async def _start(runtime: Runtime, base: FrozenModel | None) -> None:
    settings = runtime.settings
    try:
        if base is None:
            base = await _in_own_thread(
                lambda: load_base_model(
                    settings.model,
                    device=settings.device,
                    dtype=settings.dtype,
                    cache_dir=settings.cache_dir,
                )
            )
        loaded = base
        runtime.services = await _in_own_thread(
            lambda: build_services(settings, loaded, runtime.metrics)
        )
        log.info("ready: model %s, %d prompts", base.spec.model_id, len(runtime.services.registry))
    except Exception as exc:
        log.exception("start-up failed")
        runtime.load_error = f"start-up failed: {exc}"


def create_app(settings: Settings, base: FrozenModel | None = None) -> FastAPI:
    """`base` lets tests inject an already-built model; otherwise the lifespan loads one,
    in a worker thread, while /health answers 503."""
    runtime = Runtime.create(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.create_task(_start(runtime, base))
        try:
            yield
        finally:
            await asyncio.shield(starting)
            if runtime.services is not None:
                runtime.services.watcher.stop()
                runtime.services.bridge.stop()

    app = FastAPI(
        title="Softserve",
        version=__version__,
        description="Multi-task LLM inference with hot-swappable soft prompts (OpenAI-compatible).",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        limit_for=lambda path: (
            settings.max_upload_bytes
            if path.startswith("/v1/prompts/")
            else settings.max_body_bytes
        ),
    )
    for module in (health, metrics, models, completions, chat, prompts, tokenizer):
        app.include_router(module.router)
    return app
