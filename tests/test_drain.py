"""Safe drain: `modbot-ring drain POD --apply` holds the pod's placement, moves its data by
plan, and no dashboard ever shows a guild's data missing; `activate` undoes a drain;
`verify --repair` carries stranded rows to their owner through the migration path."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
from conftest import ADMIN, PG_URL, HoldingPods, add_pods, eventually, running_config
from cpstack import stack_with_config_process
from stack import run_cli

from modbot_ring import RoutingTable

MESSAGES = 10
COUNT = re.compile(r"(\d+) messages from")


async def sent_to_every_guild(stack) -> list[str]:
    """MESSAGES messages in every guild, all stored; the guild ids."""
    guilds = [str(g) for g in stack.world.guilds]
    await stack.send_messages(guilds, MESSAGES)
    await eventually(lambda: stack.holds(MESSAGES * len(guilds)), timeout=20)
    return guilds


@pytest.mark.slow
async def test_drain_plan_apply_verify_with_dashboards_never_missing_data(tmp_path, pg_schema):
    async with stack_with_config_process(tmp_path, pg_schema, pods=3, guilds=9) as (stack, config):
        guilds = await sent_to_every_guild(stack)
        table = stack.proxy.tables.table
        victim = max(stack.pods, key=lambda p: sum(table.owner(int(g)) == p for g in guilds))
        held = [g for g in guilds if table.owner(int(g)) == victim]
        assert held, "the victim pod must hold data for the test to mean anything"

        seen: list[tuple[str, int, str]] = []
        stop = asyncio.Event()

        async def dashboards() -> None:  # what a user sees through the proxy, all along
            while not stop.is_set():
                for gid in guilds:
                    async with stack.http.get(f"{stack.proxy.url}/guild/{gid}/dashboard") as r:
                        html = await r.text()
                    m = COUNT.search(html)
                    seen.append((gid, r.status, m.group(1) if m else html[:120]))
                await asyncio.sleep(0.05)  # pacing: a user reloading, not a flood

        poller = asyncio.create_task(dashboards())
        await eventually(lambda: len(seen) >= len(guilds), timeout=20)  # a round before the drain
        code, out, err = await run_cli(config.url, "drain", victim, "--apply", "--yes")
        assert code == 0 and "is draining" in out and "done" in out, (code, out, err)
        await stack.converge()
        after = len(seen)
        await eventually(lambda: len(seen) >= after + len(guilds), timeout=20)  # and one after
        stop.set()
        await poller

        shown = [s for s in seen if s[1] == 200]
        missing = [s for s in shown if s[2] != str(MESSAGES)]
        assert not missing, missing[:5]  # never "0 messages", never another pod's empty page
        assert len({s[0] for s in shown}) == len(guilds) and len(shown) > 3 * len(guilds), seen[:3]
        assert all(s[1] in (200, 503) for s in seen), {s[1] for s in seen}

        table = stack.proxy.tables.table
        assert table.pods[victim].state.value == "draining"
        assert table.shards_for(victim) == () and victim not in set(table.pins.values())
        assert not stack.pods[victim].message_counts()  # emptied
        code, out, _ = await run_cli(config.url, "verify")
        assert code == 0 and "clean" in out
        await eventually(lambda: stack.holds(MESSAGES * len(guilds)), timeout=20)

        # undo the drain: the pod is active again; nothing moves by itself
        code, out, err = await run_cli(config.url, "activate", victim)
        assert code == 0 and "is active" in out, err
        await stack.converge()
        assert stack.proxy.tables.table.pods[victim].state.value == "active"
        code, out, _ = await run_cli(config.url, "verify")
        assert code == 0

        # confused operator: unknown pod, and --apply without consent on a pipe
        code, _, err = await run_cli(config.url, "drain", "nope")
        assert code != 0 and err.count("\n") == 1 and "nope" in err
        code, _, err = await run_cli(config.url, "drain", victim, "--apply")
        assert code == 2 and "--yes" in err
        assert stack.proxy.tables.table.pods[victim].state.value == "active"  # nothing changed


@pytest.mark.slow
async def test_verify_repair_moves_stranded_rows_to_their_owner(tmp_path, pg_schema):
    async with stack_with_config_process(tmp_path, pg_schema, pods=2, guilds=4) as (stack, config):
        guilds = await sent_to_every_guild(stack)
        gid = int(guilds[0])
        holder = stack.proxy.tables.table.owner(gid)
        owner = "gateway-1" if holder == "gateway-0" else "gateway-0"
        await stack.pin(gid, owner)  # a bare pin re-routes without moving rows: stranded
        await stack.converge()
        code, out, _ = await run_cli(config.url, "verify")
        assert code == 1 and f"holds rows of guild {gid}" in out

        code, out, err = await run_cli(config.url, "verify", "--repair")
        assert code == 2 and "--yes" in err  # no change without consent

        code, out, err = await run_cli(config.url, "verify", "--repair", "--yes")
        assert code == 0 and "clean" in out, (code, out, err)
        await stack.converge()
        assert stack.proxy.tables.table.owner(gid) == owner  # the operator's pin stands
        await stack.flush_pods()
        assert stack.pods[owner].message_counts().get(gid) == MESSAGES
        assert gid not in stack.pods[holder].message_counts()


async def test_drain_on_a_guild_keyed_ring_pins_what_the_pod_holds(pg_schema):
    """Keyed by guild id there are no shards to hold: the guilds the pod holds rows of are
    pinned to it in the drain's own version, and the drain plan moves exactly those. A pod
    that cannot list its guilds is not drained (its rows would be stranded)."""
    pods = HoldingPods()
    a = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        running_config(PG_URL, pg_schema, shard_count=None, migration_token="m") as svc,
        aiohttp.ClientSession(headers=a) as http,
    ):
        try:
            for name in ("gateway-0", "gateway-1", "gateway-2"):
                await add_pods(svc.url, {name: await pods.start(name)})
            async with http.get(f"{svc.url}/v1/table") as r:
                table = RoutingTable.from_json(await r.read())
            ids = [(1 << 40) + 7919 * i for i in range(200)]
            mine = [g for g in ids if table.owner(g) == "gateway-1"][:3]
            quiet = next(g for g in ids if table.owner(g) == "gateway-1" and g not in mine)
            pods.holdings["gateway-1"] = [str(g) for g in mine]

            async with http.post(f"{svc.url}/v1/pods/gateway-1/drain") as r:
                assert r.status == 200, await r.text()
            async with http.get(f"{svc.url}/v1/table") as r:
                table = RoutingTable.from_json(await r.read())
            assert table.pods["gateway-1"].state.value == "draining"
            assert all(table.owner(g) == "gateway-1" for g in mine)  # held in place
            assert table.owner(quiet) != "gateway-1"  # no rows there: ring placement ends

            async with http.post(f"{svc.url}/v1/plans", json={"drain": "gateway-1"}) as r:
                assert r.status == 201, await r.text()
                plan = await r.json()
            assert sorted(int(m["id"]) for m in plan["moves"]) == sorted(mine)
            assert {m["kind"] for m in plan["moves"]} == {"guild"}
            assert {m["to"] for m in plan["moves"]} <= {"gateway-0", "gateway-2"}

            await pods.stop("gateway-0")  # gateway-0 stops answering
            async with http.post(f"{svc.url}/v1/pods/gateway-0/drain") as r:
                body = await r.json()
                assert r.status == 409 and "stranded" in body["error"], body
            async with http.post(f"{svc.url}/v1/plans", json={"drain": "gateway-2"}) as r:
                assert r.status == 409  # not draining: no plan
        finally:
            await pods.stop()


@pytest.mark.slow
async def test_a_guild_first_written_while_its_shard_moves_moves_with_it(tmp_path, pg_schema):
    """A shard move lists the source's guilds, moves them one by one, then flips the shard.
    A guild whose first rows land on the source after that listing (a quiet guild that
    wakes up mid-drain) must move too: left behind, the target would start a second copy
    of it when the shard flips, and `verify --repair` refuses to merge two copies."""
    extra = ["--migration-step-delay", "1.0"]  # a window of seconds between listing and flip
    async with stack_with_config_process(tmp_path, pg_schema, pods=3, guilds=12, extra=extra) as (
        stack,
        config,
    ):
        await stack.converge()
        table = stack.proxy.tables.table
        count = table.shard_count
        assert count
        gids = [int(g) for g in stack.world.guilds]
        by_shard: dict[tuple[str, int], list[int]] = {}
        for g in gids:
            by_shard.setdefault((table.owner(g), (g >> 22) % count), []).append(g)
        # a shard of one pod with two guilds: one written now, one only once the drain runs
        (victim, _), pair = max(by_shard.items(), key=lambda kv: len(kv[1]))
        assert len(pair) >= 2, by_shard  # 12 guilds on 4 shards: some shard holds two
        early, late = pair[0], pair[1]
        others = [g for g in gids if g != late]
        await stack.send_messages(others, MESSAGES)
        await eventually(lambda: stack.holds(MESSAGES * len(others)), timeout=30)
        assert stack.pods[victim].message_counts().get(early) == MESSAGES
        assert late not in stack.pods[victim].message_counts()

        drain = asyncio.create_task(run_cli(config.url, "drain", victim, "--apply", "--yes"))

        async def early_is_moving() -> bool:
            t = stack.proxy.tables.table
            return early in t.migrating or t.pins.get(early) not in (None, victim)

        await eventually(early_is_moving, timeout=60, interval=0.05)
        # the quiet guild wakes up: its first rows, on the victim
        await stack.send_messages([late], MESSAGES)
        code, out, err = await drain
        assert code == 0 and "done" in out, (code, out, err)
        await stack.converge()

        await eventually(lambda: stack.holds(MESSAGES * len(gids)), timeout=30)
        assert not stack.pods[victim].message_counts(), "the drained pod must hold nothing"
        code, out, err = await run_cli(config.url, "verify")
        assert code == 0 and "clean" in out, (code, out, err)
