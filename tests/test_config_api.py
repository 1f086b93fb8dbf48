import asyncio
import json

import aiohttp
import pytest
from conftest import ADMIN, READ, AppServer, running_config

from modbot_ring import RoutingTable

GID = 81384788765712384
A = {"Authorization": f"Bearer {ADMIN}"}
R = {"Authorization": f"Bearer {READ}"}


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
        await asyncio.sleep(0.2)  # the sleep is the test: the long poll waits for this
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
        ("PUT", f"/v1/pins/{GID}", {"pod": "ghost"}, 404, "unknown pod 'ghost'"),
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
    status, st, _ = await call(svc, "GET", "/v1/status", headers=R)
    before = {p["name"]: p["shards"] for p in st["pods"]}
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
    # draining holds what the pod has (shards pinned in place) until a plan moves it
    assert shards == before and shards["gateway-1"] > 0
    assert st["shard_pin_count"] == 4
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
    assert (entry["actor"], entry["action"], entry["outcome"]) == ("carol", "pin.set", "not_found")


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


# -- hostile input (issue 12): each of these was a 500 or was accepted ---------------------

TOO_BIG = "18446744073709551615"  # a valid unsigned snowflake, beyond every signed 64-bit store


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", f"/v1/guilds/{TOO_BIG}/route", None),
        ("GET", f"/v1/pins/{TOO_BIG}", None),
        ("PUT", f"/v1/pins/{TOO_BIG}", {"pod": "gateway-0"}),
        ("DELETE", f"/v1/pins/{TOO_BIG}", None),
        ("PUT", f"/v1/pins/{2**63}", {"pod": "gateway-0"}),
        ("POST", "/v1/pins/bulk", {"set": [{"guild_id": TOO_BIG, "pod": "gateway-0"}]}),
        ("POST", "/v1/pins/bulk", {"delete": [str(2**63)]}),
        ("POST", "/v1/migrations", {"guild_id": TOO_BIG, "to": "gateway-1"}),
        ("POST", "/v1/plans", {"restore": {"pins": {TOO_BIG: "gateway-0"}}}),
    ],
)
async def test_guild_ids_beyond_signed_64_bit_are_a_400(svc, method, path, body):
    status, data, _ = await call(svc, method, path, json=body)
    assert status == 400 and "2**63-1" in data["error"], data
    _, pins, _ = await call(svc, "GET", "/v1/pins", headers=R)
    assert pins["pins"] == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:8701\r\nX-Injected: 1",
        "http://10.0.0.5:8701\n",
        "http://gateway 0:8701",
        "http://user:pw@10.0.0.5:8701",
        "http://@10.0.0.5:8701",
        "http://10.0.0.5:8701/?x=1",
        "http://10.0.0.5:8701#frag",
        "http://10.0.0.5:8701/../admin",
        "http://10.0.0.5:0",
        "http://10.0.0.5:65536",
        "http://10.0.0.5:",
        "http://10.0.0.5:87a1",
        "http://:8701",
        "http://",
        "https://[::1:8443",
        "https://[zz::1]:8443",
        "http://gatéway:8701",
        "http://-bad-.host:1",
        "ftp://10.0.0.5:21",
        "gopher://x",
        "10.0.0.5:8701",
        "",
    ],
)
async def test_pod_urls_are_validated_at_registration(svc, url):
    status, data, _ = await call(svc, "PUT", "/v1/pods/gateway-5", json={"url": url})
    assert status == 400 and "url" in data["error"], (url, data)
    _, pods, _ = await call(svc, "GET", "/v1/pods", headers=R)
    assert "gateway-5" not in {p["name"] for p in pods["pods"]}


@pytest.mark.parametrize(
    "url",
    [
        "http://gateway-5.gateway.modbot.svc.cluster.local:8701",
        "https://[::1]:8443",
        "http://127.0.0.1:9005/",
        "http://127.0.0.1:9005/pods/gateway-5",
        "HTTP://127.0.0.1:9005",
    ],
)
async def test_plain_pod_urls_are_accepted(svc, url):
    status, data, _ = await call(svc, "PUT", "/v1/pods/gateway-5", json={"url": url})
    assert status == 200, data
    _, pods, _ = await call(svc, "GET", "/v1/pods", headers=R)
    stored = {p["name"]: p["url"] for p in pods["pods"]}["gateway-5"]
    assert stored == url.rstrip("/")


