"""The proxy as an attacker meets it: interim responses, limits, timeouts, early answers,
and a circuit breaker that only hears about the pods' health.

Each test talks raw HTTP/1.1 to a real proxy in front of real upstreams on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import aiohttp
import httptools
import pytest
from aiohttp import web
from conftest import ADMIN, READ, free_port, running_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router_proxy.auth import AuthSettings
from router_proxy.proxy import ProxySettings
from router_proxy.server import RunningProxy, start_proxy

A = {"Authorization": f"Bearer {ADMIN}"}
LIMITS = ProxySettings(
    # these tests are about HTTP, not about who may ask: no login, no rate limit
    auth=AuthSettings(no_auth=True, rate_limit_anon=1e9, rate_limit_user=1e9),
    internal_token="inside",
    upstream_timeout=2.0,
    max_url_bytes=1024,
    max_header_bytes=4096,
    max_headers=20,
    max_body_bytes=64 * 1024,
    header_timeout=1.0,
    body_timeout=1.0,
    idle_timeout=1.0,
    max_connections=50,
)


class EchoPod:
    """Echoes the request id (``X-Req``), the body's length and a few headers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.runner: web.AppRunner | None = None
        self.seen_expect: list[str] = []
        self.interaction_status = 200
        self.interaction_calls = 0

    async def start(self) -> None:
        async def echo(request: web.Request) -> web.StreamResponse:
            self.seen_expect.append(request.headers.get("Expect", ""))
            if request.path == "/interactions":
                self.interaction_calls += 1
                if self.interaction_status != 200:
                    return web.json_response({"error": "no"}, status=self.interaction_status)
                return web.json_response({"type": 4, "data": {"content": "done"}})
            if request.path.endswith("/early"):  # answers before reading the body
                return web.json_response({"req": request.headers.get("X-Req", ""), "early": 1})
            body = await request.read()
            if request.path.endswith("/boom"):
                return web.json_response({"error": "overflow"}, status=500)
            if request.path.endswith("/slow"):
                await asyncio.sleep(5)
            return web.json_response(
                {
                    "req": request.headers.get("X-Req", ""),
                    "path": request.path_qs,
                    "len": len(body),
                    "sum": sum(body) % 65521,
                }
            )

        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", echo)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class RawPod:
    """A pod that answers with exactly the bytes a test scripts (interim responses...)."""

    def __init__(self, answer: bytes) -> None:
        self.port = free_port()
        self.answer = answer
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    writer.write(self.answer)
                    await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def register(config_url: str, name: str, port: int) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{config_url}/v1/pods/{name}", json={"url": f"http://127.0.0.1:{port}"}, headers=A
        ) as r,
    ):
        assert r.status == 200, await r.text()


@contextlib.asynccontextmanager
async def edge_stack(tmp_path, settings: ProxySettings = LIMITS) -> AsyncIterator[tuple]:
    # the stand-in pods never heartbeat: they must not be swept offline mid-test
    async with running_config(
        f"sqlite:///{tmp_path}/c.db", shard_count=None, heartbeat_timeout=3600
    ) as config:
        pod = EchoPod()
        await pod.start()
        await register(config.url, "echo", pod.port)
        proxy = await start_proxy(settings, config_url=config.url, read_token=READ)
        try:
            yield proxy, pod, config
        finally:
            await proxy.stop()
            await pod.stop()


@pytest.fixture
async def edge(tmp_path):
    async with edge_stack(tmp_path) as stack:
        yield stack


class Responses:
    """Reads HTTP/1.1 responses off a raw connection, interim ones included."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.done: list[tuple[int, dict[str, str], bytes]] = []
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body = b""
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False

    def on_message_begin(self) -> None:
        self._headers, self._body = {}, b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self._status, self._headers, self._body))

    async def read(
        self, count: int, timeout: float = 5.0
    ) -> list[tuple[int, dict[str, str], bytes]]:
        """Until ``count`` responses (1xx included) or the close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.done) < count and not self.closed:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                break
            except ConnectionError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self.parser.feed_data(chunk)
        return self.done


