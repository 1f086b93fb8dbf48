"""Who may read or change a guild, decided again on the pod.

The proxy signs the identity it verified (``X-Modbot-Identity``: user, guild, permission
bits, role ids, method, request target, 60 s expiry; HMAC-SHA256 with the proxy->pod
key). The pod does not trust the proxy's network position alone: every
``/api/guilds/...`` and ``/data/guilds/...`` request must carry that header, for this
guild, this method and this exact target, or it gets 401 (only the ``--no-auth``
developer's identity, which holds every right, may name guild and target ``*``). A
header a client sent never arrives here (the proxy strips ``X-Modbot-*``), and a forged
one fails the MAC.

Rules (Discord's bits): Administrator (0x8) or Manage Server (0x20) may read and write;
the guild's configured ``moderator_role`` may read. Only the pod can decide the
moderator case: it holds the guild's settings.

API tokens: the proxy mints them and verifies their signature; the pod keeps their
SHA-256 with the owner, scope and the owner's rights when it was created (table
``api_tokens`` in the pod's SQLite file, beside the guild's data, so Litestream backs it
up), and checks every use: unknown, revoked or expired tokens get 401. Stored here and not
in the config service because nothing on the request path may ask the config service,
and the proxy is stateless. A token belongs to the pod that owned the guild when it was
made; after the guild migrates, it must be created again (fail closed).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite
from aiohttp import web

from modbot_ring import InvalidGuildId, parse_guild_id
from modbot_runtime.observability import json_error

ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
MANAGE = ADMINISTRATOR | MANAGE_GUILD
HEADER = "X-Modbot-Identity"
GUARDED = ("/api/guilds/", "/data/guilds/")
IDENTITY_KEY: web.AppKey[IdentityGuard] = web.AppKey("identity")
MAX_TOKENS_PER_GUILD = 50


def identity_key_from(identity_key: str, internal_token: str) -> bytes:
    """Same derivation as the proxy's (router_proxy/auth.py; services share no imports)."""
    secret = identity_key or internal_token
    return hmac.new(secret.encode(), b"modbot-ring identity v1", hashlib.sha256).digest()


class Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


@dataclass
class Identity:
    kind: str
    user_id: str
    guild_id: str
    permissions: int
    roles: tuple[str, ...]
    scope: str = "write"
    token_id: str = ""

    @property
    def manages(self) -> bool:
        return bool(self.permissions & MANAGE)


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


ANY = "*"


def _dev_any(payload: dict[str, Any]) -> tuple[str, ...]:
    """A dev identity (the proxy's ``--no-auth`` developer, who may do anything) may name
    any guild and target as ``*``; no other kind may."""
    return (ANY,) if payload.get("k") == "dev" else ()


