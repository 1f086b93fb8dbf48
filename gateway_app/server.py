"""A gateway pod: register, heartbeat, follow the table, hold the owned shards, serve.

``modbot-ring serve gateway`` runs one; :class:`Pod` is the same thing as an object,
for the local stack and in-process tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import logging
import sqlite3
import sys
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from modbot_client.config_api import ConfigApi, ConfigApiError
from modbot_client.table_client import RoutingTableClient
from modbot_ring import shard_for
from modbot_runtime.observability import add_health_routes, setup_logging

from . import features, identity
from .api import MAX_BODY, Handler, add_routes, internal_auth
from .bot import CommandClient, GatewayClient, LoadMeter, RecentEvents
from .commands_sync import sync_at_start
from .discordpy import GatewayPosition, point_at
from .events import GatewayEvent
from .gate import GuildGate
from .migration_api import add_routes as add_migration_routes
from .monolith_api import add_routes as add_monolith_routes
from .ownership import Ownership
from .podview import POD_KEY, PodMetrics
from .retention import Retention, RetentionPolicy
from .settings import PodSettings
from .shards import ShardSupervisor, gateway_bot_shards
from .storage import GuildStore, SessionMark, StorageError, StorageUnavailable, check_database

__all__ = ["Pod", "PodSettings", "StoreCollector", "run", "serve"]

log = logging.getLogger("modbot.gateway")

TOP_GUILDS = 50
DISK_CHECK_INTERVAL = 1.0  # seconds between disk-pressure checks while nothing is written


class StoreCollector:
    """The batch writer's health as metrics: failed commits (every retry counts) and the
    writes waiting to be committed; the database's and its volume's bytes."""

    def __init__(self, store: GuildStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "modbot_gateway_write_failures",
            "SQLite batch commits that failed or were refused for lack of disk space"
            " (each retry counts).",
            value=self.store.write_failures,
        )
        yield CounterMetricFamily(
            "modbot_gateway_writes_refused",
            "Batch commits and direct writes refused because the volume's headroom was"
            " below the disk reserve (nothing was acknowledged).",
            value=self.store.writes_refused,
        )
        yield GaugeMetricFamily(
            "modbot_gateway_disk_pressure",
            "1 while this pod refuses new writes because its volume is nearly full.",
            value=1.0 if self.store.pressure is not None else 0.0,
        )
        disk = self.store.disk_state()
        if disk is not None:
            yield GaugeMetricFamily(
                "modbot_gateway_database_bytes",
                "Bytes of this pod's SQLite database on its volume (file plus write-ahead log).",
                value=disk.database,
            )
            yield GaugeMetricFamily(
                "modbot_gateway_database_free_bytes",
                "Bytes of free pages inside the database file, reused before the file grows.",
                value=disk.database_free,
            )
            yield GaugeMetricFamily(
                "modbot_gateway_volume_size_bytes",
                "Bytes of the volume holding the database (used plus available, as df).",
                value=disk.volume_size,
            )
            yield GaugeMetricFamily(
                "modbot_gateway_volume_free_bytes",
                "Bytes still available on the volume holding the database.",
                value=disk.volume_free,
            )
            yield GaugeMetricFamily(
                "modbot_gateway_disk_reserve_bytes",
                "Headroom (volume free plus database free pages) below which writes are refused.",
                value=disk.threshold if self.store.guarded else 0,
            )
        # cumulative, so a counter (until 0.1.0 it was the gauge modbot_gateway_rows_written)
        yield CounterMetricFamily(
            "modbot_gateway_rows_written",
            "Rows committed to SQLite by the batch writer.",
            value=self.store.rows_written,
        )
        yield GaugeMetricFamily(
            "modbot_gateway_writes_pending",
            "Writes queued and not yet committed to SQLite.",
            value=self.store.backlog,
        )


@web.middleware
async def storage_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A failing disk is a 503 with the reason, never a bare 500 (the write is not lost:
    queued writes are retried, and a refused direct write was not acknowledged)."""
    try:
        return await handler(request)
    except StorageUnavailable as exc:
        return web.json_response({"error": str(exc)}, status=503, headers={"Retry-After": "1"})
    except sqlite3.OperationalError as exc:
        return web.json_response(
            {"error": f"storage failed: {exc}"}, status=503, headers={"Retry-After": "1"}
        )


