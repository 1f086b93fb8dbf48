"""One tiny async database interface over PostgreSQL (psycopg 3 pool) and SQLite.

The store writes its SQL once, with ``%s`` placeholders; the SQLite adapter rewrites
them to ``?`` and drops ``FOR UPDATE``. Every write runs in a transaction that first
locks the single ``ring_state`` row (PostgreSQL) or takes SQLite's write lock
(``BEGIN IMMEDIATE``), so writers are serialized and none can lose another's update.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import zlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = ["Database", "DatabaseUnavailable", "Tx", "open_database"]

Row = tuple[Any, ...]
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class DatabaseUnavailable(Exception):
    """The database cannot be reached (or failed mid-transaction): try again later."""


class Tx(Protocol):
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...


class Database(Protocol):
    dialect: str
    url: str

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
    dialect = "postgres"

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self._pool: Any = None
        self._leases: dict[str, Any] = {}

    async def open(self) -> None:
        import psycopg
        from psycopg_pool import AsyncConnectionPool

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
        self._pool = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=8,
            kwargs=kwargs,
            open=False,
            check=AsyncConnectionPool.check_connection,
            timeout=5,
        )
        await self._pool.open(wait=False)

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[Tx]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            async with self._pool.connection() as conn, conn.transaction():
                if not write:
                    await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield _PgTx(conn)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise DatabaseUnavailable(_first_line(exc)) from None

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
