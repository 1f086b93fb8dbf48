"""Shared fixtures: real PostgreSQL and Redis, each test isolated in its own schema or
key prefix; real aiohttp servers on loopback; fault injection by real processes."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import types
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import redis

if TYPE_CHECKING:
    from aiohttp import web

PG_URL = os.environ.get("MODBOT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("MODBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN = "admin-secret"
READ = "read-secret"


_HANDED_OUT: set[int] = set()


def _worker_ports() -> tuple[list[int], range]:
    """Under pytest-xdist, this worker's own slice of the ports below the kernel's
    ephemeral range (shuffled): a port handed to a server that binds seconds later (a pod
    process) cannot be taken meanwhile by another worker, nor by anyone's bind(0) or
    outgoing connection. Empty when not a worker: then the kernel picks (bind to 0)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not worker[2:].isdigit():
        return [], range(0)
    index = int(worker[2:])
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    span = (low - 10000) // count
    if span < 500:
        return [], range(0)
    own = range(10000 + index * span, 10000 + (index + 1) * span)
    ports = list(own)
    random.Random(os.getpid()).shuffle(ports)  # two runs at once start apart
    return ports, own


_WORKER_PORTS, _WORKER_RANGE = _worker_ports()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kernel_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port() -> int:
    """A free loopback port, never the same one twice in this process: two servers of
    one stack picking ports before either binds must not collide."""
    return free_ports(1)


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports (``dev up --base-port``), none
    handed out before in this process; from this xdist worker's own slice if it has one."""
    for attempt in range(2 * len(_WORKER_PORTS) + 200):
        if _WORKER_PORTS:
            if attempt == len(_WORKER_PORTS):  # a whole lap handed out: those are long gone
                _HANDED_OUT.clear()
            base = _WORKER_PORTS.pop(0)
            _WORKER_PORTS.append(base)
            block = range(base, base + n)
            if block[-1] not in _WORKER_RANGE:
                continue
        else:
            base = _kernel_port()
            block = range(base, base + n)
            if block[-1] > 65000:
                continue
        if _HANDED_OUT.intersection(block):
            continue
        if (n == 1 and not _WORKER_PORTS) or all(_bindable(port) for port in block):
            _HANDED_OUT.update(block)
            return base
    raise RuntimeError(f"no block of {n} free loopback ports")


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
    heartbeat_timeout: float = 3600.0,
    migration_token: str = "",
    migration_step_delay: float = 0.0,
    balance: object | None = None,
) -> AsyncIterator[ConfigService]:
    """The config service in this process. Pods registered by a test that never heartbeat
    stay active however slow the machine (tests/stack.py's pods heartbeat and pass 15 s;
    a test about going offline passes its own short timeout)."""
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
        client = redis.Redis(port=self.port, socket_timeout=0.2)

        def up() -> bool:
            with contextlib.suppress(redis.RedisError):
                return bool(client.ping())
            return False

        try:
            eventually_sync(up, timeout=10, interval=0.05)
        finally:
            client.close()

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


async def eventually(
    predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02
) -> Any:
    """Poll ``predicate`` (sync or async) until truthy; fail with the last value. The one way
    tests wait for something to happen (a fixed sleep is too short on a loaded machine and
    too long on a quiet one); a predicate may raise to give up early (a process that died)."""
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


