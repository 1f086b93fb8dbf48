"""Typed gateway events (gateway_app/events.py): made from discord.py's callbacks, held and
replayed in the JSON every pod version wrote, refused cleanly when they are not events."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from gateway_app.bot import GatewayClient, RecentEvents
from gateway_app.discordpy import RawBan
from gateway_app.events import (
    AuditAction,
    GatewayEvent,
    MalformedEvent,
    MemberBanned,
    MemberLeft,
    MessageCreated,
    MessageDeleted,
    OtherEvent,
    ReactionAdded,
    event_from_json,
)
from gateway_app.features import Runtime, observe
from gateway_app.features.modlog import audit_event
from gateway_app.gate import GuildGate
from gateway_app.migration_api import _events
from gateway_app.ownership import Ownership, Why
from gateway_app.storage import GuildStore
from modbot_ring import Pod as RingPod
from modbot_ring import RoutingTable

G = 1_100_000_000_000_000_001
AT = 1_700_000_000.25

EVENTS: list[GatewayEvent] = [
    MessageCreated(11, 22, 33, (5, 7), False, 3, 15, AT),
    MessageDeleted(11, AT + 1),
    MemberBanned(33, AT + 2),
    MemberLeft(33, AT + 3),
    ReactionAdded(11, 22, 44, "star:99", AT + 4),
    AuditAction("timeout", 33, 55, "cool off", 600.0, "66", AT + 5),
    AuditAction("kick", 34, None, None, None, "67", AT + 6),
]

# exactly what the dict-building code before the typed events wrote into held_events (and
# sent over the migration API): json.dumps(event, separators=(",", ":")) of bot.py's dicts
OLD_HELD = {
    "m:11": '{"kind":"message","message_id":11,"channel_id":22,"author_id":33,"roles":[5,7],'
    '"staff":false,"words":3,"chars":15,"at":1700000000.25}',
    "d:11": '{"kind":"delete","message_id":11,"at":1700000001.25}',
    "b:33": '{"kind":"ban","user_id":33,"at":1700000002.25}',
    "l:33": '{"kind":"leave","user_id":33,"at":1700000003.25}',
    "r:11:44:star:99": '{"kind":"reaction","message_id":11,"channel_id":22,"user_id":44,'
    '"emoji":"star:99","at":1700000004.25}',
    "a:66": '{"kind":"audit","action":"timeout","user_id":33,"executor_id":55,'
    '"reason":"cool off","duration":600.0,"entry_id":"66","at":1700000005.25}',
    "a:67": '{"kind":"audit","action":"kick","user_id":34,"executor_id":null,"reason":null,'
    '"duration":null,"entry_id":"67","at":1700000006.25}',
}


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


# -- the types ---------------------------------------------------------------------------------


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_its_json(event: GatewayEvent) -> None:
    data = event.to_json()
    assert data["kind"] == event.kind and next(iter(data)) == "kind"
    assert event_from_json(json.loads(_dumps(data))) == event


def test_events_are_frozen_and_slotted() -> None:
    event = MessageCreated(11, 22, 33, (5, 7), False, 3, 15, AT)
    with pytest.raises(AttributeError):
        event.message_id = 12  # type: ignore[misc]
    assert not hasattr(event, "__dict__")


def test_the_new_code_writes_byte_for_byte_what_the_old_code_wrote() -> None:
    """Held events and the migration API's bodies stay readable by pods of either version."""
    assert {e.key: _dumps(e.to_json()) for e in EVENTS} == OLD_HELD


def test_a_message_held_before_roles_and_staff_existed_loads() -> None:
    old = {"kind": "message", "message_id": 1, "channel_id": 2, "author_id": 3}
    event = event_from_json({**old, "words": 0, "chars": 0, "at": 5})
    assert event == MessageCreated(1, 2, 3, (), None, 0, 0, 5.0)


def test_a_kind_this_version_does_not_know_is_kept_as_it_came() -> None:
    data = {"kind": "edit", "message_id": 1, "at": 2.0, "extra": [1, {"x": None}]}
    event = event_from_json(data)
    assert isinstance(event, OtherEvent) and event.kind == "edit"
    assert event.to_json() == data


