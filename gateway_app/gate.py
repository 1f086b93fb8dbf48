"""Per-guild decision for every gateway event: write it, hold it, or drop it.

* **hold** while the guild is frozen here (this pod is a migration's source) or is
  migrating *to* this pod and has not been replayed yet (the target listens from before
  the freeze). Held events go to ``held_events``, keyed by event identity, so the source's
  and the target's buffers can be merged without doubles.
* **write** when the routing table says this pod owns the guild.
* **drop** otherwise: another pod owns it (several sessions may see a shard's events).

While a replay runs, the guild's new events wait in memory and are handled right after,
so none slips between "read the held events" and "start writing live".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from config_store.client.table_client import RoutingTableClient

from .bot import LoadMeter
from .storage import GuildStore

Owns = Callable[[int], bool]


class GuildGate:
    def __init__(
        self, pod: str, tables: RoutingTableClient, store: GuildStore, owns: Owns, load: LoadMeter
    ) -> None:
        self.pod = pod
        self.tables = tables
        self.store = store
        self.owns = owns
        self.load = load
        self.fences: dict[int, tuple[int, str]] = {}
        self._replaying: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        self.counts = {"written": 0, "held": 0, "dropped": 0}

    async def load_fences(self) -> None:
        self.fences = await self.store.fences()

    def epoch(self, guild_id: int) -> int:
        return self.fences.get(guild_id, (0, "normal"))[0]

    def state(self, guild_id: int) -> str:
        return self.fences.get(guild_id, (0, "normal"))[1]

    def holding(self, guild_id: int) -> bool:
        state = self.state(guild_id)
        if state == "frozen":
            return True
        table = self.tables.table
        return (
            state != "released" and table is not None and table.migrating.get(guild_id) == self.pod
        )

    def handle(self, guild_id: int, key: str, event: dict[str, Any]) -> str:
        queue = self._replaying.get(guild_id)
        if queue is not None:
            queue.append((key, event))
            return "queued"
        if self.holding(guild_id):
            self.store.hold_event(guild_id, key, event)
            outcome = "held"
        elif self.owns(guild_id):
            self.store.apply_event(guild_id, event)
            self.load.record(guild_id)
            outcome = "written"
        else:
            outcome = "dropped"
        self.counts[outcome] += 1
        return outcome

    async def set_fence(self, guild_id: int, epoch: int, state: str) -> None:
        await self.store.set_fence(guild_id, epoch, state)
        self.fences[guild_id] = (epoch, state)

    async def replay(
        self, guild_id: int, events: list[tuple[str, dict[str, Any]]], epoch: int, state: str
    ) -> int:
        """Apply held events (theirs and ours) then resume live handling, losing nothing."""
        self._replaying[guild_id] = []
        try:
            applied = await self.store.replay(guild_id, events, epoch, state)
            self.fences[guild_id] = (epoch, state)
        finally:
            waiting = self._replaying.pop(guild_id)
        for key, event in waiting:
            self.handle(guild_id, key, event)
        return applied
