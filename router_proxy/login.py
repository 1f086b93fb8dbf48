"""Sign-in with Discord at the proxy, and the signed-in parts of the dashboard.

Routes (aiohttp side of the proxy; the fast path handles ``/api`` with the same
:class:`~router_proxy.auth.Authenticator`):

* ``GET /login?next=/guild/<id>/dashboard``: a new login flow. ``state`` (32 random
  bytes) and a PKCE S256 ``code_verifier`` go into a signed, 10-minute, HttpOnly flow
  cookie (not a server-side store: any replica can finish the flow); the browser goes
  to Discord's ``/oauth2/authorize`` with scopes ``identify guilds guilds.members.read``.
* ``GET /oauth/callback``: the flow cookie's ``state`` must match (else 400: a login
  CSRF or a stale tab), the code is exchanged with the client secret and the verifier,
  ``/users/@me`` and ``/users/@me/guilds`` are read (and ``/users/@me/guilds/<id>/member``
  for the guild in ``next`` when the user cannot manage it, for the moderator-role
  case), the access token is dropped, and a session cookie is set (HttpOnly,
  SameSite=Lax, Secure when the redirect URL is https).
* ``POST /logout`` (same-origin + CSRF token) clears it; ``GET /logout`` shows the button.
* ``GET /me``: who you are and the guilds you can open.
* ``POST /guild/<id>/settings``, ``/guild/<id>/tokens``, ``/guild/<id>/tokens/<tid>/revoke``:
  the dashboard's forms (same-origin + CSRF token + Manage Server), sent to the owner
  pod with a signed identity.

Anonymous dashboard requests are redirected to ``/login``; refused ones get a 403 page
with a link to sign in again (rights are a snapshot taken at sign-in). Requests are
rate-limited per client IP when anonymous and per user when signed in
(:mod:`router_proxy.ratelimit`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web

from modbot_ring import InvalidGuildId, NoRouteError, parse_guild_id
from modbot_runtime.observability import json_error

from .auth import (
    ANY,
    COOKIE,
    CSRF_HEADER,
    FLOW_COOKIE,
    IDENTITY_HEADER,
    IDENTITY_TTL,
    MANAGE,
    AuthError,
    AuthSettings,
    GuildGrant,
    Principal,
    is_write,
    read_cookie,
    same_origin,
    sign_identity,
)
from .dashboard import pod_target
from .ratelimit import RateLimiter, client_ip

if TYPE_CHECKING:
    from .proxy import RouterProxy

log = logging.getLogger("modbot.proxy.login")

SCOPES = "identify guilds guilds.members.read"
FLOW_TTL = 600
# the fast path's cache of verified reads, in bytes: keys hold whole Cookie headers and
# targets (up to the header and URL limits), so a count alone would allow ~400 MiB
IDENTITY_CACHE_BYTES = 16 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = ("/webhooks/discord",)
PAGE_CSRF_HEADER = "X-Modbot-Csrf"  # to the pod that renders the dashboard's forms
PAGE_USER_HEADER = "X-Modbot-User-Name"  # percent-encoded UTF-8
_FAST_HEADERS = frozenset(
    (b"cookie", b"authorization", b"origin", b"sec-fetch-site", b"x-csrf-token", b"host")
)  # signed by Discord; never rate-limited per IP
_STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:860px;padding:0 1rem}"
    ".card{border:1px solid #dde2e8;border-radius:8px;padding:1rem 1.2rem;margin:1rem 0}"
    "code{background:#f1f3f5;padding:.1rem .3rem;border-radius:4px;word-break:break-all}"
)


def _page(title: str, body: str, status: int = 200) -> web.Response:
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style>'
        f"</head><body>{body}</body></html>"
    )
    return web.Response(
        text=html,
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


def _safe_next(value: str | None) -> str:
    """Only our own paths: an open redirect would hand a session to another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/me"
    return value


def _guild_in(path: str) -> str:
    parts = path.split("/")
    if len(parts) > 2 and parts[1] == "guild" and parts[2].isdigit():
        return parts[2]
    return ""


@dataclass
class Gate:
    """The dashboard's verdict: forward with ``headers``, or answer ``response``."""

    response: web.StreamResponse | None = None
    principal: Principal | None = None
    headers: dict[str, str] | None = None


