"""The ``quota`` ring: exact shares, minimal moves along any history, snapshots that
carry (and check) the placement, and the control plane that keeps it across restarts."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config_store.store import Conflict, open_store
from modbot_ring import HashRing, Pod, PodState, RoutingTable, TableFormatError, _quota

Q = "quota"


def units(ring: HashRing) -> list[str]:
    """The owner of each of the 65,536 units (a 16th of the 2**20-slot table: fast)."""
    assert ring._order is not None
    return list(map(ring._names.__getitem__, _quota.by_unit(ring._order)))


def counts(ring: HashRing) -> Counter[str]:
    return Counter(units(ring))


def step(before: HashRing, after: HashRing) -> tuple[int, int]:
    """(units moved, the fewest moves the new counts needed)."""
    old, new = counts(before), counts(after)
    needed = sum(max(0, new[n] - old.get(n, 0)) for n in new)
    return sum(a != b for a, b in zip(units(before), units(after))), needed


# -- the library -----------------------------------------------------------------------------


def test_shares_are_exact_for_equal_and_mixed_weights():
    for n in (3, 10, 64, 100):
        ring = HashRing([f"gateway-{i}" for i in range(n)], algorithm=Q)
        share = ring.share()
        assert max(share.values()) * n <= 1 + 1.5 * n / _quota.UNITS  # within one unit
    spec = {f"gw-{i}": (2.0 if i % 3 == 0 else 1.0) for i in range(10)}
    share = HashRing(spec, algorithm=Q).share()
    total = sum(spec.values())
    assert max(abs(share[p] / (w / total) - 1) for p, w in spec.items()) < 0.001


def test_seats_are_webster_and_population_monotone():
    assert _quota.seats([1, 1, 1], [0, 1, 2], total=10) in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    assert _quota.seats([1, 1, 1], [2, 0, 1], total=10) == [3, 4, 3]  # the tie: lowest rank
    assert _quota.seats([5, 3, 2], [0, 1, 2], total=10) == [5, 3, 2]
    assert _quota.seats([100, 1], [0, 1], total=7) == [7, 0]
    assert _quota.seats([], [], total=7) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 100 << 24), min_size=1, max_size=40),
    st.integers(1, 100 << 24),
    st.integers(0, 39),
)
def test_adding_or_raising_a_weight_never_gives_another_node_more(weights, extra, who):
    ranks = list(range(len(weights)))
    before = _quota.seats(weights, ranks)
    assert sum(before) == _quota.UNITS
    grown = _quota.seats([*weights, extra], [*ranks, len(weights)])
    assert all(g <= b for g, b in zip(grown, before))
    who %= len(weights)
    raised = list(weights)
    raised[who] = min(100 << 24, raised[who] * 2)
    after = _quota.seats(raised, ranks)
    assert all(a <= b for i, (a, b) in enumerate(zip(after, before)) if i != who)


@pytest.mark.slow  # up to 12 rebuilds of a quota ring per example: about 20 s of CPU
@settings(max_examples=20, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 30), st.sampled_from([0.5, 1, 2, 3])),
        min_size=1,
        max_size=12,
    )
)
def test_any_history_moves_only_what_the_counts_need(changes):
    nodes = {f"gateway-{i}": 1.0 for i in range(4)}
    ring = HashRing(nodes, algorithm=Q)
    for action, which, weight in changes:
        name = f"gateway-{which}"
        if action == 0 or len(nodes) < 2:
            nodes[name] = float(weight)
        elif action == 1 and name in nodes:
            del nodes[name]
        else:
            nodes[sorted(nodes)[which % len(nodes)]] = float(weight)
        after = HashRing(nodes, algorithm=Q, previous=ring)
        moved, needed = step(ring, after)
        assert moved == needed
        gained = {n for n, c in counts(after).items() if c > counts(ring).get(n, 0)}
        for a, b in zip(units(ring), units(after)):
            assert a == b or b in gained  # moves go only to pods that gained count
        total = sum(nodes.values())
        owned = counts(after)
        assert all(abs(owned[n] - w / total * _quota.UNITS) <= 1.5 for n, w in nodes.items())
        ring = after


def test_add_moves_only_to_the_new_pod_and_remove_only_the_removed_pods_keys():
    ring = HashRing({f"gateway-{i}": 1.0 for i in range(10)}, algorithm=Q)
    grown = ring.with_node("gateway-10", 2.0)
    assert all(a == b or b == "gateway-10" for a, b in zip(ring._table, grown._table))
    shrunk = grown.without_node("gateway-3")
    assert all(a == b or a == "gateway-3" for a, b in zip(grown._table, shrunk._table))
    assert step(grown, shrunk)[0] == counts(grown)["gateway-3"]


def test_the_same_history_gives_the_same_placement_everywhere():
    """Determinism across machines and Python versions: a golden digest of a history."""
    ring = HashRing([f"gateway-{i}" for i in range(7)], algorithm=Q)
    ring = ring.with_node("gateway-7", 2.5).without_node("gateway-2").with_node("gateway-0", 0.5)
    again = HashRing([f"gateway-{i}" for i in range(7)], algorithm=Q)
    again = again.with_node("gateway-7", 2.5).without_node("gateway-2").with_node("gateway-0", 0.5)
    assert ring == again and ring.assignment == again.assignment
    digest = hashlib.sha256(str(ring.assignment).encode()).hexdigest()
    assert digest[:16] == GOLDEN
    # the placement depends on the path, which is why the table carries it
    direct = HashRing(dict(ring.nodes), algorithm=Q)
    assert direct != ring and direct.share() == pytest.approx(ring.share(), abs=2 / _quota.UNITS)


GOLDEN = "0e43d9976f8f32a4"


def test_build_cost_does_not_depend_on_weight():
    light = HashRing(dict.fromkeys([f"p{i}" for i in range(50)], 1.0), algorithm=Q)
    heavy = HashRing(dict.fromkeys([f"p{i}" for i in range(50)], 100.0), algorithm=Q)
    assert light._index == heavy._index  # relative weights: the same table


def test_a_ring_reloads_from_its_assignment_and_lookups_agree():
    ring = HashRing({f"gateway-{i}": 1.0 + i % 2 for i in range(12)}, algorithm=Q)
    ring = ring.with_node("late", 1.0)
    again = HashRing(dict(ring.nodes), algorithm=Q, assignment=ring.assignment)
    assert again == ring
    for key in (0, 1, 2**63 - 1, 81384788765712384, "abc", b"xyz"):
        assert again.get(key) == ring.get(key)
    get = ring.getter({5: "gateway-0"})
    assert get(5) == "gateway-0" and get(6) == ring.get(6)


def test_previous_and_assignment_are_for_quota_rings_only():
    quota = HashRing(["a", "b"], algorithm=Q)
    with pytest.raises(ValueError, match="quota rings only"):
        HashRing(["a"], algorithm="slots", previous=quota)
    with pytest.raises(ValueError, match="quota rings only"):
        HashRing(["a"], algorithm="slots", assignment=quota.assignment)
    with pytest.raises(ValueError, match="needs nodes"):
        HashRing([], algorithm=Q, assignment=quota.assignment)


# -- snapshots ---------------------------------------------------------------------------------


def quota_table() -> RoutingTable:
    table = RoutingTable([Pod(f"gateway-{i}") for i in range(5)], algorithm=Q, shard_count=64)
    return table.with_pod(Pod("gateway-9", weight=2.0)).with_pin(81384788765712384, "gateway-1")


def test_a_quota_table_round_trips_through_its_snapshot():
    table = quota_table()
    data = table.to_dict()
    assert data["algorithm"] == Q and isinstance(data["assignment"], str)
    assert len(table.to_json()) < 4_000  # runs in ORDER compress well
    again = RoutingTable.from_json(table.to_json())
    assert again == table and again.to_json() == table.to_json()
    assert [again.shard_owner(s) for s in range(64)] == [table.shard_owner(s) for s in range(64)]


def test_evolving_a_quota_table_keeps_its_history():
    table = quota_table()
    pinned = table.with_pin(1 << 40, "gateway-2")
    assert pinned.ring is table.ring  # the ring's members did not change: same ring
    drained = table.with_pod(Pod("gateway-3", PodState.DRAINING))
    moved = [s for s in range(64) if drained.shard_owner(s) != table.shard_owner(s)]
    assert moved and all(table.shard_owner(s) == "gateway-3" for s in moved)


def tampered(table: RoutingTable, assignment: object) -> str:
    data = table.to_dict()
    data["assignment"] = assignment
    return json.dumps(data)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("not base64!", "base64"),
        (base64.b64encode(b"not zlib").decode(), "zlib"),
        (base64.b64encode(zlib.compress(b"\x01\x00" * 10)).decode(), "16-bit owners"),
        (base64.b64encode(zlib.compress(b"\x00" * (1 << 26))).decode(), "16-bit owners"),  # bomb
        (base64.b64encode(zlib.compress(b"\x63\x00" * _quota.UNITS)).decode(), "names node 99"),
        (base64.b64encode(zlib.compress(b"\x00\x00" * _quota.UNITS)).decode(), "no owner"),
        (base64.b64encode(zlib.compress(b"\x01\x00" * _quota.UNITS)).decode(), "counts"),
        (12345, "string"),
        ("A" * (5 * _quota.UNITS), "at most"),
    ],
)
def test_a_snapshot_with_a_bad_assignment_is_refused_by_name(assignment, message):
    with pytest.raises(TableFormatError, match=message):
        RoutingTable.from_json(tampered(quota_table(), assignment))


def test_a_skewed_placement_cannot_ride_in_a_snapshot():
    """One unit handed from one pod to another: well-formed, but not the weights' counts."""
    table = quota_table()
    order = table.ring._order
    assert order is not None
    skewed = _quota.array.array("H", order)
    first = skewed[0]
    skewed[skewed.index(next(o for o in skewed if o != first))] = first
    with pytest.raises(TableFormatError, match="counts do not match"):
        RoutingTable.from_json(tampered(table, _quota.encode(skewed)))


