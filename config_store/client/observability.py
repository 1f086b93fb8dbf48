"""What every service exposes the same way: JSON logs, ``/metrics``, ``/healthz``, ``/readyz``.

Each app gets its own Prometheus registry, so several services can share one process
(the tests, the local stack) without colliding metric names.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["ReadyCheck", "add_health_routes", "json_error", "setup_logging"]

# Returns (ready, details). Details land in the /readyz body, e.g. {"redis": "down"}.
ReadyCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str, service: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("discord").setLevel(max(logging.INFO, root.level))


def json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def add_health_routes(app: web.Application, registry: CollectorRegistry, ready: ReadyCheck) -> None:
    started = time.time()

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
