"""Keeps the config service's in-memory snapshot current and announces each version.

Sources of "something changed": this replica's own writes (immediately), PostgreSQL
NOTIFY from other replicas, and a version poll as the backstop for anything missed.
Announcing = updating the snapshot served at ``/v1/table`` (waking long-polls) and,
when Redis is configured, a compare-and-set write plus PUBLISH: a replica that is late
can never roll Redis back to an older table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from modbot_client.redis_keys import changes_channel, table_key
from modbot_ring import RoutingTable

from .store import Store, StoreError

log = logging.getLogger("modbot.config.publisher")

# KEYS[1] table hash, KEYS[2] channel; ARGV[1] version, ARGV[2] json
_PUBLISH_IF_NEWER = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'json', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""


class Snapshot:
    """The current table with its serialized form, built once per version."""

    def __init__(self, table: RoutingTable) -> None:
        self.table = table
        self.version = table.version
        self.json = table.to_json().encode()
        self.etag = f'"{table.version}"'
        self.loaded_at = time.time()


class TablePublisher:
    def __init__(
        self,
        store: Store,
        *,
        redis_url: str = "",
        redis_prefix: str = "modbot",
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.snapshot: Snapshot | None = None
        self.redis_url = redis_url
        self.redis_prefix = redis_prefix
        self.redis_ok: bool | None = None if not redis_url else False
        self.poll_interval = poll_interval
        self._redis: Any = None
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._published_version = -1
        self._closing = False
        store.on_change(lambda _version: self._wake.set())

    async def start(self) -> None:
        if self.redis_url:
            import redis.asyncio as redis

            self._redis = redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=2)
        with contextlib.suppress(StoreError):
            await self.refresh()
        self._tasks = [asyncio.create_task(self._run(), name="table-publisher")]
        if self.store.db.dialect == "postgres":
            self._tasks.append(asyncio.create_task(self._listen(), name="table-listen"))

    async def release_waiters(self) -> None:
        """Let long-polls answer now (304): the server is shutting down."""
        self._closing = True
        async with self._changed:
            self._changed.notify_all()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._redis.aclose(), 2)

    async def refresh(self) -> Snapshot | None:
        """Reload the snapshot if the store moved on; announce it. Raises StoreError."""
        version = await self.store.version()
        if self.snapshot is None or version > self.snapshot.version:
            table = await self.store.table()
            snapshot = await asyncio.to_thread(Snapshot, table)
            if self.snapshot is None or snapshot.version > self.snapshot.version:
                self.snapshot = snapshot
                async with self._changed:
                    self._changed.notify_all()
        await self._publish_redis()
        return self.snapshot

    async def wait_newer(self, version: int, timeout: float) -> Snapshot | None:
        """The snapshot once it is newer than ``version``, or None after ``timeout``."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(
                        lambda: (
                            self._closing
                            or (self.snapshot is not None and self.snapshot.version > version)
                        )
                    ),
                    timeout,
                )
        if self.snapshot is not None and self.snapshot.version > version:
            return self.snapshot
        return None

    async def _publish_redis(self) -> None:
        if self._redis is None or self.snapshot is None:
            return
        snap = self.snapshot
        if snap.version <= self._published_version and self.redis_ok:
            return
        try:
            await self._redis.eval(
                _PUBLISH_IF_NEWER,
                2,
                table_key(self.redis_prefix),
                changes_channel(self.redis_prefix),
                snap.version,
                snap.json,
            )
            self._published_version = snap.version
            if not self.redis_ok:
                log.info("redis reachable: table v%s published", snap.version)
            self.redis_ok = True
        except Exception as exc:  # redis down: the snapshot is still served over HTTP
            if self.redis_ok is not False:
                log.warning("redis unreachable, table not cached there: %s", exc)
            self.redis_ok = False

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()
            try:
                await self.refresh()
            except StoreError as exc:
                log.debug("refresh failed: %s", exc)
            except Exception:
                log.exception("refresh failed")

    async def _listen(self) -> None:
        """Wake on NOTIFY from any replica's commit (PostgreSQL only)."""
        import psycopg

        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.store.db.url, autocommit=True, connect_timeout=5
                )
                async with conn:
                    await conn.execute(f'LISTEN "{self.store.channel}"')
                    self._wake.set()  # catch up on anything missed while not listening
                    async for _ in conn.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("listen connection lost: %s", exc)
                await asyncio.sleep(1.0)
