"""What the store returns: frozen records, one per kind of row, each with the JSON the API
answers with (``to_json``). A record is read once from its row and never changes; a
newer state is a new read."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from modbot_ring import Pod, PodState

__all__ = [
    "MIGRATION_COLUMNS",
    "POD_COLUMNS",
    "AuditEntry",
    "MigrationRecord",
    "PinRecord",
    "PlanRecord",
    "PodRecord",
    "StartedMigration",
    "TableChange",
]

POD_COLUMNS = "name, url, weight, state, online, last_heartbeat, registered_at, load"
MIGRATION_COLUMNS = (
    "id, plan_id, guild_id, shard, source, target, state, epoch, created_at, updated_at, detail"
)


@dataclass(frozen=True)
class PodRecord:
    """A registered pod: the operator's intent, its liveness and its last load report."""

    name: str
    url: str | None
    weight: float
    state: str  # active | draining (the operator's intent)
    online: bool  # heartbeats arriving (liveness)
    last_heartbeat: float | None
    registered_at: float
    load: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> PodRecord:
        """A row of ``SELECT {POD_COLUMNS} FROM pods``."""
        name, url, weight, state, online, heartbeat, registered, load = row
        return cls(
            name,
            url,
            float(weight),
            state,
            bool(online),
            heartbeat,
            registered,
            json.loads(load) if load else None,
        )

    @property
    def table_state(self) -> PodState:
        return PodState(self.state) if self.online else PodState.OFFLINE

    def as_pod(self) -> Pod:
        """The pod as the routing table sees it."""
        return Pod(self.name, self.table_state, self.weight, self.url)

    def to_json(self, now: float) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.table_state.value
        data["intent"] = self.state
        data["heartbeat_age"] = (
            None if self.last_heartbeat is None else round(now - self.last_heartbeat, 3)
        )
        return data


@dataclass(frozen=True)
class AuditEntry:
    """One attempted change: ``outcome`` is ok or the refusal's word (``version`` None)."""

    id: int
    at: float
    actor: str
    action: str
    outcome: str
    version: int | None
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """``GET /v1/audit``'s entry: the time as UTC ISO 8601."""
        return {
            "id": self.id,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
            "actor": self.actor,
            "action": self.action,
            "outcome": self.outcome,
            "version": self.version,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class PinRecord:
    """A guild pin: the guild is routed to ``pod`` whatever the ring says."""

    guild_id: str
    pod: str
    kind: str  # hard: an operator's; soft: a move's, a drain's or a repair's
    actor: str
    reason: str
    created_at: float

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> PinRecord:
        """A row of ``guild_id, pod, kind, actor, reason, created_at`` from ``pins``."""
        guild_id, pod, kind, actor, reason, created_at = row
        return cls(guild_id, pod, kind, actor, reason, created_at)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MigrationRecord:
    """One guild's move between pods, as stored (``config_store/moves.py`` drives it).
    ``guild_id`` and ``shard`` are as the row holds them: a guild migration has no shard."""

    id: int
    plan_id: str | None
    guild_id: str | None
    shard: int | None
    source: str
    target: str
    state: str
    epoch: int
    created_at: float
    updated_at: float
    detail: dict[str, Any]  # what the steps accumulate: timings, hold_seconds, ...

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> MigrationRecord:
        """A row of ``SELECT {MIGRATION_COLUMNS} FROM migrations``."""
        mid, plan, guild, shard, source, target, state, epoch, created, updated, detail = row
        return cls(
            int(mid),
            plan,
            guild,
            shard,
            source,
            target,
            state,
            int(epoch),
            created,
            updated,
            json.loads(detail),
        )

    def started(self, version: int) -> StartedMigration:
        """This record with the table version that started it."""
        return StartedMigration(
            **{f.name: getattr(self, f.name) for f in fields(self)}, version=version
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StartedMigration(MigrationRecord):
    """What ``MigrationStore.start`` answers: the new migration and the table version
    whose change started it (``POST /v1/migrations`` shows both)."""

    version: int


@dataclass(frozen=True)
class PlanRecord:
    """A stored plan: its body (``plan``: moves, loads before and after, reason, ...)
    and where it is in its lifecycle (``config_store/store/plans.py``)."""

    id: str
    created_at: float
    base_version: int
    state: str
    actor: str
    plan: dict[str, Any]

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> PlanRecord:
        """A row of ``id, created_at, base_version, state, actor, body`` from ``plans``."""
        pid, created, base, state, actor, body = row
        return cls(pid, created, int(base), state, actor, json.loads(body))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TableChange:
    """One table version: who made it, with which action (``table_versions``)."""

    version: int
    actor: str
    action: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
