"""``modbot-ring serve proxy``: the router proxy with its table client and health routes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from modbot_client.table_client import RoutingTableClient
from modbot_runtime.observability import add_health_routes, setup_logging

from .auth import AuthSettings
from .fastpath import FrontServer
from .proxy import ProxySettings, RouterProxy, build_proxy_app

log = logging.getLogger("modbot.proxy")
ADMIN_APP: web.AppKey[web.Application] = web.AppKey("admin")


@dataclass
class RunningProxy:
    proxy: RouterProxy
    tables: RoutingTableClient
    runner: web.AppRunner
    front: FrontServer
    url: str
    socket_dir: str
    admin: web.AppRunner | None = None  # /healthz, /readyz, /metrics: off the public port
    admin_url: str = ""

    async def stop(self) -> None:
        await self.front.stop()
        if self.admin is not None:
            await self.admin.cleanup()
        await self.runner.cleanup()
        await self.tables.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def make_app(
    settings: ProxySettings, tables: RoutingTableClient
) -> tuple[web.Application, RouterProxy]:
    registry = CollectorRegistry()
    tables.register_metrics(registry, "modbot_proxy")
    proxy = RouterProxy(settings, tables, registry)
    app = build_proxy_app(proxy)

    async def ready() -> tuple[bool, dict[str, Any]]:
        status = tables.status()
        return tables.table is not None, status

    # health and metrics live on their own app and port, never behind the public Ingress
    admin = web.Application()
    add_health_routes(admin, registry, ready, component="proxy")
    app[ADMIN_APP] = admin
    return app, proxy


async def start_proxy(
    settings: ProxySettings,
    *,
    config_url: str = "",
    redis_url: str = "",
    redis_prefix: str = "modbot",
    read_token: str = "",
    poll_interval: float = 1.0,
    host: str = "127.0.0.1",
    port: int = 0,
    admin_port: int = 0,
    wait_for_table: bool = True,
) -> RunningProxy:
    tables = RoutingTableClient(
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        config_url=config_url,
        read_token=read_token,
        poll_interval=poll_interval,
    )
    await tables.start(wait=False)
    app, proxy = make_app(settings, tables)
    # the aiohttp app serves everything but the API path, behind the front door, on a
    # Unix socket only this process knows
    socket_dir = tempfile.mkdtemp(prefix="modbot-proxy-")
    app_socket = os.path.join(socket_dir, "app.sock")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, app_socket).start()
    front = FrontServer(proxy, app_socket)
    bound = await front.start(host, port)
    admin = web.AppRunner(app[ADMIN_APP], access_log=None)
    await admin.setup()
    admin_site = web.TCPSite(admin, host, admin_port, reuse_port=True)
    await admin_site.start()
    admin_bound = admin.addresses[0][1]
    if wait_for_table:
        await tables.wait_for_version(0, 30)
    return RunningProxy(
        proxy,
        tables,
        runner,
        front,
        f"http://{host}:{bound}",
        socket_dir,
        admin,
        f"http://{host}:{admin_bound}",
    )


async def serve(args: argparse.Namespace) -> None:
    settings = ProxySettings.from_args(args)
    settings.auth = AuthSettings.from_args(args)
    running = await start_proxy(
        settings,
        config_url=args.config_url,
        redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
        read_token=args.read_token,
        poll_interval=args.poll_interval,
        host=args.host,
        port=args.port,
        admin_port=args.admin_port,
        wait_for_table=False,
    )
    log.info("proxy listening on %s (health and metrics on %s)", running.url, running.admin_url)
    try:
        await asyncio.Event().wait()
    finally:
        await running.stop()


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, "proxy")
    from modbot_runtime.runner import run_forever

    if args.workers < 1:
        print("modbot-ring: --workers must be >= 1", file=sys.stderr)
        return 2
    for problem in AuthSettings.from_args(args).problems(args.host):
        print(f"modbot-ring: {problem}", file=sys.stderr)
        return 2
    if args.workers == 1:
        return run_forever(serve(args))
    return prefork(args.workers, lambda: run_forever(serve(args)))


def prefork(workers: int, child: Callable[[], int]) -> int:
    """Fork ``workers`` processes before any event loop exists; each binds the port with
    SO_REUSEPORT and the kernel spreads connections. Signals are passed on; the parent
    returns when every worker has exited (with the worst exit code)."""
    pids: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            code = 1
            try:
                code = child()
            finally:
                os._exit(code)
        pids.append(pid)

    def forward(signum: int, _frame: Any) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    worst = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        worst = max(worst, abs(os.waitstatus_to_exitcode(status)))
    return worst
