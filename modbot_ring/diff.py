"""What changes owner between two routing tables: the raw material of a plan."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .table import NoRouteError, RoutingTable

__all__ = ["OwnerChange", "TableDiff", "diff"]


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
