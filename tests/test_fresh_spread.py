"""A fresh shard-keyed cluster spreads its shards over the pods as they register
(config_store/migrator.py ``spread_if_empty``): with no data there is nothing to migrate,
and the ring alone is lumpy at small shard counts (4 shards on gateway-0..2 all land on
gateway-2). Once anything holds data, joins hold shards in place for a plan instead."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    ADMIN,
    PG_URL,
    READ,
    HoldingPods,
    add_pods,
    eventually,
    free_port,
    running_config,
)
from stack import running_stack

from config_store.migrator import even_shard_pins
from modbot_ring import Pod, PodState, RoutingTable

A = {"Authorization": f"Bearer {ADMIN}"}


def _counts(table: RoutingTable) -> Counter[str]:
    assert table.shard_count is not None
    return Counter(table.shard_owner(s) or "" for s in range(table.shard_count))


def _spread(table: RoutingTable) -> RoutingTable:
    pins = even_shard_pins(table)
    return table if pins is None else table.evolve(shard_pins=pins)


@pytest.mark.parametrize("pods", [2, 3, 4, 5])
@pytest.mark.parametrize("shards", [1, 2, 3, 4, 5, 8, 16])
def test_even_shares_at_small_shard_counts(pods: int, shards: int) -> None:
    """Happy: every pod count x shard count ends within one shard of even, and a second
    pass changes nothing (registrations of known pods do not churn pins)."""
    names = [f"gateway-{i}" for i in range(pods)]
    table = _spread(RoutingTable([Pod(n) for n in names], shard_count=shards))
    counts = _counts(table)
    assert sum(counts.values()) == shards
    assert max(counts[n] for n in names) - min(counts[n] for n in names) <= 1
    assert even_shard_pins(table) is None
    # pins only where the ring's own answer differs
    assert all(table.ring.get(s) != p for s, p in table.shard_pins.items())


def test_even_shares_follow_weights_and_leave_draining_and_offline_pods_alone() -> None:
    table = RoutingTable(
        [Pod("a", weight=2), Pod("b"), Pod("c", PodState.DRAINING), Pod("d", PodState.OFFLINE)],
        shard_count=8,
        shard_pins={0: "c", 1: "c"},
    )
    before = {s: table.shard_owner(s) for s in range(8)}
    spread = _spread(table)
    after = {s: spread.shard_owner(s) for s in range(8)}
    for s, owner in before.items():
        if owner in ("c", "d"):
            assert after[s] == owner  # not asked, not moved
    movable = [s for s, o in before.items() if o not in ("c", "d")]
    got = Counter(after[s] for s in movable)
    assert abs(got["a"] - 2 * len(movable) / 3) < 1 and abs(got["b"] - len(movable) / 3) < 1


def test_nothing_to_spread_without_shards_or_active_pods() -> None:
    assert even_shard_pins(RoutingTable([Pod("a"), Pod("b")])) is None  # guild-keyed
    assert even_shard_pins(RoutingTable([], shard_count=4)) is None
    drained = RoutingTable([Pod("a", PodState.DRAINING)], shard_count=4, shard_pins={0: "a"})
    assert even_shard_pins(drained) is None


async def _table(http: aiohttp.ClientSession, url: str) -> RoutingTable:
    async with http.get(f"{url}/v1/table", headers={"Authorization": f"Bearer {READ}"}) as r:
        assert r.status == 200
        body = await r.json()
    return RoutingTable.from_dict(body.get("table", body))


async def test_joins_spread_until_data_then_hold(pg_schema: str) -> None:
    """Happy then hostile: empty pods each get their share as they register; once a pod
    holds guild rows, the next join moves nothing (every shard held where it is)."""
    pods = HoldingPods()
    try:
        async with (
            running_config(PG_URL, pg_schema, shard_count=4, migration_token="m") as svc,
            aiohttp.ClientSession() as http,
        ):
            for i in range(3):
                await add_pods(svc.url, {f"gateway-{i}": await pods.start(f"gateway-{i}")})
            table = await _table(http, svc.url)
            assert sorted(_counts(table).values()) == [1, 1, 2]
            assert set(table.shard_pins.values()) <= set(table.pods)
            # a pod now holds rows of a guild: the cluster has data
            pods.holdings["gateway-0"] = ["81384788765712384"]
            before = {s: table.shard_owner(s) for s in range(4)}
            await add_pods(svc.url, {"gateway-3": await pods.start("gateway-3")})
            table = await _table(http, svc.url)
            assert {s: table.shard_owner(s) for s in range(4)} == before
            assert table.shards_for("gateway-3") == ()
    finally:
        await pods.stop()


async def test_reported_load_counts_as_data(pg_schema: str) -> None:
    """Hostile: a pod that reports load (even with no rows listed) stops the spread."""
    pods = HoldingPods()
    try:
        async with (
            running_config(PG_URL, pg_schema, shard_count=4, migration_token="m") as svc,
            aiohttp.ClientSession() as http,
        ):
            await add_pods(svc.url, {"gateway-0": await pods.start("gateway-0")})
            load = {"load": {"guilds": {"81384788765712384": 3.0}, "at": 1.0}}
            async with http.post(
                f"{svc.url}/v1/pods/gateway-0/heartbeat", json=load, headers=A
            ) as r:
                assert r.status == 200, await r.text()
            await add_pods(svc.url, {"gateway-1": await pods.start("gateway-1")})
            table = await _table(http, svc.url)
            assert _counts(table) == Counter({"gateway-0": 4})
    finally:
        await pods.stop()


async def test_unreachable_pod_is_not_spread_from_and_the_join_still_succeeds(
    pg_schema: str,
) -> None:
    """Fault: the pod that would give up shards does not answer (its port is closed): the
    config service cannot know it is empty, so nothing moves; registering still answers."""
    pods = HoldingPods()
    try:
        async with (
            running_config(PG_URL, pg_schema, shard_count=4, migration_token="m") as svc,
            aiohttp.ClientSession() as http,
        ):
            dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
            await add_pods(svc.url, {"gateway-0": dead})
            await add_pods(svc.url, {"gateway-1": dead})
            table = await asyncio.wait_for(_table(http, svc.url), 5)
            assert table.shard_pins == {}  # the ring's answer, untouched
            # once it answers (restarted), the next registration spreads
            await add_pods(svc.url, {"gateway-0": await pods.start("gateway-0")})
            await add_pods(svc.url, {"gateway-1": await pods.start("gateway-1")})
            table = await _table(http, svc.url)
            assert sorted(_counts(table).values()) == [2, 2]
    finally:
        await pods.stop()


@pytest.mark.slow
async def test_fresh_stack_every_pod_opens_its_share(tmp_path: Any) -> None:
    """End to end (the reported bug): tests/stack.py's 3 pods on 4 shards each open
    sessions; before the fix gateway-2 held all 4 and the others none."""
    async with running_stack(
        tmp_path,
        f"sqlite:///{tmp_path}/config.db",
        pods=3,
        guilds=8,
        shard_count=4,
        register_first=False,  # the pods join one by one, as they register themselves
    ) as st:
        table = await _table(st.http, st.config.url)
        shares = {p: table.shards_for(p) for p in st.pods}
        assert all(shares.values()), shares

        async def opened() -> bool:
            for pod in st.pods.values():
                async with st.http.get(f"{pod.url}/readyz") as r:
                    if tuple((await r.json()).get("shards") or ()) != shares[pod.name]:
                        return False
            return True

        await eventually(opened, timeout=30, interval=0.2)
        for pod in st.pods.values():  # shards moved at start: sessions closed mid-login cleanly
            assert "Traceback" not in Path(pod.log_path).read_text(), pod.name


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
