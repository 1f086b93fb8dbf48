"""The simulator's world: guilds, channels, roles, members, and Discord-shaped payloads.

Ids are real snowflakes (milliseconds since Discord's epoch << 22), so ``(id >> 22) % n``
spreads guilds over shards as it does on Discord.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

DISCORD_EPOCH_MS = 1420070400000
MESSAGES_KEPT = 2000  # recent messages the world remembers (context menus name one by id)
ADMINISTRATOR = 1 << 3
EVERYONE_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 16)  # view, send, read history


class Snowflakes:
    """Unique, increasing snowflakes; ``random_time`` spreads their shard bits."""

    def __init__(self, seed: int = 0) -> None:
        self.counter = 0  # the increment bits; persisted, so a reloaded world goes on from it
        self._rng = random.Random(seed)

    def next(self, *, random_time: bool = False) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        if random_time:  # a guild created some time in the last ~5 years
            ms -= self._rng.randrange(0, 5 * 365 * 86400 * 1000)
        self.counter += 1
        return (ms << 22) | (self.counter & 0x3FFFFF)


def iso(ts: float | None = None) -> str:
    t = time.time() if ts is None else ts
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}000+00:00"
    )


@dataclass
class User:
    id: int
    name: str
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
            "primary_guild": None,
        }


@dataclass
class Guild:
    id: int
    name: str
    owner: User
    channels: dict[int, str] = field(default_factory=dict)  # id -> name
    roles: dict[int, tuple[str, int]] = field(default_factory=dict)  # id -> (name, permissions)
    members: dict[int, tuple[User, list[int]]] = field(
        default_factory=dict
    )  # id -> (user, role ids)

    def role_payload(self, role_id: int) -> dict[str, Any]:
        name, perms = self.roles[role_id]
        return {
            "id": str(role_id),
            "name": name,
            "permissions": str(perms),
            "position": 0 if role_id == self.id else 1,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }

    def channel_payload(self, channel_id: int) -> dict[str, Any]:
        return {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(self.id),
            "name": self.channels[channel_id],
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }

    def member_payload(self, user_id: int) -> dict[str, Any]:
        user, roles = self.members[user_id]
        return {
            "user": user.payload(),
            "roles": [str(r) for r in roles],
            "joined_at": iso(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "communication_disabled_until": None,
        }

    def permissions_of(self, user_id: int) -> int:
        if user_id == self.owner.id:
            return (1 << 41) - 1
        perms = self.roles[self.id][1]
        for role_id in self.members[user_id][1]:
            perms |= self.roles[role_id][1]
        return perms

    def create_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.owner.id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [self.role_payload(r) for r in self.roles],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "joined_at": iso(),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "members": [self.member_payload(m) for m in self.members],
            "channels": [self.channel_payload(c) for c in self.channels],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def summary(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "owner_id": str(self.owner.id),
            "channels": {str(c): n for c, n in self.channels.items()},
            "roles": {str(r): n for r, (n, _) in self.roles.items()},
            "members": {str(m): u.name for m, (u, _) in self.members.items()},
        }


class World:
    def __init__(self, application_id: int, seed: int = 0) -> None:
        self.ids = Snowflakes(seed)
        self.application_id = application_id
        self.bot = User(application_id, "mod-bot", bot=True)
        self.guilds: dict[int, Guild] = {}
        # interaction token -> (channel id, message type of its response), newest last, so
        # webhook answers name the interaction's channel; bounded like Discord's 15 min tokens
        self.interaction_channels: dict[str, tuple[int, int]] = {}
        # message id -> (guild, channel, author, content, timestamp): the newest
        # MESSAGES_KEPT, so a message context menu can name a message that was sent
        self.messages: OrderedDict[int, tuple[int, int, int, str, str]] = OrderedDict()

    def create_guild(
        self,
        name: str,
        *,
        guild_id: int | None = None,
        members: int = 3,
        channels: tuple[str, ...] = ("general", "mod-log"),
    ) -> Guild:
        if guild_id is not None and guild_id in self.guilds:
            raise ValueError(f"guild {guild_id} exists")
        gid = guild_id or self.ids.next(random_time=True)
        owner = User(self.ids.next(), f"{name}-owner")
        guild = Guild(gid, name, owner)
        guild.roles[gid] = ("@everyone", EVERYONE_PERMISSIONS)
        mod_role = self.ids.next()
        guild.roles[mod_role] = ("Moderators", EVERYONE_PERMISSIONS | (1 << 2) | (1 << 13))
        for channel in channels:
            guild.channels[self.ids.next()] = channel
        guild.members[owner.id] = (owner, [])
        guild.members[self.bot.id] = (self.bot, [])
        for i in range(members):
            user = User(self.ids.next(), f"{name}-member-{i}")
            guild.members[user.id] = (user, [mod_role] if i == 0 else [])
        self.guilds[gid] = guild
        return guild

    def guild(self, guild_id: int) -> Guild:
        try:
            return self.guilds[guild_id]
        except KeyError:
            raise KeyError(f"no guild {guild_id} in the simulator") from None

    def remember(self, message: dict[str, Any]) -> None:
        """Keep a sent message (the newest MESSAGES_KEPT), as Discord keeps channel history."""
        self.messages[int(message["id"])] = (
            int(message["guild_id"]),
            int(message["channel_id"]),
            int(message["author"]["id"]),
            str(message["content"]),
            str(message["timestamp"]),
        )
        while len(self.messages) > MESSAGES_KEPT:
            self.messages.popitem(last=False)

    def stored_message(self, message_id: int) -> tuple[Guild, dict[str, Any]] | None:
        """A remembered message and its guild, in the REST shape (no ``guild_id``/``member``:
        what ``resolved.messages`` of a message command carries)."""
        entry = self.messages.get(message_id)
        if entry is None or entry[0] not in self.guilds:
            return None
        guild_id, channel_id, author_id, content, timestamp = entry
        guild = self.guilds[guild_id]
        payload = self.message(
            guild, channel_id, author_id, content, message_id=message_id, timestamp=timestamp
        )
        payload.pop("guild_id")
        payload.pop("member", None)
        return guild, payload

    # -- event payloads ----------------------------------------------------------------------

    def message(
        self,
        guild: Guild,
        channel_id: int,
        author_id: int,
        content: str,
        *,
        message_id: int | None = None,
        timestamp: str | None = None,
    ) -> dict[str, Any]:
        """A MESSAGE_CREATE payload (the REST shape plus ``guild_id`` and ``member``)."""
        extra: dict[str, Any] = {}
        if author_id in guild.members:
            user, _roles = guild.members[author_id]
            member = guild.member_payload(author_id)
            member.pop("user")
            extra["member"] = member
        else:  # the author left the guild since: Discord still shows the user
            user = User(author_id, "deleted-user")
        return {
            "id": str(message_id or self.ids.next()),
            "channel_id": str(channel_id),
            "guild_id": str(guild.id),
            "author": user.payload(),
            **extra,
            "content": content,
            "timestamp": timestamp or iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }

    def interaction(
        self,
        guild: Guild,
        user_id: int,
        name: str,
        *,
        kind: int = 1,
        options: dict[str, Any] | None = None,
        target_message: dict[str, Any] | None = None,
        channel_id: int | None = None,
    ) -> dict[str, Any]:
        """An APPLICATION_COMMAND interaction: slash (kind 1) or message context menu (kind 3)."""
        channel_id = channel_id or next(iter(guild.channels))
        resolved: dict[str, dict[str, Any]] = {}
        opts = []
        for opt_name, value in (options or {}).items():
            kind_of, raw = value
            if kind_of == "role":
                resolved.setdefault("roles", {})[str(raw)] = guild.role_payload(int(raw))
                opts.append({"name": opt_name, "type": 8, "value": str(raw)})
            elif kind_of == "channel":
                payload = guild.channel_payload(int(raw))
                payload["permissions"] = str((1 << 41) - 1)
                resolved.setdefault("channels", {})[str(raw)] = payload
                opts.append({"name": opt_name, "type": 7, "value": str(raw)})
            elif kind_of == "user":
                target, _ = guild.members[int(raw)]
                resolved.setdefault("users", {})[str(raw)] = target.payload()
                member = guild.member_payload(int(raw))
                member.pop("user")
                member["permissions"] = str(guild.permissions_of(int(raw)))
                resolved.setdefault("members", {})[str(raw)] = member
                opts.append({"name": opt_name, "type": 6, "value": str(raw)})
            else:
                opts.append({"name": opt_name, "type": 3, "value": str(raw)})
        data: dict[str, Any] = {"id": str(self.ids.next()), "name": name, "type": kind}
        if opts:
            data["options"] = opts
        if target_message is not None:
            data["target_id"] = target_message["id"]
            resolved.setdefault("messages", {})[target_message["id"]] = target_message
        if resolved:
            data["resolved"] = resolved
        member = guild.member_payload(user_id)
        member["permissions"] = str(guild.permissions_of(user_id))
        interaction_id = self.ids.next()
        if len(self.interaction_channels) >= 10_000:
            del self.interaction_channels[next(iter(self.interaction_channels))]
        self.interaction_channels[f"itok-{interaction_id}"] = (channel_id, 20 if kind == 1 else 23)
        return {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": 2,
            "data": data,
            "guild_id": str(guild.id),
            "guild": {"id": str(guild.id), "locale": "en-US", "features": []},
            "channel_id": str(channel_id),
            "channel": guild.channel_payload(channel_id),
            "member": member,
            "token": f"itok-{interaction_id}",
            "version": 1,
            "app_permissions": str((1 << 41) - 1),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": 8388608,
        }


IDENTIFY_WINDOW = 5.0  # seconds: Discord's max_concurrency is "IDENTIFYs per 5 seconds"


class IdentifyLimits:
    """The bot's IDENTIFY budget, enforced as Discord documents it (GET /gateway/bot).

    * ``total`` session starts per ``reset_seconds`` window (1,000 a day for most bots);
      RESUMEs do not count. The window starts with its first IDENTIFY.
    * ``max_concurrency`` buckets (``shard_id % max_concurrency``), each allowing one
      IDENTIFY per 5 seconds.

    ``check`` answers whether an IDENTIFY may start now; ``take`` spends one.
    """

    def __init__(
        self,
        *,
        total: int = 1000,
        max_concurrency: int = 1,
        reset_seconds: float = 86400.0,
        window: float = IDENTIFY_WINDOW,
        clock: Any = time.monotonic,
    ) -> None:
        if total < 0 or max_concurrency < 1 or reset_seconds <= 0 or window < 0:
            raise ValueError(
                "session start limits: total >= 0, max_concurrency >= 1, reset > 0, window >= 0"
            )
        self.total = total
        self.max_concurrency = max_concurrency
        self.reset_seconds = reset_seconds
        self.window = window
        self.clock = clock
        self.used = 0
        self.reset_at: float | None = None  # end of the current window, once it started
        self.last_in_bucket: dict[int, float] = {}

    def _roll(self) -> None:
        if self.reset_at is not None and self.clock() >= self.reset_at:
            self.used, self.reset_at = 0, None

    @property
    def remaining(self) -> int:
        self._roll()
        return max(0, self.total - self.used)

    def reset_after_ms(self) -> int:
        self._roll()
        if self.reset_at is None:
            return 0
        return max(0, int((self.reset_at - self.clock()) * 1000))

    def payload(self) -> dict[str, int]:
        return {
            "total": self.total,
            "remaining": self.remaining,
            "reset_after": self.reset_after_ms(),
            "max_concurrency": self.max_concurrency,
        }

    def bucket(self, shard_id: int) -> int:
        return shard_id % self.max_concurrency

    def check(self, shard_id: int) -> str | None:
        """None if an IDENTIFY of ``shard_id`` may start now, else why not
        (``"exhausted"`` or ``"concurrency"``)."""
        if self.remaining <= 0:
            return "exhausted"
        last = self.last_in_bucket.get(self.bucket(shard_id))
        if last is not None and self.clock() - last < self.window:
            return "concurrency"
        return None

    def take(self, shard_id: int) -> None:
        self._roll()
        now = self.clock()
        if self.reset_at is None:
            self.reset_at = now + self.reset_seconds
        self.used += 1
        self.last_in_bucket[self.bucket(shard_id)] = now

    def set(
        self,
        *,
        remaining: int | None = None,
        reset_after: float | None = None,
        max_concurrency: int | None = None,
        total: int | None = None,
    ) -> None:
        """Operator/test control: jump to a given budget (``reset_after`` in seconds)."""
        if total is not None:
            if total < 0:
                raise ValueError("total must be >= 0")
            self.total = total
        if max_concurrency is not None:
            if max_concurrency < 1:
                raise ValueError("max_concurrency must be >= 1")
            self.max_concurrency = max_concurrency
            self.last_in_bucket.clear()
        if remaining is not None:
            if not 0 <= remaining <= self.total:
                raise ValueError(f"remaining must be 0..{self.total}")
            self.used = self.total - remaining
            if self.reset_at is None:
                self.reset_at = self.clock() + self.reset_seconds
        if reset_after is not None:
            if reset_after < 0:
                raise ValueError("reset_after must be >= 0")
            self.reset_at = self.clock() + reset_after
