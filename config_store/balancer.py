"""The scaling-decisions loop: watch load, propose (or apply) plans, advise scaling out.

Every config service replica measures (so each can serve ``/ops`` and ``/metrics``);
only the leader, the holder of a PostgreSQL advisory lock, acts. Decisions:

- skew above the threshold for the hold-down time -> a plan (``propose``: stored and
  shown; ``auto``: applied, within the move budget per hour);
- a pod that joined and carries nothing -> a plan that fills it, without hold-down;
- balanced but the mean pod above capacity -> "scale out" advice with the command;
- a guild heavier than a pod's fair share -> "give it a dedicated pod" advice.

Never thrash: units moved within the cool-down are frozen for the planner, plans aim
well inside the hysteresis band, and after a plan ends a new one needs a full hold-down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from modbot_ring import (
    BalancePolicy,
    LoadView,
    NoRouteError,
    RoutingTable,
    SkewDetector,
    SkewState,
    measure,
)
from modbot_ring.balance import why_not_plan

from .errors import Conflict, StoreError
from .loads import collect
from .migrator import Migrator
from .publisher import TablePublisher
from .store import MigrationStore, PlanRecord, PodRecord, Store

log = logging.getLogger("modbot.balancer")

ACTOR = "balancer"
MODES = ("off", "propose", "auto")


@dataclass(frozen=True)
class BalancerSettings:
    mode: str = "propose"
    interval: float = 15.0
    policy: BalancePolicy = field(default_factory=BalancePolicy)
    statefulset: str = "gateway"
    concurrency: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"balance mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.interval <= 0:
            raise ValueError("balance interval must be > 0")


class BalancerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pod_load = Gauge(
            "modbot_config_pod_load",
            "Discord events per second attributed to each gateway pod.",
            ["pod"],
            registry=registry,
        )
        self.imbalance = Gauge(
            "modbot_config_imbalance_ratio",
            "Load of the busiest pod divided by the fair share (1.0: even).",
            registry=registry,
        )
        self.skew = Gauge(
            "modbot_config_load_skew",
            "1 + the largest deviation of any pod from the fair share (the balancer's trigger).",
            registry=registry,
        )
        self.hot = Gauge(
            "modbot_config_hot_guild_load",
            "Discord events per second of the hottest guilds, with the pod that owns each.",
            ["guild", "pod"],
            registry=registry,
        )
        self.scale_out = Gauge(
            "modbot_config_recommended_gateway_replicas",
            "Gateway replicas the balancer recommends (0: no advice).",
            registry=registry,
        )
        self.leader = Gauge(
            "modbot_config_balancer_leader",
            "1 on the config replica that holds the balancer lock and decides.",
            registry=registry,
        )
        self.waiting = Gauge(
            "modbot_config_plans_waiting",
            "Balancing plans proposed and not yet applied.",
            registry=registry,
        )


class Balancer:
    def __init__(
        self,
        store: Store,
        migrator: Migrator,
        publisher: TablePublisher,
        settings: BalancerSettings,
        registry: CollectorRegistry,
    ) -> None:
        self.store = store
        self.migrations: MigrationStore = migrator.migrations
        self.migrator = migrator
        self.publisher = publisher
        self.settings = settings
        self.policy = settings.policy
        self.detector = SkewDetector(self.policy)
        self.metrics = BalancerMetrics(registry)
        self.history: deque[tuple[float, float, float]] = deque(maxlen=720)
        self.leader = False
        self.view: LoadView | None = None
        self.decision = "waiting for load reports"
        self.scale_out: int | None = None
        self.waiting: PlanRecord | None = None
        self._hot_labels: set[tuple[str, str]] = set()
        self._filled: set[str] = set()  # empty pods a plan was made for (once each)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="balancer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick(time.time())
            except StoreError as exc:
                log.warning("balancer tick skipped: %s", exc)
            except Exception:
                log.exception("balancer tick failed")
            await asyncio.sleep(self.settings.interval)

    # -- one decision round ------------------------------------------------------------------

    async def tick(self, now: float) -> None:
        snapshot = self.publisher.snapshot
        if snapshot is None:
            return
        table = snapshot.table
        records = await self.store.pods()
        cluster = collect(records)
        view = measure(table, cluster.guilds, cluster.shards, cluster.rest)
        self.view = view
        self.history.append((now, view.imbalance, view.skew))
        self.scale_out = view.scale_out(self.policy.capacity, self.policy)
        self._export(view)
        self.leader = await self.store.db.try_lead("balancer")
        self.metrics.leader.set(1 if self.leader else 0)
        if self.leader:  # housekeeping, whatever the mode: stale plans are not advertised
            for stale in await self.migrations.expire_stale_plans():
                log.info("plan %s expired: someone else changed the table", stale)
        proposed = await self.migrations.plans_in_state(("proposed",))
        self.metrics.waiting.set(len(proposed))
        waiting = [p for p in proposed if p.actor == ACTOR]
        if not self.leader or self.settings.mode == "off":
            self.waiting = waiting[0] if waiting else None
            self.decision = "off" if self.settings.mode == "off" else "following the leader"
            return
        self.waiting = waiting[0] if waiting else None
        busy = await self.migrations.plans_in_state(("executing",))
        silent = sorted(
            r.name for r in records if r.online and r.load is None and r.name in view.fair
        )
        if silent:  # a pod that has not reported yet is unknown, not idle
            self.decision = f"waiting for the first load report of {', '.join(silent)}"
            return
        if self.detector.state is SkewState.FIRED and not waiting and not busy:
            self.detector.rearm(now)  # the last plan ended: a new one needs a full hold-down
        joined = [p for p in self._joined(view, table, records, now) if p not in self._filled]
        quiet = why_not_plan(view, table, cluster.guilds, cluster.shards, self.policy)
        if quiet and not joined and not busy and self.waiting is None:
            self.detector.observe(1.0, now)  # nothing to act on: the hold-down starts over
            self.decision = quiet
            return
        fire = self.detector.observe(view.skew, now)
        if not (joined and not waiting and not busy):
            joined = []
        else:
            fire = True  # a pod joined: fill it now; joining was the operator's decision
            self.detector.fire_now()
            self._filled.update(joined)
        if busy:
            self.decision = f"plan {busy[0].id} is executing"
        elif self.waiting is not None:
            self.decision = f"a plan is waiting: modbot-ring apply {self.waiting.id}"
        elif fire:
            await self._act(view, now, table.version, joined)
        else:
            left = self.detector.seconds_left(now)
            self.decision = (
                f"skewed ({view.skew:.2f}); a plan in {left:.0f}s if it stays above {self.policy.threshold}"
                if left is not None
                else "balanced"
            )

    @staticmethod
    def _joined(
        view: LoadView, table: RoutingTable, records: list[PodRecord], now: float
    ) -> list[str]:
        """Empty pods that just joined, as opposed to pods that are idle for a moment:
        in a shard-keyed table they own no shard yet (a join holds the shards where
        they are); in a guild-keyed one they registered in the last ten minutes."""
        registered = {r.name: r.registered_at for r in records}
        if table.shard_count:
            owning = {table.shard_owner(s) for s in range(table.shard_count)}
            return [p for p in view.empty_pods if p not in owning]
        return [p for p in view.empty_pods if now - registered.get(p, 0.0) < 600]

    async def _act(self, view: LoadView, now: float, version: int, joined: list[str]) -> None:
        frozen_guilds, frozen_shards = await self.migrations.recently_moved(
            now - self.policy.cooldown
        )
        max_moves: int | None = None
        if self.settings.mode == "auto":
            spent = sum(
                len(p.plan["moves"])
                for p in await self.migrations.plans_in_state(
                    ("executing", "done", "failed", "cancelled", "interrupted"),
                    actor=ACTOR,
                    since=now - 3600,
                )
            )
            max_moves = self.policy.move_budget_per_hour - spent
            if max_moves <= 0:
                self.decision = "skewed, but this hour's move budget is spent"
                self.detector.rearm(now)
                return
        reason = (
            f"{', '.join(joined)} joined empty"
            if joined
            else f"skew {view.skew:.2f} above {self.policy.threshold} for {self.policy.hold_down:g}s"
        )
        plan = await self.migrator.generate_plan(
            epsilon=self.policy.target_epsilon,
            max_moves=max_moves,
            actor=ACTOR,
            frozen_shards=frozen_shards,
            frozen_guilds=frozen_guilds,
            reason=reason,
            state="proposed",
        )
        if not plan["moves"]:
            with contextlib.suppress(Conflict):
                await self.migrations.set_plan_state(plan["id"], "empty", expect=("proposed",))
            self.decision = (
                f"skewed, but nothing can move ({'; '.join(plan['unfixable'][:2]) or 'cool-down'})"
            )
            self.detector.rearm(now)
            return
        log.info("%s: plan %s with %d move(s)", reason, plan["id"], len(plan["moves"]))
        if self.settings.mode == "auto" and plan["base_version"] == version:
            await self.migrator.apply_plan(plan["id"], self.settings.concurrency, ACTOR)
            self.decision = f"applying plan {plan['id']} ({reason})"
        else:
            self.waiting = await self.migrations.plan(plan["id"])
            self.decision = f"a plan is waiting: modbot-ring apply {plan['id']}"

    def _export(self, view: LoadView) -> None:
        for pod, value in view.loads.items():
            self.metrics.pod_load.labels(pod).set(value)
        self.metrics.imbalance.set(view.imbalance)
        self.metrics.skew.set(view.skew)
        self.metrics.scale_out.set(self.scale_out or 0)
        labels = {(str(h.guild_id), h.pod) for h in view.hot}
        for gone in self._hot_labels - labels:
            with contextlib.suppress(KeyError):
                self.metrics.hot.remove(*gone)
        for h in view.hot:
            self.metrics.hot.labels(str(h.guild_id), h.pod).set(h.load)
        self._hot_labels = labels

    # -- what operators see ---------------------------------------------------------------------

    def advice(self) -> list[str]:
        """Re-checked against the table being served now, not the one of the last tick:
        a plan the table moved past is not advertised, a hot guild is named on the pod it
        is on now."""
        lines: list[str] = []
        view = self.view
        if view is None:
            return lines
        snapshot = self.publisher.snapshot
        table = None if snapshot is None else snapshot.table
        waiting = self.waiting
        if waiting is not None and (table is None or waiting.base_version == table.version):
            lines.append(f"a plan is waiting: modbot-ring apply {waiting.id}")
        if self.scale_out is not None:
            lines.append(
                f"balanced but over capacity (mean {view.mean:.1f} events/s per pod, capacity "
                f"{self.policy.capacity:g}): scale out with "
                f"kubectl scale statefulset {self.settings.statefulset} --replicas={self.scale_out}"
            )
        for hot in view.dedicated():
            pod = hot.pod if table is None else _owner(table, hot.guild_id, hot.pod)
            lines.append(
                f"guild {hot.guild_id} on {pod} carries {hot.share:.1f}x a pod's fair share: "
                f"give it a dedicated pod (modbot-ring pin {hot.guild_id} <new pod>)"
            )
        return lines

    def _current_waiting(self) -> str | None:
        snapshot = self.publisher.snapshot
        if self.waiting is None:
            return None
        if snapshot is not None and self.waiting.base_version != snapshot.table.version:
            return None
        return self.waiting.id

    def status(self, *, history: bool = True) -> dict[str, Any]:
        """What the balancer sees and decided; ``history`` adds the imbalance samples."""
        view = self.view
        summary: dict[str, Any] = {
            "mode": self.settings.mode,
            "leader": self.leader,
            "state": self.detector.state.value,
            "decision": self.decision
            if self.waiting is None or self._current_waiting() is not None
            else f"plan {self.waiting.id} expired: the table changed; a new one may follow",
            "policy": asdict(self.policy),
            "imbalance": None if view is None else round(view.imbalance, 4),
            "skew": None if view is None else round(view.skew, 4),
            "total": None if view is None else round(view.total, 3),
            "loads": {} if view is None else {p: round(v, 3) for p, v in view.loads.items()},
            "fair": {} if view is None else {p: round(v, 3) for p, v in view.fair.items()},
            "hot": []
            if view is None
            else [
                {"guild_id": str(h.guild_id), "pod": h.pod, "load": h.load, "share": h.share}
                for h in view.hot
            ],
            "scale_out": None
            if self.scale_out is None
            else {
                "replicas": self.scale_out,
                "command": f"kubectl scale statefulset {self.settings.statefulset} --replicas={self.scale_out}",
            },
            "waiting_plan": self._current_waiting(),
            "advice": self.advice(),
        }
        if history:
            summary["history"] = [
                [round(t, 1), round(i, 4), round(s, 4)] for t, i, s in self.history
            ]
        return summary


def _owner(table: RoutingTable, guild_id: int, fallback: str) -> str:
    try:
        return table.owner(guild_id)
    except NoRouteError:
        return fallback
