"""``dev up``'s banner tells only the truth, ``dev add-pod`` grows a running stack (the
balancer plans for the new pod), and a restart, even after a kill -9 of ``dev up``, finds
the same world: the same guilds, tokens, added pods and signed-in sessions."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html import unescape
from pathlib import Path

import aiohttp
import pytest
from test_devstack import free_block

CLI = str(Path(sys.executable).parent / "modbot-ring")
LABEL = re.compile(r"^  (\S+(?: \S+)?)\s+(http://\S+)(.*)$")


def cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *argv], capture_output=True, text=True, timeout=timeout)


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


async def start(state: Path, base: int) -> tuple[asyncio.subprocess.Process, list[str]]:
    """``dev up`` with two pods and a quick balancer; returns it and its banner lines."""
    env = {
        **os.environ,
        "MODBOT_BALANCE_INTERVAL": "0.5",
        "MODBOT_HEARTBEAT_INTERVAL": "0.5",
        "MODBOT_BALANCE_MIN_LOAD": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        *[CLI, "dev", "up", "--state-dir", str(state), "--base-port", str(base)],
        *["--pods", "2", "--trickle", "0.2"],
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or "modbot-ring status" not in lines[-1]:
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
        assert line, f"dev up exited early: {lines}"
        lines.append(line.rstrip("\n"))
    return proc, lines[lines.index("modbot-ring is up (Ctrl-C stops it)") :]


def rows(banner: list[str]) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for line in banner:
        m = LABEL.match(line)
        if m:
            out.setdefault(m.group(1), []).append((m.group(2), m.group(3)))
    return out


async def check_banner(banner: list[str], state: Path) -> dict[str, list[tuple[str, str]]]:
    """Every URL printed answers (with the credentials the banner gives for it)."""
    found = rows(banner)
    text = "\n".join(banner)
    assert {"ops", "sign in", "dashboard", "proxy", "config", "simulator"} <= set(found), text
    assert "dev-admin" in text and "dev-member" in text
    sim_url = found["simulator"][0][0]
    assert f"MODBOT_SIM_URL={sim_url}" in text
    assert f". {Path(sys.executable).parent / 'activate'}" in text  # the venv hint
    assert str(state) in text
    password = re.search(r"password (\S+)\)", found["ops"][0][1])
    assert password is not None
    async with aiohttp.ClientSession() as http:
        for label, entries in found.items():
            for url, note in entries:
                secret = base64.b64encode(f"me:{password.group(1)}".encode()).decode()
                headers = {"Authorization": f"Basic {secret}"} if label == "ops" else {}
                probe = url
                if label == "proxy":  # the proxy's health is on its admin port
                    probe = re.search(r"health (http://\S+?)\)", note).group(1)  # type: ignore[union-attr]
                elif label == "simulator":
                    probe = f"{url}/control/info"
                async with http.get(probe, headers=headers, allow_redirects=False) as r:
                    assert r.status < 400, (label, probe, r.status)
    return found


async def sign_in(jar: aiohttp.CookieJar, login: str, dashboard: str) -> None:
    """The printed sign-in link: the simulator's consent page, dev-admin, Authorize."""
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.get(login) as r:
            page = await r.text()
            assert r.status == 200 and 'id="authorize"' in page, page[:300]
            consent = str(r.url).split("?")[0]
        fields = {k: unescape(v) for k, v in re.findall(r'name="([^"]+)" value="([^"]*)"', page)}
        user = re.search(r'<option value="(\d+)"[^>]*>dev-admin<', page)
        assert user is not None
        fields |= {"user_id": user.group(1), "action": "authorize"}
        async with http.post(consent, data=fields) as r:
            assert r.status == 200 and str(r.url) == dashboard


async def dashboard_with(jar: aiohttp.CookieJar, dashboard: str) -> int:
    async with (
        aiohttp.ClientSession(cookie_jar=jar) as http,
        http.get(dashboard, allow_redirects=False) as r,
    ):
        return r.status


