"""What changes owner between two routing tables: the raw material of a plan."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .snowflake import parse_guild_id, shard_for
from .table import NoRouteError, RoutingTable

__all__ = ["Handoff", "OwnerChange", "TableDiff", "diff", "route_during"]


@dataclass(frozen=True, slots=True)
class OwnerChange:
    old: str | None
    new: str | None


@dataclass(frozen=True)
class TableDiff:
    """Owner changes from ``old`` to ``new``.

    ``shards``: shards whose owner changes (shard-keyed tables with equal shard counts).
    ``guilds``: guilds pinned in either table whose owner changes. Unpinned guilds of a
    guild-keyed table cannot be listed (the table does not know every guild id): ask
    :meth:`owner_changes` about the ids you hold; ``moved_fraction`` says how much of the
    key space changes hands.
    """

    old: RoutingTable
    new: RoutingTable
    shards: Mapping[int, OwnerChange] = field(default_factory=dict)
    guilds: Mapping[int, OwnerChange] = field(default_factory=dict)
    moved_fraction: float = 0.0
    resharded: bool = False

    def owner_changes(self, guild_ids: Iterable[int]) -> dict[int, OwnerChange]:
        """Owner changes for the given (parsed) guild ids."""
        changes = {}
        for gid in guild_ids:
            before, after = _owner(self.old, gid), _owner(self.new, gid)
            if before != after:
                changes[gid] = OwnerChange(before, after)
        return changes

    @property
    def empty(self) -> bool:
        return not (self.shards or self.guilds or self.moved_fraction or self.resharded)


def diff(old: RoutingTable, new: RoutingTable) -> TableDiff:
    """Which shards and pinned guilds change owner, and what share of keys moves."""
    resharded = old.shard_count != new.shard_count
    shards: dict[int, OwnerChange] = {}
    moved = 0.0
    if not resharded and old.shard_count is not None:
        for shard in range(old.shard_count):
            before, after = old.shard_owner(shard), new.shard_owner(shard)
            if before != after:
                shards[shard] = OwnerChange(before, after)
        moved = len(shards) / old.shard_count
    elif resharded:
        moved = 1.0
    else:
        moved = old.ring.moved_fraction(new.ring)
    guilds = {}
    for gid in old.pins.keys() | new.pins.keys():
        before, after = _owner(old, gid), _owner(new, gid)
        if before != after:
            guilds[gid] = OwnerChange(before, after)
    return TableDiff(old, new, shards, dict(sorted(guilds.items())), moved, resharded)


def _owner(table: RoutingTable, gid: int) -> str | None:
    try:
        return table.owner(gid)
    except NoRouteError:
        return None


@dataclass(frozen=True, slots=True)
class Handoff:
    """Where a guild may be served while the cluster moves from ``old`` to ``new``.

    ``owners`` lists every pod that may hold the guild's data or receive its events
    right now, old generation first: the old owner, the new owner and, for a guild
    being migrated in either table, the migration target. Callers that need the
    handoff view (read the old owner's copy until the new one confirms; deliver to
    both and let the owner filter) use it; everything else routes by ``new.owner``.
    """

    guild_id: int
    old: str | None
    new: str | None
    target: str | None
    migrating: bool

    @property
    def owners(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for p in (self.old, self.new, self.target) if p))

    @property
    def moving(self) -> bool:
        """True when more than one pod may hold the guild, or a migration is marked."""
        return self.migrating or len(self.owners) > 1


def route_during(old: RoutingTable, new: RoutingTable, guild_id: int | str) -> Handoff:
    """The handoff view of one guild between two table generations.

    Like a look-up in the previous generation of a ring during a handoff: the answer
    names the old generation's owner and the new one's (and a migration's target),
    so a caller can reach whichever holds the data. Raises ``InvalidGuildId`` for a
    bad id and ``ValueError`` when ``old`` is newer than ``new`` (swapped arguments).
    """
    if old.version > new.version:
        raise ValueError(
            f"route_during(old, new): old is version {old.version}, newer than {new.version}"
        )
    gid = parse_guild_id(guild_id)
    target = new.migrating.get(gid) or old.migrating.get(gid)
    marked = target is not None
    for table in (old, new):
        if table.shard_count is not None:
            marked = marked or shard_for(gid, table.shard_count) in table.migrating_shards
    return Handoff(gid, _owner(old, gid), _owner(new, gid), target, marked)
