"""The console script's servers start from their flags alone (what Kubernetes and `dev up` run)."""

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import aiohttp
import pytest
from conftest import ADMIN, READ, eventually, free_port

CLI = str(Path(sys.executable).parent / "modbot-ring")


async def wait_ok(http, url, timeout=30):
    """The JSON of ``url`` once it answers 200."""

    async def ok():
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url) as r:
                if r.status == 200:
                    return await r.json()
        return None

    return await eventually(ok, timeout, interval=0.1)


async def test_serve_config_sim_and_proxy_from_flags(tmp_path):
    env = {**os.environ, "MODBOT_ADMIN_TOKEN": ADMIN, "MODBOT_READ_TOKEN": READ}
    config_port, sim_port, proxy_port = free_port(), free_port(), free_port()
    admin_port = free_port()
    procs = [
        await asyncio.create_subprocess_exec(
            CLI,
            "serve",
            "config",
            "--port",
            str(config_port),
            "--database-url",
            f"sqlite:///{tmp_path}/c.db",
            "--shard-count",
            "4",
            env=env,
        ),
        await asyncio.create_subprocess_exec(
            CLI, "serve", "discord-sim", "--port", str(sim_port), "--seed-guilds", "3", env=env
        ),
        await asyncio.create_subprocess_exec(
            CLI,
            "serve",
            "proxy",
            "--port",
            str(proxy_port),
            "--config-url",
            f"http://127.0.0.1:{config_port}",
            "--discord-public-key",
            "00" * 32,
            "--workers",
            "2",
            "--admin-port",
            str(admin_port),
            env=env,
        ),
    ]
    try:
        async with aiohttp.ClientSession() as http:
            ready = await wait_ok(http, f"http://127.0.0.1:{config_port}/readyz")
            assert ready["database"] == "ok"
            info = await wait_ok(http, f"http://127.0.0.1:{sim_port}/control/info")
            assert info["guilds"] == 3 and len(info["public_key"]) == 64
            ready = await wait_ok(http, f"http://127.0.0.1:{admin_port}/readyz")
            assert ready["config_service"] == "ok"
            proxy = procs[2].pid
            children = Path(f"/proc/{proxy}/task/{proxy}/children").read_text().split()
            assert len(children) == 2  # two workers share the port
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            assert await asyncio.wait_for(proc.wait(), 10) == 0  # clean exit on SIGTERM


@pytest.mark.parametrize(
    "argv, message",
    [
        (["config", "--balance-threshold", "1.1", "--balance-clear", "1.2"], "clear"),
        (["config", "--balance-mode", "sometimes"], "invalid choice"),
        (["proxy", "--workers", "0"], "--workers"),
        (["proxy", "--no-auth", "true", "--host", "0.0.0.0"], "--no-auth"),
    ],
)
async def test_bad_server_flags_exit_2_with_one_line(argv, message, tmp_path):
    proc = await asyncio.create_subprocess_exec(
        CLI,
        "serve",
        *argv,
        "--port",
        str(free_port()),
        *(["--database-url", f"sqlite:///{tmp_path}/c.db"] if argv[0] == "config" else []),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 20)
    lines = [line for line in err.decode().splitlines() if '"level"' not in line]
    assert proc.returncode == 2 and message in lines[-1]
    assert not (tmp_path / "c.db").exists()  # refused before anything was created
