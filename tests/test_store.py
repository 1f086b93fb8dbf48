import asyncio

import pytest

from config_store.api import status_for
from config_store.store import Conflict, Invalid, NotFound, open_store
from modbot_ring import PodState, RouteReason

GID = 81384788765712384


@pytest.fixture
async def store(database_url):
    url, schema = database_url
    s = await open_store(url, schema=schema)
    await s.initialize_ring(4)
    yield s
    await s.close()


async def test_migrations_are_idempotent(database_url):
    url, schema = database_url
    first = await open_store(url, schema=schema, migrate=False)
    assert await first.migrate() == ["0001_initial", "0002_plan_versions", "0003_quota_placement"]
    assert await first.migrate() == []
    await first.close()
    again = await open_store(url, schema=schema)  # migrate at start: nothing to do
    assert await again.version() == 0
    await again.close()


async def test_every_change_bumps_the_version_and_is_audited(store):
    v1 = await store.version()
    v2 = await store.register_pod("gateway-0", "http://127.0.0.1:1", 1.0, "test")
    v3 = await store.register_pod("gateway-1", "http://127.0.0.1:2", 2.0, "test")
    v4 = await store.set_pins([(GID, "gateway-1", "hot guild")], [], "alice")
    assert v1 < v2 < v3 < v4
    table = await store.table()
    assert table.version == v4 and table.shard_count == 4
    assert table.route(GID).pod == "gateway-1" and table.route(GID).reason is RouteReason.PIN
    assert table.pods["gateway-1"].weight == 2.0
    entries = await store.audit(10)
    assert [e.action for e in entries[:3]] == ["pin.set", "pod.register", "pod.register"]
    assert entries[0].actor == "alice" and entries[0].outcome == "ok" and entries[0].version == v4
    assert entries[0].detail["reason"] == "hot guild"


async def test_no_op_changes_do_not_bump(store):
    await store.register_pod("gateway-0", "http://a", None, "t")
    v = await store.register_pod("gateway-0", "http://a", None, "t")
    assert await store.register_pod("gateway-0", "http://a", None, "t") == v
    v2 = await store.set_pins([(GID, "gateway-0", "")], [], "t")
    assert await store.set_pins([(GID, "gateway-0", "")], [], "t") == v2


async def test_refused_changes_are_rolled_back_and_audited(store):
    await store.register_pod("gateway-0", "http://a", None, "t")
    before = await store.version()
    with pytest.raises(NotFound, match="unknown pod"):
        await store.set_pins([(GID, "ghost", "")], [], "bob")
    with pytest.raises(Conflict, match="version"):
        await store.set_pins([(GID, "gateway-0", "")], [], "bob", expected_version=before - 1)
    with pytest.raises(NotFound):
        await store.set_pins([], [GID], "bob")
    assert await store.version() == before
    assert (await store.table()).pins == {}
    outcomes = [(e.action, e.outcome) for e in await store.audit(3)]
    assert outcomes == [
        ("pin.delete", "not_found"),
        ("pin.set", "conflict"),
        ("pin.set", "not_found"),
    ]


async def test_bulk_is_all_or_nothing(store):
    await store.register_pod("gateway-0", "http://a", None, "t")
    with pytest.raises(NotFound):
        await store.set_pins([(1, "gateway-0", ""), (2, "nope", "")], [], "t")
    assert (await store.table()).pins == {}
    with pytest.raises(Invalid):
        await store.set_pins([(1, "gateway-0", "")], [1], "t")


async def test_offline_and_draining_pods(store):
    await store.register_pod("gateway-0", "http://a", None, "t")
    await store.register_pod("gateway-1", "http://b", None, "t")
    await asyncio.sleep(0.05)  # the sleep is the test: their heartbeats are 50 ms old
    assert await store.mark_offline(10.0) == []
    await store.heartbeat("gateway-0")
    gone = await store.mark_offline(0.0)
    assert set(gone) == {"gateway-0", "gateway-1"}
    table = await store.table()
    assert table.pods["gateway-0"].state is PodState.OFFLINE
    with pytest.raises(Conflict, match="offline"):
        await store.set_pins([(GID, "gateway-0", "")], [], "t")
    state, _ = await store.heartbeat("gateway-0", {"events_per_s": 3.5})
    assert state == "active" and (await store.table()).pods["gateway-0"].state is PodState.ACTIVE
    assert (await store.pod("gateway-0")).load == {"events_per_s": 3.5}
    await store.heartbeat("gateway-1")
    await store.set_pod_state("gateway-1", "draining", "t")
    assert (await store.table()).pods["gateway-1"].state is PodState.DRAINING
    with pytest.raises(Conflict, match="draining"):
        await store.set_pins([(GID, "gateway-1", "")], [], "t")
    with pytest.raises(NotFound):
        await store.heartbeat("gateway-9")


async def test_pods_with_pins_cannot_be_removed(store):
    await store.register_pod("gateway-0", "http://a", None, "t")
    await store.set_pins([(GID, "gateway-0", "")], [], "t")
    with pytest.raises(Conflict, match="pin"):
        await store.remove_pod("gateway-0", "t")
    await store.set_pins([], [GID], "t")
    await store.remove_pod("gateway-0", "t")
    assert "gateway-0" not in (await store.table()).pods


