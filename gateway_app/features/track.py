"""Track (message command): a moderator saves a message to its author's log thread.

As mod-bot: one thread per (guild, user) under the mod-log channel, remembered in
``user_threads`` (mod-bot's table and formats, carried by migrations); the tracked message
is also recorded in ``reported_messages`` (reason ``track``), so ``/modreport`` counts it.
A thread that was deleted on Discord is replaced once, and the new id remembered.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import discord
from discord import app_commands

from ..discordpy import create_thread
from .escalation import iso, moderator_settings
from .runtime import Runtime, refuse

# a member's text copied by the bot must not ping (@everyone, roles, users)
QUIET = discord.AllowedMentions.none()
_locks: dict[tuple[int, int], asyncio.Lock] = {}  # one thread creation per user at a time


def register(tree: app_commands.CommandTree[Any], runtime: Runtime) -> None:
    @tree.context_menu(name="Track")
    @app_commands.guild_only()
    async def track(interaction: discord.Interaction, message: discord.Message) -> None:
        gid = interaction.guild_id
        assert gid is not None
        settings = await moderator_settings(runtime, interaction, "track messages")
        if settings is None:
            return
        author = message.author
        fresh = await runtime.store.add_report(
            gid,
            interaction.user.id,
            author.id,
            message.id,
            message.channel.id,
            "track",
            message.content,
        )
        if not fresh:
            await refuse(interaction, "You already tracked this message.")
            return
        link = f"https://discord.com/channels/{gid}/{message.channel.id}/{message.id}"
        text = (
            f"Tracked by <@{interaction.user.id}>: {link} from <@{author.id}>:\n"
            f"{message.content[:1500]}"
        )
        key = (gid, author.id)
        lock = _locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                thread = await user_thread(runtime, gid, author, int(settings["mod_log"]))
                try:
                    await runtime.client.get_partial_messageable(thread, guild_id=gid).send(
                        text, allowed_mentions=QUIET
                    )
                except discord.NotFound:  # the thread was deleted: a new one, once
                    thread = await user_thread(
                        runtime, gid, author, int(settings["mod_log"]), replace=thread
                    )
                    await runtime.client.get_partial_messageable(thread, guild_id=gid).send(
                        text, allowed_mentions=QUIET
                    )
        except Exception:  # not logged: the moderator may Track it again
            await runtime.store.remove_report(gid, interaction.user.id, message.id, "track")
            raise
        finally:
            if not lock.locked():
                _locks.pop(key, None)
        await refuse(interaction, f"Tracked in <#{thread}>.")


async def user_thread(
    runtime: Runtime, gid: int, user: discord.abc.User, mod_log: int, replace: int | None = None
) -> int:
    """The user's log thread: the remembered one, or a new one (remembered)."""
    store = runtime.store
    await store.flush()
    rows = await store._all(
        "SELECT thread_id FROM user_threads WHERE guild_id = ? AND user_id = ? ORDER BY rowid",
        (gid, str(user.id)),
    )
    known = [int(r[0]) for r in rows if str(r[0]).isdigit()]
    if known and known[-1] != replace:
        return known[-1]
    thread = await create_thread(
        runtime.client, mod_log, f"{user.name} logs", f"mod-bot: log of user {user.id}"
    )
    store.enqueue(
        "DELETE FROM user_threads WHERE guild_id = ? AND user_id = ?", (gid, str(user.id))
    )
    store.enqueue(
        "INSERT INTO user_threads (guild_id, user_id, thread_id, created_at) VALUES (?, ?, ?, ?)",
        (gid, str(user.id), str(thread), iso(time.time())),
    )
    await store.flush()
    return thread
