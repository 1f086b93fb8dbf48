"""The pod's side of ``modbot-ring import-monolith``: mod-bot rows, a chunk at a time.

On the migration API (migration token), next to export/import. A chunk holds rows of one
mod-bot table for guilds this pod owns, each row prefixed with its rowid in the old
database. It is written in one transaction together with the per guild+table high-water
mark (``monolith_progress``, a guild table, so it moves with the guild): rows at or below
the mark are already here and are dropped, so a chunk sent twice (an importer killed and
re-run) writes nothing twice. Like a migration import, the chunk must match its count and
checksum, and every guild must be owned here, not migrating, and carry this pod's epoch for
it (older epochs are refused), or nothing is written.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from modbot_client import monolith_schema as schema
from modbot_runtime.observability import json_error

from .podview import POD_KEY, PodView

MAX_INT = 2**63 - 1


def _problem(body: Any) -> str:
    """Why a chunk is not a chunk's shape ('' if it is)."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if body.get("table") not in schema.SOURCE_TABLES:
        return f"table must be one of {', '.join(schema.SOURCE_TABLES)}"
    rows, guilds = body.get("rows"), body.get("guilds")
    width = len(schema.insert_columns(body["table"])) + 1
    if not isinstance(rows, list) or not all(
        isinstance(r, list) and len(r) == width and type(r[0]) is int and type(r[1]) is int
        for r in rows
    ):
        return f"rows must be a list of [rowid, guild_id, ...] arrays of {width} values"
    if not isinstance(guilds, dict) or not all(
        isinstance(v, dict)
        and type(v.get("epoch")) is int
        and type(v.get("through")) is int
        and 0 <= v["epoch"] <= MAX_INT
        and 0 <= v["through"] <= MAX_INT
        for v in guilds.values()
    ):
        return "guilds must map guild ids to {epoch, through} integers"
    if type(body.get("count")) is not int or not isinstance(body.get("checksum"), str):
        return "count (integer) and checksum (string) are required"
    return ""


def _refusal(pod: PodView, guilds: dict[int, dict[str, int]]) -> str:
    table = pod.table_client.table
    if table is None:
        return "no routing table yet"
    for gid, want in guilds.items():
        if not pod.ownership.owns(gid) or pod.ownership.migrating(gid):
            return f"guild {gid} is not owned here (table v{table.version})"
        if want["epoch"] < pod.gate.epoch(gid):
            return f"stale epoch {want['epoch']}: this pod has seen epoch {pod.gate.epoch(gid)} for guild {gid}"
        if pod.gate.state(gid) not in ("normal", "released"):
            return f"guild {gid} is {pod.gate.state(gid)} here (migrating)"
    return ""


async def progress(request: web.Request) -> web.Response:
    """High-water marks per guild and table, and this pod's epochs (for the importer's plan)."""
    pod = request.app[POD_KEY]
    await pod.store.flush()
    rows = await pod.store._all(  # the store's own read helper: no new storage API needed
        f"SELECT guild_id, source_table, high_water, row_count FROM {schema.PROGRESS_TABLE}"
    )
    marks: dict[str, dict[str, list[int]]] = {}
    for gid, table, mark, count in rows:
        marks.setdefault(str(gid), {})[table] = [int(mark), int(count)]
    return web.json_response(
        {
            "pod": pod.name,
            "table_version": pod.table_version,
            "progress": marks,
            "epochs": {str(g): e for g, (e, _) in pod.gate.fences.items()},
        }
    )


def _check(body: dict[str, Any]) -> str:
    rows = body["rows"]
    if len(rows) != body["count"]:
        return f"{len(rows)} rows, {body['count']} announced"
    if schema.chunk_checksum(body["table"], rows) != body["checksum"]:
        return "rows do not match their checksum"
    guilds = body["guilds"]
    if any(str(r[1]) not in guilds for r in rows):
        return "rows of a guild the chunk does not list"
    if any(r[0] > guilds[str(r[1])]["through"] for r in rows):
        return "a row above its guild's high-water mark ('through')"
    return ""


async def import_chunk(request: web.Request) -> web.Response:
    pod = request.app[POD_KEY]
    try:
        body = json.loads(await request.read())
    except (ValueError, RecursionError):
        return json_error(400, "body is not valid JSON")
    problem = _problem(body)
    if problem:
        return json_error(422, problem)
    try:
        guilds = {int(g): v for g, v in body["guilds"].items()}
    except ValueError:
        return json_error(422, "guild ids must be decimal")
    problem = await asyncio.to_thread(_check, body)  # 5,000 rows of JSON: off the loop
    if problem:
        return json_error(422, problem)
    refusal = _refusal(pod, guilds)
    if refusal:
        return json_error(409, refusal)
    source: str = body["table"]
    try:
        written = await _write(pod, source, guilds, body["rows"])
    except _Refused as exc:
        return json_error(409, str(exc))
    return web.json_response({"pod": pod.name, "table": source, **written})


async def _write(
    pod: PodView, source: str, guilds: dict[int, dict[str, int]], rows: list[list[Any]]
) -> dict[str, Any]:
    target = "guilds" if source == "guilds" else schema.SOURCE_TABLES[source].pod_table
    cols = schema.insert_columns(source)
    verb = schema.INSERT_VERB.get(source, "INSERT")
    insert = f"{verb} INTO {target} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
    by_guild: dict[int, list[list[Any]]] = {g: [] for g in guilds}
    for row in rows:
        by_guild[row[1]].append(row)
    inserted: dict[str, int] = {}
    message_ids: dict[int, list[int]] = {}
    present = 0
    async with pod.store._bulk_connection() as db:  # the migration import's own connection
        await db.execute("BEGIN IMMEDIATE")
        try:
            for gid, mine in by_guild.items():
                async with db.execute(
                    f"SELECT high_water FROM {schema.PROGRESS_TABLE}"
                    " WHERE guild_id = ? AND source_table = ?",
                    (gid, source),
                ) as cur:
                    found = await cur.fetchone()
                mark = int(found[0]) if found else 0
                fresh = [r[1:] for r in mine if r[0] > mark]
                before = db.total_changes
                if fresh:
                    await db.executemany(insert, fresh)
                count = db.total_changes - before
                present += len(fresh) - count
                inserted[str(gid)] = count
                await db.execute(
                    f"INSERT INTO {schema.PROGRESS_TABLE} (guild_id, source_table, high_water, row_count)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (guild_id, source_table) DO UPDATE SET"
                    " high_water = max(high_water, excluded.high_water),"
                    " row_count = row_count + excluded.row_count",
                    (gid, source, max(mark, guilds[gid]["through"]), count),
                )
                if source == "message_stats":
                    message_ids[gid] = [r[1] for r in fresh]
            # A migration may have started meanwhile. Frozen (or moved): roll back, so no row
            # lands behind its delta export (the freeze's own write waits for our lock).
            # Pre-copied: its tracker gets our message ids, before and after the commit
            # (a tracker started in between is then covered too).
            refusal = _refusal(pod, guilds)
            if refusal:
                raise _Refused(refusal)
            for gid, ids in message_ids.items():
                pod.gate.note_written(gid, ids)
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
    for gid, ids in message_ids.items():
        pod.gate.note_written(gid, ids)
    return {"inserted": inserted, "already_present": present}


class _Refused(Exception):
    """A guild of the chunk started migrating while it was written: nothing committed."""


def add_routes(app: web.Application) -> None:
    app.router.add_get("/internal/monolith/progress", progress)
    app.router.add_post("/internal/monolith/import", import_chunk)
