"""Pins: a guild (or a shard) routed to a named pod instead of where the ring puts it.

``PinsMixin`` is the operator's guild pins on ``Store``; ``PlacementPins`` is the pin
changes the migrator's parts make (a shard move's last step, holding shards before a
drain or a join, spreading shards on an empty cluster, a repair's first step), each one
version of its own."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ..db import Tx
from ..errors import Conflict, Invalid, NotFound
from .core import StoreCore, StorePart
from .records import PinRecord

__all__ = ["MAX_REASON", "PinRecord", "PinsMixin", "PlacementPins"]

MAX_REASON = 500


class PinsMixin(StoreCore):
    """The store's guild pin operations."""

    async def pin(self, guild_id: int) -> PinRecord:
        rows = await self._read_all(
            "SELECT guild_id, pod, kind, actor, reason, created_at FROM pins WHERE guild_id = %s",
            (str(guild_id),),
        )
        if not rows:
            raise NotFound(f"guild {guild_id} is not pinned")
        return PinRecord.from_row(rows[0])

    async def pins(
        self, pod: str | None = None, limit: int = 1000, after: int = 0
    ) -> list[PinRecord]:
        """Pins (of ``pod``), in guild id order, ``limit`` of them after guild ``after``."""
        sql = "SELECT guild_id, pod, kind, actor, reason, created_at FROM pins"
        rows = await self._read_all(sql + (" WHERE pod = %s" if pod else ""), (pod,) if pod else ())
        pins = sorted((PinRecord.from_row(r) for r in rows), key=lambda p: int(p.guild_id))
        return [p for p in pins if int(p.guild_id) > after][:limit]

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


class PlacementPins(StorePart):
    """Pin changes that move no rows, made by the migrator (``MigrationStore`` has them)."""

    async def set_shard_pin(
        self,
        shard: int,
        pod: str,
        unpin_guilds: list[int],
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
        guilds: list[int],
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
