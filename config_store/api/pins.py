"""Guild pins: a guild routed to a named pod, one at a time or in bulk."""

from __future__ import annotations

from aiohttp import web

from modbot_ring import InvalidGuildId, parse_guild_id

from ..errors import Invalid
from ..models import BulkPins, PinChange
from .auth import role
from .context import PUBLISHER_KEY, STORE_KEY
from .parsing import actor, body, expected_version, guild, non_negative_int, version_reply


@role("read")
async def list_pins(request: web.Request) -> web.Response:
    pod = request.query.get("pod") or None
    limit = max(1, min(non_negative_int(request.query.get("limit", "1000"), "limit"), 10_000))
    after = non_negative_int(request.query.get("after", "0"), "after")
    pins = await request.app[STORE_KEY].pins(pod, limit, after)
    return web.json_response({"pins": [p.to_json() for p in pins]})


@role("read")
async def get_pin(request: web.Request) -> web.Response:
    return web.json_response((await request.app[STORE_KEY].pin(guild(request))).to_json())


@role("admin")
async def put_pin(request: web.Request) -> web.Response:
    gid = guild(request)
    pin = await body(request, PinChange)
    store = request.app[STORE_KEY]
    version = await store.set_pins(
        [(gid, pin.pod, pin.reason)],
        [],
        actor(request),
        expected_version(request),
    )
    await request.app[PUBLISHER_KEY].refresh()
    return version_reply(version, guild_id=str(gid), pod=pin.pod)


@role("admin")
async def delete_pin(request: web.Request) -> web.Response:
    gid = guild(request)
    version = await request.app[STORE_KEY].set_pins(
        [], [gid], actor(request), expected_version(request)
    )
    await request.app[PUBLISHER_KEY].refresh()
    return version_reply(version, guild_id=str(gid))


@role("admin")
async def bulk_pins(request: web.Request) -> web.Response:
    bulk = await body(request, BulkPins)
    sets: list[tuple[int, str, str]] = []
    for i, item in enumerate(bulk.set):
        try:
            sets.append((parse_guild_id(item.guild_id), item.pod, item.reason))
        except InvalidGuildId as exc:
            raise Invalid(f"set[{i}]: {exc}") from None
    deletes = []
    for i, value in enumerate(bulk.delete):
        try:
            deletes.append(parse_guild_id(value))
        except InvalidGuildId as exc:
            raise Invalid(f"delete[{i}]: {exc}") from None
    version = await request.app[STORE_KEY].set_pins(
        sets, deletes, actor(request), expected_version(request)
    )
    await request.app[PUBLISHER_KEY].refresh()
    return version_reply(version, set=len(sets), deleted=len(deletes))
