"""Honeypot channels: ``/honeypot channel:`` (administrators) makes a channel a trap; a
member who is not a moderator posting there is banned at once (their last hour of
messages deleted), as mod-bot does against spam bots.

Configuration lives in mod-bot's ``honeypot_config`` (one row per channel, carried by
migrations). The check runs on the pod that owns the guild, for the messages it writes
(``features.observe``); the channels are cached per guild for ``CACHE_SECONDS``, so a
message costs no query (a message in a trap reads the moderator role, uncached). The
owner and members whose roles grant Administrator, Manage Server or Ban Members are
spared too (``event.staff``, from the gateway cache). The ban is recorded like any
other (GUILD_BAN_ADD, audit log).

The decision is durable before the ban is made: a ``pending`` row in ``honeypot_bans`` (a
pod table, migrated with the guild) is committed, the ban made, the row marked ``done``.
A pod killed in between (discord.py retrying a 5xx) leaves the row pending, and ``tick``
(every pod, for the guilds it may act on) makes the ban again: bans are idempotent on
Discord's side, so at least once is enough. Failures are retried boundedly
(``runtime.delivery_attempts``); a ban Discord refuses (403, 404) is given up.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import discord
from discord import app_commands

from ..discordpy import ban_member
from ..events import MessageCreated
from ..storage import StorageUnavailable
from .escalation import LIVE
from .runtime import Runtime, refuse

CACHE_SECONDS = 30.0
DELETE_SECONDS = 3600  # the spam of the last hour goes with the ban
_cache: dict[int, tuple[float, frozenset[int]]] = {}  # guild -> (loaded at, channel ids)
_banning: set[tuple[int, int]] = set()  # (guild, user) being banned by this process
RETRY_BATCH = 100  # pending bans taken up per tick


async def channels_of(runtime: Runtime, guild_id: int) -> frozenset[int]:
    now = time.monotonic()
    hit = _cache.get(guild_id)
    if hit is not None and now - hit[0] < CACHE_SECONDS:
        return hit[1]
    rows = await runtime.store._all(
        "SELECT channel_id FROM honeypot_config WHERE guild_id = ?", (guild_id,)
    )
    channels = frozenset(int(r[0]) for r in rows if str(r[0]).isdigit())
    if len(_cache) > 50_000:  # bounded: forget everything rather than grow
        _cache.clear()
    _cache[guild_id] = (now, channels)
    return channels


def maybe_trap(guild_id: int, event: MessageCreated) -> bool:
    """Synchronous pre-check: False only when the cached trap list is fresh and the
    message's channel is not on it (nearly every message: no task is made for it)."""
    hit = _cache.get(guild_id)
    if hit is None or time.monotonic() - hit[0] >= CACHE_SECONDS:
        return True  # unknown: the observer reads the list (and caches it)
    return event.channel_id in hit[1]


async def moderator_role(runtime: Runtime, guild_id: int) -> int | None:
    """Read each time, not cached: only messages in a trap get here, and a role changed by
    ``/setup`` must spare its members at once (a stale copy would ban a new moderator)."""
    settings = await runtime.store.settings(guild_id) or {}
    role = settings.get("moderator_role")
    return int(role) if isinstance(role, str) and role.isdigit() else None


def register(tree: app_commands.CommandTree[Any], runtime: Runtime) -> None:
    @tree.command(name="honeypot", description="Make a channel a honeypot: posting there bans")
    @app_commands.describe(channel="the channel nobody should post in")
    @app_commands.default_permissions(administrator=True)
    @app_commands.guild_only()
    async def honeypot(
        interaction: discord.Interaction, channel: app_commands.AppCommandChannel
    ) -> None:
        gid = interaction.guild_id
        assert gid is not None
        if not interaction.permissions.administrator:
            await refuse(interaction, "Only administrators can set up a honeypot.")
            return
        store = runtime.store
        store.enqueue(
            "INSERT INTO honeypot_config (guild_id, channel_id) SELECT ?, ? WHERE NOT EXISTS"
            " (SELECT 1 FROM honeypot_config WHERE guild_id = ? AND channel_id = ?)",
            (gid, str(channel.id), gid, str(channel.id)),
        )
        await store.flush()
        _cache.pop(gid, None)
        await runtime.client.get_partial_messageable(channel.id, guild_id=gid).send(
            "This channel is a honeypot: do not post here. Posting here bans you."
        )
        await refuse(interaction, f"<#{channel.id}> is now a honeypot.")

    runtime.on_event(on_event, MessageCreated, maybe_trap)


