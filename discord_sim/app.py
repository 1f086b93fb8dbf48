"""A local Discord for a real, unmodified discord.py client and for webhook receivers.

* REST under ``/api/v10``: what discord.py needs to log in and act, each call recorded.
* Gateway v10 at ``/gw``: HELLO, IDENTIFY (honouring ``shard: [id, n]``), READY,
  GUILD_CREATE, heartbeats, RESUME with replay, and DISPATCH of the guild events.
  Several sessions may open the same shard, as on Discord.
* A control API under ``/control`` (loopback only, no auth) that tests, the CLI and the
  local stack use to create guilds, inject events and send signed interaction webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yarl
from aiohttp import WSMsgType, web
from aiohttp.typedefs import Handler

from . import commands, moderation, oauth, persist
from .signing import Signer
from .world import Guild, IdentifyLimits, World, iso

log = logging.getLogger("modbot.sim")

HEARTBEAT_INTERVAL_MS = 41250
REPLAY_BUFFER = 50_000
# Seconds a session whose connection dropped stays resumable. Discord does not publish the
# figure (minutes, in practice); past it, or past the replay buffer, RESUME gets op 9 d=false.
RESUME_WINDOW = 120.0
GATEWAY_VERSIONS = ("9", "10")  # the versions Discord still serves; others close with 4012
# Every intent bit Discord defines (0-16, 20, 21, 24, 25); any other bit closes with 4013.
KNOWN_INTENTS = sum(1 << b for b in (*range(17), 20, 21, 24, 25))
PRIVILEGED = {"members": 1 << 1, "presences": 1 << 8, "message_content": 1 << 15}
PRIVILEGED_INTENTS = sum(PRIVILEGED.values())
MAX_GUILDS_PER_SHARD = 2500

SIM_KEY: web.AppKey[DiscordSim] = web.AppKey("sim")


def _json(data: Any, status: int = 200) -> web.Response:
    # discord.py wants exactly "application/json": no charset parameter.
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def _form_error(field: str, code: str, message: str) -> web.Response:
    """Discord's 400 for a refused form field (code 50035, Invalid Form Body)."""
    errors = {"_errors": [{"code": code, "message": message}]}
    body = {"message": "Invalid Form Body", "code": 50035, "errors": {field: errors}}
    if field == "_errors":
        body["errors"] = errors
    return _json(body, 400)


class GatewaySocket(web.WebSocketResponse):
    """Remembers who closed the connection: after a close the server started, aiohttp
    reports the client's echo (1000) as the close code, which must not end the session."""

    server_closed = False

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        if self.close_code is None:  # no close frame from the client yet: the server closes
            self.server_closed = True
        return await super().close(code=code, message=message, drain=drain)


@dataclass
class Session:
    id: str
    shard: tuple[int, int]
    seq: int = 0
    ws: web.WebSocketResponse | None = None
    buffer: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=REPLAY_BUFFER))
    outbox: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    identified_at: float = field(default_factory=time.time)
    dispatched: int = 0
    disconnected_at: float | None = None  # monotonic; None while a connection is attached

    def receives(self, guild_id: int) -> bool:
        shard_id, count = self.shard
        return (guild_id >> 22) % count == shard_id


@dataclass
class RecordedCall:
    seq: int
    at: float
    method: str
    path: str
    body: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "method": self.method,
            "path": self.path,
            "body": self.body,
        }


