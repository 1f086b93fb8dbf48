"""Tickets: ``/tickets-setup channel: role:`` (administrators) posts an "Open a ticket"
button; a member pressing it gets a private thread with the staff role, and a Close
button that the opener or the staff (or an administrator) can press.

Configuration lives in mod-bot's ``tickets_config`` (the button's message, its channel,
the staff role; carried by migrations). A press finds its configuration by the message it
came from, in the pressing guild: a button of another guild's message is not found. A
member opens at most one ticket per ``REOPEN_SECONDS`` (a double click is one ticket).
"""

from __future__ import annotations

import time
from typing import Any

import discord
from discord import app_commands

from ..discordpy import add_thread_member, close_thread, create_private_thread, role_ids
from .runtime import Runtime, refuse

PREFIX = "ticket"
REOPEN_SECONDS = 30.0
_opened: dict[tuple[int, int], tuple[float, int]] = {}  # (guild, user) -> (at, thread)


def open_view() -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(
        discord.ui.Button(
            label="Open a ticket", custom_id=f"{PREFIX}|open", style=discord.ButtonStyle.primary
        )
    )
    view.stop()  # routed by features/, not kept in discord.py's view store
    return view


def close_view(thread: int, opener: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(
        discord.ui.Button(
            label="Close",
            custom_id=f"{PREFIX}|close|{thread}|{opener}",
            style=discord.ButtonStyle.secondary,
        )
    )
    view.stop()
    return view


def register(tree: app_commands.CommandTree[Any], runtime: Runtime) -> None:
    @tree.command(name="tickets-setup", description="Post a button that opens private tickets")
    @app_commands.describe(
        channel="where the button goes (tickets are threads of it)", role="staff who answer"
    )
    @app_commands.default_permissions(administrator=True)
    @app_commands.guild_only()
    async def tickets_setup(
        interaction: discord.Interaction,
        channel: app_commands.AppCommandChannel,
        role: discord.Role,
    ) -> None:
        gid = interaction.guild_id
        assert gid is not None
        if not interaction.permissions.administrator:
            await refuse(interaction, "Only administrators can set up tickets.")
            return
        message = await runtime.client.get_partial_messageable(channel.id, guild_id=gid).send(
            "Need the staff? Open a private ticket.", view=open_view()
        )
        store = runtime.store
        store.enqueue(
            "INSERT INTO tickets_config (guild_id, message_id, channel_id, role_id)"
            " VALUES (?, ?, ?, ?)",
            (gid, str(message.id), str(channel.id), str(role.id)),
        )
        await store.flush()
        await refuse(interaction, f"Tickets are open in <#{channel.id}>.")

    runtime.on_component(PREFIX, on_press)


async def on_press(runtime: Runtime, interaction: discord.Interaction, parts: list[str]) -> None:
    gid = interaction.guild_id
    if gid is None or not parts:
        await refuse(interaction, "This ticket button is not valid.")
        return
    if parts == ["open"]:
        await open_ticket(runtime, interaction, gid)
    elif len(parts) == 3 and parts[0] == "close" and parts[1].isdigit() and parts[2].isdigit():
        await close_ticket(runtime, interaction, gid, int(parts[1]), int(parts[2]))
    else:
        await refuse(interaction, "This ticket button is not valid.")


async def open_ticket(runtime: Runtime, interaction: discord.Interaction, gid: int) -> None:
    message = interaction.message
    rows = (
        await runtime.store._all(
            "SELECT channel_id, role_id FROM tickets_config WHERE guild_id = ? AND message_id = ?",
            (gid, str(message.id)),
        )
        if message is not None
        else []
    )
    if not rows:
        await refuse(interaction, "This ticket button is no longer set up.")
        return
    channel, role = int(rows[0][0]), int(rows[0][1])
    user = interaction.user
    key, now = (gid, user.id), time.monotonic()
    recent = _opened.get(key)
    if recent is not None and now - recent[0] < REOPEN_SECONDS:
        await refuse(interaction, f"You already opened a ticket: <#{recent[1]}>.")
        return
    _opened[key] = (now, 0)  # taken before the first await: a double click waits here
    if len(_opened) > 50_000:
        _opened.clear()
    try:
        thread = await create_private_thread(
            runtime.client, channel, f"ticket {user.name}", f"ticket opened by {user.id}"
        )
        await add_thread_member(runtime.client, thread, user.id)
        await runtime.client.get_partial_messageable(thread, guild_id=gid).send(
            f"<@&{role}>: <@{user.id}> opened a ticket.", view=close_view(thread, user.id)
        )
    except BaseException:
        _opened.pop(key, None)
        raise
    _opened[key] = (now, thread)
    await refuse(interaction, f"Your ticket: <#{thread}>.")


async def close_ticket(
    runtime: Runtime, interaction: discord.Interaction, gid: int, thread: int, opener: int
) -> None:
    if interaction.channel_id != thread:  # the Close button lives in its ticket
        await refuse(interaction, "This ticket button is not valid.")
        return
    user = interaction.user
    rows = await runtime.store._all("SELECT role_id FROM tickets_config WHERE guild_id = ?", (gid,))
    staff = {int(r[0]) for r in rows if str(r[0]).isdigit()}
    allowed = user.id == opener or interaction.permissions.administrator or staff & role_ids(user)
    if not allowed:
        await refuse(interaction, "Only the member who opened it or the staff can close it.")
        return
    await runtime.client.get_partial_messageable(thread, guild_id=gid).send(
        f"Ticket closed by <@{user.id}>."
    )
    await close_thread(runtime.client, thread, f"ticket closed by {user.id}")
    await refuse(interaction, "Ticket closed.")
