"""``modbot-ring import-monolith PATH``: today's mod-bot SQLite file into the pods.

Two passes over the old database, opened read-only:

1. *Plan*: the schema is recognised (tables and columns of a known migration state, or
   the import stops), every row is given its guild (its ``guild_id``, or through the
   channel or escalation it names) and that guild's owner under the current routing
   table, and converted. Rows that cannot be (no resolvable guild, invalid values) stop the
   import here, before anything is written, unless ``--skip-bad-rows`` says to import the
   rest and report them. ``--dry-run`` ends here and prints the rows per pod.
2. *Write*: rows go to their owner in chunks on the pod's migration API
   (``gateway_app.monolith_api``): checked by count and checksum, fenced by the guild's
   epoch and ownership, committed in one transaction with a high-water mark per guild and
   table. The marks make it resumable and idempotent: a re-run (after a kill -9, or just
   again) sends only rows above them, and the pod drops any it already has.

Global tables are not carried (``sessions``, ``users``: see ``monolith_schema.DROPPED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from modbot_client import monolith_schema as schema
from modbot_client.config_api import ConfigApi, ConfigApiError
from modbot_ring import NoRouteError, RoutingTable

EXIT_ERROR, EXIT_BAD_INPUT, EXIT_CONFLICT, EXIT_UNAVAILABLE = 1, 2, 3, 4
ATTEMPTS = 6  # table changes (a guild migrating, a pin) waited out in one run: ~15 s
# Channel-like columns that name a guild, for the tables that reach theirs through a channel.
CHANNEL_SOURCES = {
    "message_stats": ("channel_id",),
    "message_cache": ("channel_id",),
    "reported_messages": ("reported_channel_id", "log_channel_id"),
    "honeypot_config": ("channel_id",),
    "reactji_channeler_config": ("channel_id",),
    "user_threads": ("thread_id",),
    "deletion_log_threads": ("thread_id",),
    "escalations": ("thread_id",),
}


class MonolithError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Source:
    path: str
    conn: sqlite3.Connection
    columns: dict[str, tuple[str, ...]]  # mod-bot table -> the columns it has
    state: str
    dropped: dict[str, int]  # global table -> rows not carried

    def rows(
        self, table: str, after: int = 0, batch: int = 5000
    ) -> Iterator[list[tuple[Any, ...]]]:
        """(rowid, *spec columns) in rowid order; optional columns it lacks read as NULL."""
        have = self.columns[table]
        picks = ", ".join(
            f'"{c}"' if c in have else "NULL" for c in schema.SOURCE_TABLES[table].columns
        )
        cur = self.conn.execute(
            f'SELECT rowid, {picks} FROM "{table}" WHERE rowid > ? ORDER BY rowid', (after,)
        )
        while chunk := cur.fetchmany(batch):
            yield chunk


def open_source(path: str) -> Source:
    """The old database, read-only, its schema checked; MonolithError (exit 2) if it is not one."""
    if not Path(path).is_file():
        raise MonolithError(f"{path}: no such file", EXIT_BAD_INPUT)
    try:
        conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.DatabaseError as exc:
        raise MonolithError(f"{path} is not a SQLite database ({exc})", EXIT_BAD_INPUT) from None
    try:
        return _check_schema(path, conn, names)
    except BaseException:
        conn.close()
        raise


def _check_schema(path: str, conn: sqlite3.Connection, names: list[str]) -> Source:
    unknown = [
        n
        for n in names
        if n not in schema.SOURCE_TABLES
        and n not in schema.DROPPED
        and not n.startswith(schema.BOOKKEEPING_PREFIXES)
    ]
    if unknown:
        raise MonolithError(
            f"unknown schema version: table(s) {', '.join(sorted(unknown))} are in no mod-bot migration this importer knows",
            EXIT_BAD_INPUT,
        )
    if "guilds" not in names:
        raise MonolithError(
            f"{path} is not a mod-bot database: it has no guilds table", EXIT_BAD_INPUT
        )
    columns: dict[str, tuple[str, ...]] = {}
    dropped: dict[str, int] = {}
    for name in names:
        if name.startswith(schema.BOOKKEEPING_PREFIXES):
            continue
        have = tuple(r[1] for r in conn.execute(f'PRAGMA table_info("{name}")'))
        known = (
            schema.DROPPED[name][0]
            if name in schema.DROPPED
            else schema.SOURCE_TABLES[name].columns
        )
        required = (
            schema.DROPPED[name][0]
            if name in schema.DROPPED
            else schema.SOURCE_TABLES[name].required
        )
        missing = [c for c in required if c not in have]
        extra = [c for c in have if c not in known]
        if missing or extra:
            what = (
                f"lacks column(s) {', '.join(missing)}"
                if missing
                else f"has column(s) {', '.join(extra)} this importer does not know"
            )
            raise MonolithError(f"unknown schema version: table {name} {what}", EXIT_BAD_INPUT)
        if name in schema.DROPPED:
            dropped[name] = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
        else:
            columns[name] = have
    state, seen = "before 2022-04", set(names)
    for label, tables in schema.MIGRATION_STATES:
        if not set(tables) <= seen:
            break
        state = label
    return Source(path, conn, columns, state, dropped)


class Resolver:
    """Which guild a row belongs to: its guild column, or the channel or escalation it names."""

    def __init__(self, source: Source) -> None:
        self.channels: dict[str, int | None] = {}  # None: named by several guilds
        for table, cols in CHANNEL_SOURCES.items():
            if table not in source.columns:
                continue
            for col in cols:
                for channel, guild in source.conn.execute(
                    f'SELECT DISTINCT "{col}", guild_id FROM "{table}"'
                ):
                    self._note(channel, guild)
        self.escalations: dict[str, int] = {}
        if "escalations" in source.columns:
            for esc, guild in source.conn.execute("SELECT id, guild_id FROM escalations"):
                with contextlib.suppress(schema.Skip):
                    self.escalations[str(esc)] = schema.snowflake(guild, "guild_id")

    def _note(self, channel: Any, guild: Any) -> None:
        if channel in (None, ""):
            return
        try:
            gid = schema.snowflake(guild, "guild_id")
        except schema.Skip:
            return
        key = str(channel)
        if key in self.channels and self.channels[key] != gid:
            self.channels[key] = None
        else:
            self.channels[key] = gid

    def guild(self, spec: schema.SourceTable, row: dict[str, Any]) -> int:
        if spec.guild_column and row.get(spec.guild_column) not in (None, ""):
            return schema.snowflake(row[spec.guild_column], spec.guild_column)
        if spec.name == "escalation_records":
            gid = self.escalations.get(str(row["escalation_id"]))
            if gid is None:
                raise schema.Skip("no guild: its escalation is not in escalations")
            return gid
        if spec.channel_column:
            channel = row.get(spec.channel_column)
            if channel in (None, ""):
                raise schema.Skip(f"no guild: {spec.channel_column} is empty")
            key = str(channel)
            if key not in self.channels:
                raise schema.Skip("no guild: its channel is named by no row that has a guild_id")
            gid = self.channels[key]
            if gid is None:
                raise schema.Skip("no guild: its channel is named by rows of several guilds")
            return gid
        raise schema.Skip(f"no guild: {spec.guild_column} is empty")


@dataclass
class Report:
    source: str = ""
    state: str = ""
    table_version: int = 0
    dry_run: bool = False
    read: Counter[str] = field(default_factory=Counter)
    planned: dict[str, Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )  # pod -> table -> rows
    written: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    already: Counter[str] = field(default_factory=Counter)  # table -> rows a pod had already
    skipped: dict[str, Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )  # table -> reason -> rows
    dropped: dict[str, tuple[int, str]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "schema_state": self.state,
            "table_version": self.table_version,
            "dry_run": self.dry_run,
            "rows_read": dict(self.read),
            "rows_per_pod": {p: dict(c) for p, c in sorted(self.planned.items())},
            "rows_written": {p: dict(c) for p, c in sorted(self.written.items())},
            "rows_already_there": dict(self.already),
            "rows_skipped": {t: dict(r) for t, r in self.skipped.items()},
            "tables_dropped": {
                t: {"rows": n, "reason": why} for t, (n, why) in self.dropped.items()
            },
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(
                sum(sum(c.values()) for c in self.written.values()) / self.seconds
            )
            if self.seconds > 0
            else 0,
        }

    def human(self) -> str:
        pods = sorted(self.planned)
        per = self.planned if self.dry_run else self.written
        head = ["table", "read", *pods, "already there", "skipped"]
        lines = [
            [
                t,
                str(n),
                *(str(per[p][t]) for p in pods),
                str(self.already[t]),
                str(sum(self.skipped[t].values())),
            ]
            for t, n in self.read.items()
        ]
        widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        verb = "would write (dry run)" if self.dry_run else "written"
        out = [
            f"{self.source}: mod-bot schema state {self.state}; routing table v{self.table_version}; rows {verb} per pod:",
            fmt.format(*head).rstrip(),
            *(fmt.format(*r).rstrip() for r in lines),
        ]
        for table, reasons in self.skipped.items():
            for reason, n in reasons.items():
                out.append(f"skipped {n} row(s) of {table}: {reason}")
        for table, (n, why) in self.dropped.items():
            out.append(f"dropped table {table} ({n} rows): {why}")
        if not self.dry_run:
            total = sum(sum(c.values()) for c in self.written.values())
            rate = total / self.seconds if self.seconds > 0 else 0.0
            out.append(f"{total} rows written in {self.seconds:.1f}s ({rate:,.0f} rows/s)")
        return "\n".join(out)


class Progress:
    """A progress bar on stderr (a line every few seconds when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.started = time.monotonic()
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._shown = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (
            now - self._shown >= (0.2 if self.tty else 2.0) or self.done >= self.total
        ):
            self._shown = now
            frac = min(self.done / self.total, 1.0)
            rate = self.done / max(now - self.started, 1e-9)
            bar = "#" * int(frac * 30)
            text = f"import [{bar:<30}] {frac:4.0%} {self.done:,}/{self.total:,} rows {rate:,.0f} rows/s"
            print(
                ("\r" + text) if self.tty else text,
                end="" if self.tty else "\n",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


@dataclass
class Planned:
    table: str
    rowid: int
    guild: int
    pod: str
    row: list[Any]


def plan(
    source: Source, table: RoutingTable, resolver: Resolver, report: Report, *, now: float
) -> Iterator[Planned]:
    """Every carried row with its guild and owner; bad rows are counted in the report."""
    for name, spec in schema.SOURCE_TABLES.items():
        if name not in source.columns:
            continue
        cols = spec.columns
        for chunk in source.rows(name):
            for raw in chunk:
                report.read[name] += 1
                row = dict(zip(cols, raw[1:], strict=True))
                try:
                    gid = resolver.guild(spec, row)
                    converted = schema.convert(name, gid, row, now)
                except schema.Skip as exc:
                    report.skipped[name][str(exc)] += 1
                    continue
                try:
                    owner = table.owner(gid)
                except NoRouteError as exc:
                    raise MonolithError(
                        f"no pod owns guild {gid}: {exc}", EXIT_UNAVAILABLE
                    ) from None
                yield Planned(name, raw[0], gid, owner, converted)


@dataclass
class Options:
    path: str
    config_url: str
    token: str
    migration_token: str
    dry_run: bool = False
    skip_bad_rows: bool = False
    chunk_rows: int = 5000
    progress: bool = True


async def _routing(api: ConfigApi) -> tuple[RoutingTable, dict[str, str]]:
    try:
        text = json.dumps(await api.get("/v1/table"))
        pods = (await api.get("/v1/pods"))["pods"]
    except ConfigApiError as exc:
        code = EXIT_UNAVAILABLE if exc.status in (0, 503) else EXIT_ERROR
        raise MonolithError(f"config service: {exc.message}", code) from None
    return RoutingTable.from_json(text), {p["name"]: p.get("url") or "" for p in pods}


class Pods:
    """The owners' migration API: progress marks, then chunks (one in flight per pod)."""

    def __init__(self, urls: dict[str, str], token: str, table: RoutingTable) -> None:
        self.urls = urls
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.table = table
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300, sock_connect=5))
        self.marks: dict[tuple[int, str], int] = {}
        self.epochs: dict[int, int] = {}

    async def close(self) -> None:
        await self.http.close()

    async def _call(self, pod: str, method: str, path: str, body: bytes | None = None) -> Any:
        url = self.urls.get(pod)
        if not url:
            raise MonolithError(
                f"pod {pod} has no registered URL: is it running?", EXIT_UNAVAILABLE
            )
        try:
            async with self.http.request(
                method, f"{url}{path}", data=body, headers=self.headers
            ) as r:
                text = await r.text()
                if r.status == 200:
                    return json.loads(text)
                try:
                    message = json.loads(text).get("error", text)
                except ValueError:
                    message = text[:200]
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MonolithError(
                f"pod {pod} at {url} is unreachable ({type(exc).__name__}: {exc}): nothing more was written; re-run to resume",
                EXIT_UNAVAILABLE,
            ) from None
        code = (
            EXIT_CONFLICT
            if r.status == 409
            else EXIT_UNAVAILABLE
            if r.status in (401, 403, 503)
            else EXIT_ERROR
        )
        raise MonolithError(f"pod {pod} refused (HTTP {r.status}): {message}", code)

    async def load_progress(self, pods: set[str], wait: float = 15.0) -> None:
        """Marks and epochs of every owner, once it follows the importer's table version."""
        for pod in sorted(pods):
            deadline = time.monotonic() + wait
            while True:
                body = await self._call(pod, "GET", "/internal/monolith/progress")
                if body.get("pod") != pod:
                    raise MonolithError(
                        f"{self.urls[pod]} answers as {body.get('pod')!r}, not {pod}",
                        EXIT_CONFLICT,
                    )
                version = body.get("table_version") or 0
                if version > self.table.version:
                    raise MonolithError(
                        f"the routing table changed (v{self.table.version} -> v{version})",
                        EXIT_CONFLICT,
                    )
                if version == self.table.version:
                    break
                if time.monotonic() > deadline:
                    raise MonolithError(
                        f"pod {pod} still follows table v{version}, not v{self.table.version}",
                        EXIT_UNAVAILABLE,
                    )
                await asyncio.sleep(0.2)
            for gid, tables in body["progress"].items():
                for table, (mark, _count) in tables.items():
                    self.marks[(int(gid), table)] = int(mark)
            for gid, epoch in body["epochs"].items():
                self.epochs[int(gid)] = int(epoch)

    async def send(self, pod: str, table: str, rows: list[list[Any]]) -> dict[str, Any]:
        guilds: dict[str, dict[str, int]] = {}
        for row in rows:
            entry = guilds.setdefault(
                str(row[1]), {"epoch": self.epochs.get(row[1], 0), "through": 0}
            )
            entry["through"] = max(entry["through"], row[0])
        body = {
            "table": table,
            "rows": rows,
            "guilds": guilds,
            "count": len(rows),
            "checksum": schema.chunk_checksum(table, rows),
        }
        data = json.dumps(body, separators=(",", ":")).encode()
        return dict(await self._call(pod, "POST", "/internal/monolith/import", data))