class DiscordSim:
    def __init__(
        self,
        *,
        bot_token: str,
        application_id: int,
        signing_seed: str,
        heartbeat_ms: int = HEARTBEAT_INTERVAL_MS,
        limits: IdentifyLimits | None = None,
        privileged_intents: int = PRIVILEGED_INTENTS,
        max_guilds_per_shard: int = MAX_GUILDS_PER_SHARD,
        resume_window: float = RESUME_WINDOW,
    ) -> None:
        self.resume_window = resume_window
        self._swept = 0.0
        self.bot_token = bot_token
        self.issued_token = bot_token
        self.limits = limits or IdentifyLimits()
        self.privileged_intents = privileged_intents
        self.max_guilds_per_shard = max_guilds_per_shard
        self.gateway_counts: dict[str, Any] = {
            "identifies": 0,
            "resumes": 0,
            "lockouts": 0,
            "refused": {"concurrency": 0, "exhausted": 0},
            "closed": {},
        }
        self.world = World(application_id)
        self.signer = Signer(signing_seed)
        self.heartbeat_ms = heartbeat_ms
        self.sessions: dict[str, Session] = {}
        self.calls: list[RecordedCall] = []
        self.identifies: list[dict[str, Any]] = []
        self.base_url = ""
        self.oauth: oauth.OAuth | None = None  # set by build_sim_app
        self.moderation: moderation.ModerationState | None = None  # set by build_sim_app
        self._writers: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self.interactions_endpoint_url: str | None = None  # PATCH /applications/@me

    # -- fan-out -----------------------------------------------------------------------------

    def dispatch(self, guild_id: int | None, event: str, data: dict[str, Any]) -> int:
        """Send an event to every session of the guild's shard; returns how many got it."""
        body = json.dumps(data)
        delivered = 0
        self._expire_sessions()
        for session in self.sessions.values():
            if guild_id is None and session.shard[0] != 0:
                continue  # DMs go to shard 0 only
            if guild_id is not None and not session.receives(guild_id):
                continue
            session.seq += 1
            frame = f'{{"op":0,"t":"{event}","s":{session.seq},"d":{body}}}'
            session.buffer.append((session.seq, frame))
            session.dispatched += 1
            if session.ws is not None:
                session.outbox.put_nowait(frame)
            delivered += 1
        return delivered

    def record(self, request: web.Request, body: Any) -> None:
        self.calls.append(
            RecordedCall(len(self.calls) + 1, time.time(), request.method, request.path, body)
        )

    # -- gateway -------------------------------------------------------------------------------

    async def gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = GatewaySocket(max_msg_size=0, compress=False)
        await ws.prepare(request)
        await ws.send_str(
            json.dumps(
                {"op": 10, "d": {"heartbeat_interval": self.heartbeat_ms}, "s": None, "t": None}
            )
        )
        session: Session | None = None
        writer: asyncio.Task[None] | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                op, d = payload.get("op"), payload.get("d")
                if op == 1:
                    await ws.send_str('{"op":11,"d":null,"s":null,"t":null}')
                elif op == 2:
                    if session is not None:
                        await self._refuse(ws, 4005, "Already authenticated.")
                        break
                    session = await self._identify(ws, request, d)
                    if ws.closed:
                        break
                    if session is not None:
                        writer = self._attach(session, ws)
                        self._send_ready(session)
                elif op == 6:
                    resumed = await self._resume(ws, d)
                    if resumed is not None:
                        session = resumed
                        writer = self._attach(session, ws)
                        self._replay(session, int(d["seq"] or 0))
                # op 3 (presence), 4 (voice), 8 (member chunks): accepted and ignored
        finally:
            if session is not None and session.ws is ws:
                session.ws = None
                session.outbox.put_nowait(None)
                self._disconnected(session, ws)
            if writer is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(writer, 1.0)
        return ws

    # -- RESUME: the resume window and the replay buffer ------------------------------------------

    async def _resume(self, ws: web.WebSocketResponse, d: Any) -> Session | None:
        """The session a RESUME names, if Discord would still resume it; else op 9 d=false.

        Resumable: the session exists, was not closed by its client with 1000/1001, lost its
        connection at most ``resume_window`` seconds ago (a connected one may be taken over),
        and its replay buffer still holds every event after ``seq``.
        """
        self._expire_sessions()
        ok = isinstance(d, dict) and isinstance(d.get("session_id"), str)
        seq = d.get("seq") if ok else None
        token = d.get("token") if ok else None
        session = self.sessions.get(d["session_id"]) if ok else None
        if (
            session is None
            or not isinstance(token, str)
            or token.removeprefix("Bot ") != self.bot_token
            or not (seq is None or (isinstance(seq, int) and not isinstance(seq, bool)))
            or (seq or 0) > session.seq
            or (session.buffer and (seq or 0) < session.buffer[0][0] - 1)
        ):
            self.gateway_counts["invalid_resumes"] = (
                self.gateway_counts.get("invalid_resumes", 0) + 1
            )
            await ws.send_str('{"op":9,"d":false,"s":null,"t":null}')
            return None
        self.gateway_counts["resumes"] += 1
        session.disconnected_at = None
        return session

    def _replay(self, session: Session, last: int) -> None:
        """Send what the session missed after ``last``, then RESUMED."""
        for seq, frame in list(session.buffer):
            if seq > last:
                session.outbox.put_nowait(frame)
        session.seq += 1
        session.outbox.put_nowait(json.dumps({"op": 0, "t": "RESUMED", "s": session.seq, "d": {}}))

    def _disconnected(self, session: Session, ws: GatewaySocket) -> None:
        """A client closing with 1000/1001 ends its session (Discord: not resumable);
        any other loss of the connection leaves it resumable for the resume window."""
        if not ws.server_closed and ws.close_code in (1000, 1001):
            self.sessions.pop(session.id, None)
        else:
            session.disconnected_at = time.monotonic()

    def _expire_sessions(self) -> None:
        """Forget sessions disconnected longer than the resume window (they stop buffering)."""
        now = time.monotonic()
        if now - self._swept < 1.0:
            return
        self._swept = now
        for sid, session in list(self.sessions.items()):
            gone = session.disconnected_at
            if session.ws is None and gone is not None and now - gone > self.resume_window:
                del self.sessions[sid]

    # -- IDENTIFY: validation, close codes and the session start limit ----------------------------

    async def _refuse(self, ws: web.WebSocketResponse, code: int, reason: str) -> None:
        self.gateway_counts["closed"][str(code)] = (
            self.gateway_counts["closed"].get(str(code), 0) + 1
        )
        await ws.close(code=code, message=reason.encode())

    async def _identify(
        self, ws: web.WebSocketResponse, request: web.Request, d: Any
    ) -> Session | None:
        """Validate an IDENTIFY as Discord does; a new session, or None when refused.

        Refusals close the connection with Discord's code (4004 token, 4012 version, 4013/4014
        intents, 4010 shard, 4011 too many guilds per shard), except an IDENTIFY over
        ``max_concurrency`` in its bucket, which gets op 9 INVALID_SESSION (the client waits and
        identifies again). An IDENTIFY with no session starts left resets the bot's token and
        terminates every session, as Discord documents ("lockout").
        """
        if not isinstance(d, dict):
            await self._refuse(ws, 4002, "Decode error.")
            return None
        token = d.get("token")
        if not isinstance(token, str) or token.removeprefix("Bot ") != self.bot_token:
            await self._refuse(ws, 4004, "Authentication failed.")
            return None
        version = request.query.get("v")
        if version is not None and version not in GATEWAY_VERSIONS:
            await self._refuse(ws, 4012, "Invalid API version.")
            return None
        intents = d.get("intents")
        if not isinstance(intents, int) or isinstance(intents, bool) or intents < 0:
            await self._refuse(ws, 4013, "Invalid intent(s).")
            return None
        if intents & ~KNOWN_INTENTS:
            await self._refuse(ws, 4013, "Invalid intent(s).")
            return None
        if intents & PRIVILEGED_INTENTS & ~self.privileged_intents:
            await self._refuse(ws, 4014, "Disallowed intent(s).")
            return None
        shard = d.get("shard", [0, 1])
        if not (
            isinstance(shard, list)
            and len(shard) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
            and 0 <= shard[0] < shard[1]
        ):
            await self._refuse(ws, 4010, "Invalid shard.")
            return None
        shard_id, count = shard
        on_shard = sum(1 for g in self.world.guilds if (g >> 22) % count == shard_id)
        if on_shard > self.max_guilds_per_shard:
            await self._refuse(ws, 4011, "Sharding required.")
            return None
        refused = self.limits.check(shard_id)
        if refused == "concurrency":
            self.gateway_counts["refused"]["concurrency"] += 1
            log.warning("IDENTIFY of shard %s over max_concurrency: INVALID_SESSION", shard_id)
            await ws.send_str('{"op":9,"d":false,"s":null,"t":null}')
            return None
        if refused == "exhausted":
            await self._lock_out(ws)
            return None
        self.limits.take(shard_id)
        self.gateway_counts["identifies"] += 1
        session = Session(secrets.token_hex(16), (shard_id, count))
        self.identifies.append(
            {"session": session.id, "shard": [shard_id, count], "at": time.time()}
        )
        self.sessions[session.id] = session
        return session

    async def _lock_out(self, ws: web.WebSocketResponse) -> None:
        """Discord: hitting the session start limit terminates all the bot's sessions and
        resets its token. The old token then fails REST (401) and IDENTIFY (4004) until the
        operator installs the new one (here: ``POST /control/gateway/limits
        {"restore_token": true}``)."""
        self.gateway_counts["refused"]["exhausted"] += 1
        self.gateway_counts["lockouts"] += 1
        log.error("IDENTIFY with no session starts left: token reset, all sessions terminated")
        self.bot_token = f"reset-{secrets.token_hex(8)}"
        await self._refuse(ws, 4004, "Authentication failed.")
        for session in list(self.sessions.values()):
            if session.ws is not None and not session.ws.closed:
                await self._refuse(session.ws, 4004, "Authentication failed.")
        self.sessions.clear()

    def _attach(self, session: Session, ws: web.WebSocketResponse) -> asyncio.Task[None]:
        if session.ws is not None and session.ws is not ws:
            session.outbox.put_nowait(None)
        session.ws = ws
        session.outbox = asyncio.Queue()

        async def write(queue: asyncio.Queue[str | None]) -> None:
            while True:
                frame = await queue.get()
                if frame is None or ws.closed:
                    return
                try:
                    await ws.send_str(frame)
                except (ConnectionError, RuntimeError):
                    return

        task = asyncio.create_task(write(session.outbox))
        self._writers.add(task)
        task.add_done_callback(self._writers.discard)
        return task

    def _send_ready(self, session: Session) -> None:
        shard_guilds = [g for g in self.world.guilds.values() if session.receives(g.id)]
        session.seq += 1
        ready = {
            "v": 10,
            "user": {
                **self.world.bot.payload(),
                "verified": True,
                "mfa_enabled": False,
                "flags": 0,
            },
            "guilds": [{"id": str(g.id), "unavailable": True} for g in shard_guilds],
            "session_id": session.id,
            "resume_gateway_url": f"{self.base_url.replace('http', 'ws', 1)}/gw",
            "application": {"id": str(self.world.application_id), "flags": 0},
            "shard": list(session.shard),
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "session_type": "normal",
            "auth_session_id_hash": "x",
        }
        frame = json.dumps({"op": 0, "t": "READY", "s": session.seq, "d": ready})
        session.buffer.append((session.seq, frame))
        session.outbox.put_nowait(frame)
        for guild in shard_guilds:
            session.seq += 1
            frame = json.dumps(
                {"op": 0, "t": "GUILD_CREATE", "s": session.seq, "d": guild.create_payload()}
            )
            session.buffer.append((session.seq, frame))
            session.outbox.put_nowait(frame)

    async def close(self) -> None:
        for session in self.sessions.values():
            if session.ws is not None:
                await session.ws.close()
        if self._http is not None:
            await self._http.close()

    # -- REST ------------------------------------------------------------------------------------

    @web.middleware
    async def rest_auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            request.path.startswith("/api/")
            and "/webhooks/" not in request.path
            and "/interactions/" not in request.path
        ) and request.headers.get("Authorization", "") != f"Bot {self.bot_token}":
            if oauth.exempt(request):  # user (Bearer) tokens and the token endpoint: oauth.py
                return await handler(request)
            self.record(request, None)
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        return await handler(request)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        if request.content_type == "application/json":
            try:
                return json.loads(raw)
            except ValueError:  # Discord's answer to a body that is not JSON
                refusal = web.HTTPBadRequest(
                    text='{"message": "The request body contains invalid JSON.", "code": 50109}'
                )
                refusal.headers["Content-Type"] = "application/json"  # no charset: discord.py
                raise refusal from None
        if request.content_type.startswith("multipart/"):
            return {"multipart": True}
        return raw.decode(errors="replace")

    async def users_me(self, request: web.Request) -> web.Response:
        self.record(request, None)
        return _json(
            {
                **self.world.bot.payload(),
                "verified": True,
                "mfa_enabled": False,
                "locale": "en-US",
                "email": None,
            }
        )

    async def application_me(self, request: web.Request) -> web.Response:
        self.record(request, None)
        return _json(
            {
                "id": str(self.world.application_id),
                "name": "mod-bot",
                "description": "simulated",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.world.bot.payload(),
                "bot": self.world.bot.payload(),
                "verify_key": self.signer.public_key_hex,
                "type": None,
                "flags": 0,
                "flags_new": "0",
                "redirect_uris": [],
                "interactions_endpoint_url": self.interactions_endpoint_url,
                "role_connections_verification_url": None,
                "approximate_guild_count": len(self.world.guilds),
                "approximate_user_install_count": 0,
                "approximate_user_authorization_count": 0,
                "explicit_content_filter": 0,
                "team": None,
                "eligible_oauth2_scopes": [],
            }
        )

    async def update_application(self, request: web.Request) -> web.Response:
        """PATCH /applications/@me: Discord's save-time check of ``interactions_endpoint_url``
        (docs: interactions/overview, "Setting Up an Endpoint"): a signed PING must get 200
        ``{"type": 1}``, and a request with a bad signature must get 401; otherwise 400 and
        the old URL stays. Loopback URLs only (the simulator calls nothing else). Other
        fields are accepted and ignored."""
        body = await self._body(request)
        self.record(request, body)
        if not isinstance(body, dict):
            return _form_error("_errors", "BASE_TYPE_REQUIRED", "This field is required")
        if "interactions_endpoint_url" in body:
            url = body["interactions_endpoint_url"] or None
            if url is not None:
                if not isinstance(url, str) or len(url) > 2048:
                    return _form_error(
                        "interactions_endpoint_url",
                        "URL_TYPE_INVALID_URL",
                        "Not a well formed URL.",
                    )
                problem = await self._check_endpoint(url)
                if problem:
                    return _form_error(
                        "interactions_endpoint_url",
                        "APPLICATION_INTERACTIONS_ENDPOINT_URL_INVALID",
                        f"The specified interactions endpoint url could not be verified: {problem}",
                    )
            self.interactions_endpoint_url = url
        return await self.application_me(request)

    async def _check_endpoint(self, url: str) -> str:
        """What Discord does before saving an endpoint; '' when it passes."""
        try:
            parsed = yarl.URL(url)
            host = ipaddress.ip_address(parsed.host or "")
        except ValueError:
            return "not a loopback http(s) URL"
        if parsed.scheme not in ("http", "https") or not host.is_loopback:
            return "not a loopback http(s) URL"
        app_id = str(self.world.application_id)
        ping = {
            "id": str(1 << 40),
            "application_id": app_id,
            "type": 1,
            "token": "ping",
            "version": 1,
        }
        raw = json.dumps(ping).encode()
        good = self.signer.headers(raw, None)
        bad = dict(good)
        sig = bad["X-Signature-Ed25519"]
        bad["X-Signature-Ed25519"] = ("1" if sig[0] == "0" else "0") + sig[1:]
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        timeout = aiohttp.ClientTimeout(total=3)  # Discord's answer window for interactions
        try:
            async with self._http.post(url, data=raw, headers=good, timeout=timeout) as r:
                text = await r.text()
                if r.status != 200 or r.content_type != "application/json":
                    return f"PING got HTTP {r.status} {r.content_type}"
                if json.loads(text) != {"type": 1}:
                    return 'PING was not answered with {"type": 1}'
            async with self._http.post(url, data=raw, headers=bad, timeout=timeout) as r:
                if r.status != 401:
                    return f"a bad signature got HTTP {r.status}, not 401"
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"[:200]
        return ""

    async def gateway_bot(self, request: web.Request) -> web.Response:
        self.record(request, None)
        return _json(
            {
                "url": f"{self.base_url.replace('http', 'ws', 1)}/gw",
                "shards": max(1, -(-len(self.world.guilds) // 1000)),
                "session_start_limit": self.limits.payload(),
            }
        )

    async def create_message(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.record(request, body)
        if not request.match_info["channel_id"].isdigit():
            return _json(
                {
                    "message": "Invalid Form Body",
                    "code": 50035,
                    "errors": {
                        "channel_id": {
                            "_errors": [
                                {"code": "NUMBER_TYPE_COERCE", "message": "Value is not snowflake."}
                            ]
                        }
                    },
                },
                400,
            )
        channel_id = int(request.match_info["channel_id"])
        guild = next((g for g in self.world.guilds.values() if channel_id in g.channels), None)
        assert self.moderation is not None
        guild = guild or self.moderation.guild_of_channel(channel_id)  # a thread
        if guild is None:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        content = (body or {}).get("content", "") if isinstance(body, dict) else ""
        earlier = self.moderation.deduplicated(body)  # enforce_nonce: the first one, no new one
        if earlier is not None:
            return _json(earlier)
        message = self.world.message(guild, channel_id, self.world.bot.id, content)
        if isinstance(body, dict) and body.get("embeds"):
            message["embeds"] = body["embeds"]
        # kept with its components and nonce (moderation.py); guild_id and member are
        # gateway-only extras of MESSAGE_CREATE, not in REST answers
        rest = self.moderation.created_message(body, message)
        message["components"] = rest["components"]
        self.world.remember(message)
        self.dispatch(guild.id, "MESSAGE_CREATE", message)
        return _json(rest)

    async def interaction_callback(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.record(request, body)
        kind = body.get("type") if isinstance(body, dict) else None
        data = (body or {}).get("data") or {}
        if request.query.get("with_response", "").lower() not in ("true", "1"):
            return web.Response(status=204)  # Discord: no body unless with_response is set
        message_id = str(self.world.ids.next())
        answer: dict[str, Any] = {
            "interaction": {
                "id": request.match_info["interaction_id"],
                "type": 2,
                "response_message_id": message_id,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(data.get("flags", 0) & 64),
            }
        }
        if kind in (4, 7):  # the resource (a message) exists only for these callback types
            message = self._webhook_payload(request.match_info["token"], data, original=True)
            answer["resource"] = {"type": kind, "message": {**message, "id": message_id}}
        return _json(answer)

    async def webhook_message(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.record(request, body)
        if request.method == "DELETE":
            return web.Response(status=204)
        if request.method == "POST" and request.query.get("wait", "").lower() not in ("true", "1"):
            return web.Response(status=204)  # Discord answers a message only with ?wait=true
        message_id = request.match_info.get("message_id")
        original = message_id == "@original"
        message = self._webhook_payload(
            request.match_info["token"], body if isinstance(body, dict) else {}, original=original
        )
        if message_id is not None and message_id.isdigit():
            message["id"] = message_id
        if request.method == "PATCH":
            message["edited_timestamp"] = message["timestamp"]
        return _json(message)

    def _webhook_payload(
        self, token: str, data: dict[str, Any], *, original: bool
    ) -> dict[str, Any]:
        """A message sent through an interaction's webhook, as Discord's REST answers it:
        the original response has the interaction's type (20 slash, 23 context menu)."""
        channel_id, kind = self.world.interaction_channels.get(token, (0, 0))
        return {
            "id": str(self.world.ids.next()),
            "type": kind if original else 0,
            "channel_id": str(channel_id),
            "author": self.world.bot.payload(),
            "content": str(data.get("content") or ""),
            "timestamp": iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": data.get("embeds") or [],
            "components": [],
            "pinned": False,
            "flags": int(data.get("flags") or 0) & 64,
            "webhook_id": str(self.world.application_id),
            "application_id": str(self.world.application_id),
        }

    async def unknown(self, request: web.Request) -> web.Response:
        """No route: 404; a path Discord serves with other methods only: 405 (Discord's body)."""
        self.record(request, await self._body(request))
        for resource in request.app.router.resources():
            if resource is request.match_info.route.resource:
                continue
            match, allowed = await resource.resolve(request)
            if match is None and allowed:
                return _json({"message": "405: Method Not Allowed", "code": 0}, 405)
        return _json({"message": "404: Not Found", "code": 0}, 404)

    # -- control API -------------------------------------------------------------------------------

    async def control_create_guilds(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        count = int(body.get("count", 1))
        if not 1 <= count <= 10_000:
            return _json({"error": "count must be 1..10000"}, 400)
        created = []
        for i in range(count):
            name = body.get("name", "guild") + (
                f"-{len(self.world.guilds) + 1}" if count > 1 or "name" not in body else ""
            )
            guild_id = int(body["guild_id"]) if "guild_id" in body and count == 1 else None
            try:
                guild = self.world.create_guild(
                    name, guild_id=guild_id, members=int(body.get("members", 3))
                )
            except ValueError as exc:
                return _json({"error": str(exc)}, 409)
            self.dispatch(guild.id, "GUILD_CREATE", guild.create_payload())
            created.append(guild.summary())
            if i % 100 == 99:
                await asyncio.sleep(0)
        return _json({"guilds": created})

    async def control_guilds(self, request: web.Request) -> web.Response:
        return _json({"guilds": [g.summary() for g in self.world.guilds.values()]})

    def _guild(self, value: Any) -> Guild:
        try:
            return self.world.guild(int(value))
        except (TypeError, ValueError, KeyError):
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"no guild {value!r}"}), content_type="application/json"
            ) from None

    async def control_messages(self, request: web.Request) -> web.Response:
        """Inject MESSAGE_CREATEs: ``count`` per guild, round-robin, at ``rate``/s (0: flat out)."""
        body = await request.json()
        guilds = [self._guild(g) for g in body.get("guild_ids") or [body.get("guild_id")]]
        count = int(body.get("count", 1))
        rate = float(body.get("rate", 0))
        content = str(body.get("content", "hello from the simulator"))
        author = body.get("author_id")
        started = time.perf_counter()
        sent = 0
        ids: list[str] = []
        for n in range(count):
            for guild in guilds:
                channel = next(iter(guild.channels))
                user = (
                    int(author)
                    if author
                    else [m for m in guild.members if m != self.world.bot.id][
                        n % (len(guild.members) - 1)
                    ]
                )
                message = self.world.message(guild, channel, user, content)
                self.world.remember(message)
                self.dispatch(guild.id, "MESSAGE_CREATE", message)
                sent += 1
                if len(ids) < 1000:
                    ids.append(message["id"])
            if rate > 0:
                delay = started + sent / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif n % 200 == 199:
                await asyncio.sleep(0)
        return _json(
            {"sent": sent, "message_ids": ids, "seconds": round(time.perf_counter() - started, 4)}
        )

    async def control_event(self, request: web.Request) -> web.Response:
        body = await request.json()
        guild = self._guild(body.get("guild_id"))
        kind = body.get("type")
        if kind == "message_delete":
            data: dict[str, Any] = {
                "id": str(body["message_id"]),
                "channel_id": str(body.get("channel_id") or next(iter(guild.channels))),
                "guild_id": str(guild.id),
            }
            event = "MESSAGE_DELETE"
        elif kind in ("ban", "member_remove"):
            user_id = int(body["user_id"])
            user = guild.members[user_id][0] if user_id in guild.members else None
            data = {
                "guild_id": str(guild.id),
                "user": user.payload()
                if user
                else {"id": str(user_id), "username": "gone", "discriminator": "0", "avatar": None},
            }
            event = "GUILD_BAN_ADD" if kind == "ban" else "GUILD_MEMBER_REMOVE"
            if kind == "member_remove":
                guild.members.pop(user_id, None)
        else:
            return _json({"error": "type must be message_delete, ban or member_remove"}, 400)
        return _json({"delivered": self.dispatch(guild.id, event, data)})

    async def control_interaction(self, request: web.Request) -> web.Response:
        """Build, sign and POST an interaction webhook to ``url``; return what came back."""
        body = await request.json()
        guild = self._guild(body.get("guild_id"))
        user_id = int(body.get("user_id") or guild.owner.id)
        target = None
        stored = None
        if body.get("target_message_id") is not None:
            try:
                stored = self.world.stored_message(int(body["target_message_id"]))
            except (TypeError, ValueError):
                return _json({"error": "target_message_id must be a message id"}, 400)
        if stored is not None:  # a message that was sent: Discord resolves that one
            if stored[0].id != guild.id:
                return _json(
                    {"error": f"message {body['target_message_id']} is in guild {stored[0].id}"},
                    400,
                )
            target = stored[1]
        elif body.get("require_target"):  # the CLI: only messages that exist, as on Discord
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        elif body.get("target_message"):
            target = body["target_message"]
        elif body.get("target_message_id"):
            author = int(
                body.get("target_author_id")
                or next(m for m in guild.members if m not in (guild.owner.id, self.world.bot.id))
            )
            target = self.world.message(
                guild,
                next(iter(guild.channels)),
                author,
                str(body.get("target_content", "reported text")),
            )
            target["id"] = str(body["target_message_id"])
        options = {k: tuple(v) for k, v in (body.get("options") or {}).items()}
        payload = self.world.interaction(
            guild,
            user_id,
            body["command"],
            kind=int(body.get("kind", 1)),
            options=options,
            target_message=target,
            channel_id=int(stored[1]["channel_id"]) if stored is not None else None,
        )
        if body.get("payload_override"):
            payload.update(body["payload_override"])
        url = body.get("url") or self.interactions_endpoint_url  # as saved by PATCH, if unset
        if not isinstance(url, str):
            return _json({"error": "no url given and no interactions endpoint URL saved"}, 400)
        status, text, elapsed = await self.send_webhook(
            url, payload, timestamp=body.get("timestamp"), tamper=bool(body.get("tamper"))
        )
        return _json(
            {
                "status": status,
                "body": text,
                "elapsed_ms": round(elapsed * 1000, 1),
                "interaction": payload,
            }
        )

    async def send_webhook(
        self,
        url: str,
        payload: dict[str, Any],
        *,
        timestamp: str | None = None,
        tamper: bool = False,
    ) -> tuple[int, str, float]:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        raw = json.dumps(payload).encode()
        headers = self.signer.headers(raw, timestamp)
        if tamper:
            raw = raw.replace(b'"type": 2', b'"type": 2 ', 1)
        started = time.perf_counter()
        async with self._http.post(url, data=raw, headers=headers) as resp:
            text = await resp.text()
            return resp.status, text, time.perf_counter() - started

    async def control_calls(self, request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return _json({"calls": [c.to_json() for c in self.calls if c.seq > since]})

    async def control_sessions(self, request: web.Request) -> web.Response:
        return _json(
            {
                "sessions": [
                    {
                        "id": s.id,
                        "shard": list(s.shard),
                        "connected": s.ws is not None,
                        "dispatched": s.dispatched,
                    }
                    for s in self.sessions.values()
                ],
                "identifies": self.identifies,
            }
        )

    async def control_drop_sessions(self, request: web.Request) -> web.Response:
        """Close every gateway connection (as Discord does now and then); sessions stay resumable."""
        dropped = 0
        for session in list(self.sessions.values()):
            if session.ws is not None:
                await session.ws.close(code=4000, message=b"simulated disconnect")
                dropped += 1
        return _json({"dropped": dropped})

    async def control_gateway(self, request: web.Request) -> web.Response:
        """The bot's gateway counters (IDENTIFYs, RESUMEs, refusals, lockouts) and budget."""
        return _json(
            {
                **self.gateway_counts,
                "session_start_limit": self.limits.payload(),
                "connected": sum(1 for s in self.sessions.values() if s.ws is not None),
            }
        )

    async def control_gateway_limits(self, request: web.Request) -> web.Response:
        """Set the session start budget: ``{remaining, reset_after (s), max_concurrency,
        total, restore_token}``; any subset."""
        try:
            body = await request.json()
        except ValueError:
            return _json({"error": "body must be a JSON object"}, 400)
        if not isinstance(body, dict):
            return _json({"error": "body must be a JSON object"}, 400)
        unknown = set(body) - {
            "remaining",
            "reset_after",
            "max_concurrency",
            "total",
            "restore_token",
        }
        if unknown:
            return _json({"error": f"unknown field(s): {', '.join(sorted(unknown))}"}, 400)
        try:
            ints = {
                k: int(body[k])
                for k in ("remaining", "max_concurrency", "total")
                if body.get(k) is not None
            }
            reset_after = None if body.get("reset_after") is None else float(body["reset_after"])
            self.limits.set(**ints, reset_after=reset_after)
        except (TypeError, ValueError) as exc:
            return _json({"error": str(exc)}, 400)
        if body.get("restore_token"):
            self.bot_token = self.issued_token
        return _json({"session_start_limit": self.limits.payload()})

    async def control_drop_shard(self, request: web.Request) -> web.Response:
        """Close the connections of one shard's sessions (code 4000: resumable), as Discord
        does now and then; the other shards are not touched."""
        try:
            shard_id = int(request.match_info["shard_id"])
        except ValueError:
            return _json({"error": "shard must be an integer"}, 400)
        dropped = 0
        for session in list(self.sessions.values()):
            if session.shard[0] == shard_id and session.ws is not None:
                await session.ws.close(code=4000, message=b"simulated disconnect")
                dropped += 1
        return _json({"dropped": dropped})

    async def control_info(self, request: web.Request) -> web.Response:
        return _json(
            {
                "public_key": self.signer.public_key_hex,
                "application_id": str(self.world.application_id),
                "api_url": f"{self.base_url}/api/v10",
                "gateway_url": f"{self.base_url.replace('http', 'ws', 1)}/gw",
                "guilds": len(self.world.guilds),
            }
        )


def build_sim_app(sim: DiscordSim) -> web.Application:
    app = web.Application(middlewares=[sim.rest_auth], client_max_size=8 << 20)
    app[SIM_KEY] = sim
    r = app.router
    sim.oauth = oauth.install(app, sim)  # OAuth2 + user API: first, it shares /users/@me
    r.add_get("/gw", sim.gateway)
    r.add_get("/gw/", sim.gateway)
    api = "/api/v10"
    r.add_get(f"{api}/users/@me", sim.users_me)
    r.add_get(f"{api}/oauth2/applications/@me", sim.application_me)
    r.add_get(f"{api}/gateway/bot", sim.gateway_bot)
    r.add_patch(f"{api}/applications/@me", sim.update_application)
    r.add_post(f"{api}/channels/{{channel_id}}/messages", sim.create_message)
    r.add_post(
        f"{api}/interactions/{{interaction_id}}/{{token}}/callback", sim.interaction_callback
    )
    for method in ("GET", "PATCH", "DELETE"):  # Discord's methods; others get 405
        r.add_route(
            method,
            f"{api}/webhooks/{{app_id}}/{{token}}/messages/{{message_id}}",
            sim.webhook_message,
        )
    r.add_post(f"{api}/webhooks/{{app_id}}/{{token}}", sim.webhook_message)
    commands.install(app, sim)  # application commands (commands.py), before the catch-all
    app.middlewares.append(persist.mark_changes)  # saved worlds (persist.py) see every change
    sim.moderation = moderation.install(app, sim)  # messages, bans, members (moderation.py)
    r.add_route("*", f"{api}/{{tail:.*}}", sim.unknown)
    r.add_post("/control/guilds", sim.control_create_guilds)
    r.add_get("/control/guilds", sim.control_guilds)
    r.add_post("/control/messages", sim.control_messages)
    r.add_post("/control/events", sim.control_event)
    r.add_post("/control/interactions", sim.control_interaction)
    r.add_get("/control/calls", sim.control_calls)
    r.add_get("/control/sessions", sim.control_sessions)
    r.add_get("/control/info", sim.control_info)
    r.add_post("/control/sessions/drop", sim.control_drop_sessions)
    r.add_get("/control/gateway", sim.control_gateway)
    r.add_post("/control/gateway/limits", sim.control_gateway_limits)
    r.add_post("/control/shards/{shard_id}/drop", sim.control_drop_shard)

    async def cleanup(_: web.Application) -> None:
        await sim.close()

    app.on_shutdown.append(cleanup)
    return app
