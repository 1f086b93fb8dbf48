"""``route_during``: the handoff view of a guild between two table generations."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modbot_ring import (
    InvalidGuildId,
    InvalidWeight,
    Pod,
    PodState,
    RoutingTable,
    TableFormatError,
    route_during,
)

PODS = [Pod(f"gateway-{i}") for i in range(3)]
OLD = RoutingTable(PODS, shard_count=64, version=7)
NEW = OLD.with_pod(Pod("gateway-3")).evolve(version=8)


def moved_and_kept() -> tuple[int, int]:
    """A guild whose shard moves to gateway-3, and one whose shard stays."""
    moved = kept = None
    for shard in range(64):
        gid = (shard << 22) | 1
        if OLD.owner(gid) != NEW.owner(gid):
            moved = moved or gid
        else:
            kept = kept or gid
    assert moved and kept
    return moved, kept


def test_a_guild_whose_owner_changes_answers_both_owners_old_first():
    moved, kept = moved_and_kept()
    handoff = route_during(OLD, NEW, moved)
    assert handoff.owners == (OLD.owner(moved), "gateway-3")
    assert handoff.moving and not handoff.migrating
    still = route_during(OLD, NEW, str(kept))  # ids may come as strings, as in URLs
    assert still.owners == (OLD.owner(kept),) and not still.moving


def test_a_migrating_guild_answers_source_and_target_in_one_generation():
    gid = 81384788765712384
    source = OLD.owner(gid)
    target = next(p.name for p in PODS if p.name != source)
    marked = OLD.evolve(version=8, migrating={gid: target})
    handoff = route_during(OLD, marked, gid)
    assert handoff.owners == (source, target) and handoff.migrating
    flipped = marked.with_pin(gid, target).evolve(version=9, migrating={})
    after = route_during(marked, flipped, gid)  # the flip: old owner, then the new one
    assert after.owners == (source, target) and after.target == target


def test_a_migrating_shard_is_marked_even_when_no_owner_changes():
    gid = (5 << 22) | 9
    marked = OLD.evolve(version=8, migrating_shards=[5])
    handoff = route_during(OLD, marked, gid)
    assert handoff.migrating and handoff.moving and handoff.owners == (OLD.owner(gid),)


def test_the_same_table_is_no_handoff_and_pins_are_followed():
    gid = 175928847299117063
    assert not route_during(OLD, OLD, gid).moving
    pinned = OLD.with_pin(gid, "gateway-2").evolve(version=8)
    owners = route_during(OLD, pinned, gid).owners
    assert owners[-1] == "gateway-2" and owners[0] == OLD.owner(gid)


def test_no_owner_in_a_generation_is_none_not_an_error():
    empty = RoutingTable([Pod("gateway-0", PodState.DRAINING)], version=1)
    pinned = empty.with_pin(42 << 22, "gateway-0").evolve(version=2)
    handoff = route_during(empty, pinned, 42 << 22)
    assert handoff.old is None and handoff.owners == ("gateway-0",)


def test_hostile_input_gets_clear_errors():
    """A confused caller: swapped generations, a bad id, an absurd weight."""
    with pytest.raises(ValueError, match="newer"):
        route_during(NEW, OLD, 1)
    for bad in ("12x", -1, 0, 2**64, "", " 7", True):
        with pytest.raises(InvalidGuildId):
            route_during(OLD, NEW, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidWeight, match=r"\(0, 100\]"):
        Pod("gateway-9", weight=883)
    text = OLD.to_json().replace('"weight":1.0', '"weight":883', 1)
    with pytest.raises(TableFormatError, match="weight"):
        RoutingTable.from_json(text)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2**63 - 1))
def test_owners_always_include_both_generations(gid):
    handoff = route_during(OLD, NEW, gid)
    assert handoff.owners[0] == OLD.owner(gid) and handoff.owners[-1] == NEW.owner(gid)
    # growing by one pod: a guild either stays or moves to the new pod, never elsewhere
    assert handoff.owners == (OLD.owner(gid),) or handoff.owners[-1] == "gateway-3"
