"""Simulated gateway pods for the scaling-decisions tests: they register, hold no data,
and send heartbeats whose load follows the current routing table, from per-guild rates
the test sets (a Zipf spread, hot spots, a balanced overload...).

Only the pods are simulated; the config service, its database and the balancer are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import aiohttp
from aiohttp import web
from conftest import ADMIN, free_port

from modbot_ring import RoutingTable, shard_for

TOP = 20


class SimulatedPods:
    def __init__(self, config_url: str, names: list[str], guilds: int, seed: int = 7) -> None:
        self.config_url = config_url
        self.names = list(names)
        rnd = random.Random(seed)
        ids = [rnd.getrandbits(60) | (1 << 42) for _ in range(guilds)]
        self.loads: dict[int, float] = {g: 1.0 / (rank + 1) ** 0.6 for rank, g in enumerate(ids)}
        self.port = free_port()
        self.http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self.table: RoutingTable | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/pods/{name}"

    async def start(self) -> None:
        app = web.Application()

        async def held(_: web.Request) -> web.Response:
            return web.json_response({"guilds": []})  # simulated pods store nothing

        app.router.add_get("/pods/{name}/internal/guilds", held)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"})
        for name in self.names:
            await self.register(name)
        await self.refresh_table()
        self._task = asyncio.create_task(self._beat())

    async def register(self, name: str) -> None:
        assert self.http is not None
        async with self.http.put(
            f"{self.config_url}/v1/pods/{name}", json={"url": self.url(name)}
        ) as r:
            assert r.status in (200, 201), await r.text()
        if name not in self.names:
            self.names.append(name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.http is not None:
            await self.http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def refresh_table(self) -> RoutingTable:
        assert self.http is not None
        async with self.http.get(f"{self.config_url}/v1/table") as r:
            self.table = RoutingTable.from_json(await r.read())
        return self.table

    def pod_loads(self) -> dict[str, float]:
        assert self.table is not None
        out = dict.fromkeys(self.names, 0.0)
        for g, v in self.loads.items():
            out[self.table.owner(g)] += v
        return out

    def normalize(self, per_pod: float) -> None:
        """Scale each pod's guilds so every pod carries ``per_pod``: balanced, Zipf inside."""
        totals = self.pod_loads()
        assert self.table is not None
        for g in self.loads:
            owner = self.table.owner(g)
            self.loads[g] *= per_pod / totals[owner]

    def heat(self, shards: set[int], factor: float) -> None:
        assert self.table is not None and self.table.shard_count
        for g in self.loads:
            if shard_for(g, self.table.shard_count) in shards:
                self.loads[g] *= factor

    async def heartbeat(self) -> None:
        table = await self.refresh_table()
        assert self.http is not None and table.shard_count
        names = list(self.names)
        owned: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
        for g, v in self.loads.items():
            owner = table.owner(g)
            if owner in owned:
                owned[owner].append((g, v))
        for name in names:
            ranked = sorted(owned[name], key=lambda kv: -kv[1])
            rest: dict[str, float] = {}
            for g, v in ranked[TOP:]:
                key = str(shard_for(g, table.shard_count))
                rest[key] = rest.get(key, 0.0) + v
            report = {
                "events_per_s": sum(v for _, v in ranked),
                "guilds": {str(g): v for g, v in ranked[:TOP]},
                "shards": rest,
                "at": 0.0,
            }
            async with self.http.post(
                f"{self.config_url}/v1/pods/{name}/heartbeat", json={"load": report}
            ) as r:
                assert r.status == 200, await r.text()

    async def _beat(self) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                await self.heartbeat()
            await asyncio.sleep(0.1)  # the heartbeat period, not a wait
