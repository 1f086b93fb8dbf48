"""Who is asking, at the proxy: signed session cookies, API tokens, CSRF, and the identity
the proxy vouches for to the pods.

Why these choices:

* **Stateless sessions.** Any proxy replica must accept any session, with no store on the
  request path, so a session is a cookie the proxy signs: ``v1.<kid>.<payload>.<mac>``
  where ``payload`` is compact JSON (user id, name, guild -> [permission bits, role ids],
  issued-at, expiry, a random nonce) in base64url and ``mac`` is HMAC-SHA256 over
  ``v1.<kid>.<payload>``. Keys rotate: the first key signs, every listed key verifies,
  and ``kid`` (a hash prefix of the key) says which one was used, so verifying is one HMAC.
  A session ends at its expiry (default 8 h): the permission snapshot is never older.
* **Discord tokens never leave the callback.** The proxy uses the user's access token
  to read ``/users/@me`` and ``/users/@me/guilds`` once, keeps the result (signed) in the
  cookie and drops the token: nothing to steal from the browser, nothing to store.
* **Guilds in the cookie** are only those the user can manage (Administrator or Manage
  Guild bits), plus the one guild the user was trying to open when sent to ``/login``
  (with its role ids from ``/users/@me/guilds/{id}/member``, so the pod can decide the
  "configured moderator role may read" case: only the pod knows the guild's settings).
  At most ``MAX_GUILDS`` entries keep the cookie under browsers' 4 KiB limit.
* **CSRF**: SameSite=Lax already keeps the cookie off cross-site POSTs; on top of that a
  state-changing cookie request must be same-origin (``Sec-Fetch-Site: same-origin``, or
  an ``Origin`` equal to ours) *and* carry the session's CSRF token (an HMAC of the
  session nonce: nothing to store, different for every session).
* **API tokens** (scripts): ``mbt.<payload>.<mac>``, signed like cookies (so the proxy
  refuses garbage without touching a pod), scoped to one guild and ``read`` or
  ``write``, expiring. The pod that owns the guild keeps their SHA-256 (never the token)
  and checks every use against it, so a revoked token stops at once.
* **Identity to the pod**: the proxy replaces the client's ``Authorization`` with the
  internal token, so the pod would not know who asks. The proxy adds
  ``X-Modbot-Identity: v1.<payload>.<mac>``, an HMAC (proxy->pod key) over the verified
  user, the guild, its bits and roles, the method and the exact request target, valid
  for 60 s. A client's ``X-Modbot-*`` headers are always stripped by the proxy, and the
  pod re-checks the MAC, so neither a client nor a replay against another path works.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
MANAGE = ADMINISTRATOR | MANAGE_GUILD

COOKIE = "modbot_session"
FLOW_COOKIE = "modbot_login"  # state + PKCE verifier during one login, 10 minutes
IDENTITY_HEADER = "X-Modbot-Identity"
CSRF_HEADER = "X-CSRF-Token"
TOKEN_PREFIX = "mbt."
MAX_GUILDS = 60
IDENTITY_TTL = 60
CACHE_SIZE = 4096


class AuthError(Exception):
    """Why a credential was refused (logged and counted; the client only sees 401)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise AuthError("malformed") from None


_MACS: dict[bytes, Any] = {}


