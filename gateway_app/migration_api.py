"""The pod's side of guild migration, driven step by step by the config service.

Every call carries the migration's epoch (fencing token); a call with an epoch older
than the one this pod has seen for the guild is refused (409): a stale coordinator can
never freeze, overwrite or delete a guild that has moved on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import web

from modbot_client.pod_client import (
    EXPORT_PATH,
    FREEZE_PATH,
    GUILD_PATH,
    GUILDS_PATH,
    HELD_PATH,
    IMPORT_PATH,
    REPLAY_PATH,
    TABLE_PATH,
    UNFREEZE_PATH,
)
from modbot_ring import InvalidGuildId, parse_guild_id
from modbot_runtime.observability import json_error

from .events import GatewayEvent, MalformedEvent, event_from_json
from .podview import POD_KEY, PodView
from .storage import ImportError_

log = logging.getLogger("modbot.gateway.migration")

MAX_INT = 2**63 - 1  # epochs and ids are stored as signed 64-bit integers
IMPORT_MODES = ("full", "precopy", "delta")


def _non_negative(value: object, name: str) -> int:
    """``value`` (a JSON number or a query string) as an int in 0 .. 2**63-1, or a 400.

    Strict on purpose: ``int()`` would take ``True``, ``1.5`` and ``" 7"``, and an epoch
    is a fencing token: a sloppy one could slip past the stale-epoch check."""
    if type(value) is int:
        number = value
    elif isinstance(value, str) and 0 < len(value) <= 19 and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise web.HTTPBadRequest(reason=f"{name} must be a non-negative integer, got {value!r:.40}")
    if not 0 <= number <= MAX_INT:
        raise web.HTTPBadRequest(reason=f"{name} must be in 0 .. 2**63-1, got {str(number)[:40]}")
    return number


def _json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise web.HTTPBadRequest(reason="body is not valid JSON") from None


async def _args(
    request: web.Request, need_epoch: bool = True
) -> tuple[PodView, int, int, dict[str, Any]]:
    pod = request.app[POD_KEY]
    try:
        gid = parse_guild_id(request.match_info["guild_id"])
    except InvalidGuildId as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None
    body: Any = {}
    if request.can_read_body:
        body = _json_body(await request.read())
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(reason="body must be a JSON object")
    raw_epoch = body.get("epoch", request.query.get("epoch"))
    epoch = -1
    if need_epoch:
        if raw_epoch is None:
            raise web.HTTPBadRequest(reason="an integer epoch is required")
        if "epoch" in body and type(raw_epoch) is not int:  # JSON: a number, never a string
            raise web.HTTPBadRequest(
                reason=f"epoch must be a non-negative integer, got {raw_epoch!r:.40}"
            )
        epoch = _non_negative(raw_epoch, "epoch")
        if epoch < pod.gate.epoch(gid):
            raise web.HTTPConflict(
                reason=f"stale epoch {epoch}: this pod has seen epoch {pod.gate.epoch(gid)} for guild {gid}"
            )
    return pod, gid, epoch, body


async def status(request: web.Request) -> web.Response:
    pod, gid, _, _ = await _args(request, need_epoch=False)
    table = pod.table_client.table
    shard = pod.ownership.shard_of(gid)
    shard_ready = True
    if table is not None and shard is not None:
        shard_ready = pod.shards.converged(table) and shard in pod.shards.connected_shards
    held = await pod.store.held(gid)
    return web.json_response(
        {
            "guild_id": str(gid),
            "pod": pod.name,
            "epoch": pod.gate.epoch(gid),
            "state": pod.gate.state(gid),
            "holding": pod.gate.holding(gid),
            "shard_ready": shard_ready,
            "held": len(held),
            "rows": await pod.store.row_counts(gid),
            "table_version": pod.table_version,
        }
    )


async def freeze(request: web.Request) -> web.Response:
    pod, gid, epoch, _ = await _args(request)
    await pod.gate.set_fence(gid, epoch, "frozen")
    return web.json_response({"frozen": True})  # no row counts: this runs inside the freeze


async def export(request: web.Request) -> web.Response:
    pod, gid, _, _ = await _args(request, need_epoch=False)
    mode = request.query.get("mode", "full")
    since_id = _non_negative(request.query.get("since_id", "0"), "since_id")
    try:
        since_time = float(request.query.get("since_time", "0"))
    except ValueError:
        return json_error(400, "since_time must be a number of seconds")
    if not 0 <= since_time < float("inf"):  # also refuses nan
        return json_error(400, "since_time must be a finite, non-negative number")
    if mode != "precopy" and pod.gate.state(gid) != "frozen":
        return json_error(409, f"guild {gid} is not frozen here: freeze it before exporting")
    # the delta is the rows changed since the pre-copy, as the gate tracked them; a tracker
    # this pod does not know (it restarted) leaves only a full export as safe
    message_ids = (
        pod.gate.changes(gid, request.query["track"]) if "track" in request.query else None
    )
    if mode == "delta" and "track" in request.query and message_ids is None:
        mode = "full"
    token = pod.gate.track(gid) if mode == "precopy" else None  # before the export reads
    try:
        exported = await pod.store.export_guild(
            gid, mode=mode, since_id=since_id, since_time=since_time, message_ids=message_ids
        )
    except ValueError as exc:
        return json_error(400, str(exc))
    if token is not None:
        exported["track"] = token
    text = await asyncio.to_thread(_dumps, exported)  # 100k rows: not on the event loop
    return web.Response(text=text, content_type="application/json")


async def import_rows(request: web.Request) -> web.Response:
    """Replace the guild's rows here with an export, only while the guild migrates *to*
    this pod: an import must never wipe the rows of a guild this pod owns."""
    pod, gid, epoch, body = await _args(request)
    table = pod.table_client.table
    if table is None:
        return json_error(503, "no routing table yet", **{"Retry-After": "1"})
    if pod.ownership.owns(gid) or not pod.ownership.migrating_here(gid):
        return json_error(
            409,
            f"guild {gid} is not migrating to this pod (table v{table.version}): refusing to import",
        )
    problem = _import_shape_problem(body)
    if problem:
        return json_error(422, problem)
    try:
        result = await pod.store.import_guild(gid, epoch, body)
    except ImportError_ as exc:
        return json_error(422, str(exc))
    if result["mode"] != "precopy":
        pod.gate.fences[gid] = (epoch, "holding")
    return web.json_response(result)


async def held(request: web.Request) -> web.Response:
    pod, gid, _, _ = await _args(request, need_epoch=False)
    return web.json_response({"events": [[k, e.to_json()] for k, e in await pod.store.held(gid)]})


def _import_shape_problem(body: dict[str, Any]) -> str:
    """Why an import body is not an export's shape (empty if it is): the store checks the
    counts and checksum, this keeps odd JSON from reaching it as a TypeError (a 500)."""
    rows, counts = body.get("rows"), body.get("counts")
    if body.get("mode", "full") not in IMPORT_MODES:
        return f"mode must be one of {', '.join(IMPORT_MODES)}"
    if not isinstance(rows, dict) or not all(
        isinstance(t, list) and all(isinstance(r, list) and r for r in t) for t in rows.values()
    ):
        return "rows must be an object of tables, each a list of non-empty row arrays"
    for name in ("counts", "totals"):
        value = body.get(name, counts)
        if not isinstance(value, dict) or not all(
            type(n) is int and 0 <= n <= MAX_INT for n in value.values()
        ):
            return f"{name} must be an object of non-negative integers"
    if not isinstance(body.get("checksum"), str):
        return "checksum must be a string"
    return ""


def _events(gid: int, body: dict[str, Any]) -> tuple[list[tuple[str, GatewayEvent]], int]:
    """The body's [key, event] pairs as events, and how many were refused: an event that
    is not one a pod writes is logged and left out (after the flip a migration cannot roll
    back, so one bad event must not stop it), never handed to the batch writer."""
    events = body.get("events", [])
    if not isinstance(events, list) or not all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], dict)
        for e in events
    ):
        raise web.HTTPBadRequest(reason="events must be a list of [key, event object] pairs")
    parsed: list[tuple[str, GatewayEvent]] = []
    refused = 0
    for key, data in events:
        try:
            parsed.append((key, event_from_json(data)))
        except MalformedEvent as exc:
            refused += 1
            log.error("guild %s: replayed event %.80r refused: %s", gid, key, exc)
    return parsed, refused


async def replay(request: web.Request) -> web.Response:
    """Target, after the flip: apply the source's and our own held events, go live."""
    pod, gid, epoch, body = await _args(request)
    events, refused = _events(gid, body)
    # the coordinator pushes the flip's table version: fetch it now rather than wait for
    # pub/sub or the poll (released, the guild is written only once the table says ours)
    version = _non_negative(body.get("version", 0), "version")
    started = time.perf_counter()
    if (pod.table_version or 0) < version:
        await pod.table_client.refresh()
        try:
            await pod.table_client.wait_for_version(version, 5.0)
        except TimeoutError:
            return json_error(503, f"table v{version} not here yet", **{"Retry-After": "1"})
    table_wait = round(time.perf_counter() - started, 4)
    applied = await pod.gate.replay(gid, events, epoch, "released")
    return web.json_response({"applied": applied, "table_wait": table_wait, "refused": refused})


