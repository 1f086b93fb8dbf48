"""The config service's ``/v1`` handlers.

Each handler declares the role it needs (``admin`` for writes, ``read`` for reads);
the auth middleware enforces it. Bodies are strict: unknown fields are a 400, so a
typo never silently becomes a default.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import math
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from modbot_ring import InvalidGuildId, NoRouteError, parse_guild_id
from modbot_ring.hashring import InvalidWeight, check_weight

from .balancer import Balancer
from .client.auth import matching_token, same_token
from .client.observability import json_error
from .migrator import Migrator
from .names import guild_names
from .openapi import OPENAPI
from .ops_page import PLAN_PICTURES
from .ops_page import render as render_ops
from .ops_page import render_unavailable as render_ops_unavailable
from .publisher import Snapshot, TablePublisher
from .store import Conflict, Invalid, Store, StoreError, StoreUnavailable

log = logging.getLogger("modbot.config.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 1 << 20
MAX_INT = 2**63 - 1  # ids, versions and cursors are signed 64-bit in every store
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$"
)
MAX_LONG_POLL = 30.0
ACTOR_HEADER = "X-Modbot-Actor"

STORE_KEY: web.AppKey[Store] = web.AppKey("store", Store)
PUBLISHER_KEY: web.AppKey[TablePublisher] = web.AppKey("publisher", TablePublisher)
SETTINGS_KEY: web.AppKey[dict[str, Any]] = web.AppKey("settings", dict)
MIGRATOR_KEY: web.AppKey[Migrator] = web.AppKey("migrator", Migrator)
BALANCER_KEY: web.AppKey[Balancer] = web.AppKey("balancer", Balancer)
METRICS_KEY: web.AppKey[ApiMetrics] = web.AppKey("metrics")


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry, *, redis: bool = True) -> None:
        self.requests = Counter(
            "modbot_config_requests_total",
            "Config service API requests, by route, method and HTTP status.",
            ["route", "method", "status"],
            registry=registry,
        )
        # long-polls (GET /v1/table?wait=N) last up to 30 s by design: they have their own
        # histogram so this one stays usable for latency alerts
        self.latency = Histogram(
            "modbot_config_request_seconds",
            "Time the config service took to answer an API request (long-polls excluded).",
            ["route"],
            registry=registry,
        )
        self.long_poll = Histogram(
            "modbot_config_table_long_poll_seconds",
            "Time a routing-table long-poll (GET /v1/table?wait=N) was held open.",
            registry=registry,
            buckets=(0.01, 0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 45),
        )
        self.conflicts = Counter(
            "modbot_config_conflicts_total",
            "Writes refused with 409 because they conflicted with the current state.",
            registry=registry,
        )
        self.table_version = Gauge(
            "modbot_config_table_version",
            "Version of the routing table this replica serves.",
            registry=registry,
        )
        self.pods = Gauge(
            "modbot_config_pods",
            "Gateway pods in the routing table, by state.",
            ["state"],
            registry=registry,
        )
        # not exported without Redis: "deliberately off" must not read as "down"
        self.redis_up = (
            Gauge(
                "modbot_config_redis_up",
                "1 when the routing table is cached in Redis, 0 when Redis fails.",
                registry=registry,
            )
            if redis
            else None
        )


def role(required: str) -> Callable[[Handler], Handler]:
    def mark(handler: Handler) -> Handler:
        handler.__modbot_role__ = required  # type: ignore[attr-defined]
        return handler

    return mark


# -- middleware ------------------------------------------------------------------------


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS_KEY]
    route = (
        request.match_info.route.resource.canonical
        if request.match_info.route.resource
        else "unmatched"
    )
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except StoreError as exc:
        status = exc.status
        if status == 409:
            metrics.conflicts.inc()
        return json_error(exc.status, str(exc), **({"Retry-After": "1"} if status == 503 else {}))
    except web.HTTPRequestEntityTooLarge:
        status = 413
        return json_error(413, f"request body is larger than {MAX_BODY} bytes")
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        return json_error(
            exc.status,
            exc.reason or "error",
            **{k: v for k, v in exc.headers.items() if k == "Allow"},
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal error (see the config service log)")
    finally:
        metrics.requests.labels(route, request.method, str(status)).inc()
        elapsed = time.perf_counter() - started
        if route == "/v1/table" and "wait" in request.query:
            metrics.long_poll.observe(elapsed)
        else:
            metrics.latency.labels(route).observe(elapsed)


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


# -- helpers ------------------------------------------------------------------------------


def _guild(request: web.Request) -> int:
    try:
        return parse_guild_id(request.match_info["guild_id"])
    except InvalidGuildId as exc:
        raise Invalid(str(exc)) from None


def non_negative_int(value: object, name: str) -> int:
    """A JSON int or a decimal ASCII string as an int in 0 .. 2**63-1, else Invalid (400).

    ``int()`` alone accepts ``True``, ``1.5``, ``" 7"`` and non-ASCII digits, and raises
    past Python's digit limit on 5,000-digit strings (a 500); stores overflow past 2**63-1."""
    if type(value) is int:
        number = value
    elif isinstance(value, str) and 0 < len(value) <= 19 and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise Invalid(f"{name} must be a non-negative integer, got {str(value)[:40]!r}")
    if not 0 <= number <= MAX_INT:
        raise Invalid(f"{name} must be in 0 .. 2**63-1, got {str(number)[:40]}")
    return number


