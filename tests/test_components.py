"""Button presses (MESSAGE_COMPONENT interactions, type 3) go through the proxy as commands
do: the same strict checks, the same owner routing, the same deadline fallback."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from conftest import PG_URL, eventually
from stack import running_stack
from test_escalation import Guild, answer

from router_proxy.interactions import COMPONENT, InvalidInteraction, check_interaction


def component(**over: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": "1128274547942883329",
        "application_id": "900000000000000001",
        "type": 3,
        "guild_id": "1128274547942883330",
        "channel_id": "1128274547942883331",
        "token": "itok-1128274547942883329",
        "data": {"custom_id": "esc-vote|x|ban", "component_type": 2},
    }
    payload.update(over)
    return payload


def test_the_proxy_accepts_a_component_interaction_with_the_same_strict_checks():
    assert check_interaction(component()) == COMPONENT
    for bad in (
        component(type=True),  # a bool is not an int
        component(type=3.0),
        component(type="3"),
        component(id=3),  # ids are snowflake strings
        component(guild_id="abc"),
        component(token=""),
        component(token="x" * 501),
        component(token="a b"),
        component(data=["not", "an", "object"]),
    ):
        with pytest.raises(InvalidInteraction):
            check_interaction(bad)
    missing = component()
    del missing["token"]
    with pytest.raises(InvalidInteraction):
        check_interaction(missing)


@pytest.fixture
async def stack(tmp_path, pg_schema, monkeypatch):
    monkeypatch.setenv("MODBOT_ESCALATION_TIMEOUT", "600")
    async with running_stack(
        tmp_path, PG_URL, pg_schema, pods=2, guilds=2, shard_count=4, interaction_deadline=1.0
    ) as s:
        yield s


@pytest.mark.slow
async def test_a_press_on_a_stalled_pod_is_deferred_in_time_then_answered(stack):
    await stack.converge()
    g = Guild(stack, next(iter(stack.world.guilds.values())))
    await g.setup()
    vote = await g.escalate(g.mods[0])
    owner = g.owner()
    owner.freeze()  # SIGSTOP: the pod holds the request and answers nothing
    try:
        started = time.monotonic()
        pressed = await g.press(vote, g.mods[1], "ban")
        assert time.monotonic() - started < 3.0  # within Discord's 3 s
        assert pressed["status"] == 200
        assert json.loads(pressed["body"]) == {"type": 5, "data": {"flags": 64}}
    finally:
        owner.thaw()
    token = pressed["interaction"]["token"]

    def edited() -> list[dict[str, Any]]:
        return [
            c
            for c in stack.calls(f"/webhooks/{stack.world.application_id}/{token}/messages")
            if c["method"] == "PATCH"
        ]

    await eventually(lambda: edited(), timeout=15)
    assert "Vote recorded: Ban" in edited()[0]["body"]["content"]
    [(esc_id, _, _, _)] = g.row(owner)
    assert owner.rows(
        "SELECT voter_id, vote FROM escalation_records WHERE escalation_id = ?", (esc_id,)
    ) == [(str(g.mods[1]), "ban")]


async def test_a_malformed_press_is_refused_not_retried(stack):
    """Signed, routable, but not a component discord.py can read (no custom_id): the pod
    answers 400 and the proxy tells the user at once instead of retrying it."""
    await stack.converge()
    g = Guild(stack, next(iter(stack.world.guilds.values())))
    await g.setup()
    vote = await g.escalate(g.mods[0])
    reply = await g.press(vote, g.mods[0], "ban", payload_override={"data": {"component_type": 2}})
    assert reply["status"] == 200
    assert "could not process" in json.loads(reply["body"])["data"]["content"]
    ok = await g.press(vote, g.mods[0], "ban")
    assert "Vote recorded" in answer(ok)
