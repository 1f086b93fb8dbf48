import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modbot_ring import (
    NoRouteError,
    Pod,
    PodState,
    RouteReason,
    RoutingTable,
    TableFormatError,
    diff,
    shard_for,
)

W = 0.05
PODS = [Pod(f"gateway-{i}", weight=W) for i in range(3)]
gids = st.integers(1, 2**63 - 1)  # modbot_ring.MAX_GUILD_ID


@st.composite
def tables(draw):
    algorithm = draw(st.sampled_from(["slots", "ketama"]))
    weights = [W, 2 * W] if algorithm == "slots" else [1, 2]
    names = draw(
        st.lists(
            st.sampled_from([f"gateway-{i}" for i in range(6)]), min_size=1, max_size=4, unique=True
        )
    )
    pods = [
        Pod(
            n,
            draw(st.sampled_from(list(PodState))),
            draw(st.sampled_from(weights)),
            draw(st.one_of(st.none(), st.just(f"http://{n}:8701"))),
        )
        for n in names
    ]
    shard_count = draw(st.one_of(st.none(), st.integers(1, 64)))
    pins = draw(st.dictionaries(gids, st.sampled_from(names), max_size=10))
    shard_pins = (
        {}
        if shard_count is None
        else draw(
            st.dictionaries(st.integers(0, shard_count - 1), st.sampled_from(names), max_size=4)
        )
    )
    migrating = draw(st.dictionaries(gids, st.sampled_from(names), max_size=3))
    migrating_shards = (
        set() if shard_count is None else draw(st.sets(st.integers(0, shard_count - 1), max_size=2))
    )
    epochs = draw(st.dictionaries(gids, st.integers(0, 100), max_size=3))
    return RoutingTable(
        pods,
        version=draw(st.integers(0, 2**40)),
        shard_count=shard_count,
        pins=pins,
        shard_pins=shard_pins,
        migrating=migrating,
        migrating_shards=migrating_shards,
        epochs=epochs,
        algorithm=algorithm,
    )


@settings(max_examples=60, deadline=None)
@given(tables())
def test_json_round_trip_is_exact(table):
    text = table.to_json()
    back = RoutingTable.from_json(text)
    assert back == table
    assert back.to_json() == text
    for gid in [1, 2**63 - 1, *table.pins]:
        try:
            assert back.route(gid) == table.route(gid)
        except NoRouteError:
            with pytest.raises(NoRouteError):
                back.route(gid)


@settings(max_examples=60, deadline=None)
@given(tables(), st.lists(gids, max_size=30))
def test_pins_always_win_and_owner_agrees_with_route(table, sample):
    for gid, pod in table.pins.items():
        assert table.owner(gid) == pod
        assert table.route(gid).reason is RouteReason.PIN
    for gid in sample:
        try:
            route = table.route(gid)
        except NoRouteError:
            with pytest.raises(NoRouteError):
                table.owner(gid)
            continue
        assert table.owner(gid) == route.pod
        if table.shard_count is not None:
            assert route.shard == shard_for(gid, table.shard_count)


def test_shard_keyed_placement_follows_the_shard():
    table = RoutingTable(PODS, shard_count=8)
    rnd = random.Random(3)
    for _ in range(2000):
        gid = rnd.getrandbits(64) or 1
        assert table.owner(gid) == table.shard_owner(shard_for(gid, 8))


def test_draining_pods_get_no_ring_placement_but_keep_pins():
    gid = 81384788765712384
    table = RoutingTable(
        [*PODS[:2], Pod("gateway-2", PodState.DRAINING, W)], shard_count=16, pins={gid: "gateway-2"}
    )
    assert "gateway-2" not in table.ring
    assert table.owner(gid) == "gateway-2"
    assert all(table.shard_owner(s) != "gateway-2" for s in range(16))


def test_offline_pods_keep_their_placement():
    online = RoutingTable(PODS, shard_count=16)
    offline = online.with_pod(Pod("gateway-1", PodState.OFFLINE, W))
    assert [online.shard_owner(s) for s in range(16)] == [offline.shard_owner(s) for s in range(16)]
    gid = next(g for g in range(1, 10**9, 4194304) if online.owner(g) == "gateway-1")
    assert offline.route(gid).pod_state is PodState.OFFLINE


def test_shard_pins_and_shards_for():
    gid = (5 << 22) | 7  # shard 5 of 16
    table = RoutingTable(PODS, shard_count=16, shard_pins={3: "gateway-0"}, pins={gid: "gateway-2"})
    assert table.shard_owner(3) == "gateway-0"
    assert table.route((3 << 22) + 1).reason is RouteReason.SHARD
    owned = {s for s in range(16) if table.shard_owner(s) == "gateway-2"}
    assert set(table.shards_for("gateway-2")) == owned | {5}
    assert set().union(*(table.shards_for(p.name) for p in PODS)) == set(range(16))
    assert RoutingTable(PODS).shards_for("gateway-0") == ()


def test_migrating_and_epochs_show_in_routes():
    gid = 81384788765712384
    table = RoutingTable(
        PODS, shard_count=4, migrating={gid: "gateway-2"}, epochs={gid: 3}, migrating_shards=[0]
    )
    route = table.route(gid)
    assert route.migrating and route.epoch == 3
    assert (gid >> 22) % 4 in table.shards_for("gateway-2")  # the target listens before the flip
    assert table.route((0 << 22) | 1).migrating