async def unfreeze(request: web.Request) -> web.Response:
    """Source, on rollback: write what was held and carry on as the owner."""
    pod, gid, epoch, _ = await _args(request)
    pod.gate.untrack(gid)
    applied = await pod.gate.replay(gid, [], epoch, "normal")
    return web.json_response({"applied": applied, "rows": await pod.store.row_counts(gid)})


async def drop(request: web.Request) -> web.Response:
    """Delete the guild's rows here: the source after the move, or a rolled-back target."""
    pod, gid, epoch, _ = await _args(request)
    if pod.ownership.owns(gid) and request.query.get("force") != "1":
        return json_error(409, f"this pod still owns guild {gid}: refusing to delete its rows")
    # stop holding first: events from now on are dropped (not ours), so nothing can be
    # queued behind the delete and land after it
    pod.gate.fences[gid] = (epoch, "normal")
    pod.gate.untrack(gid)
    counts = await pod.store.delete_guild(gid, epoch)
    return web.json_response({"deleted": counts})


async def table_version(request: web.Request) -> web.Response:
    pod = request.app[POD_KEY]
    return web.json_response({"pod": pod.name, "version": pod.table_version})


async def guilds(request: web.Request) -> web.Response:
    pod = request.app[POD_KEY]
    ids = await pod.store.guild_ids()
    return web.json_response({"pod": pod.name, "guilds": [str(g) for g in ids]})


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(TABLE_PATH, table_version)
    r.add_get(GUILDS_PATH, guilds)
    r.add_get(GUILD_PATH, status)
    r.add_post(FREEZE_PATH, freeze)
    r.add_get(EXPORT_PATH, export)
    r.add_post(IMPORT_PATH, import_rows)
    r.add_get(HELD_PATH, held)
    r.add_post(REPLAY_PATH, replay)
    r.add_post(UNFREEZE_PATH, unfreeze)
    r.add_delete(GUILD_PATH, drop)