async def connect(proxy: RunningProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = proxy.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True if the proxy closes the connection within ``seconds`` (data before is drained)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        if not chunk:
            return True
    return False


# -- interim responses and Expect ------------------------------------------------------------


async def test_expect_100_continue_is_answered_by_the_proxy_and_never_desyncs(edge):
    """The bug: the aiohttp side's 100 Continue ended the exchange and the pooled
    connection handed the real answer to the next client's /healthz."""
    proxy, pod, _ = edge
    for path in (b"/api/guilds/42/put", b"/webhooks/discord"):
        reader, writer = await connect(proxy)
        body = b"x" * 2000
        writer.write(
            b"PUT %s HTTP/1.1\r\nHost: p\r\nX-Req: a1\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (path, len(body))
        )
        responses = Responses(reader)
        interim = await responses.read(1, timeout=2)
        assert interim and interim[0][0] == 100, "the proxy must say 100 Continue itself"
        writer.write(body)
        final = await responses.read(2)
        assert len(final) == 2 and final[1][0] != 100
        if path.startswith(b"/api"):
            assert final[1][0] == 200 and json.loads(final[1][2])["len"] == 2000
        # another client on the (pooled) upstream gets its own answer, every time
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                async with http.get(f"{proxy.url}/no-such-page") as r:
                    assert r.status == 404 and (await r.json()) == {"error": "Not Found"}
        writer.close()
    assert "100-continue" not in pod.seen_expect  # not forwarded


async def test_an_unsupported_expectation_gets_417(edge):
    proxy, _, _ = edge
    reader, writer = await connect(proxy)
    writer.write(
        b"POST /api/guilds/42/x HTTP/1.1\r\nHost: p\r\nExpect: teapot\r\nContent-Length: 3\r\n\r\n"
    )
    (status, _, body), *_ = await Responses(reader).read(1)
    assert status == 417 and "error" in json.loads(body)
    writer.close()


async def test_interim_responses_from_a_pod_never_end_the_exchange(tmp_path):
    final = b'{"ok": "final"}'
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(final), final)
    )
    async with edge_stack(tmp_path) as (proxy, _, config):
        raw_pod = RawPod(answer)
        await raw_pod.start()
        await register(config.url, "echo", raw_pod.port)  # the only pod: every guild
        await asyncio.sleep(1.5)  # the proxy polls the table once a second
        try:
            for _ in range(3):  # the second and third reuse the pooled connection
                reader, writer = await connect(proxy)
                writer.write(b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\n\r\n")
                got = await Responses(reader).read(2)
                assert [s for s, _, _ in got] == [103, 200]
                assert got[0][1]["link"] == "</style.css>; rel=preload"
                assert got[1][2] == final
                writer.close()
            # an HTTP/1.0 client gets no 1xx at all
            reader, writer = await connect(proxy)
            writer.write(b"GET /api/guilds/42/x HTTP/1.0\r\nHost: p\r\n\r\n")
            got = await Responses(reader).read(2, timeout=2)
            assert [s for s, _, _ in got] == [200]
            writer.close()
        finally:
            await raw_pod.stop()


async def test_a_pod_answering_before_the_body_is_sent_is_not_pooled(edge):
    proxy, _, _ = edge
    reader, writer = await connect(proxy)
    writer.write(
        b"POST /api/guilds/42/early HTTP/1.1\r\nHost: p\r\nX-Req: e1\r\nContent-Length: 60000\r\n\r\n"
        + b"y" * 1000
    )
    responses = Responses(reader)
    got = await responses.read(1)
    assert got[0][0] == 200 and got[0][1].get("connection") == "close"
    writer.close()
    # the rest of that body never reaches anyone else
    async with aiohttp.ClientSession() as http:
        for i in range(5):
            async with http.post(
                f"{proxy.url}/api/guilds/42/x", data=b"z" * 10, headers={"X-Req": f"n{i}"}
            ) as r:
                assert (await r.json())["req"] == f"n{i}"


async def test_head_requests_do_not_hang_or_poison_a_connection(edge):
    proxy, _, _ = edge
    reader, writer = await connect(proxy)
    writer.write(
        b"HEAD /no-such-page HTTP/1.1\r\nHost: p\r\n\r\nGET /no-such-page HTTP/1.1\r\nHost: p\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 404")
    rest = await asyncio.wait_for(reader.readuntil(b"}"), 5)
    assert rest.startswith(b"HTTP/1.1 404") and rest.endswith(b'{"error": "Not Found"}')
    writer.close()


# -- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /api/guilds/42/" + b"a" * 2000 + b" HTTP/1.1\r\nHost: p\r\n\r\n", 414),
        (b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n", 431),
        (
            b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\n"
            + b"".join(b"X-H%d: 1\r\n" % i for i in range(30))
            + b"\r\n",
            431,
        ),
        (b"PUT /api/guilds/42/x HTTP/1.1\r\nHost: p\r\nContent-Length: 70000\r\n\r\n", 413),
        (b"POST /webhooks/discord HTTP/1.1\r\nHost: p\r\nContent-Length: 70000\r\n\r\n", 413),
        (
            b"GET /x HTTP/1.1\r\nHost: p\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            400,
        ),
    ],
    ids=[
        "url-414",
        "header-bytes-431",
        "header-count-431",
        "api-body-413",
        "webhook-413",
        "upgrade-400",
    ],
)
async def test_limits_answer_with_the_expected_status_and_close(edge, request_bytes, status):
    proxy, _, _ = edge
    reader, writer = await connect(proxy)
    writer.write(request_bytes)
    got = await Responses(reader).read(1)
    assert got and got[0][0] == status and "error" in json.loads(got[0][2])
    assert got[0][1].get("connection") == "close"
    assert await closed_within(reader, 2)
    writer.close()


