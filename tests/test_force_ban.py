"""/force-ban end to end: through a signed webhook to the owning pod, a ban on Discord,
and the ban recorded once from the gateway event on the same pod."""

from __future__ import annotations

import pytest
from conftest import PG_URL, eventually
from stack import running_stack
from test_escalation import Guild, answer


@pytest.fixture
async def stack(tmp_path, pg_schema):
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=2, shard_count=4) as s:
        yield s


async def test_force_ban_by_a_moderator_only_and_recorded_once(stack):
    await stack.converge()
    g = Guild(stack, next(iter(stack.world.guilds.values())))
    before = await stack.interact(
        g.guild.id, "force-ban", user_id=str(g.mods[0]), options={"user": ["user", g.target]}
    )
    assert "not set up" in answer(before)
    await g.setup()
    refused = await stack.interact(
        g.guild.id, "force-ban", user_id=str(g.plain), options={"user": ["user", g.target]}
    )
    assert "Only moderators" in answer(refused) and not g.banned()
    reply = await stack.interact(
        g.guild.id,
        "force-ban",
        user_id=str(g.mods[0]),
        options={"user": ["user", g.target], "reason": ["string", "spam bot"]},
    )
    assert f"Banned <@{g.target}>" in answer(reply) and g.banned()
    put = [c for c in stack.calls(f"/guilds/{g.guild.id}/bans/{g.target}") if c["method"] == "PUT"]
    assert len(put) == 1
    owner = g.owner()

    async def bans() -> int:
        await stack.flush_pods()
        rows = owner.rows(
            "SELECT action_type FROM mod_actions WHERE guild_id = ? AND user_id = ?",
            (g.guild.id, g.target),
        )
        return [r[0] for r in rows].count("ban")

    await eventually(lambda: bans(), timeout=10)
    assert await bans() == 1  # Discord's GUILD_BAN_ADD, written once, on the owner only
    other = next(p for p in stack.pods.values() if p.name != owner.name)
    assert other.rows("SELECT count(*) FROM mod_actions") == [(0,)]
