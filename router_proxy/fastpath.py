"""The proxy's front door: a raw asyncio protocol that forwards ``/api/guilds/...`` itself.

aiohttp costs about 250 µs of Python per proxied request (server request objects,
client session machinery, multidicts); the API path needs far less: parse with
httptools, route from the in-memory table, copy bytes between two sockets over a
keep-alive pool. Everything else (dashboard, Discord webhooks, health, metrics) is
forwarded byte for byte to the aiohttp app on a private Unix socket, where the rules
of ``proxy.py`` apply unchanged. HEAD and the other body-less-answer methods take the
aiohttp path, on a connection that is never pooled afterwards.

The API path keeps the proxy's contract: the owner from ``RoutingTable.route``, the
``X-Modbot-*`` headers, hop-by-hop headers dropped (RFC 9110 §7.6.1) and bodies
re-framed, client ``X-Modbot-*`` and ``Authorization`` replaced, per-pod circuit
breakers, one jittered retry for body-less requests (idempotent ones only once the pod
may have seen them), 503 JSON with ``Retry-After``.

Relaying HTTP/1.1 safely (this is the only public component):

- An upstream connection goes back to the pool only when its response was read in full
  *and* the request was sent in full; anything else closes it. A pooled connection that
  still owes bytes would hand one client's response to the next one.
- ``Expect: 100-continue`` is answered here (``100 Continue`` once the request is routed
  and the exchange is the connection's current one, or the final error and a close) and
  not forwarded; other expectations get 417. Interim responses from upstream never end
  an exchange: ``100`` is absorbed (we asked for none), other 1xx (``103``) are relayed
  to HTTP/1.1 clients, ``101`` closes both sides (we never ask for an upgrade).
- Limits, each with the status a client expects: request target (414), header block and
  header count (431), body per route (413), headers and body that stall (408 and close),
  idle keep-alive connections (closed), connections per process (503 and close), at
  most ``MAX_PIPELINE`` requests and about one body limit of their bodies queued per
  connection (then the socket stops being read; a client we stopped reading is not timed
  out for it). ``TRACE`` is refused (405): an echo upstream would return our credentials.
- HTTP/1.0 clients never get chunked framing (close-delimited instead) and are told
  ``Connection: keep-alive`` when kept alive; an upstream answer with no length and no
  chunked coding ends at the upstream's close and is relayed whole.
- The breaker hears only about the pod's health: connect failures, and resets or
  timeouts of requests the client had sent in full. Any HTTP answer means the pod is up;
  a client that is slow or sends too much never counts against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import secrets
import time
from collections import deque
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from modbot_ring import InvalidGuildId, NoRouteError, Route, parse_guild_id

from .proxy import HOP_BY_HOP as HOP_BY_HOP_HEADERS
from .proxy import MAX_WEBHOOK_BODY, RouterProxy, Unavailable
from .tally import Tally

log = logging.getLogger("modbot.proxy.fast")

API_PREFIX = b"/api/guilds/"
ROUTE_NAME = "/api/guilds/{guild_id}/{tail}"
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
HOP_BY_HOP = frozenset(h.encode() for h in HOP_BY_HOP_HEADERS) | {b"expect"}
SKIP_TO_APP = HOP_BY_HOP | {b"x-forwarded-for"}
# credentials end here: the pod gets the identity the proxy signs instead (login.py)
SKIP_TO_POD = HOP_BY_HOP | {b"x-forwarded-for", b"authorization", b"cookie", b"x-request-id"}
# a client's X-Request-Id is passed on only if safe to log and echo (observability.py's rule)
_SANE_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}").fullmatch
SLOW_METHODS = frozenset({b"HEAD", b"CONNECT", b"OPTIONS", b"TRACE"})
# may be sent again after the pod may have acted on them (RFC 9110 §9.2.2)
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
MAX_IDLE = 512
MAX_PIPELINE = 8  # requests queued behind the current one before we stop reading
HEAD_SLACK = 256 * 1024  # one socket read: how far a header may run before we see it whole
OTHER_BODY_LIMIT = MAX_WEBHOOK_BODY  # pages, login forms, webhooks: small bodies only

# what a client connection is waiting for, for the sweep
NO_DEADLINE, HEAD_DEADLINE, BODY_DEADLINE, IDLE_DEADLINE = 0, 1, 2, 3

_DROPPED: dict[bytes, bool] = {}


class Refusal(Exception):
    """Raised from a parser callback: answer ``status`` and close the connection."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


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


