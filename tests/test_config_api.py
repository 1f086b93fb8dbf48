import asyncio
import json

import aiohttp
import pytest
from conftest import ADMIN, READ, running_config

from modbot_ring import RoutingTable

GID = 81384788765712384
A = {"Authorization": f"Bearer {ADMIN}"}
R = {"Authorization": f"Bearer {READ}"}


@pytest.fixture
async def svc(database_url):
    url, schema = database_url
    async with running_config(url, schema) as service, aiohttp.ClientSession() as http:
        service.http = http
        for i in range(2):
            async with http.put(
                f"{service.url}/v1/pods/gateway-{i}",
                json={"url": f"http://127.0.0.1:{9000 + i}"},
                headers=A,
            ) as r:
                assert r.status == 200, await r.text()
        yield service


async def call(svc, method, path, *, headers=A, **kw):
    async with svc.http.request(method, svc.url + path, headers=headers, **kw) as r:
        body = await r.read()
        data = json.loads(body) if body and r.content_type == "application/json" else None
        return r.status, data, r.headers


async def test_pin_route_unpin_round_trip(svc):
    status, data, headers = await call(
        svc, "PUT", f"/v1/pins/{GID}", json={"pod": "gateway-1", "reason": "hot"}
    )
    assert status == 200 and headers["ETag"] == f'"{data["version"]}"'
    status, route, _ = await call(svc, "GET", f"/v1/guilds/{GID}/route", headers=R)
    assert status == 200 and route["pod"] == "gateway-1" and route["reason"] == "pin"
    assert route["url"] == "http://127.0.0.1:9001" and "pinned" in route["explain"]
    status, pin, _ = await call(svc, "GET", f"/v1/pins/{GID}", headers=R)
    assert pin["reason"] == "hot" and pin["actor"] == "admin"
    status, data, _ = await call(svc, "DELETE", f"/v1/pins/{GID}")
    assert status == 200
    status, _, _ = await call(svc, "GET", f"/v1/pins/{GID}", headers=R)
    assert status == 404


async def test_table_etag_304_and_long_poll(svc):
    status, _, headers = await call(svc, "GET", "/v1/table", headers=R)
    etag = headers["ETag"]
    status, _, _ = await call(svc, "GET", "/v1/table", headers={**R, "If-None-Match": etag})
    assert status == 304

    async def change_soon():
        await asyncio.sleep(0.2)
        await call(svc, "PUT", f"/v1/pins/{GID}", json={"pod": "gateway-0"})

    task = asyncio.create_task(change_soon())
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with svc.http.get(
        svc.url + "/v1/table?wait=5", headers={**R, "If-None-Match": etag}
    ) as r:
        assert r.status == 200
        table = RoutingTable.from_json(await r.read())
    assert loop.time() - started < 2 and table.pins == {GID: "gateway-0"}
    await task


@pytest.mark.parametrize(
    "method, path, headers",
    [
        ("GET", "/v1/table", {}),
        ("GET", "/v1/table", {"Authorization": "Bearer wrong"}),
        ("GET", "/v1/table", {"Authorization": ADMIN}),
        ("PUT", f"/v1/pins/{GID}", R),  # the read token cannot write
        ("PUT", f"/v1/pins/{GID}", {}),
        ("POST", "/v1/pods/gateway-0/drain", R),
    ],
)
async def test_wrong_or_missing_token_is_401_without_a_stack_trace(svc, method, path, headers):
    status, data, _ = await call(svc, method, path, headers=headers, json={"pod": "gateway-0"})
    assert status == 401 and "token" in data["error"] and "Traceback" not in data["error"]


@pytest.mark.parametrize(
    "method, path, body, status, message",
    [
        ("PUT", "/v1/pins/12x", {"pod": "gateway-0"}, 400, "invalid guild id '12x'"),
        ("PUT", "/v1/pins/0", {"pod": "gateway-0"}, 400, "must be positive"),
        ("GET", "/v1/guilds/-5/route", None, 400, "invalid guild id"),
        ("PUT", f"/v1/pins/{GID}", {"pod": "ghost"}, 409, "unknown pod 'ghost'"),
        (
            "PUT",
            f"/v1/pins/{GID}",
            {"pod": "gateway-0", "colour": "red"},
            400,
            "unknown field(s): colour",
        ),
        ("PUT", f"/v1/pins/{GID}", {}, 400, "missing field(s): pod"),
        ("PUT", f"/v1/pins/{GID}", {"pod": 7}, 400, "wrong type"),
        ("PUT", f"/v1/pins/{GID}", [1, 2], 400, "JSON object"),
        ("PUT", "/v1/pods/Bad_Name", {}, 400, "invalid pod name"),
        ("PUT", "/v1/pods/gateway-5", {"url": "ftp://x"}, 400, "http"),
        ("DELETE", f"/v1/pins/{GID}", None, 404, "not pinned"),
        ("POST", "/v1/pods/ghost/drain", None, 404, "no pod named"),
        (
            "POST",
            "/v1/pins/bulk",
            {"set": [{"guild_id": "1", "pod": "gateway-0"}], "delete": ["1"]},
            400,
            "both",
        ),
        ("POST", "/v1/pins/bulk", {"set": [{"guild_id": "x1", "pod": "gateway-0"}]}, 400, "set[0]"),
        ("PUT", "/v1/ring", {"shard_count": 0}, 400, "shard_count"),
        ("GET", "/v1/nowhere", None, 404, "Not Found"),
    ],
)
async def test_bad_input_gets_a_clear_json_error(svc, method, path, body, status, message):
    got, data, _ = await call(svc, method, path, json=body)
    assert got == status and message in data["error"], data