HOSTILE: list[Any] = [
    None,
    [],
    "message",
    {},
    {"kind": 7},
    {"kind": ""},
    {"kind": "x" * 65},
    {"kind": "message"},  # every field missing
    {"kind": "delete", "message_id": "11", "at": 1.0},  # an id as a string
    {"kind": "delete", "message_id": True, "at": 1.0},  # a bool is not an id
    {"kind": "delete", "message_id": 2**63, "at": 1.0},  # past SQLite's integers
    {"kind": "delete", "message_id": -1, "at": 1.0},
    {"kind": "delete", "message_id": 11},  # no time
    {"kind": "delete", "message_id": 11, "at": math.nan},
    {"kind": "delete", "message_id": 11, "at": math.inf},
    {"kind": "delete", "message_id": 11, "at": 10**400},  # an int past float's range
    {"kind": "delete", "message_id": 10**5000, "at": 1.0},  # too long even to print
    {"kind": "delete", "message_id": 11, "at": "now"},
    {"kind": "ban", "user_id": 1.5, "at": 1.0},
    {"kind": "leave", "at": 1.0},
    {**json.loads(OLD_HELD["m:11"]), "roles": "5,7"},
    {**json.loads(OLD_HELD["m:11"]), "roles": [5, "7"]},
    {**json.loads(OLD_HELD["m:11"]), "staff": "yes"},
    {**json.loads(OLD_HELD["m:11"]), "words": -3},
    {**json.loads(OLD_HELD["r:11:44:star:99"]), "emoji": ""},
    {**json.loads(OLD_HELD["r:11:44:star:99"]), "emoji": 5},
    {**json.loads(OLD_HELD["a:66"]), "action": "nuke"},  # mod_actions' CHECK would refuse it
    {**json.loads(OLD_HELD["a:66"]), "entry_id": 66},
    {**json.loads(OLD_HELD["a:66"]), "entry_id": "6 6"},
    {**json.loads(OLD_HELD["a:66"]), "executor_id": "55"},
    {**json.loads(OLD_HELD["a:66"]), "reason": 5},
    {**json.loads(OLD_HELD["a:66"]), "duration": -1},
]


