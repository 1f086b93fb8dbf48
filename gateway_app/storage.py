"""A pod's SQLite file: mod-bot's tables, every row keyed by ``guild_id``.

Writes from gateway events go through a batch writer: events are queued, and one task
commits them in transactions of up to ``batch_size`` rows or every ``flush_interval``
seconds, whichever comes first. That is what lets one pod persist thousands of events
per second; ``flush()`` is the barrier tests and migrations use. Message rows are
idempotent (primary key ``(guild_id, message_id)``), so an event seen twice while a
shard session is handed over is stored once.

A failed commit is never forgotten: the batch stays queued, in order, and is retried with
backoff; ``flush()`` raises :class:`StorageUnavailable` meanwhile (it is the barrier
migrations rely on, so it must not pretend), ``failure`` says why (``/readyz`` shows it)
and ``write_failures`` counts the failed attempts. Gateway positions (``mark_session``)
travel in the same queue and are committed in the same transaction as the rows written
before them, so the stored sequence number never runs ahead of the data: a restarted pod
RESUMEs from it and Discord replays what was not committed.

**Disk pressure** (issue 15): the pod refuses new writes *before* the volume is full, when
its headroom (the volume's free bytes plus the free pages inside the database file, which
SQLite reuses before it grows the file) falls below the larger of ``reserve_bytes`` and
``1 - max_used`` of the volume. A refused batch is handled like a failed one (kept queued,
in order; ``flush()`` raises; positions not advanced; retried with backoff) but no commit
is attempted, so no batch ever fails half-way on ENOSPC, and the reserve stays for what
frees space: retention's deletes, a migration's ``delete_guild``, WAL checkpoints.
Direct writes (settings, reports, imports) raise :class:`StorageUnavailable` meanwhile.
Writes resume once the headroom is back above the threshold plus a tenth (hysteresis).

**Retention** (``gateway_app/retention.py``) deletes old rows here in small transactions
(:meth:`GuildStore.prune_batch`) on a connection of its own. Exports take the same lock
as a prune batch, and a guild that was exported or imported (a migration's pre-copy) is
not pruned for ``EXPORT_QUIET`` seconds, so a migration's counts and checksums always
describe one state of the guild.

Ids are SQLite INTEGERs (signed 64-bit): Discord snowflakes stay below 2**63 until 2084.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, assert_never

import aiosqlite

from modbot_client import monolith_schema

from . import feature_tables
from .events import (
    AuditAction,
    GatewayEvent,
    MalformedEvent,
    MemberBanned,
    MemberLeft,
    MessageCreated,
    MessageDeleted,
    OtherEvent,
    ReactionAdded,
    event_from_json,
)

log = logging.getLogger("modbot.gateway.storage")

SCHEMA = [
    (
        "0001_initial",
        """
        CREATE TABLE guilds (
            guild_id   INTEGER PRIMARY KEY,
            settings   TEXT NOT NULL DEFAULT '{}',
            updated_at REAL NOT NULL
        );
        CREATE TABLE message_stats (
            guild_id   INTEGER NOT NULL,
            message_id INTEGER NOT NULL,
            channel_id INTEGER NOT NULL,
            author_id  INTEGER NOT NULL,
            word_count INTEGER NOT NULL,
            char_count INTEGER NOT NULL,
            sent_at    REAL NOT NULL,
            deleted_at REAL,
            PRIMARY KEY (guild_id, message_id)
        ) WITHOUT ROWID;
        CREATE INDEX message_stats_by_time ON message_stats (guild_id, sent_at);
        CREATE TABLE reported_messages (
            id               INTEGER PRIMARY KEY AUTOINCREMENT,
            guild_id         INTEGER NOT NULL,
            reporter_id      INTEGER NOT NULL,
            reported_user_id INTEGER NOT NULL,
            message_id       INTEGER NOT NULL,
            channel_id       INTEGER NOT NULL,
            reason           TEXT NOT NULL,
            content          TEXT NOT NULL,
            created_at       REAL NOT NULL,
            UNIQUE (guild_id, message_id, reporter_id)
        );
        CREATE INDEX reported_by_user ON reported_messages (guild_id, reported_user_id);
        CREATE TABLE mod_actions (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            guild_id    INTEGER NOT NULL,
            user_id     INTEGER NOT NULL,
            action_type TEXT NOT NULL CHECK (action_type IN ('ban', 'kick', 'timeout', 'leave')),
            executor_id INTEGER,
            reason      TEXT,
            duration    REAL,
            created_at  REAL NOT NULL
        );
        CREATE INDEX mod_actions_by_user ON mod_actions (guild_id, user_id);
        """,
    ),
    (
        "0002_migration",
        """
        CREATE TABLE held_events (
            id        INTEGER PRIMARY KEY AUTOINCREMENT,
            guild_id  INTEGER NOT NULL,
            event_key TEXT NOT NULL,
            event     TEXT NOT NULL,
            UNIQUE (guild_id, event_key)
        );
        CREATE TABLE guild_fences (
            guild_id INTEGER PRIMARY KEY,
            epoch    INTEGER NOT NULL,
            state    TEXT NOT NULL CHECK (state IN ('frozen', 'holding', 'released', 'normal'))
        );
        """,
    ),
    (
        "0003_gateway_sessions",
        """
        CREATE TABLE gateway_sessions (
            shard_id    INTEGER PRIMARY KEY,
            shard_count INTEGER NOT NULL,
            session_id  TEXT NOT NULL,
            resume_url  TEXT NOT NULL,
            sequence    INTEGER NOT NULL,
            updated_at  REAL NOT NULL
        );
        """,
    ),
]

# Exported columns per table, in order (no local autoincrement ids: they differ per pod).
EXPORT_COLUMNS = {
    "guilds": ("guild_id", "settings", "updated_at"),
    "message_stats": (
        "guild_id",
        "message_id",
        "channel_id",
        "author_id",
        "word_count",
        "char_count",
        "sent_at",
        "deleted_at",
    ),
    "reported_messages": (
        "guild_id",
        "reporter_id",
        "reported_user_id",
        "message_id",
        "channel_id",
        "reason",
        "content",
        "created_at",
    ),
    "mod_actions": (
        "guild_id",
        "user_id",
        "action_type",
        "executor_id",
        "reason",
        "duration",
        "created_at",
    ),
}


class ImportError_(Exception):
    """An import whose rows do not match the counts or checksum it came with."""


# Canonical order per table: exports and read-backs use it, so the checksum needs no sort.
EXPORT_ORDER = {
    "guilds": "guild_id",
    "message_stats": "guild_id, message_id",
    "reported_messages": "guild_id, message_id, reporter_id",
    "mod_actions": "guild_id, created_at, user_id, action_type",
}


def checksum(rows: dict[str, list[list[Any]]]) -> str:
    digest = hashlib.sha256()
    for table in EXPORT_COLUMNS:
        digest.update(table.encode())
        digest.update(json.dumps(rows.get(table, []), separators=(",", ":")).encode())
    return digest.hexdigest()


GUILD_TABLES: tuple[str, ...] = (
    "guilds",
    "message_stats",
    "reported_messages",
    "mod_actions",
    "held_events",
)

# mod-bot's tables that had no home here (import-monolith): the pod's schema extended, and
# carried by export/import (counts, checksum) like the tables above.
SCHEMA += monolith_schema.POD_SCHEMA
EXPORT_COLUMNS.update(monolith_schema.POD_EXPORT_COLUMNS)
EXPORT_ORDER.update(monolith_schema.POD_EXPORT_ORDER)
GUILD_TABLES += monolith_schema.POD_TABLES
# and the features' own tables (gateway_app/feature_tables.py), carried the same way
SCHEMA += feature_tables.SCHEMA
EXPORT_COLUMNS.update(feature_tables.EXPORT_COLUMNS)
EXPORT_ORDER.update(feature_tables.EXPORT_ORDER)
GUILD_TABLES += feature_tables.TABLES


def _replay_order(item: tuple[str, GatewayEvent]) -> tuple[float, str]:
    """Held events are applied in time order (a kind this version does not know: first)."""
    key, event = item
    return (0.0 if isinstance(event, OtherEvent) else event.at, key)


INSERT_MESSAGE = (
    "INSERT OR IGNORE INTO message_stats (guild_id, message_id, channel_id, author_id,"
    " word_count, char_count, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class MessageRow:
    guild_id: int
    message_id: int
    channel_id: int
    author_id: int
    word_count: int
    char_count: int
    sent_at: float


@dataclass(frozen=True)
class SessionMark:
    """Where a shard's gateway session stands: every event up to ``sequence`` is handled."""

    shard_id: int
    shard_count: int
    session_id: str
    sequence: int
    resume_url: str


