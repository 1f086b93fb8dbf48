"""The seed's six flows, end to end, on one local stack with real PostgreSQL and Redis:
the Discord simulator, the config service (balancer on), the proxy, and gateway pods as
real processes, one of them backed up by Litestream.

The tests run in order and share the stack, as the flows share a cluster."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
import redis
from conftest import ADMIN, PG_URL, REDIS_URL, eventually
from litestream import Litestream
from stack import A, pod_process, running_stack

from config_store.balancer import BalancerSettings
from modbot_ring import BalancePolicy

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seed")
    schema, prefix = f"t_{uuid.uuid4().hex[:12]}", f"t{uuid.uuid4().hex[:10]}"
    # the balancer proposes (never applies) and reacts at once only to a pod that joins
    # (no cool-down: flow 5 applies one plan and then expects the next to move freely)
    balance = BalancerSettings(
        mode="propose", interval=0.5, policy=BalancePolicy(hold_down=3600, cooldown=0)
    )
    try:
        async with running_stack(
            tmp,
            PG_URL,
            schema,
            pods=2,
            guilds=16,
            shard_count=8,
            redis_url=REDIS_URL,
            redis_prefix=prefix,
            balance=balance,
        ) as s:
            s.redis_prefix = prefix
            yield s
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()


async def send(stack, guild_ids, count: int) -> int:
    async with stack.http.post(
        f"{stack.sim.url}/control/messages",
        json={"guild_ids": [str(g) for g in guild_ids], "count": count},
    ) as r:
        return int((await r.json())["sent"])


def guilds_by_owner(stack) -> dict[str, list[int]]:
    table = stack.proxy.tables.table
    out: dict[str, list[int]] = {}
    for gid in stack.world.guilds:
        out.setdefault(table.owner(gid), []).append(gid)
    return out


async def stored(stack, pod: str, gid: int) -> int:
    await stack.flush_pods()
    return stack.pods[pod].message_counts().get(gid, 0)


async def test_1_discord_events_are_stored_on_their_owners(stack):
    by_owner = guilds_by_owner(stack)
    a, b = by_owner["gateway-0"][0], by_owner["gateway-1"][0]
    assert await send(stack, [a, b], 100) == 200
    for pod, gid in (("gateway-0", a), ("gateway-1", b)):
        await eventually(lambda pod=pod, gid=gid: _is(stored(stack, pod, gid), 100), timeout=20)
    assert stack.pods["gateway-0"].message_counts().get(b, 0) == 0
    assert stack.pods["gateway-1"].message_counts().get(a, 0) == 0


async def _is(coro, expected) -> bool:
    return (await coro) == expected


async def test_2_the_dashboard_renders_the_owners_data(stack):
    gid = guilds_by_owner(stack)["gateway-1"][0]
    async with stack.http.get(f"{stack.proxy.url}/guild/{gid}/dashboard") as r:
        page = await r.text()
        assert r.status == 200 and r.headers["X-Modbot-Pod"] == "gateway-1"
    assert "gateway-1" in page and "100 messages" in page and "<svg" in page


async def test_3_a_signed_setup_webhook_updates_the_owners_settings(stack):
    guild = stack.world.guilds[guilds_by_owner(stack)["gateway-0"][1]]
    role = next(r for r in guild.roles if r != guild.id)
    reply = await stack.interact(
        guild.id,
        "setup",
        options={"moderator_role": ["role", role], "mod_log": ["channel", list(guild.channels)[1]]},
    )
    assert reply["status"] == 200 and reply["elapsed_ms"] < 3000
    assert json.loads(reply["body"])["type"] == 4
    settings = stack.pods["gateway-0"].rows(
        "SELECT settings FROM guilds WHERE guild_id = ?", (guild.id,)
    )
    assert json.loads(settings[0][0])["moderator_role"] == str(role)


async def test_4_a_guild_moves_while_messages_flow_and_nothing_is_lost(stack):
    gid = guilds_by_owner(stack)["gateway-0"][0]
    before = await stored(stack, "gateway-0", gid)
    stop = asyncio.Event()
    sent: list[int] = []

    async def stream() -> None:
        while not stop.is_set():
            sent.append(await send(stack, [gid], 10))
            await asyncio.sleep(0.01)  # the stream's pace

    streamer = asyncio.create_task(stream())
    done = await stack.migrate_midstream(gid, "gateway-1", sent)
    stop.set()
    await streamer
    assert done["state"] == "done"
    total = before + sum(sent)
    await eventually(lambda: _is(stored(stack, "gateway-1", gid), total), timeout=20)
    assert await stored(stack, "gateway-0", gid) == 0


async def apply_plan(stack, plan_id: str) -> None:
    """``modbot-ring apply <id> --yes``, as an operator runs it, then wait for the pods."""
    pod = next(iter(stack.pods.values()))
    env = {"MODBOT_CONFIG_URL": stack.config.url, "MODBOT_ADMIN_TOKEN": ADMIN}
    proc = await asyncio.create_subprocess_exec(
        str(Path(pod.args[0])),
        "apply",
        plan_id,
        "--yes",
        env={**pod.env, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode()
    await stack.converge()


async def test_5_a_new_pod_gets_the_plan_that_fills_it(stack):
    # The pod that registered second joined a cluster holding data: its shards were held
    # in place and the balancer proposed the plan that fills it. An operator applies a
    # waiting plan; so does this test, so that the pod joining below is the only empty one.
    async with stack.http.get(f"{stack.config.url}/v1/plans", headers=A) as r:
        waiting = [
            p["id"]
            for p in (await r.json())["plans"]
            if p["actor"] == "balancer" and p["state"] == "proposed"
        ]
    for plan_id in waiting:
        await apply_plan(stack, plan_id)
    everyone = list(stack.world.guilds)
    await send(stack, everyone, 20)  # every guild has data and a rate now
    await eventually(lambda: _is(_guilds_stored(stack), len(everyone)), timeout=20, interval=0.2)
    pod = pod_process(
        "gateway-2",
        stack.config.url,
        stack.sim,
        stack.tmp,
        redis_url=REDIS_URL,
        redis_prefix=stack.redis_prefix,
    )
    stack.pods["gateway-2"] = pod
    pod.start()
    await stack.wait_ready("gateway-2")

    async def proposal():
        async with stack.http.get(f"{stack.config.url}/v1/plans", headers=A) as r:
            plans = [p for p in (await r.json())["plans"] if p["actor"] == "balancer"]
        # the one made for gateway-2 (a pod the ring left empty earlier may have had its own)
        waiting = [
            p
            for p in plans
            if p["state"] == "proposed" and "gateway-2" in {m["to"] for m in p["plan"]["moves"]}
        ]
        return waiting[-1] if waiting else None

    try:
        plan = await eventually(proposal, timeout=30, interval=0.2)
    except AssertionError:
        async with stack.http.get(f"{stack.config.url}/v1/status", headers=A) as r:
            status = await r.json()
        async with stack.http.get(f"{stack.config.url}/v1/plans", headers=A) as r:
            plans = [(p["id"], p["state"], p["actor"]) for p in (await r.json())["plans"]]
        raise AssertionError(f"no plan for gateway-2: {status.get('balance')!r} {plans}") from None
    moves = plan["plan"]["moves"]
    assert "gateway-2" in {m["to"] for m in moves} and "joined empty" in plan["plan"]["reason"]
    assert plan["plan"]["after"]["gateway-2"] >= 0.5 * plan["plan"]["fair"]["gateway-2"]
    assert plan["plan"]["peak_to_mean_after"] < plan["plan"]["peak_to_mean_before"]

    await apply_plan(stack, plan["id"])
    verify = await stack.verify()
    assert verify["clean"], verify

    # the pods' load reports: heaviest guilds with their bytes, the rest per shard
    async with stack.http.get(f"{stack.config.url}/v1/pods", headers=A) as r:
        reports = {p["name"]: p["load"] for p in (await r.json())["pods"]}
    busy = reports["gateway-1"]
    assert busy["events_per_s"] > 0 and busy["guilds"] and busy["db_bytes"] > 0
    assert set(busy["bytes"]) == set(busy["guilds"]) and isinstance(busy["shards"], dict)
    assert any(size > 0 for size in busy["bytes"].values())

    # load evens out: the new pod owns guilds and stores their messages
    by_owner = guilds_by_owner(stack)
    assert by_owner.get("gateway-2")
    target = by_owner["gateway-2"][0]
    await send(stack, [target], 30)
    await eventually(
        lambda: _is(stored(stack, "gateway-2", target), _expected(stack, target)), timeout=20
    )


def _expected(stack, gid: int):
    # everything ever sent to the guild now lives on its new owner
    return sum(stack.pods[p].message_counts().get(gid, 0) for p in stack.pods if stack.pods[p].proc)


async def test_6_a_lost_volume_is_restored_from_its_replica(stack):
    # the pod that owns the most guilds after the earlier flows' moves
    owned = guilds_by_owner(stack)
    name = max(owned, key=lambda p: len(owned[p]))
    pod = stack.pods[name]
    ls = Litestream(pod.database, stack.tmp / f"replica-{name}", stack.tmp)
    ls.replicate()
    try:
        gids = owned[name]
        await send(stack, gids, 20)
        await stack.flush_pods()
        await eventually(lambda: _settled(stack, pod), timeout=20)
        expected = sum(pod.message_counts().values())
        await asyncio.to_thread(
            ls.replicated, "SELECT count(*) FROM message_stats", expected, stack.tmp
        )
        before = pod.message_counts()

        pod.kill()  # the pod dies and its volume is lost
        ls.stop(kill=True)
        for suffix in ("", "-wal", "-shm"):
            Path(pod.database + suffix).unlink(missing_ok=True)

        restored = ls.restore()  # what the init container runs on an empty volume
        assert restored.returncode == 0, restored.stderr
        pod.start()
        await stack.wait_ready(name)
        assert pod.message_counts() == before
        gid = gids[0]
        async with stack.http.get(f"{stack.proxy.url}/guild/{gid}/dashboard") as r:
            assert r.status == 200 and f"{before[gid]} messages" in await r.text()
    finally:
        ls.stop()


async def _settled(stack, pod) -> bool:
    first = sum(pod.message_counts().values())
    await asyncio.sleep(0.3)  # the sleep is the test: no new rows in 0.3 s
    await stack.flush_pods()
    return first == sum(pod.message_counts().values())


async def _guilds_stored(stack) -> int:
    await stack.flush_pods()
    return len({g for p in stack.pods.values() if p.proc for g in p.message_counts()})
