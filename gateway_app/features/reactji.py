"""The reactji channeler: ``/reactji-channel emoji: threshold: channel:`` (administrators)
forwards every message that reaches ``threshold`` reactions of ``emoji`` to ``channel``,
once.

Configuration lives in mod-bot's ``reactji_channeler_config`` (one row per guild and
emoji). A reaction is counted by Discord, not here: on a reaction with a configured emoji
the owning pod reads the message (its reactions' counts) and, at the threshold, *claims*
the forward in ``reactji_forwarded`` (a pod table, carried by migrations like mod-bot's:
``gateway_app/feature_tables.py``) before posting it, so concurrent reactions, a replayed
gateway event or a second pod forward it once. A forward that fails releases its claim:
the next reaction tries again.

The claim is ``pending`` (with the source channel) until the post is made, then ``done``.
A pod killed in between leaves it pending: ``tick`` takes over a pending claim older than
``LEASE_SECONDS`` (a new token, read back) and posts it. The post carries a ``nonce``
derived from the forward (discord.py adds ``enforce_nonce``), so a repeat of a post that
did reach Discord returns the first message instead of making a second.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import discord
from discord import app_commands

from ..discordpy import fetch_message
from ..events import ReactionAdded
from .escalation import iso
from .runtime import Runtime, refuse

CACHE_SECONDS = 30.0
LEASE_SECONDS = 5.0  # a pending claim older than this is taken over by ``tick``
RETRY_BATCH = 100  # pending forwards taken up per tick
_forwarding: set[tuple[int, int, str]] = set()  # (guild, message, emoji) posting here
_configs: dict[int, tuple[float, dict[str, tuple[int, int]]]] = {}  # guild -> emoji -> (ch, n)


def emoji_key(emoji: dict[str, Any]) -> str:
    """Discord's emoji object as the key the gateway handler uses (name, or name:id)."""
    return f"{emoji.get('name')}:{emoji['id']}" if emoji.get("id") else str(emoji.get("name"))


async def configs_of(runtime: Runtime, gid: int) -> dict[str, tuple[int, int]]:
    now = time.monotonic()
    hit = _configs.get(gid)
    if hit is not None and now - hit[0] < CACHE_SECONDS:
        return hit[1]
    rows = await runtime.store._all(
        "SELECT emoji, channel_id, threshold FROM reactji_channeler_config WHERE guild_id = ?"
        " ORDER BY rowid",
        (gid,),
    )
    found: dict[str, tuple[int, int]] = {}
    for emoji, channel, threshold in rows:
        try:
            found[str(emoji)] = (int(channel), max(1, int(threshold)))
        except (TypeError, ValueError):  # mod-bot's data as imported: skip what is not usable
            continue
    if len(_configs) > 50_000:
        _configs.clear()
    _configs[gid] = (now, found)
    return found


def register(tree: app_commands.CommandTree[Any], runtime: Runtime) -> None:
    @tree.command(name="reactji-channel", description="Forward messages that reach N of an emoji")
    @app_commands.describe(
        emoji="the emoji (as typed: a character, or <:name:id>)",
        threshold="reactions that forward a message",
        channel="where forwarded messages go",
    )
    @app_commands.default_permissions(administrator=True)
    @app_commands.guild_only()
    async def reactji_channel(
        interaction: discord.Interaction,
        emoji: app_commands.Range[str, 1, 64],
        threshold: app_commands.Range[int, 1, 100],
        channel: app_commands.AppCommandChannel,
    ) -> None:
        gid = interaction.guild_id
        assert gid is not None
        if not interaction.permissions.administrator:
            await refuse(interaction, "Only administrators can set up the reactji channeler.")
            return
        parsed = discord.PartialEmoji.from_str(emoji.strip())
        key = f"{parsed.name}:{parsed.id}" if parsed.id else str(parsed.name)
        store = runtime.store
        store.enqueue(
            "DELETE FROM reactji_channeler_config WHERE guild_id = ? AND emoji = ?", (gid, key)
        )
        store.enqueue(
            "INSERT INTO reactji_channeler_config (guild_id, id, channel_id, emoji, threshold,"
            " configured_by_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                gid,
                str(uuid.uuid4()),
                str(channel.id),
                key,
                str(threshold),  # mod-bot's column holds text
                str(interaction.user.id),
                iso(time.time()),
            ),
        )
        await store.flush()
        _configs.pop(gid, None)
        await refuse(interaction, f"Messages reaching {threshold} x {emoji} go to <#{channel.id}>.")

    runtime.on_event(on_event, ReactionAdded)


async def on_event(runtime: Runtime, gid: int, event: ReactionAdded) -> None:
    config = (await configs_of(runtime, gid)).get(event.emoji)
    if config is None:
        return
    target, threshold = config
    message_id, channel_id = event.message_id, event.channel_id
    if channel_id == target:
        return  # a forwarded copy being reacted to: never forwarded again
    message = await fetch_message(runtime.client, channel_id, message_id)
    count = sum(
        int(r.get("count") or 0)
        for r in message.get("reactions") or []
        if isinstance(r, dict) and emoji_key(r.get("emoji") or {}) == event.emoji
    )
    if count < threshold:
        return
    token = await claim(runtime, gid, message_id, channel_id, event.emoji, target)
    if token is not None:
        await forward(runtime, gid, channel_id, message_id, event.emoji, target, token, message)


