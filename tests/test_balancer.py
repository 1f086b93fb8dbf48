"""Scaling decisions, simulated: a real config service on PostgreSQL, its real balancer
loop, and five simulated pods whose heartbeats carry Zipf-spread guild loads."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import xml.etree.ElementTree as ET

import aiohttp
import pytest
from conftest import ADMIN, PG_URL, eventually, running_config
from loadsim import SimulatedPods

from config_store.balancer import BalancerSettings
from modbot_cli.main import main as cli
from modbot_ring import BalancePolicy, SkewDetector

PODS = [f"gateway-{i}" for i in range(5)]
SHARDS = 100
HOLD = 1.5


def settings(mode: str, **policy: float) -> BalancerSettings:
    knobs = {"hold_down": HOLD, "cooldown": 3600.0, **policy}
    return BalancerSettings(mode=mode, interval=0.1, policy=BalancePolicy(**knobs))


async def get(url: str, path: str) -> dict:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as http,
        http.get(url + path) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()


async def post(url: str, path: str, body: dict | None = None) -> dict:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as http,
        http.post(url + path, json=body or {}) as r,
    ):
        assert r.status < 300, await r.text()
        return await r.json()


async def balancer_plans(url: str) -> list[dict]:
    plans = (await get(url, "/v1/plans"))["plans"]
    return [p for p in plans if p["actor"] == "balancer"]


def hot_shards(sim: SimulatedPods, pod: str, n: int) -> set[int]:
    assert sim.table is not None
    owned = [s for s in range(SHARDS) if sim.table.shard_owner(s) == pod]
    return set(owned[:n])


@pytest.fixture
async def cluster(pg_schema, request):
    mode, policy = request.param
    async with running_config(
        PG_URL, pg_schema, shard_count=SHARDS, balance=settings(mode, **policy)
    ) as svc:
        sim = SimulatedPods(svc.url, PODS, guilds=3000)
        await sim.start()
        sim.normalize(100.0)
        await sim.heartbeat()
        try:
            yield svc, sim
        finally:
            await sim.stop()


@pytest.mark.parametrize("cluster", [("propose", {})], indirect=True)
async def test_skew_held_past_the_hold_down_gets_a_plan_proposed(cluster, tmp_path):
    svc, sim = cluster
    await asyncio.sleep(HOLD + 0.5)  # the sleep is the test: past the hold-down, balanced
    assert await balancer_plans(svc.url) == []
    status = await get(svc.url, "/v1/balance")
    assert status["skew"] < 1.1 and status["state"] == "balanced"

    sim.heat(hot_shards(sim, "gateway-0", 4), 4.0)
    skewed_at = time.time()
    plans = await eventually(lambda: balancer_plans(svc.url), timeout=HOLD + 5)
    plan = plans[0]
    assert plan["created_at"] - skewed_at >= HOLD - 0.2  # not before the hold-down
    assert plan["state"] == "proposed"
    moves = plan["plan"]["moves"]
    assert "gateway-0" in {m["from"] for m in moves}
    assert "gateway-0" not in {m["to"] for m in moves}
    assert plan["plan"]["peak_to_mean_after"] < 1.25

    # surfaced: the status (API and CLI) names the command, the page lists it
    st = await get(svc.url, "/v1/status")
    assert f"modbot-ring apply {plan['id']}" in st["balance"]["decision"]
    base = ["--config-url", svc.url, "--token", ADMIN]
    out = tmp_path / "status.txt"
    code = await asyncio.to_thread(_cli_to_file, ["status", *base], out)
    assert code == 0 and f"a plan is waiting: modbot-ring apply {plan['id']}" in out.read_text()

    # one proposal at a time, and the operator applies it by id
    await asyncio.sleep(0.5)  # the sleep is the test: no second proposal meanwhile
    assert len(await balancer_plans(svc.url)) == 1
    code = await asyncio.to_thread(_cli_to_file, ["apply", plan["id"], "--yes", *base], out)
    assert code == 0, out.read_text()
    await eventually(
        lambda: _below(svc.url, 1.25), timeout=5, interval=0.1
    )  # the view follows the table at once


def _cli_to_file(argv: list[str], path) -> int:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli(argv)
    path.write_text(buf.getvalue())
    return code


async def _below(url: str, level: float) -> bool:
    status = await get(url, "/v1/balance")
    return status["imbalance"] is not None and status["imbalance"] < level


@pytest.mark.parametrize("cluster", [("auto", {})], indirect=True)
async def test_auto_mode_applies_and_never_moves_a_unit_twice_within_the_cooldown(cluster):
    svc, sim = cluster
    sim.heat(hot_shards(sim, "gateway-0", 4), 4.0)
    try:
        await eventually(lambda: _plans_done(svc.url, 1), timeout=HOLD + 10, interval=0.1)
    except AssertionError:
        print("STATUS", await get(svc.url, "/v1/balance"))
        print("PLANS", await balancer_plans(svc.url))
        raise
    await eventually(lambda: _below(svc.url, 1.25), timeout=5, interval=0.1)
    first = (await balancer_plans(svc.url))[0]
    moved = {int(m["id"]) for m in first["plan"]["moves"]}

    # the pod that took the hot shards now heats up: the shards it received are the
    # obvious ones to move, but they moved within the cool-down, so others must go
    receiver = first["plan"]["moves"][0]["to"]
    await sim.refresh_table()
    arrived = {int(m["id"]) for m in first["plan"]["moves"] if m["to"] == receiver}
    sim.heat(arrived, 1.7)
    await eventually(lambda: _plans_done(svc.url, 2), timeout=HOLD + 10, interval=0.1)
    second = (await balancer_plans(svc.url))[0]
    again = {int(m["id"]) for m in second["plan"]["moves"]}
    assert second["plan"]["moves"] and not (again & moved)
    await eventually(lambda: _below(svc.url, 1.25), timeout=5, interval=0.1)
    status = await get(svc.url, "/v1/balance")
    assert status["mode"] == "auto" and status["leader"]


async def _plans_done(url: str, n: int) -> bool:
    plans = await balancer_plans(url)
    return len(plans) >= n and all(p["state"] == "done" for p in plans)


@pytest.mark.parametrize(
    "cluster", [("propose", {"capacity": 90.0, "hold_down": 60.0})], indirect=True
)
async def test_balanced_overload_advises_scale_out_and_a_new_pod_gets_filled(cluster):
    svc, sim = cluster

    async def advised():
        status = await get(svc.url, "/v1/balance")
        return status["scale_out"]

    advice = await eventually(advised, timeout=5, interval=0.1)
    assert advice == {
        "replicas": 6,
        "command": "kubectl scale statefulset gateway --replicas=6",
    }
    async with aiohttp.ClientSession() as http, http.get(svc.url + "/metrics") as r:
        assert "modbot_config_recommended_gateway_replicas 6.0" in await r.text()
    assert await balancer_plans(svc.url) == []

    await sim.register("gateway-5")  # the operator ran the command; the new pod is empty
    plans = await eventually(lambda: balancer_plans(svc.url), timeout=5, interval=0.1)
    plan = plans[0]["plan"]
    assert plan["moves"] and {m["to"] for m in plan["moves"]} == {"gateway-5"}
    assert plan["after"]["gateway-5"] >= 0.9 * plan["fair"]["gateway-5"]
    assert "joined empty" in plan["reason"]


@pytest.mark.parametrize("cluster", [("propose", {})], indirect=True)
async def test_ops_page_shows_every_pod_and_needs_the_admin_token(cluster):
    svc, sim = cluster
    sim.heat(hot_shards(sim, "gateway-0", 4), 4.0)
    plan = (await eventually(lambda: balancer_plans(svc.url), timeout=HOLD + 5))[0]
    async with aiohttp.ClientSession() as http:
        async with http.get(svc.url + "/ops") as r:
            assert r.status == 401 and "Basic" in r.headers["WWW-Authenticate"]
            assert "admin token" in (await r.json())["error"]
        bad = {"Authorization": "Bearer wrong"}
        async with http.get(svc.url + "/ops", headers=bad) as r:
            assert r.status == 401
        basic = base64.b64encode(f"ops:{ADMIN}".encode()).decode()
        for auth in (f"Bearer {ADMIN}", f"Basic {basic}"):
            async with http.get(svc.url + "/ops", headers={"Authorization": auth}) as r:
                assert r.status == 200 and r.content_type == "text/html"
                page = await r.text()
    for pod in PODS:
        assert pod in page
    assert "<svg" in page and "Imbalance over time" in page and "<polyline" in page
    assert f"modbot-ring apply {plan['id']}" in page


@pytest.mark.parametrize("cluster", [("off", {})], indirect=True)
async def test_plan_svg_draws_every_pod_before_and_after(cluster, tmp_path):
    svc, sim = cluster
    sim.heat(hot_shards(sim, "gateway-0", 4), 4.0)
    await sim.heartbeat()
    svg = tmp_path / "before-after.svg"
    out = tmp_path / "plan.txt"
    argv = [
        "plan",
        "--config-url",
        svc.url,
        "--token",
        ADMIN,
        "--svg",
        str(svg),
        "-o",
        str(tmp_path / "plan.json"),
    ]
    assert await asyncio.to_thread(_cli_to_file, argv, out) == 0
    root = ET.fromstring(svg.read_text())
    assert root.tag.endswith("svg")
    text = svg.read_text()
    for pod in PODS:
        assert f">{pod}<" in text
    assert text.count("<rect") >= 2 * len(PODS)


def test_detector_holds_down_and_has_hysteresis():
    det = SkewDetector(BalancePolicy(threshold=1.25, clear=1.15, hold_down=10))
    assert not det.observe(1.3, 0)
    assert not det.observe(1.2, 5)  # in the band: the clock keeps running
    assert det.observe(1.3, 10)  # fires once...
    assert not det.observe(1.4, 11)  # ...and stays quiet
    det.rearm(20)
    assert not det.observe(1.4, 25) and det.observe(1.4, 30)  # a full hold-down again
    assert not det.observe(1.1, 31)  # cleared
    assert not det.observe(1.2, 32)  # below the threshold: does not start a period
    with pytest.raises(ValueError):
        BalancePolicy(threshold=1.1, clear=1.2)


@pytest.mark.parametrize("cluster", [("auto", {"move_budget_per_hour": 1})], indirect=True)
async def test_auto_mode_stays_within_the_move_budget(cluster):
    svc, sim = cluster
    sim.heat(hot_shards(sim, "gateway-0", 8), 4.0)  # far more skew than one move can fix
    await eventually(lambda: _plans_done(svc.url, 1), timeout=HOLD + 10, interval=0.1)
    plan = (await balancer_plans(svc.url))[0]["plan"]
    assert len(plan["moves"]) == 1 and any("move limit" in u for u in plan["unfixable"])
    await asyncio.sleep(HOLD + 1)  # the sleep is the test: still skewed, budget spent
    assert len(await balancer_plans(svc.url)) == 1
    assert (await get(svc.url, "/v1/balance"))["skew"] > 1.25


async def test_one_replica_leads_and_another_takes_over_when_it_goes(pg_schema):
    """Two config service replicas on one database: one decides (advisory lock); when
    it stops, its lock goes with its connection and the other one leads."""
    policy = settings("propose")
    async with contextlib.AsyncExitStack() as stack:
        first_stack = contextlib.AsyncExitStack()
        first = await first_stack.enter_async_context(
            running_config(PG_URL, pg_schema, shard_count=SHARDS, balance=policy)
        )
        stack.push_async_callback(first_stack.aclose)
        sim = SimulatedPods(first.url, PODS, guilds=500)
        await sim.start()
        stack.push_async_callback(sim.stop)
        await eventually(lambda: _leads(first.url), timeout=5, interval=0.1)
        second = await stack.enter_async_context(
            running_config(PG_URL, pg_schema, shard_count=SHARDS, balance=policy)
        )

        async def follows() -> bool:
            status = await get(second.url, "/v1/balance")
            return status["decision"] == "following the leader" and not status["leader"]

        await eventually(follows, timeout=5, interval=0.1)
        await asyncio.sleep(0.5)  # the sleep is the test: the lead stays where it is
        assert await _leads(first.url) and not await _leads(second.url)

        await first_stack.aclose()  # the leader goes away
        sim.config_url = second.url
        await eventually(lambda: _leads(second.url), timeout=5, interval=0.1)


async def _leads(url: str) -> bool:
    return bool((await get(url, "/v1/balance"))["leader"])
