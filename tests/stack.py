"""The stacks tests run against. The end-to-end stack: simulator, config service, proxy
(in this process) and gateway pods as real ``modbot-ring serve gateway`` subprocesses that
tests may kill, freeze (SIGSTOP) and restart. The proxy's edge: the proxy before stand-in
pods, spoken to in raw bytes (at the end)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httptools
from aiohttp import web
from conftest import (
    ADMIN,
    READ,
    AppServer,
    ConfigService,
    add_pods,
    eventually,
    free_port,
    running_config,
)

from discord_sim.server import RunningSim, start_sim
from router_proxy.auth import AuthSettings, Principal, identity_key_from, sign_identity
from router_proxy.proxy import ProxySettings
from router_proxy.server import RunningProxy, start_proxy

CLI = str(Path(sys.executable).parent / "modbot-ring")
INTERNAL = "internal-secret"  # proxy -> pod forwarding
MIGRATION = "migration-secret"  # config service -> pod migration API
A = {"Authorization": f"Bearer {ADMIN}"}


class ChildProcess:
    """What a test does to a service it runs as a process (``proc``): kill -9 it, or stop it."""

    proc: subprocess.Popen[bytes] | None

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        """SIGTERM (thawed first if a test froze it), SIGKILL after 10 s."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.proc = None


@dataclass
class PodProcess(ChildProcess):
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

            async def ready(pod: PodProcess = pod, name: str = name) -> bool:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with self.http.get(
                        f"{pod.url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
                    ) as r:
                        # the pod itself, not another server that took its port
                        if r.status == 200 and (await r.json()).get("pod") == name:
                            return True
                if pod.proc is None or pod.proc.poll() is not None:
                    raise AssertionError("exited")
                return False

            try:
                await eventually(ready, max(0.0, deadline - time.monotonic()), interval=0.1)
            except AssertionError:
                raise AssertionError(
                    f"pod {name} not ready in {timeout}s; log:\n{Path(pod.log_path).read_text()[-3000:]}"
                ) from None

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
            body: dict[str, Any] = {}

            async def follows(pod: PodProcess = pod, body: dict[str, Any] = body) -> bool:
                async with self.http.get(f"{pod.url}/readyz") as r:
                    body.update(await r.json())
                return r.status == 200 and (body.get("table_version") or 0) >= version

            try:
                await eventually(follows, max(0.0, deadline - time.monotonic()), interval=0.1)
            except AssertionError:
                raise AssertionError(f"{pod.name} stuck: {body}") from None

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

    async def send_messages(self, guilds: Any, count: int, **extra: Any) -> dict[str, Any]:
        """Play Discord: ``count`` messages in each of ``guilds`` (ids); the simulator's
        answer (``sent``, ``message_ids``)."""
        body = {"guild_ids": [str(g) for g in guilds], "count": count, **extra}
        async with self.http.post(f"{self.sim.url}/control/messages", json=body) as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())

    async def migrate_midstream(
        self, guild_id: int, target: str, sent: list[Any]
    ) -> dict[str, Any]:
        """Move ``guild_id`` to ``target`` in the middle of a stream that appends to ``sent``:
        it has sent some before the move starts and more after it ends. The finished move."""
        await eventually(lambda: len(sent) >= 3)
        done = await self.wait_migration((await self.migrate(guild_id, target))["id"])
        after = len(sent)
        await eventually(lambda: len(sent) >= after + 3)
        return done

    async def holds(self, rows: int) -> bool:
        """Whether the pods hold ``rows`` message rows in all, once their writers committed."""
        await self.flush_pods()
        return sum(sum(p.message_counts().values()) for p in self.pods.values()) == rows

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
        last: dict[str, Any] = {}

        async def finished() -> dict[str, Any] | None:
            last.update(await self.migration(migration_id))
            return dict(last) if last["state"] in ("done", "rolled_back") else None

        try:
            return dict(await eventually(finished, timeout, interval=0.05))
        except AssertionError:
            raise AssertionError(f"migration stuck: {last}") from None

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


async def run_cli(
    url: str, *args: str, token: str = ADMIN, timeout: float = 120
) -> tuple[int, str, str]:
    """``modbot-ring ARGS`` against the config service at ``url``: (exit code, out, err)."""
    proc = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        "--config-url",
        url,
        "--token",
        token,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


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


async def sim_with(guilds: int) -> RunningSim:
    """The simulator with ``guilds`` guilds, at a large bot's IDENTIFY concurrency: each of
    a stack's shards has its own bucket (a target opening a guild's shard is not refused)."""
    sim = await start_sim(max_concurrency=16)
    for i in range(guilds):
        sim.sim.world.create_guild(f"guild-{i}")
    return sim


