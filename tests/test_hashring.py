import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from uhashring import HashRing as UHashRing

from modbot_ring import Algorithm, EmptyRingError, HashRing

# Small weights keep property tests fast: the guarantees hold for any weight.
W = 0.05
names = st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)
keys = st.one_of(st.integers(0, 2**64 - 1), st.text(max_size=20), st.binary(max_size=20))


def owners(ring, sample):
    return [ring.get(k) for k in sample]


SAMPLE = list(range(1, 2**64, 2**64 // 5000)) + ["a", "b", b"c"]


@settings(max_examples=25, deadline=None)
@given(st.sets(names, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_node_order_does_not_matter(nodes, rnd):
    shuffled = list(nodes)
    rnd.shuffle(shuffled)
    a = HashRing(dict.fromkeys(sorted(nodes), W))
    b = HashRing(dict.fromkeys(shuffled, W))
    assert a == b and owners(a, SAMPLE) == owners(b, SAMPLE)


def test_deterministic_across_processes_and_hash_seeds():
    code = (
        "from modbot_ring import HashRing;"
        "r = HashRing({f'gateway-{i}': 0.05 for i in range(5)});"
        "print([r.get(k) for k in [1, 2**63, 'x', b'y', 81384788765712384]])"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "random")
    }
    assert len(outs) == 1


@settings(max_examples=20, deadline=None)
@given(st.sets(names, min_size=2, max_size=6), st.data())
def test_removing_a_node_moves_only_its_keys(nodes, data):
    ring = HashRing(dict.fromkeys(nodes, W))
    gone = data.draw(st.sampled_from(sorted(nodes)))
    smaller = ring.without_node(gone)
    for slot_before, slot_after in zip(ring._table, smaller._table):
        if slot_before != gone:
            assert slot_after == slot_before
        else:
            assert slot_after != gone


@settings(max_examples=20, deadline=None)
@given(st.sets(names, min_size=1, max_size=6), names, st.lists(keys, max_size=50))
def test_adding_a_node_moves_keys_only_to_it(nodes, new, sample):
    if new in nodes:
        return
    ring = HashRing(dict.fromkeys(nodes, W))
    bigger = ring.with_node(new, W)
    moved = [(a, b) for a, b in zip(ring._table, bigger._table) if a != b]
    assert moved and all(b == new for _, b in moved)
    for key in sample:
        assert bigger.get(key) in (ring.get(key), new)


def test_raising_a_weight_moves_keys_only_to_that_node():
    ring = HashRing({"a": W, "b": W, "c": W})
    heavier = ring.with_node("b", 2 * W)
    moved = {(x, y) for x, y in zip(ring._table, heavier._table) if x != y}
    assert moved and {y for _, y in moved} == {"b"}


def test_weights_are_honoured_within_two_percent():
    ring = HashRing({"a": 1, "b": 2, "c": 3})
    share = ring.share()
    for node, weight in {"a": 1, "b": 2, "c": 3}.items():
        assert share[node] == pytest.approx(weight / 6, rel=0.02)


@settings(max_examples=40, deadline=None)
@given(st.sets(names, min_size=1, max_size=8), st.lists(keys, min_size=1, max_size=40))
def test_ketama_mode_equals_uhashring(nodes, sample):
    ours = HashRing(sorted(nodes), algorithm="ketama")
    theirs = UHashRing(sorted(nodes), hash_fn="ketama")
    for key in sample:
        assert ours.get(key) == theirs.get_node(key), key


def test_ketama_mode_equals_uhashring_with_weights():
    weights = {"gateway-0": 1, "gateway-1": 3, "gateway-2": 2}
    ours = HashRing(weights, algorithm=Algorithm.KETAMA)
    theirs = UHashRing(dict(sorted(weights.items())), hash_fn="ketama")
    for key in range(0, 10**18, 10**15):
        assert ours.get(key) == theirs.get_node(key)


def test_getter_matches_get_and_prefers_overrides():
    ring = HashRing(dict.fromkeys(["x", "y", "z"], W))
    fast = ring.getter({5: "pinned"})
    assert fast(5) == "pinned"
    for key in range(1, 2**64, 2**64 // 997):
        assert fast(key) == ring.get(key)
    ketama = HashRing(["x", "y"], algorithm="ketama")
    assert ketama.getter({})(42) == ketama.get(42)


def test_empty_ring_and_bad_input_give_clear_errors():
    with pytest.raises(EmptyRingError):
        HashRing().get(1)
    assert HashRing().getter({7: "p"})(7) == "p"
    with pytest.raises(EmptyRingError):
        HashRing().getter({})(8)
    for bad in ({"": 1}, {"a": 0}, {"a": -1}, {"a": float("nan")}, {"a": True}, {"a": 1e9}):
        with pytest.raises(ValueError):
            HashRing(bad)
    with pytest.raises(ValueError, match="unknown ring algorithm"):
        HashRing(["a"], algorithm="maglev")
    with pytest.raises(ValueError, match="whole numbers"):
        HashRing({"a": 1.5}, algorithm="ketama")
    with pytest.raises(TypeError):
        HashRing(["a"]).get(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HashRing(["a"]).get(-1)
    with pytest.raises(KeyError):
        HashRing(["a"]).without_node("b")


def test_balance_with_the_default_weight():
    ring = HashRing([f"gateway-{i}" for i in range(10)])
    share = ring.share()
    assert max(share.values()) * 10 <= 1.02
