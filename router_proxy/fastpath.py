"""The proxy's front door: a raw asyncio protocol that forwards ``/api/guilds/...`` itself.

aiohttp costs about 250 µs of Python per proxied request (server request objects,
client session machinery, multidicts); the API path needs far less: parse with
httptools, route from the in-memory table, copy bytes between two sockets over a
keep-alive pool. Everything else (dashboard, Discord webhooks, health, metrics) is
forwarded byte for byte to the aiohttp app on a private Unix socket, where the rules
of ``proxy.py`` apply unchanged. HEAD, ``Expect`` and ``Upgrade`` requests take the
aiohttp path too, so the fast path only ever sees plain request/response exchanges.

The API path keeps the proxy's contract: the owner from ``RoutingTable.route``, the
``X-Modbot-*`` headers, hop-by-hop headers dropped (RFC 9110 §7.6.1) and bodies
re-framed, client ``X-Modbot-*`` and ``Authorization`` replaced, per-pod circuit
breakers, one jittered retry for body-less requests, 503 JSON with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import httptools

from modbot_ring import InvalidGuildId, NoRouteError, Route, parse_guild_id

from .proxy import HOP_BY_HOP as HOP_BY_HOP_HEADERS
from .proxy import RouterProxy, Unavailable

log = logging.getLogger("modbot.proxy.fast")

API_PREFIX = b"/api/guilds/"
ROUTE_NAME = "/api/guilds/{guild_id}/{tail}"
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
HOP_BY_HOP = frozenset(h.encode() for h in HOP_BY_HOP_HEADERS)  # proxy.py's list, as bytes
SKIP_TO_APP = HOP_BY_HOP | {b"x-forwarded-for"}
SKIP_TO_POD = HOP_BY_HOP | {b"x-forwarded-for", b"authorization"}
SLOW_METHODS = frozenset({b"HEAD", b"CONNECT", b"OPTIONS", b"TRACE"})
MAX_IDLE = 512


_DROPPED: dict[bytes, bool] = {}


def _drop(name: bytes, listed: frozenset[bytes]) -> bool:
    """Hop-by-hop, listed in ``Connection``, or ours (``X-Modbot-*``): not forwarded."""
    if listed:
        lower = name.lower()
        return lower in HOP_BY_HOP or lower in listed or lower.startswith(b"x-modbot-")
    dropped = _DROPPED.get(name)
    if dropped is None:
        lower = name.lower()
        dropped = lower in HOP_BY_HOP or lower.startswith(b"x-modbot-")
        if len(_DROPPED) < 1024:  # header names repeat; a hostile client cannot grow it
            _DROPPED[name] = dropped
    return dropped


def _listed(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names a ``Connection`` header declares hop-by-hop."""
    out: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            out.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(out)


class Upstream(asyncio.Protocol):
    """One keep-alive connection to a pod (or to the aiohttp app): one exchange at a time."""

    def __init__(self, pool: Pool, key: str) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.closed = False
        self.used = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transports too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.exchange is not None:
            exchange, self.exchange = self.exchange, None
            exchange.upstream_lost(self)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()
        if exchange is not None:
            exchange.client.flush()

    def send(self, exchange: Exchange, head: bytes) -> None:
        self.exchange = exchange
        self.headers = []  # the parser itself carries on across keep-alive responses
        assert self.transport is not None
        self.transport.write(head)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.exchange is not None:
            self.exchange.response_head(self.parser.get_status_code(), self.headers)

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        exchange, self.exchange = self.exchange, None
        self.used = True
        if exchange is not None:
            keep = self.parser.should_keep_alive()
            exchange.response_done()
            if keep and not self.closed:
                self.pool.release(self)
            else:
                self.close()


