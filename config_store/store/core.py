"""The store's core: the schema, the versioned change transaction and the routing table.

Every change is one transaction that locks the version row, optionally checks the
caller's expected version (compare-and-set), applies the change, settles a ``quota``
ring's placement, bumps the version and writes an audit entry. A refused change
(conflict, unknown pod, ...) is rolled back and then audited in a transaction of its
own, so the log holds every attempt's outcome. The resource modules (pods, pins, ring,
audit, migrations, plans) make their changes only through :meth:`StoreCore._change`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from modbot_ring import Algorithm, HashRing, RoutingTable, ring_nodes

from ..db import Database, DatabaseUnavailable, Tx, sqlite_ddl
from ..errors import Conflict, StoreError, StoreUnavailable
from .records import POD_COLUMNS, PodRecord

__all__ = ["MIGRATIONS", "StoreCore", "StorePart"]

MIGRATIONS = Path(__file__).parent.parent / "migrations"


class StoreCore:
    """The versioned store every resource module builds on (``Store`` is this plus them)."""

    def __init__(self, db: Database, *, channel: str = "modbot_table") -> None:
        self.db = db
        self.channel = channel
        self._listeners: list[Callable[[int], None]] = []

    async def close(self) -> None:
        await self.db.close()

    def on_change(self, listener: Callable[[int], None]) -> None:
        """Called with the new version after each committed change made through this store."""
        self._listeners.append(listener)

    # -- schema ------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply pending migrations; returns their names. Safe to run concurrently."""
        files = sorted(MIGRATIONS.glob("*.sql"))
        applied: list[str] = []
        try:
            async with self.db.transaction() as tx:
                if self.db.dialect == "postgres":
                    await tx.fetchone("SELECT pg_advisory_xact_lock(7263011)")
                await tx.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (id text PRIMARY KEY, applied_at double precision NOT NULL)"
                )
                done = {r[0] for r in await tx.fetchall("SELECT id FROM schema_migrations")}
                for path in files:
                    name = path.name.split(".")[0]
                    if name in done:
                        continue
                    text = path.read_text()
                    if self.db.dialect == "sqlite":
                        text = sqlite_ddl(text)
                    for statement in text.split(";\n"):
                        if statement.strip() and not _only_comments(statement):
                            await tx.execute(statement)
                    await tx.execute(
                        "INSERT INTO schema_migrations (id, applied_at) VALUES (%s, %s)",
                        (name, time.time()),
                    )
                    applied.append(name)
        except DatabaseUnavailable as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from None
        return applied

    # -- reading -----------------------------------------------------------------------------

    async def version(self) -> int:
        row = await self._read_one("SELECT version FROM ring_state WHERE id = 1")
        return int(row[0])

    async def table(self) -> RoutingTable:
        """A consistent snapshot of the routing table."""
        try:
            async with self.db.transaction(write=False) as tx:
                row = await tx.fetchone(
                    "SELECT version, shard_count, algorithm, assignment, assignment_nodes"
                    " FROM ring_state WHERE id = 1"
                )
                assert row is not None
                pods = [
                    PodRecord.from_row(r)
                    for r in await tx.fetchall(f"SELECT {POD_COLUMNS} FROM pods")
                ]
                pins: dict[str, str] = dict(await tx.fetchall("SELECT guild_id, pod FROM pins"))
                shard_pins: dict[int, str] = dict(
                    await tx.fetchall("SELECT shard, pod FROM shard_pins")
                )
                epochs = {
                    g: int(e)
                    for g, e in await tx.fetchall("SELECT guild_id, epoch FROM guild_epochs")
                }
                moving = await tx.fetchall(
                    "SELECT guild_id, shard, target FROM migrations"
                    " WHERE state NOT IN ('done', 'rolled_back', 'cancelled', 'aborted')"
                )
        except DatabaseUnavailable as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from None
        version, shard_count, algorithm, assignment, stored = row
        members = [p.as_pod() for p in pods]
        if assignment is not None and json.loads(stored) != ring_nodes(members):
            # not settled by a change (cannot happen through this store): derive it
            ring = await asyncio.to_thread(
                _derive_placement, ring_nodes(members), assignment, stored
            )
            assignment = ring.assignment
        # the build (ring + pins) is CPU work: a worker thread, never the event loop
        return await asyncio.to_thread(
            RoutingTable,
            members,
            assignment=assignment if algorithm == Algorithm.QUOTA.value else None,
            version=int(version),
            shard_count=shard_count,
            algorithm=algorithm,
            pins=pins,
            shard_pins=shard_pins,
            migrating={g: t for g, _, t in moving if g is not None},
            migrating_shards=[s for g, s, _ in moving if g is None and s is not None],
            epochs=epochs,
        )

    async def _read_all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            async with self.db.transaction(write=False) as tx:
                return await tx.fetchall(sql, params)
        except DatabaseUnavailable as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from None

    async def _read_one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        rows = await self._read_all(sql, params)
        assert rows
        return rows[0]

    # -- changing ----------------------------------------------------------------------------

    async def _change(
        self,
        action: str,
        actor: str,
        detail: dict[str, Any],
        apply: Callable[[Tx], Awaitable[bool]],
        expected_version: int | None = None,
        plan_id: str | None = None,
    ) -> int:
        """Run ``apply`` in a version-bumping transaction; it returns False for a no-op.
        With ``plan_id`` the new version is recorded as that plan's own."""
        try:
            async with self.db.transaction() as tx:
                row = await tx.fetchone("SELECT version FROM ring_state WHERE id = 1 FOR UPDATE")
                assert row is not None
                current = int(row[0])
                if expected_version is not None and expected_version != current:
                    raise Conflict(
                        f"the table is at version {current}, not {expected_version}: re-read and retry"
                    )
                if not await apply(tx):
                    return current
                await self._settle_placement(tx)
                new = current + 1
                now = time.time()
                await tx.execute(
                    "UPDATE ring_state SET version = %s, updated_at = %s WHERE id = 1", (new, now)
                )
                await tx.execute(
                    "INSERT INTO table_versions (version, created_at, actor, action) VALUES (%s, %s, %s, %s)",
                    (new, now, actor, action),
                )
                if plan_id is not None:
                    await tx.execute(
                        "INSERT INTO plan_versions (version, plan_id) VALUES (%s, %s)",
                        (new, plan_id),
                    )
                await tx.execute(
                    "INSERT INTO audit_log (at, actor, action, outcome, version, detail) VALUES (%s, %s, %s, %s, %s, %s)",
                    (now, actor, action, "ok", new, json.dumps(detail, sort_keys=True)),
                )
                if self.db.dialect == "postgres":
                    await tx.fetchone("SELECT pg_notify(%s, %s)", (self.channel, str(new)))
        except StoreError as exc:
            if not isinstance(exc, StoreUnavailable):
                await self._audit_refusal(action, actor, {**detail, "error": str(exc)}, exc.outcome)
            raise
        except DatabaseUnavailable as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from None
        for listener in self._listeners:
            listener(new)
        return new

    async def _settle_placement(self, tx: Tx) -> None:
        """A ``quota`` ring's placement is history: when a change alters the ring's
        members or weights, derive the new placement from the stored one (moving the
        fewest keys) and store it in the same transaction, so every reader of this
        version gets the same ring (:meth:`table`)."""
        row = await tx.fetchone(
            "SELECT algorithm, assignment, assignment_nodes FROM ring_state WHERE id = 1"
        )
        assert row is not None
        algorithm, assignment, stored = row
        if algorithm != Algorithm.QUOTA.value:
            if assignment is not None:
                await tx.execute(
                    "UPDATE ring_state SET assignment = NULL, assignment_nodes = NULL WHERE id = 1"
                )
            return
        nodes = ring_nodes(
            PodRecord.from_row(r).as_pod()
            for r in await tx.fetchall(f"SELECT {POD_COLUMNS} FROM pods")
        )
        if stored is not None and json.loads(stored) == nodes:
            return
        ring = await asyncio.to_thread(_derive_placement, nodes, assignment, stored)
        await tx.execute(
            "UPDATE ring_state SET assignment = %s, assignment_nodes = %s WHERE id = 1",
            (ring.assignment, json.dumps(nodes, sort_keys=True)),
        )

    async def _audit_refusal(
        self, action: str, actor: str, detail: dict[str, Any], outcome: str
    ) -> None:
        try:
            async with self.db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO audit_log (at, actor, action, outcome, version, detail) VALUES (%s, %s, %s, %s, NULL, %s)",
                    (time.time(), actor, action, outcome, json.dumps(detail, sort_keys=True)),
                )
        except DatabaseUnavailable:
            pass  # the refusal itself is what the caller hears about


class StorePart:
    """A part of the store kept apart from ``Store`` (migrations, plans, the migrator's
    pin changes): it reads and changes through the store it is given."""

    def __init__(self, store: StoreCore) -> None:
        self.store = store


def _only_comments(statement: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in statement.splitlines())


def _derive_placement(
    nodes: dict[str, float], assignment: str | None, stored: str | None
) -> HashRing:
    """The quota ring for ``nodes``, derived from the stored placement (if any)."""
    previous = None
    if assignment is not None and stored is not None:
        try:
            previous = HashRing(
                json.loads(stored), algorithm=Algorithm.QUOTA, assignment=assignment
            )
        except ValueError as exc:
            # refuse rather than deal afresh: a fresh deal would move most guilds
            raise Conflict(
                f"the stored ring placement is unreadable ({exc}): restore the database"
            ) from None
    return HashRing(nodes, algorithm=Algorithm.QUOTA, previous=previous)
