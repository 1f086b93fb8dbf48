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
4. Pods still below their floor ``(1 - epsilon) * fair_p`` (a pod that just joined)
   are filled from the most loaded pods, one unit at a time, never pushing a donor
   under its own floor or the receiver over its ceiling.

Pods report their heaviest guilds one by one and the rest as one figure per shard
(``shard_loads``), so a million guilds cost a few thousand numbers. Units moved
recently (``frozen_shards``, ``frozen_guilds``) stay put: that is the caller's cool-down.

Deterministic: ties break on unit id and pod name, so the same input gives the same plan.
"""

from __future__ import annotations

import math
from bisect import bisect_right
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


Unit = tuple[str, int, float, int]  # kind, id, load, bytes


def plan_rebalance(
    table: RoutingTable,
    guild_loads: Mapping[int, float],
    *,
    shard_loads: Mapping[int, float] | None = None,
    hard_pins: frozenset[int] | set[int] = frozenset(),
    frozen_shards: frozenset[int] | set[int] = frozenset(),
    frozen_guilds: frozenset[int] | set[int] = frozenset(),
    guild_bytes: Mapping[int, int] | None = None,
    limits: PlanLimits = PlanLimits(),
) -> Plan:
    """Plan moves that bring every active pod within ``(1 +/- epsilon) x`` its fair share.

    ``guild_loads``: load per guild (message rate; use 1.0 per guild when unknown).
    ``shard_loads``: load of each shard's guilds that ``guild_loads`` does not list
    (shard-keyed tables only); it stays with the shard.
    ``hard_pins``: pinned guilds that must not move (operator pins); other pins are soft.
    ``frozen_shards`` / ``frozen_guilds``: moved too recently to move again.
    """
    if limits.epsilon < 0:
        raise ValueError("epsilon must be >= 0")
    active = sorted(p.name for p in table.pods.values() if p.state is PodState.ACTIVE)
    if not active:
        raise ValueError("no active pods to balance over")
    count = table.shard_count
    if shard_loads and count is None:
        raise ValueError("shard_loads needs a shard-keyed table")
    weights = {p: table.pods[p].weight for p in active}
    load: dict[str, float] = dict.fromkeys(table.pods, 0.0)
    shard_load: dict[int, float] = {}
    shard_bytes: dict[int, int] = {}
    movable_guilds: dict[int, tuple[str, float]] = {}
    heaviest: dict[str, float] = dict.fromkeys(table.pods, 0.0)
    pins = table.pins
    owner_of = table.owner
    frozen = set(frozen_shards)
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
            if gid in frozen_guilds:
                frozen.add(shard)
        elif gid not in hard_pins and gid not in frozen_guilds:
            movable_guilds[gid] = (owner, value)
    for shard, value in (shard_loads or {}).items():
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"load of shard {shard} must be a finite number >= 0")
        shard_owner = table.shard_owner(shard)
        if shard_owner is None or value == 0:
            continue
        load[shard_owner] += value
        shard_load[shard] = shard_load.get(shard, 0.0) + value
    total = sum(load.values())
    weight_sum = sum(weights.values())
    fair = {p: total * weights[p] / weight_sum for p in active}
    ceiling = {p: fair[p] * (1 + limits.epsilon) for p in active}
    floor = {p: fair[p] * max(0.0, 1 - limits.epsilon) for p in active}

    units: dict[str, list[Unit]] = {p: [] for p in table.pods}
    if count is not None:
        for shard, value in shard_load.items():
            shard_owner = table.shard_owner(shard)
            if shard_owner is not None and shard not in frozen:
                units[shard_owner].append(("shard", shard, value, shard_bytes.get(shard, 0)))
    for gid, (guild_owner, value) in movable_guilds.items():
        units[guild_owner].append(("guild", gid, value, (guild_bytes or {}).get(gid, 0)))

    # pods that are not active (draining) must shed everything movable
    excess = {p: max(0.0, load[p] - ceiling[p]) if p in ceiling else load[p] for p in table.pods}
    deficit = {p: max(0.0, floor[p] - load[p]) for p in active}
    lower_bound = max(sum(excess.values()), sum(deficit.values()))
    shed: list[tuple[str, int, float, int, str]] = []
    for pod in sorted(table.pods, key=lambda p: (-excess[p], p)):
        need = excess[pod]
        if need <= 0:
            continue
        pool = sorted(units[pod], key=lambda u: (u[2], u[0], u[1]))
        # shedding may overshoot the ceiling, but not down through the floor while a
        # smaller unit can still make progress (else the fill step would undo it)
        slack = load[pod] - floor[pod] if pod in floor else math.inf
        while need > 1e-12 and pool:
            covering = next((u for u in pool if u[2] >= need), None)
            below = [u for u in pool if u[2] < need]
            if covering is not None and (covering[2] <= slack + 1e-12 or not below):
                unit = covering
            else:
                unit = below[-1] if below else pool[-1]
            pool.remove(unit)
            slack -= unit[2]
            units[pod].remove(unit)
            if unit[2] <= 0:
                continue
            shed.append((*unit, pod))
            need -= unit[2]

    after = dict(load)
    moves: list[Move] = []
    unfixable: list[str] = []
    budget = _Budget(limits.max_moves, limits.max_bytes)
    for kind, uid, value, size, source in sorted(shed, key=lambda u: (-u[2], u[0], u[1])):
        refused = budget.refuses(kind, uid, value, size, source)
        if refused:
            unfixable.append(refused)
            continue
        candidates = [p for p in active if p != source]
        if not candidates:
            unfixable.append(f"{kind} {uid} has nowhere to go")
            continue
        room = {p: ceiling[p] - after[p] for p in candidates}
        fits = [p for p in candidates if room[p] >= value]
        if fits:
            # best fit, among the pods below their floor first (shed load fills a new pod)
            hungry = [p for p in fits if after[p] < floor[p]] or fits
            target = min(hungry, key=lambda p: (room[p] - value, p))
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
        budget.spend(size)

    _fill(active, units, after, fair, floor, ceiling, moves, budget)

    for p in active:
        if after[p] < floor[p] - 1e-9:
            unfixable.append(
                f"{p} stays at {after[p] / fair[p]:.2f}x its fair share: no movable unit fits it"
            )
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


class _Budget:
    def __init__(self, moves: int | None, size: int | None) -> None:
        self.moves = moves
        self.size = size

    def refuses(self, kind: str, uid: int, value: float, size: int, source: str) -> str | None:
        if self.moves is not None and self.moves <= 0:
            return f"move limit reached: {kind} {uid} ({value:g}) stays on {source}"
        if self.size is not None and size > self.size:
            return f"byte limit reached: {kind} {uid} ({size} bytes) stays on {source}"
        return None

    def spend(self, size: int) -> None:
        if self.moves is not None:
            self.moves -= 1
        if self.size is not None:
            self.size -= size


def _fill(
    active: list[str],
    units: dict[str, list[Unit]],
    after: dict[str, float],
    fair: dict[str, float],
    floor: dict[str, float],
    ceiling: dict[str, float],
    moves: list[Move],
    budget: _Budget,
) -> None:
    """Bring pods below their floor up, taking from the most loaded pods first."""
    pools = {p: sorted(units[p], key=lambda u: (u[2], u[0], u[1])) for p in active}
    keys = {p: [u[2] for u in pool] for p, pool in pools.items()}
    for pod in sorted(active, key=lambda p: (after[p] / fair[p] if fair[p] else 1.0, p)):
        while after[pod] < floor[pod] - 1e-9:
            need = floor[pod] - after[pod]
            room = ceiling[pod] - after[pod]
            donors = sorted(
                (d for d in active if d != pod and fair[d] > 0),
                key=lambda d: (-after[d] / fair[d], d),
            )
            choice: tuple[str, int] | None = None
            for donor in donors:
                limit = min(room, after[donor] - floor[donor])
                if limit <= 0:
                    continue
                # the unit closest to the need that fits both limits
                top = bisect_right(keys[donor], limit)
                if top == 0:
                    continue
                at = bisect_right(keys[donor], need, 0, top)
                near = [j for j in (at - 1, at) if 0 <= j < top and keys[donor][j] > 0]
                if not near:
                    continue
                choice = (donor, min(near, key=lambda j: abs(keys[donor][j] - need)))
                break
            if choice is None:
                break
            donor, i = choice
            kind, uid, value, size = pools[donor][i]
            if budget.refuses(kind, uid, value, size, donor):
                return
            del pools[donor][i], keys[donor][i]
            after[donor] -= value
            after[pod] += value
            moves.append(Move(kind, uid, donor, pod, value))
            budget.spend(size)