log = logging.getLogger("modbot.features.honeypot")


async def on_event(runtime: Runtime, guild_id: int, event: MessageCreated) -> None:
    if event.channel_id not in await channels_of(runtime, guild_id):
        return
    if event.staff:
        return  # the owner, administrators, members who may ban anyway
    if event.staff is None:
        # who posted is unknown (the guild is not in the gateway cache): a moderator must
        # never be banned by a trap, so this one is let through and logged
        log.warning(
            "honeypot in guild %s: author %s not cached, not banned",
            guild_id,
            event.author_id,
        )
        return
    role = await moderator_role(runtime, guild_id)
    if role is not None and role in event.roles:
        return  # moderators may post there (the warning, a test)
    user = event.author_id
    reason = f"honeypot: posted in channel {event.channel_id}"
    store = runtime.store
    store.enqueue(  # the decision first, durably (not into a guild a migration froze)
        "INSERT INTO honeypot_bans (guild_id, user_id, reason, decided_at, attempts, next_try,"
        f" state) SELECT ?, ?, ?, ?, 0, 0, 'pending' WHERE {LIVE}"
        " ON CONFLICT (guild_id, user_id) DO UPDATE SET reason = excluded.reason,"
        " decided_at = excluded.decided_at, attempts = 0, next_try = 0, state = 'pending'",
        (guild_id, user, reason, time.time(), guild_id),
    )
    try:
        await store.flush()
    except StorageUnavailable as exc:  # disk full, say: ban anyway, not durably
        log.warning("honeypot ban of %s in guild %s not recorded: %s", user, guild_id, exc)
    await perform(runtime, guild_id, user, reason, 0)


async def perform(runtime: Runtime, guild_id: int, user: int, reason: str, attempts: int) -> None:
    """Make a recorded ban and record how it went (once at a time per member here)."""
    key = (guild_id, user)
    if key in _banning:
        return
    _banning.add(key)
    try:
        state = "done"
        next_try = 0.0
        try:
            await ban_member(runtime.client, guild_id, user, reason, delete_seconds=DELETE_SECONDS)
        except (discord.NotFound, discord.Forbidden) as exc:  # gone, or not allowed: say so
            log.warning("honeypot ban of %s in guild %s refused: %s", user, guild_id, exc)
            state = "failed"
        except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            failed = attempts + 1 >= runtime.delivery_attempts
            state = "failed" if failed else "pending"
            next_try = time.time() + min(60.0, runtime.tick * 2 ** (attempts + 1))
            log.warning(
                "honeypot ban of %s in guild %s: attempt %d failed (%s)%s",
                user,
                guild_id,
                attempts + 1,
                exc,
                "; giving up" if failed else "",
            )
        runtime.store.enqueue(
            "UPDATE honeypot_bans SET state = ?, attempts = ?, next_try = ?"
            " WHERE guild_id = ? AND user_id = ? AND state = 'pending'",
            (state, attempts + 1, next_try, guild_id, user),
        )
        await runtime.store.flush()
    finally:
        _banning.discard(key)


async def tick(runtime: Runtime) -> None:
    """Make the recorded bans still pending (a pod killed mid-ban, Discord failing), for the
    guilds acted on here; each in the background, so a slow Discord delays no other tick."""
    rows = await runtime.store._all(
        "SELECT guild_id, user_id, reason, attempts FROM honeypot_bans"
        " WHERE state = 'pending' AND next_try <= ? ORDER BY next_try LIMIT ?",
        (time.time(), RETRY_BATCH),
    )
    for guild_id, user, reason, attempts in rows:
        gid, uid = int(guild_id), int(user)
        if runtime.can_act(gid) and (gid, uid) not in _banning:
            runtime.spawn(perform(runtime, gid, uid, str(reason), int(attempts)))