def test_the_assignment_field_belongs_to_quota_tables_only():
    slots = RoutingTable([Pod("a"), Pod("b")])
    data = slots.to_dict()
    assert "assignment" not in data
    data["assignment"] = quota_table().to_dict()["assignment"]
    with pytest.raises(TableFormatError, match="assignment"):
        RoutingTable.from_dict(data)
    missing = quota_table().to_dict()
    del missing["assignment"]
    with pytest.raises(TableFormatError, match="required for quota"):
        RoutingTable.from_dict(missing)
    empty = RoutingTable([], algorithm=Q).to_dict()
    assert "assignment" not in empty and RoutingTable.from_dict(empty).ring.nodes == {}


# -- the control plane keeps the placement --------------------------------------------------


async def test_the_store_keeps_the_placement_across_restarts(database_url):
    url, schema = database_url
    store = await open_store(url, schema=schema)
    await store.initialize_ring(None)  # the default: quota
    for i in range(4):
        await store.register_pod(f"gateway-{i}", None, 1.0, "test")
    before = await store.table()
    assert before.algorithm.value == Q
    await store.close()

    store = await open_store(url, schema=schema)  # a restart: history comes from the db
    assert (await store.table()).ring == before.ring
    await store.register_pod("gateway-4", None, 2.0, "test")
    after = await store.table()
    assert all(a == b or b == "gateway-4" for a, b in zip(before.ring._table, after.ring._table))
    assert after.ring == RoutingTable.from_json(after.to_json()).ring
    # what the library derives from the previous table is what the store published
    assert after.ring == before.with_pod(Pod("gateway-4", weight=2.0)).ring
    await store.close()


