"""Moving one guild between pods with no event, command or row lost: the state machine.

Each migration is persisted in the store and advanced one step at a time:

``prepared``  the table lists the guild as migrating to the target: the target opens the
              guild's shard and *holds* its events; the proxy defers its interactions.
``frozen``    the bulk of the rows was pre-copied while the guild ran (from then on the
              source tracks the messages it changes); the source stops writing the
              guild and holds its events too.
``imported``  the rows changed since the pre-copy (every row if the source restarted and
              lost its tracker) are exported and imported on the target in one
              transaction, verified by row counts and a checksum on both ends.
``flipped``   new table version: the guild is pinned to the target with a bumped epoch
              (the fencing token every pod call carries; older epochs are refused).
``replayed``  the target fetches the flip's table version (pushed with the call, not
              awaited from pub/sub or a poll), applies the source's and its own held
              events, deduplicated by event identity and in time order, then writes live.
              The hold window (``hold_seconds``, per step in ``timings``) ends here.
``done``      the source's buffer was replayed once more on the target (idempotent: it
              covers whatever a target killed after its replay missed), then the source
              deleted its copy; the guild leaves the migrating set.

Every step is idempotent and retried with backoff while a pod is down, so a crash of
the source, the target or the config service resumes where it stopped. ``cancel``
before the flip rolls back (the source writes what it held; the target drops its copy);
after the flip a migration always rolls forward.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

from modbot_client.pod_client import precopy_track

from .errors import Conflict, Invalid, NotFound, PodUnavailable, StoreError
from .pod_calls import PodCalls, current_table
from .publisher import TablePublisher
from .store import MigrationRecord, MigrationStore, StartedMigration

log = logging.getLogger("modbot.config.migrator")
T = TypeVar("T")


class MoveState(StrEnum):
    PREPARED = "prepared"
    FROZEN = "frozen"
    IMPORTED = "imported"
    FLIPPED = "flipped"
    REPLAYED = "replayed"
    DONE = "done"
    ABORTED = "aborted"  # rolling back: the table no longer lists the guild as migrating
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"


BEFORE_FLIP: tuple[str, ...] = (MoveState.PREPARED, MoveState.FROZEN, MoveState.IMPORTED)
FINAL: tuple[str, ...] = (MoveState.DONE, MoveState.ROLLED_BACK, MoveState.CANCELLED)


@dataclass(frozen=True)
class Migration:
    """A migration as the state machine reads it (the store's record, typed). ``detail``
    is the JSON the steps accumulate (``timings``, ``hold_seconds``, ... the benchmark and
    ``GET /v1/migrations`` read it); the properties are the parts the steps read back."""

    id: int
    guild_id: int
    source: str
    target: str
    state: str
    epoch: int
    detail: Mapping[str, Any]

    @classmethod
    def from_record(cls, record: MigrationRecord) -> Migration:
        if record.guild_id is None:
            raise Invalid(f"migration {record.id} moves no guild")
        return cls(
            id=record.id,
            guild_id=int(record.guild_id),
            source=record.source,
            target=record.target,
            state=record.state,
            epoch=record.epoch,
            detail=dict(record.detail),
        )

    def advanced(self, state: str, detail: Mapping[str, Any]) -> Migration:
        """This migration after a step recorded ``state`` (detail merged, as the store does)."""
        return replace(self, state=state, detail={**self.detail, **detail})

    @property
    def timings(self) -> dict[str, float]:
        return dict(self.detail.get("timings", {}))

    @property
    def track(self) -> str | None:
        """The source's change tracker from the pre-copy (None: export every row)."""
        value = self.detail.get("track")
        return str(value) if value else None

    @property
    def frozen_at(self) -> float | None:
        value = self.detail.get("frozen_at")
        return float(value) if value else None

    @property
    def flip_version(self) -> int | None:
        value = self.detail.get("flip_version")
        return int(value) if value else None

    @property
    def abort_version(self) -> int | None:
        value = self.detail.get("abort_version")
        return int(value) if value else None


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "%s failed; it resumes at the next start", task.get_name(), exc_info=task.exception()
        )