async def test_a_chunked_body_over_the_limit_is_refused_mid_stream(edge):
    proxy, _, _ = edge
    reader, writer = await connect(proxy)
    writer.write(b"POST /api/guilds/42/x HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"c" * 16384
    with contextlib.suppress(ConnectionError):
        for _ in range(6):  # 96 KiB > 64 KiB
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
    got = await Responses(reader).read(1)
    assert got and got[0][0] == 413
    writer.close()


async def test_one_enormous_header_is_cut_off_without_being_buffered(edge):
    proxy, _, _ = edge
    reader, writer = await connect(proxy)
    writer.write(b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\nX-Huge: ")
    sent = 0
    with contextlib.suppress(ConnectionError):
        while sent < 16 * 1024 * 1024:
            writer.write(b"h" * 65536)
            await writer.drain()
            sent += 65536
    assert sent < 4 * 1024 * 1024, "the proxy should have closed long before 16 MiB"
    got = await Responses(reader).read(1)
    assert not got or got[0][0] == 431
    writer.close()


async def test_a_slowloris_client_gets_408_and_is_closed(edge):
    proxy, _, _ = edge
    reader, writer = await connect(proxy)
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = asyncio.create_task(Responses(reader).read(1, timeout=4))
    with contextlib.suppress(ConnectionError):
        for byte in b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\nX-A: " + b"b" * 100:
            if answer.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)
    got = await answer
    assert got and got[0][0] == 408
    assert loop.time() - started < 4  # 1 s header timeout, swept once a second
    writer.close()


async def test_a_stalled_body_gets_408_and_does_not_count_against_the_pod(edge):
    proxy, _, _ = edge
    for _ in range(7):  # more than the breaker's threshold
        reader, writer = await connect(proxy)
        writer.write(
            b"POST /api/guilds/42/x HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\n0123456789"
        )
        got = await Responses(reader).read(1, timeout=4)
        assert got and got[0][0] == 408
        writer.close()
    assert proxy.proxy.breaker_for("echo").state == "closed"
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/api/guilds/42/x") as r:
        assert r.status == 200


async def test_idle_and_silent_connections_are_closed(edge):
    proxy, _, _ = edge
    silent_reader, silent = await connect(proxy)  # never sends a byte
    reader, writer = await connect(proxy)
    writer.write(b"GET /no-such-page HTTP/1.1\r\nHost: p\r\n\r\n")
    assert (await Responses(reader).read(1))[0][0] == 404
    assert await closed_within(reader, 3.5)  # idle keep-alive: 1 s, swept once a second
    assert await closed_within(silent_reader, 3.5)
    writer.close()
    silent.close()


async def test_connections_over_the_cap_get_503(tmp_path):
    async with edge_stack(tmp_path, replace(LIMITS, max_connections=5, header_timeout=5)) as (
        proxy,
        _,
        _,
    ):
        held = [await connect(proxy) for _ in range(5)]
        reader, writer = await connect(proxy)
        got = await Responses(reader).read(1)
        assert got and got[0][0] == 503
        for _, w in held:
            w.close()
        writer.close()
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/no-such-page") as r:
            assert r.status == 404


async def test_pipelined_requests_then_garbage_get_their_answers_then_400(edge):
    proxy, _, _ = edge
    reader, writer = await connect(proxy)
    writer.write(
        b"GET /api/guilds/42/a HTTP/1.1\r\nHost: p\r\nX-Req: 1\r\n\r\n"
        b"GET /api/guilds/42/b HTTP/1.1\r\nHost: p\r\nX-Req: 2\r\n\r\n"
        b"\x00\x01 garbage\r\n\r\n"
    )
    got = await Responses(reader).read(3)
    assert [s for s, _, _ in got] == [200, 200, 400]
    assert [json.loads(b)["req"] for _, _, b in got[:2]] == ["1", "2"]
    assert await closed_within(reader, 2)
    writer.close()


# -- the breaker hears only about pod health -------------------------------------------------


async def test_client_caused_failures_never_open_the_breaker(edge):
    proxy, _, _ = edge
    async with aiohttp.ClientSession() as http:
        for _ in range(8):  # a request that makes the pod fail: 500, not pod health
            async with http.get(f"{proxy.url}/api/guilds/42/boom") as r:
                assert r.status == 500
        for _ in range(8):  # requests the client abandons mid-body
            _, writer = await connect(proxy)
            writer.write(
                b"POST /api/guilds/42/x HTTP/1.1\r\nHost: p\r\nContent-Length: 50\r\n\r\nabc"
            )
            await writer.drain()
            writer.close()
        await asyncio.sleep(0.3)
        assert proxy.proxy.breaker_for("echo").state == "closed"
        async with http.get(f"{proxy.url}/api/guilds/42/x") as r:
            assert r.status == 200


async def test_an_unreachable_pod_still_opens_the_breaker(edge):
    proxy, pod, _ = edge
    await pod.stop()
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(8):
            async with http.get(f"{proxy.url}/api/guilds/42/x") as r:
                statuses.append(r.status)
                assert r.status == 503
    assert proxy.proxy.breaker_for("echo").state in ("open", "half-open")
    await pod.start()


# -- hostile HTTP/1.1, generated: every client only ever gets answers to its own requests ----


class ThreadedStack:
    """The proxy stack on an event loop of its own, so blocking clients in threads (and
    hypothesis, which drives synchronous tests) can talk to it concurrently."""

    def __init__(self, tmp_path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cm = edge_stack(tmp_path, replace(LIMITS, header_timeout=5, body_timeout=5))
        self.proxy, self.pod, _ = self.run(self.cm.__aenter__())
        host, port = self.proxy.url.removeprefix("http://").split(":")
        self.address = (host, int(port))

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.run(self.cm.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def threaded(tmp_path_factory):
    stack = ThreadedStack(tmp_path_factory.mktemp("fuzz"))
    yield stack
    stack.close()


REQUEST = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["api", "api", "api", "app"]),
        "method": st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE"]),
        "body": st.binary(max_size=3000),
        "chunks": st.lists(st.integers(1, 700), max_size=6),
        "chunked": st.booleans(),
        "expect": st.booleans(),
    }
)