def verify_header(
    key: bytes, value: str | None, method: str, target: str, now: float | None = None
) -> dict[str, Any]:
    if not value:
        raise Refused(401, "this pod serves guild data only to signed-in users, via the proxy")
    parts = value.split(".")
    if len(parts) != 3 or parts[0] != "v1":
        raise Refused(401, "malformed identity")
    try:
        mac = _b64d(parts[2])
        payload = json.loads(_b64d(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise Refused(401, "malformed identity") from None
    expected = hmac.new(key, f"v1.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise Refused(401, "identity not signed by the proxy")
    if not isinstance(payload, dict):
        raise Refused(401, "malformed identity")
    if float(payload.get("e", 0)) < (time.time() if now is None else now):
        raise Refused(401, "identity expired")
    if payload.get("m") != method or payload.get("t") not in (target, *_dev_any(payload)):
        raise Refused(401, "identity was issued for another request")
    return payload


class TokenStore:
    """API token records (hashes only), on their own connection to the pod's file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def _conn(self) -> aiosqlite.Connection:
        async with self._lock:
            if self.db is None:
                db = await aiosqlite.connect(self.path, isolation_level=None)
                await db.execute("PRAGMA busy_timeout=5000")
                await db.execute(
                    "CREATE TABLE IF NOT EXISTS api_tokens ("
                    " id TEXT PRIMARY KEY, guild_id INTEGER NOT NULL, hash TEXT NOT NULL,"
                    " user_id TEXT NOT NULL, user_name TEXT NOT NULL, scope TEXT NOT NULL"
                    " CHECK (scope IN ('read', 'write')), permissions INTEGER NOT NULL,"
                    " roles TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL,"
                    " revoked_at REAL)"
                )
                self.db = db
            return self.db

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()
            self.db = None

    async def add(self, guild_id: int, record: dict[str, Any]) -> None:
        db = await self._conn()
        async with db.execute(
            "SELECT count(*) FROM api_tokens WHERE guild_id = ? AND revoked_at IS NULL"
            " AND expires_at > ?",
            (guild_id, time.time()),
        ) as cur:
            row = await cur.fetchone()
        if row is not None and row[0] >= MAX_TOKENS_PER_GUILD:
            raise Refused(409, f"a guild may have at most {MAX_TOKENS_PER_GUILD} live tokens")
        try:
            await db.execute(
                "INSERT INTO api_tokens (id, guild_id, hash, user_id, user_name, scope,"
                " permissions, roles, created_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    str(record["id"]),
                    guild_id,
                    str(record["hash"]),
                    str(record["user_id"]),
                    str(record.get("user_name", ""))[:64],
                    str(record["scope"]),
                    int(record["permissions"]),
                    json.dumps([str(r) for r in record.get("roles", [])]),
                    float(record["created_at"]),
                    float(record["expires_at"]),
                ),
            )
        except (KeyError, TypeError, ValueError, aiosqlite.IntegrityError) as exc:
            raise Refused(400, f"bad token record: {exc}") from None

    async def find(self, token_id: str) -> tuple[Any, ...] | None:
        db = await self._conn()
        async with db.execute(
            "SELECT guild_id, hash, user_id, scope, permissions, roles, expires_at, revoked_at"
            " FROM api_tokens WHERE id = ?",
            (token_id,),
        ) as cur:
            row = await cur.fetchone()
        return tuple(row) if row is not None else None

    async def list(self, guild_id: int) -> list[dict[str, Any]]:
        db = await self._conn()
        async with db.execute(
            "SELECT id, user_id, user_name, scope, created_at, expires_at, revoked_at"
            " FROM api_tokens WHERE guild_id = ? ORDER BY created_at",
            (guild_id,),
        ) as cur:
            rows = await cur.fetchall()
        keys = ("id", "user_id", "user_name", "scope", "created_at", "expires_at", "revoked_at")
        return [dict(zip(keys, r)) for r in rows]

    async def revoke(self, guild_id: int, token_id: str) -> bool:
        db = await self._conn()
        cur = await db.execute(
            "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND guild_id = ?"
            " AND revoked_at IS NULL",
            (time.time(), token_id, guild_id),
        )
        return cur.rowcount > 0


class IdentityGuard:
    def __init__(self, key: bytes, tokens: TokenStore) -> None:
        self.key = key
        self.tokens = tokens

    async def identify(self, request: web.Request) -> Identity:
        """The verified caller of a guarded request; Refused otherwise."""
        payload = verify_header(
            self.key, request.headers.get(HEADER), request.method, request.raw_path
        )
        guild = request.match_info.get("guild_id", "")
        try:
            ident = Identity(
                kind=str(payload["k"]),
                user_id=str(payload["u"]),
                guild_id=str(payload["g"]),
                permissions=int(payload["p"]),
                roles=tuple(str(r) for r in payload["r"]),
                scope=str(payload.get("c", "write")),
                token_id=str(payload.get("x", "")),
            )
        except (KeyError, TypeError, ValueError):
            raise Refused(401, "malformed identity") from None
        if ident.guild_id in _dev_any(payload):
            ident.guild_id = guild  # the developer's "any guild": this one
        if ident.guild_id != guild:
            raise Refused(401, "identity was issued for another guild")
        if ident.kind == "token":
            row = await self.tokens.find(ident.token_id)
            if row is None or str(row[0]) != guild or row[1] != payload.get("h"):
                raise Refused(401, "unknown API token (revoked, or made before this guild moved)")
            if row[7] is not None:
                raise Refused(401, "this API token was revoked")
            if float(row[6]) <= time.time():
                raise Refused(401, "this API token has expired")
            ident.user_id, ident.scope, ident.permissions = str(row[2]), str(row[3]), int(row[4])
            ident.roles = tuple(json.loads(row[5]))
        return ident

    async def authorize(self, request: web.Request, ident: Identity, settings: Any) -> None:
        write = request.method not in ("GET", "HEAD")
        if ident.kind == "dev":
            return
        if write:
            if ident.kind == "token" and ident.scope != "write":
                raise Refused(403, "this API token is read-only")
            if not ident.manages:
                raise Refused(403, "changing this guild needs Manage Server")
            return
        if ident.manages:
            return
        role = (settings or {}).get("moderator_role")
        if role and str(role) in ident.roles:
            return
        raise Refused(403, "reading this guild needs Manage Server or its moderator role")


def guarded(path: str) -> bool:
    return path.startswith(GUARDED)


async def check(request: web.Request, store: Any) -> web.Response | None:
    """The hook the pod's auth middleware calls: a refusal response, or None to go on."""
    guard = request.app.get(IDENTITY_KEY)
    if guard is None:
        return json_error(401, "this pod has no identity key configured")
    if "guild_id" not in request.match_info:
        return None  # no such route: the 404 tells nothing about any guild
    try:  # bad input first: a malformed guild id is 400 whoever asks
        parse_guild_id(request.match_info["guild_id"])
    except InvalidGuildId as exc:
        return json_error(400, str(exc))
    try:
        ident = await guard.identify(request)
        settings = None
        if not ident.manages and ident.kind != "dev":
            try:
                settings = await store.settings(int(ident.guild_id))
            except ValueError:
                settings = None
        await guard.authorize(request, ident, settings)
    except Refused as exc:
        return json_error(exc.status, exc.why)
    request["identity"] = ident
    return None


# -- token management (reached only from the proxy's dashboard routes, under /data) -------


async def list_tokens(request: web.Request) -> web.Response:
    guard = request.app[IDENTITY_KEY]
    ident: Identity = request["identity"]
    if not ident.manages and ident.kind != "dev":
        return json_error(403, "managing API tokens needs Manage Server")
    gid = int(request.match_info["guild_id"])
    return web.json_response({"tokens": await guard.tokens.list(gid)})


async def create_token(request: web.Request) -> web.Response:
    guard = request.app[IDENTITY_KEY]
    ident: Identity = request["identity"]
    if ident.kind not in ("session", "dev"):
        return json_error(403, "API tokens are created from a signed-in dashboard")
    try:
        record = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return json_error(400, "token record is not valid JSON")
    if not isinstance(record, dict) or str(record.get("user_id")) != ident.user_id:
        return json_error(400, "a token record must be the caller's own")
    try:
        await guard.tokens.add(int(request.match_info["guild_id"]), record)
    except Refused as exc:
        return json_error(exc.status, exc.why)
    return web.json_response({"id": record["id"]}, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    guard = request.app[IDENTITY_KEY]
    gid = int(request.match_info["guild_id"])
    if not await guard.tokens.revoke(gid, request.match_info["token_id"]):
        return json_error(404, "no such live token in this guild")
    return web.json_response({"revoked": request.match_info["token_id"]})


def install(app: web.Application, key: bytes, database: str) -> TokenStore:
    """Register the guard and the token routes on a pod's app."""
    tokens = TokenStore(database)
    app[IDENTITY_KEY] = IdentityGuard(key, tokens)
    r = app.router
    r.add_get("/data/guilds/{guild_id}/tokens", list_tokens)
    r.add_post("/data/guilds/{guild_id}/tokens", create_token)
    r.add_delete("/data/guilds/{guild_id}/tokens/{token_id}", revoke_token)

    async def close(_: web.Application) -> None:
        await tokens.close()

    app.on_cleanup.append(close)
    return tokens
