"""Placement changes that move no data: draining a pod, holding shards in place while a
pod joins, and spreading shards evenly while the cluster holds no data yet."""

from __future__ import annotations

import logging

from modbot_ring import EmptyRingError, PodState, RoutingTable

from .errors import Conflict, NotFound, PodCallError
from .loads import collect
from .pod_calls import PodCalls, current_table
from .publisher import TablePublisher
from .store import MigrationStore, Store

log = logging.getLogger("modbot.config.migrator")


class MigratorPart:
    """What the migrator's parts (placement, planning) work with: the store, the
    migrations, the table publisher and the pods' clients."""

    def __init__(
        self,
        store: Store,
        migrations: MigrationStore,
        publisher: TablePublisher,
        pods: PodCalls,
    ) -> None:
        self.store = store
        self.migrations = migrations
        self.publisher = publisher
        self.pods = pods


class Placement(MigratorPart):
    async def drain(self, pod: str, actor: str, expected_version: int | None = None) -> int:
        """Stop placing ring load on ``pod`` without moving anything: in the same table
        version every shard is pinned where it is (as when a pod joins), and on a
        guild-keyed ring the guilds ``pod`` holds are pinned to it. Its data leaves only
        through a plan (``drain_plan``); ``activate`` undoes the drain."""
        for _ in range(5):  # the table may move between reading it and the change
            table = await current_table(self.publisher)
            if pod not in table.pods:
                raise NotFound(f"no pod named {pod!r}")
            if expected_version is not None and expected_version != table.version:
                raise Conflict(
                    f"the table is at version {table.version}, not {expected_version}: re-read and retry"
                )
            shards: dict[int, str] = {}
            guilds: list[int] = []
            if table.shard_count:
                shards = {
                    s: o
                    for s in range(table.shard_count)
                    if (o := table.shard_owner(s)) is not None
                }
            elif table.pods[pod].state is not PodState.DRAINING:
                try:
                    held = await self.pods.call(pod, lambda c: c.guilds(), retry=False)
                except PodCallError as exc:
                    raise Conflict(
                        f"cannot drain {pod}: it did not list the guilds it holds ({exc}); "
                        "on a guild-keyed ring they would be stranded"
                    ) from None
                guilds = [g for g in held.guilds if table.owner(g) == pod and g not in table.pins]
            try:
                version = await self.migrations.drain_pod(
                    pod, shards, guilds, actor, expected_version=table.version
                )
            except Conflict:
                if expected_version is not None:
                    raise
                continue
            await self.publisher.refresh()
            return version
        raise Conflict(f"the table kept changing while draining {pod}: try again")

    async def hold_before_join(self, pod: str, actor: str) -> bool:
        """Before a new pod joins the ring: if pods already hold guild data or carry
        load, pin every shard where it is, so the join moves nothing implicitly: a plan
        (the balancer proposes one) moves data and Discord sessions, within its budget."""
        table = await current_table(self.publisher)
        if pod in table.pods or table.shard_count is None or not table.pods:
            return False
        has_data = collect(await self.store.pods()).total > 0
        for name in [] if has_data else table.pods:
            try:
                held = await self.pods.call(name, lambda c: c.guilds(), retry=False)
            except PodCallError as exc:
                log.warning(
                    "pod %s did not say whether it holds data (%s); not holding shards for it",
                    name,
                    exc,
                )
                continue
            if held.guilds:
                has_data = True
                break
        if not has_data:
            return False
        assignment = {
            s: o for s in range(table.shard_count) if (o := table.shard_owner(s)) is not None
        }
        await self.migrations.hold_shards(assignment, actor)
        await self.publisher.refresh()
        log.info(
            "pod %s joins: %d shards held in place until a plan moves them", pod, len(assignment)
        )
        return True

    async def spread_if_empty(self, actor: str, attempts: int = 3) -> bool:
        """On a shard-keyed cluster that holds no data yet, give every active pod its
        weighted share of shards at once (soft shard pins, reason ``spread``): there is
        nothing to migrate, and a ring with few shards is lumpy (4 shards on 3 pods can all
        land on one pod), which a load-driven plan cannot fix while every load is 0.
        Does nothing when anything might hold data: load reported, open migrations, or a
        pod that holds guild rows or does not answer (asked only when shards would move)."""
        for _ in range(attempts):
            table = await current_table(self.publisher)
            pins = even_shard_pins(table)
            if pins is None:
                return False
            if table.migrating or table.migrating_shards:
                return False
            if collect(await self.store.pods()).total > 0:
                return False
            for name in sorted(table.pods):  # data anywhere: joins go through plans
                try:
                    held = await self.pods.call(name, lambda c: c.guilds(), retry=False)
                except PodCallError as exc:
                    log.warning(
                        "not spreading shards: %s did not say what it holds (%s)", name, exc
                    )
                    return False
                if held.guilds:
                    return False
            try:
                await self.migrations.spread_shards(pins, actor, table.version)
            except Conflict:
                continue  # the table changed meanwhile: look again
            await self.publisher.refresh()
            log.info(
                "no data yet: shards spread evenly over the active pods (%d pinned)", len(pins)
            )
            return True
        return False


def even_shard_pins(table: RoutingTable) -> dict[int, str] | None:
    """The shard pins that give each active pod its weighted share of the shards (largest
    remainders, ties by name), keeping every shard whose owner is within its share; or
    None when the table is shard-keyed and already even (or has no active pod).

    Shards of draining or offline pods stay where they are: their pods were not asked
    (draining ones are moved by their drain plan, offline ones may come back)."""
    count = table.shard_count
    active = {n: p.weight for n, p in table.pods.items() if p.state is PodState.ACTIVE}
    if not count or not active:
        return None
    owners = [table.shard_owner(s) for s in range(count)]
    movable = [s for s in range(count) if owners[s] is None or owners[s] in active]
    total = sum(active.values())
    exact = {n: len(movable) * w / total for n, w in active.items()}
    quota = {n: int(x) for n, x in exact.items()}
    spare = len(movable) - sum(quota.values())
    for name in sorted(active, key=lambda n: (-(exact[n] - quota[n]), n))[:spare]:
        quota[name] += 1
    target: dict[int, str] = {}
    kept = dict.fromkeys(active, 0)
    for s in movable:
        owner = owners[s]
        if owner is not None and kept[owner] < quota[owner]:
            kept[owner] += 1
            target[s] = owner
    for s in movable:
        if s not in target:
            name = max(sorted(active), key=lambda n: quota[n] - kept[n])
            kept[name] += 1
            target[s] = name
    if all(target[s] == owners[s] for s in movable):
        return None
    pins = {s: p for s, p in table.shard_pins.items() if s not in target}
    for s, pod in target.items():
        if _ring_owner(table, s) != pod:
            pins[s] = pod
    return pins


def _ring_owner(table: RoutingTable, shard: int) -> str | None:
    try:
        return table.ring.get(shard)
    except EmptyRingError:  # no active pod: nothing owns it by the ring
        return None
