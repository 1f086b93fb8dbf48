"""PostgreSQL goes away for a minute and comes back: no healthy pod is marked offline
for heartbeats the database could not take, and writes resume within 2 s.

The config service runs on a private PostgreSQL (tests/pgserver.py) that this test stops
and starts; the pods are simulated by HTTP heartbeats (the pods are not what is tested)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import aiohttp
import pytest
from conftest import ADMIN, eventually, running_config
from pgserver import PgServer

A = {"Authorization": f"Bearer {ADMIN}"}
PODS = ["gateway-0", "gateway-1", "gateway-2"]
# CI cuts PostgreSQL for 15 s (longer than a heartbeat timeout); the acceptance run is
# MODBOT_TEST_PG_OUTAGE=60 (its figure is in benchmarks/RESULTS.md)
OUTAGE_SECONDS = float(os.environ.get("MODBOT_TEST_PG_OUTAGE", "15"))
HEARTBEAT_TIMEOUT = 3.0


@pytest.fixture
def own_pg():
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        pytest.fail("initdb/pg_ctl are not installed")
    server = PgServer()
    server.init()
    server.start()
    yield server
    server.destroy()


@pytest.mark.slow
@pytest.mark.timeout(OUTAGE_SECONDS + 120)
async def test_a_postgres_outage_marks_no_pod_offline_and_writes_resume_within_2s(own_pg):
    async with (
        running_config(own_pg.url, heartbeat_timeout=HEARTBEAT_TIMEOUT) as svc,
        aiohttp.ClientSession(headers=A, timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        for name in PODS:
            async with http.put(f"{svc.url}/v1/pods/{name}", json={"url": "http://x:1"}) as r:
                assert r.status == 200, await r.text()
        beats: list[tuple[float, str, int, float]] = []  # (at, pod, status, seconds taken)
        stop = asyncio.Event()

        async def heartbeats(name: str) -> None:
            while not stop.is_set():
                started = time.time()
                try:
                    async with http.post(
                        f"{svc.url}/v1/pods/{name}/heartbeat", json={"load": {}}
                    ) as r:
                        status = r.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                beats.append((started, name, status, time.time() - started))
                await asyncio.sleep(0.5)  # the pods' heartbeat period

        beaters = [asyncio.create_task(heartbeats(n)) for n in PODS]

        async def states() -> dict[str, str]:
            async with http.get(f"{svc.url}/v1/pods") as r:
                return {p["name"]: p["state"] for p in (await r.json())["pods"]}

        await eventually(lambda: _all_active(states()), timeout=10)
        own_pg.stop()
        outage_began = time.time()
        await asyncio.sleep(OUTAGE_SECONDS)  # the sleep is the test: the outage
        during = [b for b in beats if b[0] > outage_began + 1]
        assert during and all(b[2] == 503 for b in during), during[-3:]
        assert max(b[3] for b in during) < 6  # refused promptly, not hung

        restored = own_pg.start()

        async def written() -> float | None:  # an operator write, as soon as it succeeds
            async with http.put(
                f"{svc.url}/v1/pins/424242424242424242", json={"pod": PODS[0]}
            ) as r:
                return time.time() - restored if r.status == 200 else None

        first_write = await eventually(written, timeout=10, interval=0.05)
        assert first_write <= 2.0, first_write
        print(f"outage {OUTAGE_SECONDS:.0f} s: first write {first_write:.3f} s after restore")

        # three heartbeat timeouts after the return: nobody was ever marked offline
        watch_until = time.time() + 3 * HEARTBEAT_TIMEOUT
        while time.time() < watch_until:
            assert set((await states()).values()) == {"active"}
            await asyncio.sleep(0.2)  # pacing: the whole watch is the test
        async with http.get(f"{svc.url}/v1/audit", params={"limit": "200"}) as r:
            actions = [(e["action"], e["outcome"]) for e in (await r.json())["entries"]]
        assert ("pod.offline", "ok") not in actions
        stop.set()
        await asyncio.gather(*beaters)

        # and a pod that really stops heartbeating is still marked offline
        stop.clear()
        beaters = [asyncio.create_task(heartbeats(n)) for n in PODS[1:]]
        await eventually(lambda: _offline(states(), PODS[0]), timeout=4 * HEARTBEAT_TIMEOUT)
        assert set((await states()).values()) == {"active", "offline"}
        stop.set()
        await asyncio.gather(*beaters)


async def _all_active(states) -> bool:
    return set((await states).values()) == {"active"}


async def _offline(states, name) -> bool:
    return (await states)[name] == "offline"