def mac(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 from a keyed state prepared once per key: with OpenSSL 3, ``hmac.new``
    and ``hmac.digest`` look the digest up on every call (several times slower)."""
    state = _MACS.get(key)
    if state is None:
        state = _MACS[key] = hmac.new(key, digestmod=hashlib.sha256)
    h = state.copy()
    h.update(message)
    return h.digest()


def derive_key(secret: str, purpose: str) -> bytes:
    """A purpose-bound key: one secret never signs two kinds of thing."""
    return hmac.new(secret.encode(), f"modbot-ring {purpose} v1".encode(), hashlib.sha256).digest()


def identity_key_from(identity_key: str, internal_token: str) -> bytes:
    """The proxy->pod identity key: explicit, or derived from the internal token (which
    proxy and pods already share) so a deployment needs no new secret to be safe."""
    return derive_key(identity_key or internal_token, "identity")


@dataclass(frozen=True)
class GuildGrant:
    permissions: int
    roles: tuple[str, ...] = ()

    @property
    def manages(self) -> bool:
        return bool(self.permissions & MANAGE)


@dataclass
class Principal:
    """A verified caller: a session, an API token, or the --no-auth developer."""

    user_id: str
    name: str
    kind: str  # "session" | "token" | "dev"
    guilds: dict[str, GuildGrant] = field(default_factory=dict)
    expires: float = 0.0
    nonce: str = ""
    token_id: str = ""
    token_hash: str = ""
    scope: str = "write"

    def grant(self, guild_id: str) -> GuildGrant | None:
        if self.kind == "dev":
            return GuildGrant(ADMINISTRATOR)
        return self.guilds.get(guild_id)


class KeyRing:
    """Session keys: the first signs, any verifies (rotation without logging users out)."""

    def __init__(self, secrets_: list[str]) -> None:
        keys = [s.strip() for s in secrets_ if s.strip()]
        if not keys:
            raise ValueError("at least one session key is needed")
        for k in keys:
            if len(k) < 16:
                raise ValueError("session keys must be at least 16 characters")
        self.keys: dict[str, bytes] = {}
        self.order: list[str] = []
        for k in keys:
            key = derive_key(k, "session")
            kid = hashlib.sha256(key).hexdigest()[:8]
            self.keys[kid] = key
            self.order.append(kid)
        self.current = self.order[0]

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        return cls(text.split(","))

    def sign(self, message: bytes, kid: str | None = None) -> bytes:
        return mac(self.keys[kid or self.current], message)


class Sessions:
    """Cookie sessions, API tokens and CSRF tokens under one key ring."""

    def __init__(self, ring: KeyRing, ttl: float = 8 * 3600) -> None:
        self.ring = ring
        self.ttl = ttl
        self._cache: dict[str, Principal] = {}

    # -- cookies --------------------------------------------------------------------------------

    def issue(
        self, user_id: str, name: str, guilds: dict[str, GuildGrant], now: float | None = None
    ) -> str:
        now = time.time() if now is None else now
        kept = dict(sorted(guilds.items(), key=lambda kv: (not kv[1].manages, kv[0]))[:MAX_GUILDS])
        payload = {
            "u": user_id,
            "n": name[:64],
            "g": {g: [v.permissions, list(v.roles)] for g, v in kept.items()},
            "i": int(now),
            "e": int(now + self.ttl),
            "s": secrets.token_urlsafe(12),
        }
        return self._seal("v1", payload)

    def _seal(self, version: str, payload: dict[str, Any]) -> str:
        body = b64e(json.dumps(payload, separators=(",", ":")).encode())
        head = f"{version}.{self.ring.current}.{body}"
        return f"{head}.{b64e(self.ring.sign(head.encode()))}"

    def _open(self, value: str, version: str) -> dict[str, Any]:
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != version:
            raise AuthError("malformed")
        kid = parts[1]
        if kid not in self.ring.keys:
            raise AuthError("unknown key")
        head = value[: value.rfind(".")]
        if not hmac.compare_digest(b64d(parts[3]), self.ring.sign(head.encode(), kid)):
            raise AuthError("bad signature")
        try:
            payload = json.loads(b64d(parts[2]))
        except (ValueError, UnicodeDecodeError):
            raise AuthError("malformed") from None
        if not isinstance(payload, dict):
            raise AuthError("malformed")
        return payload

    def verify(self, value: str, now: float | None = None) -> Principal:
        """The cookie's principal; cached, so a busy session costs a dict lookup."""
        now = time.time() if now is None else now
        cached = self._cache.get(value)
        if cached is not None:
            if cached.expires > now:
                return cached
            self._cache.pop(value, None)
            raise AuthError("expired")
        if len(value) > 4096:
            raise AuthError("malformed")
        payload = self._open(value, "v1")
        try:
            expires = float(payload["e"])
            guilds = {
                str(g): GuildGrant(int(v[0]), tuple(str(r) for r in v[1]))
                for g, v in payload["g"].items()
            }
            principal = Principal(
                user_id=str(payload["u"]),
                name=str(payload["n"]),
                kind="session",
                guilds=guilds,
                expires=expires,
                nonce=str(payload["s"]),
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            raise AuthError("malformed") from None
        if expires <= now or float(payload.get("i", 0)) > now + 300:
            raise AuthError("expired")
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()  # cheap bound: a hostile client cannot grow it
        self._cache[value] = principal
        return principal

    def csrf_token(self, principal: Principal) -> str:
        return b64e(self.ring.sign(f"csrf|{principal.nonce}".encode()))[:32]

    def csrf_ok(self, principal: Principal, given: str | None) -> bool:
        if not given or principal.kind != "session":
            return False
        return hmac.compare_digest(given.encode(), self.csrf_token(principal).encode())

    # -- signed small state (the login flow) ------------------------------------------------

    def seal_flow(self, data: dict[str, Any]) -> str:
        return self._seal("f1", data)

    def open_flow(self, value: str, now: float | None = None) -> dict[str, Any]:
        data = self._open(value, "f1")
        if float(data.get("e", 0)) <= (time.time() if now is None else now):
            raise AuthError("expired")
        return data

    # -- API tokens ---------------------------------------------------------------------------

    def mint_token(
        self,
        principal: Principal,
        guild_id: str,
        scope: str,
        ttl: float,
        now: float | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """A new token and the record the pod stores (its hash, never the token)."""
        now = time.time() if now is None else now
        grant = principal.grant(guild_id) or GuildGrant(0)
        tid = secrets.token_hex(8)
        payload = {"t": tid, "u": principal.user_id, "g": guild_id, "c": scope, "e": int(now + ttl)}
        body = b64e(json.dumps(payload, separators=(",", ":")).encode())
        head = f"mbt.{self.ring.current}.{body}"
        token = f"{head}.{b64e(self.ring.sign(head.encode()))}"
        record = {
            "id": tid,
            "hash": token_hash(token),
            "user_id": principal.user_id,
            "user_name": principal.name,
            "scope": scope,
            "permissions": grant.permissions,
            "roles": list(grant.roles),
            "created_at": now,
            "expires_at": now + ttl,
        }
        return token, record

    def verify_token(self, token: str, now: float | None = None) -> Principal:
        now = time.time() if now is None else now
        cached = self._cache.get(token)
        if cached is not None and cached.expires > now:
            return cached
        if len(token) > 1024:
            raise AuthError("malformed")
        payload = self._open(token, "mbt")
        try:
            expires = float(payload["e"])
            scope = str(payload["c"])
            principal = Principal(
                user_id=str(payload["u"]),
                name="",
                kind="token",
                guilds={str(payload["g"]): GuildGrant(0)},
                expires=expires,
                token_id=str(payload["t"]),
                token_hash=token_hash(token),
                scope=scope,
            )
        except (KeyError, TypeError, ValueError):
            raise AuthError("malformed") from None
        if expires <= now:
            raise AuthError("expired")
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[token] = principal
        return principal


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- identity header (proxy -> pod) -----------------------------------------------------------


ANY = "*"  # a dev identity's guild and target: the --no-auth developer may do anything


def _json_str(text: str) -> str:
    """``json.dumps`` for a string, without its cost for the common case (a plain ASCII
    request target: no quote, no backslash, no control character)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


def sign_identity(
    key: bytes,
    principal: Principal,
    guild_id: str,
    method: str,
    target: str,
    now: float | None = None,
) -> str:
    """The header value vouching for ``principal`` on exactly this method and target.

    Built by hand rather than with a dict and ``json.dumps``: this runs on the fast
    path, and every field but the target is digits or a fixed word. A ``dev``
    principal (``--no-auth``) may be signed for guild and target ``*``: it holds every
    right everywhere, so binding it to one target protects nothing, and one header per
    method spares the fast path an HMAC per request (``AuthRoutes.fast_check``)."""
    if (guild_id == ANY or target == ANY) and principal.kind != "dev":
        raise ValueError("only a dev identity may name any guild or target")
    grant = principal.grant(guild_id) or GuildGrant(0)
    exp = int((time.time() if now is None else now) + IDENTITY_TTL)
    roles = ",".join(f'"{int(r)}"' for r in grant.roles)
    extra = ""
    if principal.kind == "token":
        extra = (
            f',"x":"{principal.token_id}","h":"{principal.token_hash}",'
            f'"c":{json.dumps(principal.scope)}'
        )
    text = (
        f'{{"k":"{principal.kind}","u":"{int(principal.user_id)}","g":"{guild_id}",'
        f'"p":{int(grant.permissions)},"r":[{roles}],"m":{_json_str(method)},'
        f'"t":{_json_str(target)},"e":{exp}{extra}}}'
    )
    body = b64e(text.encode())
    return f"v1.{body}.{b64e(mac(key, f'v1.{body}'.encode()))}"


def read_cookie(header: str | None, name: str = COOKIE) -> str | None:
    """One cookie's value from a Cookie header (no parsing of anything else)."""
    if not header:
        return None
    for part in header.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k == name:
            return v.strip().strip('"')
    return None


def bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def same_origin(
    origin: str | None, fetch_site: str | None, expected_origin: str, host: str | None
) -> bool:
    """A browser's own statement that the request comes from our pages."""
    if fetch_site is not None:
        return fetch_site == "same-origin"
    if origin is None or origin == "null":
        return False
    if expected_origin:
        return origin == expected_origin
    # no configured public origin (local development): the Host the browser used
    return host is not None and origin.split("://", 1)[-1] == host


def is_write(method: str) -> bool:
    return method not in ("GET", "HEAD", "OPTIONS")


@dataclass
class Decision:
    """Forward with ``identity`` (status 0), or refuse with ``status`` and ``error``."""

    status: int = 0
    error: str = ""
    identity: str = ""
    principal: Principal | None = None


class Authenticator:
    """The per-request check shared by the fast path (``/api``) and the aiohttp routes.

    The proxy refuses what it can decide alone (no or bad credentials, no rights in the
    guild at all, writes without Manage Guild, CSRF); the pod decides the rest (the
    configured moderator role, token revocation) from the identity the proxy signs.
    """

    def __init__(
        self,
        sessions: Sessions | None,
        identity_key: bytes,
        *,
        no_auth: bool = False,
        public_origin: str = "",
    ) -> None:
        self.sessions = sessions
        self.identity_key = identity_key
        self.no_auth = no_auth
        self.public_origin = public_origin
        self.dev = Principal("0", "developer", "dev")

    def principal(self, cookie: str | None, authorization: str | None) -> Principal | None:
        """The caller, or None if anonymous; AuthError for a bad credential."""
        if self.no_auth:
            return self.dev
        if self.sessions is None:
            return None
        token = bearer(authorization)
        if token is not None:
            if not token.startswith(TOKEN_PREFIX):
                raise AuthError("not an API token")
            return self.sessions.verify_token(token)
        value = read_cookie(cookie)
        if value is None:
            return None
        return self.sessions.verify(value)

    def check(
        self,
        method: str,
        target: str,
        guild_id: str,
        *,
        cookie: str | None,
        authorization: str | None,
        origin: str | None = None,
        fetch_site: str | None = None,
        csrf: str | None = None,
        host: str | None = None,
    ) -> Decision:
        try:
            who = self.principal(cookie, authorization)
        except AuthError as exc:
            what = "API token" if bearer(authorization) is not None else "session"
            return Decision(401, f"invalid or expired {what} ({exc.reason}); sign in again")
        if who is None:
            return Decision(401, "sign in at /login, or send an API token as a Bearer token")
        grant = who.grant(guild_id)
        if grant is None:
            return Decision(403, f"you have no rights in guild {guild_id}", principal=who)
        write = is_write(method)
        if who.kind == "token":
            if write and who.scope != "write":
                return Decision(403, "this API token is read-only", principal=who)
        elif who.kind == "session" and write:
            if not same_origin(origin, fetch_site, self.public_origin, host):
                return Decision(403, "cross-site request refused (CSRF)", principal=who)
            assert self.sessions is not None
            if not self.sessions.csrf_ok(who, csrf):
                return Decision(403, f"missing or wrong {CSRF_HEADER} (CSRF)", principal=who)
            if not grant.manages:
                return Decision(403, "changing settings needs Manage Server", principal=who)
        identity = sign_identity(self.identity_key, who, guild_id, method, target)
        return Decision(identity=identity, principal=who)


LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


def is_loopback(host: str) -> bool:
    """A loopback address or ``localhost``; never a name that merely starts with ``127.``
    (``127.0.0.1.nip.io`` resolves wherever its owner wants)."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class AuthSettings:
    """The proxy's login and authorization configuration (flags in settings.py)."""

    discord_client_id: str = ""
    discord_client_secret: str = ""
    oauth_redirect_url: str = ""
    discord_oauth_url: str = "https://discord.com/oauth2/authorize"
    session_keys: str = ""
    session_ttl: float = 8 * 3600
    identity_key: str = ""
    no_auth: bool = False
    token_ttl_days: float = 90.0
    rate_limit_anon: float = 10.0
    rate_limit_user: float = 50.0
    forwarded_hops: int = 0

    @classmethod
    def from_args(cls, args: Any) -> AuthSettings:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in vars(args).items() if k in fields})

    @property
    def login_configured(self) -> bool:
        return bool(self.discord_client_id and self.discord_client_secret and self.session_keys)

    @property
    def public_origin(self) -> str:
        """scheme://host[:port] of the redirect URL: the origin our pages are served from."""
        if not self.oauth_redirect_url:
            return ""
        scheme, _, rest = self.oauth_redirect_url.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0]}"

    @property
    def secure_cookies(self) -> bool:
        return self.oauth_redirect_url.startswith("https://")

    def problems(self, host: str) -> list[str]:
        """Why this configuration must not start (empty: fine)."""
        out = []
        if self.no_auth and not is_loopback(host):
            out.append(
                "--no-auth is for local development only: it needs a loopback --host "
                "(127.0.0.1, ::1 or localhost)"
            )
        if (self.discord_client_id or self.discord_client_secret) and not self.login_configured:
            out.append(
                "Discord login needs --discord-client-id, --discord-client-secret and --session-keys"
            )
        if self.session_keys:
            try:
                KeyRing.parse(self.session_keys)
            except ValueError as exc:
                out.append(f"--session-keys: {exc}")
        if self.login_configured:
            url = self.oauth_redirect_url
            if not url.startswith(("http://", "https://")) or not url.endswith("/oauth/callback"):
                out.append("--oauth-redirect-url must be http(s)://<public host>/oauth/callback")
            elif url.startswith("http://"):
                netloc = url[7:].split("/", 1)[0]
                name = netloc.rsplit(":", 1)[0].strip("[]") if ":" in netloc else netloc
                if not is_loopback(name):
                    out.append(
                        "--oauth-redirect-url must be https:// outside local development "
                        "(session cookies are Secure)"
                    )
        return out

    def authenticator(self, internal_token: str) -> Authenticator:
        sessions = (
            Sessions(KeyRing.parse(self.session_keys), self.session_ttl)
            if self.session_keys
            else None
        )
        return Authenticator(
            sessions,
            identity_key_from(self.identity_key, internal_token),
            no_auth=self.no_auth,
            public_origin=self.public_origin,
        )
