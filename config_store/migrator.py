"""The migrator: everything that moves guilds, shards and placement between pods.

One object for the API and the balancer to hold, built from parts that each do one job:

- ``pod_calls``: the way to a pod by name (its URL from the table, the migration
  token, retries while it is down), over the typed pod client
  (``modbot_client/pod_client.py``);
- ``moves``: the state machine that moves one guild (``prepared`` ... ``done``);
- ``planning``: making plans (rebalance, restore, drain, repair);
- ``plan_executor``: applying a plan's moves as migrations;
- ``placement``: changes that move no data (drain, holding shards on a join, spreading
  shards while the cluster is empty).

``verify`` lives here: it reads the pods and the migrations, the findings of all parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from modbot_ring import NoRouteError, RoutingTable

from .errors import PodAnswerInvalid, PodCallError, StoreError
from .moves import BEFORE_FLIP, Migration, MoveMachine, MoveState
from .placement import Placement, even_shard_pins
from .plan_executor import PlanExecutor
from .planning import LOAD_UNIT, Assignment, PlanMaker
from .pod_calls import PodCalls, current_table
from .publisher import TablePublisher
from .store import MigrationStore, Store

__all__ = [
    "BEFORE_FLIP",
    "LOAD_UNIT",
    "Assignment",
    "Migration",
    "Migrator",
    "MoveState",
    "even_shard_pins",
]


class Migrator:
    def __init__(
        self,
        store: Store,
        publisher: TablePublisher,
        *,
        migration_token: str,
        step_delay: float = 0.0,
        precopy: bool | None = None,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.migrations = MigrationStore(store)
        self.migration_token = migration_token  # the pods' migration API only
        # MODBOT_MIGRATION_PRECOPY=0: everything crosses inside the freeze (the benchmark's baseline)
        if precopy is None:
            precopy = os.environ.get("MODBOT_MIGRATION_PRECOPY", "1") != "0"
        self.pods = PodCalls(publisher, migration_token)
        self.moves = MoveMachine(
            self.migrations, publisher, self.pods, step_delay=step_delay, precopy=precopy
        )
        self.placement = Placement(store, self.migrations, publisher, self.pods)
        self.planner = PlanMaker(store, self.migrations, publisher, self.pods)
        self.executor = PlanExecutor(self.migrations, publisher, self.pods, self.moves)
        # the parts' own entry points, under the names the API and the balancer call
        self.migrate = self.moves.begin
        self.wait = self.moves.wait
        self.cancel = self.moves.cancel
        self.run = self.moves.run
        self.drain = self.placement.drain
        self.hold_before_join = self.placement.hold_before_join
        self.spread_if_empty = self.placement.spread_if_empty
        self.generate_plan = self.planner.generate_plan
        self.restore_plan = self.planner.restore_plan
        self.drain_plan = self.planner.drain_plan
        self.repair_plan = self.planner.repair_plan
        self.plan_inputs = self.planner.plan_inputs
        self.apply_plan = self.executor.apply_plan
        self.cancel_plan = self.executor.cancel_plan

    @property
    def tasks(self) -> dict[int, asyncio.Task[str]]:
        """Migration id -> the task driving it."""
        return self.moves.tasks

    @property
    def plan_tasks(self) -> dict[str, asyncio.Task[None]]:
        """Plan id -> the task applying it."""
        return self.executor.plan_tasks

    @property
    def step_delay(self) -> float:
        return self.moves.step_delay

    @step_delay.setter
    def step_delay(self, value: float) -> None:
        self.moves.step_delay = value

    @property
    def precopy(self) -> bool:
        return self.moves.precopy

    async def start(self) -> None:
        await self.pods.start()
        with contextlib.suppress(StoreError):
            await self.executor.interrupt_orphans()
            await self.moves.resume_open()

    async def stop(self) -> None:
        tasks = [*self.tasks.values(), *self.plan_tasks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.pods.close()

    async def verify(self) -> dict[str, Any]:
        """Every pod holds rows only of guilds it owns; no migration is stuck."""
        table: RoutingTable = await current_table(self.publisher)
        problems: list[str] = []
        for migration in await self.migrations.list(open_only=True):
            problems.append(
                f"migration {migration.id} of guild {migration.guild_id} is {migration.state}"
            )
        for plan in await self.migrations.plans_in_state(("interrupted",)):
            # its remaining moves never ran: not clean until `apply` resumes it
            problems.append(f"plan {plan.id} is interrupted: modbot-ring apply {plan.id}")
        pods: dict[str, int] = {}
        for record in await self.store.pods():
            try:
                held = await self.pods.call(record.name, lambda c: c.guilds(), retry=False)
            except PodAnswerInvalid as exc:  # a peer's odd answer: a finding
                problems.append(f"pod {record.name} answered nonsense: {exc}"[:300])
                continue
            except PodCallError as exc:
                problems.append(f"pod {record.name} did not answer: {exc}")
                continue
            pods[record.name] = len(held.guilds)
            for g in held.guilds:
                try:
                    owner: str | None = table.owner(g)
                except NoRouteError:
                    owner = None
                if owner != record.name and g not in table.migrating:
                    problems.append(
                        f"pod {record.name} holds rows of guild {g}, which {owner} owns"
                    )
        return {
            "clean": not problems,
            "problems": problems,
            "guilds_per_pod": pods,
            "version": table.version,
        }
