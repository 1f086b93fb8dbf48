"""Does this pod own guild G, or shard S, now, and if not, why not.

One answer for every part of the pod: the gate (write an event or drop it), the HTTP
handlers (serve a guild, or send 421 naming the owner this pod believes in, or 503 before
the first table), the migration API (import only what migrates *to* this pod, drop only
what it no longer owns), retention and the features (act only on owned guilds). "Now"
is the routing table the pod holds at the moment of the call (``RoutingTableClient``
swaps it in whole), never a request to the config service.

Migration fences (frozen, holding, released) are the gate's: they say whether an owned
guild is *written*, not who owns it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from modbot_ring import NoRouteError, RoutingTable

__all__ = ["GuildOwnership", "Ownership", "ShardOwnership", "TableSource", "Why", "owner_or_none"]


class TableSource(Protocol):
    """Where the current table is read from (``RoutingTableClient``): None before the first."""

    @property
    def table(self) -> RoutingTable | None: ...


class Why(enum.Enum):
    """Why a pod owns something or not."""

    OWNED = "owned by this pod"
    NO_TABLE = "no routing table yet"
    ELSEWHERE = "owned by another pod"
    NO_ROUTE = "no pod owns it (no active pods and no pin)"
    NOT_SHARDED = "the table keys by guild id: shards have no owners"
    NO_SUCH_SHARD = "the table has no such shard"


@dataclass(frozen=True, slots=True)
class GuildOwnership:
    """The verdict for one guild: ``owner`` is the pod the table names (None: no table, or
    no route), ``version`` the table's."""

    guild_id: int
    why: Why
    owner: str | None
    version: int | None

    @property
    def owned(self) -> bool:
        return self.why is Why.OWNED

    def reason(self) -> str:
        if self.why is Why.ELSEWHERE:
            return f"guild {self.guild_id} is owned by {self.owner} (table v{self.version})"
        return f"guild {self.guild_id}: {self.why.value}"


@dataclass(frozen=True, slots=True)
class ShardOwnership:
    shard_id: int
    why: Why
    owner: str | None
    version: int | None

    @property
    def owned(self) -> bool:
        return self.why is Why.OWNED


def owner_or_none(table: RoutingTable, guild_id: int) -> str | None:
    """The pod ``table`` routes the guild to; None when it has no route."""
    try:
        return str(table.owner(guild_id))
    except NoRouteError:
        return None


class Ownership:
    """This pod's ownership, read from ``tables`` at each call."""

    __slots__ = ("pod", "tables")

    def __init__(self, pod: str, tables: TableSource) -> None:
        self.pod = pod
        self.tables = tables

    def _why(self, owner: str | None) -> Why:
        if owner is None:
            return Why.NO_ROUTE
        return Why.OWNED if owner == self.pod else Why.ELSEWHERE

    def owns(self, guild_id: int) -> bool:
        """The gate asks for every gateway event: kept to one table lookup."""
        table = self.tables.table
        if table is None:
            return False
        try:
            return table.owner(guild_id) == self.pod
        except NoRouteError:
            return False

    def guild(self, guild_id: int) -> GuildOwnership:
        table = self.tables.table
        if table is None:
            return GuildOwnership(guild_id, Why.NO_TABLE, None, None)
        owner = owner_or_none(table, guild_id)
        why = self._why(owner)
        return GuildOwnership(guild_id, why, owner, table.version)

    def migrating_here(self, guild_id: int) -> bool:
        """The table moves the guild to this pod (it listens before the flip)."""
        table = self.tables.table
        return table is not None and table.migrating.get(guild_id) == self.pod

    def migrating(self, guild_id: int) -> bool:
        """The table has a migration of the guild under way (to any pod)."""
        table = self.tables.table
        return table is not None and guild_id in table.migrating

    def shard_of(self, guild_id: int) -> int | None:
        """The guild's shard in the current table (None: no table, or keyed by guild id)."""
        table = self.tables.table
        if table is None or table.shard_count is None:
            return None
        return (guild_id >> 22) % table.shard_count

    def shard(self, shard_id: int) -> ShardOwnership:
        """Who owns a shard (shard-keyed tables; shard pin or ring). Sessions are another
        matter: a pod also listens on the shards of guilds pinned or migrating to it
        (``RoutingTable.shards_for``)."""
        table = self.tables.table
        if table is None:
            return ShardOwnership(shard_id, Why.NO_TABLE, None, None)
        if table.shard_count is None:
            return ShardOwnership(shard_id, Why.NOT_SHARDED, None, table.version)
        try:
            owner = table.shard_owner(shard_id)
        except ValueError:
            return ShardOwnership(shard_id, Why.NO_SUCH_SHARD, None, table.version)
        why = self._why(owner)
        return ShardOwnership(shard_id, why, owner, table.version)

    def owns_shard(self, shard_id: int) -> bool:
        return self.shard(shard_id).owned
