"""The router proxy: every request goes to the pod that owns its guild.

The owner is decided locally from the in-memory routing table (no I/O per request).
Responses carry ``X-Modbot-Pod``, ``X-Modbot-Route`` (pin/shard/ring) and
``X-Modbot-Table-Version``.

Discord interactions (``POST /webhooks/discord``), exactly:

1. body over 64 KiB -> 413; bad, missing or stale (> 5 min) signature -> 401;
   malformed JSON -> 400; PING -> ``{"type": 1}``.
2. The owner (or, for a DM, the default pod) gets the interaction on
   ``POST /interactions``; its answer is returned to Discord as is.
3. If it has not answered after ``interaction_deadline`` (2.5 s), is unreachable,
   is offline in the table, or its circuit is open, or the guild is mid-migration, the
   proxy answers Discord itself with a deferred ephemeral response (type 5) and keeps
   the command: the pod's late answer is sent as an edit of that response, or the
   interaction is delivered (marked ``X-Modbot-Deferred``) once the pod is back or the
   migration is over, with jittered backoff for up to ``followup_window`` seconds.
   Only if that never succeeds does the user get an ephemeral "could not be processed,
   please retry". Never silence, never a lost command.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from yarl import URL

from modbot_client.table_client import RoutingTableClient
from modbot_ring import (
    InvalidGuildId,
    NoRouteError,
    PodState,
    Route,
    RouteReason,
    RoutingTable,
    parse_guild_id,
)
from modbot_runtime.observability import (
    REQUEST_ID_HEADER,
    current_request_id,
    json_error,
    request_id_middleware,
)

from . import interactions, login
from .auth import IDENTITY_HEADER, AuthSettings
from .breaker import CircuitBreaker
from .dashboard import (
    MAX_ERROR_BYTES,
    MAX_PAGE_BYTES,
    SECURITY_HEADERS,
    BadPage,
    pod_target,
    render_unavailable,
)
from .tally import BeforeScrape
from .verify import SignatureError, Verifier

log = logging.getLogger("modbot.proxy")

MAX_WEBHOOK_BODY = 64 * 1024
DEFERRED = {"type": 5, "data": {"flags": 64}}
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)


@dataclass
class ProxySettings:
    internal_token: str = ""
    discord_public_key: str = ""
    discord_api_url: str = "https://discord.com/api/v10"
    default_pod: str = ""
    interaction_deadline: float = 2.5
    upstream_timeout: float = 10.0
    followup_window: float = 600.0
    auth: AuthSettings = field(default_factory=AuthSettings)  # login, sessions: auth.py
    # limits on what a client may send (the proxy is the only public component)
    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_body_bytes: int = 1024 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 10_000

    @classmethod
    def from_args(cls, args: Any) -> ProxySettings:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in vars(args).items() if k in fields})


class ProxyMetrics:
    """The proxy's metrics (fastpath.py counts into the same objects)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "modbot_proxy_requests_total",
            "Requests the proxy answered, by route, owning pod and HTTP status.",
            ["route", "pod", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "modbot_proxy_request_seconds",
            "Time from a request's arrival to the proxy's answer, by route.",
            ["route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.upstream_errors = Counter(
            "modbot_proxy_upstream_errors_total",
            "Upstream calls to a pod that failed (connect, timeout) or answered 5xx.",
            ["pod", "kind"],
            registry=registry,
        )
        self.verify_failures = Counter(
            "modbot_proxy_webhook_verification_failures_total",
            "Discord interaction webhooks refused because the signature was bad or stale.",
            ["reason"],
            registry=registry,
        )
        self.refused = Counter(
            "modbot_proxy_refused_requests_total",
            "Requests and connections refused at the edge (limits, timeouts, malformed HTTP).",
            ["reason"],
            registry=registry,
        )
        self.interactions = Counter(
            "modbot_proxy_interactions_total",
            "Discord interactions handled by the proxy, by outcome.",
            ["outcome"],
            registry=registry,
        )
        # the RouterProxy's per-pod breakers, read at scrape time
        self.breakers: dict[str, CircuitBreaker] = {}
        breakers = self.breakers

        class _Breakers(Collector):
            def collect(self) -> Iterator[Metric]:
                family = GaugeMetricFamily(
                    "modbot_proxy_circuit_open",
                    "1 while the circuit breaker to a pod is open or half-open (requests get 503).",
                    labels=["pod"],
                )
                for pod, breaker in sorted(breakers.items()):
                    family.add_metric([pod], 0.0 if breaker.state == "closed" else 1.0)
                yield family

        registry.register(_Breakers())


class Unavailable(Exception):
    def __init__(self, why: str, retry_after: int = 2) -> None:
        super().__init__(why)
        self.why = why
        self.retry_after = retry_after


def _strip_hop_by_hop(headers: Any) -> CIMultiDict[str]:
    connection = {t.strip().lower() for t in headers.get("Connection", "").split(",") if t.strip()}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in connection or lower.startswith("x-modbot-"):
            continue
        out.add(name, value)
    return out


async def _read_at_most(upstream: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or BadPage as soon as it is longer than ``limit``."""
    if upstream.content_length is not None and upstream.content_length > limit:
        raise BadPage(f"it answered a page of {upstream.content_length} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in upstream.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BadPage(f"it answered a page of more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _error_of(upstream: aiohttp.ClientResponse) -> str:
    """A refusal's reason (the pods' ``{"error": ...}``), or a generic one."""
    try:
        body = json.loads(await _read_at_most(upstream, MAX_ERROR_BYTES))
    except (BadPage, ValueError, UnicodeDecodeError):
        body = None
    why = body.get("error") if isinstance(body, dict) else None
    return why[:300] if isinstance(why, str) and why else f"the pod answered {upstream.status}"


class RouterProxy:
    def __init__(
        self, settings: ProxySettings, tables: RoutingTableClient, registry: CollectorRegistry
    ) -> None:
        self.settings = settings
        self.tables = tables
        # first in the registry: hooks that fold batched counts in before a scrape reads them
        self.before_scrape = BeforeScrape()
        registry.register(self.before_scrape)
        self.metrics = ProxyMetrics(registry)
        self.gate: login.AuthRoutes = login.AuthRoutes(self, settings.auth)  # who may ask
        self.verifier = (
            Verifier(settings.discord_public_key) if settings.discord_public_key else None
        )
        self.breakers = self.metrics.breakers  # shared: scraped as modbot_proxy_circuit_open
        self.seen_interactions = interactions.SeenInteractions()
        # built once: the API path would otherwise allocate one per request
        self._upstream_timeout = aiohttp.ClientTimeout(
            total=settings.upstream_timeout, sock_connect=1.0
        )
        self.session: aiohttp.ClientSession | None = None
        self.background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=512, keepalive_timeout=30, ttl_dns_cache=300
        )
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        )

    async def stop(self) -> None:
        for task in list(self.background):
            task.cancel()
        if self.session is not None:
            await self.session.close()

    # -- routing ----------------------------------------------------------------------------

    def current_table(self) -> RoutingTable:
        table = self.tables.table
        if table is None:
            raise Unavailable("no routing table yet", 1)
        return table

    def breaker_for(self, pod: str) -> CircuitBreaker:
        breaker = self.breakers.get(pod)
        if breaker is None:
            breaker = self.breakers[pod] = CircuitBreaker()
        return breaker

    def target(self, table: RoutingTable, route: Route) -> str:
        """The pod's base URL, or Unavailable (offline in the table, open circuit, no URL)."""
        if route.pod_state is PodState.OFFLINE:
            raise Unavailable(f"pod {route.pod} is offline", 5)
        url = table.pods[route.pod].url
        if not url:
            raise Unavailable(f"pod {route.pod} has no URL registered", 5)
        breaker = self.breaker_for(route.pod)
        if not breaker.allow():
            raise Unavailable(f"pod {route.pod} is failing (circuit open)", breaker.retry_after())
        return url

    def _route_headers(self, route: Route) -> dict[str, str]:
        return {
            "X-Modbot-Pod": route.pod,
            "X-Modbot-Route": route.reason.value,
            "X-Modbot-Table-Version": str(route.version),
        }

    def _outbound_headers(self, request: web.Request) -> CIMultiDict[str]:
        headers = _strip_hop_by_hop(request.headers)
        headers.popall("Authorization", None)
        headers["Authorization"] = f"Bearer {self.settings.internal_token}"
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        return headers

    async def _send(
        self,
        pod: str,
        method: str,
        url: str | URL,
        *,
        headers: Any,
        data: Any = None,
        retry: bool = True,
        timeout: float | None = None,
    ) -> aiohttp.ClientResponse:
        """One upstream call with a bounded, jittered retry for requests without a body."""
        assert self.session is not None
        rid = current_request_id()
        if rid is not None:  # the pod logs the same id as the proxy (observability.py)
            headers = CIMultiDict(headers)
            headers[REQUEST_ID_HEADER] = rid
        breaker = self.breaker_for(pod)
        attempts = 2 if retry and data is None else 1
        for attempt in range(attempts):
            try:
                response = await self.session.request(
                    method,
                    url,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    timeout=self._upstream_timeout
                    if timeout is None
                    else aiohttp.ClientTimeout(total=timeout, sock_connect=1.0),
                )
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                breaker.failure()
                kind = "timeout" if isinstance(exc, TimeoutError) else "connect"
                self.metrics.upstream_errors.labels(pod, kind).inc()
                if attempt + 1 < attempts and breaker.allow():
                    await asyncio.sleep(random.uniform(0.02, 0.1))
                    continue
                raise Unavailable(
                    f"pod {pod} did not answer ({kind})",
                    breaker.retry_after() if breaker.failures >= breaker.threshold else 2,
                ) from None
            # it answered, so it is up: a 5xx is about this request, not the pod's health
            if response.status >= 500:
                self.metrics.upstream_errors.labels(pod, "5xx").inc()
            breaker.success()
            return response
        raise AssertionError("unreachable")

    # -- dashboard and API ------------------------------------------------------------------------

    async def dashboard(self, request: web.Request) -> web.StreamResponse:
        """The owning pod's page, relayed (dashboard.py says what is and is not)."""
        gid, route, table = self._parse_and_route(request)
        gate = self.gate.dashboard_gate(request, gid)  # sign-in and rights (login.py)
        if gate.response is not None:
            gate.response.headers.update(SECURITY_HEADERS)
            return gate.response
        try:
            url = self.target(table, route)
            page = await self._dashboard_page(gid, route, f"{url}{pod_target(gid)}", gate)
        except Unavailable as exc:
            return self._dashboard_error(gid, route, exc.why, exc.retry_after, 503)
        except BadPage as exc:
            log.warning("pod %s answered a dashboard with %s", route.pod, exc.why)
            return self._dashboard_error(gid, route, exc.why, 2, 502)
        if isinstance(page, web.StreamResponse):  # the pod refused: the proxy's 403 page
            page.headers.update(SECURITY_HEADERS)
            return page
        return web.Response(
            body=page,
            content_type="text/html",
            charset="utf-8",
            headers={**SECURITY_HEADERS, **self._route_headers(route)},
        )

    async def _dashboard_page(
        self, gid: int, route: Route, url: str, gate: login.Gate
    ) -> bytes | web.StreamResponse:
        """The pod's page bytes; the refusal page if the pod refused the identity;
        Unavailable if it cannot answer (down, slow, moved, 5xx); BadPage if what it
        answered is not a page to relay."""
        headers = {
            "Authorization": f"Bearer {self.settings.internal_token}",
            "Accept-Encoding": "identity",
            **self._route_headers(route),  # for the page's "served by" line
            **(gate.headers or {}),
        }
        async with await self._send(route.pod, "GET", url, headers=headers) as upstream:
            try:
                if upstream.status in (401, 403):  # the pod's own check (moderator role)
                    return self.gate.refused_page(gid, await _error_of(upstream))
                if upstream.status == 421:  # our table is behind the pod's: catch up once
                    await self.tables.refresh()
                    raise Unavailable("the guild just moved; reload", 1)
                if upstream.status != 200:
                    raise Unavailable(f"it answered {upstream.status}", 2)
                charset = (upstream.charset or "utf-8").lower()
                if upstream.content_type != "text/html" or charset not in ("utf-8", "utf8"):
                    raise BadPage(f"it answered {upstream.content_type} ({charset}), not a page")
                if upstream.headers.get("Content-Encoding", "identity").lower() != "identity":
                    raise BadPage("it answered an encoded page")
                return await _read_at_most(upstream, MAX_PAGE_BYTES)
            except (aiohttp.ClientError, TimeoutError):
                raise Unavailable("it stopped answering mid-page", 2) from None

    def _dashboard_error(
        self, gid: int, route: Route, why: str, retry_after: int, status: int
    ) -> web.Response:
        page = render_unavailable(gid, route.pod, why, retry_after, current_request_id())
        return web.Response(
            text=page,
            status=status,
            content_type="text/html",
            headers={
                **SECURITY_HEADERS,
                "Retry-After": str(retry_after),
                **self._route_headers(route),
            },
        )

    async def api(self, request: web.Request) -> web.StreamResponse:
        gid, route, table = self._parse_and_route(request)
        h = request.headers
        decision = self.gate.auth.check(  # the fast path's check, for what it passes on
            request.method,
            request.raw_path,
            str(gid),
            cookie=h.get("Cookie"),
            authorization=h.get("Authorization"),
            origin=h.get("Origin"),
            fetch_site=h.get("Sec-Fetch-Site"),
            csrf=h.get("X-CSRF-Token"),
            host=request.host,
        )
        if decision.status:
            return json_error(decision.status, decision.error)
        outbound = self._outbound_headers(request)
        outbound.popall("Cookie", None)  # the session stays here: the pod gets the identity
        outbound[IDENTITY_HEADER] = decision.identity
        # read whole first (the front door bounds its size and pace): a slow client
        # must not hold a pod connection open, nor count against the pod's breaker
        body = await request.read() if request.body_exists else None
        try:
            url = self.target(table, route)
            upstream = await self._send(
                route.pod,
                request.method,
                URL(f"{url}{request.raw_path}", encoded=True),
                headers=outbound,
                data=body,
            )
        except Unavailable as exc:
            return json_error(
                503, exc.why, **{"Retry-After": str(exc.retry_after)}, **self._route_headers(route)
            )
        async with upstream:
            headers = _strip_hop_by_hop(upstream.headers)
            headers.update(self._route_headers(route))
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=headers
            )
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    def _parse_and_route(self, request: web.Request) -> tuple[int, Route, RoutingTable]:
        try:
            gid = parse_guild_id(request.match_info["guild_id"])
        except InvalidGuildId as exc:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": str(exc)}), content_type="application/json"
            ) from None
        table = self.current_table()
        try:
            return gid, table.route(gid), table
        except NoRouteError as exc:
            raise Unavailable(str(exc), 5) from None

    # -- Discord interactions ------------------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_WEBHOOK_BODY:
            return json_error(413, "interaction body too large")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, "interaction body too large")
        if self.verifier is None:
            return json_error(503, "no Discord public key configured")
        try:
            self.verifier.verify(
                request.headers.get("X-Signature-Ed25519"),
                request.headers.get("X-Signature-Timestamp"),
                raw,
            )
        except SignatureError as exc:
            self.metrics.verify_failures.labels(exc.reason).inc()
            return json_error(401, "invalid request signature")
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return json_error(400, "interaction body is not valid JSON")
        try:
            kind = interactions.check_interaction(payload)
        except interactions.InvalidInteraction as exc:
            self.metrics.interactions.labels("invalid").inc()
            return json_error(400, str(exc))
        if kind == interactions.PING:
            self.metrics.interactions.labels("ping").inc()
            return web.json_response({"type": 1})
        if not self.seen_interactions.first_time(str(payload["id"]), time.monotonic()):
            self.metrics.interactions.labels("replayed").inc()
            return json_error(409, "this interaction was already received")
        table = self.current_table()
        try:
            route = self._interaction_route(table, payload)
        except (InvalidGuildId, NoRouteError, Unavailable) as exc:
            return json_error(400 if isinstance(exc, InvalidGuildId) else 503, str(exc))
        headers = self._route_headers(route)
        if route.migrating:
            self._keep(self._deliver_later(payload, wait_for_migration=route.guild_id))
            self.metrics.interactions.labels("deferred_migrating").inc()
            return web.json_response(DEFERRED, headers=headers)
        try:
            url = self.target(table, route)
        except Unavailable:
            self._keep(self._deliver_later(payload))
            self.metrics.interactions.labels("deferred_unavailable").inc()
            return web.json_response(DEFERRED, headers=headers)
        call = asyncio.ensure_future(self._forward_interaction(route.pod, url, payload, raw))
        try:
            status, body = await asyncio.wait_for(
                asyncio.shield(call), self.settings.interaction_deadline
            )
        except TimeoutError:
            self._keep(self._late_answer(call, payload))
            self.metrics.interactions.labels("deferred_slow").inc()
            return web.json_response(DEFERRED, headers=headers)
        except Unavailable:
            self._keep(self._deliver_later(payload))
            self.metrics.interactions.labels("deferred_unavailable").inc()
            return web.json_response(DEFERRED, headers=headers)
        if status == 200:
            self.metrics.interactions.labels("answered").inc()
            return web.Response(body=body, content_type="application/json", headers=headers)
        if not interactions.retryable(status):  # about this interaction: tell the user now
            log.warning("pod %s refused an interaction: %s", route.pod, status)
            self.metrics.interactions.labels("refused_by_pod").inc()
            return web.json_response(interactions.FAILED_ANSWER, headers=headers)
        self._keep(self._deliver_later(payload))
        self.metrics.interactions.labels("deferred_unavailable").inc()
        return web.json_response(DEFERRED, headers=headers)

    def _interaction_route(self, table: RoutingTable, payload: dict[str, Any]) -> Route:
        guild = payload.get("guild_id")
        if guild is not None:
            return table.route(guild)
        pod = self.settings.default_pod or self._fallback_pod(table)
        if pod not in table.pods:
            raise Unavailable(f"default pod {pod!r} is not in the routing table")
        state = table.pods[pod].state
        return Route(
            guild_id=0,
            pod=pod,
            reason=RouteReason.RING,
            shard=None,
            migrating=False,
            epoch=0,
            pod_state=state,
            version=table.version,
        )

    @staticmethod
    def _fallback_pod(table: RoutingTable) -> str:
        if table.shard_count is not None:
            owner = table.shard_owner(0)
            if owner:
                return owner
        active = [p.name for p in table.pods.values() if p.state is PodState.ACTIVE]
        if not active:
            raise Unavailable("no active pod for DM interactions")
        return min(active)

    async def _forward_interaction(
        self, pod: str, url: str, payload: dict[str, Any], raw: bytes, *, deferred: bool = False
    ) -> tuple[int, bytes]:
        headers = {
            "Authorization": f"Bearer {self.settings.internal_token}",
            "Content-Type": "application/json",
        }
        if deferred:
            headers["X-Modbot-Deferred"] = "1"
        async with await self._send(
            pod, "POST", f"{url}/interactions", headers=headers, data=raw, timeout=30
        ) as response:
            body = await response.read()
            if response.status == 421:
                await self.tables.refresh()
            return response.status, body

    def _keep(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _late_answer(
        self, call: asyncio.Future[tuple[int, bytes]], payload: dict[str, Any]
    ) -> None:
        """The pod answered after Discord got "deferred": show its answer as an edit."""
        try:
            status, body = await call
        except Unavailable:
            await self._deliver_later(payload)
            return
        if status != 200:
            if interactions.retryable(status):
                await self._deliver_later(payload)
            else:
                self.metrics.interactions.labels("refused_by_pod").inc()
                await self._edit_original(payload, interactions.FAILED_ANSWER["data"])
            return
        await self._relay_answer(payload, body)

    async def _relay_answer(self, payload: dict[str, Any], body: bytes) -> None:
        """A late 200 from the pod, shown as an edit of the deferred response."""
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            log.warning("pod answered an interaction with something that is not JSON")
            await self._edit_original(payload, interactions.FAILED_ANSWER["data"])
            return
        if answer.get("type") in (4, 7):
            await self._edit_original(payload, answer.get("data") or {})
        # type 5: the pod deferred too and will edit the response itself

    async def _deliver_later(
        self, payload: dict[str, Any], *, wait_for_migration: int | None = None
    ) -> None:
        """Deliver a deferred interaction when its pod can take it; else tell the user."""
        deadline = time.monotonic() + self.settings.followup_window
        delay = 0.25
        raw = json.dumps(payload).encode()
        for _ in range(interactions.MAX_ATTEMPTS):
            if time.monotonic() >= deadline:
                break
            table = self.tables.table
            try:
                if table is None:
                    raise Unavailable("no table")
                route = self._interaction_route(table, payload)
                if route.migrating:
                    raise Unavailable("migrating")
                url = self.target(table, route)
                status, body = await self._forward_interaction(
                    route.pod, url, payload, raw, deferred=True
                )
                if status == 200:
                    await self._relay_answer(payload, body)
                    self.metrics.interactions.labels("delivered_late").inc()
                    return
                if not interactions.retryable(status):  # a retry would fail the same way
                    log.warning("pod %s refused a deferred interaction: %s", route.pod, status)
                    break
            except (Unavailable, NoRouteError):
                pass
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 10.0)
        self.metrics.interactions.labels("failed").inc()
        await self._edit_original(
            payload,
            {
                "content": "Sorry: mod-bot could not process this command in time. Please try it again.",
                "flags": 64,
            },
        )

    async def _edit_original(self, payload: dict[str, Any], data: dict[str, Any]) -> None:
        assert self.session is not None
        url = f"{self.settings.discord_api_url.rstrip('/')}/webhooks/{payload.get('application_id')}/{payload.get('token')}/messages/@original"
        try:
            async with self.session.patch(
                url, json=data, timeout=aiohttp.ClientTimeout(total=10)
            ) as response:
                if response.status >= 400:
                    log.warning("follow-up edit refused by Discord: %s", response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("follow-up edit failed: %s", exc)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def metrics_middleware(proxy: RouterProxy) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        name = resource.canonical if resource is not None else "unmatched"
        started = time.perf_counter()
        status = 500
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except Unavailable as exc:
            status = 503
            return json_error(503, exc.why, **{"Retry-After": str(exc.retry_after)})
        except web.HTTPException as exc:
            status = exc.status
            if exc.status < 400:
                raise
            if exc.content_type == "application/json":
                raise
            return json_error(exc.status, exc.reason or "error")
        except ConnectionResetError:  # the client went away mid-response: routine
            status = 499
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return json_error(500, "internal error")
        finally:
            pod = response.headers.get("X-Modbot-Pod", "-") if response is not None else "-"
            proxy.metrics.requests.labels(name, pod, str(status)).inc()
            proxy.metrics.latency.labels(name).observe(time.perf_counter() - started)

    return middleware


def build_proxy_app(proxy: RouterProxy) -> web.Application:
    app = web.Application(
        middlewares=[request_id_middleware, metrics_middleware(proxy)],
        client_max_size=MAX_WEBHOOK_BODY,
    )
    app.router.add_get("/guild/{guild_id}/dashboard", proxy.dashboard)
    app.router.add_route("*", "/api/guilds/{guild_id}/{tail:.*}", proxy.api)
    app.router.add_post("/webhooks/discord", proxy.webhook)
    login.install(app, proxy)  # /login, /oauth/callback, /logout, dashboard forms, rate limits

    async def lifecycle(_: web.Application) -> Any:
        await proxy.start()
        yield
        await proxy.stop()

    app.cleanup_ctx.append(lifecycle)
    return app