async def test_changes_that_do_not_touch_the_ring_keep_its_placement(database_url):
    url, schema = database_url
    store = await open_store(url, schema=schema)
    await store.initialize_ring(4)
    await store.register_pod("gateway-0", None, 1.0, "test")
    await store.register_pod("gateway-1", None, 1.0, "test")
    ring = (await store.table()).ring
    await store.set_pins([(81384788765712384, "gateway-1", "hot")], [], "test")
    await store.set_pod_state("gateway-0", "draining", "test")
    drained = (await store.table()).ring
    assert list(drained.nodes) == ["gateway-1"]
    await store.set_pod_state("gateway-0", "active", "test")
    back = (await store.table()).ring
    assert counts(back) == counts(ring)
    await store.close()


async def test_an_unreadable_stored_placement_refuses_the_change_and_writes_nothing(database_url):
    url, schema = database_url
    store = await open_store(url, schema=schema)
    await store.initialize_ring(4)
    await store.register_pod("gateway-0", None, 1.0, "test")
    version = await store.version()
    async with store.db.transaction() as tx:
        await tx.execute("UPDATE ring_state SET assignment = %s WHERE id = 1", ("garbage!",))
    with pytest.raises(Conflict, match="placement is unreadable"):
        await store.register_pod("gateway-1", None, 1.0, "test")
    assert await store.version() == version
    assert [p.name for p in await store.pods()] == ["gateway-0"]
    await store.close()


