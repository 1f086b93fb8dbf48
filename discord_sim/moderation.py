"""What mod-bot's moderation features need of the simulator, in Discord's shapes.

* Messages the bot creates are kept (bounded), with their ``components`` as Discord
  answers them (each component gets a numeric ``id``), and ``nonce`` + ``enforce_nonce``
  deduplicate as Discord documents: a second create with the same nonce by the same
  author within a few minutes returns the first message and creates nothing.
* ``PATCH /channels/{c}/messages/{m}`` edits one (content, components); ``GET`` answers
  one with its ``reactions`` (counts). ``POST /control/reactions``: a member reacts
  (MESSAGE_REACTION_ADD).
* ``POST /channels/{c}/threads`` starts a thread (201, THREAD_CREATE); messages can then
  be created in it like in any channel; ``PUT /channels/{t}/thread-members/{u}`` adds a
  member (204), ``PATCH /channels/{t}`` archives or locks it (threads only).
* ``PUT /guilds/{g}/bans/{u}`` (204; GUILD_BAN_ADD + GUILD_MEMBER_REMOVE once),
  ``DELETE /guilds/{g}/members/{u}`` (kick: 204, or 404 Unknown Member; GUILD_MEMBER_REMOVE),
  ``PATCH /guilds/{g}/members/{u}`` (``communication_disabled_until``: a timeout;
  GUILD_MEMBER_UPDATE), as the REST API answers them.
* Each ban, kick and timeout also sends GUILD_AUDIT_LOG_ENTRY_CREATE (executor, target,
  action type 22/20/24, ``changes``, the ``X-Audit-Log-Reason``); ``POST /control/moderate``
  does the same as a human moderator in Discord's client.
* ``POST /control/components``: Discord's side of a button press: a signed
  MESSAGE_COMPONENT interaction (type 3) built from a stored message, sent to ``url``.
  ``payload`` instead sends that exact interaction again (a replay).
* ``POST /control/faults``: the next ``count`` REST calls whose method is ``method`` and
  whose path contains ``path`` fail as Discord's do (``status`` 429 with ``retry_after``
  and ``Via``, or a 5xx; nothing done), or, with ``delay``, are done and answered
  ``delay`` seconds late (a caller killed before it hears back). ``PUT /guilds/{g}/bans``
  of the guild's owner answers 403 Missing Permissions, as Discord does.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .world import Guild, iso

if TYPE_CHECKING:
    from .app import DiscordSim

MAX_MESSAGES = 10_000
NONCE_WINDOW = 300.0  # seconds: Discord says "the past few minutes"
API = "/api/v10"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def _error(status: int, message: str, code: int) -> web.Response:
    return _json({"message": message, "code": code}, status)


class ModerationState:
    """Messages, nonces, bans and timeouts of the simulated Discord."""

    def __init__(self, sim: DiscordSim) -> None:
        self.sim = sim
        self.messages: OrderedDict[int, dict[str, Any]] = OrderedDict()  # id -> REST message
        self.nonces: dict[tuple[int, str], tuple[int, float]] = {}  # (author, nonce) -> (id, at)
        self.bans: dict[int, set[int]] = {}
        self.timeouts: dict[tuple[int, int], str] = {}  # (guild, user) -> until (ISO)
        self.guild_of: dict[int, int] = {}  # message id -> guild id
        self.created = 0  # messages really created (a deduplicated nonce creates none)
        self.audit_log: list[dict[str, Any]] = []  # entries, oldest first
        self.threads: dict[int, dict[str, Any]] = {}  # id -> thread channel (REST shape)
        self.thread_members: dict[int, set[int]] = {}  # thread -> members added
        # message -> emoji (name, or name:id) -> users who reacted; messages reacted to
        # that are not the bot's are kept in ``reacted`` (REST shape)
        self.reactions: dict[int, dict[str, set[int]]] = {}
        self.reacted: OrderedDict[int, dict[str, Any]] = OrderedDict()

    def message_of(self, message_id: int) -> dict[str, Any] | None:
        """A message in its REST shape, with its reactions, if the simulator knows it."""
        found = self.messages.get(message_id) or self.reacted.get(message_id)
        if found is None:
            stored = getattr(self.sim.world, "stored_message", None)  # sent by a user
            hit = stored(message_id) if stored is not None else None
            found = hit[1] if hit is not None else None
        if found is None:
            return None
        reactions: list[dict[str, Any]] = [
            {
                "emoji": {"id": key.split(":")[1], "name": key.split(":")[0]}
                if ":" in key
                else {"id": None, "name": key},
                "count": len(users),
                "count_details": {"burst": 0, "normal": len(users)},
                "burst_colors": [],
                "me_burst": False,
                "burst_me": False,
                "me": self.sim.world.bot.id in users,
                "burst_count": 0,
            }
            for key, users in self.reactions.get(message_id, {}).items()
            if users
        ]
        return {**found, "reactions": reactions} if reactions else dict(found)

    def guild_of_channel(self, channel_id: int) -> Guild | None:
        """The guild of a thread (threads are channels: messages can be sent to them)."""
        thread = self.threads.get(channel_id)
        return self.sim.world.guilds.get(int(thread["guild_id"])) if thread else None

    # -- messages --------------------------------------------------------------------------------

    def components(self, raw: Any) -> list[dict[str, Any]]:
        """Components as Discord answers them: what was sent, each with a numeric ``id``."""
        out: list[dict[str, Any]] = []
        counter = 0
        for row in raw if isinstance(raw, list) else []:
            if not isinstance(row, dict):
                continue
            counter += 1
            entry = {**row, "type": int(row.get("type", 1)), "id": counter, "components": []}
            for child in row.get("components") or []:
                if isinstance(child, dict):
                    counter += 1
                    entry["components"].append({**child, "id": counter})
            out.append(entry)
        return out

    def deduplicated(self, body: Any) -> dict[str, Any] | None:
        """The message an earlier create with the same enforced nonce made, if any."""
        if not isinstance(body, dict) or not body.get("enforce_nonce") or not body.get("nonce"):
            return None
        key = (self.sim.world.bot.id, str(body["nonce"]))
        hit = self.nonces.get(key)
        if hit is None or time.monotonic() - hit[1] > NONCE_WINDOW:
            return None
        return self.messages.get(hit[0])

    def created_message(self, body: Any, message: dict[str, Any]) -> dict[str, Any]:
        """Keep a message the bot just created (REST shape); note its nonce."""
        rest = {k: v for k, v in message.items() if k not in ("guild_id", "member")}
        if isinstance(body, dict):
            rest["components"] = self.components(body.get("components"))
            if body.get("nonce") is not None:
                rest["nonce"] = str(body["nonce"])
                if body.get("enforce_nonce"):
                    now = time.monotonic()
                    self.nonces = {
                        k: v for k, v in self.nonces.items() if now - v[1] <= NONCE_WINDOW
                    }
                    self.nonces[(self.sim.world.bot.id, str(body["nonce"]))] = (
                        int(rest["id"]),
                        now,
                    )
        self.messages[int(rest["id"])] = rest
        self.guild_of[int(rest["id"])] = int(message["guild_id"])
        while len(self.messages) > MAX_MESSAGES:
            old, _ = self.messages.popitem(last=False)
            self.guild_of.pop(old, None)
        self.created += 1
        return rest

    def find(self, content_part: str) -> list[dict[str, Any]]:
        """Stored messages whose content contains ``content_part`` (tests)."""
        return [m for m in self.messages.values() if content_part in str(m.get("content"))]


def install(app: web.Application, sim: DiscordSim) -> ModerationState:
    state = ModerationState(sim)
    world = sim.world

    def audit(
        guild: Guild,
        executor: int,
        target: int,
        action_type: int,
        reason: str | None,
        changes: list[dict[str, Any]] | None = None,
    ) -> None:
        """GUILD_AUDIT_LOG_ENTRY_CREATE, as Discord sends it (GUILD_MODERATION intent)."""
        entry: dict[str, Any] = {
            "id": str(world.ids.next()),
            "user_id": str(executor),
            "target_id": str(target),
            "action_type": action_type,
            "guild_id": str(guild.id),
        }
        if changes:
            entry["changes"] = changes
        if reason:
            entry["reason"] = reason
        state.audit_log.append(entry)
        sim.dispatch(guild.id, "GUILD_AUDIT_LOG_ENTRY_CREATE", entry)

    def reason_of(request: web.Request) -> str | None:
        raw = request.headers.get("X-Audit-Log-Reason")
        return urllib.parse.unquote(raw)[:512] if raw else None

    def do_ban(guild: Guild, user_id: int, executor: int, reason: str | None) -> None:
        banned = state.bans.setdefault(guild.id, set())
        if user_id in banned:  # a ban of a banned user changes nothing, sends nothing
            return
        banned.add(user_id)
        user = guild.members[user_id][0].payload() if user_id in guild.members else None
        user = user or {
            "id": str(user_id),
            "username": "gone",
            "discriminator": "0",
            "avatar": None,
        }
        sim.dispatch(guild.id, "GUILD_BAN_ADD", {"guild_id": str(guild.id), "user": user})
        if user_id in guild.members:
            guild.members.pop(user_id)
            sim.dispatch(guild.id, "GUILD_MEMBER_REMOVE", {"guild_id": str(guild.id), "user": user})
        audit(guild, executor, user_id, 22, reason)

    def do_kick(guild: Guild, user_id: int, executor: int, reason: str | None) -> None:
        user = guild.members.pop(user_id)[0].payload()
        sim.dispatch(guild.id, "GUILD_MEMBER_REMOVE", {"guild_id": str(guild.id), "user": user})
        audit(guild, executor, user_id, 20, reason)

    def do_timeout(
        guild: Guild, user_id: int, until: str | None, executor: int, reason: str | None
    ) -> dict[str, Any]:
        old = state.timeouts.get((guild.id, user_id))
        if until is None:
            state.timeouts.pop((guild.id, user_id), None)
        else:
            state.timeouts[(guild.id, user_id)] = until
        payload = member_payload(guild, user_id)
        sim.dispatch(guild.id, "GUILD_MEMBER_UPDATE", {**payload, "guild_id": str(guild.id)})
        if old != until:
            change = {"key": "communication_disabled_until", "old_value": old, "new_value": until}
            audit(guild, executor, user_id, 24, reason, [change])
        return payload

    def guild_or_404(request: web.Request) -> Guild | web.Response:
        raw = request.match_info["guild_id"]
        if not raw.isdigit() or int(raw) not in world.guilds:
            return _error(404, "Unknown Guild", 10004)
        return world.guilds[int(raw)]

    async def edit_message(request: web.Request) -> web.Response:
        body = await sim._body(request)
        sim.record(request, body)
        raw_c, raw_m = request.match_info["channel_id"], request.match_info["message_id"]
        if not (raw_c.isdigit() and raw_m.isdigit()):
            return _error(404, "Unknown Message", 10008)
        message = state.messages.get(int(raw_m))
        if message is None or message["channel_id"] != raw_c:
            return _error(404, "Unknown Message", 10008)
        if not isinstance(body, dict):
            return _error(400, "Invalid Form Body", 50035)
        if "content" in body:
            message["content"] = str(body.get("content") or "")
        if "components" in body:
            message["components"] = state.components(body.get("components"))
        if "embeds" in body:
            message["embeds"] = body.get("embeds") or []
        message["edited_timestamp"] = iso()
        return _json(message)

    async def ban(request: web.Request) -> web.Response:
        sim.record(request, await sim._body(request))
        guild = guild_or_404(request)
        if isinstance(guild, web.Response):
            return guild
        raw = request.match_info["user_id"]
        if not raw.isdigit():
            return _error(404, "Unknown User", 10013)
        if int(raw) == guild.owner.id:  # nobody can ban a guild's owner
            return _error(403, "Missing Permissions", 50013)
        do_ban(guild, int(raw), world.bot.id, reason_of(request))
        return web.Response(status=204)

    async def member(request: web.Request) -> web.Response:
        body = await sim._body(request)
        sim.record(request, body)
        guild = guild_or_404(request)
        if isinstance(guild, web.Response):
            return guild
        raw = request.match_info["user_id"]
        if not raw.isdigit() or int(raw) not in guild.members:
            return _error(404, "Unknown Member", 10007)
        user_id = int(raw)
        if request.method == "DELETE":  # a kick
            do_kick(guild, user_id, world.bot.id, reason_of(request))
            return web.Response(status=204)
        if not isinstance(body, dict):
            return _error(400, "Invalid Form Body", 50035)
        until = state.timeouts.get((guild.id, user_id))
        if "communication_disabled_until" in body:
            raw_until = body["communication_disabled_until"]
            until = None if raw_until is None else str(raw_until)
        return _json(do_timeout(guild, user_id, until, world.bot.id, reason_of(request)))

    def member_payload(guild: Guild, user_id: int) -> dict[str, Any]:
        payload = guild.member_payload(user_id)
        payload["communication_disabled_until"] = state.timeouts.get((guild.id, user_id))
        payload.setdefault("banner", None)  # REST members carry these (the spec requires them)
        payload.setdefault("premium_since", None)
        return payload

    async def control_components(request: web.Request) -> web.Response:
        """Press a button: sign and POST a MESSAGE_COMPONENT interaction to ``url``."""
        try:
            body = await request.json()
        except ValueError:
            return _json({"error": "body must be JSON"}, 400)
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            return _json({"error": "url is required"}, 400)
        if isinstance(body.get("payload"), dict):  # send exactly this again: a replay
            payload = body["payload"]
        else:
            guild = sim._guild(body.get("guild_id"))
            try:
                message = state.messages[int(body["message_id"])]
                user_id = int(body.get("user_id") or guild.owner.id)
            except (KeyError, TypeError, ValueError):
                return _json({"error": "message_id must name a message the bot created"}, 404)
            if user_id not in guild.members:
                return _json({"error": f"user {user_id} is not a member"}, 404)
            channel_id = int(message["channel_id"])
            thread = state.threads.get(channel_id)  # a button in a thread (a ticket's Close)
            payload = world.interaction(
                guild,
                user_id,
                "component",
                channel_id=int(thread["parent_id"]) if thread else channel_id,
            )
            if thread is not None:
                payload["channel_id"] = str(channel_id)
                payload["channel"] = {**thread, "permissions": str((1 << 41) - 1)}
            payload["type"] = 3
            payload["data"] = {
                "custom_id": str(body.get("custom_id") or ""),
                "component_type": int(body.get("component_type", 2)),
            }
            payload["message"] = message
            if isinstance(body.get("payload_override"), dict):
                payload.update(body["payload_override"])
        status, text, elapsed = await sim.send_webhook(body["url"], payload)
        return _json(
            {
                "status": status,
                "body": text,
                "elapsed_ms": round(elapsed * 1000, 1),
                "interaction": payload,
            }
        )

    async def create_thread(request: web.Request) -> web.Response:
        """Start a thread without a message (public, type 11) in a text channel: 201."""
        body = await sim._body(request)
        sim.record(request, body)
        raw = request.match_info["channel_id"]
        guild = next(
            (g for g in world.guilds.values() if raw.isdigit() and int(raw) in g.channels), None
        )
        if guild is None:
            return _error(404, "Unknown Channel", 10003)
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            return _error(400, "Invalid Form Body", 50035)
        kind = body.get("type", 11)
        if kind not in (11, 12):
            return _error(400, "Invalid Form Body", 50035)
        thread_id = world.ids.next()
        now = iso()
        thread = {
            "id": str(thread_id),
            "type": kind,
            "last_message_id": None,
            "flags": 0,
            "guild_id": str(guild.id),
            "name": name,
            "parent_id": raw,
            "rate_limit_per_user": int(body.get("rate_limit_per_user") or 0),
            "owner_id": str(world.bot.id),
            "thread_metadata": {
                "archived": False,
                "archive_timestamp": now,
                "auto_archive_duration": int(body.get("auto_archive_duration") or 1440),
                "locked": False,
                "create_timestamp": now,
                "invitable": bool(body.get("invitable", True)),
            },
            "message_count": 0,
            "member_count": 1,
            "total_message_sent": 0,
        }
        state.threads[thread_id] = thread
        sim.dispatch(guild.id, "THREAD_CREATE", {**thread, "newly_created": True})
        return _json(thread, 201)

    async def thread_member(request: web.Request) -> web.Response:
        """Add a member to a thread: 204."""
        sim.record(request, await sim._body(request))
        raw_t, raw_u = request.match_info["channel_id"], request.match_info["user_id"]
        thread = state.threads.get(int(raw_t)) if raw_t.isdigit() else None
        if thread is None:
            return _error(404, "Unknown Channel", 10003)
        guild = world.guilds[int(thread["guild_id"])]
        if not raw_u.isdigit() or int(raw_u) not in guild.members:
            return _error(404, "Unknown Member", 10007)
        members = state.thread_members.setdefault(int(raw_t), set())
        if int(raw_u) not in members:
            members.add(int(raw_u))
            thread["member_count"] = len(members) + 1  # and the bot that created it
        return web.Response(status=204)

    async def edit_thread(request: web.Request) -> web.Response:
        """Modify a thread (name, archived, locked); other channels are not simulated."""
        body = await sim._body(request)
        sim.record(request, body)
        raw = request.match_info["channel_id"]
        thread = state.threads.get(int(raw)) if raw.isdigit() else None
        if thread is None:
            return _error(404, "Unknown Channel", 10003)
        if not isinstance(body, dict):
            return _error(400, "Invalid Form Body", 50035)
        meta = thread["thread_metadata"]
        for key in ("archived", "locked"):
            if key in body:
                meta[key] = bool(body[key])
        if "archived" in body:
            meta["archive_timestamp"] = iso()
        if isinstance(body.get("name"), str) and 1 <= len(body["name"]) <= 100:
            thread["name"] = body["name"]
        sim.dispatch(int(thread["guild_id"]), "THREAD_UPDATE", thread)
        return _json(thread)

    async def get_message(request: web.Request) -> web.Response:
        sim.record(request, None)
        raw_c, raw_m = request.match_info["channel_id"], request.match_info["message_id"]
        message = state.message_of(int(raw_m)) if raw_m.isdigit() else None
        if message is None or message["channel_id"] != raw_c:
            return _error(404, "Unknown Message", 10008)
        return _json(message)

    async def control_reactions(request: web.Request) -> web.Response:
        """A member reacts: ``{guild_id, channel_id, message_id, user_id, emoji, author_id?,
        content?}`` (author and content make up a message the simulator has not seen);
        MESSAGE_REACTION_ADD as Discord sends it (GUILD_MESSAGE_REACTIONS intent)."""
        try:
            body = await request.json()
            guild = sim._guild(body.get("guild_id"))
            channel_id, message_id = int(body["channel_id"]), int(body["message_id"])
            user_id, emoji = int(body["user_id"]), str(body["emoji"])
        except (ValueError, KeyError, TypeError):
            return _json({"error": "guild_id, channel_id, message_id, user_id, emoji"}, 400)
        if user_id not in guild.members or not 0 < len(emoji) <= 64:
            return _json({"error": "user must be a member; emoji a name or name:id"}, 400)
        if state.message_of(message_id) is None:
            if body.get("author_id") is None:
                return _json({"message": "Unknown Message", "code": 10008}, 404)
            made = world.message(
                guild, channel_id, int(body["author_id"]), str(body.get("content", ""))
            )
            made["id"] = str(message_id)
            state.reacted[message_id] = {
                k: v for k, v in made.items() if k not in ("guild_id", "member")
            }
            while len(state.reacted) > MAX_MESSAGES:
                state.reacted.popitem(last=False)
        users = state.reactions.setdefault(message_id, {}).setdefault(emoji, set())
        if user_id in users:  # Discord: reacting twice with one emoji changes nothing
            return _json({"delivered": 0, "count": len(users)})
        users.add(user_id)
        member = guild.member_payload(user_id)
        name, _, emoji_id = emoji.partition(":")
        event = {
            "user_id": str(user_id),
            "channel_id": str(channel_id),
            "message_id": str(message_id),
            "guild_id": str(guild.id),
            "member": member,
            "emoji": {"id": emoji_id or None, "name": name},
            "burst": False,
            "burst_colors": [],
            "type": 0,
        }
        delivered = sim.dispatch(guild.id, "MESSAGE_REACTION_ADD", event)
        return _json({"delivered": delivered, "count": len(users)})

    async def control_moderate(request: web.Request) -> web.Response:
        """A moderator acts in Discord's own client: ``{guild_id, user_id, action: ban | kick
        | timeout, executor_id, reason, seconds}`` (the events and the audit-log entry)."""
        try:
            body = await request.json()
            guild = sim._guild(body.get("guild_id"))
            user_id, executor = int(body["user_id"]), int(body.get("executor_id") or guild.owner.id)
            action = body["action"]
        except (ValueError, KeyError, TypeError):
            return _json({"error": "guild_id, user_id and action are required"}, 400)
        reason = body.get("reason")
        if action == "ban":
            do_ban(guild, user_id, executor, reason)
        elif action in ("kick", "timeout") and user_id not in guild.members:
            return _json({"error": f"user {user_id} is not a member"}, 404)
        elif action == "kick":
            do_kick(guild, user_id, executor, reason)
        elif action == "timeout":
            until = iso(time.time() + float(body.get("seconds", 3600)))
            do_timeout(guild, user_id, until, executor, reason)
        else:
            return _json({"error": "action must be ban, kick or timeout"}, 400)
        return _json({"audit_log_entry": state.audit_log[-1] if state.audit_log else None})

    async def control_moderation(request: web.Request) -> web.Response:
        return _json(
            {
                "bans": {str(g): sorted(map(str, u)) for g, u in state.bans.items()},
                "timeouts": {f"{g}/{u}": t for (g, u), t in state.timeouts.items()},
                "messages_created": state.created,
            }
        )

    faults: list[dict[str, Any]] = []  # pending faults, first match wins

    @web.middleware
    async def inject_faults(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        fault = next(
            (
                f
                for f in faults
                if request.path.startswith(API)
                and f["method"] == request.method
                and f["path"] in request.path
            ),
            None,
        )
        if fault is None:
            return await handler(request)
        fault["count"] -= 1
        if fault["count"] <= 0:
            faults.remove(fault)
        if fault["delay"] > 0:  # done, then answered late (or never: the caller left)
            response = await handler(request)
            until = time.monotonic() + fault["delay"]
            while time.monotonic() < until and not (
                request.transport is None or request.transport.is_closing()
            ):
                await asyncio.sleep(0.05)
            return response
        sim.record(request, await sim._body(request))
        status = fault["status"]
        if status == 429:
            retry = fault["retry_after"]
            body = {"message": "You are being rate limited.", "retry_after": retry, "global": False}
            return web.Response(
                body=json.dumps(body).encode(),
                status=429,
                headers={
                    "Content-Type": "application/json",
                    "Retry-After": str(max(1, round(retry))),
                    "X-RateLimit-Scope": "user",
                    "Via": "1.1 google",
                },
            )
        return _error(status, f"{status}: Internal Server Error", 0)

    async def control_faults(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if isinstance(body, dict) and body.get("clear"):
                faults.clear()
                return _json({"faults": 0})
            fault: dict[str, Any] = {
                "method": str(body["method"]).upper(),
                "path": str(body["path"]),
                "status": int(body.get("status", 500)),
                "delay": float(body.get("delay", 0)),
                "retry_after": float(body.get("retry_after", 0.2)),
                "count": int(body.get("count", 1)),
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            return _json({"error": "method and path are required"}, 400)
        if not (fault["status"] == 429 or 500 <= fault["status"] <= 599) or fault["count"] < 1:
            return _json({"error": "status must be 429 or 5xx; count at least 1"}, 400)
        faults.append(fault)
        return _json({"faults": len(faults)})

    app.middlewares.append(inject_faults)
    r = app.router
    r.add_post("/control/faults", control_faults)
    r.add_patch(f"{API}/channels/{{channel_id}}/messages/{{message_id}}", edit_message)
    r.add_get(f"{API}/channels/{{channel_id}}/messages/{{message_id}}", get_message)
    r.add_post("/control/reactions", control_reactions)
    r.add_post(f"{API}/channels/{{channel_id}}/threads", create_thread)
    r.add_put(f"{API}/channels/{{channel_id}}/thread-members/{{user_id}}", thread_member)
    r.add_patch(f"{API}/channels/{{channel_id}}", edit_thread)
    r.add_put(f"{API}/guilds/{{guild_id}}/bans/{{user_id}}", ban)
    r.add_delete(f"{API}/guilds/{{guild_id}}/members/{{user_id}}", member)
    r.add_patch(f"{API}/guilds/{{guild_id}}/members/{{user_id}}", member)
    r.add_post("/control/components", control_components)
    r.add_get("/control/moderation", control_moderation)
    r.add_post("/control/moderate", control_moderate)
    return state
