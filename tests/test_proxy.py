"""The router proxy against real pods, a real config service and the simulator."""

import asyncio
import json
import random
import time

import aiohttp
import pytest
from aiohttp import web
from conftest import ADMIN, PG_URL, AppServer, eventually, free_port
from stack import INTERNAL, running_stack

from discord_sim.signing import Signer

A = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
async def stack(tmp_path, pg_schema):
    # pods heartbeat every 1 s; 5 s (not 2) so that a pod slowed by a busy machine is not
    # marked offline mid-test (a table change), and a killed one still is within 10 s
    async with running_stack(
        tmp_path, PG_URL, pg_schema, pods=2, guilds=8, shard_count=4, heartbeat_timeout=5.0
    ) as s:
        yield s


async def test_routing_headers_match_the_table_for_1000_random_guilds(stack):
    rnd = random.Random(7)
    gids = [rnd.getrandbits(62) | (1 << 40) for _ in range(1000)]
    for gid in gids[:10]:
        await stack.pin(gid, "gateway-1")
    await stack.converge()
    table = stack.proxy.tables.table
    sem = asyncio.Semaphore(16)

    async def check(gid):
        async with sem, stack.http.get(f"{stack.proxy.url}/api/guilds/{gid}/stats") as r:
            route = table.route(gid)
            assert r.status == 200, await r.text()
            assert r.headers["X-Modbot-Pod"] == route.pod
            assert r.headers["X-Modbot-Route"] == route.reason.value
            assert r.headers["X-Modbot-Table-Version"] == str(table.version)
            return route.reason.value

    reasons = await asyncio.gather(*(check(g) for g in gids))
    # the rest by shard: the ring's, or the even spread a data-free cluster gets at join
    assert reasons.count("pin") == 10
    assert reasons.count("ring") + reasons.count("shard") == 990


async def test_a_pin_change_is_followed_without_restart(stack):
    gid = next(iter(stack.world.guilds))
    async with stack.http.get(f"{stack.proxy.url}/api/guilds/{gid}/stats") as r:
        home = r.headers["X-Modbot-Pod"]
    away = next(p for p in stack.pods if p != home)
    await stack.pin(gid, away)

    async def moved():
        async with stack.http.get(f"{stack.proxy.url}/api/guilds/{gid}/stats") as r:
            return (
                r.status == 200
                and r.headers["X-Modbot-Pod"] == away
                and r.headers["X-Modbot-Route"] == "pin"
            )

    await eventually(moved, timeout=5)


async def test_signature_matrix(stack):
    gid = next(iter(stack.world.guilds))
    url = f"{stack.proxy.url}/webhooks/discord"
    sim = stack.sim.sim
    payload = sim.world.interaction(
        stack.world.guilds[gid],
        stack.world.guilds[gid].owner.id,
        "modreport",
        options={"user": ("user", list(stack.world.guilds[gid].members)[2])},
    )
    raw = json.dumps(payload).encode()

    async def post(body, headers):
        async with stack.http.post(url, data=body, headers=headers) as r:
            return r.status, await r.text()

    status, body = await post(raw, sim.signer.headers(raw))
    assert status == 200 and json.loads(body)["type"] == 4
    status, _ = await post(raw + b" ", sim.signer.headers(raw))  # tampered body
    assert status == 401
    status, _ = await post(raw, Signer("11" * 32).headers(raw))  # wrong key
    assert status == 401
    status, _ = await post(raw, {"Content-Type": "application/json"})  # missing headers
    assert status == 401
    status, _ = await post(raw, sim.signer.headers(raw, str(int(time.time()) - 400)))  # stale
    assert status == 401
    bad = {**sim.signer.headers(raw)}
    bad["X-Signature-Ed25519"] = "zz" * 64
    status, body = await post(raw, bad)
    assert status == 401 and "Traceback" not in body
    ping = json.dumps(
        {
            "id": "1",
            "type": 1,
            "application_id": str(sim.world.application_id),
            "token": "t",
            "version": 1,
        }
    ).encode()
    status, body = await post(ping, sim.signer.headers(ping))
    assert status == 200 and json.loads(body) == {"type": 1}
    garbage = b"{not json"
    status, _ = await post(garbage, sim.signer.headers(garbage))
    assert status == 400
    big = b'{"type": 2, "pad": "' + b"x" * (70 * 1024) + b'"}'
    status, _ = await post(big, sim.signer.headers(big))
    assert status == 413
    async with stack.http.get(f"{stack.proxy.admin_url}/metrics") as r:
        text = await r.text()
    assert 'modbot_proxy_webhook_verification_failures_total{reason="stale"} 1.0' in text
    assert 'modbot_proxy_webhook_verification_failures_total{reason="bad"} 2.0' in text