class Pool:
    """Idle keep-alive connections per upstream (a pod's host:port, or the app's socket)."""

    def __init__(self) -> None:
        self.idle: dict[str, deque[Upstream]] = {}

    def take(self, key: str) -> Upstream | None:
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def release(self, conn: Upstream) -> None:
        idle = self.idle.setdefault(conn.key, deque())
        if len(idle) >= MAX_IDLE:
            conn.close()
        else:
            idle.append(conn)

    def forget(self, conn: Upstream) -> None:
        idle = self.idle.get(conn.key)
        if idle:
            with contextlib.suppress(ValueError):
                idle.remove(conn)

    def close(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                conn.close()
        self.idle.clear()


class Exchange:
    """One client request and its response, forwarded over one upstream connection."""

    __slots__ = (
        "body",
        "body_done",
        "chunked_in",
        "chunked_out",
        "client",
        "conn",
        "deadline",
        "has_body",
        "head",
        "keep_alive",
        "key",
        "method",
        "pod",
        "problem",
        "refusal",
        "retried",
        "route",
        "sent",
        "started",
        "status",
        "upstream_status",
    )

    def __init__(self, client: Front, method: bytes, keep_alive: bool) -> None:
        self.client = client
        self.method = method
        self.keep_alive = keep_alive
        self.body: list[bytes] | None = []  # buffered until an upstream is attached
        self.body_done = False
        self.conn: Upstream | None = None
        self.head = b""
        self.key = ""
        self.has_body = False
        self.chunked_in = False
        self.upstream_status = 0
        self.pod = ""  # empty: the aiohttp path (no metrics here, the app counts it)
        self.problem: Unavailable | None = None
        self.refusal: str | None = None
        self.route: Route | None = None
        self.sent = False
        self.retried = False
        self.status = 0
        self.chunked_out = False
        self.started = time.perf_counter()
        self.deadline = 0.0  # monotonic; 0: no deadline (the aiohttp path keeps its own)

    # -- request side -------------------------------------------------------------------------

    def request_body(self, data: bytes, chunked: bool) -> None:
        self._send_up(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)

    def request_done(self, chunked: bool) -> None:
        self.body_done = True
        if chunked:
            self._send_up(b"0\r\n\r\n")

    def _send_up(self, data: bytes) -> None:
        """Straight to the pod once connected; until then, kept with the head."""
        if self.conn is not None and self.body is None:
            assert self.conn.transport is not None
            self.conn.transport.write(data)
        else:
            assert self.body is not None
            self.body.append(data)

    def attach(self, conn: Upstream) -> None:
        self.conn = conn
        conn.send(self, self.head + b"".join(self.body or ()))
        self.body = None

    # -- response side ------------------------------------------------------------------------

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = self.upstream_status = status
        listed = _listed(headers)
        out = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))]
        length = None
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                length = value
            if self.pod:
                if _drop(name, listed):
                    continue
            elif lower in HOP_BY_HOP or lower in listed:
                continue
            out.append(b"%s: %s\r\n" % (name, value))
        if self.route is not None:
            out.append(self.client.front.route_headers(self.route))
        no_body = status in (204, 304) or 100 <= status < 200
        if length is not None:
            out.append(b"Content-Length: %s\r\n" % length)
        elif not no_body:
            out.append(b"Transfer-Encoding: chunked\r\n")
            self.chunked_out = True
        if not self.keep_alive:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        self.sent = True
        self.client.out.append(b"".join(out))

    def response_body(self, data: bytes) -> None:
        # queued, not written: the head and the body usually go out in one send()
        if self.chunked_out:
            self.client.out.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.client.out.append(data)

    def response_done(self) -> None:
        if self.chunked_out:
            self.client.out.append(b"0\r\n\r\n")
        self.client.flush()
        self.finish()

    # -- failures -----------------------------------------------------------------------------

    def upstream_lost(self, conn: Upstream) -> None:
        """The connection closed before the response was complete."""
        if self.client.exchange is not self:
            return
        self.conn = None
        if not self.sent and self.retryable and not self.retried:
            self.retried = True  # a keep-alive connection the pod had just closed: once more
            self.client.front.dispatch(self, fresh=True)
            return
        if self.sent:
            self.client.abort()
            self.finish(status=499)
            return
        self.fail(Unavailable(f"{self.upstream_name} closed the connection", 2), "closed")

    @property
    def upstream_name(self) -> str:
        return f"pod {self.pod}" if self.pod else "the proxy's own app"

    @property
    def retryable(self) -> bool:
        return not self.has_body

    def timeout(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.exchange = None
            conn.close()
        if self.sent:
            self.client.abort()
            self.finish(status=499)
        else:
            self.fail(Unavailable(f"pod {self.pod} did not answer (timeout)", 2), "timeout")

    def fail(self, exc: Unavailable, kind: str | None = None) -> None:
        front = self.client.front
        if kind is not None and self.pod:
            breaker = front.proxy.breaker_for(self.pod)
            breaker.failure()
            front.proxy.metrics.upstream_errors.labels(self.pod, kind).inc()
        body = json.dumps({"error": exc.why}).encode()
        extra = self.client.front.route_headers(self.route) if self.route is not None else b""
        self.status = 503
        self.client.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nRetry-After: %d\r\n%s%s\r\n%s"
            % (
                len(body),
                exc.retry_after,
                extra,
                b"" if self.keep_alive else b"Connection: close\r\n",
                body,
            )
        )
        self.finish()

    def finish(self, status: int | None = None) -> None:
        if self.deadline:
            self.deadline = 0.0
            self.client.front.inflight.discard(self)
        front = self.client.front
        if self.pod:
            answered = self.upstream_status
            if answered >= 500:
                front.proxy.breaker_for(self.pod).failure()
                front.proxy.metrics.upstream_errors.labels(self.pod, "5xx").inc()
            elif answered:
                front.proxy.breaker_for(self.pod).success()
            front.count(self.pod, status or self.status, time.perf_counter() - self.started)
        self.client.exchange_done(self)


