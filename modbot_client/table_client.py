"""``RoutingTableClient``: the routing table in process memory, kept current.

Lookups never wait on I/O: ``client.table`` is a plain attribute holding an immutable
:class:`~modbot_ring.RoutingTable`, swapped in one assignment when a newer version
arrives. Updates come from, in order of speed:

1. Redis pub/sub (``{prefix}:table:changes``), then the table from ``{prefix}:table``;
2. with no Redis configured: an HTTP long-poll of the config service (``?wait=``);
3. a version poll every ``poll_interval`` seconds, the backstop for lost messages
   (pub/sub is fire-and-forget). When Redis fails, the poll reads the config service
   instead, and Redis is retried until it answers again.

Through all of it the last good table keeps serving; ``age`` says how long ago it
was last confirmed current, and ``status()`` feeds ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Gauge

from modbot_ring import RoutingTable, TableFormatError

from .redis_keys import changes_channel, table_key

__all__ = ["NoTableYet", "RoutingTableClient"]

log = logging.getLogger("modbot.table_client")

Listener = Callable[[RoutingTable, RoutingTable | None], None]

# seconds between config service checks while Redis serves the table (liveness only)
CONFIG_CHECK_INTERVAL = 5.0


class NoTableYet(LookupError):
    """No routing table has been loaded yet."""


class RoutingTableClient:
    def __init__(
        self,
        *,
        redis_url: str = "",
        redis_prefix: str = "modbot",
        config_url: str = "",
        read_token: str = "",
        poll_interval: float = 1.0,
        long_poll: float = 25.0,
    ) -> None:
        if not redis_url and not config_url:
            raise ValueError(
                "a RoutingTableClient needs a Redis URL, a config service URL, or both"
            )
        self.redis_url = redis_url
        self.redis_prefix = redis_prefix
        self.config_url = config_url.rstrip("/")
        self.read_token = read_token
        self.poll_interval = poll_interval
        self.long_poll = long_poll
        self.table: RoutingTable | None = None
        self.confirmed_at: float | None = None
        self.redis_ok: bool | None = None if not redis_url else False
        self.config_ok: bool | None = None if not config_url else False
        self.last_error = ""
        self._listeners: list[Listener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._redis: Any = None
        self._http: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._config_checked_at: float | None = None

    # -- reading (never blocks) ----------------------------------------------------------

    @property
    def version(self) -> int | None:
        return None if self.table is None else self.table.version

    @property
    def age(self) -> float | None:
        """Seconds since the table was last confirmed current by any source."""
        return None if self.confirmed_at is None else time.monotonic() - self.confirmed_at

    def owner(self, guild_id: int) -> str:
        table = self.table
        if table is None:
            raise NoTableYet("no routing table loaded yet")
        return table.owner(guild_id)

    def status(self) -> dict[str, Any]:
        age = self.age
        return {
            "table_version": self.version,
            "table_age": None if age is None else round(age, 3),
            "redis": "disabled" if self.redis_ok is None else ("ok" if self.redis_ok else "down"),
            "config_service": "disabled"
            if self.config_ok is None
            else ("ok" if self.config_ok else "down"),
            "degraded": bool(self.redis_url) and not self.redis_ok,
            **({"last_error": self.last_error} if self.last_error else {}),
        }

    def subscribe(self, listener: Listener) -> None:
        """``listener(new, old)`` runs on the event loop after each swap."""
        self._listeners.append(listener)

    def register_metrics(self, registry: CollectorRegistry, namespace: str) -> None:
        Gauge(
            f"{namespace}_table_version",
            "Version of the routing table held in memory (-1: none yet).",
            registry=registry,
        ).set_function(lambda: float(self.version if self.version is not None else -1))
        Gauge(
            f"{namespace}_table_age_seconds",
            "Seconds since the routing table in memory was confirmed current (-1: never).",
            registry=registry,
        ).set_function(lambda: float(self.age if self.age is not None else -1))
        up = Gauge(
            f"{namespace}_table_source_up",
            "1 when a configured routing-table source answers, 0 when it does not.",
            ["source"],
            registry=registry,
        )
        # a source deliberately not configured is not exported: a 0 would page someone
        if self.redis_url:
            up.labels("redis").set_function(lambda: 1.0 if self.redis_ok else 0.0)
        if self.config_url:
            up.labels("config").set_function(lambda: 1.0 if self.config_ok else 0.0)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start following; with ``wait``, return once a table is loaded (or raise TimeoutError)."""
        if self.redis_url:
            import redis.asyncio as redis

            self._redis = redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=2)
            self._tasks.append(asyncio.create_task(self._follow_redis(), name="table-redis"))
        if self.config_url:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=3)
            )
            if not self.redis_url:
                self._tasks.append(
                    asyncio.create_task(self._follow_long_poll(), name="table-long-poll")
                )
        self._tasks.append(asyncio.create_task(self._poll(), name="table-poll"))
        if wait:
            await self.wait_for_version(0, timeout)

    async def stop(self) -> None:
        """Stop following. Bounded: a dead Redis or config service cannot hang shutdown."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._tasks.clear()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._redis.aclose(), 2)
        if self._http is not None:
            await self._http.close()

    async def wait_for_version(self, version: int, timeout: float) -> RoutingTable:
        """Wait until the table in memory has at least ``version``."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(
                    lambda: self.table is not None and self.table.version >= version
                ),
                timeout,
            )
        assert self.table is not None
        return self.table

    async def refresh(self) -> None:
        """Check every source once now (what the poll does). While Redis serves, the
        config service is still asked now and then (a conditional GET, usually a 304),
        so ``config_service`` in readiness bodies reports what is true, not "down"."""
        if self._redis is not None and await self._refresh_from_redis():
            due = self._config_checked_at is None or (
                time.monotonic() - self._config_checked_at >= CONFIG_CHECK_INTERVAL
            )
            if self._http is None or not due:
                return
        if self._http is not None:
            self._config_checked_at = time.monotonic()
            await self._refresh_from_config(wait=0)

    # -- sources -------------------------------------------------------------------------------

    async def _follow_redis(self) -> None:
        backoff = 0.2
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(changes_channel(self.redis_prefix))
                await self._refresh_from_redis()  # anything published before we subscribed
                backoff = 0.2
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is None:
                        continue
                    try:
                        announced = int(message["data"])
                    except (TypeError, ValueError):
                        continue
                    if self.version is None or announced > self.version:
                        await self._refresh_from_redis()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._source_failed("redis", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1)

    async def _refresh_from_redis(self) -> bool:
        """True when Redis answered (whether or not the table changed)."""
        try:
            key = table_key(self.redis_prefix)
            raw_version = await self._redis.hget(key, "version")
            if raw_version is None:
                self._source_ok("redis")
                return False  # nothing published yet: let the config service answer
            if self.version is None or int(raw_version) > self.version:
                raw = await self._redis.hget(key, "json")
                if raw is not None:
                    await self._apply(raw, "redis")
            self._source_ok("redis")
            self.confirmed_at = time.monotonic()
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._source_failed("redis", exc)
            return False

    async def _follow_long_poll(self) -> None:
        while True:
            if not await self._refresh_from_config(wait=self.long_poll):
                await asyncio.sleep(self.poll_interval)

    async def _refresh_from_config(self, wait: float) -> bool:
        assert self._http is not None
        headers = {"Accept": "application/json"}
        if self.read_token:
            headers["Authorization"] = f"Bearer {self.read_token}"
        if self.version is not None:
            headers["If-None-Match"] = f'"{self.version}"'
        try:
            async with self._http.get(
                f"{self.config_url}/v1/table",
                params={"wait": str(wait)} if wait else None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=wait + 5),
            ) as resp:
                if resp.status == 200:
                    await self._apply(await resp.read(), "config")
                elif resp.status != 304:
                    raise RuntimeError(
                        f"config service answered {resp.status}: {(await resp.text())[:200]}"
                    )
            self._source_ok("config")
            self.confirmed_at = time.monotonic()
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._source_failed("config", exc)
            return False

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.refresh()
            await asyncio.sleep(self.poll_interval)

    # -- swapping ------------------------------------------------------------------------------

    async def _apply(self, raw: bytes | str, source: str) -> None:
        async with self._lock:
            try:
                table = await asyncio.to_thread(RoutingTable.from_json, raw)
            except TableFormatError as exc:
                self.last_error = f"{source} served a bad table: {exc}"
                log.error("ignoring a bad routing table from %s: %s", source, exc)
                return
            old = self.table
            if old is not None and table.version <= old.version:
                return
            self.table = table
            self.confirmed_at = time.monotonic()
        log.info("routing table v%s from %s", table.version, source)
        for listener in self._listeners:
            try:
                listener(table, old)
            except Exception:
                log.exception("routing table listener failed")
        async with self._changed:
            self._changed.notify_all()

    def _source_ok(self, source: str) -> None:
        if source == "redis":
            if self.redis_ok is False and self.table is not None:
                log.info("redis is back")
            self.redis_ok = True
        else:
            self.config_ok = True
        self.last_error = ""

    def _source_failed(self, source: str, exc: BaseException) -> None:
        message = f"{source}: {type(exc).__name__}: {exc}"[:300]
        if source == "redis":
            if self.redis_ok:
                log.warning("redis unavailable, serving the last table: %s", exc)
            self.redis_ok = False
        else:
            self.config_ok = False
        self.last_error = message
