"""A hostile review of the front door (fastpath.py): smuggling, forged credentials,
pods that answer garbage, HTTP/1.0 clients, pipelining and pauses, and what is left
behind (client sets, in-flight exchanges, pooled connections, breaker counts).

Every case talks raw bytes to a real proxy in front of real upstreams on loopback."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from aiohttp import web
from conftest import AppServer
from stack import (
    LIMITS,
    HeaderPod,
    Responses,
    Script,
    ScriptPod,
    answers,
    closed_within,
    connect,
    edge_stack,
    pod_stack,
    replacing_pod,
    settled,
)

# -- request smuggling: refused at the door, never forwarded (held) --------------------------

R = b"POST /api/guilds/42/x HTTP/1.1\r\nHost: p\r\n"
SMUGGLING = {
    "cl-and-te": R + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /",
    "two-cl-differ": R + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
    "two-cl-same": R + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "cl-list": R + b"Content-Length: 3, 3\r\n\r\nabc",
    "te-chunked-identity": R + b"Transfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te-chunked-then-gzip": R
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te-identity-and-cl": R + b"Transfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nabc",
    "te-xchunked": R + b"Transfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "obs-fold": R + b"X-A: 1\r\n X-Modbot-Identity: forged\r\nContent-Length: 0\r\n\r\n",
    "lf-only": b"POST /api/guilds/42/x HTTP/1.1\nHost: p\nContent-Length: 3\n\nabc",
    "lf-only-chunk": R + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
    "bare-cr": R + b"X-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    "nul-in-value": R + b"X-Forwarded-For: 1.2.3.4\x00\r\nContent-Length: 0\r\n\r\n",
    "space-in-name": R + b"X-Modbot-Identity : forged\r\nContent-Length: 0\r\n\r\n",
    "huge-chunk-hex": R + b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 20 + b"\r\nabc",
    "chunk-size-space": R + b"Transfer-Encoding: chunked\r\n\r\n3 ;x\r\nabc\r\n0\r\n\r\n",
    "cl-plus": R + b"Content-Length: +3\r\n\r\nabc",
}


@pytest.mark.parametrize("request_bytes", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_smuggling_attempts_get_400_and_never_reach_the_pod(edge, request_bytes):
    proxy, pod, _ = edge
    reader, writer = await connect(proxy)
    writer.write(request_bytes)
    got = await Responses(reader).read(2, timeout=2)
    assert [s for s, _, _ in got] == [400], got
    assert await closed_within(reader, 2)
    writer.close()
    assert pod.seen_expect == [], "nothing of it reached the pod"
    await settled(proxy)
    assert proxy.proxy.breaker_for("echo").failures == 0


async def test_chunk_extensions_and_trailers_are_not_forwarded(edge):
    """Held: the body is re-framed; a trailer cannot smuggle a header to the pod."""
    proxy, _, _ = edge
    reader, writer = await connect(proxy)
    writer.write(
        R + b"X-Req: t1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3;ext="a"\r\nabc\r\n0\r\nX-Modbot-Identity: forged\r\n\r\n'
    )
    (status, _, body), *_ = await Responses(reader).read(1)
    assert status == 200 and json.loads(body)["len"] == 3
    writer.close()
    await settled(proxy)


# -- forged credentials and identities (held) --------------------------------------------------


async def test_a_client_cannot_add_or_override_the_credentials_the_proxy_sends(tmp_path):
    async with (
        edge_stack(tmp_path) as (proxy, _, config),
        replacing_pod(proxy, config, HeaderPod()),  # same name: the table keeps its version
    ):
        reader, writer = await connect(proxy)
        writer.write(
            b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\n"
            b"Authorization: Bearer inside\r\nauthorization: Bearer mine\r\n"
            b"X-Modbot-Identity: forged\r\nx-modbot-identity: forged2\r\n"
            b"X-MODBOT-POD: other\r\nCookie: modbot_session=x\r\n"
            b"Connection: keep-alive, X-Keep\r\nX-Keep: dropped\r\n"
            b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\n\r\n"
        )
        (status, _, body), *_ = await Responses(reader).read(1)
        writer.close()
    assert status == 200
    headers = json.loads(body)["headers"]
    names = [k.lower() for k, _ in headers]
    assert [v for k, v in headers if k.lower() == "authorization"] == ["Bearer inside"]
    identity = [v for k, v in headers if k.lower() == "x-modbot-identity"]
    assert len(identity) == 1 and identity[0].startswith("v1.")
    assert "cookie" not in names and "x-keep" not in names and "x-modbot-pod" not in names
    assert names.count("x-forwarded-for") == 1


# -- HTTP/1.0 clients ----------------------------------------------------------------------


CHUNKED_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)


async def test_an_http10_client_never_gets_a_chunked_response(tmp_path):
    """HTTP/1.0 has no chunked coding (RFC 9112 §6.1): the proxy re-framed a pod's
    streamed answer as chunked for a 1.0 client, which then saw the chunk sizes as
    body bytes. Close-delimited is the only framing a 1.0 client understands."""
    async with pod_stack(tmp_path, lambda box: answers(CHUNKED_ANSWER, box)) as (proxy, _):
        for keep in (b"", b"Connection: keep-alive\r\n"):
            reader, writer = await connect(proxy)
            writer.write(b"GET /api/guilds/42/x HTTP/1.0\r\nHost: p\r\n%s\r\n" % keep)
            raw = await asyncio.wait_for(reader.read(), 3)  # until the close
            head, _, body = raw.partition(b"\r\n\r\n")
            assert b"transfer-encoding" not in head.lower(), head
            assert body == b"hello world"
            writer.close()
        await settled(proxy)


async def test_an_http10_keep_alive_client_is_told_the_connection_stays_open(edge):
    """A 1.0 client assumes the server closes unless the answer says ``Connection:
    keep-alive``: without it, it waits for a close that only the idle timeout brings."""
    proxy, _, _ = edge
    reader, writer = await connect(proxy)
    for i in range(2):
        writer.write(
            b"GET /api/guilds/42/x HTTP/1.0\r\nHost: p\r\nConnection: keep-alive\r\n"
            b"X-Req: k%d\r\n\r\n" % i
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert b"\r\nconnection: keep-alive\r\n" in head.lower(), head
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert json.loads(await reader.readexactly(length))["req"] == f"k{i}"
    # the proxy's own answers (a 400 here) say so too, and the connection stays usable
    writer.write(b"GET /api/guilds/x1/x HTTP/1.0\r\nHost: p\r\nConnection: keep-alive\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 400") and b"\r\nconnection: keep-alive\r\n" in head.lower()
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert "error" in json.loads(await reader.readexactly(length))
    writer.close()
    await settled(proxy)


# -- pods that answer garbage -----------------------------------------------------------------


GARBAGE = {
    "101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    "two-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "header-bare-cr": b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: x=1\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("answer", GARBAGE.values(), ids=GARBAGE.keys())
async def test_a_pod_answering_garbage_gets_the_client_a_clean_503(tmp_path, answer):
    async with pod_stack(tmp_path, lambda box: answers(answer, box)) as (proxy, pod):
        reader, writer = await connect(proxy)
        writer.write(b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\n\r\n")
        got = await Responses(reader).read(1, timeout=3)
        assert [s for s, _, _ in got] == [503] and "error" in json.loads(got[0][2])
        writer.close()
        await settled(proxy)
        assert not proxy.front.pool.idle.get(f"127.0.0.1:{pod.port}")


async def test_a_pod_sending_more_than_its_content_length_never_reaches_another_client(tmp_path):
    """The surplus is a second, unsolicited response: the connection is dropped, not
    pooled, so the next client cannot read it as its own answer."""
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED"
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + forged
    async with pod_stack(tmp_path, lambda box: answers(answer, box)) as (proxy, _):
        for _i in range(3):
            reader, writer = await connect(proxy)
            writer.write(b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\n\r\n")
            got = await Responses(reader).read(2, timeout=0.4)
            assert [(s, b) for s, _, b in got] == [(200, b"ok")]
            writer.close()
        await settled(proxy)


async def test_a_pod_closing_mid_body_closes_the_client_and_leaks_nothing(tmp_path):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"

    def script_for(box: list[ScriptPod]) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()  # and close

        return script

    async with pod_stack(tmp_path, script_for) as (proxy, _):
        reader, writer = await connect(proxy)
        writer.write(b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\n\r\n")
        assert await closed_within(reader, 2)
        writer.close()
        await settled(proxy)
        assert proxy.proxy.breaker_for("raw").failures == 0  # it answered: it is up


async def test_a_pod_that_says_100_continue_then_hangs_times_out(tmp_path):
    def script_for(box: list[ScriptPod]) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(5)  # then hangs, past the proxy's upstream timeout

        return script

    settings = replace(LIMITS, upstream_timeout=0.5)
    async with pod_stack(tmp_path, script_for, settings) as (proxy, _):
        reader, writer = await connect(proxy)
        writer.write(b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\n\r\n")
        got = await Responses(reader).read(1, timeout=2)
        assert [s for s, _, _ in got] == [503]
        writer.close()
        await settled(proxy)


async def test_a_close_delimited_pod_answer_is_relayed_whole(tmp_path):
    """A response with neither Content-Length nor chunked ends at the close (RFC 9112
    §6.3 rule 8). The proxy re-chunks it; at the pod's close it used to reset the
    client instead of sending the last chunk, so every such answer arrived truncated."""

    def script_for(box: list[ScriptPod]) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of ")
            await writer.drain()
            await asyncio.sleep(0.05)  # the answer comes in two parts
            writer.write(b"it")
            await writer.drain()  # then close

        return script

    async with pod_stack(tmp_path, script_for) as (proxy, _):
        reader, writer = await connect(proxy)
        writer.write(b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\n\r\n")
        got = await Responses(reader).read(1, timeout=2)
        assert [(s, b) for s, _, b in got] == [(200, b"all of it")]
        writer.close()
        await settled(proxy)


# -- pipelining: pauses we cause are not the client's slowness; buffers are bounded --------


class SlowFirstPod(AppServer):
    """Echo, but ``/slow`` takes 1.3 s."""

    def __init__(self) -> None:
        super().__init__(self.echo, client_max_size=4 * 1024 * 1024)

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.path.endswith("/slow"):
            await asyncio.sleep(1.3)  # the slow request the others queue behind
        return web.json_response({"req": request.headers.get("X-Req", ""), "len": len(body)})


async def test_a_client_we_stopped_reading_is_not_timed_out_for_it(tmp_path):
    """Behind a slow request, the proxy stops reading after MAX_PIPELINE queued ones; the
    last queued request's body deadline kept running while nobody read it, so a
    well-behaved pipelining client got 408 and lost every answer owed to it."""
    settings = replace(LIMITS, body_timeout=0.25)
    async with (
        edge_stack(tmp_path, settings) as (proxy, _, config),
        replacing_pod(proxy, config, SlowFirstPod()),
    ):
        reader, writer = await connect(proxy)
        stream = b"GET /api/guilds/42/slow HTTP/1.1\r\nHost: p\r\nX-Req: 0\r\n\r\n"
        for i in range(1, 9):
            stream += b"POST /api/guilds/42/x HTTP/1.1\r\nHost: p\r\nX-Req: %d\r\n" % i
            stream += b"Content-Length: 4\r\n\r\n"
            if i < 8:
                stream += b"body"
        writer.write(stream)  # the 8th queued request fills the queue: reading stops
        await asyncio.sleep(0.3)  # the sleep is the test: past the 0.25 s body deadline
        writer.write(b"body" + b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\nX-Req: 9\r\n\r\n")
        got = await Responses(reader).read(10, timeout=4)
        assert [s for s, _, _ in got] == [200] * 10, got
        assert [json.loads(b)["req"] for _, _, b in got] == [str(i) for i in range(10)]
        writer.close()
        await settled(proxy)


async def test_pipelined_bodies_behind_a_slow_request_are_not_all_buffered(tmp_path):
    """Each queued request's body was buffered in full until its turn: MAX_PIPELINE x
    max body per connection (8 MiB at the defaults, x the connection cap). At most about
    one body's worth may wait in memory; then the socket stops being read."""
    settings = replace(LIMITS, max_body_bytes=256 * 1024, body_timeout=5)
    async with (
        edge_stack(tmp_path, settings) as (proxy, _, config),
        replacing_pod(proxy, config, SlowFirstPod()),
    ):
        reader, writer = await connect(proxy)
        body = b"b" * (256 * 1024)
        writer.write(b"GET /api/guilds/42/slow HTTP/1.1\r\nHost: p\r\nX-Req: 0\r\n\r\n")
        for i in range(1, 8):
            writer.write(
                b"PUT /api/guilds/42/x HTTP/1.1\r\nHost: p\r\nX-Req: %d\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (i, len(body), body)
            )
        # the sleep is the test: the proxy buffers all it would while the slow one runs
        await asyncio.sleep(0.6)
        (client,) = proxy.front.clients
        queued = sum(len(part) for exchange in client.pending for part in (exchange.body or ()))
        current = client.current_in
        if current is not None and current is not client.exchange:
            queued += sum(len(part) for part in current.body or ())
        assert queued <= 2 * len(body), f"{queued} bytes of queued bodies buffered"
        got = await Responses(reader).read(8, timeout=4)
        assert [json.loads(b)["len"] for _, _, b in got] == [0] + [len(body)] * 7
        writer.close()
        await settled(proxy)


