"""Guild migration end to end: no message, command or row lost; the source keeps nothing."""

import asyncio
import json

import pytest
from conftest import PG_URL, eventually
from stack import running_stack


@pytest.fixture
async def stack(tmp_path, pg_schema):
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=6, shard_count=4) as s:
        yield s


async def stream(stack, gid, stop: asyncio.Event, sent: list[int]):
    """A steady message stream at one guild until told to stop."""
    while not stop.is_set():
        async with stack.http.post(
            f"{stack.sim.url}/control/messages", json={"guild_id": str(gid), "count": 10}
        ) as r:
            sent.append((await r.json())["sent"])
        await asyncio.sleep(0.01)


async def test_a_guild_migrates_under_a_steady_stream_with_nothing_lost(stack):
    table = stack.proxy.tables.table
    guild = next(g for g in stack.world.guilds.values() if table.owner(g.id) == "gateway-0")
    role = next(r for r in guild.roles if r != guild.id)
    await stack.interact(
        guild.id,
        "setup",
        options={"moderator_role": ["role", role], "mod_log": ["channel", list(guild.channels)[1]]},
    )
    member = list(guild.members)[2]

    stop, sent = asyncio.Event(), []
    streamer = asyncio.create_task(stream(stack, guild.id, stop, sent))
    await asyncio.sleep(0.3)
    migration = await stack.migrate(guild.id, "gateway-1")
    replies = []
    while (await stack.migration(migration["id"]))["state"] not in ("done", "rolled_back"):
        replies.append(
            await stack.interact(guild.id, "modreport", options={"user": ["user", member]})
        )
        await asyncio.sleep(0.05)
    done = await stack.wait_migration(migration["id"])
    await asyncio.sleep(0.3)
    stop.set()
    await streamer
    assert done["state"] == "done" and done["detail"]["counts"]["guilds"] == 1

    async def all_there():
        await stack.flush_pods()
        return stack.pods["gateway-1"].message_counts().get(guild.id) == sum(sent)

    await eventually(all_there, timeout=20)
    target, source = stack.pods["gateway-1"], stack.pods["gateway-0"]
    for table_name in (
        "message_stats",
        "guilds",
        "held_events",
        "mod_actions",
        "reported_messages",
    ):
        assert (
            source.rows(f"SELECT count(*) FROM {table_name} WHERE guild_id = ?", (guild.id,))[0][0]
            == 0
        )
    assert (
        target.rows("SELECT count(*) FROM guilds WHERE guild_id = ?", (guild.id,))[0][0] == 1
    )  # settings moved
    assert target.rows("SELECT count(*) FROM held_events")[0][0] == 0

    # every interaction was answered in time; deferred ones were completed by an edit
    assert replies and all(r["status"] == 200 and r["elapsed_ms"] < 3000 for r in replies)
    deferred = [r for r in replies if json.loads(r["body"])["type"] == 5]
    for reply in deferred:
        token = reply["interaction"]["token"]
        await eventually(
            lambda t=token: stack.calls(
                f"/webhooks/{stack.world.application_id}/{t}/messages/@original"
            ),
            timeout=15,
        )
    assert (await stack.verify())["clean"]
    route = stack.proxy.tables.table.route(guild.id)
    assert route.pod == "gateway-1" and route.epoch == done["epoch"] and not route.migrating
    # a coordinator with a stale epoch cannot touch the guild on either pod
    for pod in (source, target):
        async with stack.http.post(
            f"{pod.url}/internal/guilds/{guild.id}/freeze",
            json={"epoch": done["epoch"] - 1},
            headers={"Authorization": "Bearer internal-secret"},
        ) as r:
            assert r.status == 409 and "stale epoch" in (await r.json())["error"]


async def test_cancel_before_the_flip_rolls_back(tmp_path, pg_schema):
    async with running_stack(
        tmp_path, PG_URL, pg_schema, pods=2, guilds=4, shard_count=4, migration_step_delay=0.4
    ) as stack:
        table = stack.proxy.tables.table
        guild = next(g for g in stack.world.guilds.values() if table.owner(g.id) == "gateway-0")
        async with stack.http.post(
            f"{stack.sim.url}/control/messages", json={"guild_id": str(guild.id), "count": 40}
        ) as r:
            assert r.status == 200
        migration = await stack.migrate(guild.id, "gateway-1")
        await eventually(lambda: _state_is(stack, migration["id"], "frozen"), timeout=10)
        async with stack.http.post(
            f"{stack.sim.url}/control/messages", json={"guild_id": str(guild.id), "count": 25}
        ) as r:
            assert r.status == 200  # held by the frozen source
        async with stack.http.post(
            f"{stack.config.url}/v1/migrations/{migration['id']}/cancel",
            headers={"Authorization": "Bearer admin-secret"},
        ) as r:
            assert r.status == 200
        done = await stack.wait_migration(migration["id"])
        assert done["state"] == "rolled_back"

        async def back():
            await stack.flush_pods()
            return stack.pods["gateway-0"].message_counts().get(guild.id) == 65

        await eventually(back, timeout=15)
        assert guild.id not in stack.pods["gateway-1"].message_counts()
        assert stack.proxy.tables.table.owner(guild.id) == "gateway-0"
        assert (await stack.verify())["clean"]


async def _state_is(stack, mid, state):
    return (await stack.migration(mid))["state"] == state
