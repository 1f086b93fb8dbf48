"""Gateway pods end to end: simulator + config service + 2 pods (shard_count=4) + proxy."""

import asyncio
import json
from collections import Counter

import pytest
from conftest import PG_URL, eventually
from stack import INTERNAL, running_stack

from modbot_ring import RoutingTable


@pytest.fixture
async def stack(tmp_path, pg_schema):
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=20, shard_count=4) as s:
        yield s


async def owner_table(stack) -> RoutingTable:
    await stack.converge()
    return stack.proxy.tables.table


async def test_pods_hold_exactly_their_shards_and_each_message_lands_once_on_its_owner(stack):
    table = await owner_table(stack)
    wanted = {name: table.shards_for(name) for name in stack.pods}
    assert sorted(s for shards in wanted.values() for s in shards) == [0, 1, 2, 3]
    for name, pod in stack.pods.items():
        async with stack.http.get(f"{pod.url}/readyz") as r:
            assert tuple((await r.json())["shards"]) == wanted[name]
    connected = sorted(s.shard[0] for s in stack.sim.sim.sessions.values() if s.ws is not None)
    assert connected == [0, 1, 2, 3]  # one live session per shard: nobody holds extra shards

    guilds = list(stack.world.guilds)
    async with stack.http.post(
        f"{stack.sim.url}/control/messages",
        json={"guild_ids": [str(g) for g in guilds], "count": 50},
    ) as r:
        assert (await r.json())["sent"] == 1000

    async def all_counted():
        await stack.flush_pods()
        return sum(sum(p.message_counts().values()) for p in stack.pods.values()) == 1000

    await eventually(all_counted, timeout=20)
    for name, pod in stack.pods.items():
        counts = pod.message_counts()
        assert all(table.owner(g) == name for g in counts), "a pod stored a guild it does not own"
        assert all(counts[g] == 50 for g in counts)
    assert sum(len(p.message_counts()) for p in stack.pods.values()) == 20


async def test_setup_then_modreport_through_signed_webhooks(stack):
    table = await owner_table(stack)
    guild = next(iter(stack.world.guilds.values()))
    role = next(r for r in guild.roles if r != guild.id)
    mod_log = list(guild.channels)[1]
    member = list(guild.members)[2]

    reply = await stack.interact(guild.id, "modreport", options={"user": ["user", member]})
    assert (
        reply["status"] == 200 and "not set up yet" in json.loads(reply["body"])["data"]["content"]
    )

    reply = await stack.interact(
        guild.id,
        "setup",
        options={"moderator_role": ["role", role], "mod_log": ["channel", mod_log]},
    )
    body = json.loads(reply["body"])
    assert reply["status"] == 200 and body["type"] == 4 and body["data"]["flags"] == 64
    assert f"<@&{role}>" in body["data"]["content"] and reply["elapsed_ms"] < 3000
    owner = stack.pods[table.owner(guild.id)]
    settings = json.loads(
        owner.rows("SELECT settings FROM guilds WHERE guild_id = ?", (guild.id,))[0][0]
    )
    assert settings["moderator_role"] == str(role) and settings["mod_log"] == str(mod_log)
    other = next(p for n, p in stack.pods.items() if n != owner.name)
    assert other.rows("SELECT count(*) FROM guilds")[0][0] == 0

    before = len(stack.sim.sim.calls)
    reply = await stack.interact(
        guild.id,
        "Report",
        kind=3,
        target_message_id=str(stack.world.ids.next()),
        target_author_id=str(member),
        target_content="spam spam",
    )
    assert "moderators have been told" in json.loads(reply["body"])["data"]["content"]
    posted = [
        c for c in stack.sim.sim.calls[before:] if c.path == f"/api/v10/channels/{mod_log}/messages"
    ]
    assert len(posted) == 1 and "spam spam" in posted[0].body["content"]

    reply = await stack.interact(guild.id, "modreport", options={"user": ["user", member]})
    assert "1 report(s)" in json.loads(reply["body"])["data"]["content"]


async def test_non_admin_cannot_run_setup(stack):
    guild = next(iter(stack.world.guilds.values()))
    member = list(guild.members)[3]  # a plain member
    role = next(r for r in guild.roles if r != guild.id)
    reply = await stack.interact(
        guild.id,
        "setup",
        user_id=str(member),
        options={"moderator_role": ["role", role], "mod_log": ["channel", list(guild.channels)[1]]},
    )
    assert "Only administrators" in json.loads(reply["body"])["data"]["content"]


