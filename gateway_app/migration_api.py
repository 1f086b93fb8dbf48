"""The pod's side of guild migration, driven step by step by the config service.

Every call carries the migration's epoch (fencing token); a call with an epoch older
than the one this pod has seen for the guild is refused (409): a stale coordinator can
never freeze, overwrite or delete a guild that has moved on.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from config_store.client.observability import json_error
from modbot_ring import InvalidGuildId, parse_guild_id, shard_for

from .storage import ImportError_

if TYPE_CHECKING:
    from .server import Pod

from .api import POD_KEY


async def _args(
    request: web.Request, need_epoch: bool = True
) -> tuple[Pod, int, int, dict[str, Any]]:
    pod = request.app[POD_KEY]
    try:
        gid = parse_guild_id(request.match_info["guild_id"])
    except InvalidGuildId as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None
    body: dict[str, Any] = {}
    if request.can_read_body:
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise web.HTTPBadRequest(reason="body is not valid JSON") from None
    raw_epoch = body.get("epoch", request.query.get("epoch"))
    epoch = -1
    if need_epoch:
        try:
            epoch = int(raw_epoch)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise web.HTTPBadRequest(reason="an integer epoch is required") from None
        if epoch < pod.gate.epoch(gid):
            raise web.HTTPConflict(
                reason=f"stale epoch {epoch}: this pod has seen epoch {pod.gate.epoch(gid)} for guild {gid}"
            )
    return pod, gid, epoch, body


async def status(request: web.Request) -> web.Response:
    pod, gid, _, _ = await _args(request, need_epoch=False)
    table = pod.table_client.table
    shard_ready = True
    if table is not None and table.shard_count is not None:
        shard_ready = (
            pod.shards.converged(table)
            and shard_for(gid, table.shard_count) in pod.shards.connected_shards
        )
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
    return web.json_response({"frozen": True, "rows": await pod.store.row_counts(gid)})


async def export(request: web.Request) -> web.Response:
    pod, gid, _, _ = await _args(request, need_epoch=False)
    mode = request.query.get("mode", "full")
    if mode != "precopy" and pod.gate.state(gid) != "frozen":
        return json_error(409, f"guild {gid} is not frozen here: freeze it before exporting")
    try:
        since_id = int(request.query.get("since_id", "0"))
        since_time = float(request.query.get("since_time", "0"))
        exported = await pod.store.export_guild(
            gid, mode=mode, since_id=since_id, since_time=since_time
        )
    except ValueError as exc:
        return json_error(400, str(exc))
    return web.json_response(exported, dumps=_dumps)


async def import_rows(request: web.Request) -> web.Response:
    pod, gid, epoch, body = await _args(request)
    try:
        result = await pod.store.import_guild(gid, epoch, body)
    except ImportError_ as exc:
        return json_error(422, str(exc))
    if result["mode"] != "precopy":
        pod.gate.fences[gid] = (epoch, "holding")
    return web.json_response(result)


async def held(request: web.Request) -> web.Response:
    pod, gid, _, _ = await _args(request, need_epoch=False)
    return web.json_response({"events": [[k, e] for k, e in await pod.store.held(gid)]})


async def replay(request: web.Request) -> web.Response:
    """Target, after the flip: apply the source's and our own held events, go live."""
    pod, gid, epoch, body = await _args(request)
    events = [(str(k), e) for k, e in body.get("events", [])]
    applied = await pod.gate.replay(gid, events, epoch, "released")
    return web.json_response({"applied": applied, "rows": await pod.store.row_counts(gid)})


async def unfreeze(request: web.Request) -> web.Response:
    """Source, on rollback: write what was held and carry on as the owner."""
    pod, gid, epoch, _ = await _args(request)
    applied = await pod.gate.replay(gid, [], epoch, "normal")
    return web.json_response({"applied": applied, "rows": await pod.store.row_counts(gid)})


async def drop(request: web.Request) -> web.Response:
    """Delete the guild's rows here: the source after the move, or a rolled-back target."""
    pod, gid, epoch, _ = await _args(request)
    if pod.owns(gid) and request.query.get("force") != "1":
        return json_error(409, f"this pod still owns guild {gid}: refusing to delete its rows")
    # stop holding first: events from now on are dropped (not ours), so nothing can be
    # queued behind the delete and land after it
    pod.gate.fences[gid] = (epoch, "normal")
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
    r.add_get("/internal/table", table_version)
    r.add_get("/internal/guilds", guilds)
    r.add_get("/internal/guilds/{guild_id}", status)
    r.add_post("/internal/guilds/{guild_id}/freeze", freeze)
    r.add_get("/internal/guilds/{guild_id}/export", export)
    r.add_post("/internal/guilds/{guild_id}/import", import_rows)
    r.add_get("/internal/guilds/{guild_id}/held", held)
    r.add_post("/internal/guilds/{guild_id}/replay", replay)
    r.add_post("/internal/guilds/{guild_id}/unfreeze", unfreeze)
    r.add_delete("/internal/guilds/{guild_id}", drop)
