"""tests/stack.py's end-to-end stack, with the config service as a real
``modbot-ring serve config`` process that a test may kill -9 and restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from conftest import ADMIN, PG_URL, READ, ConfigService, eventually, free_port
from stack import CLI, INTERNAL, MIGRATION, ChildProcess, Stack, pod_process, sim_with, stack_proxy


@dataclass
class ConfigProcess(ChildProcess):
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

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 30) -> None:
        async def ready() -> bool:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(
                    f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
                ) as r:
                    if r.status == 200:
                        return True
            assert self.proc is not None and self.proc.poll() is None, Path(
                self.log_path
            ).read_text()[-3000:]
            return False

        await eventually(ready, timeout, interval=0.1)


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
    sim = await sim_with(guilds)
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
        proxy = await stack_proxy(sim, config.url)
        stack = Stack(sim, ConfigService(config.url, None, None, None), proxy, procs, http, tmp)
        await stack.wait_ready()
        await stack.converge()
        yield stack, config
    finally:
        for proc in procs.values():
            proc.stop()
        await http.close()
        if proxy is not None:
            await proxy.stop()
        config.stop()
        await sim.stop()