async def run_import(opts: Options) -> Report:
    started = time.monotonic()
    source = open_source(opts.path)
    try:
        async with ConfigApi(opts.config_url, opts.token) as api:
            table, urls = await _routing(api)
        report = Report(
            source=opts.path, state=source.state, table_version=table.version, dry_run=opts.dry_run
        )
        report.dropped = {t: (n, schema.DROPPED[t][1]) for t, n in source.dropped.items()}
        resolver = Resolver(source)
        now = time.time()
        owners: set[str] = set()
        for item in plan(source, table, resolver, report, now=now):
            report.planned[item.pod][item.table] += 1
            owners.add(item.pod)
        bad = sum(sum(r.values()) for r in report.skipped.values())
        if bad and not opts.skip_bad_rows and not opts.dry_run:
            table_name, reasons = next((t, r) for t, r in report.skipped.items() if r)
            reason = next(iter(reasons))
            raise MonolithError(
                f"{bad} row(s) cannot be imported (e.g. {table_name}: {reason}); nothing was written."
                " Re-run with --skip-bad-rows to import the rest and report them",
                EXIT_BAD_INPUT,
            )
        if opts.dry_run:
            return report
        report.read.clear()
        report.skipped.clear()
        if not opts.migration_token:
            raise MonolithError(
                "--migration-token (MODBOT_MIGRATION_TOKEN) is required to write to the pods",
                EXIT_BAD_INPUT,
            )
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await _write(source, table, resolver, report, urls, owners, opts, now)
                break
            except MonolithError as exc:
                # the table moved under the import (a pod joined, a pin, a migration):
                # resume on the new one, as a re-run would; committed chunks stay
                if exc.code != EXIT_CONFLICT:
                    raise
                if attempt == ATTEMPTS:
                    raise MonolithError(
                        f"{exc}; what was written stays: re-run to resume", exc.code
                    ) from None
                print(f"modbot-ring: {exc}; resuming on the current table", file=sys.stderr)
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))  # a migration takes ~1 s
                async with ConfigApi(opts.config_url, opts.token) as api:
                    table, urls = await _routing(api)
                report.table_version = table.version
                report.planned.clear()
                owners = set()
                for item in plan(source, table, resolver, report, now=now):
                    report.planned[item.pod][item.table] += 1
                    owners.add(item.pod)
                report.read.clear()
                report.skipped.clear()
                done = sum((c for c in report.written.values()), Counter())
                report.already = Counter()
                report.already.subtract(done)  # our own earlier attempts: not "already there"
        report.already = +report.already  # drop what went negative or zero
        report.seconds = time.monotonic() - started
        return report
    finally:
        source.conn.close()


