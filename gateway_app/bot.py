"""mod-bot on discord.py: gateway event handlers and the slash/context commands.

Two clients per pod, on purpose:

* :class:`GatewayClient` (``AutoShardedClient``) holds the gateway sessions for the
  shards the routing table gives this pod; it is replaced when that set changes.
* :class:`CommandClient` is logged in over REST only and owns the command tree.
  Interactions arrive as HTTP (forwarded by the proxy), never over the gateway, so
  commands keep working while gateway sessions are handed over.

Both consult ``owns(guild_id)``: an event or command for a guild this pod does not own
is never written here.

Every handled gateway event is acknowledged after its writes are queued: ``mark`` gets
its shard, session and sequence number, and the store commits that position together
with (never before) the rows. A restarted pod resumes each session from there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands

from . import features
from .discordpy import (
    CURRENT_POSITION,
    GatewayPosition,
    RawBan,
    ResumableShardedClient,
    TakeResume,
    role_ids,
)
from .events import (
    MAX_ID,
    GatewayEvent,
    MemberBanned,
    MemberLeft,
    MessageCreated,
    MessageDeleted,
    ReactionAdded,
)
from .features.modlog import audit_event
from .storage import GuildStore

log = logging.getLogger("modbot.gateway.bot")

Handle = Callable[[int, GatewayEvent], str]  # (guild id, event) -> outcome
Mark = Callable[[GatewayPosition], None]  # an event's effects are queued: acknowledge it

NOT_SET_UP = (
    "This server is not set up yet: an administrator can run `/setup moderator_role:<role> "
    "mod_log:<channel>` to choose who moderates and where reports go."
)


class RecentEvents:
    """Drops an event seen twice within ``ttl`` seconds (two sessions during a hand-over)."""

    def __init__(self, ttl: float = 120.0, size: int = 50_000) -> None:
        self.ttl = ttl
        self.size = size
        self._seen: OrderedDict[tuple[Any, ...], float] = OrderedDict()

    def first_time(self, key: tuple[Any, ...]) -> bool:
        now = time.monotonic()
        while self._seen and (
            len(self._seen) >= self.size or next(iter(self._seen.values())) < now - self.ttl
        ):
            self._seen.popitem(last=False)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True


class LoadMeter:
    """Per-guild event rates as exponentially decayed counters (half-life ``half_life`` s)."""

    def __init__(self, half_life: float = 60.0) -> None:
        self.half_life = half_life
        self._rates: dict[int, tuple[float, float]] = {}  # guild -> (value, at)

    def record(self, guild_id: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        value, at = self._rates.get(guild_id, (0.0, now))
        self._rates[guild_id] = (value * 0.5 ** ((now - at) / self.half_life) + 1.0, now)

    def rates(self, now: float | None = None) -> dict[int, float]:
        """Events per second, per guild."""
        now = time.monotonic() if now is None else now
        scale = 0.6931471805599453 / self.half_life  # ln 2 / half-life: counter -> rate
        return {
            g: v * 0.5 ** ((now - at) / self.half_life) * scale
            for g, (v, at) in self._rates.items()
        }


def gateway_intents() -> discord.Intents:
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.message_content = True
    intents.moderation = True
    intents.members = True
    intents.guild_reactions = True  # the reactji channeler (features/reactji.py)
    return intents


def staff(author: discord.abc.User) -> bool | None:
    """The owner, or a member whose roles grant Administrator, Manage Server or Ban Members;
    None when that is unknown: the guild is not cached (a pod that resumed its session
    from disk gets no GUILD_CREATE), so nothing may be decided against the author."""
    if not isinstance(author, discord.Member) or getattr(author, "guild", None) is None:
        return None
    try:
        perms = author.guild_permissions
    except AttributeError:  # a member of a guild discord.py holds only in part
        return None
    return bool(perms.administrator or perms.manage_guild or perms.ban_members)


class GatewayClient(ResumableShardedClient):
    def __init__(
        self,
        *,
        shard_ids: list[int],
        shard_count: int,
        handle: Handle,
        recent: RecentEvents,
        identify_interval: float = 5.0,
        mark: Mark | None = None,
        take_resume: TakeResume | None = None,
    ) -> None:
        super().__init__(
            shard_ids=shard_ids,
            shard_count=shard_count,
            intents=gateway_intents(),
            max_messages=None,
            chunk_guilds_at_startup=False,
            member_cache_flags=discord.MemberCacheFlags.none(),
            guild_ready_timeout=0.2,
            take_resume=take_resume,
            on_session=mark,
        )
        self.handle = handle
        self.recent = recent
        self.ready_shards: set[int] = set()
        self.identify_interval = identify_interval
        # set by shards.ShardSupervisor: waits for Discord's IDENTIFY limits (IdentifyGate)
        self.identify_gate: Callable[[Any, int | None], Awaitable[None]] | None = None
        self.mark = mark

    def _handled(self, guild_id: int | None, event: GatewayEvent) -> None:
        """Handle one event (if it is a guild's), then acknowledge its gateway position."""
        outcome = self.handle(guild_id, event) if guild_id is not None else "ignored"
        position = CURRENT_POSITION.get()
        # "queued": it waits in memory for a migration's replay; not acknowledged (later
        # events of the shard may be, so a kill in those milliseconds can lose it)
        if self.mark is not None and position is not None and outcome != "queued":
            self.mark(position)

    def _refuse(self, what: str, *ids: int | None) -> None:
        """A gateway payload whose ids SQLite cannot hold (past 2**63-1): one such row would
        fail every commit of the batch writer. Logged, acknowledged, never written."""
        log.warning("%s with an id out of range refused: %s", what, ids)
        self._acknowledge()

    def _acknowledge(self) -> None:
        """An event this pod does not store (a bot's message, a DM): acknowledge it too."""
        position = CURRENT_POSITION.get()
        if self.mark is not None and position is not None:
            self.mark(position)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if self.identify_gate is not None:
            await self.identify_gate(self, shard_id)
            return
        # Discord allows max_concurrency IDENTIFYs per 5 s (discord.py's default wait);
        # the local simulator has no such limit, so the interval is a setting.
        if not initial and self.identify_interval > 0:
            await asyncio.sleep(self.identify_interval)

    async def on_shard_ready(self, shard_id: int) -> None:
        self.ready_shards.add(shard_id)

    async def on_shard_resumed(self, shard_id: int) -> None:
        self.ready_shards.add(shard_id)

    async def on_message(self, message: discord.Message) -> None:
        # after a RESUME in a fresh process no guild is cached: the channel knows its guild
        guild_id = message.guild.id if message.guild is not None else None
        if guild_id is None:
            guild_id = getattr(message.channel, "guild_id", None)
        if guild_id is None or message.author.bot:
            self._acknowledge()
            return
        author = message.author
        ids = (message.id, message.channel.id, author.id)
        if guild_id > MAX_ID or max(ids) > MAX_ID:
            self._refuse("message", guild_id, *ids)
            return
        content = message.content
        event = MessageCreated(
            *ids,
            tuple(sorted(role_ids(author))),  # for the features (honeypot)
            staff(author),  # the honeypot spares them
            len(content.split()),
            len(content),
            message.created_at.timestamp(),
        )
        self._handled(guild_id, event)

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        if (payload.guild_id or 0) > MAX_ID or payload.message_id > MAX_ID:
            self._refuse("message delete", payload.guild_id, payload.message_id)
            return
        self._handled(payload.guild_id, MessageDeleted(payload.message_id, time.time()))

    async def on_raw_member_ban(self, ban: RawBan) -> None:
        # raw (see discordpy.RawBan): on_member_ban never fires for an uncached guild
        if ban.guild_id > MAX_ID or ban.user_id > MAX_ID:
            self._refuse("ban", ban.guild_id, ban.user_id)
        elif self.recent.first_time(("ban", ban.guild_id, ban.user_id)):
            self._handled(ban.guild_id, MemberBanned(ban.user_id, time.time()))
        else:
            self._acknowledge()

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        # not stored: shown to the features (the reactji channeler) by the owning pod
        if payload.guild_id is None or (payload.member is not None and payload.member.bot):
            self._acknowledge()
            return
        if max(payload.guild_id, payload.message_id, payload.channel_id, payload.user_id) > MAX_ID:
            self._refuse("reaction", payload.guild_id, payload.message_id, payload.user_id)
            return
        emoji = payload.emoji
        key = f"{emoji.name}:{emoji.id}" if emoji.id else str(emoji.name)
        event = ReactionAdded(
            payload.message_id, payload.channel_id, payload.user_id, key, time.time()
        )
        self._handled(payload.guild_id, event)

    async def on_raw_audit_log_entry(self, data: dict[str, Any]) -> None:
        # kicks, timeouts, bans with executor and reason (features/modlog.py)
        event = audit_event(data)
        guild = data.get("guild_id")
        if event is None or not (
            isinstance(guild, str) and guild.isascii() and guild.isdigit() and int(guild) <= MAX_ID
        ):
            self._acknowledge()
            return
        self._handled(int(guild), event)

    async def on_raw_member_remove(self, payload: discord.RawMemberRemoveEvent) -> None:
        if payload.guild_id > MAX_ID or payload.user.id > MAX_ID:
            self._refuse("member remove", payload.guild_id, payload.user.id)
        elif self.recent.first_time(("leave", payload.guild_id, payload.user.id)):
            self._handled(payload.guild_id, MemberLeft(payload.user.id, time.time()))
        else:
            self._acknowledge()


class CommandClient(discord.Client):
    """REST-only client with mod-bot's commands; see :func:`build_commands`."""

    def __init__(self, store: GuildStore) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # nothing is received (no gateway); this only silences a warning
        super().__init__(intents=intents)
        self.store = store
        self.tree = build_commands(self, store)


def build_commands(client: discord.Client, store: GuildStore) -> app_commands.CommandTree[Any]:
    tree: app_commands.CommandTree[Any] = app_commands.CommandTree(client)

    @tree.command(name="setup", description="Choose the moderator role and the mod-log channel")
    @app_commands.describe(
        moderator_role="role whose members moderate", mod_log="channel that receives reports"
    )
    @app_commands.default_permissions(administrator=True)
    @app_commands.guild_only()
    async def setup(
        interaction: discord.Interaction,
        moderator_role: discord.Role,
        mod_log: app_commands.AppCommandChannel,
    ) -> None:
        assert interaction.guild_id is not None
        if not interaction.permissions.administrator:
            await interaction.response.send_message(
                "Only administrators can run `/setup`.", ephemeral=True
            )
            return
        settings = {
            "moderator_role": str(moderator_role.id),
            "mod_log": str(mod_log.id),
            "set_by": str(interaction.user.id),
        }
        await store.save_settings(interaction.guild_id, settings)
        await interaction.response.send_message(
            f"Setup saved: moderators are <@&{moderator_role.id}>, reports go to <#{mod_log.id}>.",
            ephemeral=True,
        )

    @tree.command(name="modreport", description="Reports and recent moderation actions for a user")
    @app_commands.describe(user="the member to look up")
    @app_commands.guild_only()
    async def modreport(interaction: discord.Interaction, user: discord.User) -> None:
        assert interaction.guild_id is not None
        if await store.settings(interaction.guild_id) is None:
            await interaction.response.send_message(NOT_SET_UP, ephemeral=True)
            return
        report = await store.user_report(interaction.guild_id, user.id)
        actions = ", ".join(
            f"{a['type']}" + (f" ({a['reason']})" if a["reason"] else "")
            for a in report["recent_actions"]
        )
        await interaction.response.send_message(
            f"<@{user.id}>: {report['reports']} report(s); recent actions: {actions or 'none'}.",
            ephemeral=True,
        )

    @tree.context_menu(name="Report")
    @app_commands.guild_only()
    async def report(interaction: discord.Interaction, message: discord.Message) -> None:
        assert interaction.guild_id is not None
        settings = await store.settings(interaction.guild_id)
        if settings is None:
            await interaction.response.send_message(NOT_SET_UP, ephemeral=True)
            return
        fresh = await store.add_report(
            interaction.guild_id,
            interaction.user.id,
            message.author.id,
            message.id,
            message.channel.id,
            "user report",
            message.content,
        )
        if not fresh:
            await interaction.response.send_message(
                "You already reported this message.", ephemeral=True
            )
            return
        mod_log = client.get_partial_messageable(
            int(settings["mod_log"]), guild_id=interaction.guild_id
        )
        try:
            await mod_log.send(
                # anonymous, as mod-bot's: the reporter is stored (one report per message
                # each) but never shown to the moderators
                f"Anonymous report about <@{message.author.id}>'s message {message.id}: {message.content[:500]}",
                allowed_mentions=discord.AllowedMentions.none(),  # the member's text: no pings
            )
        except Exception:  # the moderators were not told: the member may report it again
            await store.remove_report(
                interaction.guild_id, interaction.user.id, message.id, "user report"
            )
            raise
        await interaction.response.send_message(
            "Thanks: the moderators have been told.", ephemeral=True
        )

    features.install(tree, client, store)  # escalations etc.: gateway_app/features/

    @tree.error
    async def on_error(
        interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        log.warning("command failed: %s", error)
        if not interaction.response.is_done():
            await interaction.response.send_message(f"That did not work: {error}", ephemeral=True)

    return tree