def encode(request: dict[str, Any], req_id: str) -> tuple[bytes, tuple[Any, ...]]:
    """The bytes of one request, and what its answer must be."""
    if request["kind"] == "app":
        return b"GET /no-such-page HTTP/1.1\r\nHost: p\r\n\r\n", (404, None, None)
    body = request["body"] if request["method"] != b"GET" else b""
    head = b"%s /api/guilds/42/fuzz HTTP/1.1\r\nHost: p\r\nX-Req: %s\r\n" % (
        request["method"],
        req_id.encode(),
    )
    if body and request["expect"]:
        head += b"Expect: 100-continue\r\n"
    if body and request["chunked"]:
        parts, rest = [], body
        for size in request["chunks"] or [len(body)]:
            if not rest:
                break
            parts.append(rest[:size])
            rest = rest[size:]
        if rest:
            parts.append(rest)
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + framed, (200, req_id, len(body))
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body, (200, req_id, len(body))


def run_client(address: tuple[str, int], stream: bytes, cuts: list[int], expected: list[Any]):
    """Send ``stream`` in pieces, read final answers until all came or the close."""
    finals: list[tuple[int, bytes]] = []

    class Reader:
        status = 0
        body = b""

        def on_message_begin(self) -> None:
            self.body = b""

        def on_headers_complete(self) -> None:
            self.status = parser.get_status_code()

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            if self.status >= 200:  # 100 Continue and other interim answers are skipped
                finals.append((self.status, self.body))

    parser = httptools.HttpResponseParser(Reader())
    with socket.create_connection(address, timeout=5) as sock:
        start = 0
        for cut in [*sorted(set(cuts)), len(stream)]:
            if start < cut <= len(stream):
                try:
                    sock.sendall(stream[start:cut])
                except OSError:  # closed on us after garbage: what it answered still counts
                    break
                start = cut
                time.sleep(0.001)
        deadline = time.monotonic() + 5
        while len(finals) < len(expected) and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionError):
                break
            if not chunk:
                break
            parser.feed_data(chunk)
    return finals


