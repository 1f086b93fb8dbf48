"""The proxy's API fast path at the byte level: framing, pipelining, keep-alive reuse,
a pod restarting under a pooled connection, and malformed input."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from conftest import ADMIN, AppServer
from stack import proxy_before

from router_proxy.auth import AuthSettings
from router_proxy.proxy import ProxySettings

A = {"Authorization": f"Bearer {ADMIN}"}


class EchoPod(AppServer):
    """A pod stand-in that echoes what it received, on a port it can give up and retake."""

    def __init__(self) -> None:
        super().__init__(self.echo)

    async def echo(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path.endswith("/slow"):
            await asyncio.sleep(3)  # slower than the proxy's 1 s upstream timeout
        if request.path.endswith("/big"):
            resp = web.StreamResponse()
            await resp.prepare(request)
            for i in range(64):
                await resp.write(bytes([65 + i % 26]) * 16384)
            await resp.write_eof()
            return resp
        return web.json_response(
            {
                "path": request.path_qs,
                "method": request.method,
                "body": body.decode(),
                "te": request.headers.get("Transfer-Encoding", ""),
                "auth": request.headers.get("Authorization", ""),
                "rid": request.headers.get("X-Request-Id", ""),
            }
        )


@pytest.fixture
async def proxied(tmp_path):
    settings = ProxySettings(
        internal_token="inside",
        upstream_timeout=1.0,
        auth=AuthSettings(no_auth=True, rate_limit_anon=0, rate_limit_user=0),
    )
    pod = EchoPod()
    async with proxy_before(tmp_path, pod, "echo", settings) as (proxy, _):
        yield proxy, pod


async def raw(url: str, payload: bytes, *, until: int = 1) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(payload)
    data = b""
    try:
        while data.count(b"HTTP/1.1 ") < until or not data.endswith((b"}", b"\r\n\r\n")):
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            if not chunk:
                break
            data += chunk
    finally:
        writer.close()
    return data


async def test_a_chunked_request_body_arrives_whole_and_reframed(proxied):
    proxy, _ = proxied

    async def body():
        for part in (b"alpha-", b"beta-", b"gamma"):
            yield part

    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{proxy.url}/api/guilds/42/echo?x=1", data=body()) as r,
    ):
        seen = await r.json()
    assert r.status == 200 and r.headers["X-Modbot-Pod"] == "echo"
    assert seen["body"] == "alpha-beta-gamma" and seen["te"] == "chunked"
    assert seen["path"] == "/api/guilds/42/echo?x=1" and seen["auth"] == "Bearer inside"


async def test_a_large_streamed_response_is_relayed_intact(proxied):
    proxy, _ = proxied
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/api/guilds/42/big") as r:
        data = await r.read()
    assert r.status == 200 and len(data) == 64 * 16384
    assert data[:16384] == b"A" * 16384 and data[-16384:] == bytes([65 + 63 % 26]) * 16384


async def test_pipelined_requests_are_answered_in_order(proxied):
    proxy, _ = proxied
    requests = b"".join(b"GET /api/guilds/42/n%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    data = await raw(proxy.url, requests, until=5)
    order = [int(p.split(b"/n")[1].split(b'"')[0]) for p in data.split(b'"path": "')[1:]]
    assert order == [0, 1, 2, 3, 4]


async def test_connection_close_is_honoured(proxied):
    proxy, _ = proxied
    data = await raw(
        proxy.url, b"GET /api/guilds/42/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head = data.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200") and b"connection: close" in head


async def test_bad_input_gets_a_json_400(proxied):
    proxy, _ = proxied
    data = await raw(proxy.url, b"NOT HTTP AT ALL\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400") and b'"error"' in data
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/api/guilds/12ab/x") as r:
        assert r.status == 400 and "error" in await r.json()


async def test_a_pod_restarting_under_a_pooled_connection_is_retried_transparently(proxied):
    proxy, pod = proxied
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.url}/api/guilds/42/a") as r:
            assert r.status == 200  # the proxy now holds a pooled connection to the pod
        await pod.stop()
        await pod.start()  # same port: the pooled connection is dead, the pod is not
        async with http.get(f"{proxy.url}/api/guilds/42/b") as r:
            assert r.status == 200 and json.loads(await r.text())["path"] == "/api/guilds/42/b"
        await pod.stop()
        async with http.get(f"{proxy.url}/api/guilds/42/c") as r:
            assert r.status == 503 and r.headers["Retry-After"] and "error" in await r.json()
            assert r.headers["X-Modbot-Pod"] == "echo"
        await pod.start()


async def test_fast_path_requests_are_counted_by_route_pod_and_status(proxied):
    proxy, pod = proxied
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(f"{proxy.url}/api/guilds/42/m") as r:
                assert r.status == 200
        await pod.stop()
        async with http.get(f"{proxy.url}/api/guilds/42/m") as r:
            assert r.status == 503
        async with http.get(f"{proxy.admin_url}/metrics") as r:
            text = await r.text()
        await pod.start()
    route = 'route="/api/guilds/{guild_id}/{tail}"'
    assert f'modbot_proxy_requests_total{{pod="echo",{route},status="200"}} 3.0' in text
    assert f'modbot_proxy_requests_total{{pod="echo",{route},status="503"}} 1.0' in text
    assert 'modbot_proxy_upstream_errors_total{kind="connect",pod="echo"}' in text
    assert "modbot_proxy_request_seconds_bucket" in text
    # counted in batches (tally.py), folded in before the scrape: nothing finished is missing
    assert f"modbot_proxy_request_seconds_count{{{route}}} 4.0" in text


async def test_api_requests_carry_a_request_id_to_the_pod_and_back(proxied):
    proxy, _ = proxied
    async with aiohttp.ClientSession() as http:
        seen = []
        for _ in range(3):
            async with http.get(f"{proxy.url}/api/guilds/42/r") as r:
                body = await r.json()
                assert r.headers["X-Request-Id"] == body["rid"]
                seen.append(body["rid"])
        assert len(set(seen)) == 3 and all(len(rid) == 16 for rid in seen)
        # a sane id of the client's is kept end to end (logs on both sides line up)
        async with http.get(
            f"{proxy.url}/api/guilds/42/r", headers={"X-Request-Id": "trace-abc.1_2"}
        ) as r:
            assert (await r.json())["rid"] == "trace-abc.1_2"
            assert r.headers["X-Request-Id"] == "trace-abc.1_2"


async def test_a_hostile_request_id_is_replaced_never_passed_on(proxied):
    proxy, _ = proxied
    for hostile in (b"x" * 65, b"a b", b"id;rm -rf", b"\xc3\xa9t\xc3\xa9", b"", b"<script>"):
        data = await raw(
            proxy.url,
            b"GET /api/guilds/42/r HTTP/1.1\r\nHost: x\r\nX-Request-Id: %s\r\n"
            b"Connection: close\r\n\r\n" % hostile,
        )
        head, _, body = data.partition(b"\r\n\r\n")
        rid = json.loads(body)["rid"]
        assert rid.encode() != hostile and len(rid) == 16, hostile
        assert head.lower().count(b"x-request-id:") == 1 and rid.encode() in head


async def test_a_503_from_the_proxy_itself_carries_the_request_id(proxied):
    proxy, pod = proxied
    await pod.stop()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{proxy.url}/api/guilds/42/r", headers={"X-Request-Id": "down-1"}) as r,
        ):
            assert r.status == 503 and r.headers["X-Request-Id"] == "down-1"
    finally:
        await pod.start()


async def test_a_pod_that_does_not_answer_in_time_gets_a_503(proxied):
    proxy, _ = proxied
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/api/guilds/42/slow") as r:
        assert r.status == 503 and "timeout" in (await r.json())["error"]
        assert r.headers["X-Modbot-Pod"] == "echo" and r.headers["Retry-After"]
    assert 1.0 <= loop.time() - started < 2.0  # the 1 s upstream timeout, give or take a sweep
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/api/guilds/42/x") as r:
        assert r.status == 200  # and the proxy carries on
