"""One tiny async database interface over PostgreSQL (psycopg 3 pool) and SQLite.

The store writes its SQL once, with ``%s`` placeholders; the SQLite adapter rewrites
them to ``?`` and drops ``FOR UPDATE``. Every write runs in a transaction that first
locks the single ``ring_state`` row (PostgreSQL) or takes SQLite's write lock
(``BEGIN IMMEDIATE``), so writers are serialized and none can lose another's update.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from .errors import DatabaseUnavailable

__all__ = ["Database", "DatabaseUnavailable", "Reachability", "Tx", "open_database"]

log = logging.getLogger("modbot.config.db")

Row = tuple[Any, ...]
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# while PostgreSQL is unreachable, probe it this often (seconds); the pool is rebuilt on
# the first probe that connects, so writes resume well within 2 s of the database's return
RECONNECT_PROBE_INTERVAL = 0.25


class Reachability:
    """When this process could and could not reach its database (wall-clock seconds).

    Heartbeat freshness is judged only over time the database was reachable: a pod whose
    heartbeats failed because the *database* was down has not missed anything. An outage
    is counted from the last success before the first failure (conservatively long) to
    the first success after it. The process start counts as the end of an outage too:
    before it, nobody here was watching."""

    def __init__(self) -> None:
        self.started = time.time()
        self.last_ok: float | None = None
        self.down_since: float | None = None
        self.outages: deque[tuple[float, float]] = deque(maxlen=256)

    def ok(self) -> None:
        now = time.time()
        if self.down_since is not None:
            self.outages.append((self.down_since, now))
            log.warning("database reachable again after %.1f s", now - self.down_since)
            self.down_since = None
        self.last_ok = now

    def failed(self) -> None:
        if self.down_since is None:
            self.down_since = self.last_ok if self.last_ok is not None else self.started

    @property
    def reachable(self) -> bool:
        return self.down_since is None

    @property
    def restored_at(self) -> float:
        """The end of the last outage (or the process start)."""
        return max([self.started, *(end for _, end in self.outages)])

    def unreachable_between(self, start: float, end: float) -> float:
        """Seconds of [start, end] during which the database was unreachable."""
        spans = list(self.outages)
        if self.down_since is not None:
            spans.append((self.down_since, end))
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)


class Tx(Protocol):
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...


class Database(Protocol):
    dialect: str
    url: str
    health: Reachability

    def transaction(self, *, write: bool = True) -> contextlib.AbstractAsyncContextManager[Tx]: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...
    async def try_lead(self, name: str) -> bool: ...


async def open_database(url: str, *, schema: str = "") -> Database:
    """``postgresql://...`` or ``sqlite:///path`` (``sqlite:///:memory:`` for tests)."""
    scheme = urlsplit(url).scheme
    if scheme in ("postgres", "postgresql"):
        if schema and not _SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        db = PostgresDatabase(url, schema)
        await db.open()
        return db
    if scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"sqlite URLs look like sqlite:///path/to/file.db, got {url!r}")
        db_sqlite = SqliteDatabase(url, path)
        await db_sqlite.open()
        return db_sqlite
    raise ValueError(f"unsupported database URL {url!r}: use postgresql://... or sqlite:///...")


