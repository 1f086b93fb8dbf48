"""Tickets end to end: an administrator posts the button; a member's press opens a private
thread with the staff role (once per double click); Close works for the opener and the
staff only; the configuration migrates with the guild."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import PG_URL
from stack import running_stack
from test_escalation import Guild, answer, settled


@pytest.fixture
async def stack(tmp_path, pg_schema):
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=2, shard_count=4) as s:
        yield s


def newest(stack, channel: int, text: str) -> dict[str, Any]:
    found = [
        m
        for m in stack.sim.sim.moderation.messages.values()
        if m["channel_id"] == str(channel) and text in m["content"]
    ]
    assert found, (channel, text)
    return found[-1]


async def test_tickets_open_once_close_by_opener_or_staff_and_survive_a_migration(stack):
    await stack.converge()
    g = Guild(stack, next(iter(stack.world.guilds.values())))
    channel = next(iter(g.guild.channels))
    options = {"channel": ["channel", channel], "role": ["role", g.role]}
    refused = await stack.interact(
        g.guild.id, "tickets-setup", user_id=str(g.plain), options=options
    )
    assert "Only administrators" in answer(refused)
    assert "Tickets are open" in answer(
        await stack.interact(g.guild.id, "tickets-setup", options=options)
    )
    button = newest(stack, channel, "Open a private ticket")
    assert button["components"][0]["components"][0]["custom_id"] == "ticket|open"
    owner = g.owner()
    assert owner.rows("SELECT message_id, channel_id, role_id FROM tickets_config") == [
        (button["id"], str(channel), str(g.role))
    ]

    opened = answer(await g.press(button, g.plain, "", custom_id="ticket|open"))
    threads = stack.sim.sim.moderation.threads
    [(thread, info)] = threads.items()
    assert f"<#{thread}>" in opened and info["type"] == 12 and info["parent_id"] == str(channel)
    assert stack.sim.sim.moderation.thread_members[thread] == {g.plain}
    again = answer(await g.press(button, g.plain, "", custom_id="ticket|open"))
    assert "already opened" in again and len(threads) == 1  # a double click: one ticket
    welcome = newest(stack, thread, "opened a ticket")
    assert f"<@&{g.role}>" in welcome["content"]
    close_id = welcome["components"][0]["components"][0]["custom_id"]

    # Close: not by another member; not from outside the ticket; yes by the opener
    other = g.target
    assert "Only the member" in answer(await g.press(welcome, other, "", custom_id=close_id))
    forged = await g.press(button, g.plain, "", custom_id=close_id)  # pressed in the channel
    assert "not valid" in answer(forged)
    assert "Ticket closed" in answer(await g.press(welcome, g.plain, "", custom_id=close_id))
    assert threads[thread]["thread_metadata"]["archived"] is True
    assert threads[thread]["thread_metadata"]["locked"] is True

    # the guild moves: its button keeps working on the new owner, where staff can close
    target = next(n for n in stack.pods if n != owner.name)
    done = await stack.wait_migration((await stack.migrate(g.guild.id, target))["id"])
    assert done["state"] == "done", done
    await stack.converge()
    assert owner.rows("SELECT count(*) FROM tickets_config") == [(0,)]
    reply = await g.press(button, g.target, "", custom_id="ticket|open")
    assert "Your ticket" in await settled(stack, reply)
    second = newest(stack, next(t for t in threads if t != thread), "opened a ticket")
    close2 = second["components"][0]["components"][0]["custom_id"]
    staff = g.mods[0]  # has the role
    assert "Ticket closed" in await settled(
        stack, await g.press(second, staff, "", custom_id=close2)
    )
    # a button of a message that is no ticket button: not set up
    stray = newest(stack, thread, "Ticket closed by")
    assert "no longer set up" in answer(await g.press(stray, g.plain, "", custom_id="ticket|open"))
