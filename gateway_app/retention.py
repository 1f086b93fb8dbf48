"""Retention: a pod deletes rows older than each table's retention, in small batches.

Why in batches: a pod's SQLite file has one writer at a time. One ``DELETE`` of a million
rows would hold the write lock for seconds while the batch writer (gateway events) waits
on it, past its busy timeout. Each batch here is one short transaction of at most
``batch`` rows on a connection of its own, followed by a pause, so the batch writer gets
the lock between batches and the event loop never waits for SQLite (aiosqlite runs the
statements on its thread).

What is kept: every row newer than its table's retention (``MODBOT_RETENTION_*_DAYS``),
and every row of a guild that is migrating, not owned here, or was exported or imported
within the last hour (a migration's pre-copy): pruning it would make the migration's row
counts and checksums disagree. Deleted rows' pages are reused by SQLite before the file
grows (the file itself does not shrink); the disk-pressure check counts them as free.

The settings are read and checked at start: a retention of 0, a negative or fractional
number of days is refused with one line naming the variable (exit 2), never taken to
mean "delete everything".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modbot_runtime.flags import Flag

if TYPE_CHECKING:  # not imported at run time: `serve gateway --help` stays quick
    from prometheus_client.core import Metric

    from .storage import GuildStore

log = logging.getLogger("modbot.gateway.retention")

FOREVER = "forever"
FIRST_RUN_AFTER = 300.0  # seconds from start to the first run (at most the interval)
PRESSURE_RERUN = 60.0  # seconds between runs while writes are refused for disk pressure
MAX_DAYS = 36_500


def retention_days(text: str) -> int | None:
    """A retention: whole days >= 1, or ``forever`` (None: rows are kept)."""
    value = str(text).strip().lower()
    if value == FOREVER:
        return None
    try:
        days = int(value, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of days (1 to {MAX_DAYS}) or '{FOREVER}'"
        ) from None
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of days (1 to {MAX_DAYS}) or '{FOREVER}'; 0 or less"
            " would delete every row"
            if days < 1
            else f"expected at most {MAX_DAYS} days, or '{FOREVER}'"
        )
    return days


def _number(low: float, high: float, *, integer: bool = False, low_open: bool = False) -> Any:
    def convert(text: str) -> float | int:
        try:
            value: float | int = int(text, 10) if integer else float(text)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}") from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or value > high:
            lower = f"above {low:g}" if low_open else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"expected {lower} and at most {high:g}")
        return value

    convert.__name__ = "int" if integer else "float"
    return convert


TABLE_FLAGS = {  # table -> (flag name, env var, default, what it holds)
    "message_stats": (
        "retention-message-stats-days",
        "MODBOT_RETENTION_MESSAGE_STATS_DAYS",
        "90",
        "per-message statistics",
    ),
    "reported_messages": (
        "retention-reported-messages-days",
        "MODBOT_RETENTION_REPORTED_MESSAGES_DAYS",
        FOREVER,
        "user reports",
    ),
    "mod_actions": (
        "retention-mod-actions-days",
        "MODBOT_RETENTION_MOD_ACTIONS_DAYS",
        FOREVER,
        "bans, kicks, timeouts, leaves",
    ),
}

RETENTION_FLAGS = [
    *(
        Flag(
            name,
            env,
            default,
            f"days {what} are kept (whole days >= 1, or '{FOREVER}')",
            retention_days,
        )
        for name, env, default, what in TABLE_FLAGS.values()
    ),
    Flag(
        "retention-interval",
        "MODBOT_RETENTION_INTERVAL",
        3600.0,
        "seconds between retention runs (the first one 5 minutes after start, or sooner if"
        " the interval is shorter: a pod restarted more often still prunes)",
        _number(0, 7 * 86400, low_open=True),
    ),
    Flag(
        "retention-batch",
        "MODBOT_RETENTION_BATCH",
        2000,
        "rows deleted per transaction (keeps each write lock short)",
        _number(1, 100_000, integer=True),
    ),
    Flag(
        "retention-pause",
        "MODBOT_RETENTION_PAUSE",
        0.05,
        "seconds between two retention batches (the batch writer takes the lock meanwhile)",
        _number(0, 60),
    ),
    Flag(
        "disk-reserve-bytes",
        "MODBOT_DISK_RESERVE_BYTES",
        16 * 1024 * 1024,
        "refuse new writes when the volume's free bytes (plus the database's free pages)"
        " fall below this (0: only the usage limit)",
        _number(0, 2**62, integer=True),
    ),
    Flag(
        "disk-max-used",
        "MODBOT_DISK_MAX_USED",
        0.95,
        "refuse new writes when more than this fraction of the volume is used (1: only the"
        " reserve)",
        _number(0, 1, low_open=True),
    ),
]


@dataclass(frozen=True)
class RetentionPolicy:
    """Days per table (None: forever) and how the deletes are paced."""

    days: dict[str, int | None]
    interval: float = 3600.0
    batch: int = 2000
    pause: float = 0.05

    @classmethod
    def from_settings(cls, settings: Any) -> RetentionPolicy:
        return cls(
            days={
                table: getattr(settings, name.replace("-", "_"))
                for table, (name, *_) in TABLE_FLAGS.items()
            },
            interval=settings.retention_interval,
            batch=settings.retention_batch,
            pause=settings.retention_pause,
        )


@dataclass
class RunReport:
    """One retention run: rows deleted per table, guilds skipped, the longest lock held."""

    deleted: dict[str, int] = field(default_factory=dict)
    skipped: set[int] = field(default_factory=set)
    batches: int = 0
    longest_batch: float = 0.0
    seconds: float = 0.0


class Retention:
    """Runs the policy over a store: periodically (:meth:`run_forever`) or once."""

    def __init__(
        self,
        store: GuildStore,
        policy: RetentionPolicy,
        allowed: Callable[[int], bool] = lambda _guild: True,
        *,
        after_run: Callable[[], Any] | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.allowed = allowed  # may this guild's rows be deleted now (owned, not migrating)
        self.after_run = after_run
        self.deleted_total: dict[str, int] = dict.fromkeys(policy.days, 0)
        self.batches_total = 0
        self.errors = 0
        self.last: RunReport | None = None
        self.last_run_at = 0.0

    async def run_once(self, now: float | None = None) -> RunReport:
        """Delete what is past retention now, batch by batch; returns what was done."""
        report = RunReport()
        if self.store.path == ":memory:":  # one connection only: the writer's
            return report
        started = time.monotonic()
        now = time.time() if now is None else now
        async with self.store.pruning() as db:
            for table, days in self.policy.days.items():
                if days is None:
                    continue
                cutoff = now - days * 86400.0
                report.deleted[table] = 0
                for guild in await self.store.guilds_with_rows_before(db, table, cutoff):
                    await self._prune_guild(db, table, guild, cutoff, report)
        report.seconds = time.monotonic() - started
        self.last, self.last_run_at = report, time.time()
        if any(report.deleted.values()):
            log.info(
                "retention: deleted %s in %d batches (longest %.3fs), skipped %d guilds",
                report.deleted,
                report.batches,
                report.longest_batch,
                len(report.skipped),
            )
        return report

    async def _prune_guild(
        self, db: Any, table: str, guild: int, cutoff: float, report: RunReport
    ) -> None:
        while True:
            done = await self.store.prune_batch(
                db, table, guild, cutoff, self.policy.batch, self.allowed
            )
            if done is None:
                report.skipped.add(guild)
                return
            deleted, held = done
            report.batches += 1
            self.batches_total += 1
            report.longest_batch = max(report.longest_batch, held)
            report.deleted[table] += deleted
            self.deleted_total[table] = self.deleted_total.get(table, 0) + deleted
            await asyncio.sleep(self.policy.pause)  # let the batch writer take the lock
            if deleted < self.policy.batch:
                return

    async def run_forever(self) -> None:
        """A run every ``interval`` seconds; a failed run is logged, counted and retried
        at the next interval (a busy or closing database is no reason to stop)."""
        if all(days is None for days in self.policy.days.values()):
            return
        wait = min(self.policy.interval, FIRST_RUN_AFTER)
        while True:
            await self._sleep(wait)
            wait = self.policy.interval
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                log.warning("retention run failed: %s", exc)
            if self.after_run is not None:
                with contextlib.suppress(Exception):
                    await self.after_run()

    async def _sleep(self, seconds: float) -> None:
        """Until the next run: ``seconds``, or sooner while writes are refused for disk
        pressure (then at most every ``PRESSURE_RERUN`` s: deleted rows' pages end it)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.store.pressure is not None and time.time() - self.last_run_at >= PRESSURE_RERUN:
                return
            await asyncio.sleep(min(left, 1.0))

    def collect(self) -> Iterator[Metric]:
        """Prometheus families (register the object with a CollectorRegistry)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        deleted = CounterMetricFamily(
            "modbot_gateway_retention_rows_deleted",
            "Rows deleted by retention because they were older than their table's retention.",
            labels=["table"],
        )
        for table, n in sorted(self.deleted_total.items()):
            deleted.add_metric([table], n)
        yield deleted
        yield CounterMetricFamily(
            "modbot_gateway_retention_batches",
            "Retention delete transactions committed (each holds the write lock briefly).",
            value=self.batches_total,
        )
        yield CounterMetricFamily(
            "modbot_gateway_retention_errors",
            "Retention runs that failed and will be retried at the next interval.",
            value=self.errors,
        )
        yield GaugeMetricFamily(
            "modbot_gateway_retention_longest_batch_seconds",
            "Longest time one retention batch held SQLite's write lock in the last run.",
            value=self.last.longest_batch if self.last else 0.0,
        )
        yield GaugeMetricFamily(
            "modbot_gateway_retention_last_run_timestamp_seconds",
            "Unix time the last retention run finished (0: none yet).",
            value=self.last_run_at,
        )
