"""The reactji channeler end to end: set up through a signed webhook; a message reaching
the threshold of the emoji (gateway reactions, counted by Discord) is forwarded once, also
when reactions race, repeat, or come after the guild migrated."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import PG_URL, eventually
from stack import running_stack
from test_escalation import Guild, answer, settled

STAR = "⭐"


@pytest.fixture
async def stack(tmp_path, pg_schema):
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=2, shard_count=4) as s:
        yield s


async def react(stack, g: Guild, message_id: int, user: int, emoji: str = STAR) -> Any:
    body = {
        "guild_id": str(g.guild.id),
        "channel_id": str(next(iter(g.guild.channels))),
        "message_id": str(message_id),
        "user_id": str(user),
        "emoji": emoji,
        "author_id": str(g.target),
        "content": f"message {message_id}, worth a star",
    }
    async with stack.http.post(f"{stack.sim.url}/control/reactions", json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def last_reaction(stack, g: Guild, message_id: int) -> dict[str, Any]:
    return {
        "user_id": str(g.target),
        "channel_id": str(next(iter(g.guild.channels))),
        "message_id": str(message_id),
        "guild_id": str(g.guild.id),
        "emoji": {"id": None, "name": STAR},
        "burst": False,
        "type": 0,
    }


def forwarded(stack, g: Guild, message_id: int) -> list[str]:
    return [
        m["content"]
        for m in stack.sim.sim.moderation.messages.values()
        if m["channel_id"] == str(g.mod_log) and f"/{message_id}:" in m["content"]
    ]


async def test_messages_reaching_the_threshold_are_forwarded_once(stack):
    await stack.converge()
    g = Guild(stack, next(iter(stack.world.guilds.values())))
    options = {
        "emoji": ["string", STAR],
        "threshold": ["integer", 3],
        "channel": ["channel", g.mod_log],
    }
    refused = await stack.interact(
        g.guild.id, "reactji-channel", user_id=str(g.plain), options=options
    )
    assert "Only administrators" in answer(refused)
    assert "go to" in answer(await stack.interact(g.guild.id, "reactji-channel", options=options))
    owner = g.owner()
    assert owner.rows("SELECT emoji, channel_id, threshold FROM reactji_channeler_config") == [
        (STAR, str(g.mod_log), "3")
    ]
    voters = [*g.mods, g.plain]

    one = stack.world.ids.next()
    await react(stack, g, one, voters[0])
    await react(stack, g, one, voters[0])  # the same member again: no new reaction
    await react(stack, g, one, voters[1], "👍")  # another emoji does not count
    await react(stack, g, one, voters[1])
    await asyncio.sleep(0.5)  # the sleep is the test: two votes forward nothing
    assert forwarded(stack, g, one) == []  # 2 of 3
    # the third and fourth reactions at once: one forward
    await asyncio.gather(react(stack, g, one, voters[2]), react(stack, g, one, voters[3]))
    await eventually(lambda: forwarded(stack, g, one), timeout=10)
    # more reactions after the forward, and the same gateway event sent again (as Discord
    # does after a RESUME): nothing more is forwarded
    await react(stack, g, one, g.target)
    stack.sim.sim.dispatch(g.guild.id, "MESSAGE_REACTION_ADD", last_reaction(stack, g, one))
    await asyncio.sleep(0.5)  # the sleep is the test: and nothing more is forwarded
    [text] = forwarded(stack, g, one)
    assert text.startswith(("3 x", "4 x")) and f"<@{g.target}>" in text
    assert owner.rows("SELECT message_id FROM reactji_forwarded") == [(one,)]

    # the guild moves: configuration and forwarded marks go with it
    target = next(n for n in stack.pods if n != owner.name)
    done = await stack.wait_migration((await stack.migrate(g.guild.id, target))["id"])
    assert done["state"] == "done", done
    await stack.converge()
    new = stack.pods[target]
    assert new.rows("SELECT message_id FROM reactji_forwarded") == [(one,)]
    await react(stack, g, one, stack.world.guilds[g.guild.id].owner.id)
    two = stack.world.ids.next()
    for voter in voters[:3]:
        await react(stack, g, two, voter)
    await eventually(lambda: forwarded(stack, g, two), timeout=15)
    await asyncio.sleep(0.5)  # the sleep is the test: no second forward of either
    assert len(forwarded(stack, g, one)) == 1 and len(forwarded(stack, g, two)) == 1
    assert sorted(r[0] for r in new.rows("SELECT message_id FROM reactji_forwarded")) == sorted(
        [one, two]
    )
    again = await stack.interact(g.guild.id, "reactji-channel", options=options)
    assert "go to" in await settled(stack, again)
    assert new.rows("SELECT count(*) FROM reactji_channeler_config") == [(1,)]
