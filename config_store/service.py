"""The config service: an aiohttp app over the store, the publisher and the sweeper."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from modbot_ring import BalancePolicy
from modbot_runtime.observability import add_health_routes, setup_logging

from .api import (
    BALANCER_KEY,
    METRICS_KEY,
    MIGRATOR_KEY,
    PUBLISHER_KEY,
    SETTINGS_KEY,
    STORE_KEY,
    ApiMetrics,
    add_routes,
    new_app,
)
from .balancer import Balancer, BalancerSettings
from .errors import StoreError
from .migrator import Migrator
from .publisher import TablePublisher
from .store import Store, open_store

log = logging.getLogger("modbot.config")


def build_app(
    store: Store,
    *,
    admin_token: str,
    read_token: str = "",
    redis_url: str = "",
    redis_prefix: str = "modbot",
    heartbeat_timeout: float = 15.0,
    poll_interval: float = 1.0,
    migration_token: str = "",
    migration_step_delay: float = 0.0,
    balance: BalancerSettings | None = None,
) -> web.Application:
    """The app, ready for an AppRunner; starts its background tasks on startup."""
    registry = CollectorRegistry()
    metrics = ApiMetrics(registry, redis=bool(redis_url))
    publisher = TablePublisher(
        store, redis_url=redis_url, redis_prefix=redis_prefix, poll_interval=poll_interval
    )
    app = new_app()
    app[STORE_KEY] = store
    app[PUBLISHER_KEY] = publisher
    app[METRICS_KEY] = metrics
    app[SETTINGS_KEY] = {"admin_token": admin_token, "read_token": read_token}
    migrator = Migrator(
        store, publisher, migration_token=migration_token, step_delay=migration_step_delay
    )
    app[MIGRATOR_KEY] = migrator
    Gauge(
        "modbot_config_migrations_running",
        "Guild migrations this replica is driving right now.",
        registry=registry,
    ).set_function(lambda: float(sum(not t.done() for t in migrator.tasks.values())))
    Gauge(
        "modbot_config_plans_executing",
        "Plans whose moves this replica is executing right now.",
        registry=registry,
    ).set_function(lambda: float(sum(not t.done() for t in migrator.plan_tasks.values())))
    balancer = Balancer(
        store, migrator, publisher, balance or BalancerSettings(mode="off"), registry
    )
    app[BALANCER_KEY] = balancer
    if not admin_token:
        log.warning("no admin token configured: every write will be refused")
    add_routes(app)

    async def ready() -> tuple[bool, dict[str, Any]]:
        details: dict[str, Any] = {
            "redis": "disabled"
            if publisher.redis_ok is None
            else ("ok" if publisher.redis_ok else "down")
        }
        try:
            await asyncio.wait_for(store.db.ping(), 2.0)
            details["database"] = "ok"
        except (StoreError, Exception) as exc:
            details["database"] = f"unreachable: {exc}"[:200]
            return False, details
        if publisher.snapshot is not None:
            details["version"] = publisher.snapshot.version
        return True, details

    add_health_routes(app, registry, ready, component="config")

    async def sweep_offline() -> None:
        while True:
            await asyncio.sleep(max(heartbeat_timeout / 3, 0.2))
            try:
                gone = await store.mark_offline(heartbeat_timeout)
                if gone:
                    log.warning("pods missed heartbeats, marked offline: %s", ", ".join(gone))
                    await publisher.refresh()
            except StoreError as exc:
                log.debug("offline sweep skipped: %s", exc)

    async def gauges() -> None:
        while True:
            snap = publisher.snapshot
            if snap is not None:
                metrics.table_version.set(snap.version)
                counts = {"active": 0, "draining": 0, "offline": 0}
                for pod in snap.table.pods.values():
                    counts[pod.state.value] += 1
                for state, n in counts.items():
                    metrics.pods.labels(state).set(n)
            if metrics.redis_up is not None:
                metrics.redis_up.set(1 if publisher.redis_ok else 0)
            await asyncio.sleep(1.0)

    async def lifecycle(app: web.Application) -> Any:
        await publisher.start()
        await migrator.start()
        await balancer.start()
        tasks = [asyncio.create_task(sweep_offline()), asyncio.create_task(gauges())]
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await balancer.stop()
        await migrator.stop()
        await publisher.stop()

    async def release_long_polls(_: web.Application) -> None:
        await publisher.release_waiters()

    app.on_shutdown.append(release_long_polls)
    app.cleanup_ctx.append(lifecycle)
    return app


async def serve(args: argparse.Namespace, *, ready: asyncio.Event | None = None) -> None:
    store = await open_store(args.database_url, schema=args.db_schema, migrate=args.migrate)
    try:
        await store.initialize_ring(args.shard_count or None, args.ring_algorithm)
    except StoreError as exc:
        log.warning("ring settings not initialized: %s", exc)
    app = build_app(
        store,
        admin_token=args.admin_token,
        read_token=args.read_token,
        redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
        heartbeat_timeout=args.heartbeat_timeout,
        migration_token=args.migration_token,
        migration_step_delay=args.migration_step_delay,
        balance=balancer_settings(args),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    log.info(
        "config service listening on http://%s:%s (%s)", args.host, args.port, store.db.dialect
    )
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await store.close()


def balancer_settings(args: argparse.Namespace) -> BalancerSettings:
    return BalancerSettings(
        mode=args.balance_mode,
        interval=args.balance_interval,
        statefulset=args.gateway_statefulset,
        policy=BalancePolicy(
            threshold=args.balance_threshold,
            clear=args.balance_clear,
            hold_down=args.balance_hold_down,
            cooldown=args.balance_cooldown,
            target_epsilon=args.balance_target,
            capacity=args.pod_capacity,
            move_budget_per_hour=args.move_budget,
            min_load=args.balance_min_load,
        ),
    )


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, "config")
    from modbot_runtime.runner import run_forever

    try:
        balancer_settings(args)  # refuse bad balancer flags before anything starts
    except ValueError as exc:
        print(f"modbot-ring: {exc}", file=sys.stderr)
        return 2

    return run_forever(serve(args))
