"""Guild migration end to end: no message, command or row lost; the source keeps nothing."""

import asyncio
import contextlib
import json

import pytest
from conftest import PG_URL, eventually
from stack import MIGRATION, running_stack

from config_store.api import MIGRATOR_KEY
from gateway_app.events import MessageDeleted
from gateway_app.storage import EXPORT_COLUMNS, GuildStore, checksum


@pytest.fixture
async def stack(tmp_path, pg_schema):
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=6, shard_count=4) as s:
        yield s


def pick(stack):
    """A guild, its owner and the other pod (guild ids are random: either pod may own all)."""
    table = stack.proxy.tables.table
    guild = next(iter(stack.world.guilds.values()))
    source = table.owner(guild.id)
    return guild, source, "gateway-1" if source == "gateway-0" else "gateway-0"


async def stream(
    stack, gid, stop: asyncio.Event, sent: list[int], count: int = 10, pause: float = 0.01
):
    """A steady message stream at one guild until told to stop."""
    while not stop.is_set():
        async with stack.http.post(
            f"{stack.sim.url}/control/messages", json={"guild_id": str(gid), "count": count}
        ) as r:
            sent.append((await r.json())["sent"])
        await asyncio.sleep(pause)  # the stream's pace


async def test_a_guild_migrates_under_a_steady_stream_with_nothing_lost(stack):
    guild, src, dst = pick(stack)
    role = next(r for r in guild.roles if r != guild.id)
    await stack.interact(
        guild.id,
        "setup",
        options={"moderator_role": ["role", role], "mod_log": ["channel", list(guild.channels)[1]]},
    )
    member = list(guild.members)[2]

    stop, sent = asyncio.Event(), []
    streamer = asyncio.create_task(stream(stack, guild.id, stop, sent))
    await eventually(lambda: len(sent) >= 3)  # streaming before the move
    migration = await stack.migrate(guild.id, dst)
    replies = []
    while (await stack.migration(migration["id"]))["state"] not in ("done", "rolled_back"):
        replies.append(
            await stack.interact(guild.id, "modreport", options={"user": ["user", member]})
        )
        await asyncio.sleep(0.05)  # pacing: commands all through the move
    done = await stack.wait_migration(migration["id"])
    after = len(sent)
    await eventually(lambda: len(sent) >= after + 3)  # and streaming after it
    stop.set()
    await streamer
    assert done["state"] == "done" and done["detail"]["counts"]["guilds"] == 1

    async def all_there():
        await stack.flush_pods()
        return stack.pods[dst].message_counts().get(guild.id) == sum(sent)

    await eventually(all_there, timeout=20)
    target, source = stack.pods[dst], stack.pods[src]
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
    assert route.pod == dst and route.epoch == done["epoch"] and not route.migrating
    # a coordinator with a stale epoch cannot touch the guild on either pod
    for pod in (source, target):
        async with stack.http.post(
            f"{pod.url}/internal/guilds/{guild.id}/freeze",
            json={"epoch": done["epoch"] - 1},
            headers={"Authorization": "Bearer migration-secret"},
        ) as r:
            assert r.status == 409 and "stale epoch" in (await r.json())["error"]


async def test_cancel_before_the_flip_rolls_back(tmp_path, pg_schema):
    async with running_stack(
        tmp_path, PG_URL, pg_schema, pods=2, guilds=4, shard_count=4, migration_step_delay=0.4
    ) as stack:
        guild, src, dst = pick(stack)
        await stack.send_messages([guild.id], 40)
        migration = await stack.migrate(guild.id, dst)
        await eventually(lambda: _state_is(stack, migration["id"], "frozen"), timeout=10)
        await stack.send_messages([guild.id], 25)  # held by the frozen source
        async with stack.http.post(
            f"{stack.config.url}/v1/migrations/{migration['id']}/cancel",
            headers={"Authorization": "Bearer admin-secret"},
        ) as r:
            assert r.status == 200
        done = await stack.wait_migration(migration["id"])
        assert done["state"] == "rolled_back"

        async def back():
            await stack.flush_pods()
            return stack.pods[src].message_counts().get(guild.id) == 65

        await eventually(back, timeout=15)
        assert guild.id not in stack.pods[dst].message_counts()
        assert stack.proxy.tables.table.owner(guild.id) == src
        assert (await stack.verify())["clean"]


async def _state_is(stack, mid, state):
    return (await stack.migration(mid))["state"] == state


async def test_the_delta_inside_the_freeze_is_only_what_changed_since_the_pre_copy(stack):
    """The hold window must depend on the rows changed since the pre-copy, not on the
    guild's size or on how recent its messages are: 1,500 messages sent just before the
    move are all in the pre-copy, and only the stream's few rows cross inside the freeze."""
    guild, src, dst = pick(stack)
    assert (await stack.send_messages([guild.id], 1500))["sent"] == 1500

    async def stored():
        await stack.flush_pods()
        return stack.pods[src].message_counts().get(guild.id) == 1500

    await eventually(stored, timeout=15)
    stop, sent = asyncio.Event(), []
    streamer = asyncio.create_task(stream(stack, guild.id, stop, sent, count=2, pause=0.02))
    done = await stack.migrate_midstream(guild.id, dst, sent)
    stop.set()
    await streamer
    assert done["state"] == "done"
    detail = done["detail"]
    assert detail["precopied"] >= 1500
    # what the stream wrote between the copy and the freeze: a few batches, not the guild
    assert detail["copied"]["message_stats"] < 300, detail
    assert set(detail["timings"]) >= {"freeze", "delta_export", "import", "flip", "replay"}

    async def all_there():
        await stack.flush_pods()
        return stack.pods[dst].message_counts().get(guild.id) == 1500 + sum(sent)

    await eventually(all_there, timeout=20)
    assert guild.id not in stack.pods[src].message_counts()


