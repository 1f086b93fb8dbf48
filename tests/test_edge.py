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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import aiohttp
import httptools
import pytest
from conftest import ADMIN, eventually
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stack import LIMITS, Responses, answers, closed_within, connect, edge_stack, pod_stack

A = {"Authorization": f"Bearer {ADMIN}"}


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
    async with pod_stack(tmp_path, lambda box: answers(answer, box)) as (proxy, _):
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
            await asyncio.sleep(0.1)  # the sleep is the test: a byte every 100 ms
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
        await eventually(lambda: not proxy.front.clients)  # the slots are free again
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
        await eventually(lambda: not (proxy.front.clients or proxy.front.inflight))
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
                time.sleep(0.001)  # the sleep is the test: each part arrives on its own
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
    from discord_sim.signing import Signer

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
    await eventually(lambda: not proxy.proxy.background, timeout=5, interval=0.1)
    assert pod.interaction_calls > calls


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
