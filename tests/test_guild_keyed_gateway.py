"""Gateway sessions on a table keyed by guild id (``shard_count`` None): any pod may own
guilds on any shard, so every pod in the table opens every shard Discord recommends
(``GET /gateway/bot``) and processes only the guilds it owns (gateway_app/shards.py).
Before, such pods logged in and synced commands but never IDENTIFYed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually, free_port
from stack import running_stack

from discord_sim.server import RunningSim, start_sim
from gateway_app.bot import GatewayClient, RecentEvents
from gateway_app.discordpy import point_at
from gateway_app.shards import ShardSupervisor, gateway_bot_shards
from modbot_ring import Pod, PodState, RoutingTable

TOKEN = "sim-token"


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start_sim(max_concurrency=16)
    for i in range(4):
        running.sim.world.create_guild(f"g{i}")
    yield running
    await running.stop()


def supervisor(sim: RunningSim, api_url: str, token: str = TOKEN) -> ShardSupervisor:
    point_at(sim.api_url, sim.gateway_url)
    recent = RecentEvents()

    def make(shard_ids: list[int], count: int) -> GatewayClient:
        return GatewayClient(
            shard_ids=shard_ids, shard_count=count, handle=lambda *_: "written", recent=recent
        )

    return ShardSupervisor(
        "gateway-0",
        TOKEN,
        make,
        ready_timeout=20,
        bot_shard_count=gateway_bot_shards(api_url, token),
    )


def live(sim: RunningSim) -> list[tuple[int, ...]]:
    return sorted(tuple(s.shard) for s in sim.sim.sessions.values() if s.ws is not None)


async def test_a_pod_of_a_guild_keyed_table_opens_every_shard(sim: RunningSim) -> None:
    """Happy: in the table -> Discord's shards, all of them; draining still holds its
    pinned guilds (keeps them); out of the table -> none."""
    sup = supervisor(sim, sim.api_url)
    try:
        table = RoutingTable([Pod("gateway-0"), Pod("gateway-1")], version=1)
        sup.follow(table)
        await eventually(lambda: sup.converged(table), timeout=20)
        assert sup.bot_shard_count == 1 and sup.connected_shards == [0]
        assert live(sim) == [(0, 1)]
        draining = RoutingTable(
            [Pod("gateway-0", PodState.DRAINING), Pod("gateway-1")],
            pins={next(iter(sim.sim.world.guilds)): "gateway-0"},
            version=2,
        )
        sup.follow(draining)
        await eventually(lambda: sup.converged(draining), timeout=20)
        assert sup.connected_shards == [0]
        removed = RoutingTable([Pod("gateway-1")], version=3)
        sup.follow(removed)
        await eventually(lambda: sup.converged(removed) and not live(sim), timeout=20)
        assert sup.sessions == {}
        gateway_bot = [c for c in sim.sim.calls if c.path.endswith("/gateway/bot")]
        assert len([c for c in gateway_bot if c.method == "GET"]) >= 1
    finally:
        await sup.stop()


async def test_a_refused_token_opens_nothing_and_stops_cleanly(
    sim: RunningSim, caplog: pytest.LogCaptureFixture
) -> None:
    """Hostile: Discord answers 401 to /gateway/bot (wrong token): no session is opened on
    a guess, the pod keeps asking (logged), and stopping it ends the wait at once."""
    caplog.set_level(logging.WARNING, "modbot.gateway.shards")
    sup = supervisor(sim, sim.api_url, token="not-the-token")
    table = RoutingTable([Pod("gateway-0")], version=1)
    sup.follow(table)
    await eventually(lambda: "HTTP 401" in caplog.text, timeout=10)
    assert sup.sessions == {} and live(sim) == [] and not sup.converged(table)
    await asyncio.wait_for(sup.stop(), 5)


async def test_discord_unreachable_then_back_opens_the_shards(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fault: /gateway/bot cannot be reached when the table arrives; the pod retries with
    backoff and opens the shards once Discord answers on that address."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api/v10"
    running: RunningSim | None = None
    sup: ShardSupervisor | None = None
    try:
        point_at(api_url, f"ws://127.0.0.1:{port}/gw")
        recent = RecentEvents()

        def make(shard_ids: list[int], count: int) -> Any:
            return GatewayClient(
                shard_ids=shard_ids, shard_count=count, handle=lambda *_: "written", recent=recent
            )

        sup = ShardSupervisor(
            "gateway-0", TOKEN, make, bot_shard_count=gateway_bot_shards(api_url, TOKEN)
        )
        table = RoutingTable([Pod("gateway-0")], version=1)
        sup.follow(table)
        caplog.set_level(logging.WARNING, "modbot.gateway.shards")
        await eventually(lambda: "GET /gateway/bot failed" in caplog.text, timeout=10)
        assert sup.sessions == {}  # nothing listens yet: no guess
        running = await start_sim(port=port, max_concurrency=16)
        assert running.api_url == api_url
        await eventually(lambda: sup is not None and sup.converged(table), timeout=20)
        assert sup.connected_shards == [0]
    finally:
        if sup is not None:
            await sup.stop()
        if running is not None:
            await running.stop()


@pytest.mark.slow
async def test_guild_keyed_stack_processes_each_event_once(tmp_path: Any) -> None:
    """End to end (the reported bug): two pods on a guild-keyed table both IDENTIFY, and
    every message is stored once, by the guild's owner."""
    async with running_stack(
        tmp_path, f"sqlite:///{tmp_path}/config.db", pods=2, guilds=8, shard_count=None
    ) as st:

        async def all_connected() -> bool:
            for pod in st.pods.values():
                async with st.http.get(f"{pod.url}/readyz") as r:
                    if (await r.json()).get("shards") != [0]:
                        return False
            return True

        await eventually(all_connected, timeout=30, interval=0.2)
        guilds = [str(g) for g in st.world.guilds]
        async with st.http.post(
            f"{st.sim.url}/control/messages", json={"guild_ids": guilds, "count": 5}
        ) as r:
            assert (await r.json())["sent"] == 40

        async def stored() -> bool:
            await st.flush_pods()
            return sum(sum(p.message_counts().values()) for p in st.pods.values()) == 40

        await eventually(stored, timeout=30, interval=0.2)
        owners = {g: st.proxy.tables.table.owner(g) for g in st.world.guilds}
        for name, pod in st.pods.items():
            assert all(owners[g] == name for g in pod.message_counts())
        assert len({owners[g] for g in st.world.guilds}) == 2  # both pods own guilds
        for pod in st.pods.values():
            assert "Traceback" not in Path(pod.log_path).read_text(), pod.name