def _tokens(value: bytes, into: set[bytes] | None) -> set[bytes]:
    """The lowered tokens of a ``Connection`` header value, added to ``into``."""
    out = into if into is not None else set()
    out.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return out


def _error(
    status: int, why: str, extra: bytes = b"", close: bool = True, http10: bool = False
) -> bytes:
    """A JSON error. ``http10``: a 1.0 client kept alive must be told so, or it waits
    for a close."""
    body = json.dumps({"error": why}).encode()
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\n%s%s\r\n%s"
        % (
            status,
            REASONS.get(status, b"Error"),
            len(body),
            extra,
            b"Connection: close\r\n"
            if close
            else (b"Connection: keep-alive\r\n" if http10 else b""),
            body,
        )
    )


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
        self.interim = False  # parsing a 1xx: it never ends the exchange
        self.paused_client: Front | None = None  # the client we stopped reading for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transports too

    def connection_lost(self, exc: Exception | None) -> None:
        clean = exc is None and not self.closed  # the peer closed: not a reset, not us
        self.closed = True
        self.pool.forget(self)
        if self.exchange is not None:
            exchange, self.exchange = self.exchange, None
            if clean and exchange.until_close and not self.interim:
                exchange.response_done()  # a close-delimited body ends here
                return
            exchange.upstream_lost(self)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # nothing is owed on an idle connection: it is broken
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.close()
        exchange.client.flush()

    # flow control: a pod that reads slowly pauses the client that writes to it
    def pause_writing(self) -> None:
        if self.exchange is not None and self.paused_client is None:
            self.paused_client = self.exchange.client
            self.paused_client.pause_reading()

    def resume_writing(self) -> None:
        client, self.paused_client = self.paused_client, None
        if client is not None:
            client.resume_reading()

    def send(self, exchange: Exchange, head: bytes) -> None:
        self.exchange = exchange
        self.headers = []  # the parser itself carries on across keep-alive responses
        assert self.transport is not None
        self.transport.write(head)

    def close(self) -> None:
        self.resume_writing()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.pool.forget(self)
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.exchange is None:  # bytes nobody asked for: the connection is unusable
            raise Refusal(502, "unsolicited response from upstream")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        status = self.parser.get_status_code()
        if status < 200:
            self.interim = True
            if status == 101:  # we never ask for an upgrade: the peer is confused
                raise Refusal(502, "unexpected 101 from upstream")
            if exchange is not None and status != 100:
                exchange.interim_head(status, self.headers)
            self.headers = []
            return
        if exchange is not None:
            exchange.response_head(status, self.headers)
            if exchange.head_only:  # a HEAD answer has no body, whatever it says
                self.exchange = None
                exchange.response_done()
                self.close()

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None and not self.interim:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        exchange, self.exchange = self.exchange, None
        self.used = True
        if exchange is not None:
            # reusable only if nothing is owed either way: the whole response was read
            # (it was: the message is complete) and the whole request was sent
            keep = (
                self.parser.should_keep_alive()
                and exchange.body_done
                and self.paused_client is None  # our request is not all written yet
            )
            exchange.response_done()
            if keep and not self.closed:
                self.pool.release(self)
                return
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
            for conn in list(idle):
                conn.close()
        self.idle.clear()


