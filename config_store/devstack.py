"""``modbot-ring dev up``: the whole system on one machine, on embedded defaults.

Starts the Discord simulator (seeded with a few guilds and a trickle of messages), the
config service (SQLite, or ``--postgres``), gateway pods, and the proxy, each as its own
``modbot-ring serve ...`` process, exactly as they run in Kubernetes. They talk only
over HTTP (and Redis with ``--redis``). Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .client.flags import Flag

__all__ = ["DEV_FLAGS", "run"]

DEV_FLAGS = [
    Flag("state-dir", "MODBOT_DEV_DIR", ".modbot-dev", "where the databases and logs go"),
    Flag("pods", "MODBOT_DEV_PODS", 3, "gateway pods to run", int),
    Flag("guilds", "MODBOT_DEV_GUILDS", 6, "guilds the simulator starts with", int),
    Flag("shard-count", "MODBOT_SHARD_COUNT", 4, "Discord shards (0: key by guild id)", int),
    Flag(
        "base-port",
        "MODBOT_DEV_BASE_PORT",
        0,
        "if set: sim, config, proxy, pods on consecutive ports from here",
        int,
    ),
    Flag("postgres", "MODBOT_DEV_POSTGRES", "", "use this PostgreSQL instead of SQLite"),
    Flag("redis", "MODBOT_DEV_REDIS", "", "use this Redis for the table cache"),
    Flag(
        "trickle", "MODBOT_DEV_TRICKLE", 1.0, "seconds between simulated messages (0: none)", float
    ),
]


@dataclass
class Ports:
    sim: int
    config: int
    proxy: int
    pods: list[int]

    @classmethod
    def choose(cls, base: int, pods: int) -> Ports:
        if base:
            return cls(base, base + 1, base + 2, [base + 3 + i for i in range(pods)])
        return cls(8790, 8700, 8080, [8701 + i for i in range(pods)])


class DevStack:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(args.state_dir).resolve()
        self.ports = Ports.choose(args.base_port, args.pods)
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.cli = str(Path(sys.executable).parent / "modbot-ring")
        self.env = {
            **os.environ,
            "MODBOT_ADMIN_TOKEN": os.environ.get("MODBOT_ADMIN_TOKEN") or secrets.token_urlsafe(16),
            "MODBOT_READ_TOKEN": os.environ.get("MODBOT_READ_TOKEN") or secrets.token_urlsafe(16),
            "MODBOT_INTERNAL_TOKEN": os.environ.get("MODBOT_INTERNAL_TOKEN")
            or secrets.token_urlsafe(16),
            "DISCORD_TOKEN": "sim-token",
            "MODBOT_LOG_LEVEL": os.environ.get("MODBOT_LOG_LEVEL", "info"),
        }
        if args.redis:
            self.env["MODBOT_REDIS_URL"] = args.redis

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    async def spawn(self, name: str, *argv: str) -> None:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs[name] = await asyncio.create_subprocess_exec(
            self.cli, "serve", *argv, env=self.env, stdout=log, stderr=log, start_new_session=True
        )

    async def wait_ok(
        self, http: aiohttp.ClientSession, name: str, url: str, timeout: float = 60
    ) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            proc = self.procs.get(name)
            if proc is not None and proc.returncode is not None:
                raise RuntimeError(
                    f"{name} exited ({proc.returncode}); see {self.dir / (name + '.log')}"
                )
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return await r.json()
            await asyncio.sleep(0.1)
        raise RuntimeError(
            f"{name} was not ready after {timeout}s; see {self.dir / (name + '.log')}"
        )

    async def up(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        p = self.ports
        db = self.args.postgres or f"sqlite:///{self.dir / 'config.db'}"
        async with aiohttp.ClientSession() as http:
            await self.spawn(
                "discord-sim",
                "discord-sim",
                "--port",
                str(p.sim),
                "--seed-guilds",
                str(self.args.guilds),
            )
            await self.spawn(
                "config",
                "config",
                "--port",
                str(p.config),
                "--database-url",
                db,
                "--shard-count",
                str(self.args.shard_count),
            )
            sim = await self.wait_ok(http, "discord-sim", f"{self.url(p.sim)}/control/info")
            await self.wait_ok(http, "config", f"{self.url(p.config)}/readyz")
            for i, port in enumerate(p.pods):
                await self.spawn(
                    f"gateway-{i}",
                    "gateway",
                    "--name",
                    f"gateway-{i}",
                    "--port",
                    str(port),
                    "--config-url",
                    self.url(p.config),
                    "--database",
                    str(self.dir / f"gateway-{i}.db"),
                    "--discord-api-url",
                    sim["api_url"],
                    "--discord-gateway-url",
                    sim["gateway_url"],
                    "--identify-interval",
                    "0",
                )
            await self.spawn(
                "proxy",
                "proxy",
                "--port",
                str(p.proxy),
                "--config-url",
                self.url(p.config),
                "--discord-public-key",
                sim["public_key"],
                "--discord-api-url",
                sim["api_url"],
            )
            for i, port in enumerate(p.pods):
                await self.wait_ok(http, f"gateway-{i}", f"{self.url(port)}/readyz")
            await self.wait_ok(http, "proxy", f"{self.url(p.proxy)}/readyz")
            async with http.get(f"{self.url(p.sim)}/control/guilds") as r:
                guilds = [g["id"] for g in (await r.json())["guilds"]]
            self.print_banner(guilds)
            await self.trickle(http, guilds)

    def print_banner(self, guilds: list[str]) -> None:
        p = self.ports
        lines = [
            "modbot-ring is up (Ctrl-C stops it)",
            f"  dashboard     {self.url(p.proxy)}/guild/{guilds[0]}/dashboard" if guilds else "",
            *(f"                {self.url(p.proxy)}/guild/{g}/dashboard" for g in guilds[1:3]),
            f"  proxy         {self.url(p.proxy)}  (POST /webhooks/discord, /api/guilds/...)",
            f"  config        {self.url(p.config)}/v1/status   (admin token: {self.env['MODBOT_ADMIN_TOKEN']})",
            *(f"  {f'gateway-{i}':<13} {self.url(port)}/readyz" for i, port in enumerate(p.pods)),
            f"  discord sim   {self.url(p.sim)}/control/info",
            f"  try           MODBOT_CONFIG_URL={self.url(p.config)} MODBOT_ADMIN_TOKEN={self.env['MODBOT_ADMIN_TOKEN']} modbot-ring status",
            f"  logs          {self.dir}/*.log",
        ]
        print("\n".join(line for line in lines if line), flush=True)

    async def trickle(self, http: aiohttp.ClientSession, guilds: list[str]) -> None:
        """A steady, small stream of messages so the dashboards move."""
        if self.args.trickle <= 0 or not guilds:
            await asyncio.Event().wait()
        n = 0
        while True:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                body = {
                    "guild_id": guilds[n % len(guilds)],
                    "count": 1,
                    "content": f"message {n} from the trickle",
                }
                async with http.post(
                    f"{self.url(self.ports.sim)}/control/messages", data=json.dumps(body)
                ):
                    pass
            n += 1
            await asyncio.sleep(self.args.trickle)

    async def down(self) -> None:
        """Stop in reverse dependency order: proxy, pods, then config service and simulator."""
        order = [
            "proxy",
            *sorted(n for n in self.procs if n.startswith("gateway-")),
            "config",
            "discord-sim",
        ]
        for group in (order[:1], order[1:-2], order[-2:]):
            running = [
                (n, self.procs[n])
                for n in group
                if n in self.procs and self.procs[n].returncode is None
            ]
            for _, proc in running:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            for name, proc in running:
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    print(f"{name} did not stop in 10 s; killing it", file=sys.stderr)
                    proc.kill()


async def _main(args: argparse.Namespace) -> int:
    stack = DevStack(args)
    try:
        await stack.up()
    except RuntimeError as exc:
        print(f"modbot-ring: {exc}", file=sys.stderr)
        return 1
    finally:
        await stack.down()
    return 0


def run(args: argparse.Namespace) -> int:
    loop_result = 0

    async def guarded() -> None:
        nonlocal loop_result
        task = asyncio.create_task(_main(args))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            loop_result = await task
        except asyncio.CancelledError:
            print("stopped", flush=True)
            loop_result = 0

    asyncio.run(guarded())
    return loop_result
