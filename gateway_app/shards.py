"""Keeps this pod's gateway sessions equal to ``table.shards_for(pod)``, touching only what
changed, and spends Discord's IDENTIFY budget the way Discord allows.

**Targeted changes.** A new table opens only the shards it adds and closes only the ones it
removes; every other session keeps its connection (no reconnect, no RESUME, no IDENTIFY).
Added shards are opened first and removed ones closed once the added ones are ready (or
``ready_timeout`` passed), so a shard moving between pods is covered throughout. Only a
change of ``shard_count`` reopens everything: a session is bound to ``[shard, count]``.

**A table keyed by guild id** (``shard_count`` None) has no shard owners: any pod may own
guilds on every shard, and Discord delivers a guild's events only to sessions of its shard.
So every pod in such a table opens *every* shard of the bot, counted as Discord recommends
(``GET /gateway/bot`` ``shards``, read once per process, retried with backoff until it
answers), and processes only the events of guilds it owns, as with pins. Several sessions
per ``[shard, count]`` are allowed; the cost is pods x shards sessions (IDENTIFYs on every
start, and each pod receives every event), so large bots should key by shard.

**One discord.py client per shard**, not one ``AutoShardedClient`` whose shard set is
edited. discord.py fixes a client's shards at construction; editing them means writing its
name-mangled shard map and state (``_AutoShardedClient__shards``,
``_connection.shard_ids``). Measured with ``benchmarks/shard_change_bench.py`` (8 shards
opened one by one, 5 interleaved rounds, medians; discord.py 2.7.1, 2 cores, loopback
simulator): open-to-ready 218 ms per shard against 222 ms for a shard added to a shared
client (0.98x: both are IDENTIFY + READY + guild_ready_timeout); 2 REST calls per opened
shard against 0.25 (each client logs in: ``/users/@me``, ``/oauth2/applications/@me``);
RSS growth 0.12 MB against 0.06 MB for all 8 (noise level); and after one shard is closed
with 4014, 7 of 8 sessions still connected against 0 of 8. What decides it:

* isolation: in a shared client, one shard closed with a non-resumable code (4004,
  4010-4014) or one unexpected error closes the *whole* client (``AutoShardedClient.connect``
  treats any shard's close as the client's). Per shard, only that shard restarts, with
  backoff, and nothing else reconnects;
* no private API for opening and closing: ``Client.start`` and ``Client.close`` are
  public, so a discord.py upgrade cannot silently break shard changes;
* a shard's session (for RESUME) is its client's, so a restart can resume each shard
  independently.

**IDENTIFY budget** (:class:`IdentifyGate`, called by discord.py's ``before_identify_hook``
for every IDENTIFY, including re-identifies after INVALID_SESSION): before each IDENTIFY
the pod reads ``session_start_limit`` from ``GET /gateway/bot`` (public
``fetch_session_start_limits``; IDENTIFYs are rare, so this costs one cheap request each).
With ``remaining`` at or below ``SESSION_START_RESERVE`` it waits ``reset_after`` (logged,
and ``modbot_gateway_identify_blocked_seconds`` > 0) instead of IDENTIFYing: Discord resets
the token of a bot that goes over. Otherwise it takes the shard's bucket
(``shard_id % max_concurrency``), one IDENTIFY per bucket per 5 s (plus a small margin for
transit). The gate is per pod: pods do not coordinate, so two pods identifying in the same
bucket at once get INVALID_SESSION for one of them, which discord.py answers by identifying
again through the gate (5 s later). Several pods may also race for the last session starts;
the reserve keeps that race away from the lockout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from modbot_ring import RoutingTable
from modbot_ring.table import MAX_SHARD_COUNT

log = logging.getLogger("modbot.gateway.shards")

IDENTIFY_WINDOW = 5.0  # Discord: max_concurrency IDENTIFYs per 5 seconds, per bucket
IDENTIFY_MARGIN = 0.25  # Discord measures on arrival; this covers the IDENTIFY's transit
SESSION_START_RESERVE = 3  # never spend the last few: pods read the budget independently
EXHAUSTED_RECHECK = 60.0  # while waiting for a reset, re-read the budget at least this often

ShardKey = tuple[int | None, tuple[int, ...]]


@dataclass(frozen=True)
class SessionStartLimit:
    """``session_start_limit`` of ``GET /gateway/bot`` (``reset_after`` in milliseconds)."""

    total: int
    remaining: int
    reset_after: int
    max_concurrency: int


FetchLimits = Callable[[], Awaitable[Any]]  # -> anything with SessionStartLimit's attributes


class ShardClient(Protocol):
    """What the supervisor needs of ``make_client``'s product (bot.GatewayClient)."""

    ready_shards: set[int]
    identify_gate: Callable[[Any, int | None], Awaitable[None]] | None
    shard_connect_timeout: float | None

    async def start(self, token: str) -> None: ...

    async def close(self) -> None: ...

    async def fetch_session_start_limits(self) -> Any: ...