@pytest.mark.parametrize(
    "method, path, extra",
    [
        ("GET", "/v1/migrations/" + "9" * 20, {}),
        ("POST", "/v1/migrations/" + "9" * 20 + "/cancel", {}),
        ("GET", "/v1/migrations/-1", {}),
        ("GET", "/v1/audit?before=" + "9" * 30, {}),
        ("GET", "/v1/audit?before=" + "9" * 5000, {}),
        ("GET", "/v1/audit?limit=%C2%B2", {}),
        ("GET", "/v1/pins?after=" + "9" * 30, {}),
        ("GET", "/v1/pins?limit=-5", {}),
        ("PUT", f"/v1/pins/{GID}", {"If-Match": "9" * 5000}),
        ("PUT", f"/v1/pins/{GID}", {"If-Match": '"²"'}),
        ("PUT", f"/v1/pins/{GID}", {"If-Match": str(2**63)}),
    ],
)
async def test_oversized_and_odd_numbers_are_a_400(svc, method, path, extra):
    status, data, _ = await call(
        svc, method, path, headers={**A, **extra}, json={"pod": "gateway-0"}
    )
    assert status == 400 and ("integer" in data["error"] or "version" in data["error"]), data


@pytest.mark.parametrize(
    "restore",
    [
        "all of it",
        [],
        {"shards": "x"},
        {"pins": ["1"]},
        {"shards": {"zero": "gateway-0"}},
        {"shards": {"-1": "gateway-0"}},
        {"shards": {"0": 7}},
        {"pins": {"12x": "gateway-0"}},
        {"pins": {str(GID): None}},
        {"shards": {}, "extra": 1},
    ],
)
async def test_plan_restore_checks_the_saved_assignment(svc, restore):
    status, data, _ = await call(svc, "POST", "/v1/plans", json={"restore": restore})
    assert status == 400 and "restore" in data["error"], data


async def test_deeply_nested_json_is_a_400(svc):
    deep = b"[" * 200_000 + b"]" * 200_000
    for method, path in (("PUT", f"/v1/pins/{GID}"), ("POST", "/v1/plans")):
        status, data, _ = await call(
            svc, method, path, data=deep, headers={**A, "Content-Type": "application/json"}
        )
        assert status == 400 and "not valid JSON" in data["error"]


async def test_verify_reports_a_pod_that_answers_nonsense(svc):
    """A registered URL that answers garbage is a finding in the report, not a 500."""
    from aiohttp import web

    answers = {"/internal/guilds": web.json_response({"guilds": ["not-an-id", 2**64]})}

    async def nonsense(request: web.Request) -> web.Response:
        return answers.get(request.path, web.json_response({"error": "nope"}, status=401))

    async with AppServer({("GET", "/{tail:.*}"): nonsense}) as url:
        for body in ({"guilds": ["not-an-id"]}, [1, 2], {"guilds": [str(2**64)]}, None):
            answers["/internal/guilds"] = (
                web.json_response(body) if body is not None else web.Response(status=403)
            )
            status, _, _ = await call(svc, "PUT", "/v1/pods/gateway-0", json={"url": url})
            assert status == 200
            status, data, _ = await call(svc, "GET", "/v1/verify", headers=R)
            assert status == 200 and not data["clean"], data
            assert any("gateway-0" in p for p in data["problems"]), data


@pytest.mark.parametrize(
    "header",
    [
        "Bearer été",
        "Bearer \u2603",
        "Basic " + "é" * 8,
        "Bearer",
        "Bearer  ",
        "bearer " + ADMIN + " extra",
        "Bearer " + "x" * 5_000,
    ],
)
async def test_odd_authorization_headers_are_a_401_json(svc, header):
    for method, path in (("GET", "/v1/table"), ("PUT", f"/v1/pins/{GID}"), ("GET", "/ops")):
        async with svc.http.request(
            method,
            svc.url + path,
            headers={"Authorization": header.encode("utf-8").decode("latin-1")},
            json={"pod": "gateway-0"},
        ) as r:
            assert r.status == 401, (path, header[:20], await r.text())
            assert "error" in await r.json()


async def test_non_ascii_basic_password_on_the_ops_page_is_a_401(svc):
    import base64

    creds = base64.b64encode("ops:pässwörd".encode()).decode()
    async with svc.http.get(svc.url + "/ops", headers={"Authorization": f"Basic {creds}"}) as r:
        assert r.status == 401
    creds = base64.b64encode(f"ops:{ADMIN}".encode()).decode()
    async with svc.http.get(svc.url + "/ops", headers={"Authorization": f"Basic {creds}"}) as r:
        assert r.status == 200


async def test_the_bearer_scheme_is_case_insensitive(svc):
    status, _, _ = await call(
        svc, "GET", "/v1/table/version", headers={"Authorization": f"bearer {READ}"}
    )
    assert status == 200
