"""An interrupted plan resumes: kill -9 the config service during `modbot-ring apply` of
a 5-move plan, restart it, run `apply` again (what the README says): every move is done
and `verify` is clean. The plan's own version bumps are not someone else's change."""

from __future__ import annotations

import asyncio

import pytest
from conftest import eventually
from cpstack import stack_with_config_process
from stack import A, run_cli


async def plan_record(stack, plan_id: str) -> dict:
    async with stack.http.get(f"{stack.config.url}/v1/plans/{plan_id}", headers=A) as r:
        assert r.status == 200, await r.text()
        return await r.json()


@pytest.mark.slow
async def test_config_killed_during_a_five_move_plan_resumes_on_apply(tmp_path, pg_schema):
    async with stack_with_config_process(
        tmp_path, pg_schema, pods=2, guilds=10, extra=["--migration-step-delay", "0.3"]
    ) as (stack, config):
        guilds = [str(g) for g in stack.world.guilds]
        await stack.send_messages(guilds, 10)
        await eventually(lambda: stack.holds(100), timeout=20)

        table = stack.proxy.tables.table
        moving = {
            g: ("gateway-1" if table.owner(int(g)) == "gateway-0" else "gateway-0")
            for g in guilds[:5]
        }
        async with stack.http.post(
            f"{stack.config.url}/v1/plans",
            json={"restore": {"shards": {}, "pins": moving}},
            headers=A,
        ) as r:
            assert r.status == 201, await r.text()
            plan = await r.json()
        assert len(plan["moves"]) == 5

        first = asyncio.create_task(run_cli(config.url, "apply", plan["id"], "--yes"))

        async def one_done_one_running() -> bool:
            assert not first.done(), first.result()
            states = [m["state"] for m in (await plan_record(stack, plan["id"]))["migrations"]]
            return "done" in states and any(s in ("frozen", "imported") for s in states)

        await eventually(one_done_one_running, timeout=60, interval=0.05)
        config.kill()  # kill -9 mid-plan: one move done, the next one half-way
        code, _, err = await first
        assert code == 5 and err.count("\n") == 1, err  # the CLI says the service went away

        config.start()
        await config.wait_ready(stack.http)
        code, out, _ = await run_cli(config.url, "verify")  # not clean while moves are left
        assert code == 1 and f"plan {plan['id']} is interrupted" in out, out
        code, out, err = await run_cli(config.url, "apply", plan["id"], "--yes")
        assert code == 0 and f"plan {plan['id']}: done" in out, (code, out, err)

        record = await plan_record(stack, plan["id"])
        assert record["state"] == "done"
        done = {m["guild_id"] for m in record["migrations"] if m["state"] == "done"}
        assert done == set(moving)  # all five moves, each done once
        await stack.converge()
        table = stack.proxy.tables.table
        for gid, target in moving.items():
            assert table.owner(int(gid)) == target
        code, out, err = await run_cli(config.url, "verify")
        assert code == 0 and "clean" in out, out + err
        await eventually(lambda: stack.holds(100), timeout=20)  # no row lost or doubled
        for gid, target in moving.items():
            assert stack.pods[target].message_counts().get(int(gid)) == 10

        # someone else's change still makes a plan stale
        async with stack.http.post(
            f"{stack.config.url}/v1/plans",
            json={"restore": {"shards": {}, "pins": {guilds[6]: "gateway-0"}}},
            headers=A,
        ) as r:
            stale = await r.json()
        await stack.pin(int(guilds[7]), "gateway-1")
        code, _, err = await run_cli(config.url, "apply", stale["id"], "--yes")
        assert code == 4 and "regenerate" in err and "pin.set" in err, err
