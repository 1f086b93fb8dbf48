"""How should a pod change its shard set? One discord.py client per shard (what
``gateway_app/shards.py`` does) against the baseline: one ``AutoShardedClient`` whose shard
set is edited through discord.py internals (``launch_shard`` + its private shard map).

Per round and approach, against the in-process simulator (loopback, IDENTIFY pacing off so
that only the clients are measured): open 8 shards one after another and time each from
"open" to its ``on_shard_ready``; count REST calls per opened shard; read the process's RSS
growth; then close one shard's connection with 4014 (a non-resumable close code) and count
the shards still connected a second later. Rounds alternate the two approaches; the table
shows medians and the ratio per-shard / shared.

    .venv/bin/python benchmarks/shard_change_bench.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import statistics
import time
from typing import Any

from discord_sim.server import RunningSim, start_sim
from gateway_app.bot import GatewayClient, RecentEvents
from gateway_app.discordpy import point_at

SHARDS = 8
TOKEN = "sim-token"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def make(shard_ids: list[int]) -> GatewayClient:
    return GatewayClient(
        shard_ids=shard_ids,
        shard_count=SHARDS,
        handle=lambda g, e: "written",
        recent=RecentEvents(),
        identify_interval=0,
    )


async def until(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("not ready")
        await asyncio.sleep(0.005)


def live(sim: RunningSim) -> int:
    return sum(1 for s in sim.sim.sessions.values() if s.ws is not None)


async def kill_one(sim: RunningSim, shard: int) -> None:
    for session in sim.sim.sessions.values():
        if session.shard[0] == shard and session.ws is not None:
            await session.ws.close(code=4014, message=b"Disallowed intent(s).")


async def figures(sim: RunningSim, times: list[float], rest0: int, rss0: float) -> dict[str, float]:
    """One way of opening the shards, measured; then whether the other shards stay up
    when shard 3's session is closed with 4014."""
    result = {
        "open_ms": statistics.median(times) * 1000,
        "rest_per_shard": (len(sim.sim.calls) - rest0) / SHARDS,
        "rss_mb": rss_mb() - rss0,
    }
    await kill_one(sim, 3)
    await asyncio.sleep(1.0)  # time for the other shards to be hit, if they were
    result["alive_after_4014"] = live(sim)
    return result


async def per_shard(sim: RunningSim) -> dict[str, float]:
    clients: dict[int, GatewayClient] = {}
    tasks: list[asyncio.Task[None]] = []
    rest0, rss0, times = len(sim.sim.calls), rss_mb(), []
    for s in range(SHARDS):
        started = time.perf_counter()
        client = clients[s] = make([s])
        tasks.append(asyncio.create_task(client.start(TOKEN)))
        await until(lambda c=client, s=s: s in c.ready_shards)
        times.append(time.perf_counter() - started)
    result = await figures(sim, times, rest0, rss0)
    for client in clients.values():
        with contextlib.suppress(Exception):
            await client.close()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 5)
    return result


async def shared(sim: RunningSim) -> dict[str, float]:
    import yarl

    client = make([0])
    rest0, rss0 = len(sim.sim.calls), rss_mb()
    started = time.perf_counter()
    task = asyncio.create_task(client.start(TOKEN))
    await until(lambda: 0 in client.ready_shards)
    times = [time.perf_counter() - started]
    gateway = yarl.URL(sim.gateway_url)
    for s in range(1, SHARDS):
        started = time.perf_counter()
        assert client.shard_ids is not None
        client.shard_ids.append(s)  # what an edit of a live client's shard set needs
        client._connection.shard_ids = client.shard_ids
        await client.launch_shard(gateway, s)
        await until(lambda s=s: s in client.ready_shards)
        times.append(time.perf_counter() - started)
    result = await figures(sim, times, rest0, rss0)
    with contextlib.suppress(Exception):
        await client.close()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(task, 5)
    return result


async def main(rounds: int) -> None:
    sim = await start_sim(max_concurrency=16, session_start_total=1_000_000)
    sim.sim.limits.window = 0  # measure the clients, not Discord's pacing
    for s in range(SHARDS):
        for j in range(2):
            sim.sim.world.create_guild(
                f"g{s}-{j}", guild_id=((1_000_000_000_000 + s + SHARDS * j) << 22) | 1
            )
    point_at(sim.api_url, sim.gateway_url)
    results: dict[str, list[dict[str, float]]] = {"per-shard": [], "shared": []}
    try:
        for r in range(rounds):
            order = [("per-shard", per_shard), ("shared", shared)]
            if r % 2:
                order.reverse()
            for name, run in order:
                gc.collect()
                results[name].append(await run(sim))
                await asyncio.sleep(0.5)
    finally:
        await sim.stop()
    keys = ["open_ms", "rest_per_shard", "rss_mb", "alive_after_4014"]
    med = {n: {k: statistics.median(x[k] for x in rs) for k in keys} for n, rs in results.items()}
    print(f"{SHARDS} shards opened one by one, {rounds} interleaved rounds, medians")
    print(f"| approach | {' | '.join(keys)} |")
    print("| --- |" + " --- |" * len(keys))
    for name in ("shared", "per-shard"):
        print(f"| {name} | " + " | ".join(f"{med[name][k]:.2f}" for k in keys) + " |")
    ratio = {k: med["per-shard"][k] / med["shared"][k] if med["shared"][k] else 0 for k in keys}
    print("| per-shard / shared | " + " | ".join(f"{ratio[k]:.2f}x" for k in keys) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args().rounds))