async def test_malformed_json_and_oversized_bodies(svc):
    status, data, _ = await call(
        svc,
        "PUT",
        f"/v1/pins/{GID}",
        data=b"{not json",
        headers={**A, "Content-Type": "application/json"},
    )
    assert status == 400 and "not valid JSON" in data["error"]
    big = json.dumps({"pod": "gateway-0", "reason": "x" * (1 << 20)})
    status, data, _ = await call(
        svc, "PUT", f"/v1/pins/{GID}", data=big, headers={**A, "Content-Type": "application/json"}
    )
    assert status == 413 and "larger than" in data["error"]
    status, _, _ = await call(svc, "GET", f"/v1/pins/{GID}", headers=R)
    assert status == 404  # nothing half-written


async def test_if_match_conflict_is_409(svc):
    _, data, _ = await call(svc, "GET", "/v1/table/version", headers=R)
    stale = data["version"]
    status, _, _ = await call(
        svc,
        "PUT",
        f"/v1/pins/{GID}",
        json={"pod": "gateway-0"},
        headers={**A, "If-Match": f'"{stale}"'},
    )
    assert status == 200
    status, data, _ = await call(
        svc,
        "PUT",
        f"/v1/pins/{GID}",
        json={"pod": "gateway-1"},
        headers={**A, "If-Match": f'"{stale}"'},
    )
    assert status == 409 and "re-read" in data["error"]
    status, data, _ = await call(
        svc,
        "PUT",
        f"/v1/pins/{GID}",
        json={"pod": "gateway-1"},
        headers={**A, "If-Match": "yesterday"},
    )
    assert status == 400


async def test_pods_drain_and_status(svc):
    status, _data, _ = await call(svc, "POST", "/v1/pods/gateway-1/drain")
    assert status == 200
    status, pods, _ = await call(svc, "GET", "/v1/pods", headers=R)
    assert {p["name"]: p["state"] for p in pods["pods"]} == {
        "gateway-0": "active",
        "gateway-1": "draining",
    }
    status, st, _ = await call(svc, "GET", "/v1/status", headers=R)
    assert status == 200 and st["shard_count"] == 4
    shards = {p["name"]: p["shards"] for p in st["pods"]}
    assert shards == {"gateway-0": 4, "gateway-1": 0}
    status, _, _ = await call(svc, "POST", "/v1/pods/gateway-1/activate")
    assert status == 200
    status, hb, _ = await call(
        svc, "POST", "/v1/pods/gateway-0/heartbeat", json={"load": {"events_per_s": 1.5}}
    )
    assert status == 200 and hb["state"] == "active"


async def test_audit_endpoint(svc):
    await call(
        svc,
        "PUT",
        f"/v1/pins/{GID}",
        json={"pod": "ghost"},
        headers={**A, "X-Modbot-Actor": "carol"},
    )
    _status, data, _ = await call(svc, "GET", "/v1/audit?limit=1", headers=R)
    entry = data["entries"][0]
    assert (entry["actor"], entry["action"], entry["outcome"]) == ("carol", "pin.set", "conflict")


async def test_openapi_describes_every_route(svc):
    status, doc, _ = await call(svc, "GET", "/v1/openapi.json", headers={})
    assert status == 200 and doc["openapi"].startswith("3.")
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in svc.app.router.routes()
        if route.resource.canonical.startswith("/v1/") and route.method != "HEAD"
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented


async def test_health_ready_metrics(svc):
    status, data, _ = await call(svc, "GET", "/healthz", headers={})
    assert status == 200 and data["ok"]
    status, data, _ = await call(svc, "GET", "/readyz", headers={})
    assert status == 200 and data["database"] == "ok"
    async with svc.http.get(svc.url + "/metrics") as r:
        text = await r.text()
    assert "modbot_config_requests_total" in text and "modbot_config_table_version" in text


async def test_pods_missing_heartbeats_go_offline(database_url):
    url, schema = database_url
    async with (
        running_config(url, schema, heartbeat_timeout=0.3) as svc,
        aiohttp.ClientSession() as http,
    ):
        async with http.put(
            f"{svc.url}/v1/pods/gateway-0", json={"url": "http://x:1"}, headers=A
        ) as r:
            assert r.status == 200
        from conftest import eventually

        async def state():
            async with http.get(f"{svc.url}/v1/pods", headers=R) as r:
                return (await r.json())["pods"][0]["state"]

        await eventually(lambda: _eq(state(), "offline"), timeout=5)
        async with http.post(f"{svc.url}/v1/pods/gateway-0/heartbeat", json={}, headers=A) as r:
            assert (await r.json())["state"] == "active"
        assert await state() == "active"


async def _eq(coro, value):
    return (await coro) == value