async def test_invalid_input_is_refused(store):
    with pytest.raises(Invalid):
        await store.register_pod("Gateway_0!", None, None, "t")
    with pytest.raises(Invalid):
        await store.set_ring(0, "slots", "t")
    with pytest.raises(Invalid):
        await store.set_ring(4, "maglev", "t")


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_writers_racing_on_the_same_pin(database_url):
    """Both read version v and write with If-Match v: exactly one wins; the other is
    told 409; the version strictly increases; the audit log has both outcomes."""
    url, schema = database_url
    setup = await open_store(url, schema=schema)
    await setup.initialize_ring(4)
    await setup.register_pod("gateway-0", "http://a", None, "t")
    await setup.register_pod("gateway-1", "http://b", None, "t")
    seen = await setup.version()
    writers = [await open_store(url, schema=schema, migrate=False) for _ in range(2)]

    async def write(store, pod, actor):
        try:
            return await store.set_pins([(GID, pod, actor)], [], actor, expected_version=seen)
        except Conflict as exc:
            return exc

    results = await asyncio.gather(
        write(writers[0], "gateway-0", "alice"), write(writers[1], "gateway-1", "bob")
    )
    wins = [r for r in results if isinstance(r, int)]
    losses = [r for r in results if isinstance(r, Conflict)]
    # the API answers a Conflict with 409 (statuses are decided at the HTTP edge)
    assert len(wins) == 1 and len(losses) == 1 and status_for(losses[0]) == 409
    assert wins[0] == seen + 1 == await setup.version()
    audit = [(e.actor, e.outcome) for e in await setup.audit(2)]
    assert sorted(audit) in (
        sorted([("alice", "ok"), ("bob", "conflict")]),
        sorted([("alice", "conflict"), ("bob", "ok")]),
    )
    for s in (*writers, setup):
        await s.close()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_concurrent_writers_never_lose_an_update(database_url):
    url, schema = database_url
    setup = await open_store(url, schema=schema)
    await setup.register_pod("gateway-0", "http://a", None, "t")
    start = await setup.version()
    writers = [await open_store(url, schema=schema, migrate=False) for _ in range(4)]
    await asyncio.gather(
        *(
            w.set_pins([(1000 + i * 4 + n, "gateway-0", "")], [], "t")
            for n, w in enumerate(writers)
            for i in range(10)
        )
    )
    table = await setup.table()
    assert len(table.pins) == 40 and table.version == start + 40
    for s in (*writers, setup):
        await s.close()


async def test_heartbeats_missed_while_the_database_was_down_do_not_count(store):
    """Freshness is judged over reachable time only, with a grace period after an outage."""
    import time as _time

    await store.register_pod("gateway-0", "http://a", None, "t")
    health = store.db.health
    health.started -= 100  # the process has been watching for a while
    beat = (await store.pod("gateway-0")).last_heartbeat
    await asyncio.sleep(0.3)  # the sleep is the test: time without a heartbeat
    # the database was unreachable from just after the heartbeat until now
    health.outages.append((beat + 0.01, _time.time()))
    assert await store.mark_offline(0.2) == []  # inside the grace period after the outage
    await asyncio.sleep(0.25)  # the sleep is the test: past the grace period
    gone = await store.mark_offline(0.2)  # 0.25 s of reachable time without a heartbeat
    assert gone == ["gateway-0"]


async def test_a_plans_own_versions_are_not_foreign_changes(store):
    from config_store.store import MigrationStore

    migrations = MigrationStore(store)
    await store.register_pod("gateway-0", "http://a", None, "t")
    await store.register_pod("gateway-1", "http://b", None, "t")
    base = await store.version()
    await migrations.save_plan("p1", {"moves": []}, base, "t")
    started = await migrations.start(GID, "gateway-0", "gateway-1", "t", plan_id="p1")
    await migrations.flip(started.id, "t")
    assert await migrations.foreign_changes("p1", base) == []
    await store.set_pins([(GID + 1, "gateway-0", "")], [], "mallory")
    foreign = await migrations.foreign_changes("p1", base)
    assert [(f.action, f.actor) for f in foreign] == [("pin.set", "mallory")]


async def test_records_answer_the_json_the_api_always_answered(store):
    """The store returns frozen records; their JSON is what the API answered when the
    store returned dicts: the same keys, in the same order."""
    from dataclasses import FrozenInstanceError

    from config_store.store import MigrationStore

    migrations = MigrationStore(store)
    await store.register_pod("gateway-0", "http://a", None, "t")
    await store.register_pod("gateway-1", "http://b", None, "t")
    await store.set_pins([(GID, "gateway-0", "big guild")], [], "alice")
    pin = await store.pin(GID)
    assert list(pin.to_json()) == ["guild_id", "pod", "kind", "actor", "reason", "created_at"]
    assert pin.to_json()["guild_id"] == str(GID) and await store.pins() == [pin]
    with pytest.raises(FrozenInstanceError):
        pin.pod = "gateway-1"  # type: ignore[misc]
    base = await store.version()
    await migrations.save_plan("p1", {"moves": []}, base, "t")
    plan = await migrations.plan("p1")
    assert list(plan.to_json()) == ["id", "created_at", "base_version", "state", "actor", "plan"]
    assert (plan.base_version, plan.state, plan.plan) == (base, "draft", {"moves": []})
    assert await migrations.plans() == [plan]
    started = await migrations.start(GID + 1, "gateway-0", "gateway-1", "t", plan_id="p1")
    columns = ["id", "plan_id", "guild_id", "shard", "source", "target", "state", "epoch"]
    columns += ["created_at", "updated_at", "detail"]
    assert list(started.to_json()) == [*columns, "version"]
    assert started.version == await store.version() and started.guild_id == str(GID + 1)
    got = await migrations.get(started.id)
    assert list(got.to_json()) == columns
    assert got.to_json() == {k: v for k, v in started.to_json().items() if k != "version"}
    assert await migrations.list(plan_id="p1") == [got]
    entry = (await store.audit(1))[0]
    assert list(entry.to_json()) == ["id", "at", "actor", "action", "outcome", "version", "detail"]
    assert entry.to_json()["at"].endswith("Z") and entry.action == "migration.start"
    with pytest.raises(NotFound):
        await store.pin(GID + 2)