class StorageUnavailable(Exception):
    """Writes are failing (disk full, I/O error) or refused (disk pressure): nothing
    enqueued since is committed yet."""


MiB = 1024 * 1024
EXPORT_QUIET = 3600.0  # seconds a guild is not pruned after an export or import of it
# prunable tables and the column (seconds since the epoch) their rows age by
RETENTION_COLUMNS = {
    "message_stats": "sent_at",
    "reported_messages": "created_at",
    "mod_actions": "created_at",
}


@dataclass(frozen=True)
class DiskState:
    """The pod's volume and database as the disk-pressure check sees them (bytes)."""

    volume_size: int  # what df calls size: used + available to this user
    volume_free: int  # available to this user (statvfs f_bavail)
    database: int  # the database file and its write-ahead log
    database_free: int  # free pages inside the database file (reused before it grows)
    threshold: int  # headroom below which writes are refused

    @property
    def headroom(self) -> int:
        return self.volume_free + self.database_free

    @property
    def used_fraction(self) -> float:
        return 1.0 - self.headroom / self.volume_size if self.volume_size else 0.0


class StorageError(Exception):
    """The database file cannot be used at all (read-only, corrupt): the pod must not start."""


QueueItem = tuple[str, tuple[Any, ...]] | asyncio.Future[None]

UPSERT_SESSION = (
    "INSERT INTO gateway_sessions (shard_id, shard_count, session_id, resume_url, sequence, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (shard_id) DO UPDATE SET"
    " shard_count = excluded.shard_count, resume_url = excluded.resume_url,"
    " sequence = CASE WHEN gateway_sessions.session_id = excluded.session_id"
    " THEN max(gateway_sessions.sequence, excluded.sequence) ELSE excluded.sequence END,"
    " session_id = excluded.session_id, updated_at = excluded.updated_at"
)


def check_database(path: str) -> None:
    """Refuse a file that cannot hold this pod's data: not a database, corrupt, or read-only.

    Synchronous and quick (a quick_check and one tiny write), run before anything starts,
    so the pod exits with one clear line instead of serving while it silently loses writes.
    """
    if path == ":memory:":
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=5, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"cannot open database {path}: {exc}") from None
    try:
        try:
            verdict = conn.execute("PRAGMA quick_check(1)").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"database {path} is corrupt or not SQLite: {exc}") from None
        if verdict is None or verdict[0] != "ok":
            raise StorageError(f"database {path} is corrupt: {verdict and verdict[0]}")
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE IF NOT EXISTS gateway_probe (at REAL NOT NULL)")
            conn.execute("DELETE FROM gateway_probe")
            conn.execute("INSERT INTO gateway_probe VALUES (?)", (time.time(),))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StorageError(f"database {path} is not writable: {exc}") from None
    finally:
        conn.close()


