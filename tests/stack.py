"""An end-to-end stack for tests: simulator, config service, proxy (in this process) and
gateway pods as real ``modbot-ring serve gateway`` subprocesses that tests may kill,
freeze (SIGSTOP) and restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from conftest import ADMIN, READ, ConfigService, free_port, running_config

from gateway_app.discord_sim.server import RunningSim, start_sim
from router_proxy.auth import AuthSettings, Principal, identity_key_from, sign_identity
from router_proxy.proxy import ProxySettings
from router_proxy.server import RunningProxy, start_proxy

CLI = str(Path(sys.executable).parent / "modbot-ring")
INTERNAL = "internal-secret"  # proxy -> pod forwarding
MIGRATION = "migration-secret"  # config service -> pod migration API
A = {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class PodProcess:
    name: str
    port: int
    database: str
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=log)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.database, timeout=10)) as conn:
            return conn.execute(sql, params).fetchall()

    def message_counts(self) -> dict[int, int]:
        return dict(self.rows("SELECT guild_id, count(*) FROM message_stats GROUP BY guild_id"))


@dataclass
class Stack:
    sim: RunningSim
    config: ConfigService
    proxy: RunningProxy
    pods: dict[str, PodProcess]
    http: aiohttp.ClientSession
    tmp: Path

    @property
    def world(self) -> Any:
        return self.sim.sim.world

    async def wait_ready(self, *names: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for name in names or tuple(self.pods):
            pod = self.pods[name]
            while True:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with self.http.get(
                        f"{pod.url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
                    ) as r:
                        # the pod itself, not another server that took its port
                        if r.status == 200 and (await r.json()).get("pod") == name:
                            break
                exited = pod.proc is None or pod.proc.poll() is not None
                if time.monotonic() > deadline or exited:
                    raise AssertionError(
                        f"pod {name} not ready in {timeout}s; log:\n{Path(pod.log_path).read_text()[-3000:]}"
                    )
                await asyncio.sleep(0.1)

    async def table_version(self) -> int:
        async with self.http.get(f"{self.config.url}/v1/table/version", headers=A) as r:
            return int((await r.json())["version"])

    async def converge(self, timeout: float = 30) -> None:
        """Every pod and the proxy follow the config service's current table, and pods are ready."""
        version = await self.table_version()
        await self.proxy.tables.wait_for_version(version, timeout)
        await self.wait_ready(timeout=timeout)
        deadline = time.monotonic() + timeout
        for pod in self.pods.values():
            while True:
                async with self.http.get(f"{pod.url}/readyz") as r:
                    body = await r.json()
                if r.status == 200 and (body.get("table_version") or 0) >= version:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{pod.name} stuck: {body}")
                await asyncio.sleep(0.1)

    async def pin(self, guild_id: int, pod: str) -> int:
        async with self.http.put(
            f"{self.config.url}/v1/pins/{guild_id}", json={"pod": pod}, headers=A
        ) as r:
            assert r.status == 200, await r.text()
            return int((await r.json())["version"])

    async def interact(self, guild_id: int, command: str, **kw: Any) -> dict[str, Any]:
        """Play Discord: sign and POST an interaction webhook to the proxy."""
        body = {
            "url": f"{self.proxy.url}/webhooks/discord",
            "guild_id": str(guild_id),
            "command": command,
            **kw,
        }
        async with self.http.post(f"{self.sim.url}/control/interactions", json=body) as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())

    async def flush_pods(self) -> None:
        """Wait until every pod's batch writer has committed (cheap barrier: /data reads flush)."""
        for pod in self.pods.values():
            if pod.proc is None:
                continue
            for gid in list(self.world.guilds)[:1]:
                with contextlib.suppress(aiohttp.ClientError):
                    path = f"/api/guilds/{gid}/stats"
                    async with self.http.get(
                        f"{pod.url}{path}", headers=self.pod_headers("GET", path, gid)
                    ):
                        pass

    async def migrate(self, guild_id: int, target: str) -> dict[str, Any]:
        async with self.http.post(
            f"{self.config.url}/v1/migrations",
            json={"guild_id": str(guild_id), "to": target},
            headers=A,
        ) as r:
            assert r.status == 202, await r.text()
            return dict(await r.json())

    async def migration(self, migration_id: int) -> dict[str, Any]:
        async with self.http.get(f"{self.config.url}/v1/migrations/{migration_id}", headers=A) as r:
            return dict(await r.json())

    async def wait_migration(self, migration_id: int, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            m = await self.migration(migration_id)
            if m["state"] in ("done", "rolled_back"):
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"migration stuck: {m}")
            await asyncio.sleep(0.05)

    async def verify(self) -> dict[str, Any]:
        async with self.http.get(f"{self.config.url}/v1/verify", headers=A) as r:
            return dict(await r.json())

    def pod_headers(self, method: str, path: str, guild: object) -> dict[str, str]:
        """What the proxy sends a pod: its token and a signed (developer) identity."""
        key = identity_key_from("", INTERNAL)
        dev = Principal("0", "test", "dev")
        return {
            "Authorization": f"Bearer {INTERNAL}",
            "X-Modbot-Identity": sign_identity(key, dev, str(guild), method, path),
        }

    def calls(self, path_part: str) -> list[dict[str, Any]]:
        return [c.to_json() for c in self.sim.sim.calls if path_part in c.path]


