"""GET /health: 200 only while the model is loaded and the engine loop makes progress."""

from __future__ import annotations

import time

from app.api.deps import RuntimeDep
from app.api.schemas import Health, HealthStatus
from fastapi import APIRouter
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


def _answer(status: HealthStatus, detail: str | None, code: int) -> JSONResponse:
    return JSONResponse(Health(status=status, detail=detail).model_dump(), status_code=code)


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(runtime: RuntimeDep) -> JSONResponse:
    services = runtime.services
    if services is None:
        if runtime.load_error:
            return _answer("unhealthy", runtime.load_error, 503)
        return _answer("loading", None, 503)
    if runtime.gate.draining:
        return _answer("draining", "shutting down: finishing running requests", 503)
    bridge = services.bridge
    if not bridge.alive:
        return _answer("unhealthy", "engine loop is not running", 503)
    # The loop checks in at least every idle poll and after every step. A step may legitimately
    # take long (a big prefill on a CPU), so the allowance grows with the slowest recent step.
    allowance = max(runtime.settings.health_stall_s, 3 * bridge.longest_step_s)
    quiet = time.monotonic() - bridge.heartbeat
    if quiet > allowance:
        return _answer("unhealthy", f"engine loop has made no progress for {quiet:.1f} s", 503)
    return _answer("ok", None, 200)
