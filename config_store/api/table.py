"""The routing table and what it says: the table itself, a guild's route, the cluster's
status, and the ring settings the table is built with."""

from __future__ import annotations

import math
import time

from aiohttp import web

from modbot_ring import NoRouteError
from modbot_runtime.observability import json_error

from ..errors import Invalid, StoreUnavailable
from ..models import RingChange
from ..schema import UNSET
from .auth import role
from .context import BALANCER_KEY, PUBLISHER_KEY, STORE_KEY
from .parsing import actor, body, expected_version, guild, snapshot, version_reply

MAX_LONG_POLL = 30.0


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
    snap = await snapshot(request)
    return version_reply(snap.version)


@role("read")
async def get_route(request: web.Request) -> web.Response:
    gid = guild(request)
    snap = await snapshot(request)
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
    snap = await snapshot(request)
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


@role("read")
async def get_ring(request: web.Request) -> web.Response:
    snap = await snapshot(request)
    return web.json_response(
        {
            "version": snap.version,
            "shard_count": snap.table.shard_count,
            "algorithm": snap.table.algorithm.value,
        }
    )


@role("admin")
async def put_ring(request: web.Request) -> web.Response:
    change = await body(request, RingChange)
    algorithm = (
        (await snapshot(request)).table.algorithm.value  # absent: kept
        if change.algorithm is UNSET
        else change.algorithm
    )
    store = request.app[STORE_KEY]
    version = await store.set_ring(
        change.shard_count,
        algorithm,
        actor(request),
        expected_version(request),
    )
    await request.app[PUBLISHER_KEY].refresh()
    return version_reply(version)