def control_post(state: Path, token: str | None) -> int:
    control = json.loads((state / "control.json").read_text())
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(
        f"{control['url']}/v1/pods", data=b"{}", method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _children(parent: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


@pytest.mark.slow
async def test_add_pod_then_a_kill_9_and_a_restart_keep_the_world(tmp_path):
    state = tmp_path / "dev"
    base = free_block(8)  # sim, config, proxy, 2 pods, the proxy's admin port, an added pod
    proc, banner = await start(state, base)
    jar = aiohttp.CookieJar(unsafe=True)
    try:
        found = await check_banner(banner, state)
        login, dashboard = found["sign in"][0][0], found["dashboard"][0][0]
        guilds_before = [u for u, _ in found["dashboard"]]
        await sign_in(jar, login, dashboard)
        assert await dashboard_with(jar, dashboard) == 200
        for path in ("secrets.json", "control.json", "discord-sim.json"):
            assert (state / path).stat().st_mode & 0o777 == 0o600, path

        # hostile: a second stack on the same state dir, a bad weight, no token
        second = cli("dev", "up", "--state-dir", str(state), "--base-port", str(base + 40))
        assert second.returncode == 4 and one_line(second.stderr), second.stderr
        for weight in ("0", "-1", "101", "abc", "nan"):
            bad = cli("dev", "add-pod", "--state-dir", str(state), "--weight", weight)
            assert bad.returncode == 2 and one_line(bad.stderr) and not bad.stdout, bad.stderr
        assert await asyncio.to_thread(control_post, state, None) == 401
        assert await asyncio.to_thread(control_post, state, "guessed") == 401

        # happy: one more pod, with a weight; the balancer proposes a plan that fills it
        added = await asyncio.to_thread(
            cli, "dev", "add-pod", "--state-dir", str(state), "--weight", "2", "--json"
        )
        assert added.returncode == 0, added.stderr
        result = json.loads(added.stdout)
        assert result["pod"] == "gateway-2" and result["weight"] == 2.0
        assert result["mode"] == "propose" and result["plan"]["state"] == "proposed", result
        assert "gateway-2" in {m["to"] for m in result["plan"]["moves"]}
        async with aiohttp.ClientSession() as http, http.get(f"{result['url']}/readyz") as r:
            assert r.status == 200 and (await r.json())["pod"] == "gateway-2"
        admin = re.search(r"MODBOT_ADMIN_TOKEN=(\S+)", "\n".join(banner)).group(1)  # type: ignore[union-attr]
        config = found["config"][0][0].removesuffix("/readyz")
        status = cli("status", "--config-url", config, "--token", admin, "--json")
        assert status.returncode == 0, (status.returncode, status.stderr)
        pods = {p["name"]: p for p in json.loads(status.stdout)["pods"]}
        assert pods["gateway-2"]["weight"] == 2.0, status.stdout

        # fault: kill -9 of dev up; its children go with it (their ports are free again)
        children = _children(proc.pid)
        assert len(children) >= 6
        proc.kill()
        await proc.wait()
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{c}").exists() for c in children):
            assert time.monotonic() < deadline, "children outlived dev up"
            await asyncio.sleep(0.1)
        gone = cli("dev", "add-pod", "--state-dir", str(state))  # a stale control.json
        assert gone.returncode == 5 and one_line(gone.stderr) and "no dev stack" in gone.stderr

        # the restart: same guilds, same tokens, the added pod back, the session still valid
        proc, banner = await start(state, base)
        found = await check_banner(banner, state)
        assert [u for u, _ in found["dashboard"]] == guilds_before
        assert f"MODBOT_ADMIN_TOKEN={admin}" in "\n".join(banner)
        assert "gateway-2" in found
        assert await dashboard_with(jar, dashboard) == 200  # no new sign-in needed
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert not (state / "control.json").exists()
    for log in state.glob("*.log"):
        assert "Traceback" not in log.read_text(), log.name


def test_add_pod_without_a_stack_is_unreachable_in_one_line(tmp_path):
    done = cli("dev", "add-pod", "--state-dir", str(tmp_path / "nothing"), "--weight", "2")
    assert done.returncode == 5 and one_line(done.stderr) and not done.stdout, done.stderr
    assert "no dev stack is running" in done.stderr


def test_a_corrupt_token_file_stops_dev_up_by_name(tmp_path):
    (tmp_path / "secrets.json").write_text('{"admin_token": ')
    done = cli("dev", "up", "--state-dir", str(tmp_path), "--base-port", str(free_block(7)))
    assert done.returncode == 2 and one_line(done.stderr), done.stderr
    assert str(tmp_path / "secrets.json") in done.stderr and "corrupt" in done.stderr
    assert (tmp_path / "secrets.json").read_text() == '{"admin_token": '  # not reset


def test_a_corrupt_world_stops_dev_up_by_name(tmp_path):
    world = tmp_path / "discord-sim.json"
    world.write_text("[1, 2")
    backup = tmp_path / "discord-sim.json.bak"
    backup.write_text("{}")  # parses: offered as the way back
    done = cli("dev", "up", "--state-dir", str(tmp_path), "--base-port", str(free_block(7)))
    assert done.returncode != 0 and one_line(done.stderr), done.stderr
    assert str(world) in done.stderr and str(backup) in done.stderr, done.stderr
    assert world.read_text() == "[1, 2"
