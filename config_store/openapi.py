"""The OpenAPI 3.1 description of ``/v1``, served at ``/v1/openapi.json``.

Request and response bodies are not written here: they come from the models the
handlers validate with (``config_store/models.py``, ``BODIES``), so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

from .models import BODIES, Error, RingSettings, Version
from .schema import json_schema

_ERROR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_RING = {
    "description": "the ring settings",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RingSettings"}}},
}
_VERSION = {
    "description": "the table version after the change",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Version"}}},
}
_GUILD = {
    "name": "guild_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,18}$"},
    "description": "a guild id (snowflake) in 1 .. 2**63-1: every store is signed 64-bit",
}
_UINT = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_POD = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"},
}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": '^(W/)?"?[0-9]{1,19}"?$'},
    "description": 'compare-and-set: the table version you read, e.g. "42"; 409 if it moved on',
}
_READ: list[dict[str, list[str]]] = [{"bearer": []}]
_ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]


def _op(
    summary: str,
    *,
    route: tuple[str, str] | None = None,
    admin: bool = False,
    params: list[dict[str, Any]] | None = None,
    ok: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": _ADMIN if admin else _READ,
        "responses": {
            "200": ok or {"description": "ok"},
            "400": _ERROR,
            "401": _ERROR,
            "503": _ERROR,
            **(extra or {}),
        },
    }
    if params:
        op["parameters"] = params
        if any(p["in"] == "path" for p in params):  # the named pod, pin, plan... may not exist
            op["responses"].setdefault("404", _ERROR)
    if admin:  # every write can meet a conflicting state (another change, a running plan)
        op["responses"].setdefault("409", _ERROR)
    if route is not None:  # (method, path) of a route that takes a JSON body
        schema = json_schema(BODIES[route])
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        op["responses"]["413"] = _ERROR
    return op


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "modbot-ring config service",
        "version": "1",
        "description": 'Pods, pins and the routing table. Writes need the admin token; reads the read (or admin) token. Errors are {"error": message}.',
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": json_schema(Error),
            "Version": json_schema(Version, closed=False),
            "RingSettings": json_schema(RingSettings),
        },
    },
    "paths": {
        "/v1/status": {"get": _op("pods with shard/pin counts and ring share, table version")},
        "/v1/table": {
            "get": _op(
                "the routing table (RoutingTable.to_json); ETag is the version",
                params=[
                    {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "number", "maximum": 30},
                        "description": "with If-None-Match: hold up to this many seconds for a newer version",
                    },
                ],
                extra={"304": {"description": "not modified"}},
            )
        },
        "/v1/table/version": {"get": _op("the current table version", ok=_VERSION)},
        "/v1/ring": {
            "get": _op("ring settings", ok=_RING),
            "put": _op(
                "change ring settings",
                admin=True,
                params=[_IF_MATCH],
                route=("put", "/v1/ring"),
                ok=_VERSION,
                extra={"409": _ERROR},
            ),
        },
        "/v1/pods": {"get": _op("registered pods with state and heartbeat age")},
        "/v1/pods/{name}": {
            "put": _op(
                "register a pod or refresh its url/weight (idempotent)",
                admin=True,
                params=[_POD],
                route=("put", "/v1/pods/{name}"),
                ok=_VERSION,
            ),
            "delete": _op(
                "remove a pod that holds no pins",
                admin=True,
                params=[_POD, _IF_MATCH],
                ok=_VERSION,
                extra={"404": _ERROR, "409": _ERROR},
            ),
        },
        "/v1/pods/{name}/heartbeat": {
            "post": _op(
                "liveness and load report; brings an offline pod back",
                admin=True,
                params=[_POD],
                route=("post", "/v1/pods/{name}/heartbeat"),
                ok=_VERSION,
                extra={"404": _ERROR},
            )
        },
        "/v1/pods/{name}/drain": {
            "post": _op(
                "stop ring placement on the pod",
                admin=True,
                params=[_POD, _IF_MATCH],
                ok=_VERSION,
                extra={"404": _ERROR, "409": _ERROR},
            )
        },
        "/v1/pods/{name}/activate": {
            "post": _op(
                "undo a drain",
                admin=True,
                params=[_POD, _IF_MATCH],
                ok=_VERSION,
                extra={"404": _ERROR, "409": _ERROR},
            )
        },
        "/v1/pins": {
            "get": _op(
                "pins, ascending by guild id",
                params=[
                    {"name": "pod", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": _UINT,
                        "description": "at most 10,000 (larger values are capped)",
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "schema": _UINT,
                        "description": "guild id cursor",
                    },
                ],
            )
        },
        "/v1/pins/bulk": {
            "post": _op(
                "set and delete pins in one change",
                admin=True,
                params=[_IF_MATCH],
                route=("post", "/v1/pins/bulk"),
                ok=_VERSION,
                extra={"409": _ERROR},
            )
        },
        "/v1/pins/{guild_id}": {
            "get": _op("one pin", params=[_GUILD], extra={"404": _ERROR}),
            "put": _op(
                "pin a guild to a pod",
                admin=True,
                params=[_GUILD, _IF_MATCH],
                route=("put", "/v1/pins/{guild_id}"),
                ok=_VERSION,
                extra={"409": _ERROR},
            ),
            "delete": _op(
                "unpin a guild",
                admin=True,
                params=[_GUILD, _IF_MATCH],
                ok=_VERSION,
                extra={"404": _ERROR, "409": _ERROR},
            ),
        },
        "/v1/guilds/{guild_id}/route": {
            "get": _op("which pod owns the guild, and why", params=[_GUILD])
        },
        "/v1/audit": {
            "get": _op(
                "audit log, newest first",
                params=[
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 1000},
                    },
                    {"name": "before", "in": "query", "schema": _UINT},
                ],
            )
        },
        "/v1/migrations": {
            "get": _op("migrations, newest first (?open=1, ?plan=ID)"),
            "post": _op(
                "migrate one guild to a pod (runs in the background)",
                admin=True,
                route=("post", "/v1/migrations"),
                ok={"description": "accepted"},
                extra={"202": {"description": "started"}, "409": _ERROR},
            ),
        },
        "/v1/migrations/{id}": {
            "get": _op(
                "one migration and its state",
                params=[{"name": "id", "in": "path", "required": True, "schema": _UINT}],
                extra={"404": _ERROR},
            )
        },
        "/v1/migrations/{id}/cancel": {
            "post": _op(
                "roll back a migration that has not flipped yet",
                admin=True,
                params=[{"name": "id", "in": "path", "required": True, "schema": _UINT}],
                extra={"409": _ERROR},
            )
        },
        "/v1/plans": {
            "get": _op("recent plans"),
            "post": _op(
                "generate a rebalancing plan (dry run: nothing moves until apply)",
                admin=True,
                route=("post", "/v1/plans"),
                extra={
                    "201": {"description": "the plan, with the current assignment for rollback"},
                    "404": _ERROR,  # drain: no such pod
                },
            ),
        },
        "/v1/plans/{id}": {
            "get": _op(
                "a plan with its migrations' progress",
                params=[
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                extra={"404": _ERROR},
            )
        },
        "/v1/plans/{id}/apply": {
            "post": _op(
                "execute a plan (one plan at a time; refused if the table moved on)",
                admin=True,
                params=[
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                route=("post", "/v1/plans/{id}/apply"),
                extra={"202": {"description": "executing"}, "409": _ERROR},
            )
        },
        "/v1/plans/{id}/cancel": {
            "post": _op(
                "stop a plan: moves not yet flipped roll back",
                admin=True,
                params=[
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            )
        },
        "/v1/verify": {
            "get": _op("every pod holds rows only of guilds it owns; no migration is stuck")
        },
        "/v1/balance": {
            "get": _op(
                "scaling decisions: load per pod, imbalance over time, advice, the waiting plan"
            )
        },
        "/v1/openapi.json": {
            "get": {
                "summary": "this document",
                "security": [],
                "responses": {"200": {"description": "ok"}},
            }
        },
    },
}
