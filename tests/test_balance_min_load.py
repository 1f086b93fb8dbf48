"""``MODBOT_BALANCE_MIN_LOAD`` / ``--balance-min-load``: the churn floor of the balancer
(mean events/s per pod under which skew is noise and nothing is planned) is a setting,
not a constant; a bad value stops the config service before it starts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from conftest import ADMIN, PG_URL, eventually, free_port, running_config
from loadsim import SimulatedPods

from config_store.balancer import BalancerSettings
from config_store.service import balancer_settings
from modbot_cli.main import build_parser
from modbot_ring import BalancePolicy

CLI = str(Path(sys.executable).parent / "modbot-ring")
PODS = [f"gateway-{i}" for i in range(4)]


def parse(argv: list[str], monkeypatch: pytest.MonkeyPatch, env: str | None = None):
    if env is None:
        monkeypatch.delenv("MODBOT_BALANCE_MIN_LOAD", raising=False)
    else:
        monkeypatch.setenv("MODBOT_BALANCE_MIN_LOAD", env)
    return build_parser().parse_args(["serve", "config", *argv])


def test_the_floor_comes_from_the_flag_or_the_env_var(monkeypatch):
    assert balancer_settings(parse([], monkeypatch)).policy.min_load == 1.0  # the default
    assert balancer_settings(parse([], monkeypatch, env="0.25")).policy.min_load == 0.25
    args = parse(["--balance-min-load", "3"], monkeypatch, env="0.25")
    assert balancer_settings(args).policy.min_load == 3.0  # the flag beats the env var


def test_a_negative_or_garbage_floor_is_refused_in_one_line():
    """A subprocess: ``serve config`` sets up logging for the whole process."""
    for argv, env, text in [
        (["--balance-min-load", "-1"], {}, "min_load"),
        ([], {"MODBOT_BALANCE_MIN_LOAD": "lots"}, "$MODBOT_BALANCE_MIN_LOAD='lots'"),
    ]:
        done = subprocess.run(
            [CLI, "serve", "config", "--port", str(free_port()), *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        assert done.returncode == 2 and text in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


async def _balance(url: str) -> dict:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as http,
        http.get(url + "/v1/balance") as r,
    ):
        return await r.json()


@pytest.mark.parametrize("floor", [1.0, 0.05])
async def test_a_quiet_skewed_stack_is_idle_only_under_its_floor(pg_schema, floor):
    """0.4 events/s per pod, one pod at 4x: under the default floor of 1 that is idle
    noise and no plan comes; with the floor at 0.05 the same skew gets a plan."""
    policy = BalancePolicy(hold_down=0.3, min_load=floor)
    settings = BalancerSettings(mode="propose", interval=0.1, policy=policy)
    async with running_config(PG_URL, pg_schema, shard_count=64, balance=settings) as svc:
        sim = SimulatedPods(svc.url, PODS, guilds=800)
        await sim.start()
        try:
            sim.normalize(0.25)
            assert sim.table is not None
            hot = {s for s in range(64) if sim.table.shard_owner(s) == "gateway-0"}
            sim.heat(set(sorted(hot)[:6]), 6.0)
            await sim.heartbeat()
            if floor == 1.0:
                await eventually(lambda: _idle(svc.url), timeout=10, interval=0.1)
                await asyncio.sleep(1.0)  # the sleep is the test: past the hold-down, nothing
                status = await _balance(svc.url)
                assert status["decision"].startswith("idle") and status["waiting_plan"] is None
                assert "under the 1 events/s floor" in status["decision"]
            else:
                status = await eventually(lambda: _waiting(svc.url), timeout=10, interval=0.1)
                assert status["skew"] > 1.25 and status["policy"]["min_load"] == floor
        finally:
            await sim.stop()


async def _idle(url: str) -> dict | None:
    status = await _balance(url)
    return status if status["decision"].startswith("idle") else None


async def _waiting(url: str) -> dict | None:
    status = await _balance(url)
    return status if status.get("waiting_plan") else None