async def test_dashboard_renders_the_owners_data(stack):
    gid = next(iter(stack.world.guilds))
    await stack.send_messages([gid], 12)
    table = stack.proxy.tables.table
    owner = table.owner(gid)

    async def rendered():
        async with stack.http.get(f"{stack.proxy.url}/guild/{gid}/dashboard") as r:
            html = await r.text()
            return r.status == 200 and "12 messages" in html and html

    html = await eventually(rendered, timeout=10)
    assert f"<b>{owner}</b>" in html and "<svg" in html and "Not set up yet" in html
    async with stack.http.get(f"{stack.proxy.url}/guild/12x/dashboard") as r:
        assert r.status == 400 and "invalid guild id" in (await r.json())["error"]


async def test_a_killed_pod_gives_503_only_for_its_guilds_then_recovers(stack):
    table = stack.proxy.tables.table
    by_pod = {
        name: [g for g in stack.world.guilds if table.owner(g) == name] for name in stack.pods
    }
    for name, owned in by_pod.items():  # 4 shards may all hash to one pod: give each one
        if not owned:
            donor = max(by_pod, key=lambda n: len(by_pod[n]))
            gid = by_pod[donor].pop()
            await stack.pin(gid, name)
            owned.append(gid)
    await stack.converge()
    table = stack.proxy.tables.table
    assert all(table.owner(g) == name for name, gs in by_pod.items() for g in gs)
    victim = stack.pods["gateway-1"]
    victim.kill()
    results = {"gateway-0": [], "gateway-1": []}
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        for name, gids in by_pod.items():
            for gid in gids:
                async with stack.http.get(f"{stack.proxy.url}/api/guilds/{gid}/stats") as r:
                    results[name].append(r.status)
                    if r.status == 503:
                        assert (
                            int(r.headers["Retry-After"]) >= 1
                            and "gateway-1" in (await r.json())["error"]
                        )
        await asyncio.sleep(0.05)  # pacing: the 4 s of answers are the test
    assert set(results["gateway-0"]) == {200}
    assert set(results["gateway-1"]) == {503}
    async with stack.http.get(f"{stack.proxy.url}/guild/{by_pod['gateway-1'][0]}/dashboard") as r:
        assert r.status == 503 and "briefly unavailable" in await r.text()
    # the config service notices the missing heartbeats; the table says offline
    await eventually(
        lambda: stack.proxy.tables.table.pods["gateway-1"].state.value == "offline", timeout=10
    )
    victim.start()
    await stack.wait_ready("gateway-1")

    async def back():
        async with stack.http.get(
            f"{stack.proxy.url}/api/guilds/{by_pod['gateway-1'][0]}/stats"
        ) as r:
            return r.status == 200

    await eventually(back, timeout=15)


async def test_a_frozen_pod_still_gets_a_deferred_answer_in_time_then_the_real_one(stack):
    table = stack.proxy.tables.table
    guild = next(iter(stack.world.guilds.values()))
    owner = stack.pods[table.owner(guild.id)]
    owner.freeze()
    try:
        reply = await stack.interact(
            guild.id, "modreport", options={"user": ["user", list(guild.members)[2]]}
        )
    finally:
        owner.thaw()
    assert reply["status"] == 200 and json.loads(reply["body"]) == {
        "type": 5,
        "data": {"flags": 64},
    }
    assert reply["elapsed_ms"] < 3000
    token = reply["interaction"]["token"]

    def edited():
        return [
            c
            for c in stack.calls(
                f"/webhooks/{stack.world.application_id}/{token}/messages/@original"
            )
            if c["method"] == "PATCH"
        ]

    calls = await eventually(edited, timeout=15)
    assert "not set up yet" in calls[0]["body"]["content"]


async def test_dm_interactions_go_to_the_default_pod(stack):
    sim = stack.sim.sim
    guild = next(iter(stack.world.guilds.values()))
    payload = sim.world.interaction(
        guild, guild.owner.id, "modreport", options={"user": ("user", list(guild.members)[2])}
    )
    payload.pop("guild_id")
    payload.pop("guild")
    status, body, _ = await sim.send_webhook(f"{stack.proxy.url}/webhooks/discord", payload)
    assert status == 200 and json.loads(body)["type"] in (4, 5)