def test_no_active_pods_means_no_route_unless_pinned():
    table = RoutingTable(
        [Pod("gateway-0", PodState.DRAINING, W)], shard_count=4, pins={9: "gateway-0"}
    )
    assert table.owner(9) == "gateway-0"
    with pytest.raises(NoRouteError):
        table.owner(10)
    with pytest.raises(NoRouteError):
        table.route(10)
    with pytest.raises(NoRouteError):
        RoutingTable().route(10)


def test_construction_rejects_inconsistent_input():
    with pytest.raises(ValueError, match="unknown pod"):
        RoutingTable(PODS, pins={1: "nope"})
    with pytest.raises(ValueError, match="shard_count"):
        RoutingTable(PODS, shard_pins={1: "gateway-0"})
    with pytest.raises(ValueError, match="not in 0..3"):
        RoutingTable(PODS, shard_count=4, shard_pins={4: "gateway-0"})
    with pytest.raises(ValueError, match="twice"):
        RoutingTable([PODS[0], PODS[0]])
    with pytest.raises(ValueError):
        RoutingTable(PODS, pins={"abc": "gateway-0"})
    with pytest.raises(ValueError):
        RoutingTable(PODS, version=-1)
    with pytest.raises(ValueError):
        Pod("gateway-0", weight=0)


def _valid_dict():
    return json.loads(RoutingTable(PODS, shard_count=4, pins={5: "gateway-1"}, version=7).to_json())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(format=2), "format"),
        (lambda d: d.pop("pods"), "missing fields: pods"),
        (lambda d: d.update(extra=1), "unknown fields: extra"),
        (lambda d: d.update(version="7"), "version"),
        (lambda d: d["pins"].update({"12x": "gateway-0"}), "pins"),
        (lambda d: d["pins"].update({"13": "ghost"}), "unknown pod"),
        (lambda d: d["pods"]["gateway-0"].update(state="asleep"), "state"),
        (lambda d: d["pods"]["gateway-0"].update(weight="heavy"), "weight"),
        (lambda d: d.update(shard_count=0), "shard_count"),
        (lambda d: d.update(algorithm="maglev"), "algorithm"),
        (lambda d: d["shard_pins"].update({"9": "gateway-0"}), "shard 9"),
        (lambda d: d.update(migrating=[123]), "migrating"),
        (lambda d: d.update(migrating={"123": "ghost"}), "unknown pod"),
    ],
)
def test_from_json_rejects_malformed_input_clearly(mutate, message):
    data = _valid_dict()
    mutate(data)
    with pytest.raises(TableFormatError, match=message):
        RoutingTable.from_json(json.dumps(data))


@given(st.text(max_size=200))
def test_from_json_on_arbitrary_text_raises_only_table_format_error(text):
    try:
        RoutingTable.from_json(text)
    except TableFormatError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=12,
    )
)
def test_from_json_on_arbitrary_json_raises_only_table_format_error(value):
    try:
        RoutingTable.from_json(json.dumps(value))
    except TableFormatError:
        pass


def test_evolve_helpers():
    table = RoutingTable(PODS, shard_count=4, version=1)
    pinned = table.with_pin("81384788765712384", "gateway-1").evolve(version=2)
    assert pinned.version == 2 and pinned.pins == {81384788765712384: "gateway-1"}
    assert pinned.without_pin(81384788765712384).pins == {}
    with pytest.raises(KeyError):
        table.without_pin(1)
    with pytest.raises(ValueError, match="still has pins"):
        pinned.without_pod("gateway-1")
    assert "gateway-2" not in table.without_pod("gateway-2").pods
    with pytest.raises(TypeError):
        table.evolve(colour="red")


def test_diff_lists_moved_shards_and_pins():
    old = RoutingTable(PODS, shard_count=64)
    new = old.with_pod(Pod("gateway-3", weight=W)).with_pin(77 << 22, "gateway-0")
    d = diff(old, new)
    assert d.shards and all(c.new == "gateway-3" for c in d.shards.values())
    assert d.moved_fraction == len(d.shards) / 64
    if old.owner(77 << 22) != "gateway-0":
        assert d.guilds[77 << 22].new == "gateway-0"
    assert diff(old, old).empty


def test_diff_in_guild_keyed_mode_reports_moved_key_space():
    old = RoutingTable(PODS)
    new = old.with_pod(Pod("gateway-3", weight=W))
    d = diff(old, new)
    assert 0.1 < d.moved_fraction < 0.4
    sample = range(1, 2**64, 2**64 // 1000)
    changes = d.owner_changes(sample)
    assert changes and all(c.new == "gateway-3" for c in changes.values())


@pytest.mark.parametrize("shard_count", [None, 1024])
def test_many_pins_take_the_filtered_path_and_agree_with_route(shard_count):
    """Past 65,536 pins, owner() checks a 1-byte-per-bucket filter before the dict:
    it must still answer every pin, and agree with route() for everything else."""
    rnd = random.Random(17)
    names = [f"gateway-{i}" for i in range(3)]
    pins = {rnd.getrandbits(63) or 1: names[i % 3] for i in range(70_000)}
    table = RoutingTable([Pod(n) for n in names], shard_count=shard_count, pins=pins)
    assert all(table.owner(g) == p for g, p in pins.items())
    for _ in range(3000):
        gid = rnd.getrandbits(63) or 1
        assert table.owner(gid) == table.route(gid).pod
    colliding = next(g for g in range(1, 10**8) if g % 8_388_593 == next(iter(pins)) % 8_388_593)
    assert table.owner(colliding) == table.route(colliding).pod  # a bucket hit, not a pin