class IdentifyGate:
    """Lets an IDENTIFY go only when Discord's limits allow it; see the module docstring."""

    def __init__(
        self,
        *,
        window: float = IDENTIFY_WINDOW + IDENTIFY_MARGIN,
        reserve: int = SESSION_START_RESERVE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.window = window
        self.reserve = reserve
        self.clock = clock
        self.sleep = sleep
        self.limits: SessionStartLimit | None = None
        self.granted = 0
        self.bucket_waits = 0
        self.exhausted_waits = 0
        self.fetch_failures = 0
        self.blocked_until: float | None = None  # clock() when the budget should refill
        self._next: dict[int, float] = {}  # bucket -> earliest next IDENTIFY
        self._locks: dict[int, asyncio.Lock] = {}

    @property
    def blocked_seconds(self) -> float:
        """Seconds left waiting for session starts to reset (0: not blocked)."""
        if self.blocked_until is None:
            return 0.0
        return max(0.0, self.blocked_until - self.clock())

    async def _fetch(self, fetch: FetchLimits) -> SessionStartLimit:
        delay = 1.0
        while True:
            try:
                raw = await fetch()
                self.limits = SessionStartLimit(
                    int(raw.total),
                    int(raw.remaining),
                    int(raw.reset_after),
                    int(raw.max_concurrency),
                )
                return self.limits
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Identifying blind could spend the last session start: wait for the budget.
                self.fetch_failures += 1
                log.warning("GET /gateway/bot failed (%s); retrying in %.0fs", exc, delay)
                await self.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def acquire(self, shard_id: int, fetch: FetchLimits) -> None:
        """Return when shard ``shard_id`` may IDENTIFY now (and count it as done)."""
        while True:
            limits = await self._fetch(fetch)
            if limits.remaining <= self.reserve:
                wait = max(1.0, limits.reset_after / 1000)
                self.blocked_until = self.clock() + wait
                self.exhausted_waits += 1
                log.warning(
                    "session starts exhausted (%s of %s left, reserve %s): shard %s waits "
                    "%.0fs for the reset instead of identifying",
                    limits.remaining,
                    limits.total,
                    self.reserve,
                    shard_id,
                    wait,
                )
                await self.sleep(min(wait, EXHAUSTED_RECHECK))
                continue
            self.blocked_until = None
            bucket = shard_id % max(1, limits.max_concurrency)
            lock = self._locks.setdefault(bucket, asyncio.Lock())
            async with lock:
                delay = self._next.get(bucket, 0.0) - self.clock()
                if delay > 0:
                    self.bucket_waits += 1
                    log.info("shard %s waits %.1fs for IDENTIFY bucket %s", shard_id, delay, bucket)
                    await self.sleep(delay)
                    continue  # the budget may have changed meanwhile: read it again
                self._next[bucket] = self.clock() + self.window
                self.granted += 1
                return


@dataclass
class ShardSession:
    """One shard's client and the task that keeps it running."""

    shard: int
    count: int
    client: ShardClient | None = None
    task: asyncio.Task[None] | None = None
    closing: bool = False
    restarts: int = 0
    since: float = field(default_factory=time.monotonic)

    @property
    def ready(self) -> bool:
        return self.client is not None and self.shard in self.client.ready_shards


class ShardSupervisor:
    def __init__(
        self,
        pod: str,
        token: str,
        make_client: Callable[[list[int], int], Any],
        *,
        ready_timeout: float = 30.0,
        gate: IdentifyGate | None = None,
        restart_delay: float = 1.0,
        bot_shard_count: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.pod = pod
        self.token = token
        self.make_client = make_client
        self.ready_timeout = ready_timeout
        self.gate = gate or IdentifyGate()
        self.restart_delay = restart_delay
        self.fetch_bot_shard_count = bot_shard_count
        self.bot_shard_count: int | None = None  # Discord's count, for guild-keyed tables
        self.sessions: dict[int, ShardSession] = {}
        self.shard_count: int | None = None
        self.key: ShardKey = (None, ())
        self.handovers = 0  # shard-set changes applied
        self.opened = 0
        self.closed = 0
        self.restarts = 0
        self._lock = asyncio.Lock()
        self._latest: RoutingTable | None = None
        self._pending: asyncio.Task[None] | None = None

    # -- following the table ------------------------------------------------------------------

    def follow(self, table: RoutingTable) -> None:
        """Routing-table listener: converge on the newest table, one change at a time."""
        self._latest = table
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._converge())

    async def _converge(self) -> None:
        async with self._lock:
            while self._latest is not None:
                table, self._latest = self._latest, None
                try:
                    await self.apply(table)
                except Exception:
                    log.exception("could not apply the shard set of table v%s", table.version)

    def wanted(self, table: RoutingTable) -> ShardKey:
        """(session shard count, shard ids) this pod should have open for ``table``."""
        if table.shard_count is not None:
            return table.shard_count, table.shards_for(self.pod)
        if self.pod in table.pods and self.bot_shard_count is not None:
            return self.bot_shard_count, tuple(range(self.bot_shard_count))
        return None, ()

    async def _learn_bot_shard_count(self) -> None:
        """Discord's shard count for the whole bot (guild-keyed tables need every shard)."""
        fetch, delay = self.fetch_bot_shard_count, 1.0
        if fetch is None:
            log.warning(
                "table keys by guild id and %s has no way to ask Discord for the shard "
                "count: no gateway sessions",
                self.pod,
            )
            return
        while self.bot_shard_count is None:
            try:
                count = await fetch()
                if type(count) is not int or not 1 <= count <= MAX_SHARD_COUNT:
                    raise ValueError(f"invalid shard count {count!r}")
            except Exception as exc:  # Discord down, refusing or garbled: ask again later
                log.warning("GET /gateway/bot failed (%s); retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            self.bot_shard_count = count

    async def apply(self, table: RoutingTable) -> None:
        if table.shard_count is None and self.pod in table.pods and self.bot_shard_count is None:
            await self._learn_bot_shard_count()
        key = self.wanted(table)
        if key == self.key:
            return
        count, shards = key
        wanted = set(shards) if count is not None else set()
        replaced: list[ShardSession] = []
        if count != self.shard_count:  # sessions are bound to [shard, count]: reopen all
            replaced, self.sessions = list(self.sessions.values()), {}
            self.shard_count = count
        added = sorted(wanted - set(self.sessions))
        removed = sorted(set(self.sessions) - wanted)
        log.info(
            "shards for %s (table v%s, %s shards): open %s, close %s, keep %s",
            self.pod,
            table.version,
            count,
            added,
            removed,
            sorted(set(self.sessions) & wanted),
        )
        assert count is not None or not added
        for shard in added:
            self.sessions[shard] = self._open(shard, count or 1)
        self.key = key
        self.handovers += 1
        self.opened += len(added)
        await self._wait_ready(added)
        closing = replaced + [self.sessions.pop(s) for s in removed]
        self.closed += len(closing)
        await asyncio.gather(*(self._close(s) for s in closing))

    # -- one shard ------------------------------------------------------------------------------

    def _open(self, shard: int, count: int) -> ShardSession:
        session = ShardSession(shard, count)
        session.task = asyncio.create_task(self._run(session), name=f"shard-{shard}-of-{count}")
        return session

    async def _before_identify(self, client: ShardClient, shard_id: int | None) -> None:
        await self.gate.acquire(shard_id or 0, client.fetch_session_start_limits)

    async def _run(self, session: ShardSession) -> None:
        """Keep one shard's client running until it is closed on purpose. discord.py
        reconnects and resumes by itself; this restarts the client only when discord.py
        gives up (a non-resumable close code or an unexpected error), with backoff."""
        delay = self.restart_delay
        while not session.closing:
            client = self.make_client([session.shard], session.count)
            client.identify_gate = self._before_identify
            # The gate may hold an IDENTIFY for hours (session starts used up); discord.py's
            # 180 s launch timeout would turn that into a retry loop. Connecting and HELLO
            # keep their own timeouts (aiohttp's, the heartbeat timeout).
            client.shard_connect_timeout = None
            session.client = client
            try:
                await client.start(self.token)
                if session.closing:
                    return
                log.warning("shard %s: client stopped by itself; restarting", session.shard)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if session.closing:
                    return
                log.warning(
                    "shard %s: client failed (%s: %s); restarting in %.0fs",
                    session.shard,
                    type(exc).__name__,
                    exc,
                    delay,
                )
            finally:
                with contextlib.suppress(Exception):
                    await client.close()
            session.restarts += 1
            self.restarts += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def _close(self, session: ShardSession) -> None:
        session.closing = True
        if session.ready and session.client is not None:
            with contextlib.suppress(Exception):
                await session.client.close()
            if session.task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(asyncio.shield(session.task), 5)
        if session.task is not None and not session.task.done():
            # Still logging in or waiting for the IDENTIFY gate. The client is closed first:
            # a cancellation that lands in discord.py's re-IDENTIFY (after INVALID_SESSION)
            # is swallowed there, and its loop then waits for the item close() queues.
            if session.client is not None:
                with contextlib.suppress(Exception):
                    await session.client.close()
            session.task.cancel()
            await asyncio.wait({session.task}, timeout=5)  # never wait on it for good
        if session.client is not None:
            with contextlib.suppress(Exception):
                await session.client.close()

    async def _wait_ready(self, shards: list[int]) -> None:
        if not shards:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        waiting = [self.sessions[s] for s in shards if s in self.sessions]
        while any(not s.ready for s in waiting) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        late = [s.shard for s in waiting if not s.ready]
        if late:
            log.warning(
                "shards %s not ready after %ss; closing the removed ones anyway%s",
                late,
                self.ready_timeout,
                " (waiting for session starts to reset)" if self.gate.blocked_seconds else "",
            )

    # -- state ------------------------------------------------------------------------------------

    @property
    def clients(self) -> dict[int, Any]:
        """shard id -> its current discord.py client."""
        return {s: x.client for s, x in self.sessions.items() if x.client is not None}

    def converged(self, table: RoutingTable) -> bool:
        """The sessions match ``table`` and every one of them is ready."""
        if self.key != self.wanted(table):
            return False
        if table.shard_count is None and self.pod in table.pods and self.bot_shard_count is None:
            return False  # still asking Discord how many shards there are
        return all(s.ready for s in self.sessions.values())

    @property
    def connected_shards(self) -> list[int]:
        return sorted(s for s, x in self.sessions.items() if x.ready)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        registry.register(_ShardMetrics(self))

    async def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        sessions, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(self._close(s) for s in sessions))


class _ShardMetrics(Collector):
    """Shard changes and the IDENTIFY budget, read at scrape time."""

    def __init__(self, supervisor: ShardSupervisor) -> None:
        self.s = supervisor

    def collect(self) -> Iterator[Any]:
        s, gate = self.s, self.s.gate
        for name, doc, value in (
            (
                "modbot_gateway_shards_opened",
                "Shard sessions opened because the routing table changed.",
                s.opened,
            ),
            (
                "modbot_gateway_shards_closed",
                "Shard sessions closed because the routing table changed.",
                s.closed,
            ),
            (
                "modbot_gateway_shard_restarts",
                "Shard clients restarted after they failed.",
                s.restarts,
            ),
            (
                "modbot_gateway_identifies",
                "IDENTIFYs the gate let through to Discord.",
                gate.granted,
            ),
            (
                "modbot_gateway_identify_bucket_waits",
                "IDENTIFYs that waited for their max_concurrency bucket.",
                gate.bucket_waits,
            ),
            (
                "modbot_gateway_identify_exhausted_waits",
                "Times an IDENTIFY waited because the session starts were used up.",
                gate.exhausted_waits,
            ),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "modbot_gateway_identify_blocked_seconds",
            "Seconds until session starts reset while IDENTIFYs wait for it (0: not blocked).",
            value=gate.blocked_seconds,
        )
        remaining = gate.limits.remaining if gate.limits is not None else -1
        yield GaugeMetricFamily(
            "modbot_gateway_session_starts_remaining",
            "Session starts left (session_start_limit.remaining) at the last GET /gateway/bot; -1: not read yet.",
            value=remaining,
        )


def gateway_bot_shards(api_url: str, token: str) -> Callable[[], Awaitable[int]]:
    """A fetcher of the bot's recommended shard count (``GET /gateway/bot`` ``shards``), for
    pods of a guild-keyed table. Public REST, not discord.py's private ``get_bot_gateway``."""

    async def fetch() -> int:
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(
                f"{api_url.rstrip('/')}/gateway/bot", headers={"Authorization": f"Bot {token}"}
            ) as resp,
        ):
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            body = await resp.json(content_type=None)
        if not isinstance(body, dict):
            raise ValueError("GET /gateway/bot did not answer an object")
        shards: int = body.get("shards")  # type: ignore[assignment]  # checked by the caller
        return shards

    return fetch
