"""GET /health: 200 only once the model is loaded and the engine loop is alive."""

from __future__ import annotations

import time

from app.api.deps import RuntimeDep
from app.api.schemas import Health
from fastapi import APIRouter
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])

# A loop that has not checked in for this long is considered hung.
STALL_AFTER_S = 30.0


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(runtime: RuntimeDep) -> JSONResponse:
    services = runtime.services
    if services is None:
        status, detail = (
            ("unhealthy", runtime.load_error) if runtime.load_error else ("loading", None)
        )
        return JSONResponse(Health(status=status, detail=detail).model_dump(), status_code=503)
    scheduler = services.scheduler
    if not scheduler.alive:
        return JSONResponse(
            Health(status="unhealthy", detail="engine loop is not running").model_dump(), 503
        )
    quiet = time.monotonic() - scheduler.heartbeat
    if quiet > STALL_AFTER_S:
        detail = f"engine loop has made no progress for {quiet:.1f} s"
        return JSONResponse(Health(status="unhealthy", detail=detail).model_dump(), 503)
    return JSONResponse(Health(status="ok").model_dump(), 200)
