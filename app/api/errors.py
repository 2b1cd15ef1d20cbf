"""Every error leaves in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from app.bridge import BridgeStopped, Overloaded
from app.engine import RequestError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("softserve.api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


# What the layers below may raise while a request is served (RuntimeError: the engine failed).
DOMAIN_ERRORS = (RequestError, RuntimeError)


def domain_error(exc: RequestError | RuntimeError) -> ApiError:
    """The one domain-error -> (status, code) table: JSON responses and SSE error events alike."""
    if isinstance(exc, RequestError):
        return ApiError(400, str(exc), param=exc.param, code="invalid_request")
    if isinstance(exc, Overloaded):
        return ApiError(
            429, f"server overloaded: {exc}", code="overloaded", headers={"Retry-After": "1"}
        )
    if isinstance(exc, BridgeStopped):
        return ApiError(503, str(exc), code="unavailable", headers={"Retry-After": "5"})
    return ApiError(503, str(exc), code="engine_error", headers={"Retry-After": "5"})


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, dict[str, str | None]]:
    """OpenAI's error shape; an SSE error event carries the same object."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = error_body(status, message, param, code)
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_param(loc: tuple[int | str, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers
    )


def _body_error(request: Request, errors: Sequence[Any]) -> JSONResponse | None:
    """A body that is not JSON at all: say so (and where), rather than naming a character
    offset as the parameter or complaining that a string is not an object."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        where = first.get("loc", ())[-1]
        message = f"the request body is not valid JSON: {ctx.get('error', 'parse error')} at character {where}"
        return error_response(400, message, param="body", code="invalid_json")
    content_type = request.headers.get("content-type", "")
    if tuple(first.get("loc", ())) == ("body",) and "json" not in content_type:
        message = (
            f"the request body must be a JSON object sent with 'Content-Type: application/json' "
            f"(got Content-Type {content_type or 'none'!r})"
        )
        return error_response(400, message, param="body", code="invalid_content_type")
    return None


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    body_error = _body_error(request, errors)
    if body_error is not None:
        return body_error
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = _validation_param(tuple(first.get("loc", ())))
    message = "; ".join(
        f"{_validation_param(tuple(e.get('loc', ()))) or 'body'}: {e.get('msg', 'invalid')}"
        for e in errors[:5]
    )
    return error_response(400, message, param=param, code="invalid_request")


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal server error", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
