"""Moving a guild between pods with no event, command or row lost.

Each migration is a state machine persisted in the store, one step at a time:

``prepared``  the table lists the guild as migrating to the target: the target opens the
              guild's shard and *holds* its events; the proxy defers its interactions.
``frozen``    the bulk of the rows was pre-copied while the guild ran (from then on the
              source tracks the messages it changes); the source stops writing the
              guild and holds its events too.
``imported``  the rows changed since the pre-copy (every row if the source restarted and
              lost its tracker) are exported and imported on the target in one
              transaction, verified by row counts and a checksum on both ends.
``flipped``   new table version: the guild is pinned to the target with a bumped epoch
              (the fencing token every pod call carries; older epochs are refused).
``replayed``  the target fetches the flip's table version (pushed with the call, not
              awaited from pub/sub or a poll), applies the source's and its own held
              events, deduplicated by event identity and in time order, then writes live.
              The hold window (``hold_seconds``, per step in ``timings``) ends here.
``done``      the source's buffer was replayed once more on the target (idempotent: it
              covers whatever a target killed after its replay missed), then the source
              deleted its copy; the guild leaves the migrating set.

Every step is idempotent and retried with backoff while a pod is down, so a crash of
the source, the target or the config service resumes where it stopped. ``cancel``
before the flip rolls back (the source writes what it held; the target drops its copy);
after the flip a migration always rolls forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
import uuid
from typing import Any

import aiohttp

from modbot_ring import (
    EmptyRingError,
    NoRouteError,
    PlanLimits,
    PodState,
    RoutingTable,
    parse_guild_id,
    plan_rebalance,
    shard_for,
)

from .loads import collect
from .publisher import TablePublisher
from .store import (
    APPLICABLE_PLAN_STATES,
    NEW_PLAN_STATES,
    Conflict,
    Invalid,
    MigrationStore,
    NotFound,
    Store,
    StoreError,
)

log = logging.getLogger("modbot.config.migrator")
SHARD_SWEEPS = 5  # listings of a shard's guilds on its source during one shard move

# What a plan's LOAD numbers are (printed by `plan`; /ops shows the balancer's events/s).
LOAD_UNIT = "events/s (a guild a pod holds counts at least 1)"
BEFORE_FLIP = ("prepared", "frozen", "imported")


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "%s failed; it resumes at the next start", task.get_name(), exc_info=task.exception()
        )


class PodCallError(Exception):
    def __init__(self, pod: str, status: int, message: str) -> None:
        super().__init__(f"{pod}: {status} {message}")
        self.status = status


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
        # MODBOT_MIGRATION_PRECOPY=0: everything crosses inside the freeze (the benchmark's baseline)
        self.precopy = (
            os.environ.get("MODBOT_MIGRATION_PRECOPY", "1") != "0" if precopy is None else precopy
        )
        self.migrations = MigrationStore(store)
        self.publisher = publisher
        self.migration_token = migration_token  # the pods' migration API only
        self.step_delay = step_delay
        self.tasks: dict[int, asyncio.Task[str]] = {}
        self.plan_tasks: dict[str, asyncio.Task[None]] = {}
        self.cancelled: set[int] = set()
        self.cancelled_plans: set[str] = set()
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120, sock_connect=2))
        with contextlib.suppress(StoreError):
            for plan in await self.migrations.plans(limit=100):
                if plan["state"] == "executing":  # its executor died with the last process
                    await self.migrations.set_plan_state(plan["id"], "interrupted")
            for migration in await self.migrations.list(open_only=True):
                log.info(
                    "resuming migration %s of guild %s (%s)",
                    migration["id"],
                    migration["guild_id"],
                    migration["state"],
                )
                self._run_in_background(migration["id"])

    async def stop(self) -> None:
        for task in [*self.tasks.values(), *self.plan_tasks.values()]:
            task.cancel()
        for task in [*self.tasks.values(), *self.plan_tasks.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            await self._http.close()

    # -- single guild -------------------------------------------------------------------------

    async def migrate(
        self, guild_id: int, target: str, actor: str, plan_id: str | None = None
    ) -> dict[str, Any]:
        table = await self._table()
        if target not in table.pods:
            raise NotFound(f"cannot migrate to unknown pod {target!r}")
        source = table.owner(guild_id)
        migration = await self.migrations.start(guild_id, source, target, actor, plan_id)
        await self.publisher.refresh()
        self._run_in_background(migration["id"])
        return migration

    def _run_in_background(self, migration_id: int) -> asyncio.Task[str]:
        task = self.tasks.get(migration_id)
        if task is None or task.done():
            task = asyncio.create_task(self.run(migration_id), name=f"migration-{migration_id}")
            task.add_done_callback(_log_failure)
            self.tasks[migration_id] = task
        return task

    async def wait(self, migration_id: int) -> str:
        return await self._run_in_background(migration_id)

    async def cancel(self, migration_id: int) -> dict[str, Any]:
        migration = await self.migrations.get(migration_id)
        if migration["state"] not in BEFORE_FLIP:
            raise Conflict(
                f"migration {migration_id} is {migration['state']}: past the flip it can only finish"
            )
        self.cancelled.add(migration_id)
        return migration

    async def run(self, migration_id: int) -> str:
        """Drive one migration to ``done`` or ``rolled_back``; returns the final state."""
        known: dict[str, Any] | None = None
        while True:
            # a step that recorded its outcome hands the record over: no re-read inside
            # the freeze (only this coordinator moves a migration between those states)
            m = known or await self._retry(
                lambda: self.migrations.get(migration_id), "read migration"
            )
            known = None
            state = m["state"]
            if state in ("done", "rolled_back", "cancelled"):
                return str(state)
            if state == "aborted" or (migration_id in self.cancelled and state in BEFORE_FLIP):
                await self._roll_back(m)
                continue
            if self.step_delay:
                await asyncio.sleep(self.step_delay)
                if migration_id in self.cancelled and state in BEFORE_FLIP:
                    continue  # cancelled meanwhile: roll back rather than take the step
            known = await self._step(m)

    async def _advance(self, m: dict[str, Any], state: str, **detail: Any) -> dict[str, Any]:
        """Record the next state (detail merged, as the store does); the record as it is now."""
        await self.migrations.set_state(m["id"], state, **detail)
        return {**m, "state": state, "detail": {**m["detail"], **detail}}

    async def _step(self, m: dict[str, Any]) -> dict[str, Any] | None:
        """One step of a move. ``timings`` (seconds per sub-step inside the freeze) and
        ``hold_seconds`` go into the migration's detail: the benchmark reads them."""
        gid, epoch, state = int(m["guild_id"]), m["epoch"], m["state"]
        source, target = m["source"], m["target"]
        detail = m["detail"]
        timings = dict(detail.get("timings", {}))
        if state == "prepared":
            await self._until(
                lambda: self._target_listening(target, gid),
                f"target {target} to listen to guild {gid}",
            )
            marks: dict[str, Any] = {}
            if self.precopy:
                # pre-copy: the bulk of the rows moves while the guild still runs on the
                # source, which from now on tracks the messages changed since the copy
                bulk = await self._pod(
                    source, "GET", f"/internal/guilds/{gid}/export?mode=precopy", raw=True
                )
                copied = await self._pod(
                    target, "POST", f"/internal/guilds/{gid}/import?epoch={epoch}", bulk
                )
                exported = await asyncio.to_thread(json.loads, bulk)
                marks = {"precopied": copied["counts"]["message_stats"]}
                if exported.get("track"):
                    marks["track"] = exported["track"]
            frozen_at = time.time()
            await self._pod(source, "POST", f"/internal/guilds/{gid}/freeze", {"epoch": epoch})
            return await self._advance(
                m,
                "frozen",
                frozen_at=frozen_at,
                timings={"freeze": round(time.time() - frozen_at, 4)},
                **marks,
            )
        elif state == "frozen":
            # only what changed since the pre-copy crosses inside the freeze (a source that
            # restarted since has lost its tracker and answers with every row instead);
            # the export's bytes go to the target as they are: no decode/re-encode here
            query = "mode=full"
            if detail.get("track"):
                query = f"mode=delta&track={detail['track']}"
            elif "since_id" in detail:  # a migration started before change tracking
                query = (
                    f"mode=delta&since_id={detail['since_id']}&since_time={detail['since_time']}"
                )
            t0 = time.time()
            exported = await self._pod(
                source, "GET", f"/internal/guilds/{gid}/export?{query}", raw=True
            )
            t1 = time.time()
            result = await self._pod(
                target, "POST", f"/internal/guilds/{gid}/import?epoch={epoch}", exported
            )
            timings["delta_export"] = round(t1 - t0, 4)
            timings["import"] = round(time.time() - t1, 4)
            return await self._advance(
                m,
                "imported",
                timings=timings,
                delta_bytes=len(exported),
                counts=result["totals"],
                copied=result["counts"],
                checksum=result["checksum"],
            )
        elif state == "imported":
            t0 = time.time()
            version = await self._retry(lambda: self.migrations.flip(m["id"], "migrator"), "flip")
            await self.publisher.refresh()
            timings["flip"] = round(time.time() - t0, 4)
            return await self._advance(m, "flipped", flip_version=version, timings=timings)
        elif state == "flipped":
            flip_version = await self._flip_version(m)
            t0 = time.time()
            held = await self._pod(source, "GET", f"/internal/guilds/{gid}/held")
            t1 = time.time()
            # the flip's version travels with the replay: the target fetches that table at
            # once (no waiting for pub/sub or a poll, no polling of the target from here)
            result = await self._pod(
                target,
                "POST",
                f"/internal/guilds/{gid}/replay",
                {"epoch": epoch, "events": held["events"], "version": flip_version},
            )
            frozen_at = detail.get("frozen_at") or time.time()
            timings["held_fetch"] = round(t1 - t0, 4)
            timings["propagation"] = float(result.get("table_wait", 0.0))  # inside the call
            timings["replay"] = round(time.time() - t1 - timings["propagation"], 4)
            return await self._advance(
                m,
                "replayed",
                timings=timings,
                replayed=result["applied"],
                hold_seconds=round(time.time() - frozen_at, 4),
            )
        elif state == "replayed":
            flip_version = await self._flip_version(m)
            # Catch-up before the source's copy goes: the source has held every event of
            # the guild since its freeze. If the target lost some after its replay (killed:
            # its last batch, its downtime, the time until its shard was back), they are
            # in that buffer. Once the target listens again, replaying the buffer once more
            # is idempotent (message ids, dedup keys), and only then is it deleted.
            await self._until(
                lambda: self._target_has_shard(target, gid), f"target {target} to listen again"
            )
            held = await self._pod(source, "GET", f"/internal/guilds/{gid}/held")
            await self._pod(
                target,
                "POST",
                f"/internal/guilds/{gid}/replay",
                {"epoch": epoch, "events": held["events"], "version": flip_version},
            )
            await self._until(
                lambda: self._pod_has_version(source, flip_version),
                f"{source} to see table v{flip_version}",
            )
            await self._pod(source, "DELETE", f"/internal/guilds/{gid}?epoch={epoch}")
            await self._retry(lambda: self.migrations.close(m["id"], "done", "migrator"), "close")
            await self.publisher.refresh()
            log.info("migration %s done: guild %s %s -> %s", m["id"], gid, source, target)
            return None
        raise Invalid(f"migration {m['id']} in unknown state {state!r}")

    async def _flip_version(self, m: dict[str, Any]) -> int:
        """The table version of the flip; if the coordinator died between the flip and
        recording it, the current version (newer, and it includes the flip)."""
        version = m["detail"].get("flip_version")
        if version:
            return int(version)
        return (await self._table()).version

    async def _roll_back(self, m: dict[str, Any]) -> None:
        """Undo a migration that has not flipped, in two resumable halves.

        ``aborted`` (a new table version): the guild is no longer migrating, so the target
        stops holding its events. Only once the target has seen that version is its copy
        deleted (nothing can land after the delete), and only then is the migration
        ``rolled_back``: whoever sees that state sees a clean target."""
        gid, epoch, target = int(m["guild_id"]), m["epoch"], m["target"]
        version = m["detail"].get("abort_version")
        if m["state"] != "aborted":
            # ``prepared`` too: a coordinator that died between freezing the source and
            # recording ``frozen`` left it frozen (unfreezing a live guild is a no-op, and
            # it drops the pre-copy's change tracker)
            await self._pod(
                m["source"], "POST", f"/internal/guilds/{gid}/unfreeze", {"epoch": epoch}
            )
            version = await self._retry(
                lambda: self.migrations.close(m["id"], "aborted", "migrator"), "abort"
            )
            await self.migrations.set_state(m["id"], "aborted", abort_version=version)
            await self.publisher.refresh()
        await self._until(
            lambda: self._pod_has_version(target, version or 0), f"{target} to see table v{version}"
        )
        await self._pod(target, "DELETE", f"/internal/guilds/{gid}?epoch={epoch}&force=1")
        await self._retry(lambda: self.migrations.set_state(m["id"], "rolled_back"), "rolled back")
        self.cancelled.discard(m["id"])
        log.info("migration %s rolled back: guild %s stays on %s", m["id"], gid, m["source"])

    async def hold_before_join(self, pod: str, actor: str) -> bool:
        """Before a new pod joins the ring: if pods already hold guild data or carry
        load, pin every shard where it is, so the join moves nothing implicitly: a plan
        (the balancer proposes one) moves data and Discord sessions, within its budget."""
        table = await self._table()
        if pod in table.pods or table.shard_count is None or not table.pods:
            return False
        has_data = collect(await self.store.pods()).total > 0
        for name in [] if has_data else table.pods:
            try:
                held = await self._pod(name, "GET", "/internal/guilds", retry=False)
            except (PodCallError, aiohttp.ClientError, TimeoutError, Invalid) as exc:
                log.warning(
                    "pod %s did not say whether it holds data (%s); not holding shards for it",
                    name,
                    exc,
                )
                continue
            if held["guilds"]:
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
            table = await self._table()
            pins = even_shard_pins(table)
            if pins is None:
                return False
            if table.migrating or table.migrating_shards:
                return False
            if collect(await self.store.pods()).total > 0:
                return False
            for name in sorted(table.pods):  # data anywhere: joins go through plans
                try:
                    held = await self._pod(name, "GET", "/internal/guilds", retry=False)
                except (PodCallError, aiohttp.ClientError, TimeoutError, Invalid) as exc:
                    log.warning(
                        "not spreading shards: %s did not say what it holds (%s)", name, exc
                    )
                    return False
                if not isinstance(held, dict) or held.get("guilds") != []:
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

    # -- plans ---------------------------------------------------------------------------------------

    async def generate_plan(
        self,
        *,
        epsilon: float,
        max_moves: int | None,
        actor: str,
        frozen_shards: frozenset[int] = frozenset(),
        frozen_guilds: frozenset[int] = frozenset(),
        reason: str = "",
        state: str = "draft",
    ) -> dict[str, Any]:
        """A rebalance plan: ``draft`` for an operator's dry run, ``proposed`` for the
        balancer's (the one advertised as waiting)."""
        table = await self._table()
        loads, shard_loads, sizes = await self.plan_inputs(table)
        hard = {int(p["guild_id"]) for p in await self.store.pins() if p["kind"] == "hard"}
        plan = plan_rebalance(
            table,
            loads,
            shard_loads=shard_loads if table.shard_count else None,
            hard_pins=hard,
            frozen_shards=frozen_shards,
            frozen_guilds=frozen_guilds,
            guild_bytes=sizes,
            limits=PlanLimits(epsilon=epsilon, max_moves=max_moves),
        )
        body = plan.to_dict()
        body["current_assignment"] = {
            "shards": {str(s): table.shard_owner(s) for s in range(table.shard_count)}
            if table.shard_count
            else {},
            "pins": {str(g): p for g, p in table.pins.items()},
        }
        if reason:
            body["reason"] = reason
        body["load_unit"] = LOAD_UNIT
        plan_id = f"plan-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        body["id"] = plan_id
        await self.migrations.save_plan(plan_id, body, table.version, actor, state)
        return body

    async def restore_plan(self, assignment: dict[str, Any], actor: str) -> dict[str, Any]:
        """A plan that moves shards and pinned guilds back to a saved assignment."""
        table = await self._table()
        moves: list[dict[str, Any]] = []
        for shard, pod in (assignment.get("shards") or {}).items():
            current = table.shard_owner(int(shard)) if table.shard_count else None
            if pod and current and current != pod and int(shard) < (table.shard_count or 0):
                moves.append(
                    {"kind": "shard", "id": str(shard), "from": current, "to": pod, "load": 0.0}
                )
        for gid, pod in (assignment.get("pins") or {}).items():
            current = table.owner(int(gid))
            if current != pod:
                moves.append(
                    {"kind": "guild", "id": str(gid), "from": current, "to": pod, "load": 0.0}
                )
        unknown = {m["to"] for m in moves} - set(table.pods)
        if unknown:
            raise Conflict(
                f"the saved assignment names pods that are gone: {', '.join(sorted(unknown))}"
            )
        plan_id = f"rollback-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        body = {
            "format": 1,
            "id": plan_id,
            "base_version": table.version,
            "moves": moves,
            "rollback": True,
            "unfixable": [],
        }
        await self.migrations.save_plan(plan_id, body, table.version, actor)
        return body

    async def plan_inputs(
        self, table: RoutingTable
    ) -> tuple[dict[int, float], dict[int, float], dict[int, int]]:
        """Load per guild and per shard (the rest of each shard), and bytes per guild.

        Rates are what the pods report; a guild a pod holds counts at least 1.0, so
        quiet guilds (their storage, their session state) still spread out."""
        records = await self.store.pods()
        cluster = collect(records)
        loads: dict[int, float] = dict(cluster.guilds)
        for record in records:
            if not record.online or not record.url:
                continue
            with contextlib.suppress(PodCallError, aiohttp.ClientError, TimeoutError):
                held = await self._pod(record.name, "GET", "/internal/guilds", retry=False)
                for g in held["guilds"]:
                    loads[int(g)] = max(loads.get(int(g), 0.0), 1.0)
        return loads, cluster.shards, cluster.guild_bytes

    async def apply_plan(self, plan_id: str, concurrency: int, actor: str) -> None:
        record = await self.migrations.plan(plan_id)
        table = await self._table()
        # the plan's own moves bump the version too (an interrupted plan resumes past
        # them): only someone else's change since the plan was made makes it stale
        foreign = await self.migrations.foreign_changes(plan_id, record["base_version"])
        if foreign:
            first = foreign[0]
            with contextlib.suppress(Conflict):
                await self.migrations.set_plan_state(plan_id, "expired", expect=NEW_PLAN_STATES)
            raise Conflict(
                f"plan {plan_id} was made against table v{record['base_version']}, the table is at v{table.version}"
                f" (v{first['version']}: {first['action']} by {first['actor']}): regenerate it"
            )
        await self.migrations.set_plan_state(plan_id, "executing", expect=APPLICABLE_PLAN_STATES)
        task = asyncio.create_task(
            self._execute(plan_id, record["plan"]["moves"], max(1, concurrency), actor)
        )
        self.plan_tasks[plan_id] = task

    async def _execute(
        self, plan_id: str, moves: list[dict[str, Any]], concurrency: int, actor: str
    ) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(move: dict[str, Any]) -> None:
            async with gate:
                if plan_id in self.cancelled_plans:
                    return
                if move["kind"] == "guild":
                    await self._move_guild(int(move["id"]), move["to"], actor, plan_id)
                elif move["kind"] == "repair":
                    await self._repair_guild(
                        int(move["id"]), move["from"], move["to"], actor, plan_id
                    )
                else:
                    await self._move_shard(
                        int(move["id"]), move["from"], move["to"], actor, plan_id
                    )

        try:
            await asyncio.gather(*(one(m) for m in moves))
            final = "cancelled" if plan_id in self.cancelled_plans else "done"
        except Exception:
            log.exception("plan %s failed", plan_id)
            final = "failed"
        await self._retry(lambda: self.migrations.set_plan_state(plan_id, final), "plan state")

    async def _move_guild(self, gid: int, target: str, actor: str, plan_id: str) -> None:
        """Idempotent: a guild already on ``target`` is done; a migration of it already
        under way (a resumed plan's move, picked up at start) is waited for."""
        for running in await self.migrations.list(open_only=True):
            if running["guild_id"] == str(gid):
                await self.wait(running["id"])
        table = await self._table()
        if table.owner(gid) == target:
            return
        migration = await self.migrations.start(gid, table.owner(gid), target, actor, plan_id)
        await self.publisher.refresh()
        await self.wait(migration["id"])

    async def _move_shard(
        self, shard: int, source: str, target: str, actor: str, plan_id: str
    ) -> None:
        """A shard's guilds move one by one (pinned to the target), then the shard itself."""
        table = await self._table()
        count = table.shard_count
        if count is None:
            raise Invalid("shard moves need a shard-keyed table")
        if table.shard_owner(shard) == target:
            return  # done before (a resumed plan)
        # listed again after each pass: a guild whose first rows land on the source while
        # earlier ones move would otherwise stay there when the shard flips, and the
        # target would start a second copy of it (verify cannot merge those)
        tried: set[int] = set()
        for _ in range(SHARD_SWEEPS):
            held = await self._pod(source, "GET", "/internal/guilds")
            table = await self._table()
            guilds = [
                int(g)
                for g in held["guilds"]
                if shard_for(int(g), count) == shard
                and table.owner(int(g)) == source
                and int(g) not in tried
            ]
            if not guilds:
                break
            for gid in guilds:
                if plan_id in self.cancelled_plans:
                    return
                tried.add(gid)
                await self._move_guild(gid, target, actor, plan_id)
        table = await self._table()
        # every guild of the shard carried over by a pin (this run's and an interrupted
        # run's): the shard assignment makes those pins redundant
        carried = [g for g, p in table.pins.items() if p == target and shard_for(g, count) == shard]
        await self._retry(
            lambda: self.migrations.set_shard_pin(shard, target, carried, actor, plan_id),
            "shard pin",
        )
        await self.publisher.refresh()

    # -- drain and repair ------------------------------------------------------------------------

    async def drain(self, pod: str, actor: str, expected_version: int | None = None) -> int:
        """Stop placing ring load on ``pod`` without moving anything: in the same table
        version every shard is pinned where it is (as when a pod joins), and on a
        guild-keyed ring the guilds ``pod`` holds are pinned to it. Its data leaves only
        through a plan (``drain_plan``); ``activate`` undoes the drain."""
        for _ in range(5):  # the table may move between reading it and the change
            table = await self._table()
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
                    held = await self._pod(pod, "GET", "/internal/guilds", retry=False)
                except (PodCallError, aiohttp.ClientError, TimeoutError, Invalid) as exc:
                    raise Conflict(
                        f"cannot drain {pod}: it did not list the guilds it holds ({exc}); "
                        "on a guild-keyed ring they would be stranded"
                    ) from None
                guilds = [
                    int(g)
                    for g in held["guilds"]
                    if table.owner(int(g)) == pod and int(g) not in table.pins
                ]
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

    async def drain_plan(self, pod: str, actor: str) -> dict[str, Any]:
        """The plan that empties a draining pod: each of its shards and each guild pinned
        to it goes to the active pod with the least load per weight at that point
        (heaviest first). Quiet shards move too: an empty pod holds no sessions."""
        table = await self._table()
        if pod not in table.pods:
            raise NotFound(f"no pod named {pod!r}")
        if table.pods[pod].state is not PodState.DRAINING:
            raise Conflict(f"pod {pod} is not draining: run `modbot-ring drain {pod}` first")
        active = {n: p.weight for n, p in table.pods.items() if p.state is PodState.ACTIVE}
        if not active:
            raise Conflict(f"no active pod to move {pod}'s data to")
        loads, shard_loads, _ = await self.plan_inputs(table)
        count = table.shard_count
        load = dict.fromkeys(table.pods, 0.0)
        unit_load: dict[tuple[str, int], float] = {}
        mine = {s for s in range(count or 0) if table.shard_owner(s) == pod}  # shards it owns
        for gid, value in loads.items():
            owner = table.owner(gid)
            load[owner] = load.get(owner, 0.0) + value
            if owner != pod:
                continue
            if count and gid not in table.pins:
                key = ("shard", shard_for(gid, count))
            elif count and table.pins.get(gid) == pod and shard_for(gid, count) in mine:
                key = ("shard", shard_for(gid, count))  # travels with its shard
            else:
                key = ("guild", gid)
            unit_load[key] = unit_load.get(key, 0.0) + value
        for shard, value in shard_loads.items():
            shard_owner = table.shard_owner(shard) if count else None
            if shard_owner is not None:
                load[shard_owner] = load.get(shard_owner, 0.0) + value
            if shard_owner == pod:
                unit_load[("shard", shard)] = unit_load.get(("shard", shard), 0.0) + value
        for shard in range(count or 0):
            if table.shard_owner(shard) == pod:
                unit_load.setdefault(("shard", shard), 0.0)
        for gid, owner in table.pins.items():
            if owner == pod and not (count and shard_for(gid, count) in mine):
                unit_load.setdefault(("guild", gid), 0.0)
        moves: list[dict[str, Any]] = []
        for (kind, uid), value in sorted(unit_load.items(), key=lambda kv: (-kv[1], kv[0])):
            target = min(active, key=lambda p: ((load[p] + max(value, 1.0)) / active[p], p))
            load[target] += max(value, 1.0)
            moves.append({"kind": kind, "id": str(uid), "from": pod, "to": target, "load": value})
        plan_id = f"drain-{pod}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        body = {
            "format": 1,
            "id": plan_id,
            "base_version": table.version,
            "drain": pod,
            "load_unit": LOAD_UNIT,
            "moves": moves,
            "unfixable": [],
            "current_assignment": {
                "shards": {str(s): table.shard_owner(s) for s in range(count)} if count else {},
                "pins": {str(g): p for g, p in table.pins.items()},
            },
        }
        await self.migrations.save_plan(plan_id, body, table.version, actor, "proposed")
        return body

    async def repair_plan(self, actor: str) -> dict[str, Any]:
        """A plan that carries stranded rows (a pod holding rows of a guild it does not
        own, no migration under way) to the guild's owner, through the migration path.
        Only when the owner holds none of the guild's rows: two copies would need a
        merge, and an import replaces; those are listed as ``unfixable``."""
        table = await self._table()
        if await self.migrations.list(open_only=True):
            raise Conflict("migrations are under way: repair once they have finished")
        holders: dict[int, list[str]] = {}
        held_by: dict[str, set[int]] = {}
        unfixable: list[str] = []
        for record in await self.store.pods():
            try:
                held = await self._pod(record.name, "GET", "/internal/guilds", retry=False)
            except (PodCallError, aiohttp.ClientError, TimeoutError, Invalid) as exc:
                unfixable.append(f"pod {record.name} did not answer: {exc}")
                continue
            held_by[record.name] = {int(g) for g in held["guilds"]}
            for g in held_by[record.name]:
                holders.setdefault(g, []).append(record.name)
        moves: list[dict[str, Any]] = []
        for gid, pods in sorted(holders.items()):
            owner = table.owner(gid)
            stray = [p for p in pods if p != owner]
            if not stray:
                continue
            if gid in held_by.get(owner, set()) or len(stray) > 1:
                unfixable.append(
                    f"guild {gid}: rows on {', '.join(sorted(pods))}; owner {owner} "
                    "holds rows too (or several pods do): merge them by hand"
                )
                continue
            if table.pods[owner].state is not PodState.ACTIVE:
                unfixable.append(f"guild {gid}: its owner {owner} is not active")
                continue
            moves.append(
                {"kind": "repair", "id": str(gid), "from": stray[0], "to": owner, "load": 0.0}
            )
        plan_id = f"repair-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        body = {
            "format": 1,
            "id": plan_id,
            "base_version": table.version,
            "repair": True,
            "moves": moves,
            "unfixable": unfixable,
        }
        await self.migrations.save_plan(plan_id, body, table.version, actor)
        return body

    async def _repair_guild(
        self, gid: int, holder: str, owner: str, actor: str, plan_id: str
    ) -> None:
        """Route the guild to the pod holding its rows, then migrate it to its owner."""
        table = await self._table()
        if table.owner(gid) == owner:
            held = await self._pod(owner, "GET", "/internal/guilds")
            if str(gid) in held["guilds"]:
                log.warning("repair of guild %s skipped: %s holds rows of it now", gid, owner)
                return
            await self._retry(
                lambda: self.migrations.pin_to_holder(gid, holder, actor, plan_id), "repair pin"
            )
            await self.publisher.refresh()
        elif table.owner(gid) != holder:
            log.warning("repair of guild %s skipped: it moved to %s", gid, table.owner(gid))
            return
        await self._move_guild(gid, owner, actor, plan_id)

    async def cancel_plan(self, plan_id: str) -> None:
        await self.migrations.plan(plan_id)
        self.cancelled_plans.add(plan_id)
        for migration in await self.migrations.list(open_only=True, plan_id=plan_id):
            with contextlib.suppress(Conflict):
                await self.cancel(migration["id"])

    # -- verify -----------------------------------------------------------------------------------------

    async def verify(self) -> dict[str, Any]:
        """Every pod holds rows only of guilds it owns; no migration is stuck."""
        table = await self._table()
        problems: list[str] = []
        for migration in await self.migrations.list(open_only=True):
            problems.append(
                f"migration {migration['id']} of guild {migration['guild_id']} is {migration['state']}"
            )
        for plan in await self.migrations.plans_in_state(("interrupted",)):
            # its remaining moves never ran: not clean until `apply` resumes it
            problems.append(f"plan {plan['id']} is interrupted: modbot-ring apply {plan['id']}")
        pods: dict[str, int] = {}
        for record in await self.store.pods():
            try:
                held = await self._pod(record.name, "GET", "/internal/guilds", retry=False)
                guilds = [parse_guild_id(g) for g in held["guilds"]]
            except (PodCallError, Invalid, aiohttp.ClientError, TimeoutError) as exc:
                problems.append(f"pod {record.name} did not answer: {exc}")
                continue
            except (ValueError, TypeError, KeyError) as exc:  # a peer's odd answer: a finding
                problems.append(f"pod {record.name} answered nonsense: {exc!r:.200}")
                continue
            pods[record.name] = len(guilds)
            for g in guilds:
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

    # -- plumbing ----------------------------------------------------------------------------------------

    async def _table(self) -> RoutingTable:
        snapshot = await self.publisher.refresh()
        if snapshot is None:
            raise StoreError("no routing table")
        return snapshot.table

    async def _pod(
        self,
        pod: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        retry: bool = True,
        raw: bool = False,
    ) -> Any:
        """Call a pod's internal API; retries (with jittered backoff) while it is down."""
        delay = 0.1
        while True:
            try:
                table = (
                    self.publisher.snapshot.table
                    if self.publisher.snapshot
                    else await self._table()
                )
                url = table.pods[pod].url if pod in table.pods else None
                if not url:
                    raise PodCallError(pod, 0, "no URL registered")
                assert self._http is not None
                async with self._http.request(
                    method,
                    f"{url}{path}",
                    json=None if isinstance(body, bytes) else body,
                    data=body if isinstance(body, bytes) else None,
                    headers={
                        "Authorization": f"Bearer {self.migration_token}",
                        "Content-Type": "application/json",
                    },
                    timeout=aiohttp.ClientTimeout(total=120 if retry else 2, sock_connect=2),
                ) as resp:
                    if resp.status < 300:
                        return await resp.read() if raw else await resp.json()
                    text = await resp.text()
                    if resp.status in (409, 421, 503) or resp.status >= 500:
                        raise PodCallError(pod, resp.status, text[:200])
                    raise Invalid(f"{pod} refused {method} {path}: {resp.status} {text[:200]}")
            except (PodCallError, aiohttp.ClientError, TimeoutError) as exc:
                if not retry:
                    raise
                log.info("waiting for %s (%s %s): %s", pod, method, path, exc)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 2.0)

    async def _retry(self, action: Any, what: str) -> Any:
        delay = 0.1
        while True:
            try:
                return await action()
            except (StoreError, NotFound) as exc:
                if isinstance(exc, (Conflict, Invalid, NotFound)):
                    raise
                log.info("retrying %s: %s", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _until(self, check: Any, what: str) -> None:
        delay = 0.05
        while not await check():
            log.debug("waiting for %s", what)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    async def _target_listening(self, target: str, gid: int) -> bool:
        status = await self._pod(target, "GET", f"/internal/guilds/{gid}")
        return bool(status["holding"] and status["shard_ready"])

    async def _target_has_shard(self, target: str, gid: int) -> bool:
        status = await self._pod(target, "GET", f"/internal/guilds/{gid}")
        return bool(status["shard_ready"])

    async def _pod_has_version(self, pod: str, version: int) -> bool:
        status = await self._pod(pod, "GET", "/internal/table")
        return int(status["version"] or 0) >= version


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
