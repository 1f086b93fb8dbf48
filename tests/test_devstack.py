"""The README's first command: `modbot-ring dev up` serves a working dashboard link and stops cleanly."""

import asyncio
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import psycopg
import pytest
import redis
from conftest import PG_URL, REDIS_URL

CLI = str(Path(sys.executable).parent / "modbot-ring")


def free_block(n: int) -> int:
    """A base port with n free consecutive ports after it."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65000:
            continue
        ok = True
        for port in range(base, base + n):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


@pytest.mark.parametrize("backing", ["embedded", "postgres+redis"])
async def test_dev_up_serves_a_dashboard_within_30_seconds_and_stops_on_ctrl_c(
    tmp_path, backing, pg_schema, redis_prefix
):
    started = time.monotonic()
    base = free_block(6)
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
        link = None
        while link is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "dev up exited early"
            m = re.search(r"(http://\S+/guild/\d+/dashboard)", line)
            link = m and m.group(1)
        async with aiohttp.ClientSession() as http:
            while True:
                async with http.get(link) as r:
                    html = await r.text()
                    if r.status == 200 and re.search(r"[1-9]\d* messages from", html):
                        break
                assert time.monotonic() - started < 30, html[:500]
                await asyncio.sleep(0.3)
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
