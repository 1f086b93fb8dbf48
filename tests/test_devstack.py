"""The README's first command: `modbot-ring dev up` serves a working dashboard link and stops cleanly."""

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from html import unescape
from pathlib import Path

import aiohttp
import psycopg
import pytest
import redis
from conftest import PG_URL, REDIS_URL, eventually, free_ports

CLI = str(Path(sys.executable).parent / "modbot-ring")


def free_block(n: int) -> int:
    """A base port with n free consecutive ports after it (from this xdist worker's own
    slice of ports: tests/conftest.py)."""
    return free_ports(n)


@pytest.mark.parametrize("backing", ["embedded", "postgres+redis"])
async def test_dev_up_serves_a_dashboard_within_30_seconds_and_stops_on_ctrl_c(
    tmp_path, backing, pg_schema, redis_prefix
):
    started = time.monotonic()
    base = free_block(7)  # sim, config, proxy, pods, the proxy's health port
    extra: list[str] = []
    env = dict(os.environ)
    if backing != "embedded":  # real ones, isolated in a schema and a key prefix of the test's own
        extra = ["--postgres", PG_URL, "--redis", REDIS_URL]
        env |= {"MODBOT_DB_SCHEMA": pg_schema, "MODBOT_REDIS_PREFIX": redis_prefix}
    proc = await asyncio.create_subprocess_exec(
        CLI,
        "dev",
        "up",
        "--state-dir",
        str(tmp_path),
        "--base-port",
        str(base),
        "--trickle",
        "0.2",
        *extra,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        link = login = None
        while link is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "dev up exited early"
            m = re.search(r"(http://\S+/login\?next=\S+)", line)
            login = login or (m and m.group(1))
            m = re.search(r"(http://[^\s?]+/guild/\d+/dashboard)", line)
            link = m and m.group(1)
        assert login is not None
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            # the printed login link: the simulator's consent page, pick dev-admin, authorize
            async with http.get(login) as r:
                page = await r.text()
                assert r.status == 200 and 'id="authorize"' in page, page[:500]
                consent = str(r.url).split("?")[0]
            fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page))
            user = re.search(r'<option value="(\d+)"[^>]*>dev-admin<', page)
            assert user is not None
            fields = {k: unescape(v) for k, v in fields.items()}
            fields |= {"user_id": user.group(1), "action": "authorize"}
            async with http.post(consent, data=fields) as r:
                assert r.status == 200 and "<svg" in await r.text()

            async def shown() -> str | None:  # the dashboard, once it counts messages
                async with http.get(link) as r:
                    html = await r.text()
                    ok = r.status == 200 and re.search(r"[1-9]\d* messages from", html)
                    return html if ok else None

            html = await eventually(shown, max(0.0, started + 30 - time.monotonic()), 0.3)
        assert "<svg" in html and "served by <b>gateway-" in html
        if backing != "embedded":
            with psycopg.connect(PG_URL) as conn:
                pods = conn.execute(f'SELECT count(*) FROM "{pg_schema}".pods').fetchone()[0]
            assert pods == 3  # the table lives in PostgreSQL
            keys = redis.Redis.from_url(REDIS_URL).keys(f"{redis_prefix}:*")
            assert keys  # and is cached in Redis
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    for log in tmp_path.glob("*.log"):
        assert "Traceback" not in log.read_text(), log.name


def _child_pid(parent: int, name: str) -> int:
    """The pid of `dev up`'s child serving ``name`` (from /proc: children of our own process)."""
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"--name" in cmd and cmd[cmd.index(b"--name") + 1].decode() == name:
                return int(pid)
    raise AssertionError(f"no child named {name}")


async def test_dev_up_restarts_a_killed_child_and_says_so(tmp_path):
    base = free_block(7)  # sim, config, proxy, pods, the proxy's health port
    proc = await asyncio.create_subprocess_exec(
        CLI,
        "dev",
        "up",
        "--state-dir",
        str(tmp_path),
        "--base-port",
        str(base),
        "--pods",
        "2",
        "--trickle",
        "0.2",
        # one IDENTIFY bucket per shard: the stack comes up without waiting on buckets
        env={**os.environ, "MODBOT_SIM_MAX_CONCURRENCY": "16"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        link = None
        while link is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 90)).decode()
            assert line, "dev up exited early"
            m = re.search(r"(http://[^\s?]+/guild/\d+/dashboard)", line)
            link = m and m.group(1)
        victim = _child_pid(proc.pid, "gateway-0")
        os.kill(victim, signal.SIGKILL)
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line, "dev up exited"
            if line.startswith("gateway-0 exited"):
                break
        assert "code -9" in line and re.search(r"restarting in \d+(\.\d+)? s", line), line
        pod_url = f"http://127.0.0.1:{base + 3}/readyz"
        async with aiohttp.ClientSession() as http:

            async def back() -> bool:  # gateway-0 came back
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(pod_url) as r:
                        return r.status == 200 and (await r.json()).get("pod") == "gateway-0"
                return False

            await eventually(back, timeout=30, interval=0.2)
            assert _child_pid(proc.pid, "gateway-0") != victim
            async with http.get(link) as r:  # and the stack serves dashboards again
                assert r.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
