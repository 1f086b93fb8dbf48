"""The config service's ``/v1`` HTTP API, one module per resource.

``app`` builds the application and its route table; ``context`` holds the app keys and
the metrics; ``auth`` the roles; ``errors`` the middleware that turns exceptions into
JSON errors (the one place HTTP statuses are decided); ``parsing`` the request parsing
every handler shares (bodies are loaded into the models of ``config_store/models.py``,
which the OpenAPI document states too). Handlers: ``table`` (the routing table, routes, status, ring),
``pods``, ``pins``, ``plans`` (migrations, plans, verify), ``audit`` and ``ops`` (the
operations page, balance, the OpenAPI document).

Each handler declares the role it needs (``admin`` for writes, ``read`` for reads);
the auth middleware enforces it. Bodies are strict: unknown fields are a 400, so a
typo never silently becomes a default.
"""

from __future__ import annotations

from ..models import check_pod_url
from .app import add_routes, new_app
from .auth import auth_middleware, role
from .context import (
    BALANCER_KEY,
    METRICS_KEY,
    MIGRATOR_KEY,
    PUBLISHER_KEY,
    SETTINGS_KEY,
    STORE_KEY,
    ApiMetrics,
)
from .errors import STATUSES, errors_middleware, status_for
from .parsing import MAX_BODY, non_negative_int

__all__ = [
    "BALANCER_KEY",
    "MAX_BODY",
    "METRICS_KEY",
    "MIGRATOR_KEY",
    "PUBLISHER_KEY",
    "SETTINGS_KEY",
    "STATUSES",
    "STORE_KEY",
    "ApiMetrics",
    "add_routes",
    "auth_middleware",
    "check_pod_url",
    "errors_middleware",
    "new_app",
    "non_negative_int",
    "role",
    "status_for",
]
