"""Table builds run in a worker thread: the config service's event loop keeps ticking.

``Store.table()`` is where every service-side table (and so every ring) is built; the
publisher's snapshot and the clients' JSON parse already run in threads."""

import asyncio
import time

import pytest
from conftest import eventually

from config_store.store import open_store
from modbot_ring import Pod, RoutingTable, hashring

PODS = 60


@pytest.fixture
async def store(database_url):
    url, schema = database_url
    s = await open_store(url, schema=schema)
    await s.initialize_ring(1024)
    for i in range(PODS):  # mixed weights: the slower, exact build
        await s.register_pod(f"gateway-{i}", None, 1.0 if i % 2 else 2.0, "test")
    yield s
    await s.close()


async def test_building_the_table_does_not_stall_the_event_loop(store):
    hashring._slot_table.cache_clear()
    start = time.perf_counter()
    RoutingTable(
        [Pod(f"gateway-{i}", weight=1.0 if i % 2 else 2.0) for i in range(PODS)],
        shard_count=1024,
    )
    build = time.perf_counter() - start
    hashring._slot_table.cache_clear()

    stalls: list[float] = []

    async def tick() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)  # the ticker's period: how late it wakes is the stall
            stalls.append(time.perf_counter() - before - 0.005)

    ticker = asyncio.create_task(tick())
    await eventually(lambda: stalls)  # ticking
    table = await store.table()
    ticks = len(stalls)
    await eventually(lambda: len(stalls) > ticks)  # the tick that waited for the build
    ticker.cancel()
    assert len(table.pods) == PODS and table.shard_owner(0) is not None
    # on the loop, one tick would wait for the whole build; in a thread, only for
    # the GIL between short C-level steps
    assert max(stalls) < build / 2, (max(stalls), build)
