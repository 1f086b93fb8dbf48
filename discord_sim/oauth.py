"""The simulator's OAuth2: Discord's authorization-code flow for dashboards' logins.

Shapes and rules follow Discord's docs (OAuth2 and the User resource):

* ``GET /oauth2/authorize`` (``response_type=code``, ``client_id``, ``redirect_uri``,
  ``scope``, ``state``, ``code_challenge`` + ``code_challenge_method=S256``) shows a
  consent page. Real Discord knows who is logged in; here the page has a user picker
  (the users the control API created), an **Authorize** and a **Cancel** button, so a
  browser or a test drives it like the real one. Authorize redirects to
  ``redirect_uri?code=...&state=...``; Cancel to ``?error=access_denied&state=...``.
* ``POST /api/oauth2/token`` (also under ``/api/v10``): form-encoded
  ``grant_type=authorization_code``, ``code``, ``redirect_uri`` (must equal the
  authorize one), ``code_verifier`` (if a challenge was sent), client credentials as
  HTTP Basic or form fields. Codes are single-use and live 10 minutes. Errors are
  ``{"error": "invalid_grant" | "invalid_client" | ..., "error_description": ...}``.
* ``GET /api/users/@me``, ``/api/users/@me/guilds`` (``permissions`` as a string of
  the bit field, ``owner``) and ``/api/users/@me/guilds/{id}/member`` (scope
  ``guilds.members.read``) with ``Authorization: Bearer <access token>``; 401
  ``{"message": "401: Unauthorized", "code": 0}`` without a valid one. A bot token on
  ``/users/@me`` still gets the bot user.
* Control API (loopback, no auth, like the rest of ``/control``):
  ``POST /control/oauth/users`` ``{"id"?, "username", "guilds": {"<guild id>":
  {"permissions": "32", "roles": ["<role id>"], "owner": false}}}`` creates or replaces
  a user; ``GET /control/oauth/users`` lists them; ``GET /control/oauth/app`` gives the
  client id and secret.

The client id is the application id; the secret is ``MODBOT_SIM_CLIENT_SECRET``
(default ``sim-client-secret``). Any ``http(s)`` redirect URI is accepted unless some are
registered (``POST /control/oauth/app {"redirect_uris": [...]}``), then only those.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from aiohttp import web

if TYPE_CHECKING:
    from .app import DiscordSim

CODE_TTL = 600.0
TOKEN_TTL = 604800
SCOPES = {"identify", "email", "guilds", "guilds.members.read"}
DEFAULT_SECRET = "sim-client-secret"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def _unauthorized() -> web.Response:
    return _json({"message": "401: Unauthorized", "code": 0}, 401)


@dataclass
class OAuthUser:
    id: int
    username: str
    guilds: dict[int, dict[str, Any]] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "global_name": self.username,
            "discriminator": "0",
            "avatar": None,
            "bot": False,
            "public_flags": 0,
            "flags": 0,
            "mfa_enabled": False,
            "locale": "en-US",
            "premium_type": 0,
            "primary_guild": None,
        }


@dataclass
class Grant:
    user_id: int
    redirect_uri: str
    scopes: frozenset[str]
    challenge: str
    expires: float


class OAuth:
    def __init__(self, sim: DiscordSim) -> None:
        self.sim = sim
        self.client_secret = os.environ.get("MODBOT_SIM_CLIENT_SECRET", DEFAULT_SECRET)
        self.redirect_uris: list[str] = []
        self.users: dict[int, OAuthUser] = {}
        self.codes: dict[str, Grant] = {}
        self.tokens: dict[str, tuple[int, frozenset[str], float]] = {}

    @property
    def client_id(self) -> str:
        return str(self.sim.world.application_id)

    # -- authorize -------------------------------------------------------------------------

    def _check_authorize(self, q: Any) -> tuple[str, frozenset[str]] | str:
        """(redirect_uri, scopes), or the reason the request is invalid."""
        if q.get("client_id") != self.client_id:
            return "Unknown application (invalid client_id)"
        if q.get("response_type") != "code":
            return "unsupported response_type (only 'code')"
        redirect = q.get("redirect_uri", "")
        parts = urlsplit(redirect)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return "invalid redirect_uri"
        if self.redirect_uris and redirect not in self.redirect_uris:
            return "Invalid OAuth2 redirect_uri"
        scopes = frozenset(q.get("scope", "").split())
        if not scopes or scopes - SCOPES:
            return f"invalid scope: {' '.join(sorted(scopes - SCOPES)) or '(none)'}"
        method = q.get("code_challenge_method")
        if q.get("code_challenge") and method != "S256":
            return "code_challenge_method must be S256"
        return redirect, scopes

    async def authorize_page(self, request: web.Request) -> web.Response:
        checked = self._check_authorize(request.query)
        if isinstance(checked, str):
            return web.Response(
                text=_page("Error", f"<p>{escape(checked)}</p>"),
                status=400,
                content_type="text/html",
            )
        _, scopes = checked
        hidden = "".join(
            f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
            for k, v in request.query.items()
            if k != "user_id"
        )
        options = "".join(
            f'<option value="{u.id}"{" selected" if str(u.id) == request.query.get("user_id") else ""}>'
            f"{escape(u.username)}</option>"
            for u in self.users.values()
        )
        body = (
            "<h1>mod-bot wants to access your account</h1>"
            f"<p>Scopes: {escape(', '.join(sorted(scopes)))}</p>"
            '<form method="post" action="/oauth2/authorize">'
            f"{hidden}"
            f'<label>Signed in as <select name="user_id" id="user">{options}</select></label>'
            '<p><button type="submit" name="action" value="authorize" id="authorize">Authorize</button> '
            '<button type="submit" name="action" value="cancel" id="cancel">Cancel</button></p>'
            "</form>"
        )
        return web.Response(text=_page("Authorize mod-bot", body), content_type="text/html")

    async def authorize_submit(self, request: web.Request) -> web.Response:
        form = await request.post()
        q = {k: str(v) for k, v in form.items()}
        checked = self._check_authorize(q)
        if isinstance(checked, str):
            return web.Response(
                text=_page("Error", f"<p>{escape(checked)}</p>"),
                status=400,
                content_type="text/html",
            )
        redirect, scopes = checked
        state = {"state": q["state"]} if q.get("state") else {}
        sep = "&" if "?" in redirect else "?"
        if q.get("action") != "authorize":
            query = urlencode(
                {
                    "error": "access_denied",
                    "error_description": "The resource owner or authorization server denied the request",
                    **state,
                }
            )
            raise web.HTTPFound(f"{redirect}{sep}{query}")
        try:
            user = self.users[int(q.get("user_id", ""))]
        except (ValueError, KeyError):
            return web.Response(
                text=_page("Error", "<p>Pick a user.</p>"), status=400, content_type="text/html"
            )
        code = secrets.token_urlsafe(24)
        self.codes[code] = Grant(
            user.id, redirect, scopes, q.get("code_challenge", ""), time.time() + CODE_TTL
        )
        raise web.HTTPFound(f"{redirect}{sep}{urlencode({'code': code, **state})}")

    # -- token -------------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id, client_secret = (
            str(form.get("client_id", "")),
            str(form.get("client_secret", "")),
        )
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return _json({"error": "invalid_client"}, 401)
        if client_id != self.client_id or not hmac.compare_digest(
            client_secret.encode(), self.client_secret.encode()
        ):
            return _json({"error": "invalid_client"}, 401)
        if form.get("grant_type") != "authorization_code":
            return _json({"error": "unsupported_grant_type"}, 400)
        grant = self.codes.pop(str(form.get("code", "")), None)  # single use, even on failure
        if grant is None or grant.expires < time.time():
            return _json(
                {"error": "invalid_grant", "error_description": 'Invalid "code" in request.'}, 400
            )
        if form.get("redirect_uri") != grant.redirect_uri:
            return _json(
                {
                    "error": "invalid_grant",
                    "error_description": 'Invalid "redirect_uri" in request.',
                },
                400,
            )
        if grant.challenge:
            verifier = str(form.get("code_verifier", ""))
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            if not hmac.compare_digest(digest.rstrip(b"=").decode(), grant.challenge):
                return _json(
                    {"error": "invalid_grant", "error_description": "Invalid code_verifier"}, 400
                )
        access = secrets.token_urlsafe(24)
        self.tokens[access] = (grant.user_id, grant.scopes, time.time() + TOKEN_TTL)
        return _json(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": TOKEN_TTL,
                "refresh_token": secrets.token_urlsafe(24),
                "scope": " ".join(sorted(grant.scopes)),
            }
        )

    # -- user API ----------------------------------------------------------------------------

    def _bearer(self, request: web.Request, scope: str) -> OAuthUser | web.Response:
        auth = request.headers.get("Authorization", "")
        entry = self.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        self.sim.record(request, None)
        if entry is None or entry[2] < time.time() or entry[0] not in self.users:
            return _unauthorized()
        if scope not in entry[1]:
            return _json({"message": "Missing Access", "code": 50001}, 403)
        return self.users[entry[0]]

    async def me(self, request: web.Request) -> web.StreamResponse:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return await self.sim.users_me(request)  # the bot's own /users/@me
        user = self._bearer(request, "identify")
        return user if isinstance(user, web.Response) else _json(user.payload())

    async def my_guilds(self, request: web.Request) -> web.Response:
        user = self._bearer(request, "guilds")
        if isinstance(user, web.Response):
            return user
        out: list[dict[str, Any]] = []
        for gid, member in sorted(user.guilds.items()):
            guild = self.sim.world.guilds.get(gid)
            out.append(
                {
                    "id": str(gid),
                    "name": guild.name if guild is not None else f"guild {gid}",
                    "icon": None,
                    "banner": None,
                    "owner": bool(member.get("owner")),
                    "permissions": str(member.get("permissions", "0")),
                    "features": [],
                }
            )
        return _json(out)

    async def my_member(self, request: web.Request) -> web.Response:
        user = self._bearer(request, "guilds.members.read")
        if isinstance(user, web.Response):
            return user
        try:
            member = user.guilds[int(request.match_info["guild_id"])]
        except (ValueError, KeyError):
            return _json({"message": "Unknown Guild", "code": 10004}, 404)
        return _json(
            {
                "user": user.payload(),
                "nick": None,
                "avatar": None,
                "roles": [str(r) for r in member.get("roles", [])],
                "joined_at": "2024-01-01T00:00:00.000000+00:00",
                "deaf": False,
                "mute": False,
                "flags": 0,
                "pending": False,
                "banner": None,
                "premium_since": None,
                "communication_disabled_until": None,
            }
        )

    # -- control -------------------------------------------------------------------------------

    async def control_put_user(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            uid = int(body.get("id") or self.sim.world.ids.next())
            name = str(body["username"])
            guilds = {
                int(g): {
                    "permissions": str(int(v.get("permissions", 0))),
                    "roles": [str(int(r)) for r in v.get("roles", [])],
                    "owner": bool(v.get("owner", False)),
                }
                for g, v in (body.get("guilds") or {}).items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return _json({"error": f"bad user: {exc}"}, 400)
        self.users[uid] = OAuthUser(uid, name, guilds)
        return _json(
            {"id": str(uid), "username": name, "guilds": {str(g): v for g, v in guilds.items()}}
        )

    async def control_users(self, request: web.Request) -> web.Response:
        return _json(
            {
                "users": [
                    {
                        "id": str(u.id),
                        "username": u.username,
                        "guilds": {str(g): v for g, v in u.guilds.items()},
                    }
                    for u in self.users.values()
                ]
            }
        )

    async def control_app(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                body = json.loads(await request.read())
                self.redirect_uris = [str(u) for u in body.get("redirect_uris", [])]
            except (ValueError, TypeError, AttributeError):
                return _json({"error": 'body must be {"redirect_uris": [...]}'}, 400)
        return _json(
            {
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "redirect_uris": self.redirect_uris,
                "authorize_url": f"{self.sim.base_url}/oauth2/authorize",
                "token_url": f"{self.sim.base_url}/api/oauth2/token",
            }
        )


def exempt(request: web.Request) -> bool:
    """Requests the bot-token check must let through: OAuth's own credentials apply."""
    return request.path.endswith("/oauth2/token") or request.headers.get(
        "Authorization", ""
    ).startswith("Bearer ")


def install(app: web.Application, sim: DiscordSim) -> OAuth:
    """Add the OAuth2 routes; call before the bot REST routes (``/users/@me`` is shared)."""
    oauth = OAuth(sim)
    r = app.router
    r.add_get("/oauth2/authorize", oauth.authorize_page)
    r.add_post("/oauth2/authorize", oauth.authorize_submit)
    for api in ("/api", "/api/v10"):
        r.add_post(f"{api}/oauth2/token", oauth.token)
        r.add_get(f"{api}/users/@me", oauth.me)
        r.add_get(f"{api}/users/@me/guilds", oauth.my_guilds)
        r.add_get(f"{api}/users/@me/guilds/{{guild_id}}/member", oauth.my_member)
    r.add_post("/control/oauth/users", oauth.control_put_user)
    r.add_get("/control/oauth/users", oauth.control_users)
    r.add_route("GET", "/control/oauth/app", oauth.control_app)
    r.add_route("POST", "/control/oauth/app", oauth.control_app)
    return oauth


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        '</title></head><body style="font:15px system-ui;margin:2rem">'
        f"{body}</body></html>"
    )