class Pod:
    def __init__(self, settings: PodSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.registry = CollectorRegistry()
        self.metrics = PodMetrics(self.registry)
        self.store = GuildStore(
            settings.database,
            reserve_bytes=settings.disk_reserve_bytes,
            max_used=settings.disk_max_used,
        )
        self.retention = Retention(
            self.store,
            RetentionPolicy.from_settings(settings),
            self._may_prune,
            after_run=lambda: self.store.check_disk(refresh=True),  # freed pages count at once
        )
        self.load = LoadMeter()
        self.guild_bytes: dict[int, int] = {}
        self.recent = RecentEvents()
        self.table_client = RoutingTableClient(
            redis_url=settings.redis_url,
            redis_prefix=settings.redis_prefix,
            config_url=settings.config_url,
            read_token=settings.read_token or settings.admin_token,
            poll_interval=settings.table_poll,
        )
        self.ownership = Ownership(self.name, self.table_client)
        self.gate = GuildGate(self.ownership, self.store, self.load)
        self.commands = CommandClient(self.store)
        self.commands_ready = False
        self.shards = ShardSupervisor(
            self.name,
            settings.discord_token,
            self._gateway_client,
            bot_shard_count=gateway_bot_shards(settings.discord_api_url, settings.discord_token),
        )
        self.config = ConfigApi(settings.config_url, settings.admin_token)
        self._tasks: list[asyncio.Task[Any]] = []
        self._runner: web.AppRunner | None = None
        self.resume_from: dict[int, SessionMark] = {}  # shard -> committed position at start
        self._register_metrics()

    # -- the table and the gateway ---------------------------------------------------------------

    @property
    def table_version(self) -> int | None:
        return self.table_client.version

    def _gateway_client(self, shard_ids: list[int], shard_count: int) -> GatewayClient:
        return GatewayClient(
            shard_ids=shard_ids,
            shard_count=shard_count,
            handle=self._handle_event,
            recent=self.recent,
            identify_interval=self.settings.identify_interval,
            mark=self._mark,
            take_resume=self._take_resume,
        )

    def _handle_event(self, guild_id: int, event: GatewayEvent) -> str:
        """The gate decides; an event written here (owned, live) is also shown to the
        features that act on events (a honeypot's message: gateway_app/features/)."""
        outcome = self.gate.handle(guild_id, event)
        if outcome == "written":
            features.observe(self.commands, guild_id, event)
        return outcome

    def _mark(self, position: GatewayPosition) -> None:
        self.store.mark_session(
            SessionMark(
                position.shard_id,
                position.shard_count,
                position.session_id,
                position.sequence,
                position.resume_url,
            )
        )

    def _take_resume(self, shard_id: int, shard_count: int) -> GatewayPosition | None:
        """The committed position of a shard's last session, once per process: later
        clients of the same shard (hand-overs) start their own sessions."""
        mark = self.resume_from.pop(shard_id, None)
        if mark is None or mark.shard_count != shard_count:
            return None
        return GatewayPosition(
            mark.shard_id, mark.shard_count, mark.session_id, mark.sequence, mark.resume_url
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[internal_auth, storage_errors], client_max_size=MAX_BODY)
        app[POD_KEY] = self
        add_routes(app)
        add_migration_routes(app)
        add_monolith_routes(app)  # import-monolith: on the migration API too
        key = identity.identity_key_from(self.settings.identity_key, self.settings.internal_token)
        identity.install(app, key, self.settings.database)

        async def ready() -> tuple[bool, dict[str, Any]]:
            details: dict[str, Any] = {
                "pod": self.name,
                "commands": "ready" if self.commands_ready else "logging in",
                "shards": self.shards.connected_shards,
                **self.table_client.status(),
                # why writes fail or are refused, if they are: the pod acknowledges no
                # gateway event meanwhile (they are replayed by RESUME after a restart)
                "storage": self.store.unwritable or "ok",
                "writes_pending": self.store.backlog,
                "disk": self._disk_details(),
            }
            return self._ready_now(), details

        add_health_routes(app, self.registry, ready, component="gateway")
        return app

    async def start(self) -> None:
        s = self.settings
        point_at(s.discord_api_url, s.discord_gateway_url)
        await self.store.open()
        disk = await self.store.check_disk()
        if disk is not None and self.store.guarded and disk.threshold >= disk.volume_size:
            log.error(
                "the disk reserve (%d bytes) is not below the volume's size (%d bytes):"
                " every write will be refused (MODBOT_DISK_RESERVE_BYTES, MODBOT_DISK_MAX_USED)",
                disk.threshold,
                disk.volume_size,
            )
        self.resume_from = await self.store.sessions()
        await self.gate.load_fences()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, s.host, s.port).start()
        await self._register()
        self.table_client.subscribe(lambda table, _old: self.shards.follow(table))
        await self.table_client.start(timeout=60)
        assert self.table_client.table is not None
        self.shards.follow(self.table_client.table)
        self._tasks.append(asyncio.create_task(self._login_commands(), name="command-login"))
        self._tasks.append(asyncio.create_task(self._heartbeats(), name="heartbeats"))
        self._tasks.append(asyncio.create_task(self._measure_sizes(), name="guild-sizes"))
        self._tasks.append(asyncio.create_task(self._watch_disk(), name="disk-pressure"))
        self._tasks.append(asyncio.create_task(self.retention.run_forever(), name="retention"))
        self._tasks.append(asyncio.create_task(self._run_features(), name="features"))
        log.info("pod %s serving on %s", self.name, s.public_url)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.shards.stop()
        await self.table_client.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.commands.close()
        await self.store.close()
        await self.config.close()

    async def _run_features(self) -> None:
        """The features' background work (gateway_app/features/), for the guilds this pod
        owns and no migration freezes or holds here."""
        runtime = features.runtime_of(self.commands)
        runtime.can_act = lambda gid: self.ownership.owns(gid) and not self.gate.holding(gid)
        runtime.ready = lambda: self.commands_ready
        runtime.escalation_timeout = self.settings.escalation_timeout
        runtime.tick = self.settings.feature_tick
        try:
            await features.run(runtime)
        finally:
            await runtime.close()

    async def _login_commands(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.commands.login(self.settings.discord_token)
                # register the command list if Discord's differs (commands_sync.py), then ready
                await sync_at_start(self.settings.discord_api_url, self.settings.discord_token)
                self.commands_ready = True
                return
            except Exception as exc:
                log.warning("discord login failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def _register(self) -> None:
        delay = 0.2
        while True:
            try:
                await self.config.put(f"/v1/pods/{self.name}", {"url": self.settings.public_url})
                return
            except ConfigApiError as exc:
                if exc.status in (400, 401):
                    raise RuntimeError(
                        f"the config service refused to register {self.name}: {exc.message}"
                    ) from None
                log.warning("cannot register yet (%s); retrying in %.1fs", exc.message, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)

    def load_report(self) -> dict[str, Any]:
        """Bounded whatever the guild count: the top guilds by event rate (with their
        approximate SQLite bytes), then one aggregate per shard for the rest (or one
        figure, in a guild-keyed table), and the totals."""
        rates = self.load.rates()
        top = [(g, r) for g, r in self._heaviest(rates) if r > 0.0001]
        listed = {g for g, _ in top}
        rest: dict[int, float] = {}
        rest_total = 0.0
        table = self.table_client.table
        count = table.shard_count if table is not None else None
        for g, r in rates.items():
            if g in listed:
                continue
            rest_total += r
            if count:
                shard = shard_for(g, count)
                rest[shard] = rest.get(shard, 0.0) + r
        return {
            "events_per_s": round(sum(rates.values()), 3),
            "guilds": {str(g): round(r, 4) for g, r in top},
            "bytes": {str(g): self.guild_bytes.get(g, 0) for g, _ in top},
            "shards": {str(s): round(r, 4) for s, r in sorted(rest.items()) if r > 0.0001},
            "rest": 0.0 if count else round(rest_total, 4),
            "guild_count": len(rates),
            "db_bytes": self.store.file_bytes(),
            "connected_shards": self.shards.connected_shards,
            "at": time.time(),
        }

    @staticmethod
    def _heaviest(rates: dict[int, float]) -> list[tuple[int, float]]:
        """The reported top guilds: O(n log k), not a full sort of every guild."""
        return heapq.nlargest(TOP_GUILDS, rates.items(), key=lambda kv: (kv[1], -kv[0]))

    async def _measure_sizes(self) -> None:
        """Approximate bytes per guild: a scan, so once a minute rather than per heartbeat,
        or sooner (at most every 5 s) when a guild rose into the reported top unmeasured."""
        last = -60.0
        while True:
            await asyncio.sleep(5.0)
            now = time.monotonic()
            unmeasured = any(
                g not in self.guild_bytes for g, _ in self._heaviest(self.load.rates())
            )
            if now - last < 60.0 and not unmeasured:
                continue
            last = now
            try:
                self.guild_bytes = await self.store.guild_sizes()
            except Exception as exc:  # a busy or closing database: try again next time
                log.debug("guild sizes not measured: %s", exc)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                await self.config.post(
                    f"/v1/pods/{self.name}/heartbeat", {"load": self.load_report()}
                )
            except ConfigApiError as exc:
                self.metrics.heartbeat_failures.inc()
                if exc.status == 404:
                    await self._register()
                else:
                    log.warning("heartbeat failed: %s", exc.message)

    def _ready_now(self) -> bool:
        """/readyz's verdict, for the modbot_gateway_ready gauge (keep the two in step)."""
        table = self.table_client.table
        return (
            table is not None
            and self.commands_ready
            and self.shards.converged(table)
            and self.store.unwritable is None
        )

    def _may_prune(self, guild_id: int) -> bool:
        """Retention deletes only rows of guilds this pod owns and no migration touches
        (the store also skips guilds exported or imported lately: see retention.py)."""
        return (
            self.ownership.owns(guild_id)
            and not self.ownership.migrating(guild_id)
            # "released" is where a migration's target stays once the guild is its own
            and self.gate.state(guild_id) not in ("frozen", "holding")
        )

    def _disk_details(self) -> dict[str, Any]:
        disk = self.store.disk_state()
        if disk is None:
            return {}
        return {
            "volume_free_bytes": disk.volume_free,
            "database_free_bytes": disk.database_free,
            "reserve_bytes": disk.threshold if self.store.guarded else 0,
            "used": round(disk.used_fraction, 4),
        }

    async def _watch_disk(self) -> None:
        """Refuse writes before the volume fills even while nothing is written, and allow
        them again once space frees (a deleted file, retention, a larger volume)."""
        while True:
            try:  # the free pages too (a header read): the gauges and alerts use them
                await self.store.check_disk(refresh=True)
            except Exception as exc:  # a closing database: measure again next time
                log.debug("disk not measured: %s", exc)
            await asyncio.sleep(DISK_CHECK_INTERVAL)

    def _register_metrics(self) -> None:
        self.table_client.register_metrics(self.registry, "modbot_gateway")
        self.shards.register_metrics(self.registry)
        self.registry.register(StoreCollector(self.store))
        self.registry.register(self.retention)
        Gauge(
            "modbot_gateway_shards_connected",
            "Discord gateway shard sessions of this pod that are ready.",
            registry=self.registry,
        ).set_function(lambda: float(len(self.shards.connected_shards)))
        Gauge(
            "modbot_gateway_ready",
            "1 when this pod is ready: table loaded, commands registered, shards converged, "
            "storage writable (what /readyz answers).",
            registry=self.registry,
        ).set_function(lambda: 1.0 if self._ready_now() else 0.0)
        Gauge(
            "modbot_gateway_events_per_second",
            "Decayed rate of Discord events over the guilds this pod owns.",
            registry=self.registry,
        ).set_function(lambda: float(sum(self.load.rates().values())))


async def serve(settings: PodSettings) -> None:
    pod = Pod(settings)
    await pod.start()
    try:
        await asyncio.Event().wait()
    finally:
        await pod.stop()


def run(args: argparse.Namespace) -> int:
    settings = PodSettings.from_args(args)
    setup_logging(settings.log_level, f"gateway:{settings.name}")
    try:  # before anything starts: a pod on an unusable file would lose every write
        check_database(settings.database)
    except StorageError as exc:
        print(f"modbot-ring: {exc}", file=sys.stderr)
        return 1
    from modbot_runtime.runner import run_forever

    return run_forever(serve(settings))