class GuildStore:
    def __init__(
        self,
        path: str,
        *,
        batch_size: int = 1000,
        flush_interval: float = 0.02,
        retry_initial: float = 0.05,
        retry_max: float = 2.0,
        reserve_bytes: int = 0,
        max_used: float = 1.0,
    ) -> None:
        self.path = path
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.db: aiosqlite.Connection | None = None
        # A deque, not an asyncio.Queue: a failed batch goes back to the front, in order.
        self._pending: deque[QueueItem] = deque()
        self._waiters = 0  # flush futures in _pending: they end a batch early
        self._wakeup = asyncio.Event()
        # Gateway positions wait beside the queue, each tagged with the number of writes
        # enqueued before it: it is committed in the transaction that commits that many.
        self._writes_enqueued = 0
        self._writes_committed = 0
        self._marks: dict[int, deque[tuple[int, SessionMark]]] = {}
        self._writer: asyncio.Task[None] | None = None
        self.rows_written = 0
        self.batches_written = 0
        self.write_failures = 0
        self.failure: str | None = None  # why writes fail right now (None: they succeed)
        # disk pressure: refuse new writes while the headroom is below the threshold
        self.reserve_bytes = reserve_bytes
        self.max_used = max_used
        self.pressure: str | None = None  # why writes are refused right now
        self.writes_refused = 0  # batch attempts and direct writes refused for disk pressure
        self.batches_refused = 0  # of which batch attempts (also in write_failures)
        self._free_pages_bytes = 0  # last measured free pages inside the file
        self._prune_lock = asyncio.Lock()  # an export's reads never straddle a prune batch
        self._touched: dict[int, float] = {}  # guild -> monotonic time of export/import

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = await aiosqlite.connect(self.path, isolation_level=None)
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA synchronous=NORMAL")
        await self.db.execute("PRAGMA busy_timeout=5000")
        await self._migrate()
        self._writer = asyncio.create_task(self._write_loop(), name="sqlite-writer")

    async def close(self) -> None:
        if self._writer is not None:
            try:
                await self.flush()
            except StorageUnavailable as exc:
                # not lost: the stored gateway positions did not advance past them
                log.error("closing with %d uncommitted writes: %s", len(self._pending), exc)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self.db is not None:
            await self.db.close()
            self.db = None

    async def _migrate(self) -> None:
        assert self.db is not None
        await self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (id TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        async with self.db.execute("SELECT id FROM schema_migrations") as cur:
            done = {r[0] for r in await cur.fetchall()}
        for name, sql in SCHEMA:
            if name in done:
                continue
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in sql.split(";"):
                    if statement.strip():
                        await self.db.execute(statement)
                await self.db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time())
                )
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    # -- the batch writer ------------------------------------------------------------------------

    def _put(self, item: QueueItem) -> None:
        self._pending.append(item)
        # wake the writer only when it has something new to decide: it sleeps through
        # the batch window otherwise (one wake-up per batch, not per event)
        if len(self._pending) == 1 or len(self._pending) >= self.batch_size:
            self._wakeup.set()

    @property
    def backlog(self) -> int:
        """Writes queued, not yet committed."""
        return len(self._pending) - self._waiters

    def enqueue(self, sql: str, params: tuple[Any, ...]) -> None:
        self._writes_enqueued += 1
        self._put((sql, params))

    def mark_session(self, mark: SessionMark) -> None:
        """Record a gateway position, committed with (never before) the writes queued so far."""
        marks = self._marks.setdefault(mark.shard_id, deque())
        if marks and marks[-1][0] == self._writes_enqueued:
            marks[-1] = (self._writes_enqueued, mark)  # no write in between: the newer one
        else:
            marks.append((self._writes_enqueued, mark))
        if not self._pending:
            self._wakeup.set()

    async def flush(self) -> None:
        """Wait until everything enqueued so far is committed.

        Raises :class:`StorageUnavailable` while writes fail: the caller must not go on as
        if they had been committed (the writes themselves stay queued and are retried).
        """
        if self.failure is not None:
            raise StorageUnavailable(f"writes are failing: {self.failure}")
        if self.pressure is not None:
            raise StorageUnavailable(f"writes are refused: {self.pressure}")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters += 1
        self._pending.append(done)
        self._wakeup.set()
        await done

    async def sessions(self) -> dict[int, SessionMark]:
        """The last committed position of each shard's session (what a restart resumes)."""
        rows = await self._all(
            "SELECT shard_id, shard_count, session_id, sequence, resume_url FROM gateway_sessions"
        )
        return {
            int(shard): SessionMark(int(shard), int(count), str(sid), int(seq), str(url))
            for shard, count, sid, seq, url in rows
        }

    def _marks_due(self, upto: int) -> dict[int, SessionMark]:
        """Per shard, the newest position whose writes are all among the first ``upto``."""
        due = {}
        for shard, marks in self._marks.items():
            for n, mark in marks:
                if n > upto:
                    break
                due[shard] = mark
        return due

    def _drop_marks(self, upto: int) -> None:
        for shard in list(self._marks):
            marks = self._marks[shard]
            while marks and marks[0][0] <= upto:
                marks.popleft()
            if not marks:
                del self._marks[shard]

    async def _next_batch(self) -> list[QueueItem]:
        while not self._pending and not self._marks:
            self._wakeup.clear()
            await self._wakeup.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.flush_interval
        while len(self._pending) < self.batch_size and not self._waiters:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        batch: list[QueueItem] = []
        while self._pending and len(batch) < self.batch_size:
            item = self._pending.popleft()
            batch.append(item)
            if isinstance(item, asyncio.Future):
                self._waiters -= 1
                break  # a flush ends the batch: its caller waits for exactly this much
        return batch

    async def _write_loop(self) -> None:
        assert self.db is not None
        delay = self.retry_initial
        while True:
            batch = await self._next_batch()
            writes = sum(1 for item in batch if not isinstance(item, asyncio.Future))
            upto = self._writes_committed + writes
            marks = self._marks_due(upto)
            if writes and await self._refusing():
                # disk pressure: no commit is attempted (none fails half-way on ENOSPC); the
                # batch goes back to the front like a failed one and positions stay put
                self.writes_refused += 1
                self.batches_refused += 1
                self.write_failures += 1
                assert self.pressure is not None
                self._fail_waiters(batch, self.pressure)
                self._pending.extendleft(
                    reversed([i for i in batch if not isinstance(i, asyncio.Future)])
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            try:
                await self._commit(batch, marks)
            except Exception as exc:
                self.write_failures += 1
                reason = f"{type(exc).__name__}: {exc}"
                if self.failure is None:
                    log.error("batch of %d writes failed (%s); retrying", writes, reason)
                self.failure = reason
                self._fail_waiters(batch, reason)
                # back to the front, in order: nothing is dropped, nothing overtakes it
                self._pending.extendleft(
                    reversed([i for i in batch if not isinstance(i, asyncio.Future)])
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            self._writes_committed = upto
            self._drop_marks(upto)
            if self.failure is not None:
                log.warning("writes succeed again (%d failed attempts so far)", self.write_failures)
                self.failure = None
            delay = self.retry_initial
            for item in batch:
                if isinstance(item, asyncio.Future) and not item.done():
                    item.set_result(None)

    # -- disk pressure -------------------------------------------------------------------------------

    @property
    def guarded(self) -> bool:
        """Whether the disk-pressure check is on (a reserve or a usage limit is set)."""
        return self.path != ":memory:" and (self.reserve_bytes > 0 or self.max_used < 1.0)

    @property
    def unwritable(self) -> str | None:
        """Why writes do not go through right now (None: they do)."""
        if self.failure is not None:
            return f"failing: {self.failure}"
        if self.pressure is not None:  # same prefix: /readyz's `storage` is "ok" or "failing: ..."
            return f"failing: {self.pressure}"
        return None

    def database_bytes(self) -> int:
        """The database file plus its write-ahead log (what the pod's data takes)."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(self.path + suffix).st_size
        return total

    def disk_state(self) -> DiskState | None:
        """The volume as statvfs sees it now, with the last measured free pages."""
        if self.path == ":memory:":
            return None
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return None
        free = st.f_bavail * st.f_frsize
        size = (st.f_blocks - st.f_bfree) * st.f_frsize + free
        threshold = max(self.reserve_bytes, int((1.0 - self.max_used) * size + 0.5))
        return DiskState(size, free, self.database_bytes(), self._free_pages_bytes, threshold)

    async def measure_free_pages(self) -> int:
        """Bytes of free pages inside the file (deleted rows' pages, reused first)."""
        if self.db is None or self.path == ":memory:":
            return 0
        async with self.db.execute("PRAGMA freelist_count") as cur:
            pages = await cur.fetchone()
        async with self.db.execute("PRAGMA page_size") as cur:
            size = await cur.fetchone()
        self._free_pages_bytes = int(pages[0]) * int(size[0]) if pages and size else 0
        return self._free_pages_bytes

    async def check_disk(self, *, refresh: bool = False) -> DiskState | None:
        """Measure, and refuse or allow writes accordingly (with a tenth of hysteresis).

        Cheap when there is room (the batch writer calls it before every batch): one
        statvfs; the free pages (``PRAGMA freelist_count``) are counted only near the
        threshold, or when asked to ``refresh`` them (once a second, after retention)."""
        if refresh:
            await self.measure_free_pages()
        state = self.disk_state()
        if state is None or not self.guarded:
            return state
        resume_at = state.threshold + state.threshold // 10
        if not refresh and (self.pressure is not None or state.headroom < resume_at):
            await self.measure_free_pages()
            state = self.disk_state()
            assert state is not None
        if self.pressure is None and state.headroom < state.threshold:
            self.pressure = (
                f"disk almost full: {state.headroom / MiB:.1f} MiB left on the volume"
                f" (free database pages included), below the {state.threshold / MiB:.1f} MiB"
                " reserve; writes are refused until space frees (nothing is acknowledged)"
            )
            log.error("refusing writes: %s", self.pressure)
        elif self.pressure is not None and state.headroom >= resume_at:
            log.warning("writes allowed again: %.1f MiB free on the volume", state.headroom / MiB)
            self.pressure = None
        return state

    async def _refusing(self) -> bool:
        if not self.guarded:
            return False
        await self.check_disk()
        return self.pressure is not None

    def check_writable(self) -> None:
        """Raise :class:`StorageUnavailable` if a direct write must not be attempted now."""
        if self.failure is not None:
            raise StorageUnavailable(f"writes are failing: {self.failure}")
        if self.pressure is not None:
            self.writes_refused += 1
            raise StorageUnavailable(f"writes are refused: {self.pressure}")

    def _fail_waiters(self, batch: Sequence[QueueItem], reason: str) -> None:
        """Every flush waiting now fails: the barrier cannot hold while writes fail."""
        error = StorageUnavailable(f"writes are failing: {reason}")
        waiting = [i for i in batch if isinstance(i, asyncio.Future)]
        if self._waiters:
            kept: deque[QueueItem] = deque()
            for item in self._pending:
                if isinstance(item, asyncio.Future):
                    waiting.append(item)
                else:
                    kept.append(item)
            self._pending = kept
            self._waiters = 0
        for future in waiting:
            if not future.done():
                future.set_exception(error)

    async def _commit(self, batch: Sequence[QueueItem], marks: dict[int, SessionMark]) -> None:
        """Write a batch and the positions it completes in one transaction, or raise."""
        assert self.db is not None
        groups: list[tuple[str, list[tuple[Any, ...]]]] = []
        writes = 0
        for item in batch:
            if isinstance(item, asyncio.Future):
                continue
            sql, params = item
            writes += 1
            # group consecutive rows of the same statement into executemany calls
            if groups and groups[-1][0] == sql:
                groups[-1][1].append(params)
            else:
                groups.append((sql, [params]))
        if not groups and not marks:
            return
        now = time.time()
        try:
            await self.db.execute("BEGIN IMMEDIATE")
            for sql, rows in groups:
                await self.db.executemany(sql, rows)
            if marks:
                await self.db.executemany(
                    UPSERT_SESSION,
                    [
                        (m.shard_id, m.shard_count, m.session_id, m.resume_url, m.sequence, now)
                        for m in marks.values()
                    ],
                )
            await self.db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                await self.db.execute("ROLLBACK")
            raise
        self.rows_written += writes
        self.batches_written += 1

    # -- event writes (queued) ----------------------------------------------------------------------

    def apply_event(self, guild_id: int, event: GatewayEvent) -> None:
        """Write one gateway event (live, or replayed after a migration)."""
        match event:
            case MessageCreated():  # the hot path: straight to the queue
                self.enqueue(
                    INSERT_MESSAGE,
                    (
                        guild_id,
                        event.message_id,
                        event.channel_id,
                        event.author_id,
                        event.words,
                        event.chars,
                        event.at,
                    ),
                )
            case MessageDeleted():
                self.message_deleted(guild_id, event.message_id, event.at)
            case AuditAction():
                self.audit_action(guild_id, event)
            case MemberBanned() | MemberLeft():
                kind = event.kind
                self.enqueue(
                    "INSERT INTO mod_actions (guild_id, user_id, action_type, executor_id, reason, duration, created_at)"
                    " SELECT ?, ?, ?, NULL, NULL, NULL, ? WHERE NOT EXISTS (SELECT 1 FROM mod_actions"
                    " WHERE guild_id = ? AND user_id = ? AND action_type = ? AND abs(created_at - ?) < 60)",
                    (
                        guild_id,
                        event.user_id,
                        kind,
                        event.at,
                        guild_id,
                        event.user_id,
                        kind,
                        event.at,
                    ),
                )
            case ReactionAdded() | OtherEvent():
                pass  # not stored: reactions are the features' (reactji), others unknown here
            case _:
                assert_never(event)

    def audit_action(self, guild_id: int, event: AuditAction) -> None:
        """A kick, ban or timeout from the audit log (gateway_app/features/modlog.py): once
        per entry (``source_id``); a ban row GUILD_BAN_ADD wrote first is completed."""
        source = f"audit:{event.entry_id}"
        user, action, at = event.user_id, event.action, event.at
        details = (event.executor_id, event.reason, event.duration, source)
        self.enqueue(
            "UPDATE mod_actions SET executor_id = ?, reason = ?, duration = ?, source_id = ?"
            " WHERE rowid = (SELECT rowid FROM mod_actions WHERE guild_id = ? AND user_id = ?"
            " AND action_type = ? AND source_id IS NULL AND executor_id IS NULL"
            " AND abs(created_at - ?) < 60 LIMIT 1) AND NOT EXISTS (SELECT 1 FROM mod_actions"
            " WHERE guild_id = ? AND source_id = ?)",
            (*details, guild_id, user, action, at, guild_id, source),
        )
        self.enqueue(
            "INSERT INTO mod_actions (guild_id, user_id, action_type, executor_id, reason,"
            " duration, created_at, source_id) SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS"
            " (SELECT 1 FROM mod_actions WHERE guild_id = ? AND source_id = ?)",
            (guild_id, user, action, *details[:3], at, source, guild_id, source),
        )

    def hold_event(self, guild_id: int, key: str, event: GatewayEvent) -> None:
        """Keep an event for later instead of writing it (the guild is migrating), in the
        JSON form every version of the pod reads (``gateway_app/events.py``)."""
        self.enqueue(
            "INSERT OR IGNORE INTO held_events (guild_id, event_key, event) VALUES (?, ?, ?)",
            (guild_id, key, json.dumps(event.to_json(), separators=(",", ":"))),
        )

    def message_created(self, row: MessageRow) -> None:
        self.enqueue(
            INSERT_MESSAGE,
            (
                row.guild_id,
                row.message_id,
                row.channel_id,
                row.author_id,
                row.word_count,
                row.char_count,
                row.sent_at,
            ),
        )

    def message_deleted(self, guild_id: int, message_id: int, at: float) -> None:
        self.enqueue(
            "UPDATE message_stats SET deleted_at = ? WHERE guild_id = ? AND message_id = ? AND deleted_at IS NULL",
            (at, guild_id, message_id),
        )

    # -- direct reads and writes (commands, dashboard) ------------------------------------------------

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        assert self.db is not None
        async with self.db.execute(sql, params) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def settings(self, guild_id: int) -> dict[str, Any] | None:
        rows = await self._all("SELECT settings FROM guilds WHERE guild_id = ?", (guild_id,))
        return json.loads(rows[0][0]) if rows else None

    async def save_settings(self, guild_id: int, settings: dict[str, Any]) -> None:
        await self.flush()
        assert self.db is not None
        await self.db.execute(
            "INSERT INTO guilds (guild_id, settings, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (guild_id) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
            (guild_id, json.dumps(settings, sort_keys=True), time.time()),
        )

    async def add_report(
        self,
        guild_id: int,
        reporter_id: int,
        reported_user_id: int,
        message_id: int,
        channel_id: int,
        reason: str,
        content: str,
    ) -> bool:
        """Store a report; False when this reporter already reported this message."""
        assert self.db is not None
        self.check_writable()
        cur = await self.db.execute(
            "INSERT OR IGNORE INTO reported_messages (guild_id, reporter_id, reported_user_id, message_id, channel_id, reason, content, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                guild_id,
                reporter_id,
                reported_user_id,
                message_id,
                channel_id,
                reason,
                content[:2000],
                time.time(),
            ),
        )
        return bool(cur.rowcount)

    async def remove_report(
        self, guild_id: int, reporter_id: int, message_id: int, reason: str
    ) -> None:
        """Undo :meth:`add_report` when what it stood for did not happen (Discord refused
        the log message), so the reporter's retry is not refused as a repeat."""
        assert self.db is not None
        await self.db.execute(
            "DELETE FROM reported_messages WHERE guild_id = ? AND reporter_id = ?"
            " AND message_id = ? AND reason = ?",
            (guild_id, reporter_id, message_id, reason),
        )

    async def user_report(self, guild_id: int, user_id: int) -> dict[str, Any]:
        await self.flush()
        reports = await self._all(
            "SELECT count(*) FROM reported_messages WHERE guild_id = ? AND reported_user_id = ?",
            (guild_id, user_id),
        )
        actions = await self._all(
            "SELECT action_type, reason, created_at FROM mod_actions WHERE guild_id = ? AND user_id = ? ORDER BY created_at DESC LIMIT 5",
            (guild_id, user_id),
        )
        return {
            "reports": reports[0][0],
            "recent_actions": [{"type": a, "reason": r, "at": t} for a, r, t in actions],
        }

    async def dashboard(
        self, guild_id: int, days: int = 30, now: float | None = None
    ) -> dict[str, Any]:
        """Settings and 30-day stats: what the pod's dashboard page (dashboard.py) shows."""
        await self.flush()
        now = time.time() if now is None else now
        today = int(now // 86400)
        first_day = today - days + 1
        per_day = dict(
            await self._all(
                "SELECT CAST(sent_at / 86400 AS INTEGER) AS day, count(*) FROM message_stats"
                " WHERE guild_id = ? AND sent_at >= ? GROUP BY day",
                (guild_id, first_day * 86400),
            )
        )
        totals = await self._all(
            "SELECT count(*), count(deleted_at), count(DISTINCT author_id) FROM message_stats WHERE guild_id = ?",
            (guild_id,),
        )
        reasons = await self._all(
            "SELECT reason, count(*) FROM reported_messages WHERE guild_id = ? GROUP BY reason ORDER BY count(*) DESC",
            (guild_id,),
        )
        actions = await self._all(
            "SELECT action_type, count(*) FROM mod_actions WHERE guild_id = ? GROUP BY action_type ORDER BY count(*) DESC",
            (guild_id,),
        )
        return {
            "guild_id": str(guild_id),
            "settings": await self.settings(guild_id),
            "messages_per_day": [
                {
                    "day": time.strftime("%Y-%m-%d", time.gmtime(d * 86400)),
                    "count": per_day.get(d, 0),
                }
                for d in range(first_day, today + 1)
            ],
            "messages": {"total": totals[0][0], "deleted": totals[0][1], "authors": totals[0][2]},
            "reports_by_reason": dict(reasons),
            "mod_actions_by_type": dict(actions),
        }

    async def guild_ids(self) -> list[int]:
        """Every guild with at least one row here."""
        await self.flush()
        union = " UNION ".join(f"SELECT DISTINCT guild_id FROM {t}" for t in GUILD_TABLES)
        return sorted(r[0] for r in await self._all(union))

    # -- migration ---------------------------------------------------------------------------------

    async def fences(self) -> dict[int, tuple[int, str]]:
        return {
            g: (e, s)
            for g, e, s in await self._all("SELECT guild_id, epoch, state FROM guild_fences")
        }

    async def set_fence(self, guild_id: int, epoch: int, state: str) -> None:
        await self.flush()
        assert self.db is not None
        await self.db.execute(
            "INSERT INTO guild_fences (guild_id, epoch, state) VALUES (?, ?, ?)"
            " ON CONFLICT (guild_id) DO UPDATE SET epoch = excluded.epoch, state = excluded.state",
            (guild_id, epoch, state),
        )

    @contextlib.asynccontextmanager
    async def _bulk_connection(
        self, *, frees_space: bool = False
    ) -> AsyncIterator[aiosqlite.Connection]:
        """A connection of its own for a migration's one big transaction (import, delete).

        Not the batch writer's: a transaction opened on the shared connection would let
        the writer's batches run inside it (or fail with "cannot start a transaction within
        a transaction" and roll it back half-done). On its own connection the import simply
        takes SQLite's write lock and the writer waits for it (busy timeout).

        Refused under disk pressure (an import must not fill the reserve) unless the work
        ``frees_space`` (deletes: a moved guild, retention)."""
        if not frees_space:
            self.check_writable()
        if self.path == ":memory:":  # one database per connection: only the shared one sees it
            assert self.db is not None
            yield self.db
            return
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await conn.execute("PRAGMA busy_timeout=30000")
            await conn.execute("PRAGMA synchronous=NORMAL")
            yield conn
        finally:
            await conn.close()

    async def export_guild(
        self,
        guild_id: int,
        *,
        mode: str = "full",
        since_id: int = 0,
        since_time: float = 0.0,
        message_ids: Collection[int] | None = None,
    ) -> dict[str, Any]:
        """The guild's rows (held events excluded) with counts, totals and a checksum.

        ``full``: every row. ``precopy``: message rows only, taken before the freeze so
        the bulk of a guild moves while it still runs. ``delta``: after the freeze, the
        message rows changed since the pre-copy (``message_ids``, tracked by the gate;
        without them, the rows newer than ``since_id`` or deleted since ``since_time``),
        plus the small tables whole. ``totals`` are the full row counts the target must
        end with. The checksum runs off the event loop: a pre-copy is 100k rows.
        """
        if mode not in ("full", "precopy", "delta"):
            raise ValueError(f"unknown export mode {mode!r}")
        await self.flush()
        async with self._prune_lock:  # rows, totals and checksum of one state: no prune between
            self._touched[guild_id] = time.monotonic()
            return await self._export_rows(guild_id, mode, since_id, since_time, message_ids)

    async def _export_rows(
        self,
        guild_id: int,
        mode: str,
        since_id: int,
        since_time: float,
        message_ids: Collection[int] | None,
    ) -> dict[str, Any]:
        snapshot_time = time.time()
        rows: dict[str, list[list[Any]]] = {}
        for table, cols in EXPORT_COLUMNS.items():
            where, params = "guild_id = ?", list[Any]([guild_id])
            if table == "message_stats" and mode == "delta" and message_ids is not None:
                rows[table] = await self._rows_by_id(guild_id, cols, sorted(message_ids))
                continue
            if table == "message_stats" and mode == "delta":
                where += " AND (message_id > ? OR deleted_at >= ?)"
                params += [since_id, since_time]
            elif table != "message_stats" and mode == "precopy":
                rows[table] = []
                continue
            sql = f"SELECT {', '.join(cols)} FROM {table} WHERE {where} ORDER BY {EXPORT_ORDER[table]}"
            rows[table] = [list(r) for r in await self._all(sql, params)]
        totals = {t: c for t, c in (await self.row_counts(guild_id)).items() if t in EXPORT_COLUMNS}
        top = await self._all(
            "SELECT max(message_id) FROM message_stats WHERE guild_id = ?", (guild_id,)
        )
        return {
            "guild_id": str(guild_id),
            "mode": mode,
            "rows": rows,
            "counts": {t: len(r) for t, r in rows.items()},
            "totals": totals,
            "checksum": await asyncio.to_thread(checksum, rows),
            "max_message_id": top[0][0] or 0,
            "snapshot_time": snapshot_time,
        }

    async def _rows_by_id(
        self, guild_id: int, cols: Sequence[str], ids: list[int]
    ) -> list[list[Any]]:
        """Message rows by primary key, in export order (``ids`` sorted), a chunk at a time."""
        out: list[list[Any]] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ", ".join("?" for _ in chunk)
            out += [
                list(r)
                for r in await self._all(
                    f"SELECT {', '.join(cols)} FROM message_stats WHERE guild_id = ?"
                    f" AND message_id IN ({marks}) ORDER BY message_id",
                    (guild_id, *chunk),
                )
            ]
        return out

    async def import_guild(
        self, guild_id: int, epoch: int, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """Apply an export in one transaction, verified twice: the rows must match the
        sender's counts and checksum, and the row counts read back inside the transaction
        must equal the sender's totals, or nothing is written."""
        try:
            rows, counts, expected, mode = (
                payload["rows"],
                payload["counts"],
                payload["checksum"],
                payload.get("mode", "full"),
            )
            totals = payload.get("totals", counts)
        except (KeyError, TypeError):
            raise ImportError_("an import needs rows, counts and checksum") from None
        if (
            set(rows) != set(EXPORT_COLUMNS)
            or {t: len(r) for t, r in rows.items()} != counts
            or await asyncio.to_thread(checksum, rows) != expected
        ):
            raise ImportError_("rows do not match their counts or checksum")
        if any(row[0] != guild_id for table_rows in rows.values() for row in table_rows):
            raise ImportError_("rows of another guild in the import")
        await self.flush()
        self._touched[guild_id] = time.monotonic()  # a migration's target: not pruned meanwhile
        async with self._bulk_connection() as db:
            await db.execute("BEGIN IMMEDIATE")
            try:
                for table, cols in EXPORT_COLUMNS.items():
                    if mode == "precopy" and table != "message_stats":
                        continue
                    upsert = mode == "delta" and table == "message_stats"
                    if not upsert:
                        await db.execute(f"DELETE FROM {table} WHERE guild_id = ?", (guild_id,))
                    marks = ", ".join("?" for _ in cols)
                    verb = "INSERT OR REPLACE" if upsert else "INSERT"
                    await db.executemany(
                        f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({marks})", rows[table]
                    )
                for table in EXPORT_COLUMNS:  # read back inside the transaction: totals hold
                    if mode == "precopy" and table != "message_stats":
                        continue
                    async with db.execute(
                        f"SELECT count(*) FROM {table} WHERE guild_id = ?", (guild_id,)
                    ) as cur:
                        row = await cur.fetchone()
                    want = counts[table] if mode == "precopy" else totals[table]
                    if row is None or row[0] != want:
                        raise ImportError_(
                            f"{table}: {row and row[0]} rows stored, {want} expected"
                        )
                if mode != "precopy":
                    await db.execute(
                        "INSERT INTO guild_fences (guild_id, epoch, state) VALUES (?, ?, 'holding')"
                        " ON CONFLICT (guild_id) DO UPDATE SET epoch = excluded.epoch",
                        (guild_id, epoch),
                    )
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        return {"mode": mode, "counts": counts, "totals": totals, "checksum": expected}

    async def held(self, guild_id: int) -> list[tuple[str, GatewayEvent]]:
        """The guild's held events, oldest first. A row that is not an event (written by
        hand, or by a bug) is logged and left out: it must not stop the migration."""
        await self.flush()
        rows = await self._all(
            "SELECT event_key, event FROM held_events WHERE guild_id = ? ORDER BY id", (guild_id,)
        )
        events: list[tuple[str, GatewayEvent]] = []
        for key, text in rows:
            try:
                events.append((str(key), event_from_json(json.loads(text))))
            except (MalformedEvent, ValueError, TypeError, RecursionError) as exc:
                log.error(
                    "guild %s: held event %r is not an event, left out: %s", guild_id, key, exc
                )
        return events

    async def replay(
        self, guild_id: int, events: list[tuple[str, GatewayEvent]], epoch: int, state: str
    ) -> int:
        """Apply held events (deduplicated by key, in time order), clear them, set the fence."""
        mine = await self.held(guild_id)
        merged: dict[str, GatewayEvent] = {}
        for key, event in [*events, *mine]:
            merged.setdefault(key, event)
        for _, event in sorted(merged.items(), key=_replay_order):
            self.apply_event(guild_id, event)
        self.enqueue("DELETE FROM held_events WHERE guild_id = ?", (guild_id,))
        self.enqueue(
            "INSERT INTO guild_fences (guild_id, epoch, state) VALUES (?, ?, ?)"
            " ON CONFLICT (guild_id) DO UPDATE SET epoch = excluded.epoch, state = excluded.state",
            (guild_id, epoch, state),
        )
        await self.flush()
        return len(merged)

    async def delete_guild(self, guild_id: int, epoch: int) -> dict[str, int]:
        """Remove every row of the guild here (after it moved away, or a rolled-back import),
        in one transaction on its own connection (see ``_bulk_connection``)."""
        await self.flush()
        counts = {}
        async with self._bulk_connection(frees_space=True) as db:
            await db.execute("BEGIN IMMEDIATE")
            try:
                for table in GUILD_TABLES:
                    cur = await db.execute(f"DELETE FROM {table} WHERE guild_id = ?", (guild_id,))
                    counts[table] = cur.rowcount
                await db.execute(
                    "INSERT INTO guild_fences (guild_id, epoch, state) VALUES (?, ?, 'normal')"
                    " ON CONFLICT (guild_id) DO UPDATE SET epoch = excluded.epoch, state = 'normal'",
                    (guild_id, epoch),
                )
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        return counts

    async def guild_sizes(self) -> dict[int, int]:
        """Approximate bytes per guild: rows times their typical stored size, plus text."""
        await self.flush()
        rows = await self._all(
            """
            SELECT guild_id, SUM(n) FROM (
                SELECT guild_id, COUNT(*) * 64 AS n FROM message_stats GROUP BY guild_id
                UNION ALL
                SELECT guild_id, SUM(96 + LENGTH(content) + LENGTH(reason)) FROM reported_messages
                GROUP BY guild_id
                UNION ALL
                SELECT guild_id, SUM(64 + LENGTH(COALESCE(reason, ''))) FROM mod_actions
                GROUP BY guild_id
                UNION ALL
                SELECT guild_id, 32 + LENGTH(settings) FROM guilds
            ) GROUP BY guild_id
            """
        )
        return {int(g): int(n) for g, n in rows}

    def file_bytes(self) -> int:
        try:
            return Path(self.path).stat().st_size
        except OSError:
            return 0

    async def row_counts(self, guild_id: int | None = None) -> dict[str, int]:
        await self.flush()
        where = " WHERE guild_id = ?" if guild_id is not None else ""
        params = (guild_id,) if guild_id is not None else ()
        return {
            t: (await self._all(f"SELECT count(*) FROM {t}{where}", params))[0][0]
            for t in GUILD_TABLES
        }

    # -- retention (gateway_app/retention.py drives these) ----------------------------------------

    def recently_moved(self, guild_id: int) -> bool:
        """Exported or imported within ``EXPORT_QUIET`` s: a migration may be under way."""
        at = self._touched.get(guild_id)
        return at is not None and time.monotonic() - at < EXPORT_QUIET

    @contextlib.asynccontextmanager
    async def pruning(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection a retention run deletes on (its own: see ``_bulk_connection``)."""
        async with self._bulk_connection(frees_space=True) as db:
            yield db

    @staticmethod
    async def guilds_with_rows_before(
        db: aiosqlite.Connection, table: str, cutoff: float
    ) -> list[int]:
        """Guilds with at least one row of ``table`` older than ``cutoff``.

        message_stats can hold millions of rows: its guilds are listed by walking the
        primary key's first column (one index seek per guild, not a scan), then each is
        checked with one seek of its time index."""
        column = RETENTION_COLUMNS[table]
        if table == "message_stats":
            async with db.execute(
                "WITH RECURSIVE g(id) AS (SELECT min(guild_id) FROM message_stats"
                " UNION ALL SELECT (SELECT min(guild_id) FROM message_stats WHERE guild_id > g.id)"
                " FROM g WHERE g.id IS NOT NULL) SELECT id FROM g WHERE id IS NOT NULL"
            ) as cur:
                guilds = [int(r[0]) for r in await cur.fetchall()]
            old = []
            for gid in guilds:
                async with db.execute(
                    "SELECT 1 FROM message_stats WHERE guild_id = ? AND sent_at < ? LIMIT 1",
                    (gid, cutoff),
                ) as cur:
                    if await cur.fetchone() is not None:
                        old.append(gid)
            return old
        async with db.execute(
            f"SELECT DISTINCT guild_id FROM {table} WHERE {column} < ? ORDER BY guild_id",
            (cutoff,),
        ) as cur:
            return [int(r[0]) for r in await cur.fetchall()]

    async def prune_batch(
        self,
        db: aiosqlite.Connection,
        table: str,
        guild_id: int,
        cutoff: float,
        limit: int,
        allowed: Callable[[int], bool],
    ) -> tuple[int, float] | None:
        """Delete up to ``limit`` of the guild's rows older than ``cutoff``, oldest first,
        in one short transaction. Returns (rows deleted, seconds the write lock was held),
        or None if the guild must not be pruned now (``allowed`` says no, or a migration
        exported or imported it lately). Checked under the export lock, so an export sees
        the guild either before or after a batch, never in between."""
        column = RETENTION_COLUMNS[table]
        key = "message_id" if table == "message_stats" else "rowid"  # WITHOUT ROWID there
        sql = (
            f"DELETE FROM {table} WHERE guild_id = ? AND {key} IN (SELECT {key} FROM {table}"
            f" WHERE guild_id = ? AND {column} < ? ORDER BY {column} LIMIT ?)"
        )
        async with self._prune_lock:
            if not allowed(guild_id) or self.recently_moved(guild_id):
                return None
            await db.execute("BEGIN IMMEDIATE")
            locked = time.monotonic()
            try:
                cur = await db.execute(sql, (guild_id, guild_id, cutoff, limit))
                deleted = max(cur.rowcount, 0)
                await db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    await db.execute("ROLLBACK")
                raise
            return deleted, time.monotonic() - locked
