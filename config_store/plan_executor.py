"""Applying a stored plan: its moves run as migrations, ``concurrency`` at a time.

Every move is idempotent (a guild already on its target, a shard already assigned, is
done), so a plan interrupted by a restart resumes with ``apply`` and skips what moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from modbot_ring import Move, shard_for

from .errors import Conflict, Invalid
from .moves import MoveMachine, retry_store
from .pod_calls import PodCalls, current_table
from .publisher import TablePublisher
from .store import APPLICABLE_PLAN_STATES, NEW_PLAN_STATES, MigrationStore

log = logging.getLogger("modbot.config.migrator")
SHARD_SWEEPS = 5  # listings of a shard's guilds on its source during one shard move
MOVE_KINDS = ("guild", "shard", "repair")


def parse_move(data: object, index: int) -> Move:
    """A stored plan's move (``{"kind", "id", "from", "to", "load"}``), typed."""
    if not isinstance(data, Mapping) or not {"kind", "id", "to"} <= set(data):
        raise Invalid(f"move {index} must be an object with kind, id, from and to")
    kind, target, source = data["kind"], data["to"], data.get("from")
    if kind not in MOVE_KINDS or not isinstance(target, str):
        raise Invalid(f"move {index}: kind must be one of {', '.join(MOVE_KINDS)}, to a pod")
    try:
        unit = int(data["id"])
        load = float(data.get("load", 0.0))
    except (TypeError, ValueError):
        raise Invalid(f"move {index}: id and load must be numbers") from None
    return Move(str(kind), unit, str(source) if source is not None else "", target, load)


class PlanExecutor:
    def __init__(
        self,
        migrations: MigrationStore,
        publisher: TablePublisher,
        pods: PodCalls,
        moves: MoveMachine,
    ) -> None:
        self.migrations = migrations
        self.publisher = publisher
        self.pods = pods
        self.moves = moves
        self.plan_tasks: dict[str, asyncio.Task[None]] = {}
        self.cancelled_plans: set[str] = set()

    async def interrupt_orphans(self) -> None:
        """Plans left ``executing`` by a process that died are ``interrupted``: their
        remaining moves run when someone applies them again."""
        for plan in await self.migrations.plans(limit=100):
            if plan.state == "executing":
                await self.migrations.set_plan_state(plan.id, "interrupted")

    async def apply_plan(self, plan_id: str, concurrency: int, actor: str) -> None:
        record = await self.migrations.plan(plan_id)
        table = await current_table(self.publisher)
        # the plan's own moves bump the version too (an interrupted plan resumes past
        # them): only someone else's change since the plan was made makes it stale
        foreign = await self.migrations.foreign_changes(plan_id, record.base_version)
        if foreign:
            first = foreign[0]
            with contextlib.suppress(Conflict):
                await self.migrations.set_plan_state(plan_id, "expired", expect=NEW_PLAN_STATES)
            raise Conflict(
                f"plan {plan_id} was made against table v{record.base_version}, the table is at v{table.version}"
                f" (v{first.version}: {first.action} by {first.actor}): regenerate it"
            )
        moves = [parse_move(m, i) for i, m in enumerate(record.plan.get("moves", []))]
        await self.migrations.set_plan_state(plan_id, "executing", expect=APPLICABLE_PLAN_STATES)
        task = asyncio.create_task(self._execute(plan_id, moves, max(1, concurrency), actor))
        self.plan_tasks[plan_id] = task

    async def cancel_plan(self, plan_id: str) -> None:
        await self.migrations.plan(plan_id)
        self.cancelled_plans.add(plan_id)
        for migration in await self.migrations.list(open_only=True, plan_id=plan_id):
            with contextlib.suppress(Conflict):
                await self.moves.cancel(migration.id)

    async def _execute(self, plan_id: str, moves: list[Move], concurrency: int, actor: str) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(move: Move) -> None:
            async with gate:
                if plan_id in self.cancelled_plans:
                    return
                if move.kind == "guild":
                    await self.move_guild(move.id, move.target, actor, plan_id)
                elif move.kind == "repair":
                    await self._repair_guild(move.id, move.source, move.target, actor, plan_id)
                else:
                    await self._move_shard(move.id, move.source, move.target, actor, plan_id)

        try:
            await asyncio.gather(*(one(m) for m in moves))
            final = "cancelled" if plan_id in self.cancelled_plans else "done"
        except Exception:
            log.exception("plan %s failed", plan_id)
            final = "failed"
        await retry_store(lambda: self.migrations.set_plan_state(plan_id, final), "plan state")

    async def move_guild(self, gid: int, target: str, actor: str, plan_id: str) -> None:
        """Idempotent: a guild already on ``target`` is done; a migration of it already
        under way (a resumed plan's move, picked up at start) is waited for."""
        for running in await self.migrations.list(open_only=True):
            if running.guild_id == str(gid):
                await self.moves.wait(running.id)
        table = await current_table(self.publisher)
        if table.owner(gid) == target:
            return
        migration = await self.migrations.start(gid, table.owner(gid), target, actor, plan_id)
        await self.publisher.refresh()
        await self.moves.wait(migration.id)

    async def _move_shard(
        self, shard: int, source: str, target: str, actor: str, plan_id: str
    ) -> None:
        """A shard's guilds move one by one (pinned to the target), then the shard itself."""
        table = await current_table(self.publisher)
        count = table.shard_count
        if count is None:
            raise Invalid("shard moves need a shard-keyed table")
        if table.shard_owner(shard) == target:
            return  # done before (a resumed plan)
        # listed again after each pass: a guild whose first rows land on the source while
        # earlier ones move would otherwise stay there when the shard flips, and the
        # target would start a second copy of it (verify cannot merge those)
        tried: set[int] = set()
        for _ in range(SHARD_SWEEPS):
            held = await self.pods.call(source, lambda c: c.guilds())
            table = await current_table(self.publisher)
            guilds = [
                g
                for g in held.guilds
                if shard_for(g, count) == shard and table.owner(g) == source and g not in tried
            ]
            if not guilds:
                break
            for gid in guilds:
                if plan_id in self.cancelled_plans:
                    return
                tried.add(gid)
                await self.move_guild(gid, target, actor, plan_id)
        table = await current_table(self.publisher)
        # every guild of the shard carried over by a pin (this run's and an interrupted
        # run's): the shard assignment makes those pins redundant
        carried = [g for g, p in table.pins.items() if p == target and shard_for(g, count) == shard]
        await retry_store(
            lambda: self.migrations.set_shard_pin(shard, target, carried, actor, plan_id),
            "shard pin",
        )
        await self.publisher.refresh()

    async def _repair_guild(
        self, gid: int, holder: str, owner: str, actor: str, plan_id: str
    ) -> None:
        """Route the guild to the pod holding its rows, then migrate it to its owner."""
        table = await current_table(self.publisher)
        if table.owner(gid) == owner:
            held = await self.pods.call(owner, lambda c: c.guilds())
            if gid in held.guilds:
                log.warning("repair of guild %s skipped: %s holds rows of it now", gid, owner)
                return
            await retry_store(
                lambda: self.migrations.pin_to_holder(gid, holder, actor, plan_id), "repair pin"
            )
            await self.publisher.refresh()
        elif table.owner(gid) != holder:
            log.warning("repair of guild %s skipped: it moved to %s", gid, table.owner(gid))
            return
        await self.move_guild(gid, owner, actor, plan_id)