class AuthRoutes:
    def __init__(self, proxy: RouterProxy, settings: AuthSettings) -> None:
        self.proxy = proxy
        self.settings = settings
        self.auth = settings.authenticator(proxy.settings.internal_token)
        self.anon = RateLimiter(settings.rate_limit_anon, settings.rate_limit_anon * 2)
        self.user = RateLimiter(settings.rate_limit_user, settings.rate_limit_user * 2)
        self.api_url = proxy.settings.discord_api_url.rstrip("/")
        self._identities: dict[tuple[Any, ...], tuple[bytes, float, str]] = {}
        self._identity_bytes = 0
        self._dev_identities: dict[bytes, tuple[bytes, float]] = {}

    # -- helpers --------------------------------------------------------------------------------

    def _principal(self, request: web.Request) -> Principal | None:
        try:
            return self.auth.principal(request.headers.get("Cookie"), None)
        except AuthError:
            return None

    def _cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self.settings.secure_cookies,
        )

    def retry_after(self, key_user: str | None, ip: str) -> int:
        """Seconds to wait if over the limit (0: go on). Shared with the fast path."""
        if key_user is not None:
            return self.user.hit(key_user)
        return self.anon.hit(ip)

    def request_ip(self, request: web.Request) -> str:
        # the front door appended the peer to X-Forwarded-For before passing it on
        entries = [
            e.strip() for e in request.headers.get("X-Forwarded-For", "").split(",") if e.strip()
        ]
        if not entries:
            return request.remote or "-"
        return client_ip(",".join(entries[:-1]), entries[-1], self.settings.forwarded_hops)

    def _form_ok(self, request: web.Request, who: Principal, form: Any) -> bool:
        """Same-origin and the session's CSRF token (form field or header)."""
        if who.kind == "dev":
            return True
        if not same_origin(
            request.headers.get("Origin"),
            request.headers.get("Sec-Fetch-Site"),
            self.auth.public_origin,
            request.host,
        ):
            return False
        given = form.get("csrf") or request.headers.get(CSRF_HEADER)
        assert self.auth.sessions is not None
        return self.auth.sessions.csrf_ok(who, str(given) if given else None)

    # -- rate limits ---------------------------------------------------------------------------

    def middleware(self) -> Any:
        @web.middleware
        async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path.startswith(OPEN_PATHS):
                return await handler(request)
            who = self._principal(request)
            user = None if who is None or who.kind == "dev" else f"u:{who.user_id}"
            wait = self.retry_after(user, self.request_ip(request))
            if wait:
                return json_error(429, "too many requests; slow down", **{"Retry-After": str(wait)})
            return await handler(request)

        return limit

    def fast_check(
        self,
        exchange: Any,
        method: bytes,
        url: bytes,
        guild: str,
        lowered: list[tuple[bytes, bytes, bytes]],
        peer: bytes,
    ) -> bytes | None:
        """The fast path's gate for ``/api/guilds/...``: the identity header value to send
        upstream, or None after setting ``exchange.refusal`` (401/403/429).

        Reads repeat (a dashboard polls, a script loops), so a verified read's identity
        header is kept for 30 s under (credentials, method, target): a repeat costs two
        dict lookups and the rate-limit check. Writes are always checked in full (CSRF).
        With ``--no-auth`` every caller is the developer: one identity per method, for any
        guild and target (``auth.sign_identity``), renewed before it expires."""
        if self.auth.no_auth:
            now = time.time()
            dev = self._dev_identities.get(method)
            if dev is None or dev[1] <= now:
                text = sign_identity(
                    self.auth.identity_key, self.auth.dev, ANY, method.decode("latin-1"), ANY
                )
                # good for IDENTITY_TTL; renewed at half of it, so a slow pod never sees it expire
                dev = self._dev_identities[method] = (text.encode(), now + IDENTITY_TTL / 2)
            if self.anon.rate > 0:
                wait = self.anon.hit(self._peer(lowered, peer))
                if wait:
                    exchange.refusal = (
                        429,
                        "too many requests; slow down",
                        b"Retry-After: %d\r\n" % wait,
                    )
                    return None
            return dev[0]
        cookie = authorization = None
        for low, _, value in lowered:
            if low == b"cookie":
                cookie = value
            elif low == b"authorization":
                authorization = value
        key = (cookie, authorization, method, url)
        now = time.time()
        hit = self._identities.get(key)
        if hit is not None and hit[1] > now:
            if hit[2]:
                wait = self.user.hit(hit[2])
            else:
                wait = self.anon.hit(self._peer(lowered, peer)) if self.anon.rate > 0 else 0
            if wait:
                exchange.refusal = (
                    429,
                    "too many requests; slow down",
                    b"Retry-After: %d\r\n" % wait,
                )
                return None
            return hit[0]
        found = {low: value.decode("latin-1") for low, _, value in lowered if low in _FAST_HEADERS}
        decision = self.auth.check(
            method.decode("latin-1"),
            url.decode("latin-1"),
            guild,
            cookie=found.get(b"cookie"),
            authorization=found.get(b"authorization"),
            origin=found.get(b"origin"),
            fetch_site=found.get(b"sec-fetch-site"),
            csrf=found.get(b"x-csrf-token"),
            host=found.get(b"host"),
        )
        who = decision.principal
        user = f"u:{who.user_id}" if who is not None and who.kind != "dev" else ""
        if user:
            wait = self.user.hit(user)
        else:
            wait = self.anon.hit(self._peer(lowered, peer)) if self.anon.rate > 0 else 0
        if wait:
            exchange.refusal = (429, "too many requests; slow down", b"Retry-After: %d\r\n" % wait)
            return None
        if decision.status:
            exchange.refusal = (decision.status, decision.error)
            return None
        identity = decision.identity.encode("latin-1")
        if not is_write(method.decode("latin-1")) and who is not None:
            size = len(url) + len(cookie or b"") + len(authorization or b"") + len(identity)
            if len(self._identities) >= 8192 or self._identity_bytes + size > IDENTITY_CACHE_BYTES:
                self._identities.clear()  # bounded: distinct targets cannot grow it
                self._identity_bytes = 0
            self._identity_bytes += size
            expires = now + 30 if who.kind == "dev" else min(now + 30, who.expires)
            self._identities[key] = (identity, expires, user)
        return identity

    def _peer(self, lowered: list[tuple[bytes, bytes, bytes]], peer: bytes) -> str:
        # every line, in order (RFC 9110 §5.3): a trusted proxy may add its own line
        # after the client's, and the trusted entries are the last ones
        forwarded = b", ".join(v for low, _, v in lowered if low == b"x-forwarded-for")
        return client_ip(
            forwarded.decode("latin-1") if forwarded else None,
            peer.decode("latin-1"),
            self.settings.forwarded_hops,
        )

    # -- login flow ------------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.StreamResponse:
        nxt = _safe_next(request.query.get("next"))
        if self.settings.no_auth:
            raise web.HTTPFound(nxt)
        if not self.settings.login_configured or self.auth.sessions is None:
            return _page("Sign-in unavailable", "<p>Discord sign-in is not configured.</p>", 503)
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        flow = self.auth.sessions.seal_flow(
            {"s": state, "v": verifier, "n": nxt, "e": int(time.time()) + FLOW_TTL}
        )
        query = urlencode(
            {
                "client_id": self.settings.discord_client_id,
                "response_type": "code",
                "redirect_uri": self.settings.oauth_redirect_url,
                "scope": SCOPES,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        response = web.HTTPFound(f"{self.settings.discord_oauth_url}?{query}")
        self._cookie(response, FLOW_COOKIE, flow, FLOW_TTL)
        raise response

    async def callback(self, request: web.Request) -> web.StreamResponse:
        if self.auth.sessions is None or not self.settings.login_configured:
            return _page("Sign-in unavailable", "<p>Discord sign-in is not configured.</p>", 503)
        retry = '<p><a href="/login">Sign in again</a></p>'
        try:
            flow = self.auth.sessions.open_flow(
                read_cookie(request.headers.get("Cookie"), FLOW_COOKIE) or ""
            )
        except AuthError:
            return _page(
                "Sign-in failed",
                f"<p>This sign-in expired or was not started here.</p>{retry}",
                400,
            )
        state = request.query.get("state", "")
        if not secrets.compare_digest(state.encode(), str(flow.get("s", "")).encode()):
            return _page("Sign-in failed", f"<p>The sign-in state does not match.</p>{retry}", 400)
        if "error" in request.query:
            return _page(
                "Sign-in cancelled",
                f"<p>Discord said: {escape(request.query.get('error', ''))}.</p>{retry}",
                401,
            )
        code = request.query.get("code", "")
        if not code:
            return _page("Sign-in failed", f"<p>Discord sent no code.</p>{retry}", 400)
        try:
            user, guilds = await self._discord_identity(
                code, str(flow["v"]), _guild_in(str(flow["n"]))
            )
        except _DiscordRefused as exc:
            return _page(
                "Sign-in failed",
                f"<p>Discord refused the sign-in: {escape(exc.why)}.</p>{retry}",
                401,
            )
        except (KeyError, TypeError, AttributeError) as exc:  # answers not in Discord's shape
            return _page(
                "Sign-in failed",
                f"<p>Discord's answer made no sense ({escape(type(exc).__name__)}).</p>{retry}",
                502,
            )
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("Discord unreachable during sign-in: %s", exc)
            return _page(
                "Sign-in unavailable",
                f"<p>Discord did not answer. Try again shortly.</p>{retry}",
                503,
            )
        cookie = self.auth.sessions.issue(str(user["id"]), str(user.get("username", "")), guilds)
        response = web.HTTPFound(_safe_next(str(flow["n"])))
        self._cookie(response, COOKIE, cookie, int(self.settings.session_ttl))
        response.del_cookie(FLOW_COOKIE, path="/")
        raise response

    async def _discord_identity(
        self, code: str, verifier: str, wanted_guild: str
    ) -> tuple[dict[str, Any], dict[str, GuildGrant]]:
        """Exchange the code, read the user and their rights, forget the token."""
        session = self.proxy.session
        assert session is not None
        timeout = aiohttp.ClientTimeout(total=10)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.settings.oauth_redirect_url,
            "code_verifier": verifier,
            "client_id": self.settings.discord_client_id,
            "client_secret": self.settings.discord_client_secret,
        }
        async with session.post(f"{self.api_url}/oauth2/token", data=form, timeout=timeout) as r:
            body = await r.json(content_type=None)
            if r.status != 200 or "access_token" not in body:
                raise _DiscordRefused(
                    str(body.get("error_description") or body.get("error") or r.status)
                )
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        async with session.get(f"{self.api_url}/users/@me", headers=headers, timeout=timeout) as r:
            if r.status != 200:
                raise _DiscordRefused(f"/users/@me answered {r.status}")
            user = await r.json(content_type=None)
        async with session.get(
            f"{self.api_url}/users/@me/guilds", headers=headers, timeout=timeout
        ) as r:
            if r.status != 200:
                raise _DiscordRefused(f"/users/@me/guilds answered {r.status}")
            listed = await r.json(content_type=None)
        grants: dict[str, GuildGrant] = {}
        member_of: dict[str, int] = {}
        for g in listed:
            perms = int(g.get("permissions", "0"))
            if g.get("owner"):
                perms |= MANAGE
            member_of[str(g["id"])] = perms
            if perms & MANAGE:
                grants[str(g["id"])] = GuildGrant(perms)
        if wanted_guild and wanted_guild in member_of and wanted_guild not in grants:
            url = f"{self.api_url}/users/@me/guilds/{wanted_guild}/member"
            async with session.get(url, headers=headers, timeout=timeout) as r:
                if r.status == 200:
                    member = await r.json(content_type=None)
                    roles = tuple(str(x) for x in member.get("roles", []))
                    grants[wanted_guild] = GuildGrant(member_of[wanted_guild], roles)
        return user, grants

    async def logout(self, request: web.Request) -> web.StreamResponse:
        who = self._principal(request)
        if request.method == "GET":
            if who is None or who.kind != "session":
                return _page(
                    "Signed out", '<p>You are signed out. <a href="/login">Sign in</a></p>'
                )
            return _page("Sign out", self._logout_form(who))
        form = await request.post()
        if who is not None and who.kind == "session" and not self._form_ok(request, who, form):
            return _page("Refused", "<p>Cross-site or stale sign-out refused.</p>", 403)
        response = _page("Signed out", '<p>You are signed out. <a href="/login">Sign in</a></p>')
        response.del_cookie(COOKIE, path="/")
        return response

    def _logout_form(self, who: Principal) -> str:
        assert self.auth.sessions is not None
        csrf = escape(self.auth.sessions.csrf_token(who))
        return (
            f'<form method="post" action="/logout"><input type="hidden" name="csrf" value="{csrf}">'
            f"<p>Signed in as <b>{escape(who.name)}</b> "
            '<button type="submit" id="logout">Log out</button></p></form>'
        )

    async def me(self, request: web.Request) -> web.StreamResponse:
        who = self._principal(request)
        if who is None:
            raise web.HTTPFound("/login?next=/me")
        if who.kind == "dev":
            return _page("mod-bot", "<p>Authentication is off (--no-auth, local development).</p>")
        links = "".join(
            f'<li><a href="/guild/{g}/dashboard">guild {g}</a>'
            f"{' (manage)' if v.manages else ' (member)'}</li>"
            for g, v in sorted(who.guilds.items())
        )
        return _page(
            "mod-bot",
            f"{self._logout_form(who)}<h1>Your servers</h1><ul>{links or '<li>none you can manage</li>'}</ul>",
        )

    # -- the dashboard ----------------------------------------------------------------------------

    def dashboard_gate(self, request: web.Request, gid: int) -> Gate:
        """Called by the proxy's dashboard handler before it asks the pod, whose page
        (dashboard.py) has a session's sign-out and settings forms: they need the
        session's CSRF token and name, which only the proxy holds."""
        target = pod_target(gid)
        decision = self.auth.check(
            "GET", target, str(gid), cookie=request.headers.get("Cookie"), authorization=None
        )
        if decision.status == 401:
            nxt = quote(request.path, safe="/")
            response = web.Response(status=302, headers={"Location": f"/login?next={nxt}"})
            if request.headers.get("Cookie") and COOKIE in request.headers["Cookie"]:
                response.del_cookie(COOKIE, path="/")  # a bad or expired session: drop it
            return Gate(response=response)
        if decision.status:
            return Gate(response=self.refused_page(gid, decision.error))
        headers = {IDENTITY_HEADER: decision.identity}
        who = decision.principal
        if who is not None and who.kind == "session" and self.auth.sessions is not None:
            headers[PAGE_CSRF_HEADER] = self.auth.sessions.csrf_token(who)
            headers[PAGE_USER_HEADER] = quote(who.name, safe="")
        return Gate(principal=who, headers=headers)

    def refused_page(self, gid: int, why: str) -> web.Response:
        return _page(
            "Not allowed",
            f"<h1>You cannot open guild {int(gid)}'s dashboard</h1><p>{escape(why)}.</p>"
            f"<p>Rights are read from Discord when you sign in: "
            f'<a href="/login?next=/guild/{int(gid)}/dashboard">sign in again</a> if they changed.</p>',
            403,
        )

    async def pod_call(
        self, gid: int, who: Principal, method: str, path: str, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        """One call to the guild's owner as ``who``: (status, JSON body)."""
        from .proxy import Unavailable

        proxy = self.proxy
        try:
            table = proxy.current_table()
            route = table.route(gid)
            url = proxy.target(table, route)
            headers = {
                "Authorization": f"Bearer {proxy.settings.internal_token}",
                IDENTITY_HEADER: sign_identity(self.auth.identity_key, who, str(gid), method, path),
                "Content-Type": "application/json",
            }
            data = None if body is None else json.dumps(body).encode()
            async with await proxy._send(
                route.pod, method, f"{url}{path}", headers=headers, data=data
            ) as r:
                try:
                    answer = await r.json(content_type=None)
                except ValueError:
                    answer = {"error": f"pod answered {r.status}"}
                return r.status, answer if isinstance(answer, dict) else {"result": answer}
        except Unavailable as exc:
            return 503, {"error": exc.why}
        except NoRouteError as exc:
            return 503, {"error": str(exc)}

    async def _form_gate(
        self, request: web.Request
    ) -> tuple[int, Principal, Any] | web.StreamResponse:
        try:
            gid = parse_guild_id(request.match_info["guild_id"])
        except InvalidGuildId as exc:
            return _page("Bad request", f"<p>{escape(str(exc))}</p>", 400)
        who = self._principal(request)
        if who is None:
            raise web.HTTPFound(f"/login?next=/guild/{gid}/dashboard")
        form = await request.post()
        if not self._form_ok(request, who, form):
            return _page(
                "Refused", "<p>Cross-site request or missing CSRF token: refused.</p>", 403
            )
        grant = who.grant(str(gid))
        if grant is None or not grant.manages:
            return self.refused_page(gid, "changing this guild needs Manage Server")
        return gid, who, form

    async def save_settings(self, request: web.Request) -> web.StreamResponse:
        gated = await self._form_gate(request)
        if isinstance(gated, web.StreamResponse):
            return gated
        gid, who, form = gated
        body = {
            k: str(form[k]).strip()
            for k in ("moderator_role", "mod_log")
            if str(form.get(k, "")).strip()
        }
        status, answer = await self.pod_call(gid, who, "PUT", f"/api/guilds/{gid}/settings", body)
        if status != 200:
            return _page("Not saved", f"<p>{escape(str(answer.get('error', status)))}</p>", status)
        raise web.HTTPSeeOther(f"/guild/{gid}/dashboard")

    async def new_token(self, request: web.Request) -> web.StreamResponse:
        gated = await self._form_gate(request)
        if isinstance(gated, web.StreamResponse):
            return gated
        gid, who, form = gated
        scope = "write" if form.get("scope") == "write" else "read"
        assert self.auth.sessions is not None or who.kind == "dev"
        if self.auth.sessions is None:
            return _page("Unavailable", "<p>API tokens need --session-keys.</p>", 503)
        token, record = self.auth.sessions.mint_token(
            who, str(gid), scope, self.settings.token_ttl_days * 86400
        )
        status, answer = await self.pod_call(gid, who, "POST", f"/data/guilds/{gid}/tokens", record)
        if status != 201:
            return _page("No token", f"<p>{escape(str(answer.get('error', status)))}</p>", status)
        return _page(
            "Your new API token",
            f"<h1>API token for guild {gid} ({scope})</h1><p>Copy it now: it is shown once.</p>"
            f'<p><code id="token">{escape(token)}</code></p>'
            f"<p>Use: <code>Authorization: Bearer &lt;token&gt;</code> on /api/guilds/{gid}/...</p>"
            f'<p><a href="/guild/{gid}/dashboard">Back to the dashboard</a></p>',
        )

    async def revoke_token(self, request: web.Request) -> web.StreamResponse:
        gated = await self._form_gate(request)
        if isinstance(gated, web.StreamResponse):
            return gated
        gid, who, _ = gated
        tid = request.match_info["token_id"]
        if not tid.isalnum():
            return _page("Bad request", "<p>bad token id</p>", 400)
        status, answer = await self.pod_call(gid, who, "DELETE", f"/data/guilds/{gid}/tokens/{tid}")
        if status != 200:
            return _page(
                "Not revoked", f"<p>{escape(str(answer.get('error', status)))}</p>", status
            )
        raise web.HTTPSeeOther(f"/guild/{gid}/dashboard")


class _DiscordRefused(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def install(app: web.Application, proxy: RouterProxy) -> AuthRoutes:
    """The routes and the rate-limit middleware of ``proxy.gate`` on the proxy's app."""
    routes = proxy.gate
    app.middlewares.append(routes.middleware())
    r = app.router
    r.add_get("/login", routes.login)
    r.add_get("/oauth/callback", routes.callback)
    r.add_get("/logout", routes.logout)
    r.add_post("/logout", routes.logout)
    r.add_get("/me", routes.me)
    r.add_post("/guild/{guild_id}/settings", routes.save_settings)
    r.add_post("/guild/{guild_id}/tokens", routes.new_token)
    r.add_post("/guild/{guild_id}/tokens/{token_id}/revoke", routes.revoke_token)
    return routes


__all__ = ["AuthRoutes", "Gate", "install", "is_write"]
