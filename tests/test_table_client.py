import aiohttp
import pytest
import redis.asyncio as aioredis
from conftest import (
    ADMIN,
    PG_URL,
    READ,
    REDIS_URL,
    TcpCut,
    add_pods,
    eventually,
    nowhere,
    running_config,
)

from modbot_client.redis_keys import table_key
from modbot_client.table_client import NoTableYet, RoutingTableClient

GID = 81384788765712384
A = {"Authorization": f"Bearer {ADMIN}"}


async def pin(http, url, pod, gid=GID):
    async with http.put(f"{url}/v1/pins/{gid}", json={"pod": pod}, headers=A) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["version"]


async def test_redis_pubsub_propagates_a_pin_in_milliseconds(pg_schema, redis_prefix):
    async with (
        running_config(PG_URL, pg_schema, redis_url=REDIS_URL, redis_prefix=redis_prefix) as svc,
        aiohttp.ClientSession() as http,
    ):
        await add_pods(svc.url, nowhere("gateway-0", "gateway-1"))
        client = RoutingTableClient(
            redis_url=REDIS_URL, redis_prefix=redis_prefix, poll_interval=30
        )
        await client.start(timeout=5)
        assert client.status()["redis"] == "ok"
        for pod in ("gateway-0", "gateway-1", "gateway-0"):
            version = await pin(http, svc.url, pod)
            # poll_interval=30: only pub/sub can deliver this in time
            await client.wait_for_version(version, timeout=1.0)
            assert client.owner(GID) == pod
        await client.stop()


async def test_a_lost_announcement_is_caught_by_the_version_poll(pg_schema, redis_prefix):
    async with running_config(
        PG_URL, pg_schema, redis_url=REDIS_URL, redis_prefix=redis_prefix
    ) as svc:
        await add_pods(svc.url, nowhere("gateway-0", "gateway-1"))
        client = RoutingTableClient(
            redis_url=REDIS_URL, redis_prefix=redis_prefix, poll_interval=0.2
        )
        await client.start(timeout=5)
        table = client.table.with_pin(GID, "gateway-1").evolve(version=client.version + 100)
        r = aioredis.from_url(REDIS_URL)
        await r.hset(
            table_key(redis_prefix), mapping={"version": table.version, "json": table.to_json()}
        )  # no PUBLISH
        await r.aclose()
        await eventually(lambda: client.version == table.version, timeout=3)
        assert client.owner(GID) == "gateway-1"
        await client.stop()


async def test_redis_down_keeps_the_last_table_falls_back_and_recovers(pg_schema, own_redis):
    prefix = "fault"
    async with (
        running_config(PG_URL, pg_schema, redis_url=own_redis.url, redis_prefix=prefix) as svc,
        aiohttp.ClientSession() as http,
    ):
        await add_pods(svc.url, nowhere("gateway-0", "gateway-1"))
        version = await pin(http, svc.url, "gateway-0")
        client = RoutingTableClient(
            redis_url=own_redis.url,
            redis_prefix=prefix,
            config_url=svc.url,
            read_token=READ,
            poll_interval=0.2,
        )
        await client.start(timeout=5)
        await client.wait_for_version(version, 2)

        own_redis.stop()
        await eventually(lambda: client.status()["redis"] == "down", timeout=5)
        assert client.status()["degraded"] and client.owner(GID) == "gateway-0"  # last good table

        version = await pin(
            http, svc.url, "gateway-1"
        )  # redis is down: only the config service knows
        await client.wait_for_version(version, 3)
        assert client.owner(GID) == "gateway-1"

        own_redis.start()
        await eventually(lambda: client.status()["redis"] == "ok", timeout=10)
        version = await pin(http, svc.url, "gateway-0")
        await client.wait_for_version(version, 3)
        assert client.owner(GID) == "gateway-0"
        # a stale pooled connection may fail once more after the restart: it settles by itself
        await eventually(lambda: not client.status()["degraded"], timeout=5)
        await client.stop()


async def test_embedded_mode_long_poll_without_redis(tmp_path):
    async with running_config(f"sqlite:///{tmp_path}/c.db") as svc, aiohttp.ClientSession() as http:
        await add_pods(svc.url, nowhere("gateway-0", "gateway-1"))
        client = RoutingTableClient(config_url=svc.url, read_token=READ, poll_interval=30)
        await client.start(timeout=5)
        version = await pin(http, svc.url, "gateway-1")
        await client.wait_for_version(version, 1.0)  # long-poll, not the 30 s poll
        assert client.owner(GID) == "gateway-1" and client.status()["redis"] == "disabled"
        await client.stop()


async def test_no_table_yet_is_explicit():
    client = RoutingTableClient(config_url="http://127.0.0.1:9")
    with pytest.raises(NoTableYet):
        client.owner(GID)
    with pytest.raises(ValueError):
        RoutingTableClient()


async def test_postgres_unreachable_writes_503_reads_still_served(pg_schema, redis_prefix):
    cut = TcpCut("127.0.0.1", 5432)
    await cut.start()
    url = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{cut.port}")
    async with (
        running_config(url, pg_schema, redis_url=REDIS_URL, redis_prefix=redis_prefix) as svc,
        aiohttp.ClientSession() as http,
    ):
        await add_pods(svc.url, nowhere("gateway-0", "gateway-1"))
        await pin(http, svc.url, "gateway-1")
        client = RoutingTableClient(
            redis_url=REDIS_URL,
            redis_prefix=redis_prefix,
            config_url=svc.url,
            read_token=READ,
            poll_interval=0.2,
        )
        await client.start(timeout=5)

        await cut.cut()
        async with http.put(f"{svc.url}/v1/pins/{GID}", json={"pod": "gateway-0"}, headers=A) as r:
            assert r.status == 503 and "unavailable" in (await r.json())["error"]
            assert r.headers["Retry-After"]
        async with http.get(
            f"{svc.url}/v1/table", headers={"Authorization": f"Bearer {READ}"}
        ) as r:
            assert r.status == 200  # the cached snapshot
        async with http.get(
            f"{svc.url}/v1/guilds/{GID}/route", headers={"Authorization": f"Bearer {READ}"}
        ) as r:
            assert (await r.json())["pod"] == "gateway-1"
        async with http.get(f"{svc.url}/readyz") as r:
            assert r.status == 503 and "unreachable" in (await r.json())["database"]
        assert client.owner(GID) == "gateway-1"

        await cut.heal()
        await eventually(lambda: _status(http, f"{svc.url}/readyz", 200), timeout=15)
        version = await pin(http, svc.url, "gateway-0")
        await client.wait_for_version(version, 3)
        await client.stop()
    await cut.cut()


async def _status(http, url, expected):
    async with http.get(url) as r:
        return r.status == expected
