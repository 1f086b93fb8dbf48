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
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from .signing import Signer
from .world import Guild, World

log = logging.getLogger("modbot.sim")

HEARTBEAT_INTERVAL_MS = 41250
REPLAY_BUFFER = 50_000

SIM_KEY: web.AppKey[DiscordSim] = web.AppKey("sim")


def _json(data: Any, status: int = 200) -> web.Response:
    # discord.py wants exactly "application/json": no charset parameter.
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


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
    ) -> None:
        self.bot_token = bot_token
        self.world = World(application_id)
        self.signer = Signer(signing_seed)
        self.heartbeat_ms = heartbeat_ms
        self.sessions: dict[str, Session] = {}
        self.calls: list[RecordedCall] = []
        self.identifies: list[dict[str, Any]] = []
        self.base_url = ""
        self._writers: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    # -- fan-out -----------------------------------------------------------------------------

    def dispatch(self, guild_id: int | None, event: str, data: dict[str, Any]) -> int:
        """Send an event to every session of the guild's shard; returns how many got it."""
        body = json.dumps(data)
        delivered = 0
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
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)
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
                    if d.get("token", "").removeprefix("Bot ") != self.bot_token:
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    shard_id, count = d.get("shard") or [0, 1]
                    if not (
                        isinstance(shard_id, int)
                        and isinstance(count, int)
                        and 0 <= shard_id < count
                    ):
                        await ws.close(code=4010, message=b"Invalid shard.")
                        break
                    session = Session(secrets.token_hex(16), (shard_id, count))
                    self.identifies.append(
                        {"session": session.id, "shard": [shard_id, count], "at": time.time()}
                    )
                    self.sessions[session.id] = session
                    writer = self._attach(session, ws)
                    self._send_ready(session)
                elif op == 6:
                    resumed = self.sessions.get(d.get("session_id", ""))
                    if resumed is None or d.get("token", "").removeprefix("Bot ") != self.bot_token:
                        await ws.send_str('{"op":9,"d":false,"s":null,"t":null}')
                        continue
                    session = resumed
                    writer = self._attach(session, ws)
                    last = int(d.get("seq") or 0)
                    for seq, frame in list(session.buffer):
                        if seq > last:
                            session.outbox.put_nowait(frame)
                    session.seq += 1
                    session.outbox.put_nowait(
                        json.dumps({"op": 0, "t": "RESUMED", "s": session.seq, "d": {}})
                    )
                # op 3 (presence), 4 (voice), 8 (member chunks): accepted and ignored
        finally:
            if session is not None and session.ws is ws:
                session.ws = None
                session.outbox.put_nowait(None)
            if writer is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(writer, 1.0)
        return ws

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
    async def rest_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if (
            request.path.startswith("/api/")
            and "/webhooks/" not in request.path
            and "/interactions/" not in request.path
        ) and request.headers.get("Authorization", "") != f"Bot {self.bot_token}":
            self.record(request, None)
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        return await handler(request)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        if request.content_type == "application/json":
            return json.loads(raw)
        if request.content_type.startswith("multipart/"):
            return {"multipart": True}
        return raw.decode(errors="replace")

    async def users_me(self, request: web.Request) -> web.Response:
        self.record(request, None)
        return _json(
            {**self.world.bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0}
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
                "verify_key": self.signer.public_key_hex,
                "flags": 0,
                "team": None,
            }
        )

    async def gateway_bot(self, request: web.Request) -> web.Response:
        self.record(request, None)
        return _json(
            {
                "url": f"{self.base_url.replace('http', 'ws', 1)}/gw",
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 1000,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def create_message(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.record(request, body)
        channel_id = int(request.match_info["channel_id"])
        guild = next((g for g in self.world.guilds.values() if channel_id in g.channels), None)
        if guild is None:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        content = (body or {}).get("content", "") if isinstance(body, dict) else ""
        message = self.world.message(guild, channel_id, self.world.bot.id, content)
        if isinstance(body, dict) and body.get("embeds"):
            message["embeds"] = body["embeds"]
        self.dispatch(guild.id, "MESSAGE_CREATE", message)
        return _json(message)

    async def interaction_callback(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.record(request, body)
        kind = body.get("type") if isinstance(body, dict) else None
        data = (body or {}).get("data") or {}
        message_id = str(self.world.ids.next())
        return _json(
            {
                "interaction": {
                    "id": request.match_info["interaction_id"],
                    "type": 2,
                    "response_message_id": message_id,
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": bool(data.get("flags", 0) & 64),
                },
                "resource": {"type": kind or 4},
            }
        )

    async def webhook_message(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.record(request, body)
        content = body.get("content", "") if isinstance(body, dict) else ""
        return _json(
            {
                "id": str(self.world.ids.next()),
                "channel_id": "0",
                "author": self.world.bot.payload(),
                "content": content,
                "timestamp": "2026-01-01T00:00:00+00:00",
                "edited_timestamp": None,
                "tts": False,
                "mention_everyone": False,
                "mentions": [],
                "mention_roles": [],
                "attachments": [],
                "embeds": (body or {}).get("embeds", []) if isinstance(body, dict) else [],
                "pinned": False,
                "type": 0,
                "flags": 0,
                "webhook_id": str(self.world.application_id),
            }
        )

    async def commands(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.record(request, body)
        if request.method == "GET":
            return _json([])
        items = body if isinstance(body, list) else []
        return _json(
            [
                {
                    **c,
                    "id": str(self.world.ids.next()),
                    "application_id": str(self.world.application_id),
                    "version": "1",
                }
                for c in items
            ]
        )

    async def unknown(self, request: web.Request) -> web.Response:
        self.record(request, await self._body(request))
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
        sent, ids = 0, []
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
        if body.get("target_message"):
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
        )
        if body.get("payload_override"):
            payload.update(body["payload_override"])
        status, text, elapsed = await self.send_webhook(
            body["url"], payload, timestamp=body.get("timestamp"), tamper=bool(body.get("tamper"))
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
        for session in self.sessions.values():
            if session.ws is not None:
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
    r.add_get("/gw", sim.gateway)
    r.add_get("/gw/", sim.gateway)
    api = "/api/v10"
    r.add_get(f"{api}/users/@me", sim.users_me)
    r.add_get(f"{api}/oauth2/applications/@me", sim.application_me)
    r.add_get(f"{api}/gateway/bot", sim.gateway_bot)
    r.add_post(f"{api}/channels/{{channel_id}}/messages", sim.create_message)
    r.add_post(
        f"{api}/interactions/{{interaction_id}}/{{token}}/callback", sim.interaction_callback
    )
    r.add_route(
        "*", f"{api}/webhooks/{{app_id}}/{{token}}/messages/{{message_id}}", sim.webhook_message
    )
    r.add_post(f"{api}/webhooks/{{app_id}}/{{token}}", sim.webhook_message)
    r.add_route("*", f"{api}/applications/{{app_id}}/commands", sim.commands)
    r.add_route("*", f"{api}/applications/{{app_id}}/guilds/{{guild_id}}/commands", sim.commands)
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

    async def cleanup(_: web.Application) -> None:
        await sim.close()

    app.on_shutdown.append(cleanup)
    return app