class Front(asyncio.Protocol):
    """One client connection: parses requests, runs one exchange at a time, in order."""

    def __init__(self, server: FrontServer) -> None:
        self.front = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.exchange: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        self.current_in: Exchange | None = None
        self.out: list[bytes] = []
        self.chunked_in = False
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transports too
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if isinstance(peer, tuple) else b""
        self.front.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.clients.discard(self)
        self.closing = True
        exchange = self.exchange
        if exchange is not None and exchange.conn is not None:
            exchange.conn.exchange = None
            exchange.conn.close()
        if exchange is not None and exchange.deadline:
            exchange.deadline = 0.0
            self.front.inflight.discard(exchange)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not proxied")
        except httptools.HttpParserError:
            self._reject(400, "malformed HTTP request")

    def _reject(self, status: int, why: str) -> None:
        body = json.dumps({"error": why}).encode()
        self.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, REASONS[status], len(body), body)
        )
        self.abort(graceful=True)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        method = self.parser.get_method()
        exchange = Exchange(self, method, bool(self.parser.should_keep_alive()))
        self.front.prepare(exchange, self.url, self.headers, self.peer)
        self.chunked_in = exchange.chunked_in
        self.current_in = exchange
        if self.exchange is None:
            self.exchange = exchange
            self.front.dispatch(exchange)
        else:
            self.pending.append(exchange)

    def on_body(self, body: bytes) -> None:
        if self.current_in is not None:
            self.current_in.request_body(body, self.chunked_in)

    def on_message_complete(self) -> None:
        if self.current_in is not None:
            self.current_in.request_done(self.chunked_in)
            self.current_in = None

    # output, with back-pressure: a slow client pauses the upstream it reads from
    def pause_writing(self) -> None:
        conn = self.exchange.conn if self.exchange is not None else None
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()

    def resume_writing(self) -> None:
        conn = self.exchange.conn if self.exchange is not None else None
        if conn is not None and conn.transport is not None:
            conn.transport.resume_reading()

    def write(self, data: bytes) -> None:
        self.out.append(data)
        self.flush()

    def flush(self) -> None:
        out = self.out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def abort(self, graceful: bool = False) -> None:
        if graceful:
            self.flush()
        self.closing = True
        if self.transport is not None:
            if graceful:
                self.transport.close()
            else:
                self.transport.abort()

    def exchange_done(self, exchange: Exchange) -> None:
        if self.exchange is not exchange:
            return
        self.exchange = None
        if not exchange.keep_alive:
            self.abort(graceful=True)
            return
        if self.pending:
            self.exchange = self.pending.popleft()
            self.front.dispatch(self.exchange)