def nonce_of(gid: int, message_id: int, emoji: str) -> str:
    """The same for every attempt of one forward (Discord's limit: 25 characters)."""
    return "r" + hashlib.sha256(f"{gid}:{message_id}:{emoji}".encode()).hexdigest()[:24]


async def forward(
    runtime: Runtime,
    gid: int,
    channel_id: int,
    message_id: int,
    emoji: str,
    target: int,
    token: str,
    message: dict[str, Any] | None = None,
) -> None:
    """Post a claimed forward, then mark it done; on failure release the claim."""
    key = (gid, message_id, emoji)
    if key in _forwarding:
        return
    _forwarding.add(key)
    store = runtime.store
    where = "guild_id = ? AND message_id = ? AND emoji = ? AND claim = ?"
    try:
        try:
            if message is None:
                message = await fetch_message(runtime.client, channel_id, message_id)
            count = sum(
                int(r.get("count") or 0)
                for r in message.get("reactions") or []
                if isinstance(r, dict) and emoji_key(r.get("emoji") or {}) == emoji
            )
            author = (message.get("author") or {}).get("id")
            link = f"https://discord.com/channels/{gid}/{channel_id}/{message_id}"
            await runtime.client.get_partial_messageable(target, guild_id=gid).send(
                f"{count} x {emoji} for <@{author}>'s message {link}:\n"
                f"{str(message.get('content') or '')[:1500]}",
                allowed_mentions=discord.AllowedMentions.none(),  # a member's text: no pings
                nonce=nonce_of(gid, message_id, emoji),  # a repeat returns the first post
            )
        except BaseException:
            store.enqueue(  # not forwarded: the next reaction may try again
                f"DELETE FROM reactji_forwarded WHERE {where}", (gid, message_id, emoji, token)
            )
            raise
        store.enqueue(
            f"UPDATE reactji_forwarded SET state = 'done', forwarded_at = ? WHERE {where}",
            (time.time(), gid, message_id, emoji, token),
        )
        await store.flush()
    finally:
        _forwarding.discard(key)


async def claim(
    runtime: Runtime, gid: int, message_id: int, channel_id: int, emoji: str, target: int
) -> str | None:
    """The token of the one caller whose claim is recorded for this forward (the batch
    writer serialises the inserts; the guild must not be frozen or held here by a
    migration), None for the others."""
    store = runtime.store
    token = uuid.uuid4().hex
    store.enqueue(
        "INSERT OR IGNORE INTO reactji_forwarded (guild_id, message_id, emoji, channel_id,"
        " forwarded_at, claim, source_channel_id, state) SELECT ?, ?, ?, ?, ?, ?, ?, 'pending'"
        " WHERE NOT EXISTS (SELECT 1 FROM guild_fences WHERE guild_id = ? AND state IN"
        " ('frozen', 'holding'))",
        (gid, message_id, emoji, target, time.time(), token, channel_id, gid),
    )
    return await _read_back(runtime, gid, message_id, emoji, token)


async def _read_back(
    runtime: Runtime, gid: int, message_id: int, emoji: str, token: str
) -> str | None:
    store = runtime.store
    await store.flush()
    rows = await store._all(
        "SELECT claim FROM reactji_forwarded WHERE guild_id = ? AND message_id = ? AND emoji = ?",
        (gid, message_id, emoji),
    )
    return token if rows and rows[0][0] == token else None


async def tick(runtime: Runtime) -> None:
    """Take over the pending forwards whose claim outlived its lease (a pod killed between
    its claim and its post), for the guilds acted on here, and post them in the background."""
    rows = await runtime.store._all(
        "SELECT guild_id, message_id, emoji, channel_id, source_channel_id, claim"
        " FROM reactji_forwarded WHERE state = 'pending' AND forwarded_at < ?"
        " ORDER BY forwarded_at LIMIT ?",
        (time.time() - LEASE_SECONDS, RETRY_BATCH),
    )
    for guild_id, message_id, emoji, target, source, old in rows:
        gid, mid, key = int(guild_id), int(message_id), str(emoji)
        if source is None or not runtime.can_act(gid) or (gid, mid, key) in _forwarding:
            continue
        token = uuid.uuid4().hex
        runtime.store.enqueue(
            "UPDATE reactji_forwarded SET claim = ?, forwarded_at = ? WHERE guild_id = ?"
            " AND message_id = ? AND emoji = ? AND claim = ? AND state = 'pending' AND NOT"
            " EXISTS (SELECT 1 FROM guild_fences WHERE guild_id = ? AND state IN"
            " ('frozen', 'holding'))",
            (token, time.time(), gid, mid, key, old, gid),
        )
        if await _read_back(runtime, gid, mid, key, token) is not None:
            runtime.spawn(forward(runtime, gid, int(source), mid, key, int(target), token))
