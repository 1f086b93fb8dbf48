"""``modbot-ring dev up``: the whole system on one machine, on embedded defaults.

Starts the Discord simulator (seeded with a few guilds and a trickle of messages), the
config service (SQLite, or ``--postgres``), gateway pods, and the proxy, each as its own
``modbot-ring serve ...`` process, exactly as they run in Kubernetes. They talk only
over HTTP (and Redis with ``--redis``). Once up, a child that exits is restarted with
backoff (one line on stdout says which, its exit code and the delay), as Kubernetes
would. Ctrl-C stops everything cleanly, and the children die with ``dev up`` even
when it is killed (``PR_SET_PDEATHSIG``), so a restart finds its ports free.

State survives a restart (the state dir): the simulator's world (``discord-sim.json``),
the tokens and keys (``secrets.json``, 0600), pods added with ``dev add-pod``
(``pods.json``), the config database and the pods' SQLite files. The same guild ids,
the same bot token and session keys: sign-ins, links and rows stay valid.

``modbot-ring dev add-pod`` asks the running ``dev up`` for one more gateway pod over a
control endpoint on loopback; its URL and a per-run token are in ``control.json``
(0600, removed at exit), and ``dev.lock`` (an flock held while ``dev up`` runs) tells a
stale file from a live stack.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import fcntl
import hmac
import json
import math
import os
import secrets
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from modbot_runtime.atomic import StateFileError, read_json, write_atomic
from modbot_runtime.flags import Flag, env_bool

__all__ = ["ADD_POD_FLAGS", "DEV_FLAGS", "DevError", "add_pod", "run"]

# restart backoff: the first restart waits RESTART_DELAY s, each quick crash doubles it up
# to RESTART_MAX; a child that stayed up RESTART_RESET s starts from RESTART_DELAY again
RESTART_DELAY = 0.5
RESTART_MAX = 30.0
RESTART_RESET = 30.0

DEV_FLAGS = [
    Flag("state-dir", "MODBOT_DEV_DIR", ".modbot-dev", "where the databases and logs go"),
    Flag("pods", "MODBOT_DEV_PODS", 3, "gateway pods to run", int),
    Flag(
        "guilds",
        "MODBOT_DEV_GUILDS",
        6,
        "guilds the simulator starts with (first start; then the state dir keeps its world)",
        int,
    ),
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


ADD_POD_FLAGS = [DEV_FLAGS[0]]  # --state-dir: which running stack to ask

# files in the state dir
SECRETS_FILE = "secrets.json"
PODS_FILE = "pods.json"
CONTROL_FILE = "control.json"
LOCK_FILE = "dev.lock"
SIM_STATE_FILE = "discord-sim.json"
MAX_WEIGHT = 100.0  # modbot_ring's pod weight range is (0, 100]
# tokens kept across restarts; the first four may come from the environment instead
_SECRET_ENV = {
    "admin_token": "MODBOT_ADMIN_TOKEN",
    "read_token": "MODBOT_READ_TOKEN",
    "internal_token": "MODBOT_INTERNAL_TOKEN",
    "migration_token": "MODBOT_MIGRATION_TOKEN",
}
_SECRET_KEYS = (*_SECRET_ENV, "bot_token", "sim_client_secret", "session_keys")


class DevError(RuntimeError):
    """One line for the operator, with the CLI's exit code (2 usage or a bad state file,
    4 conflict, 5 unreachable, 1 anything else)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


