"""When to rebalance: a load view over the table, a skew detector with hold-down and
hysteresis, and the scale-out and dedicated-pod recommendations.

Pure, like the rest of the library, so a control plane, a dashboard and a simulation all
reach the same decision from the same numbers.

Skew is ``1 + max |load_p / fair_p - 1|`` over active pods: it sees a hot pod (1.4 when
one pod runs at 1.4x its share) and an idle one (2.0 for a pod that just joined and
carries nothing). The imbalance ratio reported to operators is the classic peak/mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from .snowflake import shard_for
from .table import NoRouteError, PodState, RoutingTable

__all__ = [
    "BalancePolicy",
    "HotGuild",
    "LoadView",
    "SkewDetector",
    "SkewState",
    "can_improve",
    "measure",
    "why_not_plan",
]


@dataclass(frozen=True)
class BalancePolicy:
    """The knobs of the decision loop; the defaults are the documented ones."""

    threshold: float = 1.25  # skew above this, for hold_down seconds, asks for a plan
    clear: float = 1.15  # skew below this ends a skewed period (hysteresis band)
    hold_down: float = 300.0
    cooldown: float = 3600.0  # a unit that moved does not move again for this long
    target_epsilon: float = 0.10  # plans aim at +/- 10% of the fair share
    capacity: float = 0.0  # events/s a pod is sized for; 0: no scale-out advice
    move_budget_per_hour: int = 20
    # mean events/s per active pod under which the stack is idle: skew among a few
    # events is noise, and moving guilds for it is churn
    min_load: float = 1.0

    def __post_init__(self) -> None:
        if not 1.0 <= self.clear <= self.threshold:
            raise ValueError("need 1 <= clear <= threshold")
        if self.target_epsilon < 0 or 1 + self.target_epsilon > self.clear:
            raise ValueError("target_epsilon must be >= 0 and land plans below the clear level")
        if self.hold_down < 0 or self.cooldown < 0 or self.capacity < 0 or self.min_load < 0:
            raise ValueError("hold_down, cooldown, capacity and min_load must be >= 0")
        if self.move_budget_per_hour < 0:
            raise ValueError("move_budget_per_hour must be >= 0")


@dataclass(frozen=True)
class HotGuild:
    guild_id: int
    pod: str
    load: float
    share: float  # load / the pod's fair share


@dataclass(frozen=True)
class LoadView:
    """Load per pod, attributed through the table (so a flip moves load at once)."""

    loads: dict[str, float]
    fair: dict[str, float]  # active pods only
    hot: tuple[HotGuild, ...]

    @property
    def total(self) -> float:
        return sum(self.loads.values())

    @property
    def mean(self) -> float:
        return self.total / len(self.fair) if self.fair else 0.0

    @property
    def imbalance(self) -> float:
        """Peak load / fair share (1.0 when perfectly even or idle)."""
        return max((self.loads[p] / f for p, f in self.fair.items() if f > 0), default=1.0)

    @property
    def skew(self) -> float:
        ratios = [self.loads[p] / f for p, f in self.fair.items() if f > 0]
        return 1.0 + max((abs(r - 1.0) for r in ratios), default=0.0)

    def idle(self, policy: BalancePolicy) -> bool:
        """Under the load floor: too little traffic for skew to mean anything."""
        return self.mean < policy.min_load

    @property
    def empty_pods(self) -> list[str]:
        """Active pods carrying nothing while the others carry load: pods that just joined."""
        if self.total <= 0:
            return []
        return sorted(p for p in self.fair if self.loads[p] <= 0)

    def scale_out(self, capacity: float, policy: BalancePolicy) -> int | None:
        """Gateway replicas to run when balanced but over capacity; None when not needed."""
        if capacity <= 0 or not self.fair or self.skew > policy.threshold:
            return None
        if self.mean <= capacity:
            return None
        return max(len(self.fair) + 1, math.ceil(self.total / capacity))

    def dedicated(self) -> list[HotGuild]:
        """Guilds heavier than a pod's fair share: only a pod of their own fixes them."""
        return [h for h in self.hot if h.share > 1.0]


def _deviation(load: float, fair: float) -> float:
    return abs(load / fair - 1.0) if fair > 0 else 0.0


def can_improve(view: LoadView, units: Mapping[str, Sequence[float]], margin: float = 0.01) -> bool:
    """Whether moving one unit (a shard, or a guild on its own) to another active pod
    lowers the skew by more than ``margin``.

    WHY: units are indivisible, so some skews cannot be evened (4 shards on 4 pods, one of
    them hot): a planner would produce empty plans, or moves that only shift the peak,
    round after round. No single improving move is the "cannot improve" signal; a plan
    made of several moves starts with one improving move, so this never blocks one.
    """
    fair = view.fair
    if len(fair) < 2:
        return False
    dev = {p: _deviation(view.loads.get(p, 0.0), f) for p, f in fair.items()}
    current = max(dev.values(), default=0.0)
    ranked = sorted(dev.items(), key=lambda kv: -kv[1])[:3]

    def others(*skip: str) -> float:
        return next((d for p, d in ranked if p not in skip), 0.0)

    for src, sizes in units.items():
        if src not in view.loads:
            continue
        for size in sorted({s for s in sizes if s > 0}):
            left = view.loads[src] - size
            src_dev = _deviation(left, fair[src]) if src in fair else 0.0
            for dst, f in fair.items():
                if dst == src:
                    continue
                after = max(others(src, dst), src_dev, _deviation(view.loads[dst] + size, f))
                if after < current - margin:
                    return True
    return False


