"""Plans that don't mislead: a lifecycle with expiry, a rollback that asks before it
creates anything, advice re-checked against the current table, no churn on idle or
unevenable stacks, one unit in the progress bar, LOAD's unit printed."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import aiohttp
import pytest
from conftest import ADMIN, PG_URL, eventually, running_config
from loadsim import SimulatedPods
from prometheus_client import CollectorRegistry
from test_cli_walk import one_line, run

from config_store.balancer import Balancer, BalancerSettings
from config_store.store import MigrationStore, PlanRecord
from modbot_cli.main import _moves_done, progress_bar
from modbot_ring import BalancePolicy, Pod, RoutingTable, measure
from modbot_ring.balance import can_improve, why_not_plan

GID = 81384788765712384
A = {"Authorization": f"Bearer {ADMIN}"}


# -- pure: the bar, the floor, "cannot improve" ----------------------------------------------


def test_progress_bar_counts_plan_moves_in_one_unit():
    bar = progress_bar(1, 2, ["shard", "guild"], width=10)
    assert bar == "[#####-----] 1/2 moves (1 shard, 1 guild)"
    assert progress_bar(0, 1, ["shard"], width=4) == "[----] 0/1 moves (1 shard)"
    table = RoutingTable([Pod("a"), Pod("b")], shard_count=4, shard_pins={0: "b"})
    moves = [
        {"kind": "shard", "id": "0", "to": "b"},  # done: b owns shard 0
        {"kind": "shard", "id": "1", "to": "b" if table.shard_owner(1) == "a" else "a"},
        {"kind": "guild", "id": str(GID), "to": table.owner(GID)},  # done
    ]
    assert _moves_done(table, moves) == 2
    running = [{"guild_id": str(GID), "shard": None, "state": "frozen"}]
    assert _moves_done(table, moves, running) == 1  # flipped or not, still migrating
    repair = [{"kind": "repair", "id": str(GID), "to": table.owner(GID)}]
    assert _moves_done(table, repair) == 0  # the owner does not change in a repair
    assert _moves_done(table, repair, [{"guild_id": str(GID), "state": "done"}]) == 1


def four_pods(shard_loads: dict[int, float], shards: int = 4) -> tuple[RoutingTable, object]:
    pods = [Pod(f"p{i}") for i in range(4)]
    table = RoutingTable(
        pods, shard_count=shards, shard_pins={s: f"p{s % 4}" for s in range(shards)}
    )
    return table, measure(table, {}, shard_loads)


def test_idle_stack_under_the_load_floor_is_not_balanced():
    policy = BalancePolicy()
    table, view = four_pods({0: 0.25, 1: 0.05, 2: 0.05, 3: 0.05})  # 0.4 events/s in all
    assert view.skew > policy.threshold  # skewed on paper...
    assert "idle" in why_not_plan(view, table, {}, {0: 0.25, 1: 0.05}, policy)
    table, busy = four_pods({0: 25.0, 1: 5.0, 2: 5.0, 3: 5.0, 4: 20.0}, shards=8)
    assert why_not_plan(busy, table, {}, {0: 25.0, 1: 5.0, 2: 5.0, 3: 5.0, 4: 20.0}, policy) == ""


def test_four_shards_on_four_pods_cannot_be_improved():
    policy = BalancePolicy()
    loads = {0: 30.0, 1: 10.0, 2: 10.0, 3: 10.0}
    table, view = four_pods(loads)
    assert view.skew == pytest.approx(2.0)
    assert "no move evens it" in why_not_plan(view, table, {}, loads, policy)
    # eight shards, two on the hot pod: moving one helps
    loads8 = {0: 15.0, 4: 15.0, 1: 5.0, 2: 5.0, 3: 5.0, 5: 5.0, 6: 5.0, 7: 5.0}
    table8, view8 = four_pods(loads8, shards=8)
    assert why_not_plan(view8, table8, {}, loads8, policy) == ""
    assert can_improve(view8, {"p0": [15.0, 15.0], "p1": [5.0, 5.0]})
    assert not can_improve(view, {"p0": [30.0], "p1": [10.0], "p2": [10.0], "p3": [10.0]})


def test_advice_is_rechecked_against_the_current_table():
    old = RoutingTable([Pod("a"), Pod("b")], version=1)
    hot_on = old.owner(GID)
    other = "b" if hot_on == "a" else "a"
    now = old.with_pin(GID, other).evolve(version=2)
    publisher = SimpleNamespace(snapshot=SimpleNamespace(table=now))
    balancer = Balancer(
        store=None,  # type: ignore[arg-type]
        migrator=SimpleNamespace(migrations=None),  # type: ignore[arg-type]
        publisher=publisher,  # type: ignore[arg-type]
        settings=BalancerSettings(),
        registry=CollectorRegistry(),
    )
    balancer.view = measure(old, {GID: 100.0})
    balancer.waiting = PlanRecord("plan-old", 0.0, 1, "proposed", "balancer", {})
    balancer.decision = "a plan is waiting: modbot-ring apply plan-old"  # from the last tick
    advice = "\n".join(balancer.advice())
    assert f"guild {GID} on {other}" in advice and f"on {hot_on} " not in advice
    status = balancer.status(history=False)
    assert status["waiting_plan"] is None and "plan-old" not in "\n".join(status["advice"])
    assert "apply plan-old" not in status["decision"]
    publisher.snapshot = SimpleNamespace(table=old)
    assert "modbot-ring apply plan-old" in "\n".join(balancer.advice())


# -- against a real config service ----------------------------------------------------------


async def api(pg_svc, method: str, path: str, body: dict | None = None) -> dict:
    async with (
        aiohttp.ClientSession(headers=A) as http,
        http.request(method, pg_svc.url + path, json=body) as r,
    ):
        assert r.status < 300, await r.text()
        return await r.json()


def cli(pg_svc, *args: str, stdin: str | None = None):
    return asyncio.to_thread(
        run, [*args, "--config-url", pg_svc.url, "--token", ADMIN], None, stdin
    )


async def test_dry_run_is_a_draft_that_expires_when_someone_else_moves_the_table(pg_svc, tmp_path):
    first = tmp_path / "first.json"
    code, out, err = await cli(pg_svc, "plan", "-o", str(first))
    assert code == 0, err
    assert "LOAD is events/s" in out and "draft" in out  # the unit, and what a dry run is
    plan_id = json.loads(first.read_text())["id"]
    assert (await api(pg_svc, "GET", f"/v1/plans/{plan_id}"))["state"] == "draft"
    migrations = MigrationStore(pg_svc.store)  # type: ignore[arg-type]
    assert await migrations.plans_in_state(("proposed",)) == []  # not advertised as waiting

    # a plan's own table changes do not make it stale; they do make the others stale
    mine = await api(pg_svc, "POST", "/v1/plans", {"epsilon": 0.05, "max_moves": None})
    await migrations.pin_to_holder(GID + 1, "gateway-0", "test", mine["id"])
    assert await migrations.expire_stale_plans() == [plan_id]
    assert (await api(pg_svc, "GET", f"/v1/plans/{mine['id']}"))["state"] == "draft"
    assert (await api(pg_svc, "GET", f"/v1/plans/{plan_id}"))["state"] == "expired"

    await api(pg_svc, "PUT", f"/v1/pins/{GID}", {"pod": "gateway-1", "reason": "x"})  # someone else
    assert await migrations.expire_stale_plans() == [mine["id"]]
    code, _, err = await cli(pg_svc, "apply", str(first), "--yes")
    assert code == 4 and one_line(err) and "expired" in err

    # applied before any sweep: refused, and marked expired on the spot
    late = await api(pg_svc, "POST", "/v1/plans", {"epsilon": 0.05, "max_moves": None})
    await api(pg_svc, "DELETE", f"/v1/pins/{GID}")
    code, _, err = await cli(pg_svc, "apply", late["id"], "--yes")
    assert code == 4 and "regenerate" in err
    assert (await api(pg_svc, "GET", f"/v1/plans/{late['id']}"))["state"] == "expired"


async def test_rollback_answered_no_creates_nothing(pg_svc, tmp_path):
    table = RoutingTable.from_dict(await api(pg_svc, "GET", "/v1/table"))
    owner = table.shard_owner(0)
    other = "gateway-1" if owner == "gateway-0" else "gateway-0"
    saved = tmp_path / "saved.json"
    saved.write_text(
        json.dumps(
            {"id": "plan-saved", "moves": [], "current_assignment": {"shards": {"0": other}}}
        )
    )
    code, out, err = await cli(pg_svc, "rollback", str(saved), stdin="n\n")
    assert code == 1 and "aborted" in err and "1 shard(s) and 0 guild(s)" in out, (out, err)
    assert (await api(pg_svc, "GET", "/v1/plans"))["plans"] == []  # nothing left behind
    code, _, err = await cli(pg_svc, "rollback", str(saved))  # not a terminal, no --yes
    assert code == 2 and "--yes" in err
    assert (await api(pg_svc, "GET", "/v1/plans"))["plans"] == []


HOLD = 1.0


@pytest.mark.parametrize("per_pod", [0.1])
async def test_idle_stack_gets_no_plan(pg_schema, per_pod):
    settings = BalancerSettings(
        mode="propose", interval=0.1, policy=BalancePolicy(hold_down=HOLD, cooldown=3600.0)
    )
    async with running_config(PG_URL, pg_schema, shard_count=16, balance=settings) as pg_svc:
        sim = SimulatedPods(pg_svc.url, [f"gateway-{i}" for i in range(4)], guilds=200)
        await sim.start()
        try:
            sim.normalize(per_pod)  # 0.4 events/s in all
            assert sim.table is not None
            sim.heat({s for s in range(16) if sim.table.shard_owner(s) == "gateway-0"}, 3.0)
            await sim.heartbeat()

            async def idle_but_skewed() -> bool:  # skewed on paper, but idle
                status = await api(pg_svc, "GET", "/v1/balance")
                return str(status["decision"]).startswith("idle") and status["skew"] > 1.25

            await eventually(idle_but_skewed, timeout=10, interval=0.1)
            await asyncio.sleep(HOLD * 2)  # the sleep is the test: twice the hold-down
            plans = (await api(pg_svc, "GET", "/v1/plans"))["plans"]
            assert [p for p in plans if p["actor"] == "balancer"] == []
        finally:
            await sim.stop()