_PR_SET_PDEATHSIG = 1
try:  # loaded in the parent: the child only makes the call (nothing to import after fork)
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: children may outlive a kill -9 of dev up
    _prctl = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when ``dev up`` dies, however it dies."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        self.env: dict[str, str] = {}
        self.secrets: dict[str, str] = {}
        self.extra_pods: list[dict[str, Any]] = []  # added by `dev add-pod`, kept in pods.json
        self.pod_ports: dict[str, int] = {}
        self.sim: dict[str, Any] = {}
        self.guilds: list[str] = []
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._lock_fd: int | None = None
        self._control: web.AppRunner | None = None
        self._adding = asyncio.Lock()

    # -- state dir -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the state dir, take its lock, load (or create) the tokens and the pods
        added earlier. A second ``dev up`` on the same dir, or a state file that does not
        parse, stops here with one line."""
        if not self.dir.exists():
            self.dir.mkdir(parents=True, mode=0o700)
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DevError(f"a dev stack is already running in {self.dir}", 4) from None
        self._lock_fd = fd
        try:
            stored = read_json(self.dir / SECRETS_FILE, "dev state file")
            pods = read_json(self.dir / PODS_FILE, "dev state file")
        except StateFileError as exc:
            raise DevError(str(exc), 2) from None
        stored = {} if stored is None else stored  # None: no file yet (a first start)
        pods = {"pods": []} if pods is None else pods
        if not isinstance(stored, dict) or not all(
            isinstance(stored.get(k, ""), str) for k in _SECRET_KEYS
        ):
            raise DevError(f"dev state file {self.dir / SECRETS_FILE} is not a token map", 2)
        if not isinstance(pods, dict) or not isinstance(pods.get("pods"), list):
            raise DevError(f"dev state file {self.dir / PODS_FILE} is not a pod list", 2)
        fresh = {k: stored.get(k) or secrets.token_urlsafe(24) for k in _SECRET_KEYS}
        if fresh != stored:
            write_atomic(self.dir / SECRETS_FILE, json.dumps(fresh, indent=1).encode(), backup=True)
        self.secrets = fresh
        self.extra_pods = [
            p
            for p in pods["pods"]
            if isinstance(p, dict)
            and isinstance(p.get("name"), str)
            and isinstance(p.get("port"), int)
        ]
        tokens = {k: os.environ.get(env) or fresh[k] for k, env in _SECRET_ENV.items()}
        self.env = {
            **os.environ,
            "MODBOT_ADMIN_TOKEN": tokens["admin_token"],
            "MODBOT_READ_TOKEN": tokens["read_token"],
            "MODBOT_INTERNAL_TOKEN": tokens["internal_token"],
            "MODBOT_MIGRATION_TOKEN": tokens["migration_token"],
            # the simulator's bot token, the same one every run: the pods' sessions and
            # the commands they registered stay valid across a restart
            "MODBOT_SIM_BOT_TOKEN": fresh["bot_token"],
            "DISCORD_TOKEN": fresh["bot_token"],
            "MODBOT_LOG_LEVEL": os.environ.get("MODBOT_LOG_LEVEL", "info"),
            # sign-in: the simulator plays Discord's OAuth2; kept, so sessions survive
            "MODBOT_SIM_CLIENT_SECRET": fresh["sim_client_secret"],
            "MODBOT_SESSION_KEYS": fresh["session_keys"],
        }
        if self.args.redis:
            self.env["MODBOT_REDIS_URL"] = self.args.redis

    def release(self) -> None:
        """Give up the state dir (only if this process holds it: a second ``dev up``
        refused at the lock must not touch the running one's files)."""
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / CONTROL_FILE).unlink()
            os.close(self._lock_fd)  # the flock goes with it
            self._lock_fd = None

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    # -- children --------------------------------------------------------------------------

    async def spawn(self, name: str, *argv: str) -> None:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.argv[name] = argv
        self.started_at[name] = time.monotonic()
        try:
            self.procs[name] = await asyncio.create_subprocess_exec(
                self.cli,
                "serve",
                *argv,
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()  # the child has its own descriptor

    def watch(self, name: str) -> None:
        """Supervise ``name`` from now on (restart it when it exits)."""
        self._watchers[name] = asyncio.create_task(self._keep(name), name=f"keep-{name}")

    async def supervise(self) -> None:
        """Restart any child that exits, with backoff: what a crashed pod gets from
        Kubernetes, so a local kill -9 drill behaves like production."""
        for name in list(self.procs):
            if name not in self._watchers:
                self.watch(name)
        await asyncio.Event().wait()  # until Ctrl-C cancels dev up

    async def _keep(self, name: str) -> None:
        delay = RESTART_DELAY
        while not self.stopping:
            code = await self.procs[name].wait()
            if self.stopping:
                return
            if time.monotonic() - self.started_at[name] >= RESTART_RESET:
                delay = RESTART_DELAY
            print(
                f"{name} exited with code {code}; restarting in {delay:.1f} s "
                f"(log: {self.dir / (name + '.log')})",
                flush=True,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)
            if self.stopping:
                return
            await self.spawn(name, *self.argv[name])

    def _last_log_line(self, name: str) -> str:
        """What a child said last: why it stopped, usually (a corrupt state file...)."""
        try:
            with open(self.dir / f"{name}.log", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1].strip()[:1000] if lines else ""

    async def wait_ok(
        self, http: aiohttp.ClientSession, name: str, url: str, timeout: float = 60
    ) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            proc = self.procs.get(name)
            if proc is not None and proc.returncode is not None:
                said = self._last_log_line(name)
                raise DevError(
                    f"{name} exited ({proc.returncode})"
                    + (f": {said}" if said else "")
                    + f" (log: {self.dir / (name + '.log')})"
                )
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return await r.json()
            await asyncio.sleep(0.1)
        raise DevError(f"{name} was not ready after {timeout}s; see {self.dir / (name + '.log')}")

    def gateway_argv(self, name: str, port: int) -> tuple[str, ...]:
        self.pod_ports[name] = port
        return (
            "gateway",
            "--name",
            name,
            "--port",
            str(port),
            "--config-url",
            self.url(self.ports.config),
            "--database",
            str(self.dir / f"{name}.db"),
            "--discord-api-url",
            self.sim["api_url"],
            "--discord-gateway-url",
            self.sim["gateway_url"],
            "--identify-interval",
            "0",
        )

    async def up(self) -> None:
        self.prepare()
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
                "--state-file",
                str(self.dir / SIM_STATE_FILE),
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
            self.sim = await self.wait_ok(http, "discord-sim", f"{self.url(p.sim)}/control/info")
            await self.wait_ok(http, "config", f"{self.url(p.config)}/readyz")
            names = [f"gateway-{i}" for i in range(len(p.pods))]
            pods = list(zip(names, p.pods, strict=True))
            pods += [(x["name"], int(x["port"])) for x in self.extra_pods if x["name"] not in names]
            for name, port in pods:
                await self.spawn(name, *self.gateway_argv(name, port))
            await self.spawn(
                "proxy",
                "proxy",
                *await self.auth_argv(http),
                "--port",
                str(p.proxy),
                "--config-url",
                self.url(p.config),
                "--discord-public-key",
                self.sim["public_key"],
                "--discord-api-url",
                self.sim["api_url"],
            )
            for name, port in pods:
                await self.wait_ok(http, name, f"{self.url(port)}/readyz")
            await self.wait_ok(http, "proxy", f"{self.url(self.admin_port)}/readyz")
            async with http.get(f"{self.url(p.sim)}/control/guilds") as r:
                self.guilds = [g["id"] for g in (await r.json())["guilds"]]
            await self.start_control()
            print(await self.banner(http), flush=True)
            await asyncio.gather(self.supervise(), self.trickle(http, self.guilds))

    @property
    def admin_port(self) -> int:
        """The proxy's health/metrics port: after the pods' ports, or 9080."""
        return self.ports.pods[-1] + 1 if self.args.base_port and self.ports.pods else 9080

    async def auth_argv(self, http: aiohttp.ClientSession) -> list[str]:
        """The proxy's sign-in flags; the simulator gets users to sign in as: dev-admin
        (Administrator in every guild) and dev-member (no rights: sees 403). A restarted
        stack finds them in the saved world and keeps their ids (and sessions)."""
        argv = ["--admin-port", str(self.admin_port)]
        if self.args.no_auth:
            return [*argv, "--no-auth", "true"]
        sim = self.url(self.ports.sim)
        async with http.get(f"{sim}/control/guilds") as r:
            guilds = [g["id"] for g in (await r.json())["guilds"]]
        async with http.get(f"{sim}/control/oauth/users") as r:
            known = {u["username"]: u["id"] for u in (await r.json())["users"]}
        for name, perms in (("dev-admin", 8), ("dev-member", 1024)):
            body = {
                "id": known.get(name),
                "username": name,
                "guilds": {g: {"permissions": perms} for g in guilds},
            }
            async with http.post(f"{sim}/control/oauth/users", data=json.dumps(body)) as r:
                r.raise_for_status()
        self.env["MODBOT_DISCORD_CLIENT_SECRET"] = self.env["MODBOT_SIM_CLIENT_SECRET"]
        return [
            *argv,
            "--discord-client-id",
            str(self.sim["application_id"]),
            "--oauth-redirect-url",
            f"{self.url(self.ports.proxy)}/oauth/callback",
            "--discord-oauth-url",
            f"{sim}/oauth2/authorize",
        ]

    # -- the banner: only URLs that answer -----------------------------------------------------

    async def banner(self, http: aiohttp.ClientSession) -> str:
        """What to open and how to sign in; each URL is fetched first and printed only if
        it answers (a row's probe: the proxy's health is on its admin port)."""
        p = self.ports
        admin = self.env["MODBOT_ADMIN_TOKEN"]
        proxy, config, sim = self.url(p.proxy), self.url(p.config), self.url(p.sim)
        health = f"{self.url(self.admin_port)}/readyz"
        first = self.guilds[0] if self.guilds else None
        ops_auth = {
            "Authorization": "Basic " + base64.b64encode(f"admin:{admin}".encode()).decode()
        }
        # (label, URL shown, note, URL probed, credentials for the probe)
        rows: list[tuple[str, str, str, str, dict[str, str] | None]] = [
            ("ops", f"{config}/ops", f"(browser: any user name, password {admin})", "", ops_auth)
        ]
        if first is not None and not self.args.no_auth:
            rows.append(
                (
                    "sign in",
                    f"{proxy}/login?next=/guild/{first}/dashboard",
                    "(the simulator's consent page: pick dev-admin, Administrator everywhere,"
                    " or dev-member, no rights: 403)",
                    "",
                    None,
                )
            )
        rows += [
            ("dashboard", f"{proxy}/guild/{g}/dashboard", "", "", None) for g in self.guilds[:3]
        ]
        rows += [
            (
                "proxy",
                proxy,
                f"(POST /webhooks/discord, /api/guilds/...; health {health})",
                health,
                None,
            ),
            ("config", f"{config}/readyz", "", "", None),
            *(
                (name, f"{self.url(port)}/readyz", "", "", None)
                for name, port in sorted(self.pod_ports.items(), key=lambda kv: _pod_index(kv[0]))
            ),
            (
                "simulator",
                sim,
                f"(MODBOT_SIM_URL={sim} for modbot-ring sim ...)",
                f"{sim}/control/info",
                None,
            ),
        ]
        lines = ["modbot-ring is up (Ctrl-C stops it)"]
        for label, url, note, probe, auth in rows:
            if not await self._answers(http, probe or url, auth):
                continue  # only the truth: a URL that does not answer is not printed
            lines.append(f"  {label:<13} {url}" + (f"  {note}" if note else ""))
        venv = Path(sys.executable).parent
        activate = venv / "activate"
        lines += [
            f"  state         {self.dir}  (world, tokens, databases, *.log; kept across restarts)",
            f"  add a pod     modbot-ring dev add-pod --state-dir {self.dir} [--weight W]",
            "  shell         "
            + (f". {activate}  # then:" if activate.exists() else f"PATH={venv}:$PATH  # then:"),
            f"                export MODBOT_CONFIG_URL={config} MODBOT_ADMIN_TOKEN={admin}"
            f" MODBOT_SIM_URL={sim}",
            f"                export DISCORD_TOKEN={self.env['DISCORD_TOKEN']}"
            f" MODBOT_DISCORD_API_URL={sim}/api/v10  # the simulated bot: commands sync",
            "                modbot-ring status",
        ]
        return "\n".join(lines)

    async def _answers(
        self, http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None
    ) -> bool:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.get(
                url, headers=headers, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=5)
            ) as r:
                return r.status < 400
        return False

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

    # -- dev add-pod: the control endpoint ----------------------------------------------------

    async def start_control(self) -> None:
        """Listen on loopback for ``dev add-pod``; its URL and a fresh token go to
        control.json (0600: only this user can read it, so only this user can ask)."""
        token = secrets.token_urlsafe(24)
        app = web.Application(client_max_size=4096)

        async def add(request: web.Request) -> web.Response:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return web.json_response({"error": "unauthorized"}, status=401)
            try:
                body = json.loads(await request.read() or b"{}")
                weight = body.get("weight")
                wait = float(body.get("wait", 60.0))
                if weight is not None:
                    weight = _weight(weight)
                if not 0 <= wait <= 600:
                    raise ValueError("wait must be 0..600 seconds")
            except (ValueError, TypeError, AttributeError) as exc:
                return web.json_response({"error": f"bad request: {exc}"}, status=400)
            try:
                return web.json_response(await self.add_pod(weight, wait))
            except DevError as exc:
                status = {2: 400, 4: 409, 5: 503}.get(exc.code, 500)
                return web.json_response({"error": str(exc)}, status=status)

        app.router.add_post("/v1/pods", add)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._control = runner
        port = runner.addresses[0][1]
        doc = {"url": self.url(port), "token": token, "pid": os.getpid()}
        write_atomic(self.dir / CONTROL_FILE, json.dumps(doc).encode())

    def _next_pod(self) -> tuple[str, int]:
        """A name no pod ever had here, and a port: the next one after the stack's
        highest if free, else one the OS picks."""
        known = {*self.procs, *(x["name"] for x in self.extra_pods)}
        index = 1 + max((_pod_index(n) for n in known if n.startswith("gateway-")), default=-1)
        used = [self.ports.sim, self.ports.config, self.ports.proxy, self.admin_port]
        candidate = max([*used, *self.pod_ports.values()]) + 1
        return f"gateway-{index}", candidate if _port_free(candidate) else _free_port()

    async def add_pod(self, weight: float | None, wait: float) -> dict[str, Any]:
        """Start one more gateway pod, supervised like the others; report what the
        balancer made of it within ``wait`` seconds."""
        if self.stopping:
            raise DevError("the dev stack is stopping", 5)
        async with self._adding, aiohttp.ClientSession() as http:
            name, port = self._next_pod()
            config = self.url(self.ports.config)
            headers = {"Authorization": f"Bearer {self.env['MODBOT_ADMIN_TOKEN']}"}
            since = time.time()
            if weight is not None:  # joins the table with its weight; its own
                # registration (url only) keeps it
                async with http.put(
                    f"{config}/v1/pods/{name}",
                    json={"url": self.url(port), "weight": weight},
                    headers=headers,
                ) as r:
                    if r.status != 200:
                        error = (await r.json(content_type=None) or {}).get("error", r.reason)
                        raise DevError(f"the config service refused {name}: {error}", 2)
            await self.spawn(name, *self.gateway_argv(name, port))
            self.watch(name)
            try:
                ready = await self.wait_ok(http, name, f"{self.url(port)}/readyz")
            except DevError:
                await self._abandon(http, name)
                raise
            self.extra_pods.append({"name": name, "port": port, "weight": weight})
            write_atomic(
                self.dir / PODS_FILE, json.dumps({"pods": self.extra_pods}, indent=1).encode()
            )
            print(f"{name} added on {self.url(port)} (dev add-pod)", flush=True)
            result: dict[str, Any] = {
                "pod": name,
                "url": self.url(port),
                "weight": weight if weight is not None else 1.0,
                "ready": ready,
            }
            result |= await self._await_plan(http, name, since, wait, headers)
            return result

    async def _abandon(self, http: aiohttp.ClientSession, name: str) -> None:
        """A pod that never got ready: stop it and take it out of the table again."""
        task = self._watchers.pop(name, None)
        if task is not None:
            task.cancel()
        proc = self.procs.pop(name, None)
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        self.pod_ports.pop(name, None)
        headers = {"Authorization": f"Bearer {self.env['MODBOT_ADMIN_TOKEN']}"}
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.delete(
                f"{self.url(self.ports.config)}/v1/pods/{name}", headers=headers
            ):
                pass

    async def _await_plan(
        self,
        http: aiohttp.ClientSession,
        name: str,
        since: float,
        wait: float,
        headers: dict[str, str],
    ) -> dict[str, Any]:
        """The balancer's plan for the new pod (proposed, or applied in auto mode), or
        what it says instead when none came within ``wait`` seconds."""
        config = self.url(self.ports.config)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        balance: dict[str, Any] = {}
        plan: dict[str, Any] | None = None
        while True:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                async with http.get(f"{config}/v1/balance", headers=headers) as r:
                    balance = await r.json()
                async with http.get(f"{config}/v1/plans", headers=headers) as r:
                    plans = (await r.json())["plans"]
                plan = next(
                    (
                        p
                        for p in plans
                        if p["actor"] == "balancer"
                        and p["created_at"] >= since - 1
                        and any(m.get("to") == name for m in p["plan"].get("moves", []))
                    ),
                    None,
                )
            mode = balance.get("mode")
            if mode == "off":
                break
            finished = ("done", "failed", "cancelled", "interrupted", "expired", "empty")
            if plan is not None and (mode != "auto" or plan["state"] in finished):
                break
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.5)
        out: dict[str, Any] = {"mode": balance.get("mode"), "decision": balance.get("decision")}
        if plan is not None:
            moves = plan["plan"].get("moves", [])
            out["plan"] = {
                "id": plan["id"],
                "state": plan["state"],
                "reason": plan["plan"].get("reason", ""),
                "moves": [{k: m.get(k) for k in ("kind", "id", "from", "to")} for m in moves],
            }
        return out

    async def down(self) -> None:
        """Stop in reverse dependency order: proxy, pods, then config service and simulator."""
        self.stopping = True
        for task in self._watchers.values():
            task.cancel()
        if self._control is not None:
            await self._control.cleanup()
        order = [
            "proxy",
            *sorted((n for n in self.procs if n.startswith("gateway-")), key=_pod_index),
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
        self.release()


def _pod_index(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _weight(value: Any) -> float:
    """A pod weight in the library's range (0, 100]; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"weight must be a number, got {value!r}")
    weight = float(value)
    if not (math.isfinite(weight) and 0 < weight <= MAX_WEIGHT):
        raise ValueError(f"weight must be in (0, {MAX_WEIGHT:g}], got {value}")
    return weight


def weight_arg(text: str) -> float:
    """argparse type for ``--weight``: a bad one is a usage error (exit 2)."""
    try:
        return _weight(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- `modbot-ring dev add-pod`: the client side ---------------------------------------------


def _stack_running(state: Path) -> bool:
    """Whether a ``dev up`` holds the state dir's lock right now."""
    try:
        fd = os.open(state / LOCK_FILE, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if we took it
    return False


def add_pod(args: argparse.Namespace) -> tuple[int, str]:
    """Ask the ``dev up`` running on ``--state-dir`` for one more gateway pod.
    Returns (exit code, text for stdout); DevError for a failure."""
    state = Path(args.state_dir).resolve()
    if not _stack_running(state):
        raise DevError(
            f"no dev stack is running in {state} (start one with: modbot-ring dev up"
            f" --state-dir {state})",
            5,
        )
    try:
        control = read_json(state / CONTROL_FILE, "dev control file")
    except StateFileError as exc:
        raise DevError(str(exc), 5) from None
    if not isinstance(control, dict) or "url" not in control or "token" not in control:
        raise DevError(f"the dev stack in {state} is still starting; try again when it is up", 5)
    body = json.dumps({"weight": args.weight, "wait": args.wait}).encode()
    req = urllib.request.Request(
        f"{control['url']}/v1/pods",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {control['token']}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=args.wait + 120) as r:
            result = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            error = exc.reason
        code = {400: 2, 401: 1, 409: 4, 503: 5}.get(exc.code, 1)
        raise DevError(f"dev add-pod: {error}", code) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DevError(f"the dev stack in {state} does not answer: {reason}", 5) from None
    if getattr(args, "json", False):
        return 0, json.dumps(result, indent=2)
    return 0, describe_added(result)


def describe_added(result: dict[str, Any]) -> str:
    """What happened, for people: the pod, then the balancer's answer."""
    lines = [
        f"{result['pod']} is up on {result['url']} (weight {result['weight']:g}) and registered"
    ]
    plan = result.get("plan")
    mode = result.get("mode")
    if mode == "off":
        lines.append("the balancer is off: make a plan with `modbot-ring plan -o plan.json`")
    elif plan is None:
        lines.append(f"no plan for it yet; the balancer says: {result.get('decision')}")
    else:
        moves = plan["moves"]
        what = ", ".join(f"{m['kind']} {m['id']} {m['from']} -> {m['to']}" for m in moves[:5])
        more = f" (+{len(moves) - 5} more)" if len(moves) > 5 else ""
        lines.append(
            f"plan {plan['id']} ({plan['reason'] or 'balancer'}): {len(moves)} move(s): {what}{more}"
        )
        if plan["state"] == "proposed":
            lines.append(f"it waits for you: modbot-ring apply {plan['id']}")
        else:
            lines.append(f"plan {plan['id']} is {plan['state']} ({mode} mode)")
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> int:
    stack = DevStack(args)
    try:
        await stack.up()
    except DevError as exc:
        print(f"modbot-ring: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.code
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