async def test_proxy_headers_follow_rfc9110_and_strip_spoofed_ones(stack):
    seen = {}

    async def echo(request):
        seen.update(request.headers)
        seen["body"] = (await request.read()).decode()
        resp = web.StreamResponse(
            headers={"X-Modbot-Pod": "forged", "Keep-Alive": "timeout=5", "X-Upstream": "yes"}
        )
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"chunk{i};".encode())
        await resp.write_eof()
        return resp

    async with AppServer(echo) as url:
        async with stack.http.put(
            f"{stack.config.url}/v1/pods/echo-pod",
            json={"url": url},
            headers=A,
        ) as r:
            assert r.status == 200
        gid = 4242424242424242
        await stack.pin(gid, "echo-pod")
        await stack.proxy.tables.wait_for_version(await stack.table_version(), 5)
        headers = {
            "X-Modbot-Pod": "evil",
            "X-Modbot-Route": "pin",
            "Connection": "X-Secret",
            "X-Secret": "drop me",
            "Authorization": "Bearer user-token",
            "X-Keep": "kept",
        }
        async with stack.http.post(
            f"{stack.proxy.url}/api/guilds/{gid}/things?q=1", data=b"payload", headers=headers
        ) as r:
            body = await r.text()
            assert r.status == 200 and body == "chunk0;chunk1;chunk2;"
            assert (
                r.headers["X-Modbot-Pod"] == "echo-pod"
                and r.headers["X-Upstream"] == "yes"
                and "Keep-Alive" not in r.headers
            )
        assert (
            "X-Modbot-Pod" not in seen and "X-Modbot-Route" not in seen and "X-Secret" not in seen
        )
        assert (
            seen["Authorization"] == f"Bearer {INTERNAL}"
            and seen["X-Keep"] == "kept"
            and seen["body"] == "payload"
        )
        assert seen["X-Forwarded-For"] == "127.0.0.1"


async def test_readyz_needs_a_table():
    from router_proxy.auth import AuthSettings
    from router_proxy.proxy import ProxySettings
    from router_proxy.server import start_proxy

    proxy = await start_proxy(
        ProxySettings(auth=AuthSettings(no_auth=True)),
        config_url=f"http://127.0.0.1:{free_port()}",
        wait_for_table=False,
    )
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{proxy.admin_url}/readyz") as r:
                assert r.status == 503
            async with http.get(f"{proxy.url}/api/guilds/5/x") as r:
                assert r.status == 503 and "no routing table" in (await r.json())["error"]
            async with http.get(f"{proxy.admin_url}/healthz") as r:
                assert r.status == 200
    finally:
        await proxy.stop()


async def test_interactions_are_checked_strictly_and_parsed_tolerantly(stack):
    """A signature proves who sent the bytes, not that they are what we expect: a bool
    type is not a PING, ids are strings, and a command missing fields Discord may omit
    (``attachment_size_limit``, ``version``) still runs instead of raising on the pod."""
    gid = next(iter(stack.world.guilds))
    guild = stack.world.guilds[gid]
    sim = stack.sim.sim
    url = f"{stack.proxy.url}/webhooks/discord"
    command = sim.world.interaction(
        guild, guild.owner.id, "modreport", options={"user": ("user", list(guild.members)[2])}
    )

    async def post(payload):
        raw = json.dumps(payload).encode()
        async with stack.http.post(url, data=raw, headers=sim.signer.headers(raw)) as r:
            return r.status, await r.json()

    for hostile in (
        {"type": True},
        {"type": 1.0},
        {"type": 9},
        {**command, "type": True},
        {**command, "id": int(command["id"])},
        {**command, "guild_id": "18446744073709551615"},
        {**command, "token": "../../channels/1/messages"},
        {**command, "data": ["not", "an", "object"]},
    ):
        status, body = await post(hostile)
        assert status == 400 and "error" in body, hostile
    sparse = {k: v for k, v in command.items() if k not in ("attachment_size_limit", "version")}
    status, body = await post(sparse)
    assert status == 200 and body["type"] in (4, 5), body
    assert stack.proxy.proxy.breaker_for(stack.proxy.tables.table.route(gid).pod).state == "closed"
