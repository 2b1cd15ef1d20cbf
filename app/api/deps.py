"""Route dependencies as typed aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from app.api.errors import ApiError
from app.api.state import Runtime, Services
from fastapi import Depends, Request


def get_runtime(request: Request) -> Runtime:
    runtime = request.app.state.runtime
    assert isinstance(runtime, Runtime)
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_services(runtime: RuntimeDep) -> Services:
    if runtime.services is None:
        detail = runtime.load_error or "the model is still loading"
        raise ApiError(503, detail, code="model_loading", headers={"Retry-After": "5"})
    return runtime.services


ServicesDep = Annotated[Services, Depends(get_services)]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def keys_match(given: str | None, expected: str) -> bool:
    # Constant time: the comparison must not reveal how much of a guess was right.
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def require_api_key(request: Request, runtime: RuntimeDep) -> None:
    settings = runtime.settings
    if settings.api_key is None:
        return
    accepted = [
        k.get_secret_value() for k in (settings.api_key, settings.admin_key) if k is not None
    ]
    token = bearer_token(request)
    if not any(keys_match(token, key) for key in accepted):
        raise ApiError(
            401,
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


ApiKeyDep = Depends(require_api_key)
