"""A gateway pod's internal API, reached only through the proxy (bearer token).

A request for a guild this pod does not own gets 421 Misdirected Request naming the
owner it believes in, so a proxy with an older table can tell and retry.

Two credentials, two scopes: the proxy's *forwarding* token (``MODBOT_INTERNAL_TOKEN``)
opens the guild routes and ``/interactions``; the config service's *migration* token
(``MODBOT_MIGRATION_TOKEN``) opens ``/internal/...`` (freeze, export, import, drop).
Each is refused (403) where the other belongs, so whatever holds the forwarding token
(every proxy, the most exposed process) cannot export, overwrite or delete a guild.
A pod without a migration token keeps its migration API closed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from modbot_ring import InvalidGuildId, parse_guild_id
from modbot_runtime.auth import matching_token
from modbot_runtime.observability import json_error

from . import dashboard, identity
from .discordpy import MalformedInteraction, run_forwarded_interaction
from .ownership import GuildOwnership, Why
from .podview import POD_KEY, PodView

log = logging.getLogger("modbot.gateway.api")

__all__ = ["MAX_BODY", "POD_KEY", "add_routes", "internal_auth", "misdirected"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = {"/healthz", "/readyz", "/metrics"}
MAX_BODY = 256 * 1024 * 1024  # imports of large guilds arrive here


MIGRATION_PREFIX = "/internal/"


def is_migration_path(path: str) -> bool:
    return path == MIGRATION_PREFIX.rstrip("/") or path.startswith(MIGRATION_PREFIX)


def _refusal(request: web.Request) -> web.Response | None:
    """None if the request's credential opens its route; else the 401/403 to send."""
    settings = request.app[POD_KEY].settings
    presented = matching_token(  # forwarding first: if both are equal, migration stays shut
        request.headers.get("Authorization"),
        {"forwarding": settings.internal_token, "migration": settings.migration_token},
    )
    if is_migration_path(request.path):
        if not settings.migration_token:
            return json_error(
                403, "the migration API is closed: this pod has no migration token configured"
            )
        if presented == "forwarding":
            return json_error(403, "the forwarding token is not accepted on the migration API")
        if presented != "migration":
            return json_error(
                401,
                "the migration API needs the migration token (Authorization: Bearer ...)",
                **{"WWW-Authenticate": "Bearer"},
            )
        return None
    if presented == "migration":
        return json_error(403, "the migration token is only accepted on the migration API")
    if presented != "forwarding":
        return json_error(
            401,
            "the internal API needs the proxy's bearer token",
            **{"WWW-Authenticate": "Bearer"},
        )
    return None


@web.middleware
async def internal_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in OPEN_PATHS:
        return await handler(request)
    refusal = _refusal(request)
    if refusal is None and "guild_id" in request.match_info:  # a bad id is a 400 before all else
        try:
            parse_guild_id(request.match_info["guild_id"])
        except InvalidGuildId as exc:
            refusal = json_error(400, str(exc))
    if refusal is None and identity.guarded(request.path):  # guild data: a vouched-for user
        refusal = await identity.check(request, request.app[POD_KEY].store)
    if refusal is not None:
        return refusal
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, exc.reason or "error")


def read_json(raw: bytes) -> Any:
    """Parse a body; raises ValueError for anything that is not JSON (deep nesting too)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _owned_guild(request: web.Request) -> tuple[int, web.Response | None]:
    """The path's guild id, or a 400/421/503 response to return instead."""
    pod = request.app[POD_KEY]
    try:
        gid = parse_guild_id(request.match_info["guild_id"])
    except InvalidGuildId as exc:
        return 0, json_error(400, str(exc))
    return gid, misdirected(pod, gid)


def misdirected(pod: PodView, gid: int) -> web.Response | None:
    """None if this pod owns the guild now; else the answer that says why not: 503 before
    the first table, 421 naming the owner this pod believes in (None: no route)."""
    verdict = pod.ownership.guild(gid)
    if verdict.owned:
        return None
    if verdict.why is Why.NO_TABLE:
        return web.json_response(
            {"error": "no routing table yet"}, status=503, headers={"Retry-After": "1"}
        )
    return misdirected_response(verdict)


def misdirected_response(verdict: GuildOwnership) -> web.Response:
    return web.json_response(
        {
            "error": f"guild {verdict.guild_id} is not owned by this pod",
            "owner": verdict.owner,
            "version": verdict.version,
        },
        status=421,
    )


def cached_guild(pod: PodView, gid: int) -> Any:
    """The guild in this pod's discord.py caches (one client per shard), or None: its
    shard is not connected here (yet), or Discord has not sent the guild."""
    for session in list(pod.shards.sessions.values()):
        get_guild = getattr(session.client, "get_guild", None)
        guild = get_guild(gid) if get_guild is not None else None
        if guild is not None:
            return guild
    return None


def guild_names(pod: PodView, gid: int, settings: Any) -> dict[str, Any] | None:
    """The guild's name and those of the roles and channels its settings name, from the
    cache (no Discord request); None when the cache does not hold the guild."""
    guild = cached_guild(pod, gid)
    if guild is None:
        return None
    roles: dict[str, str] = {}
    channels: dict[str, str] = {}
    for value in (settings or {}).values():
        if not (isinstance(value, str) and value.isascii() and value.isdigit()):
            continue
        role = guild.get_role(int(value))
        if role is not None:
            roles[value] = str(role.name)
        channel = guild.get_channel(int(value))
        if channel is not None:
            channels[value] = str(channel.name)
    return {"guild": str(guild.name), "roles": roles, "channels": channels}