def check(finals: list[tuple[int, bytes]], expected: list[Any], garbage: bool) -> None:
    wanted = [*expected, (400, None, None)] if garbage else expected
    assert len(finals) == len(wanted), (finals, wanted)
    for (status, body), (want_status, req_id, length) in zip(finals, wanted):
        assert status == want_status, (status, body)
        data = json.loads(body)
        if req_id is None:
            assert "error" in data
        else:
            assert data["req"] == req_id and data["len"] == length, (data, req_id)


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    clients=st.lists(
        st.tuples(
            st.lists(REQUEST, min_size=1, max_size=5),
            st.lists(st.integers(0, 20000), max_size=8),
            st.booleans(),
        ),
        min_size=2,
        max_size=4,
    )
)
def test_hostile_pipelined_split_requests_only_ever_get_their_own_answers(threaded, clients):
    jobs = []
    for n, (requests, cuts, garbage) in enumerate(clients):
        stream, expected = b"", []
        for i, request in enumerate(requests):
            data, answer = encode(request, f"c{n}-{i}-{time.monotonic_ns()}")
            stream += data
            expected.append(answer)
        if garbage:
            stream += b"\x16\x03\x01 not http\r\n\r\n"
        jobs.append((stream, cuts, expected, garbage))
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(
            pool.map(
                lambda job: run_client(
                    threaded.address, job[0], job[1], job[2] + [job[3]] * job[3]
                ),
                jobs,
            )
        )
    for (_, _, expected, garbage), finals in zip(jobs, results):
        check(finals, expected, garbage)


# -- interactions: strict checks, retries only where a retry can succeed --------------------


@pytest.fixture
async def signed_edge(tmp_path):
    from gateway_app.discord_sim.signing import Signer

    signer = Signer("22" * 32)
    settings = replace(LIMITS, discord_public_key=signer.public_key_hex, interaction_deadline=1.0)
    async with edge_stack(tmp_path, settings) as (proxy, pod, _):
        yield proxy, pod, signer


_IDS = iter(range(1100000000000000001, 1200000000000000000))


def command(guild: int = 42) -> dict[str, Any]:
    return {
        "id": str(next(_IDS)),  # a fresh interaction each time: replays are refused
        "application_id": "900000000000000001",
        "type": 2,
        "token": "aW50ZXJhY3Rpb246dG9rZW4",
        "version": 1,
        "guild_id": str(guild),
        "data": {"id": "1", "name": "modreport", "type": 1},
    }


