"""Load-aware rebalancing plans: which shards (or guilds) to move so no pod runs hot.

The goal, per pod ``p`` with capacity weight ``w_p``: load ``<= (1 + epsilon) * fair_p``
where ``fair_p = total * w_p / sum(w)``. The lower bound on what must move is the sum of
each pod's excess over that ceiling; the planner moves close to it:

1. Units of movement are shards (in shard-keyed tables: the load of their unpinned
   guilds, so the Discord session moves with them) or guilds (guild-keyed tables, or
   soft-pinned guilds). Hard pins never move; soft pins may.
2. Each overloaded pod sheds its excess, choosing units so as to overshoot as little as
   possible: while excess remains, take the smallest unit that covers it if one exists,
   else the largest unit below it.
3. Shed units go, heaviest first, to the pod with the most room below its ceiling
   (best fit). A unit heavier than any pod's room goes to the emptiest pod and is
   reported: it cannot be fixed by moving, only by a dedicated pod.

Deterministic: ties break on unit id and pod name, so the same input gives the same plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .snowflake import shard_for
from .table import PodState, RoutingTable

__all__ = ["Move", "Plan", "PlanLimits", "plan_rebalance"]


@dataclass(frozen=True, slots=True)
class Move:
    kind: str  # "shard" or "guild"
    id: int
    source: str
    target: str
    load: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": str(self.id),
            "from": self.source,
            "to": self.target,
            "load": self.load,
        }


@dataclass(frozen=True)
class PlanLimits:
    epsilon: float = 0.05
    max_moves: int | None = None
    max_bytes: int | None = None


@dataclass
class Plan:
    base_version: int
    moves: list[Move]
    before: dict[str, float]
    after: dict[str, float]
    fair: dict[str, float]
    moved_load: float
    lower_bound: float
    unfixable: list[str] = field(default_factory=list)
    epsilon: float = 0.05

    @property
    def peak_to_mean(self) -> float:
        """Worst load / fair-share ratio after the plan."""
        return max((self.after[p] / f for p, f in self.fair.items() if f > 0), default=1.0)

    @property
    def peak_to_mean_before(self) -> float:
        return max((self.before[p] / f for p, f in self.fair.items() if f > 0), default=1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "base_version": self.base_version,
            "epsilon": self.epsilon,
            "moves": [m.to_dict() for m in self.moves],
            "before": self.before,
            "after": self.after,
            "fair": self.fair,
            "moved_load": self.moved_load,
            "lower_bound": self.lower_bound,
            "peak_to_mean_before": round(self.peak_to_mean_before, 4),
            "peak_to_mean_after": round(self.peak_to_mean, 4),
            "unfixable": self.unfixable,
        }


def plan_rebalance(
    table: RoutingTable,
    guild_loads: Mapping[int, float],
    *,
    hard_pins: frozenset[int] | set[int] = frozenset(),
    guild_bytes: Mapping[int, int] | None = None,
    limits: PlanLimits = PlanLimits(),
) -> Plan:
    """Plan moves that bring every active pod under ``(1 + epsilon) x`` its fair share.

    ``guild_loads``: load per guild (message rate; use 1.0 per guild when unknown).
    ``hard_pins``: pinned guilds that must not move (operator pins); other pins are soft.
    """
    if limits.epsilon < 0:
        raise ValueError("epsilon must be >= 0")
    active = sorted(p.name for p in table.pods.values() if p.state is PodState.ACTIVE)
    if not active:
        raise ValueError("no active pods to balance over")
    weights = {p: table.pods[p].weight for p in active}
    load: dict[str, float] = dict.fromkeys(table.pods, 0.0)
    shard_load: dict[int, float] = {}
    shard_bytes: dict[int, int] = {}
    movable_guilds: dict[int, tuple[str, float]] = {}
    heaviest: dict[str, float] = dict.fromkeys(table.pods, 0.0)
    pins = table.pins
    count = table.shard_count
    owner_of = table.owner
    for gid, value in guild_loads.items():
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"load of guild {gid} must be a finite number >= 0")
        owner = owner_of(gid)
        load[owner] += value
        if value > heaviest[owner]:
            heaviest[owner] = value
        pinned = gid in pins
        if count is not None and not pinned:
            shard = shard_for(gid, count)
            shard_load[shard] = shard_load.get(shard, 0.0) + value
            if guild_bytes:
                shard_bytes[shard] = shard_bytes.get(shard, 0) + guild_bytes.get(gid, 0)
        elif gid not in hard_pins:
            movable_guilds[gid] = (owner, value)
    total = sum(load.values())
    weight_sum = sum(weights.values())
    fair = {p: total * weights[p] / weight_sum for p in active}
    ceiling = {p: fair[p] * (1 + limits.epsilon) for p in active}

    # units by owner: (kind, id, load, bytes)
    units: dict[str, list[tuple[str, int, float, int]]] = {p: [] for p in table.pods}
    if count is not None:
        for shard, value in shard_load.items():
            shard_owner = table.shard_owner(shard)
            if shard_owner is not None:
                units[shard_owner].append(("shard", shard, value, shard_bytes.get(shard, 0)))
    for gid, (guild_owner, value) in movable_guilds.items():
        units[guild_owner].append(("guild", gid, value, (guild_bytes or {}).get(gid, 0)))

    # pods that are not active (draining) must shed everything movable
    excess = {p: max(0.0, load[p] - ceiling[p]) if p in ceiling else load[p] for p in table.pods}
    lower_bound = sum(excess.values())
    shed: list[tuple[str, int, float, int, str]] = []
    for pod in sorted(table.pods, key=lambda p: (-excess[p], p)):
        need = excess[pod]
        if need <= 0:
            continue
        pool = sorted(units[pod], key=lambda u: (u[2], u[0], u[1]))
        while need > 1e-12 and pool:
            covering = next((u for u in pool if u[2] >= need), None)
            unit = covering if covering is not None else pool[-1]
            pool.remove(unit)
            if unit[2] <= 0:
                continue
            shed.append((*unit, pod))
            need -= unit[2]

    after = dict(load)
    moves: list[Move] = []
    unfixable: list[str] = []
    budget_moves = limits.max_moves
    budget_bytes = limits.max_bytes
    for kind, uid, value, size, source in sorted(shed, key=lambda u: (-u[2], u[0], u[1])):
        if budget_moves is not None and len(moves) >= budget_moves:
            unfixable.append(
                f"move limit {budget_moves} reached: {kind} {uid} ({value:g}) stays on {source}"
            )
            continue
        if budget_bytes is not None and size > budget_bytes:
            unfixable.append(f"byte limit reached: {kind} {uid} ({size} bytes) stays on {source}")
            continue
        candidates = [p for p in active if p != source]
        if not candidates:
            unfixable.append(f"{kind} {uid} has nowhere to go")
            continue
        room = {p: ceiling[p] - after[p] for p in candidates}
        fits = [p for p in candidates if room[p] >= value]
        if fits:
            target = min(fits, key=lambda p: (room[p] - value, p))  # best fit
        else:
            target = max(candidates, key=lambda p: (room[p], p))
            if after[target] + value >= after[source]:
                unfixable.append(
                    f"{kind} {uid} (load {value:g}) is heavier than any pod's headroom: "
                    f"it stays on {source}; give it a dedicated pod"
                )
                continue
            unfixable.append(
                f"{kind} {uid} (load {value:g}) does not fit under any pod's ceiling; moved to the emptiest pod {target}"
            )
        after[source] -= value
        after[target] += value
        moves.append(Move(kind, uid, source, target, value))
        if budget_bytes is not None:
            budget_bytes -= size
    for p in active:
        if heaviest[p] > ceiling[p]:
            unfixable.append(
                f"a guild on {p} alone exceeds a pod's ceiling ({ceiling[p]:g}): pin it to a dedicated pod"
            )
    return Plan(
        base_version=table.version,
        moves=moves,
        before={p: load[p] for p in sorted(load)},
        after={p: after[p] for p in sorted(after)},
        fair=fair,
        moved_load=sum(m.load for m in moves),
        lower_bound=lower_bound,
        unfixable=unfixable,
        epsilon=limits.epsilon,
    )
