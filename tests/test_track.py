"""Track (message command) end to end: a moderator's Track saves the message to its
author's log thread, one thread per user, remembered across a migration, replaced once
when deleted on Discord."""

from __future__ import annotations

import pytest
from conftest import PG_URL
from stack import running_stack
from test_escalation import Guild, answer, settled


@pytest.fixture
async def stack(tmp_path, pg_schema):
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=2, shard_count=4) as s:
        yield s


async def track(stack, g: Guild, user: int, content: str, message_id: int | None = None) -> str:
    """Track a message of the target; the answer the moderator sees."""
    reply = await stack.interact(
        g.guild.id,
        "Track",
        kind=3,
        user_id=str(user),
        target_message_id=str(message_id or stack.world.ids.next()),
        target_author_id=str(g.target),
        target_content=content,
    )
    return await settled(stack, reply)


def thread_messages(stack, thread: int) -> list[str]:
    return [
        m["content"]
        for m in stack.sim.sim.moderation.messages.values()
        if m["channel_id"] == str(thread)
    ]


async def test_track_keeps_one_thread_per_user_across_a_migration_and_a_deleted_thread(stack):
    await stack.converge()
    g = Guild(stack, next(iter(stack.world.guilds.values())))
    assert "not set up" in await track(stack, g, g.mods[0], "early")
    await g.setup()
    assert "Only moderators" in await track(stack, g, g.plain, "not mine to track")
    first_id = stack.world.ids.next()
    reply = await track(stack, g, g.mods[0], "first bad message", first_id)
    threads = stack.sim.sim.moderation.threads
    assert len(threads) == 1
    [(thread, info)] = threads.items()
    assert f"<#{thread}>" in reply and info["parent_id"] == str(g.mod_log)
    assert any("first bad message" in m for m in thread_messages(stack, thread))
    assert "already tracked" in await track(stack, g, g.mods[0], "first bad message", first_id)
    await track(stack, g, g.mods[1], "second bad message")
    assert len(threads) == 1 and len(thread_messages(stack, thread)) == 2
    owner = g.owner()
    assert owner.rows("SELECT user_id, thread_id FROM user_threads") == [
        (str(g.target), str(thread))
    ]

    # the guild moves: its log threads are remembered on the new owner
    target = next(n for n in stack.pods if n != owner.name)
    done = await stack.wait_migration((await stack.migrate(g.guild.id, target))["id"])
    assert done["state"] == "done", done
    await stack.converge()
    assert "Tracked in" in await track(stack, g, g.mods[0], "third, on the new owner")
    assert len(threads) == 1 and len(thread_messages(stack, thread)) == 3
    assert owner.rows("SELECT count(*) FROM user_threads") == [(0,)]

    # the thread is deleted on Discord: the next Track opens a new one, remembered alone
    threads.pop(thread)
    assert "Tracked in" in await track(stack, g, g.mods[0], "fourth, after the deletion")
    [(fresh, _)] = threads.items()
    assert fresh != thread and any("fourth" in m for m in thread_messages(stack, fresh))
    assert stack.pods[target].rows("SELECT user_id, thread_id FROM user_threads") == [
        (str(g.target), str(fresh))
    ]
    counted = await stack.interact(
        g.guild.id, "modreport", user_id=str(g.mods[0]), options={"user": ["user", g.target]}
    )
    assert "4 report(s)" in answer(counted)  # each tracked message is on the user's record