async def _write(
    source: Source,
    table: RoutingTable,
    resolver: Resolver,
    report: Report,
    urls: dict[str, str],
    owners: set[str],
    opts: Options,
    now: float,
) -> None:
    pods = Pods(urls, opts.migration_token, table)
    total = sum(sum(c.values()) for c in report.planned.values())
    bar = Progress(total, opts.progress)
    queues: dict[str, asyncio.Queue[tuple[str, list[list[Any]]] | None]] = {
        p: asyncio.Queue(maxsize=2) for p in owners
    }

    async def sender(pod: str) -> None:
        queue = queues[pod]
        while (item := await queue.get()) is not None:
            name, rows = item
            answer = await pods.send(pod, name, rows)
            written = sum(answer["inserted"].values())
            report.written[pod][name] += written
            report.already[name] += len(rows) - written  # below the pod's mark, or there already
            bar.add(len(rows))

    tasks: dict[str, asyncio.Task[None]] = {}
    try:
        await pods.load_progress(owners)
        tasks.update({p: asyncio.create_task(sender(p), name=f"import-{p}") for p in owners})
        buffers: dict[tuple[str, str], list[list[Any]]] = defaultdict(list)

        async def put(pod: str, name: str, rows: list[list[Any]]) -> None:
            put_task = asyncio.ensure_future(queues[pod].put((name, rows)))
            done, _ = await asyncio.wait(
                {put_task, tasks[pod]}, return_when=asyncio.FIRST_COMPLETED
            )
            if tasks[pod] in done:  # the sender failed: stop reading
                put_task.cancel()
                tasks[pod].result()

        current = ""
        for item in plan(source, table, resolver, report, now=now):
            if item.table != current:
                for (pod, name), rows in list(buffers.items()):
                    if rows:
                        await put(pod, name, rows)
                buffers.clear()
                current = item.table
            if item.rowid <= pods.marks.get((item.guild, item.table), 0):
                report.already[item.table] += 1
                bar.add(1)
                continue
            buf = buffers[(item.pod, item.table)]
            buf.append([item.rowid, *item.row])
            if len(buf) >= opts.chunk_rows:
                await put(item.pod, item.table, buf)
                buffers[(item.pod, item.table)] = []
        for (pod, name), rows in buffers.items():
            if rows:
                await put(pod, name, rows)
        for pod in owners:
            end = asyncio.ensure_future(queues[pod].put(None))
            await asyncio.wait({end, tasks[pod]}, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks.values():
            await task
    finally:
        bar.close()
        for task in tasks.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await pods.close()


def main(opts: Options, as_json: bool = False) -> int:
    report = asyncio.run(run_import(opts))
    if as_json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        print(report.human())
    return 0