async def retry_store(action: Callable[[], Awaitable[T]], what: str) -> T:
    """``action`` (a store call) repeated while the store is unavailable; a refusal
    (conflict, invalid, not found) is raised at once."""
    delay = 0.1
    while True:
        try:
            return await action()
        except (Conflict, Invalid, NotFound):
            raise
        except StoreError as exc:
            log.info("retrying %s: %s", what, exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    delay = 0.05
    while not await check():
        log.debug("waiting for %s", what)
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 1.0)


class MoveMachine:
    """Drives migrations: one background task per open migration, from its stored state.

    ``precopy`` off: every row crosses inside the freeze (the benchmark's baseline).
    ``step_delay`` pauses before each step (tests cancel a migration mid-way with it)."""

    def __init__(
        self,
        migrations: MigrationStore,
        publisher: TablePublisher,
        pods: PodCalls,
        *,
        step_delay: float = 0.0,
        precopy: bool = True,
    ) -> None:
        self.migrations = migrations
        self.publisher = publisher
        self.pods = pods
        self.step_delay = step_delay
        self.precopy = precopy
        self.tasks: dict[int, asyncio.Task[str]] = {}
        self.cancelled: set[int] = set()
        self._steps: dict[str, Callable[[Migration], Awaitable[Migration | None]]] = {
            MoveState.PREPARED: self._prepared,
            MoveState.FROZEN: self._frozen,
            MoveState.IMPORTED: self._imported,
            MoveState.FLIPPED: self._flipped,
            MoveState.REPLAYED: self._replayed,
        }

    async def resume_open(self) -> None:
        """Pick up every open migration (its coordinator died with the last process)."""
        for migration in await self.migrations.list(open_only=True):
            log.info(
                "resuming migration %s of guild %s (%s)",
                migration.id,
                migration.guild_id,
                migration.state,
            )
            self.run_in_background(migration.id)

    async def begin(
        self, guild_id: int, target: str, actor: str, plan_id: str | None = None
    ) -> StartedMigration:
        """Start moving ``guild_id`` to ``target``; the store's record of the migration."""
        table = await current_table(self.publisher)
        if target not in table.pods:
            raise NotFound(f"cannot migrate to unknown pod {target!r}")
        migration = await self.migrations.start(
            guild_id, table.owner(guild_id), target, actor, plan_id
        )
        await self.publisher.refresh()
        self.run_in_background(migration.id)
        return migration

    def run_in_background(self, migration_id: int) -> asyncio.Task[str]:
        task = self.tasks.get(migration_id)
        if task is None or task.done():
            task = asyncio.create_task(self.run(migration_id), name=f"migration-{migration_id}")
            task.add_done_callback(_log_failure)
            self.tasks[migration_id] = task
        return task

    async def wait(self, migration_id: int) -> str:
        return await self.run_in_background(migration_id)

    async def cancel(self, migration_id: int) -> MigrationRecord:
        migration = await self.migrations.get(migration_id)
        if migration.state not in BEFORE_FLIP:
            raise Conflict(
                f"migration {migration_id} is {migration.state}: past the flip it can only finish"
            )
        self.cancelled.add(migration_id)
        return migration

    async def run(self, migration_id: int) -> str:
        """Drive one migration to ``done`` or ``rolled_back``; returns the final state."""
        known: Migration | None = None
        while True:
            # a step that recorded its outcome hands the record over: no re-read inside
            # the freeze (only this coordinator moves a migration between those states)
            m = known or Migration.from_record(
                await retry_store(lambda: self.migrations.get(migration_id), "read migration")
            )
            known = None
            if m.state in FINAL:
                return m.state
            if m.state == MoveState.ABORTED or (
                migration_id in self.cancelled and m.state in BEFORE_FLIP
            ):
                await self._roll_back(m)
                continue
            if self.step_delay:
                await asyncio.sleep(self.step_delay)
                if migration_id in self.cancelled and m.state in BEFORE_FLIP:
                    continue  # cancelled meanwhile: roll back rather than take the step
            step = self._steps.get(m.state)
            if step is None:
                raise Invalid(f"migration {m.id} in unknown state {m.state!r}")
            known = await step(m)

    async def _advance(self, m: Migration, state: MoveState, **detail: Any) -> Migration:
        """Record the next state (detail merged, as the store does); the record as it is now."""
        await self.migrations.set_state(m.id, state.value, **detail)
        return m.advanced(state.value, detail)

    # -- the steps: ``timings`` (seconds per sub-step inside the freeze) and ``hold_seconds``
    # go into the migration's detail: the benchmark reads them

    async def _prepared(self, m: Migration) -> Migration:
        gid, epoch, source, target = m.guild_id, m.epoch, m.source, m.target
        await until(
            lambda: self._target_listening(target, gid),
            f"target {target} to listen to guild {gid}",
        )
        marks: dict[str, Any] = {}
        if self.precopy:
            # pre-copy: the bulk of the rows moves while the guild still runs on the
            # source, which from now on tracks the messages changed since the copy
            bulk = await self.pods.call(source, lambda c: c.export(gid, "precopy"))
            copied = await self.pods.call(target, lambda c: c.import_rows(gid, epoch, bulk))
            marks = {"precopied": copied.counts.get("message_stats", 0)}
            track = await precopy_track(bulk, source)
            if track:
                marks["track"] = track
        frozen_at = time.time()
        await self.pods.call(source, lambda c: c.freeze(gid, epoch))
        return await self._advance(
            m,
            MoveState.FROZEN,
            frozen_at=frozen_at,
            timings={"freeze": round(time.time() - frozen_at, 4)},
            **marks,
        )

    async def _frozen(self, m: Migration) -> Migration:
        # only what changed since the pre-copy crosses inside the freeze (a source that
        # restarted since has lost its tracker and answers with every row instead);
        # the export's bytes go to the target as they are: no decode/re-encode here
        gid, epoch, detail, timings = m.guild_id, m.epoch, m.detail, m.timings
        track = m.track
        t0 = time.time()
        if track:
            exported = await self.pods.call(m.source, lambda c: c.export(gid, "delta", track=track))
        elif "since_id" in detail:  # a migration started before change tracking
            since_id, since_time = int(detail["since_id"]), float(detail["since_time"])
            exported = await self.pods.call(
                m.source,
                lambda c: c.export(gid, "delta", since_id=since_id, since_time=since_time),
            )
        else:
            exported = await self.pods.call(m.source, lambda c: c.export(gid, "full"))
        t1 = time.time()
        result = await self.pods.call(m.target, lambda c: c.import_rows(gid, epoch, exported))
        timings["delta_export"] = round(t1 - t0, 4)
        timings["import"] = round(time.time() - t1, 4)
        return await self._advance(
            m,
            MoveState.IMPORTED,
            timings=timings,
            delta_bytes=len(exported),
            counts=dict(result.totals),
            copied=dict(result.counts),
            checksum=result.checksum,
        )

    async def _imported(self, m: Migration) -> Migration:
        timings = m.timings
        t0 = time.time()
        version = await retry_store(lambda: self.migrations.flip(m.id, "migrator"), "flip")
        await self.publisher.refresh()
        timings["flip"] = round(time.time() - t0, 4)
        return await self._advance(m, MoveState.FLIPPED, flip_version=version, timings=timings)

    async def _flipped(self, m: Migration) -> Migration:
        gid, epoch, timings = m.guild_id, m.epoch, m.timings
        flip_version = await self._flip_version(m)
        t0 = time.time()
        held = await self.pods.call(m.source, lambda c: c.held(gid))
        t1 = time.time()
        # the flip's version travels with the replay: the target fetches that table at
        # once (no waiting for pub/sub or a poll, no polling of the target from here)
        result = await self.pods.call(m.target, lambda c: c.replay(gid, epoch, held, flip_version))
        frozen_at = m.frozen_at or time.time()
        timings["held_fetch"] = round(t1 - t0, 4)
        timings["propagation"] = result.table_wait  # inside the call
        timings["replay"] = round(time.time() - t1 - timings["propagation"], 4)
        return await self._advance(
            m,
            MoveState.REPLAYED,
            timings=timings,
            replayed=result.applied,
            hold_seconds=round(time.time() - frozen_at, 4),
        )

    async def _replayed(self, m: Migration) -> None:
        gid, epoch, source, target = m.guild_id, m.epoch, m.source, m.target
        flip_version = await self._flip_version(m)
        # Catch-up before the source's copy goes: the source has held every event of
        # the guild since its freeze. If the target lost some after its replay (killed:
        # its last batch, its downtime, the time until its shard was back), they are
        # in that buffer. Once the target listens again, replaying the buffer once more
        # is idempotent (message ids, dedup keys), and only then is it deleted.
        # A target that goes away during the catch-up misses what the source holds after the
        # fetch: its replay is not retried with that stale buffer (the source would then
        # drop the rest), the buffer is fetched again once the target listens again.
        delay = 0.1
        while True:
            await until(
                lambda: self._target_has_shard(target, gid), f"target {target} to listen again"
            )
            held = await self.pods.call(source, lambda c: c.held(gid))
            try:
                client = await self.pods.client(target)
                await client.replay(gid, epoch, held, flip_version)
            except PodUnavailable as exc:
                log.info("catching guild %s up on %s again: %s", gid, target, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            break
        await until(
            lambda: self._pod_has_version(source, flip_version),
            f"{source} to see table v{flip_version}",
        )
        await self.pods.call(source, lambda c: c.drop(gid, epoch))
        await retry_store(lambda: self.migrations.close(m.id, "done", "migrator"), "close")
        await self.publisher.refresh()
        log.info("migration %s done: guild %s %s -> %s", m.id, gid, source, target)

    async def _flip_version(self, m: Migration) -> int:
        """The table version of the flip; if the coordinator died between the flip and
        recording it, the current version (newer, and it includes the flip)."""
        return m.flip_version or (await current_table(self.publisher)).version

    async def _roll_back(self, m: Migration) -> None:
        """Undo a migration that has not flipped, in two resumable halves.

        ``aborted`` (a new table version): the guild is no longer migrating, so the target
        stops holding its events. Only once the target has seen that version is its copy
        deleted (nothing can land after the delete), and only then is the migration
        ``rolled_back``: whoever sees that state sees a clean target."""
        gid, epoch, target = m.guild_id, m.epoch, m.target
        version = m.abort_version
        if m.state != MoveState.ABORTED:
            # ``prepared`` too: a coordinator that died between freezing the source and
            # recording ``frozen`` left it frozen (unfreezing a live guild is a no-op, and
            # it drops the pre-copy's change tracker)
            await self.pods.call(m.source, lambda c: c.unfreeze(gid, epoch))
            version = await retry_store(
                lambda: self.migrations.close(m.id, "aborted", "migrator"), "abort"
            )
            await self.migrations.set_state(m.id, MoveState.ABORTED.value, abort_version=version)
            await self.publisher.refresh()
        await until(
            lambda: self._pod_has_version(target, version or 0),
            f"{target} to see table v{version}",
        )
        await self.pods.call(target, lambda c: c.drop(gid, epoch, force=True))
        await retry_store(
            lambda: self.migrations.set_state(m.id, MoveState.ROLLED_BACK.value), "rolled back"
        )
        self.cancelled.discard(m.id)
        log.info("migration %s rolled back: guild %s stays on %s", m.id, gid, m.source)

    # -- what the steps wait for ------------------------------------------------------------

    async def _target_listening(self, target: str, gid: int) -> bool:
        status = await self.pods.call(target, lambda c: c.status(gid))
        return status.holding and status.shard_ready

    async def _target_has_shard(self, target: str, gid: int) -> bool:
        status = await self.pods.call(target, lambda c: c.status(gid))
        return status.shard_ready

    async def _pod_has_version(self, pod: str, version: int) -> bool:
        answer = await self.pods.call(pod, lambda c: c.table_version())
        return (answer.version or 0) >= version