def pod_process(
    name: str,
    config_url: str,
    sim: RunningSim,
    tmp: Path,
    *,
    redis_url: str = "",
    redis_prefix: str = "modbot",
) -> PodProcess:
    port = free_port()
    database = str(tmp / f"{name}.db")
    args = [
        CLI,
        "serve",
        "gateway",
        "--name",
        name,
        "--port",
        str(port),
        "--config-url",
        config_url,
        "--database",
        database,
        "--discord-api-url",
        sim.api_url,
        "--discord-gateway-url",
        sim.gateway_url,
        "--heartbeat-interval",
        "1",
        "--table-poll",
        "0.5",
        "--identify-interval",
        "0",
        "--log-level",
        "info",
    ]
    if redis_url:
        args += ["--redis-url", redis_url, "--redis-prefix", redis_prefix]
    env = {
        **os.environ,
        "MODBOT_ADMIN_TOKEN": ADMIN,
        "MODBOT_READ_TOKEN": READ,
        "MODBOT_INTERNAL_TOKEN": INTERNAL,
        "MODBOT_MIGRATION_TOKEN": MIGRATION,
        "DISCORD_TOKEN": "sim-token",
    }
    return PodProcess(name, port, database, args, env, log_path=str(tmp / f"{name}.log"))


@contextlib.asynccontextmanager
async def running_stack(
    tmp: Path,
    db_url: str,
    schema: str = "",
    *,
    pods: int = 2,
    guilds: int = 20,
    shard_count: int | None = 4,
    redis_url: str = "",
    redis_prefix: str = "modbot",
    heartbeat_timeout: float = 15.0,
    interaction_deadline: float = 2.5,
    migration_step_delay: float = 0.0,
    balance: Any = None,
    auth: AuthSettings | None = None,
    proxy_port: int = 0,
) -> Any:
    # a large bot's IDENTIFY concurrency: each of the stack's shards has its own bucket
    sim = await start_sim(max_concurrency=16)
    for i in range(guilds):
        sim.sim.world.create_guild(f"guild-{i}")
    async with running_config(
        db_url,
        schema,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        shard_count=shard_count,
        heartbeat_timeout=heartbeat_timeout,
        migration_token=MIGRATION,
        migration_step_delay=migration_step_delay,
        balance=balance,
    ) as config:
        procs = {
            f"gateway-{i}": pod_process(
                f"gateway-{i}", config.url, sim, tmp, redis_url=redis_url, redis_prefix=redis_prefix
            )
            for i in range(pods)
        }
        for proc in procs.values():
            proc.start()
        settings = ProxySettings(
            internal_token=INTERNAL,
            discord_public_key=sim.sim.signer.public_key_hex,
            discord_api_url=sim.api_url,
            interaction_deadline=interaction_deadline,
            followup_window=60,
            # tests not about sign-in run the proxy as local development does
            auth=auth or AuthSettings(no_auth=True, rate_limit_anon=0, rate_limit_user=0),
        )
        proxy = await start_proxy(
            settings,
            config_url=config.url,
            redis_url=redis_url,
            redis_prefix=redis_prefix,
            read_token=READ,
            poll_interval=0.2,
            port=proxy_port,
        )
        http = aiohttp.ClientSession()
        stack = Stack(sim, config, proxy, procs, http, tmp)
        try:
            await stack.wait_ready()
            await stack.converge()
            yield stack
        finally:
            for proc in procs.values():
                if proc.proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.thaw()
                    proc.proc.terminate()
                    try:
                        proc.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            await http.close()
            await proxy.stop()
            await sim.stop()
