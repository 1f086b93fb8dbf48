"""The control plane's source of truth: pods, pins and ring settings, versioned.

Every change is one transaction that locks the version row, optionally checks the
caller's expected version (compare-and-set), applies the change, bumps the version and
writes an audit entry. A refused change (conflict, unknown pod, ...) is rolled back and
then audited in a transaction of its own, so the log holds every attempt's outcome.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modbot_ring import MAX_WEIGHT, Algorithm, Pod, PodState, RoutingTable
from modbot_ring.table import MAX_SHARD_COUNT

from .db import Database, DatabaseUnavailable, Tx, open_database, sqlite_ddl

__all__ = [
    "AuditEntry",
    "Conflict",
    "Invalid",
    "NotFound",
    "PodRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "open_store",
]

MIGRATIONS = Path(__file__).with_name("migrations")
POD_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
MAX_REASON = 500
# Plan lifecycle (README, Operations): draft | proposed -> executing (applying; interrupted
# when the service stopped under it) -> done | failed | cancelled; draft | proposed ->
# expired (someone else changed the table first); empty: the balancer found nothing to move.
NEW_PLAN_STATES: tuple[str, ...] = ("draft", "proposed")
APPLICABLE_PLAN_STATES: tuple[str, ...] = ("draft", "proposed", "interrupted")


class StoreError(Exception):
    status = 500
    outcome = "error"


class StoreUnavailable(StoreError):
    status = 503
    outcome = "unavailable"


class Conflict(StoreError):
    status = 409
    outcome = "conflict"


class NotFound(StoreError):
    status = 404
    outcome = "not_found"


class Invalid(StoreError):
    status = 400
    outcome = "invalid"


@dataclass(frozen=True)
class PodRecord:
    name: str
    url: str | None
    weight: float
    state: str  # active | draining (the operator's intent)
    online: bool  # heartbeats arriving (liveness)
    last_heartbeat: float | None
    registered_at: float
    load: dict[str, Any] | None

    @property
    def table_state(self) -> PodState:
        return PodState(self.state) if self.online else PodState.OFFLINE

    def to_json(self, now: float) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.table_state.value
        data["intent"] = self.state
        data["heartbeat_age"] = (
            None if self.last_heartbeat is None else round(now - self.last_heartbeat, 3)
        )
        return data


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    outcome: str
    version: int | None
    detail: dict[str, Any]


async def open_store(url: str, *, schema: str = "", migrate: bool = True) -> Store:
    try:
        db = await open_database(url, schema=schema)
    except DatabaseUnavailable as exc:
        raise StoreUnavailable(f"database unavailable: {exc}") from None
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    store = Store(db, channel=f"modbot_table_{schema}" if schema else "modbot_table")
    if migrate:
        try:
            await store.migrate()
        except StoreError:
            await store.close()  # no reconnect probe left running behind the error
            raise
    return store


_POD_COLUMNS = "name, url, weight, state, online, last_heartbeat, registered_at, load"


def _pod(row: tuple[Any, ...]) -> PodRecord:
    name, url, weight, state, online, heartbeat, registered, load = row
    return PodRecord(
        name,
        url,
        float(weight),
        state,
        bool(online),
        heartbeat,
        registered,
        json.loads(load) if load else None,
    )


class Store:
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
                    "SELECT version, shard_count, algorithm FROM ring_state WHERE id = 1"
                )
                assert row is not None
                pods = [_pod(r) for r in await tx.fetchall(f"SELECT {_POD_COLUMNS} FROM pods")]
                pins = dict(await tx.fetchall("SELECT guild_id, pod FROM pins"))
                shard_pins = dict(await tx.fetchall("SELECT shard, pod FROM shard_pins"))
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
        version, shard_count, algorithm = row
        # the build (ring + pins) is CPU work: a worker thread, never the event loop
        return await asyncio.to_thread(
            RoutingTable,
            [Pod(p.name, p.table_state, p.weight, p.url) for p in pods],
            version=int(version),
            shard_count=shard_count,
            algorithm=algorithm,
            pins=pins,
            shard_pins=shard_pins,
            migrating={g: t for g, _, t in moving if g is not None},
            migrating_shards=[s for g, s, _ in moving if g is None and s is not None],
            epochs=epochs,
        )

    async def pods(self) -> list[PodRecord]:
        rows = await self._read_all(f"SELECT {_POD_COLUMNS} FROM pods ORDER BY name")
        return [_pod(r) for r in rows]

    async def pod(self, name: str) -> PodRecord:
        rows = await self._read_all(f"SELECT {_POD_COLUMNS} FROM pods WHERE name = %s", (name,))
        if not rows:
            raise NotFound(f"no pod named {name!r}")
        return _pod(rows[0])

    async def pin(self, guild_id: int) -> dict[str, Any]:
        rows = await self._read_all(
            "SELECT guild_id, pod, kind, actor, reason, created_at FROM pins WHERE guild_id = %s",
            (str(guild_id),),
        )
        if not rows:
            raise NotFound(f"guild {guild_id} is not pinned")
        return _pin_json(rows[0])

    async def pins(
        self, pod: str | None = None, limit: int = 1000, after: int = 0
    ) -> list[dict[str, Any]]:
        sql = "SELECT guild_id, pod, kind, actor, reason, created_at FROM pins"
        rows = await self._read_all(sql + (" WHERE pod = %s" if pod else ""), (pod,) if pod else ())
        pins = sorted((_pin_json(r) for r in rows), key=lambda p: int(p["guild_id"]))
        return [p for p in pins if int(p["guild_id"]) > after][:limit]

    async def audit(self, limit: int = 50, before: int | None = None) -> list[AuditEntry]:
        sql = "SELECT id, at, actor, action, outcome, version, detail FROM audit_log"
        params: tuple[Any, ...] = ()
        if before is not None:
            sql += " WHERE id < %s"
            params = (before,)
        rows = await self._read_all(sql + " ORDER BY id DESC LIMIT %s", (*params, limit))
        return [
            AuditEntry(int(i), at, actor, action, outcome, version, json.loads(detail))
            for i, at, actor, action, outcome, version, detail in rows
        ]

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

    async def register_pod(
        self, name: str, url: str | None, weight: float | None, actor: str
    ) -> int:
        """Add a pod, or refresh its URL/weight and mark it online. Idempotent."""
        _check_pod_name(name)
        if weight is not None and not (0 < weight <= MAX_WEIGHT):
            raise Invalid(f"weight must be in (0, {MAX_WEIGHT:g}], got {weight}")

        async def apply(tx: Tx) -> bool:
            now = time.time()
            row = await tx.fetchone("SELECT url, weight, online FROM pods WHERE name = %s", (name,))
            if row is None:
                await tx.execute(
                    f"INSERT INTO pods ({_POD_COLUMNS}) VALUES (%s, %s, %s, 'active', %s, %s, %s, NULL)",
                    (name, url, weight or 1.0, True, now, now),
                )
                return True
            new_weight = row[1] if weight is None else weight
            await tx.execute(
                "UPDATE pods SET url = %s, weight = %s, online = %s, last_heartbeat = %s WHERE name = %s",
                (url, new_weight, True, now, name),
            )
            return (row[0], float(row[1]), bool(row[2])) != (url, float(new_weight), True)

        return await self._change(
            "pod.register", actor, {"pod": name, "url": url, "weight": weight}, apply
        )

    async def heartbeat(self, name: str, load: dict[str, Any] | None = None) -> tuple[str, int]:
        """Record liveness (and load); brings an offline pod back online. Returns (state, version)."""
        try:
            async with self.db.transaction() as tx:
                row = await tx.fetchone("SELECT online, state FROM pods WHERE name = %s", (name,))
                if row is None:
                    raise NotFound(f"no pod named {name!r}: register it first")
                await tx.execute(
                    "UPDATE pods SET last_heartbeat = %s, load = %s WHERE name = %s",
                    (time.time(), json.dumps(load) if load is not None else None, name),
                )
                version_row = await tx.fetchone("SELECT version FROM ring_state WHERE id = 1")
        except DatabaseUnavailable as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from None
        online, state = bool(row[0]), row[1]
        version = int(version_row[0]) if version_row else 0
        if not online:

            async def apply(tx: Tx) -> bool:
                return (
                    await tx.execute(
                        "UPDATE pods SET online = %s WHERE name = %s AND online = %s",
                        (True, name, False),
                    )
                    > 0
                )

            version = await self._change("pod.online", f"pod:{name}", {"pod": name}, apply)
        return state, version

    async def mark_offline(self, timeout: float) -> list[str]:
        """Mark pods offline that missed ``timeout`` seconds of heartbeats *while the
        database was reachable*: heartbeats that failed because the database was down
        are not the pod's fault. Nothing is marked within ``timeout`` seconds of the end
        of an outage (or of this process's start), so every pod gets a full period to
        heartbeat again before it is judged."""
        stale: list[str] = []
        health = self.db.health

        async def apply(tx: Tx) -> bool:
            now = time.time()
            if now - health.restored_at < timeout:
                return False
            rows = await tx.fetchall(
                "SELECT name, last_heartbeat FROM pods WHERE online = %s AND (last_heartbeat IS NULL OR last_heartbeat < %s)",
                (True, now - timeout),
            )
            for name, beat in rows:
                since = health.started if beat is None else max(float(beat), health.started)
                if now - since - health.unreachable_between(since, now) >= timeout:
                    stale.append(name)
            for name in stale:
                await tx.execute("UPDATE pods SET online = %s WHERE name = %s", (False, name))
            return bool(stale)

        await self._change("pod.offline", "control-plane", {"timeout": timeout}, apply)
        return stale

    async def set_pod_state(
        self, name: str, state: str, actor: str, expected_version: int | None = None
    ) -> int:
        if state not in ("active", "draining"):
            raise Invalid(f"pod state must be active or draining, got {state!r}")

        async def apply(tx: Tx) -> bool:
            row = await tx.fetchone("SELECT state FROM pods WHERE name = %s", (name,))
            if row is None:
                raise NotFound(f"no pod named {name!r}")
            if row[0] == state:
                return False
            await tx.execute("UPDATE pods SET state = %s WHERE name = %s", (state, name))
            return True

        action = "pod.drain" if state == "draining" else "pod.activate"
        return await self._change(action, actor, {"pod": name}, apply, expected_version)

    async def remove_pod(self, name: str, actor: str, expected_version: int | None = None) -> int:
        async def apply(tx: Tx) -> bool:
            if await tx.fetchone("SELECT 1 FROM pods WHERE name = %s", (name,)) is None:
                raise NotFound(f"no pod named {name!r}")
            pinned = await tx.fetchone(
                "SELECT (SELECT count(*) FROM pins WHERE pod = %s) + (SELECT count(*) FROM shard_pins WHERE pod = %s)",
                (name, name),
            )
            if pinned and pinned[0]:
                raise Conflict(
                    f"pod {name!r} still has {pinned[0]} pin(s): move them before removing it"
                )
            await tx.execute("DELETE FROM pods WHERE name = %s", (name,))
            return True

        return await self._change("pod.remove", actor, {"pod": name}, apply, expected_version)

    async def set_pins(
        self,
        pins: Iterable[tuple[int, str, str]],
        unpins: Iterable[int],
        actor: str,
        expected_version: int | None = None,
        kind: str = "hard",
    ) -> int:
        """Set ``(guild_id, pod, reason)`` pins and remove others, all or nothing."""
        pins = list(pins)
        unpins = list(unpins)
        for _, _, reason in pins:
            if len(reason) > MAX_REASON:
                raise Invalid(f"reason is longer than {MAX_REASON} characters")
        both = {g for g, _, _ in pins} & set(unpins)
        if both:
            raise Invalid(f"guild {min(both)} is both pinned and unpinned in one request")

        async def apply(tx: Tx) -> bool:
            targets = {pod for _, pod, _ in pins}
            for pod in sorted(targets):
                row = await tx.fetchone("SELECT state, online FROM pods WHERE name = %s", (pod,))
                if row is None:
                    raise NotFound(f"cannot pin to unknown pod {pod!r}")
                if not row[1]:
                    raise Conflict(f"cannot pin to pod {pod!r}: it is offline")
                if row[0] == "draining":
                    raise Conflict(f"cannot pin to pod {pod!r}: it is draining")
            changed = False
            now = time.time()
            for gid, pod, reason in pins:
                row = await tx.fetchone("SELECT pod FROM pins WHERE guild_id = %s", (str(gid),))
                if row is not None and row[0] == pod:
                    continue
                await tx.execute("DELETE FROM pins WHERE guild_id = %s", (str(gid),))
                await tx.execute(
                    "INSERT INTO pins (guild_id, pod, kind, actor, reason, created_at) VALUES (%s, %s, %s, %s, %s, %s)",
                    (str(gid), pod, kind, actor, reason, now),
                )
                changed = True
            for gid in unpins:
                if await tx.execute("DELETE FROM pins WHERE guild_id = %s", (str(gid),)) == 0:
                    if len(unpins) == 1 and not pins:
                        raise NotFound(f"guild {gid} is not pinned")
                else:
                    changed = True
            return changed

        detail: dict[str, Any] = {}
        if len(pins) == 1 and not unpins:
            action = "pin.set"
            detail = {"guild_id": str(pins[0][0]), "pod": pins[0][1], "reason": pins[0][2]}
        elif len(unpins) == 1 and not pins:
            action = "pin.delete"
            detail = {"guild_id": str(unpins[0])}
        else:
            action = "pin.bulk"
            detail = {"set": len(pins), "delete": len(unpins)}
        if expected_version is not None:
            detail["expected_version"] = expected_version
        return await self._change(action, actor, detail, apply, expected_version)

    async def set_ring(
        self,
        shard_count: int | None,
        algorithm: str,
        actor: str,
        expected_version: int | None = None,
    ) -> int:
        if shard_count is not None and not 1 <= shard_count <= MAX_SHARD_COUNT:
            raise Invalid(f"shard_count must be 1..{MAX_SHARD_COUNT} or null, got {shard_count}")
        if algorithm not in {a.value for a in Algorithm}:
            raise Invalid(f"unknown algorithm {algorithm!r}")

        async def apply(tx: Tx) -> bool:
            row = await tx.fetchone("SELECT shard_count, algorithm FROM ring_state WHERE id = 1")
            if row is not None and (row[0], row[1]) == (shard_count, algorithm):
                return False
            high = await tx.fetchone("SELECT max(shard) FROM shard_pins")
            if high and high[0] is not None and (shard_count is None or high[0] >= shard_count):
                raise Conflict("shard pins would not fit the new shard count: remove them first")
            await tx.execute(
                "UPDATE ring_state SET shard_count = %s, algorithm = %s WHERE id = 1",
                (shard_count, algorithm),
            )
            return True

        detail = {"shard_count": shard_count, "algorithm": algorithm}
        return await self._change("ring.set", actor, detail, apply, expected_version)

    async def initialize_ring(self, shard_count: int | None, algorithm: str = "slots") -> None:
        """Set ring settings on a brand-new store (version 0); later starts leave them alone."""
        if await self.version() == 0:
            await self.set_ring(shard_count, algorithm, "control-plane", expected_version=0)


OPEN_MIGRATION = "state NOT IN ('done', 'rolled_back', 'cancelled')"
_MIGRATION_COLUMNS = (
    "id, plan_id, guild_id, shard, source, target, state, epoch, created_at, updated_at, detail"
)


def _migration(row: tuple[Any, ...]) -> dict[str, Any]:
    mid, plan, guild, shard, source, target, state, epoch, created, updated, detail = row
    return {
        "id": int(mid),
        "plan_id": plan,
        "guild_id": guild,
        "shard": shard,
        "source": source,
        "target": target,
        "state": state,
        "epoch": int(epoch),
        "created_at": created,
        "updated_at": updated,
        "detail": json.loads(detail),
    }


class MigrationStore:
    """Migrations and plans: the rebalancing state machine's durable half."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def start(
        self, guild_id: int, source: str, target: str, actor: str, plan_id: str | None = None
    ) -> dict[str, Any]:
        if source == target:
            raise Invalid(f"guild {guild_id} is already on {target}")
        created: dict[str, Any] = {}

        async def apply(tx: Tx) -> bool:
            row = await tx.fetchone("SELECT state, online FROM pods WHERE name = %s", (target,))
            if row is None:
                raise NotFound(f"cannot migrate to unknown pod {target!r}")
            if row[0] != "active" or not row[1]:
                raise Conflict(
                    f"cannot migrate to pod {target!r}: it is {'draining' if row[1] else 'offline'}"
                )
            if await tx.fetchone(
                f"SELECT id FROM migrations WHERE guild_id = %s AND {OPEN_MIGRATION}",
                (str(guild_id),),
            ):
                raise Conflict(f"guild {guild_id} is already migrating")
            epoch_row = await tx.fetchone(
                "SELECT epoch FROM guild_epochs WHERE guild_id = %s", (str(guild_id),)
            )
            epoch = (int(epoch_row[0]) if epoch_row else 0) + 1
            now = time.time()
            await tx.execute(
                "INSERT INTO migrations (plan_id, guild_id, shard, source, target, state, epoch, created_at, updated_at, detail)"
                " VALUES (%s, %s, NULL, %s, %s, 'prepared', %s, %s, %s, '{}')",
                (plan_id, str(guild_id), source, target, epoch, now, now),
            )
            found = await tx.fetchone(
                f"SELECT {_MIGRATION_COLUMNS} FROM migrations WHERE guild_id = %s AND {OPEN_MIGRATION}",
                (str(guild_id),),
            )
            assert found is not None
            created.update(_migration(found))
            return True

        detail = {"guild_id": str(guild_id), "from": source, "to": target, "plan": plan_id}
        created["version"] = await self.store._change(
            "migration.start", actor, detail, apply, plan_id=plan_id
        )
        return created

    async def get(self, migration_id: int) -> dict[str, Any]:
        rows = await self.store._read_all(
            f"SELECT {_MIGRATION_COLUMNS} FROM migrations WHERE id = %s", (migration_id,)
        )
        if not rows:
            raise NotFound(f"no migration {migration_id}")
        return _migration(rows[0])

    async def list(
        self, *, open_only: bool = False, plan_id: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        where, params = [], []
        if open_only:
            where.append(OPEN_MIGRATION)
        if plan_id:
            where.append("plan_id = %s")
            params.append(plan_id)
        sql = f"SELECT {_MIGRATION_COLUMNS} FROM migrations" + (
            f" WHERE {' AND '.join(where)}" if where else ""
        )
        rows = await self.store._read_all(sql + " ORDER BY id DESC LIMIT %s", (*params, limit))
        return [_migration(r) for r in rows]

    async def set_state(self, migration_id: int, state: str, **detail: Any) -> None:
        try:
            async with self.store.db.transaction() as tx:
                row = await tx.fetchone(
                    "SELECT detail FROM migrations WHERE id = %s", (migration_id,)
                )
                merged = {**(json.loads(row[0]) if row else {}), **detail}
                await tx.execute(
                    "UPDATE migrations SET state = %s, updated_at = %s, detail = %s WHERE id = %s",
                    (state, time.time(), json.dumps(merged), migration_id),
                )
        except DatabaseUnavailable as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from None

    async def flip(self, migration_id: int, actor: str) -> int:
        """The routing flip: the guild is pinned to its target with the new epoch."""
        migration = await self.get(migration_id)

        async def apply(tx: Tx) -> bool:
            gid, target = migration["guild_id"], migration["target"]
            row = await tx.fetchone("SELECT kind FROM pins WHERE guild_id = %s", (gid,))
            kind = row[0] if row else "soft"
            await tx.execute("DELETE FROM pins WHERE guild_id = %s", (gid,))
            await tx.execute(
                "INSERT INTO pins (guild_id, pod, kind, actor, reason, created_at) VALUES (%s, %s, %s, %s, %s, %s)",
                (gid, target, kind, actor, f"migration {migration_id}", time.time()),
            )
            await tx.execute("DELETE FROM guild_epochs WHERE guild_id = %s", (gid,))
            await tx.execute(
                "INSERT INTO guild_epochs (guild_id, epoch) VALUES (%s, %s)",
                (gid, migration["epoch"]),
            )
            await tx.execute(
                "UPDATE migrations SET state = 'flipped', updated_at = %s WHERE id = %s",
                (time.time(), migration_id),
            )
            return True

        return await self.store._change(
            "migration.flip",
            actor,
            {
                "migration": migration_id,
                "guild_id": migration["guild_id"],
                "to": migration["target"],
            },
            apply,
            plan_id=migration["plan_id"],
        )

    async def close(self, migration_id: int, state: str, actor: str, **detail: Any) -> int:
        await self.set_state(migration_id, state, **detail)
        plan_id = (await self.get(migration_id))["plan_id"]

        async def apply(tx: Tx) -> bool:
            return True  # the new version drops the guild from the table's migrating set

        return await self.store._change(
            f"migration.{state}",
            actor,
            {"migration": migration_id, **detail},
            apply,
            plan_id=plan_id,
        )

    async def set_shard_pin(
        self,
        shard: int,
        pod: str,
        unpin_guilds: builtins.list[int],
        actor: str,
        plan_id: str | None = None,
    ) -> int:
        """A shard move's last step: the shard is assigned to ``pod`` and the guild pins
        that carried its guilds over become redundant."""

        async def apply(tx: Tx) -> bool:
            await tx.execute("DELETE FROM shard_pins WHERE shard = %s", (shard,))
            await tx.execute(
                "INSERT INTO shard_pins (shard, pod, kind, actor, reason, created_at) VALUES (%s, %s, 'soft', %s, 'rebalance', %s)",
                (shard, pod, actor, time.time()),
            )
            for gid in unpin_guilds:
                await tx.execute(
                    "DELETE FROM pins WHERE guild_id = %s AND pod = %s AND kind = 'soft'",
                    (str(gid), pod),
                )
            return True

        return await self.store._change(
            "shard.assign",
            actor,
            {"shard": shard, "pod": pod, "guilds": len(unpin_guilds)},
            apply,
            plan_id=plan_id,
        )

    async def hold_shards(self, assignment: dict[int, str], actor: str) -> int:
        """Pin shards where they are (before a drain or a new pod moves the ring)."""

        async def apply(tx: Tx) -> bool:
            for shard, pod in assignment.items():
                if await tx.fetchone("SELECT 1 FROM shard_pins WHERE shard = %s", (shard,)) is None:
                    await tx.execute(
                        "INSERT INTO shard_pins (shard, pod, kind, actor, reason, created_at) VALUES (%s, %s, 'soft', %s, 'hold', %s)",
                        (shard, pod, actor, time.time()),
                    )
            return bool(assignment)

        return await self.store._change("shard.hold", actor, {"shards": len(assignment)}, apply)

    async def spread_shards(self, pins: dict[int, str], actor: str, expected_version: int) -> int:
        """On a cluster that holds no data: replace every shard pin with ``pins`` (the
        shards whose even share differs from the ring's answer), in one version. Only the
        caller knows there is no data; ``expected_version`` makes a stale view a Conflict."""

        async def apply(tx: Tx) -> bool:
            await tx.execute("DELETE FROM shard_pins")
            for shard, pod in sorted(pins.items()):
                await tx.execute(
                    "INSERT INTO shard_pins (shard, pod, kind, actor, reason, created_at) VALUES (%s, %s, 'soft', %s, 'spread', %s)",
                    (shard, pod, actor, time.time()),
                )
            return True

        return await self.store._change(
            "shard.spread", actor, {"pinned": len(pins)}, apply, expected_version
        )

    async def drain_pod(
        self,
        pod: str,
        shards: dict[int, str],
        guilds: builtins.list[int],
        actor: str,
        expected_version: int,
    ) -> int:
        """``pod`` becomes draining in the same version that pins ``shards`` where they
        are and soft-pins ``guilds`` (the ones it holds on a guild-keyed ring) to it: no
        new ring placement for it, but nothing it holds moves until a plan moves the data."""

        async def apply(tx: Tx) -> bool:
            row = await tx.fetchone("SELECT state FROM pods WHERE name = %s", (pod,))
            if row is None:
                raise NotFound(f"no pod named {pod!r}")
            if row[0] == "draining":
                return False
            now = time.time()
            for shard, owner in shards.items():
                if await tx.fetchone("SELECT 1 FROM shard_pins WHERE shard = %s", (shard,)) is None:
                    await tx.execute(
                        "INSERT INTO shard_pins (shard, pod, kind, actor, reason, created_at) VALUES (%s, %s, 'soft', %s, 'hold', %s)",
                        (shard, owner, actor, now),
                    )
            for gid in guilds:
                if await tx.fetchone("SELECT 1 FROM pins WHERE guild_id = %s", (str(gid),)) is None:
                    await tx.execute(
                        "INSERT INTO pins (guild_id, pod, kind, actor, reason, created_at) VALUES (%s, %s, 'soft', %s, 'drain hold', %s)",
                        (str(gid), pod, actor, now),
                    )
            await tx.execute("UPDATE pods SET state = 'draining' WHERE name = %s", (pod,))
            return True

        detail = {"pod": pod, "held_shards": len(shards), "held_guilds": len(guilds)}
        return await self.store._change("pod.drain", actor, detail, apply, expected_version)

    async def pin_to_holder(self, guild_id: int, holder: str, actor: str, plan_id: str) -> int:
        """A repair's first step: route a guild to the pod that holds its rows (its owner
        holds none), so a normal migration can then carry the rows to the owner. The pin's
        kind is kept: the migration's flip re-points it at the owner."""

        async def apply(tx: Tx) -> bool:
            row = await tx.fetchone("SELECT kind FROM pins WHERE guild_id = %s", (str(guild_id),))
            await tx.execute("DELETE FROM pins WHERE guild_id = %s", (str(guild_id),))
            await tx.execute(
                "INSERT INTO pins (guild_id, pod, kind, actor, reason, created_at) VALUES (%s, %s, %s, %s, 'repair', %s)",
                (str(guild_id), holder, row[0] if row else "soft", actor, time.time()),
            )
            return True

        detail = {"guild_id": str(guild_id), "pod": holder}
        return await self.store._change("pin.repair", actor, detail, apply, plan_id=plan_id)

    # -- plans ----------------------------------------------------------------------------------

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

    async def plan(self, plan_id: str) -> dict[str, Any]:
        rows = await self.store._read_all(
            "SELECT id, created_at, base_version, state, actor, body FROM plans WHERE id = %s",
            (plan_id,),
        )
        if not rows:
            raise NotFound(f"no plan {plan_id!r}")
        pid, created, base, state, actor, body = rows[0]
        return {
            "id": pid,
            "created_at": created,
            "base_version": int(base),
            "state": state,
            "actor": actor,
            "plan": json.loads(body),
        }

    async def plans(self, limit: int = 20) -> builtins.list[dict[str, Any]]:
        rows = await self.store._read_all(
            "SELECT id FROM plans ORDER BY created_at DESC LIMIT %s", (limit,)
        )
        return [await self.plan(r[0]) for r in rows]

    async def plans_in_state(
        self, states: tuple[str, ...], *, actor: str | None = None, since: float = 0.0
    ) -> builtins.list[dict[str, Any]]:
        marks = ", ".join(["%s"] * len(states))
        sql = f"SELECT id FROM plans WHERE state IN ({marks}) AND created_at >= %s"
        params: list[Any] = [*states, since]
        if actor is not None:
            sql += " AND actor = %s"
            params.append(actor)
        rows = await self.store._read_all(sql + " ORDER BY created_at DESC", tuple(params))
        return [await self.plan(r[0]) for r in rows]

    async def foreign_changes(
        self, plan_id: str, base_version: int
    ) -> builtins.list[dict[str, Any]]:
        """Table versions after ``base_version`` that the plan's own moves did not produce:
        someone else's changes, which make the plan stale."""
        rows = await self.store._read_all(
            "SELECT version, actor, action FROM table_versions WHERE version > %s"
            " AND version NOT IN (SELECT version FROM plan_versions WHERE plan_id = %s)"
            " ORDER BY version",
            (base_version, plan_id),
        )
        return [{"version": int(v), "actor": a, "action": act} for v, a, act in rows]

    async def expire_stale_plans(self) -> builtins.list[str]:
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


def _check_pod_name(name: str) -> None:
    if not POD_NAME.match(name):
        raise Invalid(f"invalid pod name {name[:70]!r}: use lowercase letters, digits, '-' and '.'")


def _pin_json(row: tuple[Any, ...]) -> dict[str, Any]:
    guild_id, pod, kind, actor, reason, created_at = row
    return {
        "guild_id": guild_id,
        "pod": pod,
        "kind": kind,
        "actor": actor,
        "reason": reason,
        "created_at": created_at,
    }


def _only_comments(statement: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in statement.splitlines())