async def guild_data(request: web.Request) -> web.Response:
    gid, refusal = _owned_guild(request)
    if refusal is not None:
        return refusal
    pod = request.app[POD_KEY]
    data = await pod.store.dashboard(gid)
    data["pod"] = pod.name
    data["table_version"] = pod.table_version
    data["names"] = guild_names(pod, gid, data.get("settings"))
    return web.json_response(data)


async def guild_page(request: web.Request) -> web.Response:
    """The guild's dashboard page, rendered here (the proxy relays it): dashboard.py."""
    gid, refusal = _owned_guild(request)
    if refusal is not None:
        return refusal
    pod = request.app[POD_KEY]
    data = await pod.store.dashboard(gid)
    names = guild_names(pod, gid, data.get("settings"))
    return await dashboard.respond(
        request, data, names=names, pod=pod.name, version=pod.table_version
    )


MAX_NAME_IDS = 500


async def cached_names(request: web.Request) -> web.Response:
    """``GET /internal/names?ids=1,2``: names of the listed guilds this pod's cache holds
    (read-only, for the operator's page; the migration token opens it)."""
    raw = request.query.get("ids", "")
    parts = [p for p in raw.split(",") if p]
    if len(parts) > MAX_NAME_IDS:
        return json_error(400, f"at most {MAX_NAME_IDS} ids")
    try:
        ids = [parse_guild_id(p) for p in parts]
    except InvalidGuildId as exc:
        return json_error(400, str(exc))
    pod = request.app[POD_KEY]
    names = {}
    for gid in ids:
        guild = cached_guild(pod, gid)
        if guild is not None:
            names[str(gid)] = str(guild.name)
    return web.json_response({"pod": pod.name, "names": names})


async def get_settings(request: web.Request) -> web.Response:
    gid, refusal = _owned_guild(request)
    if refusal is not None:
        return refusal
    settings = await request.app[POD_KEY].store.settings(gid)
    if settings is None:
        return json_error(404, f"guild {gid} is not set up")
    return web.json_response({"guild_id": str(gid), "settings": settings})


async def put_settings(request: web.Request) -> web.Response:
    gid, refusal = _owned_guild(request)
    if refusal is not None:
        return refusal
    try:
        body = read_json(await request.read())
    except ValueError:
        return json_error(400, "request body is not valid JSON")
    allowed = {"moderator_role", "mod_log"}
    if (
        not isinstance(body, dict)
        or set(body) - allowed
        or not all(
            isinstance(v, str) and 0 < len(v) <= 20 and v.isascii() and v.isdigit()
            for v in body.values()
        )
    ):
        return json_error(400, "settings take moderator_role and mod_log, as id strings")
    store = request.app[POD_KEY].store
    settings = {**(await store.settings(gid) or {}), **body}
    await store.save_settings(gid, settings)
    return web.json_response({"guild_id": str(gid), "settings": settings})


async def guild_stats(request: web.Request) -> web.Response:
    gid, refusal = _owned_guild(request)
    if refusal is not None:
        return refusal
    store = request.app[POD_KEY].store
    return web.json_response({"guild_id": str(gid), "rows": await store.row_counts(gid)})


async def interactions(request: web.Request) -> web.Response:
    """A verified interaction forwarded by the proxy; answers with the response body."""
    pod = request.app[POD_KEY]
    started = time.perf_counter()
    try:
        payload = read_json(await request.read())
    except ValueError:
        return json_error(400, "interaction is not valid JSON")
    if not isinstance(payload, dict) or type(payload.get("type")) is not int:  # not bool
        return json_error(400, "interaction must be an object with an integer type")
    guild = payload.get("guild_id")
    if guild is not None:
        try:
            gid = parse_guild_id(guild)
        except InvalidGuildId as exc:
            return json_error(400, str(exc))
        refusal = misdirected(pod, gid)
        if refusal is not None:
            pod.metrics.interactions.labels("misdirected").inc()
            return refusal
        if pod.gate.holding(gid):  # frozen for a migration: a write now would be left behind
            pod.metrics.interactions.labels("migrating").inc()
            return json_error(
                503, f"guild {gid} is migrating: try again shortly", **{"Retry-After": "1"}
            )
    if not pod.commands_ready:
        return json_error(
            503, "this pod's command client is not logged in yet", **{"Retry-After": "1"}
        )
    deferred = request.headers.get("X-Modbot-Deferred") == "1"
    try:
        body = await run_forwarded_interaction(
            pod.commands, payload, pod.settings.interaction_deadline, already_deferred=deferred
        )
    except MalformedInteraction as exc:  # about this request: a 400, never a 500
        pod.metrics.interactions.labels("malformed").inc()
        return json_error(400, str(exc))
    outcome = "deferred" if body.get("type") == 5 else "answered"
    pod.metrics.interactions.labels(outcome).inc()
    pod.metrics.interaction_seconds.observe(time.perf_counter() - started)
    return web.json_response(body)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/data/guilds/{guild_id}", guild_data)
    r.add_get("/data/guilds/{guild_id}/dashboard", guild_page)
    r.add_get("/internal/names", cached_names)
    r.add_post("/interactions", interactions)
    r.add_get("/api/guilds/{guild_id}/settings", get_settings)
    r.add_put("/api/guilds/{guild_id}/settings", put_settings)
    r.add_get("/api/guilds/{guild_id}/stats", guild_stats)
