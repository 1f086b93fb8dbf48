"""Pods crashing mid-migration, and scaling out 2 -> 3 under traffic."""

import asyncio
import json

import pytest
from conftest import PG_URL, eventually
from stack import A, pod_process, running_stack

STEPS = ["prepared", "frozen", "imported", "flipped", "replayed"]


async def _state(stack, mid):
    return (await stack.migration(mid))["state"]


@pytest.mark.parametrize("victim", ["source", "target"])
@pytest.mark.parametrize("step", STEPS)
async def test_a_pod_killed_at_each_step_resumes_and_conserves_rows(
    tmp_path, pg_schema, victim, step
):
    async with running_stack(
        tmp_path, PG_URL, pg_schema, pods=2, guilds=3, shard_count=4, migration_step_delay=0.5
    ) as stack:
        table = stack.proxy.tables.table
        guild = next(iter(stack.world.guilds.values()))
        source = table.owner(guild.id)
        target = "gateway-1" if source == "gateway-0" else "gateway-0"
        async with stack.http.post(
            f"{stack.sim.url}/control/messages", json={"guild_id": str(guild.id), "count": 50}
        ) as r:
            assert r.status == 200

        async def stored():
            await stack.flush_pods()
            return stack.pods[source].message_counts().get(guild.id) == 50

        await eventually(stored, timeout=10)
        migration = await stack.migrate(guild.id, target)
        await eventually(lambda: _is(stack, migration["id"], step), timeout=20, interval=0.01)
        pod = stack.pods[source if victim == "source" else target]
        pod.kill()
        await asyncio.sleep(0.8)  # the next step meets a dead pod and keeps retrying
        pod.start()
        await stack.wait_ready(pod.name)
        done = await stack.wait_migration(migration["id"], timeout=60)
        assert done["state"] in ("done", "rolled_back")
        owner, other = (target, source) if done["state"] == "done" else (source, target)

        async def conserved():
            await stack.flush_pods()
            return stack.pods[owner].message_counts().get(guild.id) == 50

        await eventually(conserved, timeout=20)
        assert guild.id not in stack.pods[other].message_counts()
        await eventually(lambda: _clean(stack), timeout=10)


async def _is(stack, mid, state):
    return await _state(stack, mid) == state


async def _clean(stack):
    return (await stack.verify())["clean"]


async def test_scale_out_from_two_to_three_pods_under_traffic(tmp_path, pg_schema):
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=8, shard_count=4) as stack:
        guilds = [str(g) for g in stack.world.guilds]
        async with stack.http.post(
            f"{stack.sim.url}/control/messages", json={"guild_ids": guilds, "count": 20}
        ) as r:
            assert (await r.json())["sent"] == 160
        await eventually(lambda: _total(stack, 160), timeout=15)

        third = pod_process("gateway-2", stack.config.url, stack.sim, tmp_path)
        stack.pods["gateway-2"] = third
        third.start()
        await stack.wait_ready("gateway-2")
        await stack.converge()
        table = stack.proxy.tables.table
        assert table.shards_for("gateway-2") == ()  # joining moved nothing: data moves by plan
        assert len(table.shard_pins) == 4

        async with stack.http.post(
            f"{stack.config.url}/v1/plans", json={"epsilon": 0.05}, headers=A
        ) as r:
            assert r.status == 201, await r.text()
            plan = await r.json()
        assert any(m["to"] == "gateway-2" for m in plan["moves"])
        assert plan["current_assignment"]["shards"]

        stop, sent = asyncio.Event(), []

        async def traffic():
            n = 0
            while not stop.is_set():
                async with stack.http.post(
                    f"{stack.sim.url}/control/messages",
                    json={"guild_id": guilds[n % 8], "count": 5},
                ) as r:
                    sent.append((await r.json())["sent"])
                n += 1
                await asyncio.sleep(0.02)

        streamer = asyncio.create_task(traffic())
        async with stack.http.post(
            f"{stack.config.url}/v1/plans/{plan['id']}/apply", json={"concurrency": 2}, headers=A
        ) as r:
            assert r.status == 202, await r.text()
        async with stack.http.post(
            f"{stack.config.url}/v1/plans/{plan['id']}/apply", json={}, headers=A
        ) as r:
            assert r.status == 409  # one plan at a time, and not twice

        async def finished():
            async with stack.http.get(f"{stack.config.url}/v1/plans/{plan['id']}", headers=A) as r:
                return (await r.json())["state"] in ("done", "failed")

        await eventually(finished, timeout=90, interval=0.2)
        await asyncio.sleep(0.5)
        stop.set()
        await streamer
        async with stack.http.get(f"{stack.config.url}/v1/plans/{plan['id']}", headers=A) as r:
            assert (await r.json())["state"] == "done"
        await stack.converge()
        await eventually(lambda: _total(stack, 160 + sum(sent)), timeout=20)
        assert stack.pods["gateway-2"].message_counts()  # the new pod holds data now
        verdict = await stack.verify()
        assert verdict["clean"], verdict
        for gid in stack.world.guilds:  # every guild answers, from its owner
            reply = await stack.interact(
                gid,
                "modreport",
                options={"user": ["user", list(stack.world.guilds[gid].members)[2]]},
            )
            assert reply["status"] == 200 and json.loads(reply["body"])["type"] in (4, 5)


async def _total(stack, expected):
    await stack.flush_pods()
    return (
        sum(sum(p.message_counts().values()) for p in stack.pods.values() if p.proc is not None)
        == expected
    )
