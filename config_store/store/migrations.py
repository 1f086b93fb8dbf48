"""Migrations: one guild moved between pods, the durable half of the move state machine
(``config_store/moves.py`` drives it). ``MigrationStore`` is what the migrator holds: the
migrations here, plus the plans and the pin changes the migrator makes."""

from __future__ import annotations

import json
import time
from typing import Any

from ..db import DatabaseUnavailable, Tx
from ..errors import Conflict, Invalid, NotFound, StoreUnavailable
from .pins import PlacementPins
from .plans import Plans
from .records import MIGRATION_COLUMNS, MigrationRecord, StartedMigration

__all__ = ["OPEN_MIGRATION", "MigrationRecord", "MigrationStore", "StartedMigration"]

OPEN_MIGRATION = "state NOT IN ('done', 'rolled_back', 'cancelled')"


class MigrationStore(Plans, PlacementPins):
    """Migrations and plans: the rebalancing state machine's durable half."""

    async def start(
        self, guild_id: int, source: str, target: str, actor: str, plan_id: str | None = None
    ) -> StartedMigration:
        if source == target:
            raise Invalid(f"guild {guild_id} is already on {target}")
        created: list[MigrationRecord] = []

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
                f"SELECT {MIGRATION_COLUMNS} FROM migrations WHERE guild_id = %s AND {OPEN_MIGRATION}",
                (str(guild_id),),
            )
            assert found is not None
            created.append(MigrationRecord.from_row(found))
            return True

        detail = {"guild_id": str(guild_id), "from": source, "to": target, "plan": plan_id}
        version = await self.store._change("migration.start", actor, detail, apply, plan_id=plan_id)
        return created[0].started(version)

    async def get(self, migration_id: int) -> MigrationRecord:
        rows = await self.store._read_all(
            f"SELECT {MIGRATION_COLUMNS} FROM migrations WHERE id = %s", (migration_id,)
        )
        if not rows:
            raise NotFound(f"no migration {migration_id}")
        return MigrationRecord.from_row(rows[0])

    async def list(
        self, *, open_only: bool = False, plan_id: str | None = None, limit: int = 200
    ) -> list[MigrationRecord]:
        where, params = [], []
        if open_only:
            where.append(OPEN_MIGRATION)
        if plan_id:
            where.append("plan_id = %s")
            params.append(plan_id)
        sql = f"SELECT {MIGRATION_COLUMNS} FROM migrations" + (
            f" WHERE {' AND '.join(where)}" if where else ""
        )
        rows = await self.store._read_all(sql + " ORDER BY id DESC LIMIT %s", (*params, limit))
        return [MigrationRecord.from_row(r) for r in rows]

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
            gid, target = migration.guild_id, migration.target
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
                (gid, migration.epoch),
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
                "guild_id": migration.guild_id,
                "to": migration.target,
            },
            apply,
            plan_id=migration.plan_id,
        )

    async def close(self, migration_id: int, state: str, actor: str, **detail: Any) -> int:
        await self.set_state(migration_id, state, **detail)
        plan_id = (await self.get(migration_id)).plan_id

        async def apply(tx: Tx) -> bool:
            return True  # the new version drops the guild from the table's migrating set

        return await self.store._change(
            f"migration.{state}",
            actor,
            {"migration": migration_id, **detail},
            apply,
            plan_id=plan_id,
        )
