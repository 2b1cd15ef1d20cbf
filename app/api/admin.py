"""Who may change the registry: the admin key, or (with no admin key set) loopback clients."""

from __future__ import annotations

import ipaddress

from app.api.deps import RuntimeDep, bearer_token, keys_match
from app.api.errors import ApiError
from fastapi import Depends, Request


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_admin(request: Request, runtime: RuntimeDep) -> None:
    settings = runtime.settings
    token = bearer_token(request)
    if settings.admin_key is None:
        if not _is_loopback(request):
            raise ApiError(
                403,
                "changing prompts needs SOFTSERVE_ADMIN_KEY on the server, or a loopback client",
                code="forbidden",
            )
        return
    if keys_match(token, settings.admin_key.get_secret_value()):
        return
    if settings.api_key is not None and keys_match(token, settings.api_key.get_secret_value()):
        raise ApiError(
            403, "the inference API key cannot change prompts: use the admin key", code="forbidden"
        )
    raise ApiError(
        401,
        "missing or invalid admin key: send 'Authorization: Bearer <admin key>'",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


AdminDep = Depends(require_admin)
