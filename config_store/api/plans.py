"""Migrations (one guild moved), plans (many moves, made then applied) and verify."""

from __future__ import annotations

from aiohttp import web

from modbot_ring import InvalidGuildId, parse_guild_id

from ..errors import Conflict, Invalid
from ..models import MigrationStart, PlanApply, PlanRequest, SavedAssignment
from ..planning import Assignment
from ..schema import UNSET
from .auth import role
from .context import MIGRATOR_KEY
from .parsing import actor, body, int_param, non_negative_int


@role("admin")
async def start_migration(request: web.Request) -> web.Response:
    start = await body(request, MigrationStart)
    try:
        gid = parse_guild_id(start.guild_id)
    except InvalidGuildId as exc:
        raise Invalid(str(exc)) from None
    migration = await request.app[MIGRATOR_KEY].migrate(gid, start.to, actor(request))
    return web.json_response(migration.to_json(), status=202)


@role("read")
async def list_migrations(request: web.Request) -> web.Response:
    migrator = request.app[MIGRATOR_KEY]
    rows = await migrator.migrations.list(
        open_only=request.query.get("open") == "1", plan_id=request.query.get("plan")
    )
    return web.json_response({"migrations": [m.to_json() for m in rows]})


@role("read")
async def get_migration(request: web.Request) -> web.Response:
    migration = await request.app[MIGRATOR_KEY].migrations.get(int_param(request, "id"))
    return web.json_response(migration.to_json())


@role("admin")
async def cancel_migration(request: web.Request) -> web.Response:
    migration = await request.app[MIGRATOR_KEY].cancel(int_param(request, "id"))
    return web.json_response(migration.to_json())


@role("admin")
async def create_plan(request: web.Request) -> web.Response:
    wanted = await body(request, PlanRequest)  # epsilon in [0, 10], max_moves >= 1
    migrator = request.app[MIGRATOR_KEY]
    if wanted.drain is not UNSET:  # the plan that empties a draining pod
        plan = await migrator.drain_plan(wanted.drain, actor(request))
        return web.json_response(plan, status=201)
    if wanted.repair:  # carry stranded rows to their owners
        plan = await migrator.repair_plan(actor(request))
        return web.json_response(plan, status=201)
    if wanted.restore is not UNSET:
        plan = await migrator.restore_plan(assignment(wanted.restore), actor(request))
        return web.json_response(plan, status=201)
    try:
        plan = await migrator.generate_plan(
            epsilon=float(wanted.epsilon), max_moves=wanted.max_moves, actor=actor(request)
        )
    except ValueError as exc:  # the planner's refusals (no active pods, ...): the state's fault
        raise Conflict(f"no plan: {exc}") from None
    return web.json_response(plan, status=201)


def assignment(saved: SavedAssignment) -> Assignment:
    """A plan's saved ``current_assignment`` (its shape checked by the model) as the
    migrator's: shard numbers and guild ids in the stores' signed 64-bit range."""
    shard_owners: dict[int, str | None] = {}
    for shard, pod in (saved.shards or {}).items():
        shard_owners[non_negative_int(shard, "restore.shards key")] = pod
    pinned: dict[int, str] = {}
    for gid, pinned_pod in (saved.pins or {}).items():
        try:
            pinned[parse_guild_id(gid)] = pinned_pod
        except InvalidGuildId as exc:
            raise Invalid(f"restore.pins: {exc}") from None
    return Assignment(shards=shard_owners, pins=pinned)


@role("read")
async def get_plan(request: web.Request) -> web.Response:
    migrator = request.app[MIGRATOR_KEY]
    record = await migrator.migrations.plan(request.match_info["id"])
    migrations = await migrator.migrations.list(plan_id=record.id, limit=10_000)
    return web.json_response({**record.to_json(), "migrations": [m.to_json() for m in migrations]})


@role("read")
async def list_plans(request: web.Request) -> web.Response:
    plans = await request.app[MIGRATOR_KEY].migrations.plans()
    return web.json_response({"plans": [p.to_json() for p in plans]})


@role("admin")
async def apply_plan(request: web.Request) -> web.Response:
    apply = await body(request, PlanApply)  # concurrency in [1, 64]
    await request.app[MIGRATOR_KEY].apply_plan(
        request.match_info["id"], apply.concurrency, actor(request)
    )
    return web.json_response({"id": request.match_info["id"], "state": "executing"}, status=202)


@role("admin")
async def cancel_plan(request: web.Request) -> web.Response:
    await request.app[MIGRATOR_KEY].cancel_plan(request.match_info["id"])
    return web.json_response({"id": request.match_info["id"], "cancelling": True})


@role("read")
async def verify(request: web.Request) -> web.Response:
    return web.json_response(await request.app[MIGRATOR_KEY].verify())
