"""The image, built and run: the repository's Dockerfile is built from a Debian base made
here (debootstrap, cached by digest) with the locked wheels and the network off, and the
seed's dashboard flow runs on containers of it: the Discord simulator, the config service
(real PostgreSQL and Redis on the host), one gateway pod on a named volume, and the proxy,
all with ``--network host`` bound to 127.0.0.1, read-only root filesystems and no
capabilities, as the manifests run them. The simulator runs from the same image.

Skipped, with the reason, where no Docker engine can run (dockerd missing, not root, no
debootstrap or Debian mirror). Cold and warm times are in README ("The image"); this run's
are printed with -s."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from html import unescape
from typing import Any

import aiohttp
import psycopg
import pytest
import pytest_asyncio
import redis
import yaml  # type: ignore[import-untyped]
from conftest import PG_URL, REDIS_URL, eventually, free_port
from containers import (
    IMAGE,
    LABEL,
    ROOT,
    Docker,
    Unavailable,
    base_image,
    build_context,
    build_image,
    ensure_daemon,
    run_args,
    wheelhouse,
)

# cold (debootstrap, wheels, a full build) takes minutes; pytest-timeout counts the fixtures
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.asyncio(loop_scope="module"),
]

GUILDS = 4
FIRST_BATCH = 25


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    try:
        engine = ensure_daemon()
    except Unavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")
    try:
        yield engine
    finally:
        leftovers = engine("ps", "-aq", "--filter", f"label={LABEL}=1", check=False).stdout.split()
        if leftovers:
            engine("rm", "-f", "-v", *leftovers, check=False)
        engine("builder", "prune", "-f", "--keep-storage", "3GB", check=False, timeout=300)
        engine.stop()


@pytest.fixture(scope="module")
def image(docker: Docker, tmp_path_factory: pytest.TempPathFactory) -> str:
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        base = base_image(docker, timings)
        wheels = wheelhouse(timings)
    except Unavailable as exc:
        pytest.skip(f"cannot make the base image: {exc}")
    context = build_context(tmp_path_factory.mktemp("context"), wheels)
    built = time.monotonic()
    build_image(docker, base, context)
    timings["build"] = time.monotonic() - built
    timings["total"] = time.monotonic() - started
    print("image timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    return IMAGE


class Stack:
    """The containers of one dashboard flow and what the test needs to reach them."""

    def __init__(self, docker: Docker, image: str) -> None:
        self.docker, self.image = docker, image
        run = uuid.uuid4().hex[:8]
        self.names = {r: f"mbr-{run}-{r}" for r in ("sim", "config", "gateway", "proxy")}
        self.volume = f"mbr-{run}-data"
        self.port = {r: free_port() for r in ("sim", "config", "gateway", "proxy", "admin")}
        self.schema, self.prefix = f"t_{run}", f"t{run}"
        secret = secrets.token_urlsafe(16)
        self.env = {
            "MODBOT_ADMIN_TOKEN": secrets.token_urlsafe(16),
            "MODBOT_READ_TOKEN": secrets.token_urlsafe(16),
            "MODBOT_INTERNAL_TOKEN": secrets.token_urlsafe(16),
            "MODBOT_MIGRATION_TOKEN": secrets.token_urlsafe(16),
            "MODBOT_SIM_CLIENT_SECRET": secret,
            "MODBOT_DISCORD_CLIENT_SECRET": secret,
            "MODBOT_SESSION_KEYS": secrets.token_urlsafe(32),
            "DISCORD_TOKEN": "sim-token",
            "MODBOT_REDIS_URL": REDIS_URL,
            "MODBOT_REDIS_PREFIX": self.prefix,
        }
        self.sim: dict[str, Any] = {}
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))

    def url(self, role: str) -> str:
        return f"http://127.0.0.1:{self.port[role]}"

    def start(self, role: str, *argv: str, env: dict[str, str] | None = None) -> None:
        volume = self.volume if role == "gateway" else None
        args = run_args(self.names[role], {**self.env, **(env or {})}, volume)
        self.docker(*args, self.image, *argv)

    def gateway_argv(self) -> list[str]:
        return [
            "gateway",
            "--name",
            "gateway-0",
            "--port",
            str(self.port["gateway"]),
            "--config-url",
            self.url("config"),
            "--database",
            "/data/gateway.db",
            "--discord-api-url",
            self.sim["api_url"],
            "--discord-gateway-url",
            self.sim["gateway_url"],
            "--identify-interval",
            "0",
        ]

    def state(self, role: str) -> dict[str, Any]:
        out = self.docker("inspect", "--format", "{{json .State}}", self.names[role])
        return dict(json.loads(out.stdout))

    async def ready(self, role: str, url: str, timeout: float = 90) -> Any:
        """The body of the first 200 from ``url``; fails at once (with the container's log)
        if the container stops."""
        checked = 0.0

        async def answer() -> Any:
            nonlocal checked
            with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return await r.json()
            if time.monotonic() - checked > 1:
                checked = time.monotonic()
                if not self.state(role)["Running"]:
                    raise AssertionError(f"{role} stopped:\n{self.logs(role)}")
            return None

        try:
            return await eventually(answer, timeout, interval=0.2)
        except AssertionError as exc:
            if "stopped" in str(exc):
                raise
            raise AssertionError(f"{role} not ready after {timeout}s:\n{self.logs(role)}") from None

    def logs(self, role: str) -> str:
        out = self.docker("logs", "--tail", "40", self.names[role], check=False)
        return (out.stdout + out.stderr)[-4000:]

    async def up(self) -> None:
        self.start(
            "sim",
            "discord-sim",
            "--port",
            str(self.port["sim"]),
            "--seed-guilds",
            str(GUILDS),
            "--max-concurrency",
            "16",
        )
        self.start(
            "config",
            "config",
            "--port",
            str(self.port["config"]),
            "--database-url",
            PG_URL,
            "--shard-count",
            "4",
            env={"MODBOT_DB_SCHEMA": self.schema},
        )
        self.sim = await self.ready("sim", f"{self.url('sim')}/control/info")
        await self.ready("config", f"{self.url('config')}/readyz")
        self.docker("volume", "create", "--label", f"{LABEL}=1", self.volume)
        self.start("gateway", *self.gateway_argv())
        # a signed-in user with Administrator in every guild (the simulator plays OAuth2)
        guilds = await self.guilds()
        body = {"username": "dev-admin", "guilds": {g: {"permissions": 8} for g in guilds}}
        async with self.http.post(
            f"{self.url('sim')}/control/oauth/users", data=json.dumps(body)
        ) as r:
            assert r.status in (200, 201), await r.text()
        self.start(
            "proxy",
            "proxy",
            "--port",
            str(self.port["proxy"]),
            "--admin-port",
            str(self.port["admin"]),
            "--config-url",
            self.url("config"),
            "--discord-public-key",
            self.sim["public_key"],
            "--discord-api-url",
            self.sim["api_url"],
            "--discord-client-id",
            str(self.sim["application_id"]),
            "--oauth-redirect-url",
            f"{self.url('proxy')}/oauth/callback",
            "--discord-oauth-url",
            f"{self.url('sim')}/oauth2/authorize",
        )
        await self.ready("gateway", f"{self.url('gateway')}/readyz")
        await self.ready("proxy", f"{self.url('admin')}/readyz")

    async def guilds(self) -> list[str]:
        async with self.http.get(f"{self.url('sim')}/control/guilds") as r:
            return [g["id"] for g in (await r.json())["guilds"]]

    async def send(self, guild: str, count: int) -> None:
        async with self.http.post(
            f"{self.url('sim')}/control/messages",
            data=json.dumps({"guild_ids": [guild], "count": count}),
        ) as r:
            assert r.status == 200 and (await r.json())["sent"] == count

    async def sign_in(self, guild: str) -> aiohttp.ClientSession:
        """Sign in through the simulator's consent page; the session cookie is the proxy's."""
        user = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=15)
        )
        async with user.get(f"{self.url('proxy')}/login?next=/guild/{guild}/dashboard") as r:
            page = await r.text()
            assert r.status == 200 and 'id="authorize"' in page, page[:500]
            consent = str(r.url).split("?")[0]
        fields = {k: unescape(v) for k, v in re.findall(r'name="([^"]+)" value="([^"]*)"', page)}
        picked = re.search(r'<option value="(\d+)"[^>]*>dev-admin<', page)
        assert picked is not None, page[:500]
        fields |= {"user_id": picked.group(1), "action": "authorize"}
        async with user.post(consent, data=fields) as r:
            assert r.status == 200 and "<svg" in await r.text()
        return user

    async def messages_shown(self, user: aiohttp.ClientSession, guild: str) -> int | None:
        async with user.get(f"{self.url('proxy')}/guild/{guild}/dashboard") as r:
            html = await r.text()
            if r.status != 200:
                return None
            assert r.headers["X-Modbot-Pod"] == "gateway-0" and "<svg" in html
        m = re.search(r"(\d+) messages? from", html)
        return int(m.group(1)) if m else None

    async def until_shown(
        self, user: aiohttp.ClientSession, guild: str, count: int, timeout: float = 30
    ) -> None:
        seen = None

        async def shown() -> bool:
            nonlocal seen
            seen = await self.messages_shown(user, guild)
            return seen == count

        try:
            await eventually(shown, timeout, interval=0.3)
        except AssertionError:
            raise AssertionError(
                f"dashboard shows {seen} messages, not {count}; the pod's log:\n{self.logs('gateway')}"
            ) from None

    def down(self) -> None:
        names = [n for n in self.names.values()]
        self.docker("rm", "-f", "-v", *names, check=False)
        self.docker("volume", "rm", "-f", self.volume, check=False)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{self.prefix}:*"):
            client.delete(key)
        client.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(docker: Docker, image: str) -> AsyncIterator[Stack]:
    s = Stack(docker, image)
    try:
        started = time.monotonic()
        await s.up()
        print(f"containers up in {time.monotonic() - started:.1f} s")
        yield s
    finally:
        await s.http.close()
        s.down()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def admin(stack: Stack) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    guild = (await stack.guilds())[0]
    user = await stack.sign_in(guild)
    try:
        yield user, guild
    finally:
        await user.close()


async def test_the_signed_in_dashboard_shows_the_pods_data_through_the_proxy(
    stack: Stack, admin: tuple[aiohttp.ClientSession, str]
) -> None:
    user, guild = admin
    assert await stack.messages_shown(user, guild) == 0
    await stack.send(guild, FIRST_BATCH)
    await stack.until_shown(user, guild, FIRST_BATCH)
    # anonymous: sent to sign in, never the guild's data
    async with stack.http.get(
        f"{stack.url('proxy')}/guild/{guild}/dashboard", allow_redirects=False
    ) as r:
        assert r.status == 302 and r.headers["Location"].startswith("/login")


def _manifest_containers() -> list[dict[str, Any]]:
    out = []
    for path in sorted((ROOT / "manifests" / "base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = (doc or {}).get("spec", {})
            pod = spec.get("jobTemplate", {}).get("spec", spec).get("template", {}).get("spec")
            if pod:
                for c in pod.get("initContainers", []) + pod["containers"]:
                    if c["image"] == "modbot-ring":
                        out.append({**c, "pod_security": pod.get("securityContext", {})})
    return out


async def test_every_container_runs_as_the_manifests_user_on_a_read_only_root(
    stack: Stack, docker: Docker
) -> None:
    user = docker("image", "inspect", "--format", "{{.Config.User}}", stack.image).stdout.strip()
    uid, _, gid = user.partition(":")
    for c in _manifest_containers():  # what the manifests promise, the image is built for
        assert c["pod_security"]["runAsUser"] == int(uid), c["name"]
        assert c["pod_security"]["runAsGroup"] == int(gid), c["name"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
    for role, name in stack.names.items():
        host = json.loads(docker("inspect", "--format", "{{json .HostConfig}}", name).stdout)
        assert host["ReadonlyRootfs"] and host["NetworkMode"] == "host", role
        out = docker(
            "exec", name, "sh", "-c", "id -u; id -g; touch /opt/modbot/x; touch /etc/x", check=False
        )
        assert out.stdout.split()[:2] == [uid, gid], (role, out.stdout)
        assert out.returncode != 0 and "Read-only file system" in out.stderr, (role, out.stderr)
    # the pod's own file is on the volume, owned by the same user
    out = docker("exec", stack.names["gateway"], "stat", "-c", "%u %a", "/data/gateway.db")
    assert out.stdout.split()[0] == uid


async def test_an_unwritable_volume_stops_the_pod_with_a_reason(
    stack: Stack, docker: Docker
) -> None:
    """A confused operator mounts a root-owned volume: the pod exits, saying why."""
    name, volume = f"{stack.names['gateway']}-ro", f"{stack.volume}-ro"
    docker("volume", "create", "--label", f"{LABEL}=1", volume)
    try:
        # a fresh volume over a directory the image does not own is root's
        docker(
            *run_args(name, stack.env, extra=["-v", f"{volume}:/srv/state"]),
            stack.image,
            *[
                a if a != "/data/gateway.db" else "/srv/state/gateway.db"
                for a in stack.gateway_argv()
            ],
        )

        def exited() -> dict[str, Any] | None:  # not: running on a volume it cannot write
            state = json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)
            return None if state["Running"] else state

        state = await eventually(exited, timeout=60, interval=0.3)
        assert state["ExitCode"] != 0
        logs = docker("logs", name, check=False)
        said = logs.stderr + logs.stdout
        # one line that names the file, not a traceback
        assert re.search(r"cannot open database /srv/state/gateway\.db", said), said[-2000:]
        assert "Traceback" not in said, said[-2000:]
    finally:
        docker("rm", "-f", "-v", name, check=False)
        docker("volume", "rm", "-f", volume, check=False)


async def test_a_killed_gateway_keeps_its_sqlite_data_on_the_volume(
    stack: Stack, admin: tuple[aiohttp.ClientSession, str], docker: Docker
) -> None:
    user, guild = admin
    before = await stack.messages_shown(user, guild)
    assert before is not None
    await stack.send(guild, 5)
    await stack.until_shown(user, guild, before + 5)  # stored: the pod has committed them
    name = stack.names["gateway"]
    docker("kill", name)  # SIGKILL: no shutdown, no final flush
    state = stack.state("gateway")
    assert not state["Running"] and state["ExitCode"] == 137
    docker("start", name)
    await stack.ready("gateway", f"{stack.url('gateway')}/readyz")
    await stack.until_shown(user, guild, before + 5)
    # the pod replaced (a new container on the same volume, as a rescheduled StatefulSet pod)
    docker("kill", name)
    docker("rm", "-v", name)
    stack.start("gateway", *stack.gateway_argv())
    await stack.ready("gateway", f"{stack.url('gateway')}/readyz")
    await stack.until_shown(user, guild, before + 5)


async def test_a_killed_and_restarted_gateway_stores_new_messages(
    stack: Stack, admin: tuple[aiohttp.ClientSession, str], docker: Docker
) -> None:
    """After kill -9 the pod resumes its Discord session (no READY, no guild cache): the
    messages that come next must still be stored."""
    user, guild = admin
    name = stack.names["gateway"]
    docker("kill", name)
    docker("start", name)
    await stack.ready("gateway", f"{stack.url('gateway')}/readyz")
    before = await stack.messages_shown(user, guild)
    assert before is not None
    await stack.send(guild, 5)
    await stack.until_shown(user, guild, before + 5)


async def test_the_image_carries_every_tool_the_manifests_call(
    stack: Stack, docker: Docker
) -> None:
    """The CronJob's pg_dump, the sidecar's litestream, the CLI: all on the image's PATH."""
    out = docker(
        "run", "--rm", "--network", "none", "--read-only", stack.image,
        "sh", "-c", "pg_dump --version && litestream version && modbot-ring --version",
    )  # fmt: skip
    lines = out.stdout.splitlines()
    assert lines[0].startswith("pg_dump (PostgreSQL) 15"), lines
    assert lines[1].lstrip("v").startswith("0.5"), lines
    assert lines[2].startswith("modbot-ring "), lines
