"""Roles: each handler declares the one it needs; the middleware checks the bearer token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from modbot_runtime.auth import matching_token
from modbot_runtime.observability import json_error

from .context import SETTINGS_KEY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def role(required: str) -> Callable[[Handler], Handler]:
    """``admin`` (writes) or ``read`` (reads; an admin token opens them too)."""

    def mark(handler: Handler) -> Handler:
        handler.__modbot_role__ = required  # type: ignore[attr-defined]
        return handler

    return mark


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    required = getattr(handler, "__modbot_role__", None)
    if required is None:
        return await handler(request)
    settings = request.app[SETTINGS_KEY]
    presented = matching_token(
        request.headers.get("Authorization"),
        {"admin": settings["admin_token"], "read": settings["read_token"]},
    )
    if not (presented == "admin" or (required == "read" and presented == "read")):
        what = "an admin token" if required == "admin" else "a read or admin token"
        return json_error(
            401,
            f"this endpoint needs {what} (Authorization: Bearer ...)",
            **{"WWW-Authenticate": "Bearer"},
        )
    return await handler(request)