def check_pod_url(url: str) -> None:
    """Refuse a pod URL that is not plain ``http(s)://host[:port][/path]``: the config
    service and every proxy send bearer tokens to it and build request lines from it."""
    if len(url) > 2048 or not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        raise Invalid("url must be printable ASCII without spaces or line breaks")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Invalid(f"url {url[:80]!r} is not valid: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise Invalid(f"url must be http(s)://host[:port], got {url[:80]!r}")
    if "@" in parts.netloc:
        raise Invalid("url must not carry credentials (user@host)")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise Invalid("url must not have a query or fragment")
    if any(seg in (".", "..") for seg in parts.path.split("/")):
        raise Invalid("url path must not contain . or .. segments")
    host = parts.hostname or ""
    if (port is not None and not 1 <= port <= 65535) or parts.netloc.endswith(":"):
        raise Invalid("url port must be 1..65535")
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(f"url host {host[:80]!r} is not an IPv6 address") from None
    elif not _HOSTNAME.match(host):
        raise Invalid(f"url host {host[:80]!r} is not a host name or address")


def _actor(request: web.Request) -> str:
    actor = request.headers.get(ACTOR_HEADER, "admin").strip()
    return "".join(c for c in actor if c.isprintable())[:64] or "admin"


def _expected_version(request: web.Request) -> int | None:
    value = request.headers.get("If-Match")
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    try:
        return non_negative_int(text, "If-Match")
    except Invalid:
        raise Invalid(f'If-Match must be a table version like "42", got {value[:40]!r}') from None


async def _body(
    request: web.Request, required: dict[str, Any], optional: dict[str, Any] | None = None
) -> dict[str, Any]:
    optional = optional or {}
    raw = await request.read()
    if not raw:
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise Invalid("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Invalid("request body must be a JSON object")
    unknown = set(data) - set(required) - set(optional)
    if unknown:
        raise Invalid(f"unknown field(s): {', '.join(sorted(unknown))}")
    missing = set(required) - set(data)
    if missing:
        raise Invalid(f"missing field(s): {', '.join(sorted(missing))}")
    for name, kinds in {**required, **optional}.items():
        if name in data and not _is(data[name], kinds):
            raise Invalid(f"field {name!r} has the wrong type")
    return data


def _is(value: Any, kinds: Any) -> bool:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, kinds)


async def _snapshot(request: web.Request) -> Snapshot:
    publisher = request.app[PUBLISHER_KEY]
    if publisher.snapshot is None:
        await publisher.refresh()
    assert publisher.snapshot is not None
    return publisher.snapshot


def _version_reply(version: int, status: int = 200, **extra: Any) -> web.Response:
    return web.json_response(
        {"version": version, **extra}, status=status, headers={"ETag": f'"{version}"'}
    )


# -- table ---------------------------------------------------------------------------------


@role("read")
async def get_table(request: web.Request) -> web.StreamResponse:
    """The routing table; ``If-None-Match`` -> 304; ``?wait=N`` long-polls for a newer one."""
    publisher = request.app[PUBLISHER_KEY]
    snap = publisher.snapshot
    if snap is None:
        try:
            snap = await publisher.refresh()
        except StoreUnavailable:
            snap = None
        if snap is None:
            raise StoreUnavailable("no routing table yet: the database has not been reachable")
    known = request.headers.get("If-None-Match", "").strip()
    if known == snap.etag:
        try:
            wait = min(float(request.query.get("wait", "0")), MAX_LONG_POLL)
        except ValueError:
            raise Invalid("wait must be a number of seconds") from None
        if math.isnan(wait):
            raise Invalid("wait must be a number of seconds")
        newer = await publisher.wait_newer(snap.version, wait) if wait > 0 else None
        if newer is None:
            return web.Response(status=304, headers={"ETag": snap.etag})
        snap = newer
    return web.Response(
        body=snap.json, content_type="application/json", headers={"ETag": snap.etag}
    )


@role("read")
async def get_table_version(request: web.Request) -> web.Response:
    snap = await _snapshot(request)
    return _version_reply(snap.version)


@role("read")
async def get_route(request: web.Request) -> web.Response:
    gid = _guild(request)
    snap = await _snapshot(request)
    try:
        route = snap.table.route(gid)
    except NoRouteError as exc:
        return json_error(409, str(exc))
    explain = {
        "pin": "pinned to this pod",
        "shard": f"shard {route.shard} is assigned to this pod",
        "ring": f"ring placement of shard {route.shard}"
        if route.shard is not None
        else "ring placement of the guild id",
    }[route.reason.value]
    if route.migrating:
        explain += "; migrating"
    return web.json_response(
        {
            "guild_id": str(gid),
            "pod": route.pod,
            "reason": route.reason.value,
            "shard": route.shard,
            "migrating": route.migrating,
            "epoch": route.epoch,
            "pod_state": route.pod_state.value,
            "url": snap.table.pods[route.pod].url,
            "version": route.version,
            "explain": explain,
        }
    )


@role("read")
async def get_status(request: web.Request) -> web.Response:
    snap = await _snapshot(request)
    table = snap.table
    now = time.time()
    try:
        records = {p.name: p for p in await request.app[STORE_KEY].pods()}
    except StoreUnavailable:
        records = {}
    share = table.ring.share()
    pods = []
    for pod in table.pods.values():
        record = records.get(pod.name)
        owned = (
            0
            if table.shard_count is None
            else sum(1 for s in range(table.shard_count) if table.shard_owner(s) == pod.name)
        )
        pods.append(
            {
                "name": pod.name,
                "state": pod.state.value,
                "weight": pod.weight,
                "url": pod.url,
                "shards": owned,
                "pins": len(table.pinned_to(pod.name)),
                "ring_share": round(share.get(pod.name, 0.0), 4),
                "heartbeat_age": None
                if record is None or record.last_heartbeat is None
                else round(now - record.last_heartbeat, 1),
            }
        )
    return web.json_response(
        {
            "version": table.version,
            "algorithm": table.algorithm.value,
            "shard_count": table.shard_count,
            "pods": pods,
            "pin_count": len(table.pins),
            "shard_pin_count": len(table.shard_pins),
            "migrating": len(table.migrating) + len(table.migrating_shards),
            "database": "ok" if records or not table.pods else "unreachable",
            "balance": {
                k: v
                for k, v in request.app[BALANCER_KEY].status(history=False).items()
                if k
                in ("mode", "decision", "imbalance", "skew", "advice", "waiting_plan", "scale_out")
            },
        }
    )


# -- pods -----------------------------------------------------------------------------------


@role("read")
async def list_pods(request: web.Request) -> web.Response:
    now = time.time()
    pods = await request.app[STORE_KEY].pods()
    return web.json_response({"pods": [p.to_json(now) for p in pods]})


@role("admin")
async def register_pod(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await _body(request, {}, {"url": (str, type(None)), "weight": float})
    url = body.get("url")
    if url is not None:
        check_pod_url(url)
        url = url.rstrip("/")
    if body.get("weight") is not None:
        # the library's bound, not the store's: a weight the table refuses would be stored
        # and then break every table build (every read and write a 500)
        try:
            check_weight(name, body["weight"], (await _snapshot(request)).table.algorithm)
        except InvalidWeight as exc:
            raise Invalid(str(exc)) from None
    await request.app[MIGRATOR_KEY].hold_before_join(name, _actor(request))
    version = await request.app[STORE_KEY].register_pod(
        name, url, body.get("weight"), _actor(request)
    )
    # no data anywhere yet: the new pod gets its share of shards now (nothing to migrate)
    if await request.app[MIGRATOR_KEY].spread_if_empty(_actor(request)):
        version = await request.app[STORE_KEY].version()
    await request.app[PUBLISHER_KEY].refresh()
    return _version_reply(version, pod=name)


@role("admin")
async def heartbeat(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await _body(request, {}, {"load": dict})
    state, version = await request.app[STORE_KEY].heartbeat(name, body.get("load"))
    return _version_reply(version, pod=name, state=state)


def _pod_state_handler(state: str) -> Handler:
    @role("admin")
    async def set_state(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        store = request.app[STORE_KEY]
        version = await store.set_pod_state(
            name, state, _actor(request), _expected_version(request)
        )
        if state == "active" and await request.app[MIGRATOR_KEY].spread_if_empty(_actor(request)):
            version = await store.version()
        await request.app[PUBLISHER_KEY].refresh()
        return _version_reply(version, pod=name, state=state)

    return set_state


@role("admin")
async def drain_pod(request: web.Request) -> web.Response:
    """Draining holds the pod's placement (shards pinned in place) until a plan moves its
    data: re-routing at once would strand its rows (config_store/migrator.py, drain)."""
    name = request.match_info["name"]
    version = await request.app[MIGRATOR_KEY].drain(
        name, _actor(request), _expected_version(request)
    )
    return _version_reply(version, pod=name, state="draining")


activate_pod = _pod_state_handler("active")


@role("admin")
async def remove_pod(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    version = await request.app[STORE_KEY].remove_pod(
        name, _actor(request), _expected_version(request)
    )
    await request.app[PUBLISHER_KEY].refresh()
    return _version_reply(version, pod=name)


# -- pins ------------------------------------------------------------------------------------


@role("read")
async def list_pins(request: web.Request) -> web.Response:
    pod = request.query.get("pod") or None
    limit = max(1, min(non_negative_int(request.query.get("limit", "1000"), "limit"), 10_000))
    after = non_negative_int(request.query.get("after", "0"), "after")
    pins = await request.app[STORE_KEY].pins(pod, limit, after)
    return web.json_response({"pins": pins})


@role("read")
async def get_pin(request: web.Request) -> web.Response:
    return web.json_response(await request.app[STORE_KEY].pin(_guild(request)))


@role("admin")
async def put_pin(request: web.Request) -> web.Response:
    gid = _guild(request)
    body = await _body(request, {"pod": str}, {"reason": str})
    store = request.app[STORE_KEY]
    version = await store.set_pins(
        [(gid, body["pod"], body.get("reason", ""))],
        [],
        _actor(request),
        _expected_version(request),
    )
    await request.app[PUBLISHER_KEY].refresh()
    return _version_reply(version, guild_id=str(gid), pod=body["pod"])


@role("admin")
async def delete_pin(request: web.Request) -> web.Response:
    gid = _guild(request)
    version = await request.app[STORE_KEY].set_pins(
        [], [gid], _actor(request), _expected_version(request)
    )
    await request.app[PUBLISHER_KEY].refresh()
    return _version_reply(version, guild_id=str(gid))


@role("admin")
async def bulk_pins(request: web.Request) -> web.Response:
    body = await _body(request, {}, {"set": list, "delete": list})
    sets: list[tuple[int, str, str]] = []
    for i, item in enumerate(body.get("set", [])):
        if (
            not isinstance(item, dict)
            or set(item) - {"guild_id", "pod", "reason"}
            or not {"guild_id", "pod"} <= set(item)
        ):
            raise Invalid(f"set[{i}] must be an object with guild_id, pod and optional reason")
        if not isinstance(item["pod"], str) or not isinstance(item.get("reason", ""), str):
            raise Invalid(f"set[{i}]: pod and reason are strings")
        try:
            sets.append((parse_guild_id(item["guild_id"]), item["pod"], item.get("reason", "")))
        except InvalidGuildId as exc:
            raise Invalid(f"set[{i}]: {exc}") from None
    deletes = []
    for i, value in enumerate(body.get("delete", [])):
        try:
            deletes.append(parse_guild_id(value))
        except InvalidGuildId as exc:
            raise Invalid(f"delete[{i}]: {exc}") from None
    version = await request.app[STORE_KEY].set_pins(
        sets, deletes, _actor(request), _expected_version(request)
    )
    await request.app[PUBLISHER_KEY].refresh()
    return _version_reply(version, set=len(sets), deleted=len(deletes))


# -- ring settings and audit ------------------------------------------------------------------


@role("read")
async def get_ring(request: web.Request) -> web.Response:
    snap = await _snapshot(request)
    return web.json_response(
        {
            "version": snap.version,
            "shard_count": snap.table.shard_count,
            "algorithm": snap.table.algorithm.value,
        }
    )


@role("admin")
async def put_ring(request: web.Request) -> web.Response:
    body = await _body(request, {"shard_count": (int, type(None))}, {"algorithm": str})
    store = request.app[STORE_KEY]
    version = await store.set_ring(
        body["shard_count"],
        body.get("algorithm", "slots"),
        _actor(request),
        _expected_version(request),
    )
    await request.app[PUBLISHER_KEY].refresh()
    return _version_reply(version)


@role("read")
async def get_audit(request: web.Request) -> web.Response:
    limit = max(1, min(non_negative_int(request.query.get("limit", "50"), "limit"), 1000))
    before = (
        non_negative_int(request.query["before"], "before") if "before" in request.query else None
    )
    entries = await request.app[STORE_KEY].audit(limit, before)
    return web.json_response(
        {
            "entries": [
                {
                    "id": e.id,
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.at)),
                    "actor": e.actor,
                    "action": e.action,
                    "outcome": e.outcome,
                    "version": e.version,
                    "detail": e.detail,
                }
                for e in entries
            ]
        }
    )


# -- migrations, plans, verify ---------------------------------------------------------------


@role("admin")
async def start_migration(request: web.Request) -> web.Response:
    body = await _body(request, {"guild_id": str, "to": str})
    try:
        gid = parse_guild_id(body["guild_id"])
    except InvalidGuildId as exc:
        raise Invalid(str(exc)) from None
    migration = await request.app[MIGRATOR_KEY].migrate(gid, body["to"], _actor(request))
    return web.json_response(migration, status=202)


@role("read")
async def list_migrations(request: web.Request) -> web.Response:
    migrator = request.app[MIGRATOR_KEY]
    rows = await migrator.migrations.list(
        open_only=request.query.get("open") == "1", plan_id=request.query.get("plan")
    )
    return web.json_response({"migrations": rows})


def _int_param(request: web.Request, name: str) -> int:
    return non_negative_int(request.match_info[name], name)


@role("read")
async def get_migration(request: web.Request) -> web.Response:
    return web.json_response(
        await request.app[MIGRATOR_KEY].migrations.get(_int_param(request, "id"))
    )


@role("admin")
async def cancel_migration(request: web.Request) -> web.Response:
    return web.json_response(await request.app[MIGRATOR_KEY].cancel(_int_param(request, "id")))


@role("admin")
async def create_plan(request: web.Request) -> web.Response:
    body = await _body(
        request,
        {},
        {
            "epsilon": float,
            "max_moves": (int, type(None)),
            "restore": dict,
            "drain": str,
            "repair": bool,
        },
    )
    if "drain" in body:  # the plan that empties a draining pod
        plan = await request.app[MIGRATOR_KEY].drain_plan(body["drain"], _actor(request))
        return web.json_response(plan, status=201)
    if body.get("repair"):  # carry stranded rows to their owners
        plan = await request.app[MIGRATOR_KEY].repair_plan(_actor(request))
        return web.json_response(plan, status=201)
    if "restore" in body:
        assignment = _assignment(body["restore"])
        plan = await request.app[MIGRATOR_KEY].restore_plan(assignment, _actor(request))
        return web.json_response(plan, status=201)
    epsilon = float(body.get("epsilon", 0.05))
    if not 0 <= epsilon <= 10:
        raise Invalid("epsilon must be between 0 and 10")
    max_moves = body.get("max_moves")
    if max_moves is not None and max_moves < 1:
        raise Invalid("max_moves must be at least 1")
    try:
        plan = await request.app[MIGRATOR_KEY].generate_plan(
            epsilon=epsilon, max_moves=max_moves, actor=_actor(request)
        )
    except ValueError as exc:  # the planner's refusals (no active pods, ...): the state's fault
        raise Conflict(f"no plan: {exc}") from None
    return web.json_response(plan, status=201)


def _assignment(saved: Any) -> dict[str, Any]:
    """A plan's saved ``current_assignment``, checked before it reaches the migrator:
    {"shards": {"<shard>": pod or null}, "pins": {"<guild id>": pod}} (both optional)."""
    if not isinstance(saved, dict) or set(saved) - {"shards", "pins"}:
        raise Invalid("restore must be an object with optional shards and pins")
    shards, pins = saved.get("shards") or {}, saved.get("pins") or {}
    if not isinstance(shards, dict) or not isinstance(pins, dict):
        raise Invalid("restore.shards and restore.pins must be objects")
    for shard, pod in shards.items():
        non_negative_int(shard, "restore.shards key")
        if pod is not None and not isinstance(pod, str):
            raise Invalid(f"restore.shards[{shard[:20]!r}] must be a pod name or null")
    for gid, pod in pins.items():
        try:
            parse_guild_id(gid)
        except InvalidGuildId as exc:
            raise Invalid(f"restore.pins: {exc}") from None
        if not isinstance(pod, str):
            raise Invalid(f"restore.pins[{gid!r}] must be a pod name")
    return {"shards": shards, "pins": pins}


@role("read")
async def get_plan(request: web.Request) -> web.Response:
    migrator = request.app[MIGRATOR_KEY]
    record = await migrator.migrations.plan(request.match_info["id"])
    record["migrations"] = await migrator.migrations.list(plan_id=record["id"], limit=10_000)
    return web.json_response(record)


@role("read")
async def list_plans(request: web.Request) -> web.Response:
    return web.json_response({"plans": await request.app[MIGRATOR_KEY].migrations.plans()})


@role("admin")
async def apply_plan(request: web.Request) -> web.Response:
    body = await _body(request, {}, {"concurrency": int})
    concurrency = int(body.get("concurrency", 1))
    if not 1 <= concurrency <= 64:
        raise Invalid("concurrency must be 1..64")
    await request.app[MIGRATOR_KEY].apply_plan(
        request.match_info["id"], concurrency, _actor(request)
    )
    return web.json_response({"id": request.match_info["id"], "state": "executing"}, status=202)


@role("admin")
async def cancel_plan(request: web.Request) -> web.Response:
    await request.app[MIGRATOR_KEY].cancel_plan(request.match_info["id"])
    return web.json_response({"id": request.match_info["id"], "cancelling": True})


@role("read")
async def verify(request: web.Request) -> web.Response:
    return web.json_response(await request.app[MIGRATOR_KEY].verify())


@role("read")
async def get_balance(request: web.Request) -> web.Response:
    return web.json_response(request.app[BALANCER_KEY].status())


def _admin_credentials(request: web.Request) -> bool:
    """Bearer admin token, or HTTP Basic with the admin token as the password (so a
    browser can open the page: it prompts for Basic credentials on a 401)."""
    admin = request.app[SETTINGS_KEY]["admin_token"]
    header = request.headers.get("Authorization", "")
    token = ""
    if header.startswith("Bearer "):
        token = header[7:]
    elif header.startswith("Basic "):
        try:
            token = base64.b64decode(header[6:], validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            token = ""
    return same_token(token, admin)


async def ops_page(request: web.Request) -> web.Response:
    if not _admin_credentials(request):
        return json_error(
            401,
            "the operations page needs the admin token (Bearer, or Basic with it as the password)",
            **{"WWW-Authenticate": 'Basic realm="modbot-ring ops", charset="UTF-8"'},
        )
    headers = {"Cache-Control": "no-store"}
    store = request.app[STORE_KEY]
    migrator = request.app[MIGRATOR_KEY]
    try:  # an operator's browser gets a page that says what is wrong, not JSON or a 500
        publisher = request.app[PUBLISHER_KEY]
        snap = publisher.snapshot or await publisher.refresh()
        pods = await store.pods()
        pins = await store.pins()
        migrations = await migrator.migrations.list(open_only=True)
        plans: list[dict[str, Any]] = await migrator.migrations.plans_in_state(("proposed",))
    except StoreError as exc:
        html = render_ops_unavailable(str(exc))
        return web.Response(text=html, status=503, content_type="text/html", headers=headers)
    balance = request.app[BALANCER_KEY].status()
    shown = [
        *(h["guild_id"] for h in balance["hot"]),
        *(p["guild_id"] for p in pins[:100]),
        *(m["guild_id"] for m in migrations if m.get("guild_id") is not None),
        *(
            m["id"]
            for p in plans[:PLAN_PICTURES]
            for m in p["plan"].get("moves", [])[:20]
            if m.get("kind") == "guild"
        ),
    ]
    names = await guild_names(pods, shown, migrator.migration_token)
    html = render_ops(
        version=None if snap is None else snap.version,
        balance=balance,
        pods=pods,
        pins=pins,
        migrations=migrations,
        plans=plans,
        names=names.names,
        names_note=names.note(),
    )
    return web.Response(text=html, content_type="text/html", headers=headers)


async def openapi(_: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/openapi.json", openapi)
    r.add_get("/v1/status", get_status)
    r.add_get("/v1/table", get_table)
    r.add_get("/v1/table/version", get_table_version)
    r.add_get("/v1/ring", get_ring)
    r.add_put("/v1/ring", put_ring)
    r.add_get("/v1/pods", list_pods)
    r.add_put("/v1/pods/{name}", register_pod)
    r.add_delete("/v1/pods/{name}", remove_pod)
    r.add_post("/v1/pods/{name}/heartbeat", heartbeat)
    r.add_post("/v1/pods/{name}/drain", drain_pod)
    r.add_post("/v1/pods/{name}/activate", activate_pod)
    r.add_get("/v1/pins", list_pins)
    r.add_post("/v1/pins/bulk", bulk_pins)
    r.add_get("/v1/pins/{guild_id}", get_pin)
    r.add_put("/v1/pins/{guild_id}", put_pin)
    r.add_delete("/v1/pins/{guild_id}", delete_pin)
    r.add_get("/v1/guilds/{guild_id}/route", get_route)
    r.add_get("/v1/audit", get_audit)
    r.add_get("/v1/migrations", list_migrations)
    r.add_post("/v1/migrations", start_migration)
    r.add_get("/v1/migrations/{id}", get_migration)
    r.add_post("/v1/migrations/{id}/cancel", cancel_migration)
    r.add_get("/v1/plans", list_plans)
    r.add_post("/v1/plans", create_plan)
    r.add_get("/v1/plans/{id}", get_plan)
    r.add_post("/v1/plans/{id}/apply", apply_plan)
    r.add_post("/v1/plans/{id}/cancel", cancel_plan)
    r.add_get("/v1/verify", verify)
    r.add_get("/v1/balance", get_balance)
    r.add_get("/ops", ops_page)
