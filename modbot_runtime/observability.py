"""What every service exposes the same way: JSON logs, ``/metrics``, ``/healthz``, ``/readyz``,
``modbot_build_info`` and request ids.

Each app gets its own Prometheus registry, so several services can share one process
(the tests, the local stack) without colliding metric names.

Request ids: every service's app takes ``X-Request-Id`` from the request when it is a sane
token (at most 64 of ``[A-Za-z0-9._-]``), otherwise makes one; it is echoed in the response
and, through a context variable, lands in every log line written while the request is
handled (tasks started by the handler inherit it). A hostile value (CRLF, huge, non-ASCII)
is replaced, never echoed or logged.
"""

from __future__ import annotations

import contextvars
import json
import logging
import platform
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import prometheus_client
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from modbot_ring import __version__

__all__ = [
    "REQUEST_ID_HEADER",
    "ReadyCheck",
    "add_health_routes",
    "current_request_id",
    "json_error",
    "register_build_info",
    "request_id_middleware",
    "sane_request_id",
    "setup_logging",
]

# Counters' `*_created` series double the series count and no dashboard or alert here
# uses them (prometheus_client >= 0.16: process-wide switch, read at scrape time).
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# Returns (ready, details). Details land in the /readyz body, e.g. {"redis": "down"}.
ReadyCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "modbot_request_id", default=None
)


def sane_request_id(value: str | None) -> str | None:
    """``value`` if it is safe to echo and log (<= 64 of [A-Za-z0-9._-]), else None."""
    if value is None or not _SANE_ID.fullmatch(value):
        return None
    return value


def current_request_id() -> str | None:
    """The id of the request being handled in this task, if any (for outgoing calls)."""
    return _request_id.get()


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: so the error middlewares' log lines carry the id too."""
    rid = sane_request_id(request.headers.get(REQUEST_ID_HEADER)) or secrets.token_hex(8)
    token = _request_id.set(rid)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # raised answers (redirects, 4xx) carry it as well
            exc.headers[REQUEST_ID_HEADER] = rid
            raise
        if not response.prepared:  # a streamed response has sent its headers already
            response.headers[REQUEST_ID_HEADER] = rid
        logging.getLogger("modbot.request").debug(
            "%s %s -> %s", request.method, request.path, response.status
        )
        return response
    finally:
        _request_id.reset(token)


def _iso_utc(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


# discord.py's notice that a shard (or client) lost Discord and will reconnect: logged at
# ERROR with the network error's traceback on every attempt (OSError, aiohttp.ClientError,
# TimeoutError, ConnectionClosed: the only exceptions that reach it). Discord being
# unreachable is an outage to see, not a bug to debug: the error's one line is kept, its
# traceback (3 KB per shard per attempt) is not.
_RECONNECT_NOTICES = {"discord.shard", "discord.client"}


def _reconnect_notice(record: logging.LogRecord) -> bool:
    return record.name in _RECONNECT_NOTICES and str(record.msg).startswith(
        "Attempting a reconnect"
    )


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or _request_id.get()
        if rid:
            entry["request_id"] = rid
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info and record.exc_info[1] is not None and _reconnect_notice(record):
            error = record.exc_info[1]
            entry["exc"] = f"{type(error).__name__}: {error}"
        elif record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _RequestIdFilter(logging.Filter):
    """Pins the request id on the record where it is made, in case a handler formats later."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return True


def setup_logging(level: str, service: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(service))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("discord").setLevel(max(logging.INFO, root.level))


def json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def register_build_info(registry: CollectorRegistry, component: str) -> None:
    """``modbot_build_info{version,python,component} 1``: join on it to see what runs where."""
    Gauge(
        "modbot_build_info",
        "Always 1; the labels say which modbot-ring version and Python this component runs.",
        ["version", "python", "component"],
        registry=registry,
    ).labels(__version__, platform.python_version(), component).set(1)


def add_health_routes(
    app: web.Application,
    registry: CollectorRegistry,
    ready: ReadyCheck,
    *,
    component: str = "",
) -> None:
    """Health, readiness and metrics routes; with ``component``, also ``modbot_build_info``.

    Also puts :func:`request_id_middleware` first on ``app``, so every service gets request
    ids from the one call it already makes."""
    started = time.time()
    if component:
        register_build_info(registry, component)
    if request_id_middleware not in app.middlewares:
        app.middlewares.insert(0, request_id_middleware)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "uptime": round(time.time() - started, 1)})

    async def readyz(_: web.Request) -> web.Response:
        ok, details = await ready()
        return web.json_response({"ready": ok, **details}, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
