"""Honeypot channels end to end: set up by an administrator through a signed webhook,
enforced on the owning pod from gateway messages (a ban, recorded once), moderators
exempt, the configuration carried by a migration."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import PG_URL, eventually
from stack import running_stack
from test_escalation import Guild, answer, settled


@pytest.fixture
async def stack(tmp_path, pg_schema):
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=2, shard_count=4) as s:
        yield s


async def post(stack, g: Guild, author: int, content: str = "buy cheap stuff") -> None:
    body: dict[str, Any] = {
        "guild_id": str(g.guild.id),
        "author_id": str(author),
        "content": content,
    }
    async with stack.http.post(f"{stack.sim.url}/control/messages", json=body) as r:
        assert r.status == 200, await r.text()


async def test_posting_in_a_honeypot_bans_non_moderators_also_after_a_migration(stack):
    await stack.converge()
    g = Guild(stack, next(iter(stack.world.guilds.values())))
    await g.setup()
    trap = next(iter(g.guild.channels))  # where /control/messages posts
    refused = await stack.interact(
        g.guild.id, "honeypot", user_id=str(g.mods[0]), options={"channel": ["channel", trap]}
    )
    assert "Only administrators" in answer(refused)
    reply = await stack.interact(g.guild.id, "honeypot", options={"channel": ["channel", trap]})
    assert "is now a honeypot" in answer(reply)
    owner = g.owner()
    assert owner.rows("SELECT channel_id FROM honeypot_config") == [(str(trap),)]

    await post(stack, g, g.mods[1], "testing the trap")  # a moderator: exempt
    await post(stack, g, g.plain)
    bans = stack.sim.sim.moderation.bans
    await eventually(lambda: g.plain in bans.get(g.guild.id, set()), timeout=10)
    ban_calls = [c for c in stack.calls(f"/guilds/{g.guild.id}/bans/") if c["method"] == "PUT"]
    assert [c["path"].rsplit("/", 1)[1] for c in ban_calls] == [str(g.plain)]

    async def recorded() -> list[tuple[Any, ...]]:
        await stack.flush_pods()
        return owner.rows("SELECT user_id, executor_id FROM mod_actions WHERE action_type = 'ban'")

    await eventually(recorded, timeout=10)
    assert await recorded() == [(g.plain, stack.world.bot.id)]

    # the guild moves: its honeypot goes with it and is enforced by the new owner
    target = next(n for n in stack.pods if n != owner.name)
    done = await stack.wait_migration((await stack.migrate(g.guild.id, target))["id"])
    assert done["state"] == "done", done
    await stack.converge()
    assert stack.pods[target].rows("SELECT channel_id FROM honeypot_config") == [(str(trap),)]
    await post(stack, g, g.target)
    await eventually(lambda: g.target in bans[g.guild.id], timeout=15)
    assert g.mods[1] not in bans[g.guild.id]
    again = await stack.interact(g.guild.id, "honeypot", options={"channel": ["channel", trap]})
    assert "is now a honeypot" in await settled(stack, again)
    assert stack.pods[target].rows("SELECT count(*) FROM honeypot_config") == [(1,)]