async def stack_proxy(
    sim: RunningSim,
    config_url: str,
    *,
    interaction_deadline: float = 2.5,
    auth: AuthSettings | None = None,
    redis_url: str = "",
    redis_prefix: str = "modbot",
    port: int = 0,
) -> RunningProxy:
    """A stack's proxy, in this process."""
    settings = ProxySettings(
        internal_token=INTERNAL,
        discord_public_key=sim.sim.signer.public_key_hex,
        discord_api_url=sim.api_url,
        interaction_deadline=interaction_deadline,
        followup_window=60,
        # tests not about sign-in run the proxy as local development does
        auth=auth or AuthSettings(no_auth=True, rate_limit_anon=0, rate_limit_user=0),
    )
    return await start_proxy(
        settings,
        config_url=config_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        read_token=READ,
        poll_interval=0.2,
        port=port,
    )


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
    register_first: bool = True,
) -> Any:
    """A converged stack. ``register_first``: every pod is registered, and the shards
    spread evenly among them, before any pod starts. Pods that register themselves one by
    one start with the first owning every shard for a moment; each later pod then waits
    out Discord's 5 s IDENTIFY window for the shards it takes over (about 5 s per stack)."""
    sim = await sim_with(guilds)
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
        if register_first:
            await _register_first(config, procs)
        for proc in procs.values():
            proc.start()
        proxy = await stack_proxy(
            sim,
            config.url,
            interaction_deadline=interaction_deadline,
            auth=auth,
            redis_url=redis_url,
            redis_prefix=redis_prefix,
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
                proc.stop()
            await http.close()
            await proxy.stop()
            await sim.stop()


async def _register_first(config: ConfigService, procs: dict[str, PodProcess]) -> None:
    """Register ``procs`` and spread the shards as the config service would once they all
    answered (it spreads only among pods that say they hold nothing; these have not
    started, and their databases are new)."""
    from config_store.api import MIGRATOR_KEY, PUBLISHER_KEY
    from config_store.errors import Conflict
    from config_store.migrator import even_shard_pins

    await add_pods(config.url, {name: proc.url for name, proc in procs.items()})
    publisher, migrator = config.app[PUBLISHER_KEY], config.app[MIGRATOR_KEY]
    for _ in range(3):
        await publisher.refresh()
        table = publisher.snapshot.table
        pins = even_shard_pins(table)
        if pins is None:
            return
        with contextlib.suppress(Conflict):  # the table changed meanwhile: look again
            await migrator.migrations.spread_shards(pins, "tests/stack.py", table.version)
            await publisher.refresh()
            return


# -- the proxy's edge: the proxy in this process before stand-in pods, spoken to in raw bytes --

LIMITS = ProxySettings(
    # these tests are about HTTP, not about who may ask: no login, no rate limit
    auth=AuthSettings(no_auth=True, rate_limit_anon=1e9, rate_limit_user=1e9),
    internal_token="inside",
    upstream_timeout=2.0,
    max_url_bytes=1024,
    max_header_bytes=4096,
    max_headers=20,
    max_body_bytes=64 * 1024,
    header_timeout=1.0,
    body_timeout=1.0,
    idle_timeout=1.0,
    max_connections=50,
)


class EchoPod(AppServer):
    """Echoes the request id (``X-Req``), the body's length and a few headers."""

    def __init__(self) -> None:
        super().__init__(self.echo, client_max_size=16 * 1024 * 1024)
        self.seen_expect: list[str] = []
        self.interaction_status = 200
        self.interaction_calls = 0

    async def echo(self, request: web.Request) -> web.StreamResponse:
        self.seen_expect.append(request.headers.get("Expect", ""))
        if request.path == "/interactions":
            self.interaction_calls += 1
            if self.interaction_status != 200:
                return web.json_response({"error": "no"}, status=self.interaction_status)
            return web.json_response({"type": 4, "data": {"content": "done"}})
        if request.path.endswith("/early"):  # answers before reading the body
            return web.json_response({"req": request.headers.get("X-Req", ""), "early": 1})
        body = await request.read()
        if request.path.endswith("/boom"):
            return web.json_response({"error": "overflow"}, status=500)
        if request.path.endswith("/slow"):
            await asyncio.sleep(5)  # slower than the proxy's upstream timeout
        return web.json_response(
            {
                "req": request.headers.get("X-Req", ""),
                "path": request.path_qs,
                "len": len(body),
                "sum": sum(body) % 65521,
            }
        )


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ScriptPod:
    """A pod whose every connection runs ``script`` (garbage, stalls, odd framing)."""

    def __init__(self, script: Script) -> None:
        self.port = free_port()
        self.script = script
        self.requests = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self.script(reader, writer)
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def answers(answer: bytes, pod_box: list[ScriptPod]) -> Script:
    """Answer every request head with ``answer`` (no body is read: GETs only)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            pod_box[0].requests += 1
            writer.write(answer)
            await writer.drain()

    return script


@contextlib.asynccontextmanager
async def proxy_before(
    tmp_path: Path, pod: Any, name: str, settings: ProxySettings = LIMITS
) -> AsyncIterator[tuple[RunningProxy, ConfigService]]:
    """A config service (SQLite) with ``pod`` started as its only pod, and the proxy before it:
    every guild goes to ``pod``. The stand-in pods never heartbeat: the config service must
    not sweep them offline mid-test."""
    async with running_config(
        f"sqlite:///{tmp_path}/c.db", shard_count=None, heartbeat_timeout=3600
    ) as config:
        await pod.start()
        try:
            await add_pods(config.url, {name: f"http://127.0.0.1:{pod.port}"})
            proxy = await start_proxy(settings, config_url=config.url, read_token=READ)
            try:
                yield proxy, config
            finally:
                await proxy.stop()
        finally:
            await pod.stop()


@contextlib.asynccontextmanager
async def edge_stack(
    tmp_path: Path, settings: ProxySettings = LIMITS
) -> AsyncIterator[tuple[RunningProxy, EchoPod, ConfigService]]:
    """The proxy before one ``EchoPod``, registered as "echo"."""
    pod = EchoPod()
    async with proxy_before(tmp_path, pod, "echo", settings) as (proxy, config):
        yield proxy, pod, config


@contextlib.asynccontextmanager
async def pod_stack(
    tmp_path: Path,
    script_for: Callable[[list[ScriptPod]], Script],
    settings: ProxySettings = LIMITS,
) -> AsyncIterator[tuple[RunningProxy, ScriptPod]]:
    """The proxy before one ``ScriptPod``, registered as "raw"."""
    box: list[ScriptPod] = []
    pod = ScriptPod(lambda r, w: script_for(box)(r, w))
    box.append(pod)
    async with proxy_before(tmp_path, pod, "raw", settings) as (proxy, _):
        yield proxy, pod


@contextlib.asynccontextmanager
async def replacing_pod(
    proxy: RunningProxy, config: ConfigService, pod: Any, name: str = "echo"
) -> AsyncIterator[Any]:
    """``pod`` started and registered as ``name`` (in place of the stack's own pod of that
    name), the proxy following the table at once; stopped afterwards."""
    await pod.start()
    try:
        await add_pods(config.url, {name: f"http://127.0.0.1:{pod.port}"})
        await proxy.tables.refresh()
        yield pod
    finally:
        await pod.stop()


class HeaderPod(AppServer):
    """Answers every request with the headers it received, repeated ones included."""

    def __init__(self) -> None:
        super().__init__(self.echo)

    async def echo(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {"path": request.raw_path, "headers": [[k, v] for k, v in request.headers.items()]}
        )


class Responses:
    """Reads HTTP/1.1 responses off a raw connection, interim ones included."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.done: list[tuple[int, dict[str, str], bytes]] = []
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body = b""
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False

    def on_message_begin(self) -> None:
        self._headers, self._body = {}, b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self._status, self._headers, self._body))

    async def read(
        self, count: int, timeout: float = 5.0
    ) -> list[tuple[int, dict[str, str], bytes]]:
        """Until ``count`` responses (1xx included) or the close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.done) < count and not self.closed:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                break
            except ConnectionError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self.parser.feed_data(chunk)
        return self.done


async def connect(proxy: RunningProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = proxy.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True if the proxy closes the connection within ``seconds`` (data before is drained)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        if not chunk:
            return True
    return False


async def settled(proxy: RunningProxy, seconds: float = 1.5) -> None:
    """Nothing is left behind once every client has gone: no client, no exchange in
    flight, at most a handful of idle pooled upstream connections, none owing bytes."""
    front = proxy.front
    with contextlib.suppress(AssertionError):  # the asserts below say what is left
        await eventually(lambda: not (front.clients or front.inflight), seconds, interval=0.05)
    assert not front.clients, f"{len(front.clients)} client connections left open"
    assert not front.inflight, f"{len(front.inflight)} exchanges left in flight"
    for idle in front.pool.idle.values():
        assert len(idle) <= 4
        assert all(conn.exchange is None and not conn.closed for conn in idle)
