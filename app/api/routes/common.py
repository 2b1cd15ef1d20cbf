"""Documented error responses shared by the routes (for the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from app.api.schemas import ErrorBody

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "invalid request"},
    401: {"model": ErrorBody, "description": "missing or invalid API key"},
    404: {"model": ErrorBody, "description": "unknown model (task)"},
    413: {"model": ErrorBody, "description": "request body too large"},
    429: {"model": ErrorBody, "description": "overloaded; retry after Retry-After seconds"},
    503: {"model": ErrorBody, "description": "model loading or engine unavailable"},
}
