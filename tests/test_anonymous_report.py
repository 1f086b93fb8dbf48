"""The Report message command is anonymous: the moderators see the message and its
author, never the reporter; a second report of the same message by the same member is
refused; a report during a migration is deferred and delivered on the new owner."""

from __future__ import annotations

import pytest
from conftest import PG_URL
from stack import running_stack
from test_escalation import Guild, answer, settled


@pytest.fixture
async def stack(tmp_path, pg_schema):
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=2, shard_count=4) as s:
        yield s


async def report(stack, g: Guild, reporter: int, message_id: int, content: str) -> dict:
    return await stack.interact(
        g.guild.id,
        "Report",
        kind=3,
        user_id=str(reporter),
        target_message_id=str(message_id),
        target_author_id=str(g.target),
        target_content=content,
    )


async def test_reports_never_name_the_reporter(stack):
    await stack.converge()
    g = Guild(stack, next(iter(stack.world.guilds.values())))
    await g.setup()
    message_id = stack.world.ids.next()
    before = len(stack.sim.sim.calls)
    assert "moderators have been told" in answer(
        await report(stack, g, g.plain, message_id, "rude")
    )
    assert "already reported" in answer(await report(stack, g, g.plain, message_id, "rude"))
    posts = [
        c
        for c in stack.sim.sim.calls[before:]
        if c.path == f"/api/v10/channels/{g.mod_log}/messages"
    ]
    assert len(posts) == 1
    text = posts[0].body["content"]
    assert "Anonymous report" in text and f"<@{g.target}>" in text and "rude" in text
    assert str(g.plain) not in text  # the reporter is nowhere in what moderators see
    owner = g.owner()
    assert owner.rows("SELECT reporter_id FROM reported_messages") == [(g.plain,)]

    # during and after a migration: the report lands once, on the new owner
    target = next(n for n in stack.pods if n != owner.name)
    migration = await stack.migrate(g.guild.id, target)
    during = await report(stack, g, g.mods[0], message_id, "rude")
    done = await stack.wait_migration(migration["id"])
    assert done["state"] == "done", done
    assert "moderators have been told" in await settled(stack, during)
    assert stack.pods[target].rows("SELECT count(*) FROM reported_messages") == [(2,)]
    assert owner.rows("SELECT count(*) FROM reported_messages") == [(0,)]