class Exchange:
    """One client request and its response, forwarded over one upstream connection."""

    __slots__ = (
        "body",
        "body_done",
        "body_limit",
        "chunked_in",
        "chunked_out",
        "client",
        "conn",
        "deadline",
        "done",
        "expect",
        "has_body",
        "head",
        "head_only",
        "http11",
        "keep_alive",
        "key",
        "method",
        "pod",
        "problem",
        "queued",
        "received",
        "refusal",
        "retried",
        "rid",
        "route",
        "sent",
        "started",
        "status",
        "until_close",
        "upstream_status",
    )

    def __init__(self, client: Front, method: bytes, keep_alive: bool, http11: bool) -> None:
        self.client = client
        self.method = method
        self.keep_alive = keep_alive
        self.http11 = http11
        self.body: list[bytes] | None = []  # buffered until an upstream is attached
        self.body_done = False
        self.body_limit = OTHER_BODY_LIMIT
        self.received = 0
        self.conn: Upstream | None = None
        self.head = b""
        self.key = ""
        self.has_body = False
        self.head_only = method == b"HEAD"
        self.expect = False
        self.chunked_in = False
        self.upstream_status = 0
        self.pod = ""  # empty: the aiohttp path (no metrics here, the app counts it)
        self.problem: Unavailable | None = None
        self.refusal: tuple[int, str] | tuple[int, str, bytes] | None = None
        self.route: Route | None = None
        self.rid = b""  # X-Request-Id on the API path: the client's if sane, else ours
        self.sent = False
        self.done = False
        self.retried = False
        self.queued = 0  # body bytes buffered while queued behind another exchange
        self.until_close = False  # the response body ends when the upstream closes
        self.status = 0
        self.chunked_out = False
        self.started = time.perf_counter()
        self.deadline = 0.0  # monotonic; 0: no deadline (the aiohttp path keeps its own)

    # -- request side -------------------------------------------------------------------------

    def request_body(self, data: bytes, chunked: bool) -> None:
        self.received += len(data)
        if self.received > self.body_limit:
            raise Refusal(413, f"request body over {self.body_limit} bytes")
        self._send_up(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)

    def request_done(self, chunked: bool) -> None:
        self.body_done = True
        if chunked:
            self._send_up(b"0\r\n\r\n")

    def _send_up(self, data: bytes) -> None:
        """Straight to the pod once connected; until then, kept with the head."""
        if self.body is not None:
            self.body.append(data)
            client = self.client
            if client.exchange is not self:  # queued behind another: bound what waits
                self.queued += len(data)
                client.queued += len(data)
                if client.queued > client.front.max_body_bytes and not client.held:
                    client.held = True
                    client.pause_reading()
        elif self.conn is not None and self.conn.transport is not None:
            self.conn.transport.write(data)
        # else: answered already (an early error): the rest of the body is dropped

    def attach(self, conn: Upstream) -> None:
        self.conn = conn
        conn.send(self, self.head + b"".join(self.body or ()))
        self.body = None

    # -- response side ------------------------------------------------------------------------

    def interim_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """A 1xx other than 100 (103 Early Hints...): relayed, unless the client is 1.0."""
        if not self.http11 or self.sent:
            return
        listed = _listed(headers)
        out = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Informational"))]
        out.extend(b"%s: %s\r\n" % (n, v) for n, v in headers if not _drop(n, listed))
        out.append(b"\r\n")
        self.client.out.append(b"".join(out))

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = self.upstream_status = status
        if not self.body_done:
            # answered before the request was whole: the rest of it will not be read
            self.keep_alive = False
        out = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))]
        length = coding = None
        listed: set[bytes] | None = None
        kept: list[tuple[bytes, bytes]] = []
        ours = bool(self.pod)  # a pod's X-Modbot-* headers are ours to set, not its
        # one pass: hop-by-hop and framing headers are read, never copied; what a
        # Connection header lists is dropped once it is known (it may come last)
        for name, value in headers:
            lower = name.lower()
            if lower in HOP_BY_HOP:
                if lower == b"content-length":
                    length = value
                elif lower == b"transfer-encoding":
                    coding = value
                elif lower == b"connection":
                    listed = _tokens(value, listed)
            elif not (ours and (lower.startswith(b"x-modbot-") or lower == b"x-request-id")):
                kept.append((lower, b"%s: %s\r\n" % (name, value)))
        if listed:
            out.extend([line for lower, line in kept if lower not in listed])
        else:
            out.extend([line for _, line in kept])
        if self.route is not None:
            out.append(self.client.front.route_headers(self.route))
            out.append(b"X-Request-Id: %s\r\n" % self.rid)
        if length is not None:
            out.append(b"Content-Length: %s\r\n" % length)
        elif not (status in (204, 304) or self.head_only):
            # no length and not chunked: the body runs to the upstream's close (RFC 9112 §6.3)
            self.until_close = coding is None or not coding.rstrip().lower().endswith(b"chunked")
            if self.http11:
                out.append(b"Transfer-Encoding: chunked\r\n")
                self.chunked_out = True
            else:  # HTTP/1.0 has no chunked coding: the close ends the body
                self.keep_alive = False
        if not self.keep_alive:
            out.append(b"Connection: close\r\n")
        elif not self.http11:  # a 1.0 client assumes a close unless told otherwise
            out.append(b"Connection: keep-alive\r\n")
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
        if self.client.exchange is not self or self.done:
            return
        self.conn = None
        if not self.sent and self.retryable and not self.retried and self.method in IDEMPOTENT:
            # a keep-alive connection the pod had just closed: once more, if sending it
            # twice is harmless (the pod may have acted on it before closing)
            self.retried = True
            self.client.front.dispatch(self, fresh=True)
            return
        if self.sent:
            self.client.abort()
            self.finish(status=499)
            return
        # a reset counts against the pod only if the client had sent the request in full
        kind = "closed" if self.body_done else None
        self.fail(Unavailable(f"{self.upstream_name} closed the connection", 2), kind)

    @property
    def upstream_name(self) -> str:
        return f"pod {self.pod}" if self.pod else "the proxy's own app"

    @property
    def retryable(self) -> bool:
        return not self.has_body

    def drop_upstream(self) -> None:
        """Close the upstream connection: whatever it still owes is of no use to anyone."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.exchange = None
            conn.close()

    def timeout(self) -> None:
        self.drop_upstream()
        if self.sent:
            self.client.abort()
            self.finish(status=499)
        elif not self.body_done:  # still waiting for the client's body: its slowness
            self.client.refuse(408, "request body not received in time", self)
        else:
            self.fail(Unavailable(f"pod {self.pod} did not answer (timeout)", 2), "timeout")

    def fail(self, exc: Unavailable, kind: str | None = None) -> None:
        front = self.client.front
        if kind is not None and self.pod:
            breaker = front.proxy.breaker_for(self.pod)
            breaker.failure()
            front.proxy.metrics.upstream_errors.labels(self.pod, kind).inc()
        if not self.body_done:
            self.keep_alive = False  # the rest of the body will not be read
            self.drop_upstream()
        extra = b"Retry-After: %d\r\n" % exc.retry_after
        if self.route is not None:
            extra += front.route_headers(self.route)
        if self.rid:
            extra += b"X-Request-Id: %s\r\n" % self.rid
        self.status = 503
        self.client.write(_error(503, exc.why, extra, not self.keep_alive, not self.http11))
        self.finish()

    def finish(self, status: int | None = None) -> None:
        if self.done:
            return
        self.done = True
        if self.deadline:
            self.deadline = 0.0
            self.client.front.inflight.discard(self)
        front = self.client.front
        if self.pod:
            if self.upstream_status:  # it answered: whatever it said, the pod is up
                front.proxy.breaker_for(self.pod).success()
                if self.upstream_status >= 500:
                    front.proxy.metrics.upstream_errors.labels(self.pod, "5xx").inc()
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
        self.header_bytes = 0
        self.head_bytes = 0  # bytes fed while the current request's head is incomplete
        self.in_head = False
        self.exchange: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        self.current_in: Exchange | None = None
        self.out: list[bytes] = []
        self.chunked_in = False
        self.closing = False
        self.pauses = 0
        self.deadline = 0.0
        self.waiting = NO_DEADLINE
        self.broken: tuple[int, str] | None = None  # an error owed once earlier answers are out
        self.queued = 0  # body bytes buffered for queued requests (bounded: see _send_up)
        self.held = False  # reading paused until those are sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # uvloop transports too
        self.transport = stream
        server = self.front
        if len(server.clients) >= server.max_connections:
            self.closing = True
            server.proxy.metrics.refused.labels("connections").inc()
            stream.write(_error(503, "too many connections", b"Retry-After: 1\r\n"))
            stream.close()
            return
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if isinstance(peer, tuple) else b""
        server.clients.add(self)
        self.expect_by(HEAD_DEADLINE, server.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.clients.discard(self)
        self.closing = True
        exchange = self.exchange
        if exchange is not None:
            exchange.drop_upstream()
            if exchange.deadline:
                exchange.deadline = 0.0
                self.front.inflight.discard(exchange)

    def data_received(self, data: bytes) -> None:
        if self.closing or self.broken is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Refusal):
                self.refuse(cause.status, cause.why)
            elif not self.closing:
                raise
        except httptools.HttpParserUpgrade:
            self.refuse(400, "protocol upgrades are not proxied")
        except httptools.HttpParserError:
            self.refuse(400, "malformed HTTP request")
        else:
            if self.in_head:
                # httptools keeps a header it has not seen the end of: bound that too
                self.head_bytes += len(data)
                if self.head_bytes > self.front.max_head_bytes + HEAD_SLACK:
                    self.refuse(431, "request header fields too large")

    def refuse(self, status: int, why: str, exchange: Exchange | None = None) -> None:
        """Answer an error and close the connection. The answer goes out only if it
        cannot be mistaken for another request's: nothing of the current exchange's
        response was sent, and the refused request is the current one (or none is).
        A request refused by its head while earlier ones are still being answered waits
        its turn: those are answered first, then the error, then the close."""
        if self.closing or self.broken is not None:
            return
        self.front.proxy.metrics.refused.labels(str(status)).inc()
        current = self.exchange
        target = exchange or self.current_in
        if target is None and current is not None:
            self.broken = (status, why)
            self.pause_reading()
            return
        if current is None or (current is target and not current.sent):
            self.out.append(_error(status, why))
        if current is not None:
            current.drop_upstream()
            current.keep_alive = False  # nothing queued behind it runs on this connection
            current.status = status
            current.finish()
        self.abort(graceful=True)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        self.in_head = True
        if self.waiting != HEAD_DEADLINE:  # inlined expect_by: once per request
            self.waiting = HEAD_DEADLINE
            self.deadline = self.front.now + self.front.header_timeout

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.front.max_url_bytes:
            raise Refusal(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # checked per field, not per read: a 256 KiB read of tiny fields would otherwise
        # be parsed whole (65k tuples) before the refusal; trailers come here too
        headers = self.headers
        headers.append((name, value))
        self.header_bytes += len(name) + len(value) + 4
        if len(headers) > self.front.max_headers:
            raise Refusal(431, "too many request header fields")
        if self.header_bytes > self.front.max_head_bytes:
            raise Refusal(431, "request header fields too large")

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        parser = self.parser
        if parser.should_upgrade():  # refused before it is dispatched, not after
            raise Refusal(400, "protocol upgrades are not proxied")
        exchange = Exchange(
            self,
            parser.get_method(),
            bool(parser.should_keep_alive()),
            parser.get_http_version() == "1.1",
        )
        self.front.prepare(exchange, self.url, self.headers, self.peer)
        if exchange.refusal is not None and exchange.refusal[0] in (413, 417):
            # refused before its body is read: answered in turn, then the close
            raise Refusal(*exchange.refusal)
        self.chunked_in = exchange.chunked_in
        self.current_in = exchange
        if exchange.has_body:
            self.waiting = BODY_DEADLINE
            self.deadline = self.front.now + self.front.body_timeout
        else:
            self.waiting = NO_DEADLINE
            self.deadline = 0.0
        if self.exchange is None:
            self.exchange = exchange
            self.front.dispatch(exchange)
        else:
            self.pending.append(exchange)
            # once, on reaching the bound (one read can queue more): exchange_done
            # resumes once, when the queue drops back below it
            if len(self.pending) == MAX_PIPELINE:
                self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self.current_in is not None:
            if self.waiting == BODY_DEADLINE:
                self.deadline = self.front.now + self.front.body_timeout
            self.current_in.request_body(body, self.chunked_in)

    def on_message_complete(self) -> None:
        if self.current_in is not None:
            self.current_in.request_done(self.chunked_in)
            self.current_in = None
        if self.waiting == BODY_DEADLINE:
            self.expect_by(NO_DEADLINE, 0)

    # deadlines, checked by the server's sweep on a coarse clock
    def expect_by(self, waiting: int, seconds: float) -> None:
        self.waiting = waiting
        self.deadline = self.front.now + seconds if waiting else 0.0

    def expired(self) -> None:
        if self.pauses and self.waiting != IDLE_DEADLINE:
            # we stopped reading (queue full, buffered bodies, a pod reading slowly):
            # what the client has not sent is not its slowness; the upstream
            # timeout bounds what we wait for
            timeout = (
                self.front.body_timeout
                if self.waiting == BODY_DEADLINE
                else self.front.header_timeout
            )
            self.deadline = self.front.now + timeout
            return
        waiting, self.waiting, self.deadline = self.waiting, NO_DEADLINE, 0.0
        if waiting == IDLE_DEADLINE or (waiting == HEAD_DEADLINE and not self.in_head):
            if self.exchange is None and not self.pending:
                self.abort(graceful=True)  # nothing asked, nothing owed
            return
        self.refuse(408, "request not received in time")

    # flow control: reading from the client stops while anyone needs it to
    def pause_reading(self) -> None:
        self.pauses += 1
        if self.pauses == 1 and self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.pauses == 0:
            return
        self.pauses -= 1
        if self.pauses == 0 and self.transport is not None and not self.closing:
            self.transport.resume_reading()

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
        if self.closing:
            return
        if self.pending:
            if len(self.pending) == MAX_PIPELINE:
                self.resume_reading()
            self.exchange = nxt = self.pending.popleft()
            if nxt.queued:  # its body goes upstream now: no longer waiting in memory
                self.queued -= nxt.queued
                nxt.queued = 0
                if self.held and self.queued <= self.front.max_body_bytes:
                    self.held = False
                    self.resume_reading()
            self.front.dispatch(nxt)
        elif self.broken is not None:
            self.out.append(_error(*self.broken))
            self.abort(graceful=True)
        elif not self.in_head and self.current_in is None:
            self.waiting = IDLE_DEADLINE
            self.deadline = self.front.now + self.front.idle_timeout


class FrontServer:
    """Accepts clients; routes API requests to pods, everything else to the aiohttp app."""

    def __init__(self, proxy: RouterProxy, app_socket: str) -> None:
        settings = proxy.settings
        self.proxy = proxy
        self.app_socket = app_socket
        self.pool = Pool()
        self.clients: set[Front] = set()
        self.inflight: set[Exchange] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.server: asyncio.AbstractServer | None = None
        self.loop = asyncio.get_event_loop()
        self.token = settings.internal_token.encode()
        self.gate = proxy.gate.fast_check  # who asks (login.py), bound once
        self.timeout = settings.upstream_timeout
        self.max_url_bytes = settings.max_url_bytes
        self.max_head_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self.max_body_bytes = settings.max_body_bytes
        self.header_timeout = settings.header_timeout
        self.body_timeout = settings.body_timeout
        self.idle_timeout = settings.idle_timeout
        self.max_connections = settings.max_connections
        self.now = time.monotonic()  # the sweep's coarse clock, for client deadlines
        self._addresses: dict[str, tuple[str, int, bytes]] = {}
        self._counters: dict[tuple[str, int], Any] = {}
        # counted in batches (tally.py): Prometheus' locks cost as much as the request
        self._tally = Tally(self._counter, proxy.metrics.latency.labels(ROUTE_NAME))
        proxy.before_scrape.hooks.append(self._tally.flush)
        self._route_headers: dict[tuple[str, str, int], bytes] = {}
        # request ids: a random prefix per process and a counter (cheaper than 8 random
        # bytes a request, and as unique: 16 hex digits, like the aiohttp side's)
        self._rid_prefix = secrets.token_hex(4).encode()
        self._rids = 0

    async def start(self, host: str, port: int) -> int:
        self.loop = asyncio.get_running_loop()
        self.server = await self.loop.create_server(
            lambda: Front(self), host, port, reuse_port=True, backlog=4096
        )
        self._sweeper = self.loop.create_task(self._sweep())
        return int(self.server.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        """Deadlines, checked four times a second: cheaper than a timer handle armed and
        cancelled on every request, and as precise as second-scale timeouts need.
        Upstream deadlines every tick; client deadlines once a second."""
        tick = 0
        while True:
            await asyncio.sleep(0.25)
            now = self.now = time.monotonic()
            self._tally.flush()
            for exchange in [e for e in self.inflight if e.deadline and e.deadline <= now]:
                self.inflight.discard(exchange)
                exchange.deadline = 0.0
                exchange.timeout()
            tick += 1
            if tick % 4 == 0:
                for client in [c for c in self.clients if c.deadline and c.deadline <= now]:
                    client.expired()

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
        self._tally.add((pod, status), seconds)

    def _counter(self, key: tuple[str, int]) -> Any:
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.proxy.metrics.requests.labels(
                ROUTE_NAME, key[0], str(key[1])
            )
        return counter

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
        length = forwarded = expect = rid = None
        host = b"localhost"
        chunked = False
        for low, _, value in lowered:  # one pass over the headers
            if low == b"content-length":
                length = value
            elif low == b"host":
                host = value
            elif low == b"x-forwarded-for":  # every line, in order (RFC 9110 §5.3)
                forwarded = value if forwarded is None else b"%s, %s" % (forwarded, value)
            elif low == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif low == b"connection":
                listed = listed | {t.strip().lower() for t in value.split(b",") if t.strip()}
            elif low == b"expect":
                expect = value.strip().lower()
            elif low == b"x-request-id":
                rid = value
        api = url.startswith(API_PREFIX) and method not in SLOW_METHODS
        if length is None and not chunked:  # most requests: no body to frame or bound
            exchange.body_done = True  # nothing to wait for: the request is whole
            framing = b""
        else:
            if api:
                exchange.body_limit = self.max_body_bytes
            exchange.chunked_in = chunked
            declared = int(length) if length is not None and length.strip().isdigit() else 0
            exchange.has_body = chunked or declared > 0
            if not exchange.has_body:
                exchange.body_done = True
            if declared > exchange.body_limit:
                exchange.refusal = (413, f"request body over {exchange.body_limit} bytes")
                return
            framing = (
                b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %s\r\n" % length
            )
        if expect is not None:
            if expect != b"100-continue":
                exchange.refusal = (417, "only 'Expect: 100-continue' is supported")
                return
            exchange.expect = exchange.http11 and exchange.has_body
        xff = b"%s, %s" % (forwarded, peer) if forwarded else peer
        if not api:
            if method == b"TRACE":  # an echo upstream would hand back our credentials
                exchange.refusal = (405, "TRACE is not supported")
                return
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
        # the request id first: every answer from here on carries it, errors included
        if rid is None or not _SANE_ID(rid):
            self._rids += 1
            rid = b"%s%08x" % (self._rid_prefix, self._rids & 0xFFFFFFFF)
        exchange.rid = rid
        query = url.find(b"?")
        path = url if query < 0 else url[:query]
        if b"/." in path or b"%" in path or b"\\" in path:
            # dot-segments, and encodings a pod might decode into them or into a slash:
            # a /api target must name the route it reaches (a cheap guard: ids are digits)
            lowered_path = path.lower()
            if (
                b"/." in path
                or b"%2e" in lowered_path
                or b"%2f" in lowered_path
                or b"%5c" in lowered_path
                or b"\\" in path
            ):
                exchange.refusal = (400, "request target with dot-segments or encoded separators")
                return
        try:
            guild = url[len(API_PREFIX) :].split(b"/", 1)[0].split(b"?", 1)[0]
            guild_text = guild.decode("ascii", "replace")
            gid = parse_guild_id(guild_text)  # canonical digits: guild_text == str(gid)
            # who asks, before anything is routed (login.py: cookie or token, CSRF, limits)
            identity = self.gate(exchange, method, url, guild_text, lowered, peer)
            if identity is None:
                return
            table = self.proxy.current_table()
            route = table.route(gid)
            exchange.route = route
            exchange.pod = route.pod
            base = self.proxy.target(table, route)
        except InvalidGuildId as exc:
            exchange.refusal = (400, str(exc))
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
            [
                b"%s: %s\r\n" % (n, v)
                for low, n, v in lowered
                if low not in SKIP_TO_POD and low not in listed and not low.startswith(b"x-modbot-")
            ]
        )
        exchange.key = f"{address[0]}:{address[1]}"
        exchange.head = (
            b"%s %s HTTP/1.1\r\nHost: %s\r\n%sAuthorization: Bearer %s\r\nX-Modbot-Identity: %s\r\n"
            b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\nX-Request-Id: %s\r\n%s\r\n"
            % (method, url, address[2], kept, self.token, identity, xff, rid, framing)
        )

    def dispatch(self, exchange: Exchange, fresh: bool = False) -> None:
        client = exchange.client
        if exchange.refusal is not None:  # bad input: 4xx, never routed
            status, why = exchange.refusal[0], exchange.refusal[1]
            extra = exchange.refusal[2] if len(exchange.refusal) > 2 else b""  # e.g. Retry-After
            if exchange.rid:
                extra += b"X-Request-Id: %s\r\n" % exchange.rid
            if not exchange.body_done:
                exchange.keep_alive = False
            exchange.status = status
            client.write(_error(status, why, extra, not exchange.keep_alive, not exchange.http11))
            self.count("-", status, time.perf_counter() - exchange.started)
            exchange.finish()
            return
        if exchange.problem is not None:  # routed, but the owner cannot be reached now
            exchange.fail(exchange.problem)
            return
        if exchange.expect and not exchange.body_done:  # routed: now the body may come
            exchange.expect = False
            client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not exchange.deadline and exchange.pod:
            exchange.deadline = time.monotonic() + self.timeout
            self.inflight.add(exchange)
        conn = None if fresh or exchange.head_only else self.pool.take(exchange.key)
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
            if exchange.client.closing or exchange.done:
                return
            if exchange.pod and exchange.retryable and not exchange.retried:
                exchange.retried = True
                breaker = self.proxy.breaker_for(exchange.pod)
                breaker.failure()
                self.proxy.metrics.upstream_errors.labels(exchange.pod, "connect").inc()
                if breaker.allow():
                    await asyncio.sleep(random.uniform(0.02, 0.1))
                    if not exchange.done:
                        self.dispatch(exchange, fresh=True)
                    return
                exchange.fail(Unavailable(f"pod {exchange.pod} did not answer (connect)", 2))
                return
            exchange.fail(
                Unavailable(f"{exchange.upstream_name} did not answer (connect)", 2), "connect"
            )
            return
        if exchange.client.closing or exchange.done:
            conn.close()  # nothing was sent on it, but it is cheaper to drop than to audit
            return
        exchange.attach(conn)
