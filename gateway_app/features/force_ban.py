"""``/force-ban``: a moderator bans a user at once, by id, whether or not they are a member
(mod-bot's force-ban). The ban itself is recorded like any other: Discord's GUILD_BAN_ADD
reaches the guild's owning pod, which writes the ``mod_actions`` row."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from ..discordpy import ban_member
from .escalation import moderator_settings, protected
from .runtime import Runtime, refuse


def register(tree: app_commands.CommandTree[Any], runtime: Runtime) -> None:
    @tree.command(name="force-ban", description="Ban a user now, member or not")
    @app_commands.describe(user="the user to ban", reason="why (shown in the audit log)")
    @app_commands.guild_only()
    async def force_ban(
        interaction: discord.Interaction,
        user: discord.User,
        reason: app_commands.Range[str, 1, 400] | None = None,
    ) -> None:
        gid = interaction.guild_id
        assert gid is not None
        settings = await moderator_settings(runtime, interaction, "force-ban", mod_log=False)
        if settings is None:
            return
        if user.id == interaction.user.id:
            await refuse(interaction, "You cannot ban yourself.")
            return
        why_not = protected(runtime, interaction, user, settings, moderators=True)
        if why_not is not None:
            await refuse(interaction, why_not)
            return
        why = f"force-ban by {interaction.user.id}: {reason or 'no reason given'}"
        try:
            await ban_member(runtime.client, gid, user.id, why)
        except discord.Forbidden:
            await refuse(interaction, "Discord refused the ban: mod-bot lacks Ban Members.")
            return
        await refuse(interaction, f"Banned <@{user.id}>.")
