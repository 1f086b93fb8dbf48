"""Readiness bodies tell the truth about the config service while Redis serves the table."""

from __future__ import annotations

import aiohttp
from conftest import ADMIN, PG_URL, READ, REDIS_URL, TcpCut, eventually, running_config

from modbot_client import table_client
from modbot_client.table_client import RoutingTableClient

A = {"Authorization": f"Bearer {ADMIN}"}


async def test_config_service_flag_is_ok_while_redis_serves_and_down_when_it_goes(
    pg_schema, redis_prefix, monkeypatch
):
    monkeypatch.setattr(table_client, "CONFIG_CHECK_INTERVAL", 0.5, raising=False)
    async with (
        running_config(PG_URL, pg_schema, redis_url=REDIS_URL, redis_prefix=redis_prefix) as svc,
        aiohttp.ClientSession() as http,
    ):
        async with http.put(
            f"{svc.url}/v1/pods/gateway-0", json={"url": "http://x:1"}, headers=A
        ) as r:
            assert r.status == 200
        port = int(svc.url.rsplit(":", 1)[1])
        cut = TcpCut("127.0.0.1", port)
        await cut.start()
        client = RoutingTableClient(
            redis_url=REDIS_URL,
            redis_prefix=redis_prefix,
            config_url=f"http://127.0.0.1:{cut.port}",
            read_token=READ,
            poll_interval=0.1,
        )
        await client.start(timeout=5)
        try:
            await eventually(lambda: client.status()["redis"] == "ok", timeout=5)
            await eventually(lambda: client.status()["config_service"] == "ok", timeout=3)
            await cut.cut()  # the config service becomes unreachable; Redis still serves
            await eventually(lambda: client.status()["config_service"] == "down", timeout=5)
            assert client.status()["redis"] == "ok" and client.table is not None
            await cut.heal()
            await eventually(lambda: client.status()["config_service"] == "ok", timeout=5)
        finally:
            await client.stop()
            await cut.cut()