def why_not_plan(
    view: LoadView,
    table: RoutingTable,
    guild_loads: Mapping[int, float],
    shard_loads: Mapping[int, float],
    policy: BalancePolicy,
) -> str:
    """Why no plan can help now ("" when one might): an idle stack under the load floor,
    or units so coarse that no single move lowers the skew (4 shards on 4 pods). Either
    way a plan would be empty, or churn for nothing."""
    if view.idle(policy):
        return (
            f"idle: {view.mean:.2f} events/s per pod, under the {policy.min_load:g} "
            "events/s floor; not balancing"
        )
    count = table.shard_count
    if view.skew <= policy.threshold or not count:
        return ""  # guild-keyed: many small guilds, the planner can always try
    units: dict[str, list[float]] = {p: [] for p in view.loads}
    per_shard = dict(shard_loads)
    for gid, value in guild_loads.items():
        try:
            owner = table.owner(gid)
        except NoRouteError:
            continue
        shard = shard_for(gid, count)
        if table.shard_owner(shard) == owner:
            per_shard[shard] = per_shard.get(shard, 0.0) + value
        units.setdefault(owner, []).append(value)  # a guild can also move alone (a pin)
    for shard, value in per_shard.items():
        holder = table.shard_owner(shard) if 0 <= shard < count else None
        if holder is not None:
            units.setdefault(holder, []).append(value)
    if can_improve(view, units):
        return ""
    return (
        f"skewed ({view.skew:.2f}), but no move evens it ({count} shard(s) on "
        f"{len(view.fair)} pod(s)); not planning"
    )


def measure(
    table: RoutingTable,
    guild_loads: Mapping[int, float],
    shard_loads: Mapping[int, float] | None = None,
    pod_loads: Mapping[str, float] | None = None,
    *,
    hot: int = 10,
) -> LoadView:
    """Attribute reported load to pods by the table's current owners.

    ``guild_loads``: the heaviest guilds, one by one. ``shard_loads``: the rest of each
    shard (shard-keyed tables). ``pod_loads``: load that can only be attributed to the
    pod reporting it (the rest, in guild-keyed tables).
    """
    loads = dict.fromkeys(table.pods, 0.0)
    for gid, value in guild_loads.items():
        loads[table.owner(gid)] += value
    if shard_loads:
        for shard, value in shard_loads.items():
            owner = table.shard_owner(shard) if table.shard_count else None
            if owner is not None:
                loads[owner] += value
    for pod, value in (pod_loads or {}).items():
        if pod in loads:
            loads[pod] += value
    active = [p.name for p in table.pods.values() if p.state is PodState.ACTIVE]
    weight = sum(table.pods[p].weight for p in active)
    total = sum(loads.values())
    fair = {p: total * table.pods[p].weight / weight for p in active} if weight else {}
    smallest = min(fair.values(), default=0.0)
    heaviest = sorted(guild_loads.items(), key=lambda kv: (-kv[1], kv[0]))[:hot]
    hot_guilds = tuple(
        HotGuild(g, table.owner(g), v, v / smallest if smallest > 0 else 0.0)
        for g, v in heaviest
        if v > 0
    )
    return LoadView(loads=loads, fair=fair, hot=hot_guilds)


class SkewState(StrEnum):
    BALANCED = "balanced"
    SKEWED = "skewed"  # above threshold, hold-down running
    FIRED = "fired"  # a plan was asked for; waits for the skew to clear or a re-arm


class SkewDetector:
    """Fires once when skew stays above the threshold for the hold-down time.

    Hysteresis: a skewed period ends only when skew falls below ``clear`` (< threshold),
    so a load hovering at the threshold does not restart the clock on every wobble.
    After firing, it stays quiet until the skew clears or the caller re-arms it (a plan
    finished, failed or expired); a re-arm starts a new full hold-down.
    """

    def __init__(self, policy: BalancePolicy) -> None:
        self.policy = policy
        self.state = SkewState.BALANCED
        self.since: float | None = None

    def observe(self, skew: float, now: float) -> bool:
        if skew < self.policy.clear:
            self.state, self.since = SkewState.BALANCED, None
            return False
        if self.state is SkewState.BALANCED:
            if skew <= self.policy.threshold:
                return False
            self.state, self.since = SkewState.SKEWED, now
        if self.state is SkewState.SKEWED:
            assert self.since is not None
            if now - self.since >= self.policy.hold_down:
                self.state = SkewState.FIRED
                return True
        return False

    def fire_now(self) -> None:
        """Skip the hold-down (an operator's action, such as adding a pod, asked for it)."""
        self.state, self.since = SkewState.FIRED, None

    def rearm(self, now: float) -> None:
        if self.state is SkewState.FIRED:
            self.state, self.since = SkewState.SKEWED, now

    def seconds_left(self, now: float) -> float | None:
        if self.state is not SkewState.SKEWED or self.since is None:
            return None
        return max(0.0, self.policy.hold_down - (now - self.since))