async def test_a_delta_export_with_a_tracker_the_source_does_not_know_sends_every_row(stack):
    """Confused coordinator (or a source that restarted and lost its tracker): the delta
    cannot be trusted, so the export falls back to every row, never to a partial delta."""
    guild, src, _ = pick(stack)
    pod = stack.pods[src]
    auth = {"Authorization": f"Bearer {MIGRATION}"}
    await stack.send_messages([guild.id], 30)

    async def stored():
        await stack.flush_pods()
        return pod.message_counts().get(guild.id) == 30

    await eventually(stored, timeout=10)
    async with stack.http.post(
        f"{pod.url}/internal/guilds/{guild.id}/freeze", json={"epoch": 0}, headers=auth
    ) as r:
        assert r.status == 200, await r.text()
    try:
        async with stack.http.get(
            f"{pod.url}/internal/guilds/{guild.id}/export?mode=delta&track=not-a-tracker",
            headers=auth,
        ) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        assert body["mode"] == "full" and body["counts"]["message_stats"] == 30
    finally:
        async with stack.http.post(
            f"{pod.url}/internal/guilds/{guild.id}/unfreeze", json={"epoch": 0}, headers=auth
        ) as r:
            assert r.status == 200, await r.text()


async def test_an_import_and_the_batch_writer_do_not_corrupt_each_other(tmp_path):
    """Fault: the target holds a live stream's events (the batch writer commits every
    20 ms) while a big import runs. Sharing one connection, the writer's BEGIN failed
    inside the import's transaction and its ROLLBACK undid the import half-way; the
    import now has its own connection and both complete, nothing lost."""
    gid = 4242
    store = GuildStore(str(tmp_path / "target.db"))
    await store.open()
    try:
        pad = [None] * (len(EXPORT_COLUMNS["message_stats"]) - 8)  # mod-bot's extra columns
        rows = [[gid, i, 1, 2, 3, 4, 1_700_000_000.0 + i, None, *pad] for i in range(1, 60_001)]
        payload = {
            "mode": "precopy",
            "rows": {t: (rows if t == "message_stats" else []) for t in EXPORT_COLUMNS},
            "counts": {t: (len(rows) if t == "message_stats" else 0) for t in EXPORT_COLUMNS},
        }
        payload["checksum"] = checksum(payload["rows"])
        stop = asyncio.Event()
        held = 0

        async def hold_stream() -> None:
            nonlocal held
            while not stop.is_set():
                held += 1
                store.hold_event(gid, f"m:{held}", MessageDeleted(held, float(held)))
                await asyncio.sleep(0.001)  # the stream's pace

        streamer = asyncio.create_task(hold_stream())
        for _ in range(3):  # a few imports, so some overlap a writer batch for sure
            result = await store.import_guild(gid, 1, payload)
            assert result["counts"]["message_stats"] == 60_000
        stop.set()
        await streamer
        await store.flush()
        counts = await store.row_counts(gid)
        assert counts["message_stats"] == 60_000
        assert counts["held_events"] == held
    finally:
        await store.close()


async def test_cancel_in_prepared_unfreezes_a_source_frozen_by_a_coordinator_that_died(
    tmp_path, pg_schema
):
    """Fault: the coordinator froze the source and died before recording ``frozen``; the
    migration is then cancelled while still ``prepared`` and a coordinator resumes it. The
    rollback must unfreeze the source, or the guild's events stay held there for good."""
    async with running_stack(
        tmp_path, PG_URL, pg_schema, pods=2, guilds=3, shard_count=4, migration_step_delay=30
    ) as stack:
        guild, src, dst = pick(stack)
        source = stack.pods[src]
        auth = {"Authorization": f"Bearer {MIGRATION}"}
        migrator = stack.config.app[MIGRATOR_KEY]
        migration = await stack.migrate(guild.id, dst)
        assert migration["state"] == "prepared"
        # the coordinator dies (its task, asleep before the step, is gone) after it froze
        # the source at the migration's epoch and before it recorded ``frozen``
        task = migrator.tasks[migration["id"]]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with stack.http.post(
            f"{source.url}/internal/guilds/{guild.id}/freeze",
            json={"epoch": migration["epoch"]},
            headers=auth,
        ) as r:
            assert r.status == 200, await r.text()
        await migrator.cancel(migration["id"])
        migrator.step_delay = 0.0
        assert await asyncio.wait_for(migrator.run(migration["id"]), 30) == "rolled_back"
        async with stack.http.get(f"{source.url}/internal/guilds/{guild.id}", headers=auth) as r:
            status = await r.json()
        assert status["state"] == "normal" and not status["holding"], status
        await stack.send_messages([guild.id], 20)

        async def written():
            await stack.flush_pods()
            return source.message_counts().get(guild.id) == 20

        await eventually(written, timeout=15)
