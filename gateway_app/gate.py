"""Per-guild decision for every gateway event: write it, hold it, or drop it.

* **hold** while the guild is frozen here (this pod is a migration's source) or is
  migrating *to* this pod and has not been replayed yet (the target listens from before
  the freeze). Held events go to ``held_events``, keyed by event identity, so the source's
  and the target's buffers can be merged without doubles.
* **write** when the routing table says this pod owns the guild.
* **drop** otherwise: another pod owns it (several sessions may see a shard's events).

While a replay runs, the guild's new events wait in memory and are handled right after,
so none slips between "read the held events" and "start writing live".

**Change tracking** (a migration's source, from its pre-copy to its freeze): the ids of
the messages written or deleted since the pre-copy are remembered, so the delta exported
inside the freeze is the rows changed since the copy, whatever the guild's size or the
age of its messages. In memory on purpose: it is an optimisation, never a source of
truth. A restarted pod has no tracker for the token it is asked about, and a tracker that
grew past ``MAX_TRACKED`` ids is dropped: the export then falls back to every row.
"""

from __future__ import annotations

import itertools
import uuid

from .bot import LoadMeter
from .events import GatewayEvent, MessageCreated, MessageDeleted
from .ownership import Ownership
from .storage import GuildStore

MAX_TRACKED = 50_000  # ids per guild (a few MB at most, even if a rollback leaves it behind)
TRACKED_KINDS = (MessageCreated, MessageDeleted)  # the events that change message_stats rows


class GuildGate:
    def __init__(self, ownership: Ownership, store: GuildStore, load: LoadMeter) -> None:
        self.ownership = ownership
        self.owns = ownership.owns  # bound once: called for every gateway event
        self.store = store
        self.load = load
        self.fences: dict[int, tuple[int, str]] = {}
        self._replaying: dict[int, list[GatewayEvent]] = {}
        self.counts = {"written": 0, "held": 0, "dropped": 0}
        # guild -> (token, ids of messages written or deleted since the tracker started)
        self._tracked: dict[int, tuple[str, set[int]]] = {}
        self._boot = uuid.uuid4().hex[:12]  # a token from before a restart matches nothing
        self._serial = itertools.count(1)

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
        return state != "released" and self.ownership.migrating_here(guild_id)

    def handle(self, guild_id: int, event: GatewayEvent) -> str:
        queue = self._replaying.get(guild_id)
        if queue is not None:
            queue.append(event)
            return "queued"
        if self.holding(guild_id):
            self.store.hold_event(guild_id, event.key, event)
            outcome = "held"
        elif self.owns(guild_id):
            self.store.apply_event(guild_id, event)
            self.load.record(guild_id)
            outcome = "written"
            tracked = self._tracked.get(guild_id)
            if tracked is not None and isinstance(event, TRACKED_KINDS):
                tracked[1].add(event.message_id)
                if len(tracked[1]) > MAX_TRACKED:
                    del self._tracked[guild_id]
        else:
            outcome = "dropped"
        self.counts[outcome] += 1
        return outcome

    def track(self, guild_id: int) -> str:
        """Start remembering the guild's changed messages; call it *before* the pre-copy
        export flushes and reads, so every write is either in the copy or tracked."""
        token = f"{self._boot}-{next(self._serial)}"
        self._tracked[guild_id] = (token, set())
        return token

    def changes(self, guild_id: int, token: str) -> set[int] | None:
        """Ids changed since the tracker ``token`` started, or None if it is not known
        here (restarted, superseded, or grown too big): then only a full export is safe."""
        tracked = self._tracked.get(guild_id)
        if tracked is None or tracked[0] != token:
            return None
        return set(tracked[1])

    def untrack(self, guild_id: int) -> None:
        self._tracked.pop(guild_id, None)

    def note_written(self, guild_id: int, message_ids: list[int]) -> None:
        """Message rows written outside :meth:`handle` (import-monolith chunks): tracked like
        live writes, so a migration's delta carries them."""
        tracked = self._tracked.get(guild_id)
        if tracked is not None:
            tracked[1].update(message_ids)
            if len(tracked[1]) > MAX_TRACKED:
                del self._tracked[guild_id]

    async def set_fence(self, guild_id: int, epoch: int, state: str) -> None:
        await self.store.set_fence(guild_id, epoch, state)
        self.fences[guild_id] = (epoch, state)

    async def replay(
        self, guild_id: int, events: list[tuple[str, GatewayEvent]], epoch: int, state: str
    ) -> int:
        """Apply held events (theirs and ours) then resume live handling, losing nothing."""
        self._replaying[guild_id] = []
        try:
            applied = await self.store.replay(guild_id, events, epoch, state)
            self.fences[guild_id] = (epoch, state)
        finally:
            waiting = self._replaying.pop(guild_id)
        for event in waiting:
            self.handle(guild_id, event)
        return applied
