"""Start a local system (simulator, config service on SQLite, gateway pods) as real
``modbot-ring serve`` processes, for benchmarks. Loopback only; everything stops on exit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ADMIN = "bench-admin"
INTERNAL = "bench-internal"
MIGRATION = "bench-migration"
CLI = str(Path(sys.executable).parent / "modbot-ring")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(method: str, url: str, body: Any = None, token: str = ADMIN, timeout: float = 120) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


class LocalSystem:
    def __init__(self, pods: int, shard_count: int, *, cpu_for_pods: str = "") -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="modbot-bench-"))
        self.pods = pods
        self.shard_count = shard_count
        self.cpu_for_pods = cpu_for_pods
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sim_port, self.config_port = free_port(), free_port()
        self.pod_ports = [free_port() for _ in range(pods)]
        self.env = {
            **os.environ,
            "MODBOT_ADMIN_TOKEN": ADMIN,
            "MODBOT_READ_TOKEN": ADMIN,
            "MODBOT_INTERNAL_TOKEN": INTERNAL,
            "MODBOT_MIGRATION_TOKEN": MIGRATION,
            "DISCORD_TOKEN": "sim-token",
            "MODBOT_LOG_LEVEL": "warning",
        }

    @property
    def sim(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    @property
    def config(self) -> str:
        return f"http://127.0.0.1:{self.config_port}"

    def pod_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.pod_ports[i]}"

    def database(self, i: int) -> str:
        return str(self.tmp / f"gateway-{i}.db")

    def _spawn(self, *args: str, cpu: str = "") -> None:
        prefix = ["taskset", "-c", cpu] if cpu and shutil.which("taskset") else []
        log = open(self.tmp / f"{args[1]}-{len(self.procs)}.log", "ab")  # noqa: SIM115
        self.procs.append(
            subprocess.Popen([*prefix, CLI, "serve", *args], env=self.env, stdout=log, stderr=log)
        )

    def wait(self, url: str, timeout: float = 60) -> Any:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                return call("GET", url, token=INTERNAL, timeout=2)
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"{url} did not come up; logs in {self.tmp}")

    def __enter__(self) -> LocalSystem:
        self._spawn("discord-sim", "--port", str(self.sim_port))
        self._spawn(
            "config",
            "--port",
            str(self.config_port),
            "--database-url",
            f"sqlite:///{self.tmp}/config.db",
            "--shard-count",
            str(self.shard_count),
        )
        info = self.wait(f"{self.sim}/control/info")
        self.wait(f"{self.config}/readyz")
        for i, port in enumerate(self.pod_ports):
            self._spawn(
                "gateway",
                "--name",
                f"gateway-{i}",
                "--port",
                str(port),
                "--config-url",
                self.config,
                "--database",
                self.database(i),
                "--discord-api-url",
                info["api_url"],
                "--discord-gateway-url",
                info["gateway_url"],
                "--identify-interval",
                "0",
                cpu=self.cpu_for_pods,
            )
        for i in range(self.pods):
            self.wait(f"{self.pod_url(i)}/readyz")
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def count(self, i: int, guild_id: int | None = None) -> int:
        with sqlite3.connect(self.database(i), timeout=10) as conn:
            if guild_id is None:
                return int(conn.execute("SELECT count(*) FROM message_stats").fetchone()[0])
            return int(
                conn.execute(
                    "SELECT count(*) FROM message_stats WHERE guild_id = ?", (guild_id,)
                ).fetchone()[0]
            )