@pytest.mark.parametrize("data", HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_what_is_not_an_event_is_refused_with_a_reason(data: Any) -> None:
    with pytest.raises(MalformedEvent) as refused:
        event_from_json(data)
    assert str(refused.value)


# -- from discord.py's callbacks ---------------------------------------------------------------


def _client(handled: list[tuple[int, GatewayEvent]]) -> GatewayClient:
    def handle(guild_id: int, event: GatewayEvent) -> str:
        handled.append((guild_id, event))
        return "written"

    return GatewayClient(shard_ids=[0], shard_count=1, handle=handle, recent=RecentEvents())


def _message(message_id: int, author_id: int = 33, content: str = "a b c") -> Any:
    created = SimpleNamespace(timestamp=lambda: AT)
    author = SimpleNamespace(id=author_id, bot=False, _roles=[7, 5])
    return SimpleNamespace(
        id=message_id,
        guild=SimpleNamespace(id=G),
        channel=SimpleNamespace(id=22),
        author=author,
        content=content,
        created_at=created,
    )


async def test_the_gateway_client_makes_typed_events() -> None:
    handled: list[tuple[int, GatewayEvent]] = []
    client = _client(handled)
    await client.on_message(_message(11))
    await client.on_raw_member_ban(RawBan(G, 33))
    await client.on_raw_member_ban(RawBan(G, 33))  # a second session's copy: dropped
    await client.on_raw_audit_log_entry(
        {"guild_id": str(G), "id": "67", "user_id": "1", "target_id": "34", "action_type": 20}
    )
    assert handled[0] == (G, MessageCreated(11, 22, 33, (5, 7), None, 3, 5, AT))
    assert handled[1][0] == G and isinstance(handled[1][1], MemberBanned)
    assert handled[2][0] == G and isinstance(handled[2][1], AuditAction)
    assert handled[2][1].action == "kick" and handled[2][1].key == "a:67"
    assert len(handled) == 3


async def test_gateway_payloads_with_ids_sqlite_cannot_hold_are_refused_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One such row would fail every commit of the batch writer, for good."""
    handled: list[tuple[int, GatewayEvent]] = []
    client = _client(handled)
    with caplog.at_level(logging.WARNING, "modbot.gateway.bot"):
        await client.on_message(_message(2**63))
        await client.on_message(_message(11, author_id=2**64 - 1))
        await client.on_raw_member_ban(RawBan(G, 2**63))
        await client.on_raw_audit_log_entry(  # a target id past 2**63-1, a "digit" int() refuses
            {"guild_id": str(G), "id": "1", "target_id": str(2**63), "action_type": 20}
        )
        await client.on_raw_audit_log_entry(
            {"guild_id": "²", "id": "1", "target_id": "2", "action_type": 20}
        )
    assert handled == []
    assert sum("out of range refused" in r.getMessage() for r in caplog.records) == 3


@pytest.mark.parametrize(
    "payload",
    [
        {"guild_id": "1", "user": {"id": "x"}},
        {"guild_id": "1", "user": None},
        {"guild_id": None, "user": {"id": "2"}},
        {"guild_id": "²", "user": {"id": "2"}},
        {"guild_id": "1", "user": {"id": "-2"}},
        {"guild_id": ["1"], "user": {"id": "2"}},
        "GUILD_BAN_ADD",
    ],
)
def test_a_garbled_ban_from_the_gateway_is_refused(payload: Any) -> None:
    assert RawBan.from_gateway(payload) is None


def test_a_well_formed_ban_from_the_gateway_is_read() -> None:
    assert RawBan.from_gateway({"guild_id": str(G), "user": {"id": "2"}}) == RawBan(G, 2)


def test_audit_entries_with_ids_out_of_range_are_not_events() -> None:
    base = {"id": "11", "user_id": "22", "target_id": "33", "action_type": 20}
    assert audit_event(base, now=1.0) is not None
    for bad in ({"target_id": str(2**63)}, {"id": "²"}, {"target_id": "1" * 20}):
        assert audit_event({**base, **bad}, now=1.0) is None, bad
    assert audit_event({**base, "user_id": str(2**63)}, now=1.0).executor_id is None  # type: ignore[union-attr]


# -- the store, the gate and the features ------------------------------------------------------


class Tables:
    def __init__(self, table: RoutingTable | None) -> None:
        self.table = table


def _table(**kw: Any) -> RoutingTable:
    return RoutingTable([RingPod("gateway-0")], version=3, **kw)


async def _store(path: Path) -> GuildStore:
    store = GuildStore(str(path))
    await store.open()
    return store


async def test_events_held_by_the_old_code_are_replayed(tmp_path: Path) -> None:
    """Fault: a pod of the previous version held these (a migration was under way when it
    was upgraded), plus a row that is not an event; the new pod replays what it can read."""
    store = await _store(tmp_path / "pod.db")
    try:
        for key, text in [*OLD_HELD.items(), ("m:99", '{"kind":"message","n":1}'), ("z", "{")]:
            store.enqueue(
                "INSERT INTO held_events (guild_id, event_key, event) VALUES (?, ?, ?)",
                (G, key, text),
            )
        await store.flush()
        held = await store.held(G)
        assert [k for k, _ in held] == list(OLD_HELD)  # the two bad rows left out (logged)
        assert [e for _, e in held] == EVENTS
        applied = await store.replay(G, [], 4, "released")
        assert applied == len(OLD_HELD)
        rows = await store._all(
            "SELECT message_id, deleted_at FROM message_stats WHERE guild_id = ?", (G,)
        )
        assert rows == [(11, AT + 1)]
        actions = await store._all(
            "SELECT action_type, user_id, executor_id, reason, duration FROM mod_actions"
            " WHERE guild_id = ? ORDER BY created_at",
            (G,),
        )
        assert actions == [
            ("ban", 33, None, None, None),
            ("leave", 33, None, None, None),
            ("timeout", 33, 55, "cool off", 600.0),
            ("kick", 34, None, None, None),
        ]
        assert (await store.row_counts(G))["held_events"] == 0
    finally:
        await store.close()


async def test_the_gate_holds_typed_events_in_the_old_json(tmp_path: Path) -> None:
    store = await _store(tmp_path / "pod.db")
    try:
        tables = Tables(_table(migrating={G: "gateway-0"}))
        load = SimpleNamespace(record=lambda _g: None)
        gate = GuildGate(Ownership("gateway-0", tables), store, load)  # type: ignore[arg-type]
        for event in EVENTS:
            assert gate.handle(G, event) == "held"
        await store.flush()
        rows = await store._all("SELECT event_key, event FROM held_events ORDER BY id")
        assert dict(rows) == OLD_HELD
        tables.table = _table()  # the flip: ours now
        assert await gate.replay(G, [], 5, "released") == len(EVENTS)
        assert gate.handle(G, MessageCreated(12, 22, 33, (), None, 1, 1, AT)) == "written"
        tables.table = RoutingTable([RingPod("gateway-1")], version=6)
        assert gate.handle(G, MessageDeleted(12, AT)) == "dropped"
    finally:
        await store.close()


async def test_replayed_events_that_are_not_events_are_refused_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = {
        "events": [
            ["m:11", json.loads(OLD_HELD["m:11"])],
            ["d:5", {"kind": "delete", "message_id": "5", "at": 1.0}],
            ["a:1", {"kind": "audit", "action": "nuke", "user_id": 1, "entry_id": "1", "at": 1}],
            ["e:1", {"kind": "edit", "message_id": 1}],
        ]
    }
    with caplog.at_level(logging.ERROR, "modbot.gateway.migration"):
        events, refused = _events(G, body)
    assert refused == 2 and [k for k, _ in events] == ["m:11", "e:1"]
    assert events[0][1] == EVENTS[0] and isinstance(events[1][1], OtherEvent)
    assert sum("refused" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(web.HTTPBadRequest):
        _events(G, {"events": [["m:1", "not an object"]]})


async def test_features_see_only_the_event_types_they_observe() -> None:
    seen: list[tuple[str, int, GatewayEvent]] = []
    client = SimpleNamespace()
    runtime = Runtime(client, None)  # type: ignore[arg-type]
    client._modbot_runtime = runtime

    async def on_message(_rt: Runtime, gid: int, event: MessageCreated) -> None:
        seen.append(("message", gid, event))

    async def on_reaction(_rt: Runtime, gid: int, event: ReactionAdded) -> None:
        seen.append(("reaction", gid, event))

    runtime.on_event(on_message, MessageCreated, lambda _g, e: e.channel_id == 22)
    runtime.on_event(on_reaction, ReactionAdded)
    for event in [*EVENTS, MessageCreated(12, 23, 33, (), None, 1, 1, AT)]:
        observe(client, G, event)  # type: ignore[arg-type]
    for task in list(runtime._tasks):
        await task
    assert seen == [("message", G, EVENTS[0]), ("reaction", G, EVENTS[4])]


def test_ownership_says_why_not() -> None:
    tables = Tables(None)
    mine = Ownership("gateway-0", tables)
    assert mine.guild(G).why is Why.NO_TABLE and not mine.owns(G)
    tables.table = _table(shard_count=4)
    assert mine.owns(G) and mine.guild(G).owned and mine.guild(G).version == 3
    assert mine.owns_shard(0) and mine.shard(9).why is Why.NO_SUCH_SHARD
    assert mine.shard_of(G) == (G >> 22) % 4
    theirs = Ownership("gateway-1", tables)
    verdict = theirs.guild(G)
    assert verdict.why is Why.ELSEWHERE and verdict.owner == "gateway-0"
    assert "gateway-0" in verdict.reason() and not theirs.owns_shard(0)
    tables.table = RoutingTable([], version=4)
    assert mine.guild(G).why is Why.NO_ROUTE and not mine.owns(G)
    assert mine.shard(0).why is Why.NOT_SHARDED


async def test_a_garbled_ban_never_reaches_discord_py_nor_ends_the_shard(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Hostile GUILD_BAN_ADD: discord.py's own parser would raise on it, and a raise in a
    parser ends the shard's client. The wrapper refuses it (logged) and parses the rest."""
    parsed: list[Any] = []
    dispatched: list[tuple[Any, ...]] = []
    client = _client([])
    client.dispatch = lambda *args, **_kw: dispatched.append(args)  # type: ignore[method-assign]
    tracked = client._tracked("GUILD_BAN_ADD", parsed.append)
    with caplog.at_level(logging.WARNING, "modbot.gateway.discordpy"):
        tracked({"guild_id": "²", "user": {"id": "2"}})
        tracked({"guild_id": "1", "user": {"id": None}})
    assert parsed == [] and dispatched == [] and len(caplog.records) == 2
    good = {"guild_id": str(G), "user": {"id": "2"}}
    tracked(good)
    assert parsed == [good] and dispatched == [("raw_member_ban", RawBan(G, 2))]
