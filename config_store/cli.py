"""``modbot-ring``: the operator CLI and the entry point of every server.

Operator commands talk to the config service over HTTP, never to its database
(``db upgrade`` excepted). Every failure ends in a non-zero exit code and exactly one
line on stderr; ``--json`` prints machine-readable output on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from modbot_ring import InvalidGuildId, parse_guild_id

from .charts import before_after
from .client.config_api import ConfigApi, ConfigApiError
from .client.flags import Flag, add_flags

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONFLICT = 3
EXIT_UNAVAILABLE = 4

OPERATOR_FLAGS = [
    Flag("config-url", "MODBOT_CONFIG_URL", "http://127.0.0.1:8700", "config service base URL"),
    Flag("token", "MODBOT_ADMIN_TOKEN", "", "admin bearer token", secret=True),
]

# server name -> (settings module holding SERVE_FLAGS, module with `run(args)`)
SERVERS = {
    "config": ("config_store.settings", "config_store.service"),
    "proxy": ("router_proxy.settings", "router_proxy.server"),
    "gateway": ("gateway_app.settings", "gateway_app.server"),
    "discord-sim": ("gateway_app.discord_sim.settings", "gateway_app.discord_sim.server"),
}


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        result = args.handler(args)
        return int(result or 0)
    except CliError as exc:
        print(f"modbot-ring: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modbot-ring",
        description="Route Discord guilds across gateway pods: operate and serve.",
    )
    sub = parser.add_subparsers(metavar="COMMAND")

    def operator(
        name: str, help: str, run: Callable[[argparse.Namespace, ConfigApi], Awaitable[int]]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        add_flags(p, OPERATOR_FLAGS)
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.set_defaults(handler=lambda args: _run_operator(args, run))
        return p

    operator("status", "pods, guild/shard counts per pod, table version, pins", _status)
    p = operator("route", "which pod owns a guild, and why", _route)
    p.add_argument("guild", help="guild id")
    p = operator("pin", "pin a guild to a pod", _pin)
    p.add_argument("guild", help="guild id")
    p.add_argument("pod", help="pod name")
    p.add_argument("--reason", default="", help="why (kept in the audit log)")
    p = operator("unpin", "remove a guild's pin", _unpin)
    p.add_argument("guild", help="guild id")
    operator("pods", "list pods with state and heartbeat age", _pods)
    p = operator("drain", "stop placing ring load on a pod", _drain)
    p.add_argument("pod", help="pod name")
    p = operator("audit", "recent changes, newest first", _audit)
    p.add_argument("--limit", type=int, default=20, help="how many entries (default 20)")

    p = operator(
        "plan",
        "plan a rebalance (dry run: prints before/after, saves plan + current assignment)",
        _plan,
    )
    p.add_argument(
        "--epsilon", type=float, default=0.05, help="allowed load above fair share (default 0.05)"
    )
    p.add_argument("--max-moves", type=int, default=None, help="at most this many moves")
    p.add_argument(
        "-o", "--output", default="", help="where to save the plan (default <plan id>.json)"
    )
    p.add_argument(
        "--svg", default="", help="also draw load per pod before and after into this SVG file"
    )
    p = operator("apply", "execute a saved plan (resumable: run it again to re-attach)", _apply)
    p.add_argument(
        "plan_file", help="a file written by `modbot-ring plan`, or the id of a stored plan"
    )
    p.add_argument("--concurrency", type=int, default=1, help="moves in flight at once (default 1)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    operator(
        "verify",
        "check that every pod holds only guilds it owns and no migration is stuck",
        _verify,
    )
    p = operator("cancel", "stop the executing plan (moves not yet flipped roll back)", _cancel)
    p.add_argument("plan_id", nargs="?", default="", help="plan id (default: the executing plan)")
    p = operator("migrate", "move one guild to a pod, with its data", _migrate)
    p.add_argument("guild", help="guild id")
    p.add_argument("--to", required=True, help="target pod")
    p.add_argument("--no-wait", action="store_true", help="return once started")
    p = operator("rollback", "restore the assignment saved in a plan file", _rollback)
    p.add_argument("plan_file", help="a file written by `modbot-ring plan`")
    p.add_argument("--concurrency", type=int, default=1, help="moves in flight at once (default 1)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(metavar="ACTION")
    up = db_sub.add_parser("upgrade", help="apply schema migrations (idempotent)")
    from .settings import DB_FLAGS

    add_flags(up, DB_FLAGS)
    up.set_defaults(handler=_db_upgrade)

    from .sim_cli import add_sim_commands

    add_sim_commands(sub, _run_sim)

    dev = sub.add_parser("dev", help="the local stack")
    dev_sub = dev.add_subparsers(metavar="ACTION")
    up_dev = dev_sub.add_parser(
        "up",
        help="run everything locally: simulator, config service, pods, proxy",
        description="Run everything locally on embedded defaults.",
    )
    from .devstack import DEV_FLAGS

    add_flags(up_dev, DEV_FLAGS)
    up_dev.set_defaults(handler=_dev_up)

    serve = sub.add_parser("serve", help="run a server")
    serve_sub = serve.add_subparsers(metavar="SERVER")
    for name, (settings_module, server_module) in SERVERS.items():
        flags: list[Flag] = importlib.import_module(settings_module).SERVE_FLAGS
        sp = serve_sub.add_parser(
            name, help=f"run the {name} server", description=f"Run the {name} server."
        )
        add_flags(sp, flags)
        sp.set_defaults(handler=_serve_handler(server_module))
    return parser


def _serve_handler(module: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        try:
            server = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                raise CliError(f"{module} is not available in this build", EXIT_USAGE) from None
            raise
        return int(server.run(args) or 0)

    return handler


# -- operator commands ------------------------------------------------------------------


def _run_operator(
    args: argparse.Namespace, run: Callable[[argparse.Namespace, ConfigApi], Awaitable[int]]
) -> int:
    async def go() -> int:
        async with ConfigApi(args.config_url, args.token) as api:
            try:
                return await run(args, api)
            except ConfigApiError as exc:
                code = {409: EXIT_CONFLICT, 0: EXIT_UNAVAILABLE, 503: EXIT_UNAVAILABLE}.get(
                    exc.status, EXIT_ERROR
                )
                where = f"HTTP {exc.status}: " if exc.status else ""
                raise CliError(f"{where}{exc.message}", code) from None

    return asyncio.run(go())


def _guild(text: str) -> int:
    try:
        return parse_guild_id(text)
    except InvalidGuildId as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(human())


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


async def _status(args: argparse.Namespace, api: ConfigApi) -> int:
    data = await api.get("/v1/status")

    def human() -> str:
        mode = (data["shard_count"] and f"{data['shard_count']} shards") or "keyed by guild id"
        head = f"table v{data['version']}  ({data['algorithm']}, {mode})"
        rows = [
            (
                p["name"],
                p["state"],
                p["weight"],
                p["shards"],
                p["pins"],
                f"{p['ring_share'] * 100:.1f}%",
                _age(p["heartbeat_age"]),
            )
            for p in data["pods"]
        ]
        pods = _table(["POD", "STATE", "WEIGHT", "SHARDS", "PINS", "RING", "HEARTBEAT"], rows)
        pins = f"{data['pin_count']} pinned guilds" + (
            f", {data['shard_pin_count']} pinned shards" if data["shard_pin_count"] else ""
        )
        lines = [head, pods, pins]
        balance = data.get("balance") or {}
        if balance.get("imbalance") is not None:
            lines.append(
                f"load: imbalance {balance['imbalance']:.2f} (peak/mean), skew {balance['skew']:.2f}; "
                f"balancer {balance['mode']}: {balance['decision']}"
            )
        lines.extend(balance.get("advice") or [])
        return "\n".join(lines)

    _emit(args, data, human)
    return 0


async def _route(args: argparse.Namespace, api: ConfigApi) -> int:
    data = await api.get(f"/v1/guilds/{_guild(args.guild)}/route")
    _emit(
        args,
        data,
        lambda: f"guild {data['guild_id']} -> {data['pod']} ({data['explain']})",
    )
    return 0


async def _pin(args: argparse.Namespace, api: ConfigApi) -> int:
    gid = _guild(args.guild)
    data = await api.put(f"/v1/pins/{gid}", {"pod": args.pod, "reason": args.reason})
    _emit(args, data, lambda: f"pinned guild {gid} to {args.pod} (table v{data['version']})")
    return 0


async def _unpin(args: argparse.Namespace, api: ConfigApi) -> int:
    gid = _guild(args.guild)
    data = await api.delete(f"/v1/pins/{gid}")
    _emit(args, data, lambda: f"unpinned guild {gid} (table v{data['version']})")
    return 0


async def _pods(args: argparse.Namespace, api: ConfigApi) -> int:
    data = await api.get("/v1/pods")
    rows = [
        (p["name"], p["state"], p["weight"], p["url"] or "-", _age(p["heartbeat_age"]))
        for p in data["pods"]
    ]
    _emit(args, data, lambda: _table(["POD", "STATE", "WEIGHT", "URL", "HEARTBEAT"], rows))
    return 0


async def _drain(args: argparse.Namespace, api: ConfigApi) -> int:
    data = await api.post(f"/v1/pods/{args.pod}/drain")
    _emit(args, data, lambda: f"pod {args.pod} is draining (table v{data['version']})")
    return 0


async def _audit(args: argparse.Namespace, api: ConfigApi) -> int:
    data = await api.get("/v1/audit", params={"limit": str(args.limit)})
    rows = [
        (
            e["id"],
            e["at"],
            e["actor"],
            e["action"],
            e["outcome"],
            e["version"] or "-",
            json.dumps(e["detail"], sort_keys=True),
        )
        for e in data["entries"]
    ]
    _emit(
        args,
        data,
        lambda: _table(["ID", "AT", "ACTOR", "ACTION", "OUTCOME", "VERSION", "DETAIL"], rows),
    )
    return 0


def _load_plan_file(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    except ValueError:
        raise CliError(f"{path} is not a plan file (not JSON)", EXIT_USAGE) from None
    if not isinstance(data, dict) or "id" not in data or "moves" not in data:
        raise CliError(f"{path} is not a plan file (no id or moves)", EXIT_USAGE)
    return data


def _plan_table(plan: dict[str, Any]) -> str:
    rows = []
    for pod in sorted(plan.get("before", {})):
        fair = plan.get("fair", {}).get(pod)
        before, after = plan["before"][pod], plan["after"][pod]
        ratio = "-" if not fair else f"{after / fair:.2f}x"
        rows.append(
            (pod, f"{before:.1f}", f"{after:.1f}", "-" if not fair else f"{fair:.1f}", ratio)
        )
    return _table(["POD", "LOAD BEFORE", "LOAD AFTER", "FAIR SHARE", "AFTER/FAIR"], rows)


def _check_writable(path: str) -> None:
    """Refuse before asking for a plan, so a bad path leaves nothing half-done."""
    target = Path(path)
    folder = target.parent
    if target.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        raise CliError(f"cannot write {path}: no such writable folder or file", EXIT_USAGE)


async def _plan(args: argparse.Namespace, api: ConfigApi) -> int:
    for wanted in (args.output, args.svg):
        if wanted:
            _check_writable(wanted)
    plan = await api.post("/v1/plans", {"epsilon": args.epsilon, "max_moves": args.max_moves})
    path = args.output or f"{plan['id']}.json"
    with open(path, "w") as f:
        json.dump(plan, f, indent=2, sort_keys=True)
    if args.svg:
        Path(args.svg).write_text(before_after(plan))

    def human() -> str:
        lines = [
            f"plan {plan['id']} against table v{plan['base_version']}: {len(plan['moves'])} move(s), "
            f"moving {plan['moved_load']:.1f} load (lower bound {plan['lower_bound']:.1f})",
            f"peak/fair {plan['peak_to_mean_before']:.2f}x -> {plan['peak_to_mean_after']:.2f}x (epsilon {plan['epsilon']})",
            _plan_table(plan),
            *(
                f"  {m['kind']} {m['id']}: {m['from']} -> {m['to']} (load {m['load']:.1f})"
                for m in plan["moves"][:20]
            ),
            *(f"cannot fix: {u}" for u in plan["unfixable"]),
            f"dry run: nothing moved. Saved with the current assignment to {path}.",
            f"apply: modbot-ring apply {path}    undo later: modbot-ring rollback {path}",
            *([f"before/after chart: {args.svg}"] if args.svg else []),
        ]
        return "\n".join(lines)

    _emit(args, plan, human)
    return 0


def _confirm(args: argparse.Namespace, question: str) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CliError(
            "refusing to change the cluster without --yes (stdin is not a terminal)", EXIT_USAGE
        )
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise CliError("aborted", EXIT_ERROR)


async def _follow_plan(args: argparse.Namespace, api: ConfigApi, plan_id: str, total: int) -> int:
    """Per-move status lines (or a progress bar on a terminal) until the plan ends."""
    tty = sys.stderr.isatty() and not args.json
    seen: dict[int, str] = {}
    while True:
        record = await api.get(f"/v1/plans/{plan_id}")
        moves = record["migrations"]
        finished = sum(1 for m in moves if m["state"] in ("done", "rolled_back"))
        for m in moves:
            if seen.get(m["id"]) != m["state"] and not tty and not args.json:
                print(
                    f"  guild {m['guild_id']}: {m['source']} -> {m['target']}: {m['state']}",
                    flush=True,
                )
            seen[m["id"]] = m["state"]
        if tty:
            width = 30
            filled = width * finished // max(1, len(moves))
            bar = "#" * filled + "-" * (width - filled)
            print(
                f"\r  [{bar}] {finished}/{len(moves)} guild moves ({total} planned)",
                end="",
                file=sys.stderr,
                flush=True,
            )
        if record["state"] != "executing":
            if tty:
                print(file=sys.stderr)
            final = record["state"]
            _emit(args, record, lambda final=final: f"plan {plan_id}: {final}")
            return 0 if final == "done" else EXIT_ERROR
        await asyncio.sleep(0.5)


async def _apply(args: argparse.Namespace, api: ConfigApi) -> int:
    if Path(args.plan_file).exists() or args.plan_file.endswith(".json"):
        plan = _load_plan_file(args.plan_file)
        record = await api.get(f"/v1/plans/{plan['id']}")
    else:  # a plan id, e.g. one the balancer proposed
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,99}", args.plan_file):
            raise CliError(f"no such plan file, and not a plan id: {args.plan_file!r}", EXIT_USAGE)
        record = await api.get(f"/v1/plans/{args.plan_file}")
        plan = record["plan"]
    if record["state"] != "executing":  # executing: a previous apply was interrupted; re-attach
        if record["state"] not in ("proposed", "interrupted"):
            raise CliError(f"plan {plan['id']} is {record['state']}", EXIT_CONFLICT)
        _confirm(args, f"apply {len(plan['moves'])} move(s) of plan {plan['id']}?")
        await api.post(f"/v1/plans/{plan['id']}/apply", {"concurrency": args.concurrency})
    return await _follow_plan(args, api, plan["id"], len(plan["moves"]))


async def _verify(args: argparse.Namespace, api: ConfigApi) -> int:
    report = await api.get("/v1/verify")
    clean = "clean: every pod holds only guilds it owns"
    _emit(args, report, lambda: clean if report["clean"] else "\n".join(report["problems"]))
    return 0 if report["clean"] else EXIT_ERROR


async def _cancel(args: argparse.Namespace, api: ConfigApi) -> int:
    plan_id = args.plan_id
    if not plan_id:
        executing = [p for p in (await api.get("/v1/plans"))["plans"] if p["state"] == "executing"]
        if not executing:
            raise CliError("no plan is executing", EXIT_CONFLICT)
        plan_id = executing[0]["id"]
    data = await api.post(f"/v1/plans/{plan_id}/cancel")
    _emit(args, data, lambda: f"cancelling plan {plan_id}: moves not yet flipped roll back")
    return 0


async def _migrate(args: argparse.Namespace, api: ConfigApi) -> int:
    gid = _guild(args.guild)
    migration = await api.post("/v1/migrations", {"guild_id": str(gid), "to": args.to})
    if args.no_wait:
        _emit(
            args,
            migration,
            lambda: f"migration {migration['id']} started: guild {gid} -> {args.to}",
        )
        return 0
    state = migration["state"]
    while state not in ("done", "rolled_back"):
        await asyncio.sleep(0.2)
        migration = await api.get(f"/v1/migrations/{migration['id']}")
        if migration["state"] != state and not args.json:
            print(f"  {migration['state']}", flush=True)
        state = migration["state"]
    hold = migration["detail"].get("hold_seconds")

    def human() -> str:
        if state != "done":
            return f"migration {migration['id']} rolled back"
        return f"guild {gid} is on {args.to}" + (
            f" (writes paused {hold * 1000:.0f} ms)" if hold else ""
        )

    _emit(args, migration, human)
    return 0 if state == "done" else EXIT_ERROR


async def _rollback(args: argparse.Namespace, api: ConfigApi) -> int:
    saved = _load_plan_file(args.plan_file).get("current_assignment")
    if not saved:
        raise CliError(f"{args.plan_file} has no saved assignment", EXIT_USAGE)
    plan = await api.post("/v1/plans", {"restore": saved})
    if not plan["moves"]:
        _emit(args, plan, lambda: "the cluster already matches the saved assignment")
        return 0
    _confirm(args, f"move {len(plan['moves'])} shard(s)/guild(s) back to the saved assignment?")
    await api.post(f"/v1/plans/{plan['id']}/apply", {"concurrency": args.concurrency})
    return await _follow_plan(args, api, plan["id"], len(plan["moves"]))


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}s ago"


def _run_sim(args: argparse.Namespace, run: Callable[[argparse.Namespace], Any]) -> int:
    from .sim_cli import SimError

    try:
        print(json.dumps(run(args), indent=2))
    except SimError as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from None
    return 0


def _dev_up(args: argparse.Namespace) -> int:
    from .devstack import run

    return run(args)


def _db_upgrade(args: argparse.Namespace) -> int:
    from .store import StoreError, open_store

    async def go() -> list[str]:
        store = await open_store(args.database_url, schema=args.db_schema, migrate=False)
        try:
            return await store.migrate()
        finally:
            await store.close()

    try:
        applied = asyncio.run(go())
    except StoreError as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from None
    print(
        f"applied {len(applied)} migration(s)"
        + (f": {', '.join(applied)}" if applied else ", schema is current")
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