class FrontServer:
    """Accepts clients; routes API requests to pods, everything else to the aiohttp app."""

    def __init__(self, proxy: RouterProxy, app_socket: str) -> None:
        self.proxy = proxy
        self.app_socket = app_socket
        self.pool = Pool()
        self.clients: set[Front] = set()
        self.inflight: set[Exchange] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.server: asyncio.AbstractServer | None = None
        self.loop = asyncio.get_event_loop()
        self.token = proxy.settings.internal_token.encode()
        self.timeout = proxy.settings.upstream_timeout
        self._addresses: dict[str, tuple[str, int, bytes]] = {}
        self._counters: dict[tuple[str, int], Any] = {}
        self._latency = proxy.metrics.latency.labels(ROUTE_NAME)
        self._route_headers: dict[tuple[str, str, int], bytes] = {}

    async def start(self, host: str, port: int) -> int:
        self.loop = asyncio.get_running_loop()
        self.server = await self.loop.create_server(
            lambda: Front(self), host, port, reuse_port=True, backlog=4096
        )
        self._sweeper = self.loop.create_task(self._sweep())
        return int(self.server.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        """Upstream deadlines, checked four times a second: cheaper than a timer handle
        armed and cancelled on every request, and as precise as a 10 s timeout needs."""
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for exchange in [e for e in self.inflight if e.deadline and e.deadline <= now]:
                self.inflight.discard(exchange)
                exchange.deadline = 0.0
                exchange.timeout()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.server is not None:
            self.server.close()
        for client in list(self.clients):
            client.abort(graceful=True)
        self.pool.close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    # -- per request -------------------------------------------------------------------------

    def route_headers(self, route: Route) -> bytes:
        key = (route.pod, route.reason.value, route.version)
        cached = self._route_headers.get(key)
        if cached is None:
            if len(self._route_headers) > 4096:
                self._route_headers.clear()
            cached = self._route_headers[key] = (
                b"X-Modbot-Pod: %s\r\nX-Modbot-Route: %s\r\nX-Modbot-Table-Version: %d\r\n"
                % (route.pod.encode(), route.reason.value.encode(), route.version)
            )
        return cached

    def count(self, pod: str, status: int, seconds: float) -> None:
        counter = self._counters.get((pod, status))
        if counter is None:
            counter = self._counters[(pod, status)] = self.proxy.metrics.requests.labels(
                ROUTE_NAME, pod, str(status)
            )
        counter.inc()
        self._latency.observe(seconds)

    def prepare(
        self,
        exchange: Exchange,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        peer: bytes,
    ) -> None:
        """Decide where the request goes and build its upstream head (or its error)."""
        method = exchange.method
        lowered = [(n.lower(), n, v) for n, v in headers]
        listed: frozenset[bytes] = frozenset()
        length = forwarded = None
        host = b"localhost"
        special = chunked = False
        for low, _, value in lowered:  # one pass over the headers
            if low == b"content-length":
                length = value
            elif low == b"host":
                host = value
            elif low == b"x-forwarded-for":
                forwarded = value
            elif low == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif low == b"connection":
                listed = listed | {t.strip().lower() for t in value.split(b",") if t.strip()}
            elif low == b"expect" or low == b"upgrade":
                special = True
        exchange.chunked_in = chunked
        exchange.has_body = chunked or (length is not None and length.strip() != b"0")
        framing = (
            b"Transfer-Encoding: chunked\r\n"
            if chunked
            else (b"Content-Length: %s\r\n" % length if length is not None else b"")
        )
        xff = b"%s, %s" % (forwarded, peer) if forwarded else peer
        if special or method in SLOW_METHODS or not url.startswith(API_PREFIX):
            kept = b"".join(
                b"%s: %s\r\n" % (n, v)
                for low, n, v in lowered
                if low not in SKIP_TO_APP and low not in listed
            )
            exchange.key = "app"
            exchange.head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%sX-Forwarded-For: %s\r\n%s\r\n" % (
                method,
                url,
                host,
                kept,
                xff,
                framing,
            )
            return
        try:
            guild = url[len(API_PREFIX) :].split(b"/", 1)[0].split(b"?", 1)[0]
            gid = parse_guild_id(guild.decode("ascii", "replace"))
            table = self.proxy.current_table()
            route = table.route(gid)
            exchange.route = route
            exchange.pod = route.pod
            base = self.proxy.target(table, route)
        except InvalidGuildId as exc:
            exchange.refusal = str(exc)
            return
        except NoRouteError as exc:
            exchange.problem = Unavailable(str(exc), 5)
            return
        except Unavailable as exc:
            exchange.problem = exc
            return
        address = self._addresses.get(base)
        if address is None:
            parts = urlsplit(base)
            address = self._addresses[base] = (
                parts.hostname or "127.0.0.1",
                parts.port or 80,
                (parts.netloc or "localhost").encode(),
            )
        kept = b"".join(
            b"%s: %s\r\n" % (n, v)
            for low, n, v in lowered
            if low not in SKIP_TO_POD and low not in listed and not low.startswith(b"x-modbot-")
        )
        exchange.key = f"{address[0]}:{address[1]}"
        exchange.head = (
            b"%s %s HTTP/1.1\r\nHost: %s\r\n%sAuthorization: Bearer %s\r\n"
            b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\n%s\r\n"
            % (method, url, address[2], kept, self.token, xff, framing)
        )

    def dispatch(self, exchange: Exchange, fresh: bool = False) -> None:
        if exchange.refusal is not None:  # bad input: 400, never routed
            body = json.dumps({"error": exchange.refusal}).encode()
            exchange.client.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; charset=utf-8\r\n"
                b"Content-Length: %d\r\n%s\r\n%s"
                % (len(body), b"" if exchange.keep_alive else b"Connection: close\r\n", body)
            )
            self.count("-", 400, time.perf_counter() - exchange.started)
            exchange.finish()
            return
        if exchange.problem is not None:  # routed, but the owner cannot be reached now
            exchange.fail(exchange.problem)
            return
        if not exchange.deadline and exchange.pod:
            exchange.deadline = time.monotonic() + self.timeout
            self.inflight.add(exchange)
        conn = None if fresh else self.pool.take(exchange.key)
        if conn is not None:
            exchange.attach(conn)
            return
        self.loop.create_task(self._connect(exchange))

    async def _connect(self, exchange: Exchange) -> None:
        key = exchange.key
        try:
            if key == "app":
                _, conn = await self.loop.create_unix_connection(
                    lambda: Upstream(self.pool, key), self.app_socket
                )
            else:
                host, _, port = key.rpartition(":")
                _, conn = await asyncio.wait_for(
                    self.loop.create_connection(lambda: Upstream(self.pool, key), host, int(port)),
                    1.0,
                )
        except (OSError, TimeoutError):
            if exchange.client.closing:
                return
            if exchange.pod and exchange.retryable and not exchange.retried:
                exchange.retried = True
                breaker = self.proxy.breaker_for(exchange.pod)
                breaker.failure()
                self.proxy.metrics.upstream_errors.labels(exchange.pod, "connect").inc()
                if breaker.allow():
                    await asyncio.sleep(random.uniform(0.02, 0.1))
                    self.dispatch(exchange, fresh=True)
                    return
                exchange.fail(Unavailable(f"pod {exchange.pod} did not answer (connect)", 2))
                return
            exchange.fail(
                Unavailable(f"{exchange.upstream_name} did not answer (connect)", 2), "connect"
            )
            return
        if exchange.client.closing:
            self.pool.release(conn)
            return
        exchange.attach(conn)