# -- PostgreSQL --------------------------------------------------------------------------


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = await self._conn.execute(sql, params)
        return int(cur.rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self._conn.cursor() as cur:
            await cur.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        cur = await self._conn.execute(sql, params)
        row = await cur.fetchone()
        return None if row is None else tuple(row)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = await self._conn.execute(sql, params)
        return [tuple(r) for r in await cur.fetchall()]


class PostgresDatabase:
    """A psycopg pool, plus a fast way back after an outage.

    psycopg_pool retries a failed connection with exponential backoff (1, 2, 4, ... s):
    after a minute-long outage its next attempt can be half a minute away. So on the
    first connection failure this class takes over: transactions fail at once (503s, not
    5 s pool waits), a probe connects every ``RECONNECT_PROBE_INTERVAL`` seconds, and on
    the first success a fresh pool replaces the broken one."""

    dialect = "postgres"

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self.health = Reachability()
        self._pool: Any = None
        self._kwargs: dict[str, Any] = {}
        self._leases: dict[str, Any] = {}
        self._recovery: asyncio.Task[None] | None = None
        self._closed = False

    async def open(self) -> None:
        import psycopg

        kwargs: dict[str, Any] = {"connect_timeout": 5}
        if self.schema:
            kwargs["options"] = f"-c search_path={self.schema}"
            try:  # the schema must exist before connections point at it
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=5
                )
                async with conn:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            except psycopg.OperationalError as exc:
                raise DatabaseUnavailable(_first_line(exc)) from None
        self._kwargs = kwargs
        self._pool = self._new_pool()
        await self._pool.open(wait=False)

    def _new_pool(self) -> Any:
        from psycopg_pool import AsyncConnectionPool

        return AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=8,
            kwargs=self._kwargs,
            open=False,
            # a connection broken by a restart is found before use, not by the query
            check=AsyncConnectionPool.check_connection,
            timeout=5,
            # the pool's own backoff gives up quickly; the probe below does the waiting
            reconnect_timeout=2.0,
            max_lifetime=600.0,
        )

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[Tx]:
        import psycopg

        if self._recovery is not None and not self._recovery.done():
            raise DatabaseUnavailable("database unreachable: reconnecting")
        used: Any = None
        try:
            async with self._pool.connection() as conn:
                used = conn
                self.health.ok()
                async with conn.transaction():
                    if not write:
                        await conn.execute(
                            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                        )
                    yield _PgTx(conn)
        except psycopg.OperationalError as exc:  # PoolTimeout and PoolClosed included
            # no connection at all, or the one we had broke: the server is gone (a
            # serialization failure or lock timeout leaves the connection usable)
            if used is None or used.broken or used.closed:
                self._unreachable()
            raise DatabaseUnavailable(_first_line(exc)) from None

    def _unreachable(self) -> None:
        self.health.failed()
        if not self._closed and (self._recovery is None or self._recovery.done()):
            self._recovery = asyncio.create_task(self._recover(), name="db-reconnect")

    async def _recover(self) -> None:
        """Probe until PostgreSQL answers, then swap in a fresh pool."""
        import psycopg

        while not self._closed:
            try:
                probe = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=2, **self._kwargs_no_timeout()
                )
                async with probe:
                    await probe.execute("SELECT 1")
            except (psycopg.Error, OSError):
                await asyncio.sleep(RECONNECT_PROBE_INTERVAL)
                continue
            fresh = self._new_pool()
            try:
                await fresh.open(wait=True, timeout=5)
            except psycopg.Error:  # went away again between the probe and the pool
                await fresh.close()
                await asyncio.sleep(RECONNECT_PROBE_INTERVAL)
                continue
            old, self._pool = self._pool, fresh
            self.health.ok()
            log.info("database connection pool rebuilt")
            with contextlib.suppress(Exception):
                await old.close(timeout=1)
            return

    def _kwargs_no_timeout(self) -> dict[str, Any]:
        return {k: v for k, v in self._kwargs.items() if k != "connect_timeout"}

    async def ping(self) -> None:
        async with self.transaction(write=False) as tx:
            await tx.fetchone("SELECT 1")

    async def try_lead(self, name: str) -> bool:
        """Hold the session advisory lock ``name`` (scoped to the schema) on a connection
        of its own: whoever holds it leads until that connection drops. Called on every
        tick: it checks the lock is still held, or tries to take it."""
        import psycopg

        key = zlib.crc32(f"{self.schema or 'public'}:{name}".encode()) - 2**31
        conn = self._leases.get(name)
        try:
            if conn is not None and not conn.closed:
                await conn.execute("SELECT 1")
                return True
            conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=5
            )
            row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))).fetchone()
        except psycopg.OperationalError:
            self._leases.pop(name, None)
            return False
        if row and row[0]:
            self._leases[name] = conn
            return True
        await conn.close()
        return False

    async def close(self) -> None:
        self._closed = True
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._recovery
        for conn in self._leases.values():
            with contextlib.suppress(Exception):
                await conn.close()
        self._leases.clear()
        if self._pool is not None:
            await self._pool.close()


# -- SQLite --------------------------------------------------------------------------------


class _SqliteTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = await self._conn.execute(_sqlite_sql(sql), params)
        return int(cur.rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(_sqlite_sql(sql), rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async with self._conn.execute(_sqlite_sql(sql), params) as cur:
            row = await cur.fetchone()
        return None if row is None else tuple(row)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._conn.execute(_sqlite_sql(sql), params) as cur:
            return [tuple(r) for r in await cur.fetchall()]


def _sqlite_sql(sql: str) -> str:
    return sql.replace("%s", "?").replace(" FOR UPDATE", "")


_SQLITE_TYPES = [
    (re.compile(r"\bbigserial PRIMARY KEY\b"), "INTEGER PRIMARY KEY AUTOINCREMENT"),
    (re.compile(r"\b(double precision)\b"), "REAL"),
    (re.compile(r"\b(bigint|smallint|integer|boolean)\b"), "INTEGER"),
]


def sqlite_ddl(sql: str) -> str:
    """Migrations are written for PostgreSQL; these are the only types SQLite needs changed."""
    for pattern, replacement in _SQLITE_TYPES:
        sql = pattern.sub(replacement, sql)
    return sql


class SqliteDatabase:
    """Embedded mode: one connection, one transaction at a time (SQLite has one writer)."""

    dialect = "sqlite"

    def __init__(self, url: str, path: str) -> None:
        self.url = url
        self.path = path
        self.health = Reachability()  # a local file: never unreachable
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        import aiosqlite

        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        await self._conn.execute("PRAGMA journal_mode=WAL")
        await self._conn.execute("PRAGMA foreign_keys=ON")
        await self._conn.execute("PRAGMA busy_timeout=5000")

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[Tx]:
        import sqlite3

        async with self._lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.OperationalError as exc:
                raise DatabaseUnavailable(str(exc)) from None
            try:
                yield _SqliteTx(self._conn)
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            else:
                await self._conn.execute("COMMIT")

    async def ping(self) -> None:
        async with self.transaction(write=False) as tx:
            await tx.fetchone("SELECT 1")

    async def try_lead(self, name: str) -> bool:
        """One process owns an embedded database: it always leads."""
        return True

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