async def test_a_burst_of_pipelined_requests_does_not_wedge_the_connection(edge):
    """More than MAX_PIPELINE requests parsed from one read paused the socket once per
    request over the bound but resumed it only once: the connection was never read
    again, and the client's next request hung until the idle timeout closed it."""
    proxy, _, _ = edge
    reader, writer = await connect(proxy)
    burst = b"".join(
        b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\nX-Req: %d\r\n\r\n" % i for i in range(12)
    )
    writer.write(burst)
    responses = Responses(reader)
    got = await responses.read(12, timeout=3)
    assert [json.loads(b)["req"] for _, _, b in got] == [str(i) for i in range(12)]
    writer.write(b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\nX-Req: after\r\n\r\n")
    got = await responses.read(13, timeout=0.8)
    assert len(got) == 13 and json.loads(got[12][2])["req"] == "after"
    writer.close()
    await settled(proxy)


# -- the login integration on the fast path ------------------------------------------------


async def test_a_spoofed_forwarded_for_line_does_not_escape_the_rate_limit(tmp_path):
    """Behind one trusted proxy that adds its own ``X-Forwarded-For`` line (HAProxy's
    ``option forwardfor`` does), the fast path read only the *first* line, the one the
    client wrote: a new fake address per request escaped the anonymous rate limit.
    Field lines combine in order (RFC 9110 §5.3): the trusted entry is the last."""
    from router_proxy.auth import AuthSettings

    settings = replace(LIMITS, auth=AuthSettings(rate_limit_anon=1, forwarded_hops=1))
    async with edge_stack(tmp_path, settings) as (proxy, _, _):
        reader, writer = await connect(proxy)
        writer.write(
            b"".join(
                b"GET /api/guilds/42/x HTTP/1.1\r\nHost: p\r\n"
                b"X-Forwarded-For: 10.0.0.%d\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n" % i
                for i in range(6)
            )
        )
        got = await Responses(reader).read(6, timeout=2)
        writer.close()
    statuses = [s for s, _, _ in got]
    assert statuses[:2] == [401, 401] and set(statuses[2:]) == {429}, statuses


# -- routing: nothing outside /api/guilds/... of a pod is reachable (held) ------------------


class RoutedPod(AppServer):
    """The pod's real route shapes: a guild API, /interactions, the migration API."""

    def __init__(self) -> None:
        super().__init__(
            {
                ("*", "/api/guilds/{guild_id}/settings"): self.hit,
                ("POST", "/interactions"): self.hit,
                ("GET", "/internal/table"): self.hit,
                ("GET", "/data/guilds/{guild_id}"): self.hit,
            }
        )
        self.reached: list[str] = []

    async def hit(self, request: web.Request) -> web.Response:
        self.reached.append(request.match_info.route.resource.canonical)
        return web.json_response({"reached": request.match_info.route.resource.canonical})


TRAVERSALS = [
    b"POST /api/guilds/42/../../interactions",
    b"POST /api/guilds/42/%2e%2e/%2E%2E/interactions",
    b"POST /api/guilds/42/..%2f..%2finteractions",
    b"GET /api/guilds/42/./../../internal/table",
    b"GET /api/guilds/42/settings/../../../../data/guilds/42",
    b"GET http://evil/internal/table",
    b"GET //internal/table",
    b"GET /api/guilds/42%2f..%2f..%2finternal/table",
    b"POST http://evil/interactions",
]


async def test_no_request_target_reaches_a_pod_route_outside_the_guild_api(tmp_path):
    async with (
        edge_stack(tmp_path) as (proxy, _, config),
        replacing_pod(proxy, config, RoutedPod()) as pod,
    ):
        for line in TRAVERSALS:
            reader, writer = await connect(proxy)
            writer.write(line + b" HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n\r\n{}")
            got = await Responses(reader).read(1, timeout=2)
            assert got and got[0][0] in (400, 404), (line, got)
            writer.close()
        reader, writer = await connect(proxy)  # the control: the API itself is reached
        writer.write(b"GET /api/guilds/42/settings HTTP/1.1\r\nHost: p\r\n\r\n")
        assert (await Responses(reader).read(1))[0][0] == 200
        writer.close()
        assert pod.reached == ["/api/guilds/{guild_id}/settings"]
        await settled(proxy)


async def test_trace_never_echoes_the_proxys_credentials_back(tmp_path):
    """TRACE took the aiohttp path and was forwarded to the pod with the forwarding
    token and a signed identity: anything upstream that answers TRACE as RFC 9110
    §9.3.8 says (an echo of the request) hands a client the token that opens
    ``/interactions`` on every pod. Nothing here needs TRACE: 405 at the door."""
    async with (
        edge_stack(tmp_path) as (proxy, _, config),
        replacing_pod(proxy, config, HeaderPod()),
    ):
        for target in (b"/api/guilds/42/x", b"/no-such-page"):
            reader, writer = await connect(proxy)
            writer.write(b"TRACE %s HTTP/1.1\r\nHost: p\r\n\r\n" % target)
            got = await Responses(reader).read(1, timeout=2)
            writer.close()
            assert got and got[0][0] == 405, got
            assert b"inside" not in got[0][2] and "error" in json.loads(got[0][2])
        await settled(proxy)


async def test_a_non_idempotent_request_is_never_sent_twice(tmp_path):
    """A pod that took a body-less POST and then dropped the connection got it again:
    the fast path retried every body-less request whose connection closed before an
    answer. It cannot know whether the pod acted on it, and RFC 9110 §9.2.2 says a
    proxy MUST NOT retry non-idempotent requests by itself. Idempotent ones still are."""

    def script_for(box: list[ScriptPod]) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            box[0].requests += 1  # acted on it, then died before answering

        return script

    async with pod_stack(tmp_path, script_for) as (proxy, pod):
        for method, tries in ((b"POST", 1), (b"PATCH", 1), (b"GET", 2), (b"DELETE", 2)):
            pod.requests = 0
            reader, writer = await connect(proxy)
            writer.write(b"%s /api/guilds/42/x HTTP/1.1\r\nHost: p\r\n\r\n" % method)
            got = await Responses(reader).read(1, timeout=2)
            assert [s for s, _, _ in got] == [503]
            assert pod.requests == tries, (method, pod.requests)
            writer.close()
        await settled(proxy)