async def test_a_pinned_guild_is_served_only_by_its_pinned_pod(stack):
    table = await owner_table(stack)
    guild = next(iter(stack.world.guilds.values()))
    home = table.owner(guild.id)
    away = next(n for n in stack.pods if n != home)
    await stack.pin(guild.id, away)
    await stack.converge()
    shard = (guild.id >> 22) % 4
    assert shard in stack.proxy.tables.table.shards_for(
        away
    )  # the pinned pod also opened the guild's shard
    assert (await stack.send_messages([guild.id], 30))["sent"] == 30

    async def landed():
        await stack.flush_pods()
        return stack.pods[away].message_counts().get(guild.id) == 30

    await eventually(landed, timeout=15)
    assert guild.id not in stack.pods[home].message_counts()


async def test_moderation_events_are_recorded_once(stack):
    table = await owner_table(stack)
    guild = next(iter(stack.world.guilds.values()))
    victim = list(guild.members)[3]
    leaver = list(guild.members)[4]
    for kind, user in (("ban", victim), ("member_remove", leaver)):
        async with stack.http.post(
            f"{stack.sim.url}/control/events",
            json={"type": kind, "guild_id": str(guild.id), "user_id": str(user)},
        ) as r:
            assert r.status == 200
    owner = stack.pods[table.owner(guild.id)]

    async def recorded():
        await stack.flush_pods()
        return Counter(
            r[0]
            for r in owner.rows(
                "SELECT action_type FROM mod_actions WHERE guild_id = ?", (guild.id,)
            )
        )

    assert await eventually(lambda: _eq(recorded(), Counter({"ban": 1, "leave": 1})), timeout=10)


async def _eq(coro, value):
    return (await coro) == value


async def test_internal_api_requires_the_token_and_refuses_foreign_guilds(stack):
    table = await owner_table(stack)
    guild = next(iter(stack.world.guilds))
    owner = table.owner(guild)
    other = next(p for n, p in stack.pods.items() if n != owner)
    async with stack.http.get(f"{other.url}/data/guilds/{guild}") as r:
        assert r.status == 401
    path = f"/data/guilds/{guild}"
    async with stack.http.get(
        f"{other.url}{path}", headers={"Authorization": f"Bearer {INTERNAL}"}
    ) as r:  # the token alone does not open guild data: the proxy must vouch for a user
        assert r.status == 401
    signed = stack.pod_headers("GET", path, guild)
    async with stack.http.get(f"{other.url}{path}", headers=signed) as r:
        body = await r.json()
        assert r.status == 421 and body["owner"] == owner
    async with stack.http.get(f"{stack.pods[owner].url}{path}", headers=signed) as r:
        data = await r.json()
        assert r.status == 200 and len(data["messages_per_day"]) == 30 and data["pod"] == owner
    async with stack.http.get(
        f"{other.url}/data/guilds/abc", headers=stack.pod_headers("GET", "/data/guilds/abc", "abc")
    ) as r:
        assert r.status == 400
    await asyncio.sleep(0)  # a yield, not a wait: the closed responses' callbacks run


async def test_sim_cli_and_resume_after_a_dropped_gateway_connection(stack):
    """Events dispatched while the connections are down are replayed on RESUME."""
    from stack import CLI

    table = await owner_table(stack)
    guild = next(iter(stack.world.guilds))
    owner = stack.pods[table.owner(guild)]
    before = len(stack.sim.sim.identifies)

    async def sim(*args):
        proc = await asyncio.create_subprocess_exec(
            CLI,
            "sim",
            *args,
            "--sim-url",
            stack.sim.url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        return proc.returncode, out.decode(), err.decode()

    code, out, _ = await sim("drop-sessions")
    assert code == 0 and json.loads(out)["dropped"] >= 4
    code, out, _ = await sim(
        "messages", "--guild", str(guild), "--count", "40"
    )  # sent while disconnected
    assert code == 0 and json.loads(out)["sent"] == 40

    async def landed():
        await stack.flush_pods()
        return owner.message_counts().get(guild) == 40

    await eventually(landed, timeout=20)
    assert len(stack.sim.sim.identifies) == before  # resumed, not re-identified
    code, out, _ = await sim("info")
    assert code == 0 and len(json.loads(out)["public_key"]) == 64
    code, _, err = await sim("messages", "--guild", "1", "--count", "1")
    assert code == 3 and "404" in err and err.count("\n") == 1
