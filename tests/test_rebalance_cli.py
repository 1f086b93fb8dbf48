"""The operator flow through the real console script: migrate, plan, apply, verify, rollback."""

import asyncio
import json

from conftest import ADMIN, PG_URL, eventually
from stack import CLI, pod_process, running_stack


async def cli(stack, *args):
    proc = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        "--config-url",
        stack.config.url,
        "--token",
        ADMIN,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_operator_rebalance_flow(tmp_path, pg_schema):
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=6, shard_count=4) as stack:
        guilds = [str(g) for g in stack.world.guilds]
        async with stack.http.post(
            f"{stack.sim.url}/control/messages", json={"guild_ids": guilds, "count": 10}
        ) as r:
            assert r.status == 200
        await eventually(lambda: _total(stack, 60), timeout=15)

        gid = guilds[0]
        source = stack.proxy.tables.table.owner(int(gid))
        target = "gateway-1" if source == "gateway-0" else "gateway-0"
        code, out, err = await cli(stack, "migrate", gid, "--to", target)
        assert code == 0 and f"guild {gid} is on {target}" in out and "writes paused" in out, err
        code, out, _ = await cli(stack, "verify")
        assert code == 0 and "clean" in out

        third = pod_process("gateway-2", stack.config.url, stack.sim, tmp_path)
        stack.pods["gateway-2"] = third
        third.start()
        await stack.wait_ready("gateway-2")
        await stack.converge()

        plan_file = tmp_path / "plan.json"
        code, out, err = await cli(stack, "plan", "-o", str(plan_file))
        assert code == 0 and "dry run: nothing moved" in out and "gateway-2" in out, err
        plan = json.loads(plan_file.read_text())
        assert plan["current_assignment"]["shards"] and plan["moves"]

        code, _, err = await cli(stack, "apply", str(plan_file))
        assert code == 2 and "--yes" in err and err.count("\n") == 1  # never without consent
        code, out, err = await cli(stack, "apply", str(plan_file), "--yes", "--concurrency", "2")
        assert code == 0 and "done" in out, err
        code, _, err = await cli(stack, "apply", str(plan_file), "--yes")
        assert code == 4 and "is done" in err  # a finished plan is not applied twice
        await stack.converge()
        assert stack.pods["gateway-2"].message_counts()
        code, out, _ = await cli(stack, "verify")
        assert code == 0

        code, out, err = await cli(stack, "rollback", str(plan_file), "--yes")
        assert code == 0, err
        await stack.converge()
        table = stack.proxy.tables.table
        for shard, owner in plan["current_assignment"]["shards"].items():
            assert table.shard_owner(int(shard)) == owner
        code, out, _ = await cli(stack, "verify")
        assert code == 0
        await eventually(lambda: _total(stack, 60), timeout=15)

        stale = tmp_path / "stale.json"
        code, _, _ = await cli(stack, "plan", "-o", str(stale))
        assert code == 0
        await stack.pin(int(guilds[1]), "gateway-2")  # the table moves on
        code, _, err = await cli(stack, "apply", str(stale), "--yes")
        assert code == 4 and "regenerate" in err

        code, _, err = await cli(stack, "apply", str(tmp_path / "missing.json"), "--yes")
        assert code == 2 and "cannot read" in err


async def _total(stack, expected):
    await stack.flush_pods()
    return (
        sum(sum(p.message_counts().values()) for p in stack.pods.values() if p.proc is not None)
        == expected
    )
