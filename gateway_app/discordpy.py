"""Every use of discord.py's non-public surface, in one place.

* :func:`point_at` sends discord.py's REST and gateway traffic to another Discord (the
  local simulator): ``Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY`` are read on
  every request and connection.
* :func:`run_forwarded_interaction` feeds an interaction that arrived over HTTP (verified
  and forwarded by the proxy) to discord.py's normal command handling, and captures the
  first response discord.py would have POSTed to Discord's callback endpoint, so the pod
  can return it as the HTTP answer within Discord's 3-second budget. If the command is
  slower than the deadline, the pod answers "deferred" instead and the late response is
  sent as an edit of the original message: the user always sees the real answer.
* :class:`ResumableShardedClient` RESUMEs stored gateway sessions when it (re)starts
  (``launch_shard``), tells which shard, session and sequence number each handled event
  came from (:data:`CURRENT_POSITION`, set around discord.py's parsers and inherited by
  the handler tasks they create), reports bans of guilds not in its cache (after a RESUME
  in a fresh process nothing is cached), and closes its connections resumably.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.shard import Shard
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

__all__ = [
    "CURRENT_POSITION",
    "DEFERRED_EPHEMERAL",
    "GatewayPosition",
    "RawBan",
    "ResumableShardedClient",
    "add_thread_member",
    "ban_member",
    "close_thread",
    "create_private_thread",
    "create_thread",
    "fetch_message",
    "kick_member",
    "point_at",
    "role_ids",
    "run_forwarded_interaction",
    "timeout_member",
]

DEFERRED_EPHEMERAL: dict[str, Any] = {"type": 5, "data": {"flags": 64}}


def point_at(api_url: str, gateway_url: str) -> None:
    """Use this Discord (``.../api/v10`` and ``ws://.../gw``) for REST and the gateway."""
    discord.VoiceClient.warn_dave = False  # mod-bot has no voice features: no warning at start
    discord.http.Route.BASE = api_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class _CapturingAdapter(AsyncWebhookAdapter):
    """Answers discord.py's interaction callback locally instead of over REST."""

    def __init__(self, application_id: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # discord.py leaves it unannotated
        self.application_id = application_id
        self.first: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.too_late = False

    async def create_interaction_response(  # type: ignore[override]
        self,
        interaction_id: int,
        token: str,
        *,
        session: aiohttp.ClientSession,
        proxy: str | None = None,
        proxy_auth: aiohttp.BasicAuth | None = None,
        params: Any,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = dict(params.payload or {})
        kind = payload.get("type", 4)
        flags = (payload.get("data") or {}).get("flags", 0)
        if not self.too_late and not self.first.done():
            self.first.set_result(payload)
        elif kind in (4, 7):  # the pod already answered "deferred": show the real answer
            await self.edit_webhook_message(
                self.application_id,
                token,
                "@original",  # type: ignore[arg-type]  # Discord's alias; typed as an id
                session=session,
                proxy=proxy,
                proxy_auth=proxy_auth,
                payload=payload.get("data") or {},
            )
        return {
            "interaction": {
                "id": str(interaction_id),
                "type": 2,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(flags & 64),
            },
            "resource": {"type": kind},
        }


class MalformedInteraction(ValueError):
    """discord.py could not read a forwarded interaction (a field it needs is wrong)."""


# Fields discord.py reads with ``data[key]`` although Discord documents them as added over
# time (``attachment_size_limit`` in 2024) or may omit them: filled in, never trusted.
INTERACTION_DEFAULTS: dict[str, Any] = {
    "version": 1,
    "attachment_size_limit": 10 * 1024 * 1024,  # Discord's default upload limit
}


def with_defaults(payload: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``payload`` with the fields discord.py requires and Discord may omit."""
    missing = {k: v for k, v in INTERACTION_DEFAULTS.items() if k not in payload}
    return {**payload, **missing} if missing else payload


async def run_forwarded_interaction(
    client: discord.Client,
    payload: dict[str, Any],
    deadline: float,
    *,
    already_deferred: bool = False,
) -> dict[str, Any]:
    """Dispatch ``payload`` to ``client``'s command tree; return the response body.

    Returns within ``deadline`` seconds: the command's own first response, or a deferred
    ephemeral response when the command is slower (its answer then follows as an edit).
    ``already_deferred``: Discord was already told "deferred" (by the proxy), so every
    answer becomes an edit and this returns at once.
    """
    if payload.get("type") == 1:
        return {"type": 1}
    assert client.application_id is not None, "log the client in first"
    adapter = _CapturingAdapter(client.application_id)
    adapter.too_late = already_deferred
    token = async_context.set(adapter)
    try:
        # The command task is created here and inherits the adapter through the context.
        client._connection.parse_interaction_create(with_defaults(payload))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedInteraction(f"interaction payload not understood: {exc!r}") from None
    finally:
        async_context.reset(token)
    if already_deferred:
        return DEFERRED_EPHEMERAL
    try:
        return await asyncio.wait_for(asyncio.shield(adapter.first), deadline)
    except TimeoutError:
        adapter.too_late = True
        if adapter.first.done():  # answered in the same instant
            with contextlib.suppress(Exception):
                return adapter.first.result()
        return DEFERRED_EPHEMERAL


# -- durable gateway sessions ------------------------------------------------------------------

_log = logging.getLogger("modbot.gateway.discordpy")


@dataclass(frozen=True)
class GatewayPosition:
    """One gateway event's place: its shard, session and sequence number, and where to
    resume that session."""

    shard_id: int
    shard_count: int
    session_id: str
    sequence: int
    resume_url: str


@dataclass(frozen=True)
class RawBan:
    """GUILD_BAN_ADD as data: discord.py drops the event for a guild it has not cached."""

    guild_id: int
    user_id: int

    @classmethod
    def from_gateway(cls, data: Any) -> RawBan | None:
        """The ban in a GUILD_BAN_ADD payload; None if its ids are not snowflakes (then
        discord.py's own parser would raise too, and end the shard's client)."""
        user = data.get("user") if isinstance(data, dict) else None
        guild_id = _snowflake(data.get("guild_id")) if isinstance(data, dict) else None
        user_id = _snowflake(user.get("id")) if isinstance(user, dict) else None
        if guild_id is None or user_id is None:
            return None
        return cls(guild_id, user_id)


def _snowflake(value: object) -> int | None:
    """A Discord id as sent (a decimal string; an int is taken too), else None."""
    if type(value) is int:
        return value if value >= 0 else None
    if isinstance(value, str) and 0 < len(value) <= 20 and value.isascii() and value.isdigit():
        return int(value)
    return None


# The position of the event whose handlers are running (None outside a tracked event).
CURRENT_POSITION: ContextVar[GatewayPosition | None] = ContextVar(
    "modbot_gateway_position", default=None
)

# The dispatches whose handlers write (and READY, which starts a session's positions).
TRACKED_EVENTS = (
    "READY",
    "MESSAGE_CREATE",
    "MESSAGE_DELETE",
    "GUILD_BAN_ADD",
    "GUILD_MEMBER_REMOVE",
    "GUILD_AUDIT_LOG_ENTRY_CREATE",  # as raw data (features/modlog.py): needs no cache
    "MESSAGE_REACTION_ADD",  # features/reactji.py
)

RESUME_CONNECT_TIMEOUT = 30.0  # seconds to reach a stored resume URL before IDENTIFYing
TakeResume = Callable[[int, int], GatewayPosition | None]  # (shard id, shard count) -> where


class ResumableShardedClient(discord.AutoShardedClient):
    """An ``AutoShardedClient`` whose sessions survive the process.

    ``take_resume(shard_id, shard_count)`` gives the stored position of a shard (once);
    the shard then RESUMEs that session instead of IDENTIFYing, and Discord replays every
    event after that sequence number. If Discord answers INVALID_SESSION (too late, or an
    unknown session), discord.py IDENTIFYs as usual. ``on_session(position)`` is called at
    each READY: the first position of a new session.
    """

    def __init__(
        self,
        *args: Any,
        take_resume: TakeResume | None = None,
        on_session: Callable[[GatewayPosition], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._take_resume = take_resume
        self._on_session = on_session
        self.resumes_sent: list[int] = []  # shard ids this client sent a RESUME for
        parsers = self._connection.parsers
        for name in TRACKED_EVENTS:
            if name in parsers:
                parsers[name] = self._tracked(name, parsers[name])

    def _shard_ws(self, shard_id: int) -> DiscordWebSocket | None:
        shard = self._AutoShardedClient__shards.get(shard_id)  # type: ignore[attr-defined]
        return shard.ws if shard is not None else None

    def _position(self, name: str, data: dict[str, Any]) -> GatewayPosition | None:
        count = self.shard_count or 1
        if name == "READY":
            shard_id = int((data.get("shard") or [0, count])[0])
        elif data.get("guild_id") is not None:
            try:
                shard_id = (int(data["guild_id"]) >> 22) % count
            except (TypeError, ValueError):  # not an id: no position (and no crash here)
                return None
        else:
            return None
        ws = self._shard_ws(shard_id)
        # discord.py sets ws.sequence (and, at READY, session_id) before calling the parser
        if ws is None or ws.session_id is None or ws.sequence is None:
            return None
        return GatewayPosition(shard_id, count, ws.session_id, ws.sequence, str(ws.gateway))

    def _tracked(self, name: str, parse: Callable[[Any], None]) -> Callable[[Any], None]:
        def tracked(data: Any) -> None:
            position = self._position(name, data)
            token = CURRENT_POSITION.set(position)
            try:
                if name == "READY" and position is not None and self._on_session is not None:
                    self._on_session(position)
                elif name == "GUILD_BAN_ADD" and "user" in data:
                    ban = RawBan.from_gateway(data)
                    if ban is None:  # refused here: a raise would end the shard's client
                        _log.warning("GUILD_BAN_ADD without valid ids ignored: %.200r", data)
                        return
                    self.dispatch("raw_member_ban", ban)
                elif name == "GUILD_AUDIT_LOG_ENTRY_CREATE":
                    # raw only: discord.py's parser needs the guild cached and int()s every
                    # id, so one odd entry would end the shard's client; nothing uses it
                    if isinstance(data, dict):
                        self.dispatch("raw_audit_log_entry", dict(data))
                    return
                parse(data)
            finally:
                CURRENT_POSITION.reset(token)

        return tracked

    async def launch_shard(
        self, gateway: yarl.URL, shard_id: int, *, initial: bool = False
    ) -> None:
        where = self._take_resume(shard_id, self.shard_count or 1) if self._take_resume else None
        if where is None:
            return await super().launch_shard(gateway, shard_id, initial=initial)
        try:
            ws = await asyncio.wait_for(
                DiscordWebSocket.from_client(
                    self,
                    initial=initial,
                    gateway=yarl.URL(where.resume_url),
                    shard_id=shard_id,
                    session=where.session_id,
                    sequence=where.sequence,
                    resume=True,
                ),
                # an unreachable resume URL must not hold the start for discord.py's 180 s
                timeout=min(
                    self.shard_connect_timeout or RESUME_CONNECT_TIMEOUT, RESUME_CONNECT_TIMEOUT
                ),
            )
        except Exception as exc:
            _log.warning("shard %s: RESUME not sent (%s); identifying instead", shard_id, exc)
            return await super().launch_shard(gateway, shard_id, initial=initial)
        _log.info(
            "shard %s: resuming session %s after sequence %s",
            shard_id,
            where.session_id,
            where.sequence,
        )
        self.resumes_sent.append(shard_id)
        queue = self._AutoShardedClient__queue  # type: ignore[attr-defined]
        shard = Shard(ws, self, queue.put_nowait)
        self._AutoShardedClient__shards[shard_id] = shard  # type: ignore[attr-defined]
        shard.launch()

    async def close(self) -> None:
        """Close every connection with 4000, not discord.py's 1000: Discord ends a session
        closed with 1000/1001, and a restarted pod must be able to resume it."""
        for shard in list(self._AutoShardedClient__shards.values()):  # type: ignore[attr-defined]
            shard._cancel_task()
            with contextlib.suppress(Exception):
                await shard.ws.close(code=4000)
        await super().close()


# -- moderation over REST, for guilds this process has not cached (features/) ----------------
# discord.py's Guild.ban/kick and Member.edit need a cached guild or member; the command
# client is REST-only and caches nothing, so these call its HTTP layer directly.


def role_ids(member: discord.abc.User) -> set[int]:
    """The role ids of an interaction's member (its roles cannot be resolved uncached)."""
    return {int(r) for r in getattr(member, "_roles", ())}


async def ban_member(
    client: discord.Client, guild_id: int, user_id: int, reason: str, delete_seconds: int = 0
) -> None:
    await client.http.ban(user_id, guild_id, delete_message_seconds=delete_seconds, reason=reason)


async def kick_member(client: discord.Client, guild_id: int, user_id: int, reason: str) -> None:
    await client.http.kick(user_id, guild_id, reason=reason)


async def timeout_member(
    client: discord.Client, guild_id: int, user_id: int, until_iso: str, reason: str
) -> None:
    await client.http.edit_member(
        guild_id, user_id, reason=reason, communication_disabled_until=until_iso
    )


async def create_thread(client: discord.Client, channel_id: int, name: str, reason: str) -> int:
    """A public thread (no starter message) in a text channel; its id."""
    thread = await client.http.start_thread_without_message(
        channel_id, name=name[:100], auto_archive_duration=10080, type=11, reason=reason
    )
    return int(thread["id"])


async def create_private_thread(
    client: discord.Client, channel_id: int, name: str, reason: str
) -> int:
    """A private thread (type 12, members only) in a text channel; its id."""
    thread = await client.http.start_thread_without_message(
        channel_id,
        name=name[:100],
        auto_archive_duration=10080,
        type=12,
        invitable=False,
        reason=reason,
    )
    return int(thread["id"])


async def add_thread_member(client: discord.Client, thread_id: int, user_id: int) -> None:
    await client.http.add_user_to_thread(thread_id, user_id)


async def close_thread(client: discord.Client, thread_id: int, reason: str) -> None:
    """Archive and lock a thread: read-only for its members from now on."""
    await client.http.edit_channel(thread_id, reason=reason, archived=True, locked=True)


async def fetch_message(client: discord.Client, channel_id: int, message_id: int) -> dict[str, Any]:
    """A message as Discord's REST answers it (its ``reactions`` with their counts)."""
    return dict(await client.http.get_message(channel_id, message_id))