async def test_a_crash_while_deriving_the_placement_leaves_the_previous_version(
    database_url, monkeypatch
):
    """The placement is written in the change's own transaction: a failure between the
    pod row and the placement leaves neither."""
    import config_store.store.core as store_module

    url, schema = database_url
    store = await open_store(url, schema=schema)
    await store.initialize_ring(4)
    await store.register_pod("gateway-0", None, 1.0, "test")
    before = await store.table()

    def boom(*args: object) -> HashRing:
        raise RuntimeError("killed while deriving")

    monkeypatch.setattr(store_module, "_derive_placement", boom)
    with pytest.raises(RuntimeError):
        await store.register_pod("gateway-1", None, 1.0, "test")
    monkeypatch.undo()
    assert await store.table() == before
    await store.register_pod("gateway-1", None, 1.0, "test")
    assert list((await store.table()).ring.nodes) == ["gateway-0", "gateway-1"]
    await store.close()


async def test_the_api_serves_quota_tables_and_keeps_the_algorithm_when_unnamed(pg_schema):
    """PUT /v1/ring with only a shard count keeps the algorithm (it used to reset it to
    slots, a silent re-placement of every guild); the table the API serves reloads."""
    import aiohttp
    from conftest import ADMIN, PG_URL, READ, running_config

    async with (
        running_config(PG_URL, pg_schema, shard_count=4) as svc,
        aiohttp.ClientSession() as http,
    ):
        admin = {"Authorization": f"Bearer {ADMIN}"}
        for name in ("gateway-0", "gateway-1", "gateway-2"):
            async with http.put(f"{svc.url}/v1/pods/{name}", json={}, headers=admin) as r:
                assert r.status == 200, await r.text()
        async with http.put(f"{svc.url}/v1/ring", json={"shard_count": 8}, headers=admin) as r:
            assert r.status == 200, await r.text()
        async with http.get(f"{svc.url}/v1/ring", headers=admin) as r:
            assert (await r.json())["algorithm"] == Q
        read = {"Authorization": f"Bearer {READ}"}
        async with http.get(f"{svc.url}/v1/table", headers=read) as r:
            table = RoutingTable.from_json(await r.read())
        assert table.algorithm.value == Q and table.shard_count == 8
        assert sorted(Counter(units(table.ring)).values()) == [21845, 21845, 21846]
        async with http.put(
            f"{svc.url}/v1/pods/gateway-0", json={"weight": 883}, headers=admin
        ) as r:
            assert r.status == 400 and "weight" in (await r.json())["error"]
