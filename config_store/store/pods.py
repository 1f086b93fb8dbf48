"""Pods: registration, heartbeats (liveness), the operator's intent (active or draining)
and removal. A pod's row is what the ring is built from, so every change here that the
ring sees is a version."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from modbot_ring import MAX_WEIGHT

from ..db import DatabaseUnavailable, Tx
from ..errors import Conflict, Invalid, NotFound, StoreUnavailable
from .core import StoreCore
from .records import POD_COLUMNS, PodRecord

__all__ = ["POD_NAME", "PodsMixin"]

POD_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")


class PodsMixin(StoreCore):
    """The store's pod operations."""

    async def pods(self) -> list[PodRecord]:
        rows = await self._read_all(f"SELECT {POD_COLUMNS} FROM pods ORDER BY name")
        return [PodRecord.from_row(r) for r in rows]

    async def pod(self, name: str) -> PodRecord:
        rows = await self._read_all(f"SELECT {POD_COLUMNS} FROM pods WHERE name = %s", (name,))
        if not rows:
            raise NotFound(f"no pod named {name!r}")
        return PodRecord.from_row(rows[0])

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
                    f"INSERT INTO pods ({POD_COLUMNS}) VALUES (%s, %s, %s, 'active', %s, %s, %s, NULL)",
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


def _check_pod_name(name: str) -> None:
    if not POD_NAME.match(name):
        raise Invalid(f"invalid pod name {name[:70]!r}: use lowercase letters, digits, '-' and '.'")
