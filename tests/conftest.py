"""Shared fixtures: real PostgreSQL and Redis, each test isolated in its own schema or
key prefix; real aiohttp servers on loopback; fault injection by real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import psycopg
import pytest
import redis

PG_URL = os.environ.get("MODBOT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("MODBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN = "admin-secret"
READ = "read-secret"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port, never the same one twice in this process: two servers of
    one stack picking ports before either binds must not collide."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema name; dropped (with everything in it) after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[str, str]]:
    """(url, schema) for both dialects."""
    if request.param == "postgres":
        yield from _pg(request)
    else:
        yield f"sqlite:///{tmp_path}/config.db", ""


def _pg(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield PG_URL, name
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@dataclass
class ConfigService:
    url: str
    store: object
    app: object
    runner: object


@contextlib.asynccontextmanager
async def running_config(
    db_url: str,
    schema: str = "",
    *,
    redis_url: str = "",
    redis_prefix: str = "modbot",
    shard_count: int | None = 4,
    heartbeat_timeout: float = 15.0,
    migration_token: str = "",
    migration_step_delay: float = 0.0,
    balance: object | None = None,
) -> AsyncIterator[ConfigService]:
    from aiohttp import web

    from config_store.service import build_app
    from config_store.store import open_store

    store = await open_store(db_url, schema=schema)
    await store.initialize_ring(shard_count)
    app = build_app(
        store,
        admin_token=ADMIN,
        read_token=READ,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        heartbeat_timeout=heartbeat_timeout,
        poll_interval=0.2,
        migration_token=migration_token,
        migration_step_delay=migration_step_delay,
        balance=balance,  # type: ignore[arg-type]
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield ConfigService(f"http://127.0.0.1:{port}", store, app, runner)
    finally:
        await runner.cleanup()
        await store.close()


class RedisServer:
    """A Redis of the test's own, on its own port, that the test may stop and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="modbot-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            with contextlib.suppress(Exception):
                if redis.Redis(port=self.port, socket_timeout=0.2).ping():
                    return
            time.sleep(0.05)
        raise RuntimeError("test redis did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed")
    server = RedisServer()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


class TcpCut:
    """A loopback TCP forwarder the test can cut (refuse and drop connections) and heal."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def heal(self) -> None:
        await self.start()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers.difference_update({writer, up_writer})


async def eventually(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Poll ``predicate`` (sync or async) until truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)


@pytest.fixture
async def svc(database_url):
    """A config service on each dialect with two registered pods (``svc.http`` attached)."""
    import aiohttp

    url, schema = database_url
    async with running_config(url, schema) as service, aiohttp.ClientSession() as http:
        service.http = http
        for i in range(2):
            async with http.put(
                f"{service.url}/v1/pods/gateway-{i}",
                json={"url": f"http://127.0.0.1:{9000 + i}"},
                headers={"Authorization": f"Bearer {ADMIN}"},
            ) as r:
                assert r.status == 200, await r.text()
        yield service