def eventually_sync(
    predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02
) -> Any:
    """``eventually`` for code with no event loop (threads, fixtures that start processes)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


class AppServer:
    """A stand-in HTTP server (a pod, a config service, Discord's webhook endpoint) on a
    loopback port of its own. ``routes`` is one handler for every method and path, a dict
    {(method, path pattern): handler}, or a whole app. The test may stop it and start it
    again on the same port (a pod that goes away and comes back; not with a whole app).
    ``async with AppServer(handler) as url`` serves for the block."""

    def __init__(
        self,
        routes: Handler | dict[tuple[str, str], Handler] | web.Application,
        *,
        port: int | None = None,
        client_max_size: int = 1024**2,
        shutdown_timeout: float = 60.0,
    ) -> None:
        self.routes = routes
        self.port = port or free_port()
        self.client_max_size = client_max_size
        self.shutdown_timeout = shutdown_timeout
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        from aiohttp import web

        if isinstance(self.routes, web.Application):
            return self.routes
        app = web.Application(client_max_size=self.client_max_size)
        routes = (
            self.routes if isinstance(self.routes, dict) else {("*", "/{tail:.*}"): self.routes}
        )
        for (method, path), handler in routes.items():
            app.router.add_route(method, path, handler)
        return app

    async def start(self) -> str:
        from aiohttp import web

        self.runner = web.AppRunner(
            self.app(), access_log=None, shutdown_timeout=self.shutdown_timeout
        )
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class HoldingPods:
    """Stand-in pods that answer only ``/internal/guilds`` with the guilds each holds rows of
    (``holdings``): all the config service asks a pod when it joins or is drained."""

    def __init__(self) -> None:
        self.holdings: dict[str, list[str]] = {}
        self.servers: dict[str, AppServer] = {}

    async def start(self, name: str) -> str:
        """Start pod ``name``; returns its URL."""
        from aiohttp import web

        async def guilds(_: web.Request) -> web.Response:
            return web.json_response({"pod": name, "guilds": self.holdings.get(name, [])})

        self.servers[name] = AppServer({("GET", "/internal/guilds"): guilds})
        return await self.servers[name].start()

    async def stop(self, *names: str) -> None:
        """Stop the named pods (they stop answering), or all of them."""
        for name in names or tuple(self.servers):
            await self.servers.pop(name).stop()


def nowhere(*names: str) -> dict[str, str]:
    """Pods (name -> URL) at loopback ports nobody listens on: for ``add_pods``."""
    return {name: f"http://127.0.0.1:{free_port()}" for name in names}


async def add_pods(service_url: str, pods: dict[str, str]) -> None:
    """Register ``pods`` (name -> URL) with a config service; none of them has to answer."""
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        for name, url in pods.items():
            async with http.put(f"{service_url}/v1/pods/{name}", json={"url": url}) as r:
                assert r.status == 200, await r.text()


@pytest.fixture
async def svc(database_url):
    """A config service on each dialect with two registered pods (``svc.http`` attached)."""
    import aiohttp

    url, schema = database_url
    async with running_config(url, schema) as service, aiohttp.ClientSession() as http:
        service.http = http
        await add_pods(
            service.url, {f"gateway-{i}": f"http://127.0.0.1:{9000 + i}" for i in (0, 1)}
        )
        yield service


@pytest.fixture
async def pg_svc(pg_schema: str) -> AsyncIterator[ConfigService]:
    """A config service on PostgreSQL with gateway-0 and gateway-1 registered at loopback
    ports nobody listens on."""
    async with running_config(PG_URL, pg_schema) as service:
        await add_pods(service.url, nowhere("gateway-0", "gateway-1"))
        yield service


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Any]:
    """The proxy before one stand-in pod: tests/stack.py's edge_stack (proxy, pod, config)."""
    from stack import edge_stack

    async with edge_stack(tmp_path) as stack:
        yield stack


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of our own (COMMON.md): a full disk that the test can free again."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free space)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
        with contextlib.suppress(OSError):
            while True:  # the last few bytes
                f.write(b"\0" * 512)
    return filler


# -- running in parallel (pytest-xdist: `make test` runs `pytest -n 4 --dist loadgroup`) --------
# Each test already has its own schema, key prefix, ports and tmp_path; what a module shares
# (a module-scoped stack, tests that run in order on it) must stay on one worker.
#
# xdist's own loadgroup renames each grouped node id ("...@group"), which pytest >= 9.2 no
# longer allows (node ids live in Node._id): it would silently split the groups. So the
# workers write the groups they collected to a file and the scheduler below reads them.

_SHARED_SCOPES = ("module", "class", "package")
_GROUPS_ENV = "MODBOT_TEST_XDIST_GROUPS"  # a directory, made by the controller


def pytest_configure(config: pytest.Config) -> None:
    """`-n N` alone means `--dist load`, which would split a module's shared stack (and its
    ordered flows) across workers: keep the groups together instead (the same otherwise)."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not config.pluginmanager.hasplugin("xdist"):
        return
    if getattr(config.option, "dist", "no") in ("load", "loadgroup"):
        config.option.dist = "loadgroup"
        os.environ[_GROUPS_ENV] = tempfile.mkdtemp(prefix="modbot-xdist-groups-")
        config.pluginmanager.register(_GroupScheduler(), "modbot-xdist-groups")


def pytest_unconfigure(config: pytest.Config) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(_GROUPS_ENV):
        shutil.rmtree(os.environ.pop(_GROUPS_ENV), ignore_errors=True)


class _GroupScheduler:
    """xdist's load-by-scope scheduling where a scope is a test's group (or the test alone)."""

    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: object) -> object:
        from xdist.scheduler import LoadScopeScheduling

        groups: dict[str, str] = {}

        class Scheduling(LoadScopeScheduling):  # type: ignore[misc]
            def _split_scope(self, nodeid: str) -> str:
                if not groups:  # every worker wrote its file before reporting its collection
                    for path in Path(os.environ[_GROUPS_ENV]).glob("*.json"):
                        groups.update(json.loads(path.read_text()))
                return groups.get(nodeid, nodeid)

        return Scheduling(config, log)


def _shared_group(item: pytest.Item) -> str | None:
    """The module (and parameter of a module-scoped fixture) whose fixture the test shares."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    callspec = getattr(item, "callspec", None)
    shared, params = False, []
    for name in sorted(info.names_closure):
        defs = info.name2fixturedefs.get(name)
        if not defs or defs[-1].scope not in _SHARED_SCOPES:
            continue
        shared = True
        if callspec is not None and name in callspec.indices:
            params.append(f"{name}={callspec.indices[name]}")
    if not shared:
        return None
    return "::".join(["group", item.nodeid.split("::")[0], *params])


# -- kinds: every test is exactly one of unit / integration / e2e, decided here and only here ----
# (`pytest -m unit` etc.; tests/test_kinds.py checks that each collected test has exactly one).
# A test's kind comes from what it touches: the names its code, the helpers of ours it calls and
# the fixtures it uses refer to. e2e: the whole system (gateway pod processes, a stack, a
# browser, a container); integration: a real server or database (PostgreSQL, Redis, an aiohttp
# server, a socket) or a subprocess; unit: none of those (temporary files and SQLite are fine).

KINDS = ("unit", "integration", "e2e")
_E2E_NAMES = frozenset(
    {
        "running_stack",
        "stack_with_config_process",
        "pod_process",
        "PodProcess",
        "webdriver",
        "docker",
    }
)
_INTEGRATION_NAMES = frozenset(
    {
        *("pg_schema", "redis_prefix", "database_url", "svc", "own_redis", "PG_URL", "REDIS_URL"),
        *("running_config", "start_sim", "start_proxy", "free_port", "free_ports", "TcpCut"),
        *("RedisServer", "psycopg", "AppRunner", "TCPSite", "TestServer", "ClientSession"),
        *("start_server", "open_connection", "create_connection", "urlopen"),
        *("subprocess", "create_subprocess_exec", "create_subprocess_shell"),
    }
)
# where the names mislead: `modbot-ring dev up` runs the whole system as subprocesses
_KIND_OVERRIDES = {
    "tests/test_devstack.py": "e2e",
    "tests/test_dev_addpod.py": "e2e",
    "tests/test_readme_operations.py::test_every_operations_command_runs_against_dev_up": "e2e",
}
_TESTS_DIR = Path(__file__).resolve().parent
_NAMES_SEEN: dict[int, frozenset[str]] = {}


def _ours(obj: object) -> bool:
    """Defined in tests/ (a helper worth reading), not in the product or a library."""
    try:
        source = inspect.getsourcefile(obj)  # type: ignore[arg-type]
    except TypeError:
        return False
    return source is not None and Path(source).resolve().is_relative_to(_TESTS_DIR)


def _names(obj: object) -> frozenset[str]:
    """The global and attribute names ``obj`` (a function or class of ours) and the helpers of
    ours it calls refer to, nested functions and classes included."""
    obj = inspect.unwrap(getattr(getattr(obj, "hypothesis", None), "inner_test", obj))  # type: ignore[arg-type]
    if id(obj) in _NAMES_SEEN:
        return _NAMES_SEEN[id(obj)]
    _NAMES_SEEN[id(obj)] = frozenset()  # a helper that calls itself
    functions = list(vars(obj).values()) if isinstance(obj, type) else [obj]
    names: set[str] = set()
    for function in functions:
        function = getattr(function, "fget", None) or getattr(function, "__func__", function)
        code = getattr(function, "__code__", None)
        if code is None:
            continue
        codes = [code]
        while codes:
            code = codes.pop()
            names.update(code.co_names)
            codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        namespace = getattr(function, "__globals__", {})
        for name in list(names):
            helper = namespace.get(name)
            if callable(helper) and _ours(inspect.unwrap(helper)):
                names |= _names(helper)
    _NAMES_SEEN[id(obj)] = frozenset(names)
    return _NAMES_SEEN[id(obj)]


def kind_of(item: pytest.Item) -> str:
    """unit, integration or e2e: see above."""
    for prefix, kind in _KIND_OVERRIDES.items():
        if item.nodeid == prefix or item.nodeid.startswith((f"{prefix}::", f"{prefix}[")):
            return kind
    names = set(getattr(item, "fixturenames", ()))
    if (function := getattr(item, "function", None)) is not None:
        names |= _names(function)
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs if info is not None else {}
    for name in info.names_closure if info is not None else ():
        for fixturedef in defs.get(name, ()):
            if _ours(inspect.unwrap(fixturedef.func)):
                names |= _names(fixturedef.func)
    if names & _E2E_NAMES:
        return "e2e"
    return "integration" if names & _INTEGRATION_NAMES else "unit"


def _mark_kinds(items: list[pytest.Item]) -> None:
    kinds: dict[str, list[str]] = {}
    for item in items:
        marked = [m.name for m in item.iter_markers() if m.name in KINDS]
        if marked:
            raise pytest.UsageError(
                f"{item.nodeid} is marked {marked[0]} by hand: a test's kind is decided in "
                "tests/conftest.py (kind_of, _KIND_OVERRIDES)"
            )
        kind = kind_of(item)
        item.add_marker(getattr(pytest.mark, kind))
        kinds[item.nodeid] = [m.name for m in item.iter_markers() if m.name in KINDS]
    if out := os.environ.get("MODBOT_TEST_KINDS_OUT"):  # tests/test_kinds.py reads it
        Path(out).write_text(json.dumps(kinds))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests sharing a module-scoped fixture form one xdist group (one worker builds it once);
    on a worker, slow tests that share nothing go first so that none of them is the tail.
    First, before `-m` deselects, every test gets its kind (unit / integration / e2e)."""
    _mark_kinds(items)
    xdist = config.pluginmanager.hasplugin("xdist")
    groups: dict[str, str] = {}
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        group = (mark.args[0] if mark and mark.args else None) or _shared_group(item)
        if group:
            groups[item.nodeid] = f"group::{group}" if mark else group
            if mark is None and xdist:  # `-p no:xdist` knows no such mark (strict markers)
                item.add_marker(pytest.mark.xdist_group(group))
    worker, folder = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get(_GROUPS_ENV)
    if worker and folder:
        items.sort(key=lambda i: not (i.get_closest_marker("slow") and i.nodeid not in groups))
        tmp = Path(folder) / f"{worker}.tmp"
        tmp.write_text(json.dumps(groups))
        tmp.replace(Path(folder) / f"{worker}.json")