async def post_signed(proxy, signer, payload) -> tuple[int, dict[str, Any]]:
    raw = json.dumps(payload).encode()
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{proxy.url}/webhooks/discord", data=raw, headers=signer.headers(raw)) as r,
    ):
        return r.status, await r.json()


async def test_a_bool_type_is_not_a_ping(signed_edge):
    proxy, _, signer = signed_edge
    status, body = await post_signed(proxy, signer, {"type": True})
    assert status == 400 and body != {"type": 1}
    status, body = await post_signed(proxy, signer, {"type": 1})
    assert status == 200 and body == {"type": 1}


async def test_an_interaction_the_pod_cannot_process_is_answered_at_once_not_retried(signed_edge):
    proxy, pod, signer = signed_edge
    pod.interaction_status = 500
    for _ in range(7):  # more than the breaker's threshold
        status, body = await post_signed(proxy, signer, command())
        assert status == 200 and body["type"] == 4 and body["data"]["flags"] == 64
    assert not proxy.proxy.background, "nothing is left retrying a hopeless interaction"
    assert proxy.proxy.breaker_for("echo").state == "closed"


async def test_an_interaction_the_pod_cannot_take_now_is_deferred_and_retried(signed_edge):
    proxy, pod, signer = signed_edge
    pod.interaction_status = 503
    status, body = await post_signed(proxy, signer, command())
    assert status == 200 and body["type"] == 5
    assert proxy.proxy.background, "a deferred delivery keeps trying"
    calls = pod.interaction_calls
    pod.interaction_status = 200
    for _ in range(50):
        if not proxy.proxy.background:
            break
        await asyncio.sleep(0.1)
    assert not proxy.proxy.background and pod.interaction_calls > calls


async def test_guild_ids_beyond_what_the_stores_hold_are_refused_at_the_edge(edge):
    """2**64-1 overflowed the pod's SQLite (a 500, five of which opened the breaker)."""
    proxy, _, _ = edge
    async with aiohttp.ClientSession() as http:
        for gid in ("18446744073709551615", "9223372036854775808", "0", "-1", "1e5"):
            for _ in range(3):
                async with http.get(f"{proxy.url}/api/guilds/{gid}/settings") as r:
                    assert r.status == 400 and "error" in await r.json(), gid
        async with http.get(f"{proxy.url}/api/guilds/9223372036854775807/x") as r:
            assert r.status == 200  # the largest id every store holds is routed
    assert proxy.proxy.breaker_for("echo").state == "closed"


@pytest.mark.parametrize(
    "target",
    [
        b"/api/guilds/42/../../internal/export",
        b"/api/guilds/42/./x",
        b"/api/guilds/42/%2e%2e/%2e%2e/data/guilds/7",
        b"/api/guilds/42%2F..%2F7/x",
        b"/api/guilds/42/..%5Cinternal",
        b"/api/guilds/42/\\..\\internal",
    ],
)
async def test_api_targets_that_could_resolve_elsewhere_are_refused(edge, target):
    """A pod that normalised paths would serve /internal or another guild's /data for
    these: the proxy refuses them before routing (the ids in a target are digits)."""
    proxy, pod, _ = edge
    reader, writer = await connect(proxy)
    writer.write(b"GET %s HTTP/1.1\r\nHost: p\r\n\r\n" % target)
    got = await Responses(reader).read(1)
    assert got and got[0][0] == 400
    writer.close()
    assert not pod.seen_expect  # the pod was never asked


async def test_a_replayed_interaction_is_refused(signed_edge):
    """Someone who captured a signed interaction cannot run its command again within
    the signature's five minutes."""
    proxy, pod, signer = signed_edge
    payload = command()
    status, body = await post_signed(proxy, signer, payload)
    assert status == 200 and body["type"] == 4
    calls = pod.interaction_calls
    status, body = await post_signed(proxy, signer, payload)
    assert status == 409 and "already" in body["error"]
    assert pod.interaction_calls == calls  # the command did not run twice
