"""Making plans: rebalance (from the pods' loads), restore (back to a saved assignment),
drain (empty a draining pod) and repair (carry stranded rows to their owners).

A plan is stored (``MigrationStore.save_plan``) and returned as the JSON body the API
answers with; nothing moves until it is applied (``plan_executor``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modbot_ring import Move, PlanLimits, PodState, RoutingTable, plan_rebalance, shard_for

from .errors import Conflict, NotFound, PodCallError, PodUnavailable
from .loads import collect
from .placement import MigratorPart
from .pod_calls import current_table

# What a plan's LOAD numbers are (printed by `plan`; /ops shows the balancer's events/s).
LOAD_UNIT = "events/s (a guild a pod holds counts at least 1)"


@dataclass(frozen=True)
class Assignment:
    """Where shards and pinned guilds were: a plan's saved ``current_assignment``."""

    shards: Mapping[int, str | None] = field(default_factory=dict)
    pins: Mapping[int, str] = field(default_factory=dict)


def _stamp() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _current_assignment(table: RoutingTable) -> dict[str, Any]:
    count = table.shard_count
    return {
        "shards": {str(s): table.shard_owner(s) for s in range(count)} if count else {},
        "pins": {str(g): p for g, p in table.pins.items()},
    }


class PlanMaker(MigratorPart):
    async def generate_plan(
        self,
        *,
        epsilon: float,
        max_moves: int | None,
        actor: str,
        frozen_shards: frozenset[int] = frozenset(),
        frozen_guilds: frozenset[int] = frozenset(),
        reason: str = "",
        state: str = "draft",
    ) -> dict[str, Any]:
        """A rebalance plan: ``draft`` for an operator's dry run, ``proposed`` for the
        balancer's (the one advertised as waiting)."""
        table = await current_table(self.publisher)
        loads, shard_loads, sizes = await self.plan_inputs(table)
        hard = {int(p.guild_id) for p in await self.store.pins() if p.kind == "hard"}
        plan = plan_rebalance(
            table,
            loads,
            shard_loads=shard_loads if table.shard_count else None,
            hard_pins=hard,
            frozen_shards=frozen_shards,
            frozen_guilds=frozen_guilds,
            guild_bytes=sizes,
            limits=PlanLimits(epsilon=epsilon, max_moves=max_moves),
        )
        body = plan.to_dict()
        body["current_assignment"] = _current_assignment(table)
        if reason:
            body["reason"] = reason
        body["load_unit"] = LOAD_UNIT
        plan_id = f"plan-{_stamp()}"
        body["id"] = plan_id
        await self.migrations.save_plan(plan_id, body, table.version, actor, state)
        return body

    async def restore_plan(self, assignment: Assignment, actor: str) -> dict[str, Any]:
        """A plan that moves shards and pinned guilds back to a saved assignment."""
        table = await current_table(self.publisher)
        moves: list[Move] = []
        for shard, pod in assignment.shards.items():
            current = table.shard_owner(shard) if table.shard_count else None
            if pod and current and current != pod and shard < (table.shard_count or 0):
                moves.append(Move("shard", shard, current, pod, 0.0))
        for gid, pod in assignment.pins.items():
            current = table.owner(gid)
            if current != pod:
                moves.append(Move("guild", gid, current, pod, 0.0))
        unknown = {m.target for m in moves} - set(table.pods)
        if unknown:
            raise Conflict(
                f"the saved assignment names pods that are gone: {', '.join(sorted(unknown))}"
            )
        plan_id = f"rollback-{_stamp()}"
        body = {
            "format": 1,
            "id": plan_id,
            "base_version": table.version,
            "moves": [m.to_dict() for m in moves],
            "rollback": True,
            "unfixable": [],
        }
        await self.migrations.save_plan(plan_id, body, table.version, actor)
        return body

    async def plan_inputs(
        self, table: RoutingTable
    ) -> tuple[dict[int, float], dict[int, float], dict[int, int]]:
        """Load per guild and per shard (the rest of each shard), and bytes per guild.

        Rates are what the pods report; a guild a pod holds counts at least 1.0, so
        quiet guilds (their storage, their session state) still spread out."""
        records = await self.store.pods()
        cluster = collect(records)
        loads: dict[int, float] = dict(cluster.guilds)
        for record in records:
            if not record.online or not record.url:
                continue
            with contextlib.suppress(PodUnavailable):  # down: its reported load stands
                held = await self.pods.call(record.name, lambda c: c.guilds(), retry=False)
                for g in held.guilds:
                    loads[g] = max(loads.get(g, 0.0), 1.0)
        return loads, cluster.shards, cluster.guild_bytes

    async def drain_plan(self, pod: str, actor: str) -> dict[str, Any]:
        """The plan that empties a draining pod: each of its shards and each guild pinned
        to it goes to the active pod with the least load per weight at that point
        (heaviest first). Quiet shards move too: an empty pod holds no sessions."""
        table = await current_table(self.publisher)
        if pod not in table.pods:
            raise NotFound(f"no pod named {pod!r}")
        if table.pods[pod].state is not PodState.DRAINING:
            raise Conflict(f"pod {pod} is not draining: run `modbot-ring drain {pod}` first")
        active = {n: p.weight for n, p in table.pods.items() if p.state is PodState.ACTIVE}
        if not active:
            raise Conflict(f"no active pod to move {pod}'s data to")
        loads, shard_loads, _ = await self.plan_inputs(table)
        count = table.shard_count
        load = dict.fromkeys(table.pods, 0.0)
        unit_load: dict[tuple[str, int], float] = {}
        mine = {s for s in range(count or 0) if table.shard_owner(s) == pod}  # shards it owns
        for gid, value in loads.items():
            owner = table.owner(gid)
            load[owner] = load.get(owner, 0.0) + value
            if owner != pod:
                continue
            if count and gid not in table.pins:
                key = ("shard", shard_for(gid, count))
            elif count and table.pins.get(gid) == pod and shard_for(gid, count) in mine:
                key = ("shard", shard_for(gid, count))  # travels with its shard
            else:
                key = ("guild", gid)
            unit_load[key] = unit_load.get(key, 0.0) + value
        for shard, value in shard_loads.items():
            shard_owner = table.shard_owner(shard) if count else None
            if shard_owner is not None:
                load[shard_owner] = load.get(shard_owner, 0.0) + value
            if shard_owner == pod:
                unit_load[("shard", shard)] = unit_load.get(("shard", shard), 0.0) + value
        for shard in range(count or 0):
            if table.shard_owner(shard) == pod:
                unit_load.setdefault(("shard", shard), 0.0)
        for gid, owner in table.pins.items():
            if owner == pod and not (count and shard_for(gid, count) in mine):
                unit_load.setdefault(("guild", gid), 0.0)
        moves: list[Move] = []
        for (kind, uid), value in sorted(unit_load.items(), key=lambda kv: (-kv[1], kv[0])):
            target = min(active, key=lambda p: ((load[p] + max(value, 1.0)) / active[p], p))
            load[target] += max(value, 1.0)
            moves.append(Move(kind, uid, pod, target, value))
        plan_id = f"drain-{pod}-{_stamp()}"
        body = {
            "format": 1,
            "id": plan_id,
            "base_version": table.version,
            "drain": pod,
            "load_unit": LOAD_UNIT,
            "moves": [m.to_dict() for m in moves],
            "unfixable": [],
            "current_assignment": _current_assignment(table),
        }
        await self.migrations.save_plan(plan_id, body, table.version, actor, "proposed")
        return body

    async def repair_plan(self, actor: str) -> dict[str, Any]:
        """A plan that carries stranded rows (a pod holding rows of a guild it does not
        own, no migration under way) to the guild's owner, through the migration path.
        Only when the owner holds none of the guild's rows: two copies would need a
        merge, and an import replaces; those are listed as ``unfixable``."""
        table = await current_table(self.publisher)
        if await self.migrations.list(open_only=True):
            raise Conflict("migrations are under way: repair once they have finished")
        holders: dict[int, list[str]] = {}
        held_by: dict[str, set[int]] = {}
        unfixable: list[str] = []
        for record in await self.store.pods():
            try:
                held = await self.pods.call(record.name, lambda c: c.guilds(), retry=False)
            except PodCallError as exc:
                unfixable.append(f"pod {record.name} did not answer: {exc}")
                continue
            held_by[record.name] = set(held.guilds)
            for g in held_by[record.name]:
                holders.setdefault(g, []).append(record.name)
        moves: list[Move] = []
        for gid, pods in sorted(holders.items()):
            owner = table.owner(gid)
            stray = [p for p in pods if p != owner]
            if not stray:
                continue
            if gid in held_by.get(owner, set()) or len(stray) > 1:
                unfixable.append(
                    f"guild {gid}: rows on {', '.join(sorted(pods))}; owner {owner} "
                    "holds rows too (or several pods do): merge them by hand"
                )
                continue
            if table.pods[owner].state is not PodState.ACTIVE:
                unfixable.append(f"guild {gid}: its owner {owner} is not active")
                continue
            moves.append(Move("repair", gid, stray[0], owner, 0.0))
        plan_id = f"repair-{_stamp()}"
        body = {
            "format": 1,
            "id": plan_id,
            "base_version": table.version,
            "repair": True,
            "moves": [m.to_dict() for m in moves],
            "unfixable": unfixable,
        }
        await self.migrations.save_plan(plan_id, body, table.version, actor)
        return body
