"""tests/stack.py's end-to-end stack, with the config service as a real
``modbot-ring serve config`` process that a test may kill -9 and restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from conftest import ADMIN, PG_URL, READ, ConfigService, free_port
from stack import CLI, INTERNAL, MIGRATION, Stack, pod_process

from gateway_app.discord_sim.server import start_sim
from router_proxy.auth import AuthSettings
from router_proxy.proxy import ProxySettings
from router_proxy.server import start_proxy


@dataclass
class ConfigProcess:
    schema: str
    log_path: str
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [
            CLI,
            "serve",
            "config",
            "--port",
            str(self.port),
            "--database-url",
            PG_URL,
            "--db-schema",
            self.schema,
            "--shard-count",
            "4",
            *self.extra,
        ]
        env = {
            **os.environ,
            "MODBOT_ADMIN_TOKEN": ADMIN,
            "MODBOT_READ_TOKEN": READ,
            "MODBOT_INTERNAL_TOKEN": INTERNAL,
            "MODBOT_MIGRATION_TOKEN": MIGRATION,
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=log)

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.proc = None

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(
                    f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
                ) as r:
                    if r.status == 200:
                        return
            assert self.proc is not None and self.proc.poll() is None, Path(
                self.log_path
            ).read_text()[-3000:]
            await asyncio.sleep(0.1)
        raise AssertionError(f"config service not ready in {timeout}s")


@contextlib.asynccontextmanager
async def stack_with_config_process(
    tmp: Path,
    schema: str,
    *,
    pods: int = 2,
    guilds: int = 10,
    extra: list[str] | None = None,
) -> Any:
    """Yields (stack, config process); stack.config.url is the process's URL."""
    # one IDENTIFY bucket per shard: a target opening a guild's shard is not refused
    sim = await start_sim(max_concurrency=16)
    for i in range(guilds):
        sim.sim.world.create_guild(f"guild-{i}")
    config = ConfigProcess(schema, str(tmp / "config.log"), extra or [])
    config.start()
    http = aiohttp.ClientSession()
    procs = {}
    proxy = None
    try:
        await config.wait_ready(http)
        procs = {
            f"gateway-{i}": pod_process(f"gateway-{i}", config.url, sim, tmp) for i in range(pods)
        }
        for proc in procs.values():
            proc.start()
        settings = ProxySettings(
            internal_token=INTERNAL,
            discord_public_key=sim.sim.signer.public_key_hex,
            discord_api_url=sim.api_url,
            interaction_deadline=2.5,
            followup_window=60,
            # not about sign-in: the proxy runs as local development does
            auth=AuthSettings(no_auth=True, rate_limit_anon=0, rate_limit_user=0),
        )
        proxy = await start_proxy(
            settings, config_url=config.url, read_token=READ, poll_interval=0.2
        )
        stack = Stack(sim, ConfigService(config.url, None, None, None), proxy, procs, http, tmp)
        await stack.wait_ready()
        await stack.converge()
        yield stack, config
    finally:
        for proc in procs.values():
            if proc.proc is not None:
                proc.proc.terminate()
                try:
                    proc.proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        await http.close()
        if proxy is not None:
            await proxy.stop()
        config.stop()
        await sim.stop()
