"""The pods' load reports (sent with heartbeats), merged into one cluster-wide view.

Each pod reports its heaviest guilds one by one, the rest as one figure per shard, and
approximate SQLite bytes for the heavy guilds. Rates are exponentially decayed counters,
so summing what every pod reports is right even mid-move: the old owner's rate decays as
the new owner's grows, and the two add up to the guild's real rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .store import PodRecord


@dataclass
class ClusterLoad:
    guilds: dict[int, float] = field(default_factory=dict)
    shards: dict[int, float] = field(default_factory=dict)
    rest: dict[str, float] = field(default_factory=dict)  # pod -> load it could not attribute
    guild_bytes: dict[int, int] = field(default_factory=dict)
    db_bytes: dict[str, int] = field(default_factory=dict)
    reported_at: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.guilds.values()) + sum(self.shards.values()) + sum(self.rest.values())


def _rate(value: Any) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        return 0.0
    return rate if math.isfinite(rate) and rate > 0 else 0.0


def collect(records: Iterable[PodRecord]) -> ClusterLoad:
    """Merge the latest report of every online pod (reports are validated loosely: a
    malformed entry counts as zero rather than failing the whole view)."""
    cluster = ClusterLoad()
    for record in records:
        report = record.load
        if not record.online or not isinstance(report, dict):
            continue
        for gid, rate in (report.get("guilds") or {}).items():
            if str(gid).isdigit():
                cluster.guilds[int(gid)] = cluster.guilds.get(int(gid), 0.0) + _rate(rate)
        for gid, size in (report.get("bytes") or {}).items():
            if str(gid).isdigit() and isinstance(size, int):
                cluster.guild_bytes[int(gid)] = max(cluster.guild_bytes.get(int(gid), 0), size)
        for shard, rate in (report.get("shards") or {}).items():
            if str(shard).isdigit():
                cluster.shards[int(shard)] = cluster.shards.get(int(shard), 0.0) + _rate(rate)
        rest = _rate(report.get("rest"))
        if rest:
            cluster.rest[record.name] = rest
        if isinstance(report.get("db_bytes"), int):
            cluster.db_bytes[record.name] = report["db_bytes"]
        if isinstance(report.get("at"), int | float):
            cluster.reported_at[record.name] = float(report["at"])
    return cluster
