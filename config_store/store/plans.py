"""Plans: many moves made at once (by an operator, the balancer or a drain), stored, then
applied. A plan is stale once someone else's change overtakes its base version."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from ..db import DatabaseUnavailable
from ..errors import Conflict, Invalid, NotFound, StoreUnavailable
from .core import StorePart
from .records import PlanRecord, TableChange

__all__ = ["APPLICABLE_PLAN_STATES", "NEW_PLAN_STATES", "PlanRecord", "Plans", "TableChange"]

# Plan lifecycle (README, Operations): draft | proposed -> executing (applying; interrupted
# when the service stopped under it) -> done | failed | cancelled; draft | proposed ->
# expired (someone else changed the table first); empty: the balancer found nothing to move.
NEW_PLAN_STATES: tuple[str, ...] = ("draft", "proposed")
APPLICABLE_PLAN_STATES: tuple[str, ...] = ("draft", "proposed", "interrupted")


class Plans(StorePart):
    """The plan operations (``MigrationStore`` has them)."""

    async def save_plan(
        self,
        plan_id: str,
        body: dict[str, Any],
        base_version: int,
        actor: str,
        state: str = "draft",
    ) -> None:
        """Store a new plan: ``draft`` (an operator's dry run, applied only on request and
        never advertised) or ``proposed`` (the balancer's or a drain's, shown as waiting)."""
        if state not in NEW_PLAN_STATES:
            raise Invalid(f"a new plan is draft or proposed, not {state!r}")
        try:
            async with self.store.db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO plans (id, created_at, base_version, state, actor, body) VALUES (%s, %s, %s, %s, %s, %s)",
                    (plan_id, time.time(), base_version, state, actor, json.dumps(body)),
                )
        except DatabaseUnavailable as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from None

    async def plan(self, plan_id: str) -> PlanRecord:
        rows = await self.store._read_all(
            "SELECT id, created_at, base_version, state, actor, body FROM plans WHERE id = %s",
            (plan_id,),
        )
        if not rows:
            raise NotFound(f"no plan {plan_id!r}")
        return PlanRecord.from_row(rows[0])

    async def plans(self, limit: int = 20) -> list[PlanRecord]:
        rows = await self.store._read_all(
            "SELECT id FROM plans ORDER BY created_at DESC LIMIT %s", (limit,)
        )
        return [await self.plan(r[0]) for r in rows]

    async def plans_in_state(
        self, states: tuple[str, ...], *, actor: str | None = None, since: float = 0.0
    ) -> list[PlanRecord]:
        marks = ", ".join(["%s"] * len(states))
        sql = f"SELECT id FROM plans WHERE state IN ({marks}) AND created_at >= %s"
        params: list[Any] = [*states, since]
        if actor is not None:
            sql += " AND actor = %s"
            params.append(actor)
        rows = await self.store._read_all(sql + " ORDER BY created_at DESC", tuple(params))
        return [await self.plan(r[0]) for r in rows]

    async def foreign_changes(self, plan_id: str, base_version: int) -> list[TableChange]:
        """Table versions after ``base_version`` that the plan's own moves did not produce:
        someone else's changes, which make the plan stale."""
        rows = await self.store._read_all(
            "SELECT version, actor, action FROM table_versions WHERE version > %s"
            " AND version NOT IN (SELECT version FROM plan_versions WHERE plan_id = %s)"
            " ORDER BY version",
            (base_version, plan_id),
        )
        return [TableChange(int(v), a, act) for v, a, act in rows]

    async def expire_stale_plans(self) -> list[str]:
        """Draft and proposed plans that someone else's table change overtook become
        ``expired``, so nothing advertises an apply command that would fail with 409."""
        marks = ", ".join(["%s"] * len(NEW_PLAN_STATES))
        rows = await self.store._read_all(
            f"SELECT id, base_version FROM plans WHERE state IN ({marks})"
            " AND base_version < (SELECT version FROM ring_state WHERE id = 1)",
            NEW_PLAN_STATES,
        )
        expired: list[str] = []
        for plan_id, base in rows:
            if await self.foreign_changes(plan_id, int(base)):
                with contextlib.suppress(Conflict, NotFound):
                    await self.set_plan_state(plan_id, "expired", expect=NEW_PLAN_STATES)
                    expired.append(plan_id)
        return expired

    async def recently_moved(self, since: float) -> tuple[frozenset[int], frozenset[int]]:
        """Guilds and shards that moved at or after ``since``: the cool-down set."""
        guilds = await self.store._read_all(
            "SELECT DISTINCT guild_id FROM migrations WHERE updated_at >= %s AND state NOT IN ('rolled_back', 'aborted')",
            (since,),
        )
        shards = await self.store._read_all(
            "SELECT shard FROM shard_pins WHERE reason = 'rebalance' AND created_at >= %s",
            (since,),
        )
        return (
            frozenset(int(r[0]) for r in guilds if r[0] is not None),
            frozenset(int(r[0]) for r in shards),
        )

    async def set_plan_state(
        self, plan_id: str, state: str, *, expect: tuple[str, ...] | None = None
    ) -> None:
        """Move a plan to ``state``; with ``expect``, only from one of those states
        (``executing`` is the one-plan-at-a-time lock: at most one plan holds it)."""
        try:
            async with self.store.db.transaction() as tx:
                await tx.fetchone("SELECT version FROM ring_state WHERE id = 1 FOR UPDATE")
                row = await tx.fetchone("SELECT state FROM plans WHERE id = %s", (plan_id,))
                if row is None:
                    raise NotFound(f"no plan {plan_id!r}")
                if expect is not None and row[0] not in expect:
                    raise Conflict(f"plan {plan_id} is {row[0]}")
                if state == "executing":
                    busy = await tx.fetchone(
                        "SELECT id FROM plans WHERE state = 'executing' AND id <> %s", (plan_id,)
                    )
                    if busy:
                        raise Conflict(f"plan {busy[0]} is executing: only one plan runs at a time")
                await tx.execute("UPDATE plans SET state = %s WHERE id = %s", (state, plan_id))
        except DatabaseUnavailable as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from None
