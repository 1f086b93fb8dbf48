"""``modbot-ring dev up``: the whole system on one machine, on embedded defaults.

Starts the Discord simulator (seeded with a few guilds and a trickle of messages), the
config service (SQLite, or ``--postgres``), gateway pods, and the proxy, each as its own
``modbot-ring serve ...`` process, exactly as they run in Kubernetes. They talk only
over HTTP (and Redis with ``--redis``). Once up, a child that exits is restarted with
backoff (one line on stdout says which, its exit code and the delay), as Kubernetes
would. Ctrl-C stops everything cleanly.
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .client.flags import Flag, env_bool

__all__ = ["DEV_FLAGS", "run"]

# restart backoff: the first restart waits RESTART_DELAY s, each quick crash doubles it up
# to RESTART_MAX; a child that stayed up RESTART_RESET s starts from RESTART_DELAY again
RESTART_DELAY = 0.5
RESTART_MAX = 30.0
RESTART_RESET = 30.0

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
    Flag(
        "no-auth",
        "MODBOT_DEV_NO_AUTH",
        False,
        "run the proxy without sign-in (default: sign in with Discord, played by the simulator)",
        env_bool,
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
        self.argv: dict[str, tuple[str, ...]] = {}
        self.started_at: dict[str, float] = {}
        self.stopping = False
        self.cli = str(Path(sys.executable).parent / "modbot-ring")
        self.env = {
            **os.environ,
            "MODBOT_ADMIN_TOKEN": os.environ.get("MODBOT_ADMIN_TOKEN") or secrets.token_urlsafe(16),
            "MODBOT_READ_TOKEN": os.environ.get("MODBOT_READ_TOKEN") or secrets.token_urlsafe(16),
            "MODBOT_INTERNAL_TOKEN": os.environ.get("MODBOT_INTERNAL_TOKEN")
            or secrets.token_urlsafe(16),
            "MODBOT_MIGRATION_TOKEN": os.environ.get("MODBOT_MIGRATION_TOKEN")
            or secrets.token_urlsafe(16),
            "DISCORD_TOKEN": "sim-token",
            "MODBOT_LOG_LEVEL": os.environ.get("MODBOT_LOG_LEVEL", "info"),
            # sign-in: the simulator plays Discord's OAuth2; fresh secrets every run
            "MODBOT_SIM_CLIENT_SECRET": secrets.token_urlsafe(16),
            "MODBOT_SESSION_KEYS": secrets.token_urlsafe(32),
        }
        if args.redis:
            self.env["MODBOT_REDIS_URL"] = args.redis

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    async def spawn(self, name: str, *argv: str) -> None:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.argv[name] = argv
        self.started_at[name] = time.monotonic()
        self.procs[name] = await asyncio.create_subprocess_exec(
            self.cli, "serve", *argv, env=self.env, stdout=log, stderr=log, start_new_session=True
        )

    async def supervise(self) -> None:
        """Restart any child that exits, with backoff: what a crashed pod gets from
        Kubernetes, so a local kill -9 drill behaves like production."""
        delays = dict.fromkeys(self.procs, RESTART_DELAY)
        waits = {asyncio.create_task(p.wait()): n for n, p in self.procs.items()}
        try:
            while waits and not self.stopping:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    name = waits.pop(task)
                    if self.stopping:
                        return
                    code = task.result()
                    if time.monotonic() - self.started_at[name] >= RESTART_RESET:
                        delays[name] = RESTART_DELAY
                    delay = delays[name]
                    delays[name] = min(delay * 2, RESTART_MAX)
                    print(
                        f"{name} exited with code {code}; restarting in {delay:.1f} s "
                        f"(log: {self.dir / (name + '.log')})",
                        flush=True,
                    )
                    waits[asyncio.create_task(self._restart(name, delay))] = name
        finally:
            for task in waits:
                task.cancel()

    async def _restart(self, name: str, delay: float) -> int:
        """Wait ``delay``, start ``name`` again, then wait for it to exit."""
        await asyncio.sleep(delay)
        if self.stopping:
            return 0
        await self.spawn(name, *self.argv[name])
        return await self.procs[name].wait()

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
                "--max-concurrency",  # a large bot's: each local shard has its own bucket,
                "16",  # so pods identify at once (Discord's small-bot default is 1)
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
                *await self.auth_argv(http, sim),
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
            await self.wait_ok(http, "proxy", f"{self.url(self.admin_port)}/readyz")
            async with http.get(f"{self.url(p.sim)}/control/guilds") as r:
                guilds = [g["id"] for g in (await r.json())["guilds"]]
            self.print_banner(guilds)
            await asyncio.gather(self.supervise(), self.trickle(http, guilds))

    @property
    def admin_port(self) -> int:
        """The proxy's health/metrics port: after the pods' ports, or 9080."""
        return self.ports.pods[-1] + 1 if self.args.base_port and self.ports.pods else 9080

    async def auth_argv(self, http: aiohttp.ClientSession, sim: dict[str, Any]) -> list[str]:
        """The proxy's sign-in flags; the simulator gets users to sign in as: dev-admin
        (Administrator in every guild) and dev-member (no rights: sees 403)."""
        argv = ["--admin-port", str(self.admin_port)]
        if self.args.no_auth:
            return [*argv, "--no-auth", "true"]
        async with http.get(f"{self.url(self.ports.sim)}/control/guilds") as r:
            guilds = [g["id"] for g in (await r.json())["guilds"]]
        for name, perms in (("dev-admin", 8), ("dev-member", 1024)):
            body = {"username": name, "guilds": {g: {"permissions": perms} for g in guilds}}
            async with http.post(
                f"{self.url(self.ports.sim)}/control/oauth/users", data=json.dumps(body)
            ) as r:
                r.raise_for_status()
        self.env["MODBOT_DISCORD_CLIENT_SECRET"] = self.env["MODBOT_SIM_CLIENT_SECRET"]
        return [
            *argv,
            "--discord-client-id",
            str(sim["application_id"]),
            "--oauth-redirect-url",
            f"{self.url(self.ports.proxy)}/oauth/callback",
            "--discord-oauth-url",
            f"{self.url(self.ports.sim)}/oauth2/authorize",
        ]

    def print_banner(self, guilds: list[str]) -> None:
        p = self.ports
        lines = [
            "modbot-ring is up (Ctrl-C stops it)",
            ""
            if self.args.no_auth or not guilds
            else f"  login         {self.url(p.proxy)}/login?next=/guild/{guilds[0]}/dashboard"
            "  (pick dev-admin on the simulator's consent page)",
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
        self.stopping = True
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
