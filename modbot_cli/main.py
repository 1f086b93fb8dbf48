"""``modbot-ring``: the operator CLI and the entry point of every server.

Operator commands talk to the config service over HTTP, never to its database
(``db upgrade`` excepted). Every failure ends in a non-zero exit code and exactly one
line on stderr; ``--json`` prints machine-readable output on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from modbot_runtime.flags import Flag, add_flags

if TYPE_CHECKING:  # imported lazily: `--help` must not pay for aiohttp
    from modbot_client.config_api import ConfigApi

__all__ = ["EXIT_CODES", "main"]

# The exit code table (README, Operations): one meaning per code, for every command.
EXIT_ERROR = 1  # anything else: the service refused for another reason, a failed plan
EXIT_USAGE = 2  # bad flags, arguments, files or values (HTTP 400)
EXIT_NOT_FOUND = 3  # no such guild, pod, plan or backup (HTTP 404)
EXIT_CONFLICT = 4  # the state forbids it now: a stale or finished plan, a draining pod (HTTP 409)
EXIT_UNAVAILABLE = 5  # a service or database cannot be reached or is not ready (HTTP 503)
EXIT_CODES = {
    0: "success",
    EXIT_ERROR: "any other failure",
    EXIT_USAGE: "usage: bad flag, argument, value or file (HTTP 400)",
    EXIT_NOT_FOUND: "not found: no such guild, pod, plan or backup (HTTP 404)",
    EXIT_CONFLICT: "conflict: the current state forbids it (HTTP 409)",
    EXIT_UNAVAILABLE: "unreachable: a service or database is down or not ready (HTTP 503)",
}
_HTTP_EXIT = {
    0: EXIT_UNAVAILABLE,
    400: EXIT_USAGE,
    404: EXIT_NOT_FOUND,
    409: EXIT_CONFLICT,
    413: EXIT_USAGE,
    502: EXIT_UNAVAILABLE,
    503: EXIT_UNAVAILABLE,
    504: EXIT_UNAVAILABLE,
}
PLAN_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,99}")

OPERATOR_FLAGS = [
    Flag("config-url", "MODBOT_CONFIG_URL", "http://127.0.0.1:8700", "config service base URL"),
    Flag("token", "MODBOT_ADMIN_TOKEN", "", "admin bearer token", secret=True),
]


# -- the servers: plain imports, inside functions so that `--help` and operator commands load
# only what they use (a settings module holds SERVE_FLAGS and needs nothing but the standard
# library; a server module brings aiohttp and the rest of the `server` extra)


def _config_flags() -> list[Flag]:
    from config_store.settings import SERVE_FLAGS

    return SERVE_FLAGS


def _config_run(args: argparse.Namespace) -> int | None:
    from config_store.service import run

    return run(args)


def _proxy_flags() -> list[Flag]:
    from router_proxy.settings import SERVE_FLAGS

    return SERVE_FLAGS


def _proxy_run(args: argparse.Namespace) -> int | None:
    from router_proxy.server import run

    return run(args)


def _gateway_flags() -> list[Flag]:
    from gateway_app.settings import SERVE_FLAGS

    return SERVE_FLAGS


def _gateway_run(args: argparse.Namespace) -> int | None:
    from gateway_app.server import run

    return run(args)


def _sim_flags() -> list[Flag]:
    from discord_sim.settings import SERVE_FLAGS

    return SERVE_FLAGS


def _sim_run(args: argparse.Namespace) -> int | None:
    from discord_sim.server import run

    return run(args)


@dataclass(frozen=True)
class Server:
    """One ``modbot-ring serve NAME``: its flags (read when the subcommand is parsed) and
    its entry point (imported only when it runs)."""

    flags: Callable[[], list[Flag]]
    run: Callable[[argparse.Namespace], int | None]


SERVERS: dict[str, Server] = {
    "config": Server(_config_flags, _config_run),
    "proxy": Server(_proxy_flags, _proxy_run),
    "gateway": Server(_gateway_flags, _gateway_run),
    "discord-sim": Server(_sim_flags, _sim_run),
}
# the servers' packages: a build without one of them answers "not available", not a traceback
_OURS = frozenset({"config_store", "router_proxy", "gateway_app", "discord_sim"})


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other failure,
    and a subcommand may declare its flags lazily (``populate``): ``dev up`` and ``serve``
    take their flags from modules that import aiohttp, which `--help` must not pay for."""

    def __init__(
        self, *args: Any, populate: Callable[[Parser], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._populate = populate

    def populate(self) -> None:
        fill, self._populate = self._populate, None
        if fill is not None:
            fill(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.populate()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.populate()
        return super().format_help()

    def format_usage(self) -> str:
        self.populate()
        return super().format_usage()

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(EXIT_USAGE, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


class _Version(argparse.Action):
    """``--version``, read from the installed package only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("modbot-ring")
        except PackageNotFoundError:
            text = "unknown (not installed)"
        print(f"modbot-ring {text}")
        parser.exit(0)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# Top-level modules the `server` extra brings (its requirements and what aiohttp pulls in):
# a library-only install (`pip install modbot-ring`) has none of them, and a command that
# needs one says which extra to install instead of a traceback (tests/test_packaging.py
# checks that every third-party import of the services is listed here).
SERVER_EXTRA_MODULES = frozenset(
    {
        "aiohttp", "aiosqlite", "httptools", "discord", "redis", "psycopg", "psycopg_pool",
        "psycopg_binary", "prometheus_client", "nacl", "uvloop", "multidict", "yarl",
        "aiosignal", "aiohappyeyeballs", "frozenlist", "propcache", "async_timeout",
    }
)  # fmt: skip


def _needs_extra(exc: BaseException, argv: Sequence[str] | None) -> str | None:
    """The one stderr line for a module missing because the `server` extra is not installed,
    or None when ``exc`` is anything else."""
    if not isinstance(exc, ModuleNotFoundError):
        return None
    if (exc.name or "").partition(".")[0] not in SERVER_EXTRA_MODULES:
        return None
    words = list(sys.argv[1:] if argv is None else argv)
    command = ["modbot-ring"]
    with contextlib.suppress(Exception):  # name the (sub)command, as far as it parses
        level: argparse.ArgumentParser | None = build_parser()
        for word in words:
            if word.startswith("-") or level is None:
                break
            subs = [a for a in level._actions if isinstance(a, argparse._SubParsersAction)]
            if not subs or word not in subs[0].choices:
                break
            command.append(word)
            level = subs[0].choices[word]
    return (
        f"{' '.join(command)} needs the server extra (no module named {exc.name!r}): "
        "pip install 'modbot-ring[server]'"
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)  # may import a command's flags (and aiohttp with them)
    except ModuleNotFoundError as exc:
        line = _needs_extra(exc, argv)
        if line is None or os.environ.get("MODBOT_DEBUG"):
            raise
        print(line, file=sys.stderr)
        return EXIT_ERROR
    if not hasattr(args, "handler"):  # a command group without its action, or nothing
        words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]
        where = " ".join(["modbot-ring", *words])
        print(f"{where}: error: name a command (see {where} --help)", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = args.handler(args)
        return int(result or 0)
    except CliError as exc:
        print(f"modbot-ring: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, as promised; MODBOT_DEBUG=1 shows the traceback
        if os.environ.get("MODBOT_DEBUG"):
            raise
        line = _needs_extra(exc, argv)
        if line is not None:
            print(line, file=sys.stderr)
            return EXIT_ERROR
        text = " ".join(str(exc).split())[:300]
        print(f"modbot-ring: internal error: {type(exc).__name__}: {text}", file=sys.stderr)
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="modbot-ring",
        description="Route Discord guilds across gateway pods: operate and serve.",
        epilog="Exit codes: 0 ok, 1 other failure, 2 usage, 3 not found, 4 conflict, 5 unreachable.",
    )
    parser.add_argument("--version", action=_Version)
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
    p = operator(
        "drain",
        "drain a pod: hold its placement, propose the plan that empties it (--apply runs it)",
        _drain,
    )
    p.add_argument("pod", help="pod name")
    p.add_argument("--apply", action="store_true", help="run the plan that empties the pod")
    p.add_argument(
        "--concurrency", type=positive_int, default=1, help="moves in flight at once (default 1)"
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("-o", "--output", default="", help="also save the plan to this file")
    p = operator("activate", "undo a drain: the pod takes ring placement again", _activate)
    p.add_argument("pod", help="pod name")
    p = operator("audit", "recent changes, newest first", _audit)
    p.add_argument("--limit", type=positive_int, default=20, help="how many entries (default 20)")

    p = operator(
        "plan",
        "plan a rebalance (dry run: prints before/after, saves plan + current assignment)",
        _plan,
    )
    p.add_argument(
        "--epsilon", type=float, default=0.05, help="allowed load above fair share (default 0.05)"
    )
    p.add_argument("--max-moves", type=positive_int, default=None, help="at most this many moves")
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
    p.add_argument(
        "--concurrency", type=positive_int, default=1, help="moves in flight at once (default 1)"
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p = operator(
        "verify",
        "check that every pod holds only guilds it owns and no migration is stuck",
        _verify,
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="move stranded rows to their owner (a plan of migrations), then check again",
    )
    p.add_argument("--yes", action="store_true", help="with --repair: do not ask for confirmation")
    p = operator("cancel", "stop the executing plan (moves not yet flipped roll back)", _cancel)
    p.add_argument("plan_id", nargs="?", default="", help="plan id (default: the executing plan)")
    p = operator("migrate", "move one guild to a pod, with its data", _migrate)
    p.add_argument("guild", help="guild id")
    p.add_argument("--to", required=True, help="target pod")
    p.add_argument("--no-wait", action="store_true", help="return once started")
    p = operator("rollback", "restore the assignment saved in a plan file", _rollback)
    p.add_argument("plan_file", help="a file written by `modbot-ring plan`")
    p.add_argument(
        "--concurrency", type=positive_int, default=1, help="moves in flight at once (default 1)"
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(metavar="ACTION")
    up = db_sub.add_parser("upgrade", help="apply schema migrations (idempotent)")
    from config_store.settings import DB_FLAGS

    add_flags(up, DB_FLAGS)
    up.set_defaults(handler=_db_upgrade)

    def backup_flags(bk: Parser) -> None:
        from config_store.backup import s3_flags

        add_flags(bk, DB_FLAGS)
        bk.add_argument("--to", required=True, help="s3://bucket/prefix to write the backup under")
        add_flags(bk, s3_flags())

    def restore_flags(rs: Parser) -> None:
        from config_store.backup import s3_flags

        add_flags(rs, DB_FLAGS)
        rs.add_argument(
            "--from",
            dest="source",
            required=True,
            help="s3://bucket/prefix/ (its latest backup) or s3://bucket/prefix/config-....dump",
        )
        add_flags(rs, s3_flags())

    bk = db_sub.add_parser(
        "backup", help="snapshot the control plane's database to S3", populate=backup_flags
    )
    bk.set_defaults(handler=_db_backup)
    rs = db_sub.add_parser(
        "restore",
        help="restore a backup into an empty database, then check it",
        populate=restore_flags,
    )
    rs.set_defaults(handler=_db_restore)

    from .sim import add_sim_commands

    add_sim_commands(sub, _run_sim)

    from .cutover import add_cutover_commands  # import-monolith, commands sync

    add_cutover_commands(sub, CliError)

    dev = sub.add_parser("dev", help="the local stack")
    dev_sub = dev.add_subparsers(metavar="ACTION")

    def dev_flags(p: Parser) -> None:
        from .devstack import DEV_FLAGS

        add_flags(p, DEV_FLAGS)

    up_dev = dev_sub.add_parser(
        "up",
        help="run everything locally: simulator, config service, pods, proxy",
        description="Run everything locally on embedded defaults.",
        populate=dev_flags,
    )
    up_dev.set_defaults(handler=_dev_up)

    def add_pod_flags(p: Parser) -> None:
        from .devstack import ADD_POD_FLAGS, weight_arg

        add_flags(p, ADD_POD_FLAGS)
        p.add_argument(
            "--weight", type=weight_arg, default=None, help="the pod's ring weight, (0, 100]"
        )
        p.add_argument(
            "--wait",
            type=_wait_seconds,
            default=60.0,
            help="seconds to wait for the balancer's plan (default 60)",
        )
        p.add_argument("--json", action="store_true", help="print JSON instead of text")

    add_pod = dev_sub.add_parser(
        "add-pod",
        help="add one more gateway pod to the running `dev up` (the balancer plans for it)",
        description="Ask the running `modbot-ring dev up` for one more gateway pod.",
        populate=add_pod_flags,
    )
    add_pod.set_defaults(handler=_dev_add_pod)

    serve = sub.add_parser("serve", help="run a server")
    serve_sub = serve.add_subparsers(metavar="SERVER")
    for name, server in SERVERS.items():

        def serve_flags(p: Parser, server: Server = server) -> None:
            try:
                flags = server.flags()
            except ModuleNotFoundError as exc:
                if exc.name not in _OURS:
                    raise
                return  # left out of this build: running it says so (_serve_handler)
            add_flags(p, flags)

        sp = serve_sub.add_parser(
            name,
            help=f"run the {name} server",
            description=f"Run the {name} server.",
            populate=serve_flags,
        )
        sp.set_defaults(handler=_serve_handler(server))

    comp = sub.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a static completion script generated from this parser: "
        'eval "$(modbot-ring completion bash)" in ~/.bashrc, or the same with zsh in ~/.zshrc.',
    )
    comp.add_argument("shell", choices=["bash", "zsh"])
    comp.set_defaults(handler=lambda args: _completion(parser, args.shell))
    return parser


def _serve_handler(server: Server) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        try:
            return int(server.run(args) or 0)
        except ModuleNotFoundError as exc:
            if exc.name in _OURS:  # a whole package left out; a missing module is a bug
                raise CliError(f"{exc.name} is not available in this build", EXIT_USAGE) from None
            raise

    return handler


# -- operator commands ------------------------------------------------------------------


def _run_operator(
    args: argparse.Namespace, run: Callable[[argparse.Namespace, ConfigApi], Awaitable[int]]
) -> int:
    from modbot_client.config_api import ConfigApi, ConfigApiError

    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", args.config_url or ""):
        raise CliError(
            f"--config-url must be http(s)://host[:port], got {args.config_url[:80]!r}", EXIT_USAGE
        )

    async def go() -> int:
        async with ConfigApi(args.config_url, args.token) as api:
            try:
                return await run(args, api)
            except ConfigApiError as exc:
                code = _HTTP_EXIT.get(exc.status, EXIT_ERROR)
                where = f"HTTP {exc.status}: " if exc.status else ""
                raise CliError(f"{where}{exc.message}", code) from None

    return asyncio.run(go())


def _guild(text: str) -> int:
    from modbot_ring import InvalidGuildId, parse_guild_id

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
    """Drain = hold, plan, (apply): the pod keeps what it holds until the plan has moved
    it, so no guild's data is ever away from the pod that serves it."""
    if args.output:
        _check_writable(args.output)
    if args.apply:
        _refuse_without_consent(args)  # before anything changes
    data = await api.post(f"/v1/pods/{args.pod}/drain")
    plan = await api.post("/v1/plans", {"drain": args.pod})
    if args.output:
        with open(args.output, "w") as f:
            json.dump(plan, f, indent=2, sort_keys=True)
    if not args.json:
        print(
            f"pod {args.pod} is draining (table v{data['version']}): no new ring placement; "
            "what it holds stays until the plan moves it"
        )
        print(f"plan {plan['id']}: {len(plan['moves'])} move(s) empty {args.pod}")
        for m in plan["moves"][:20]:
            print(f"  {m['kind']} {m['id']}: {m['from']} -> {m['to']} (load {m['load']:.1f})")
    if not args.apply:
        _emit(
            args,
            plan,
            lambda: (
                f"apply: modbot-ring apply {plan['id']}    undo: modbot-ring activate {args.pod}"
            ),
        )
        return 0
    if not plan["moves"]:
        _emit(args, plan, lambda: f"pod {args.pod} holds nothing: drained")
        return 0
    _confirm(args, f"apply {len(plan['moves'])} move(s) to empty {args.pod}?")
    await api.post(f"/v1/plans/{plan['id']}/apply", {"concurrency": args.concurrency})
    return await _follow_plan(args, api, plan["id"], len(plan["moves"]))


async def _activate(args: argparse.Namespace, api: ConfigApi) -> int:
    data = await api.post(f"/v1/pods/{args.pod}/activate")
    _emit(
        args,
        data,
        lambda: (
            f"pod {args.pod} is active (table v{data['version']}): it takes ring placement again"
        ),
    )
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
    if not isinstance(data["id"], str) or not PLAN_ID.fullmatch(data["id"]):
        raise CliError(
            f"{path} is not a plan file (bad plan id {str(data['id'])[:40]!r})", EXIT_USAGE
        )
    if not isinstance(data["moves"], list):
        raise CliError(f"{path} is not a plan file (moves is not a list)", EXIT_USAGE)
    return data


def load_unit(plan: dict[str, Any]) -> str:
    return str(plan.get("load_unit") or "events/s (a guild a pod holds counts at least 1)")


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
        from config_store.charts import before_after

        Path(args.svg).write_text(before_after(plan))

    def human() -> str:
        lines = [
            f"plan {plan['id']} against table v{plan['base_version']}: {len(plan['moves'])} move(s), "
            f"moving {plan['moved_load']:.1f} load (lower bound {plan['lower_bound']:.1f})",
            f"peak/fair {plan['peak_to_mean_before']:.2f}x -> {plan['peak_to_mean_after']:.2f}x (epsilon {plan['epsilon']})",
            f"LOAD is {load_unit(plan)}",
            _plan_table(plan),
            *(
                f"  {m['kind']} {m['id']}: {m['from']} -> {m['to']} (load {m['load']:.1f})"
                for m in plan["moves"][:20]
            ),
            *(f"cannot fix: {u}" for u in plan["unfixable"]),
            "dry run: nothing moved (a draft plan: it expires when someone else changes the table).",
            f"Saved with the current assignment to {path}.",
            f"apply: modbot-ring apply {path}    undo later: modbot-ring rollback {path}",
            *([f"before/after chart: {args.svg}"] if args.svg else []),
        ]
        return "\n".join(lines)

    _emit(args, plan, human)
    return 0


def _refuse_without_consent(args: argparse.Namespace) -> None:
    if not args.yes and not sys.stdin.isatty():
        raise CliError(
            "refusing to change the cluster without --yes (stdin is not a terminal)", EXIT_USAGE
        )


def _confirm(args: argparse.Namespace, question: str) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CliError(
            "refusing to change the cluster without --yes (stdin is not a terminal)", EXIT_USAGE
        )
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise CliError("aborted", EXIT_ERROR)


ENDED = ("done", "rolled_back", "cancelled", "aborted")


def _moves_done(
    table: Any, moves: Sequence[dict[str, Any]], migrations: Sequence[dict[str, Any]] = ()
) -> int:
    """Plan moves that are over: their unit (a guild or a shard) is on its target and no
    migration of it is still running (a repair is over when its migration is done)."""
    running_guilds = {str(m["guild_id"]) for m in migrations if m["state"] not in ENDED}
    running_shards = {
        str(m.get("shard")) for m in migrations if m["state"] not in ENDED and m.get("shard")
    }
    repaired = {str(m["guild_id"]) for m in migrations if m["state"] == "done"}
    done = 0
    for m in moves:
        try:
            if m["kind"] == "shard":
                done += str(m["id"]) not in running_shards and (
                    table.shard_owner(int(m["id"])) == m["to"]
                )
            elif str(m["id"]) in running_guilds:
                continue
            elif m["kind"] == "repair":
                done += str(m["id"]) in repaired
            else:
                done += table.owner(int(m["id"])) == m["to"]
        except Exception:  # a move the table cannot answer for (no route): not done
            continue
    return done


def progress_bar(done: int, total: int, kinds: Sequence[str], width: int = 30) -> str:
    """One unit, the plan's moves: e.g. ``[###---] 1/2 moves (1 shard, 1 guild)``."""
    filled = width * done // max(1, total)
    counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    what = ", ".join(f"{n} {k}{'' if n == 1 else 's'}" for k, n in counts.items())
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total} moves" + (
        f" ({what})" if what else ""
    )


async def _follow_plan(args: argparse.Namespace, api: ConfigApi, plan_id: str, total: int) -> int:
    """Per-move status lines (or a progress bar of plan moves on a terminal) until the plan ends."""
    tty = sys.stderr.isatty() and not args.json
    seen: dict[int, str] = {}
    while True:
        record = await api.get(f"/v1/plans/{plan_id}")
        moves = record["migrations"]
        for m in moves:
            if seen.get(m["id"]) != m["state"] and not tty and not args.json:
                print(
                    f"  guild {m['guild_id']}: {m['source']} -> {m['target']}: {m['state']}",
                    flush=True,
                )
            seen[m["id"]] = m["state"]
        if tty:
            from modbot_ring import RoutingTable

            planned = record["plan"]["moves"]
            table = RoutingTable.from_dict(await api.get("/v1/table"))
            finished = _moves_done(table, planned, moves)
            bar = progress_bar(finished, total, [m["kind"] for m in planned])
            print(f"\r  {bar}", end="", file=sys.stderr, flush=True)
        if record["state"] != "executing":
            if tty:
                print(file=sys.stderr)
            final: str = record["state"]

            def human(final: str = final) -> str:
                return f"plan {plan_id}: {final}"

            _emit(args, record, human)
            return 0 if final == "done" else EXIT_ERROR
        await asyncio.sleep(0.5)


async def _apply(args: argparse.Namespace, api: ConfigApi) -> int:
    if Path(args.plan_file).exists() or args.plan_file.endswith(".json"):
        plan = _load_plan_file(args.plan_file)
        record = await api.get(f"/v1/plans/{plan['id']}")
    else:  # a plan id, e.g. one the balancer proposed
        if not PLAN_ID.fullmatch(args.plan_file):
            raise CliError(f"no such plan file, and not a plan id: {args.plan_file!r}", EXIT_USAGE)
        record = await api.get(f"/v1/plans/{args.plan_file}")
        plan = record["plan"]
    if record["state"] != "executing":  # executing: a previous apply was interrupted; re-attach
        if record["state"] == "expired":
            raise CliError(
                f"plan {plan['id']} is expired: the table changed after it was made; regenerate it",
                EXIT_CONFLICT,
            )
        if record["state"] not in ("draft", "proposed", "interrupted"):
            raise CliError(f"plan {plan['id']} is {record['state']}", EXIT_CONFLICT)
        _confirm(args, f"apply {len(plan['moves'])} move(s) of plan {plan['id']}?")
        await api.post(f"/v1/plans/{plan['id']}/apply", {"concurrency": args.concurrency})
    return await _follow_plan(args, api, plan["id"], len(plan["moves"]))


async def _verify(args: argparse.Namespace, api: ConfigApi) -> int:
    if args.repair:
        _refuse_without_consent(args)
    report = await api.get("/v1/verify")
    if args.repair and not report["clean"]:
        plan = await api.post("/v1/plans", {"repair": True})
        for problem in plan["unfixable"]:
            print(f"cannot repair: {problem}", file=sys.stderr if args.json else sys.stdout)
        if plan["moves"]:
            if not args.json:
                for m in plan["moves"]:
                    print(f"  repair guild {m['id']}: rows on {m['from']} -> owner {m['to']}")
            _confirm(args, f"move the stranded rows of {len(plan['moves'])} guild(s)?")
            await api.post(f"/v1/plans/{plan['id']}/apply", {"concurrency": 1})
            quiet = argparse.Namespace(**{**vars(args), "json": True})
            with contextlib.redirect_stdout(io.StringIO()):
                await _follow_plan(quiet, api, plan["id"], len(plan["moves"]))
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


def restore_moves(table: Any, saved: dict[str, Any]) -> tuple[int, int]:
    """(shards, guilds) that differ from a saved assignment: what a rollback would move,
    counted before anything is created on the service (Migrator.restore_plan's rule)."""
    shards = guilds = 0
    count = table.shard_count or 0
    for shard, pod in (saved.get("shards") or {}).items():
        if str(shard).isdigit() and int(shard) < count and pod:
            current = table.shard_owner(int(shard))
            shards += bool(current and current != pod)
    for gid, pod in (saved.get("pins") or {}).items():
        with contextlib.suppress(Exception):
            guilds += table.owner(int(gid)) != pod
    return shards, guilds


async def _rollback(args: argparse.Namespace, api: ConfigApi) -> int:
    """Ask first, create after: an answer of "no" leaves no plan behind."""
    from modbot_ring import RoutingTable

    saved = _load_plan_file(args.plan_file).get("current_assignment")
    if not isinstance(saved, dict) or not saved:
        raise CliError(f"{args.plan_file} has no saved assignment", EXIT_USAGE)
    if not isinstance(saved.get("shards") or {}, dict) or not isinstance(
        saved.get("pins") or {}, dict
    ):
        raise CliError(f"{args.plan_file}: the saved assignment is malformed", EXIT_USAGE)
    _refuse_without_consent(args)
    shards, guilds = restore_moves(RoutingTable.from_dict(await api.get("/v1/table")), saved)
    if not shards + guilds:
        _emit(args, {"moves": []}, lambda: "the cluster already matches the saved assignment")
        return 0
    _confirm(args, f"move {shards} shard(s) and {guilds} guild(s) back to the saved assignment?")
    plan = await api.post("/v1/plans", {"restore": saved})
    if not plan["moves"]:
        _emit(args, plan, lambda: "the cluster already matches the saved assignment")
        return 0
    await api.post(f"/v1/plans/{plan['id']}/apply", {"concurrency": args.concurrency})
    return await _follow_plan(args, api, plan["id"], len(plan["moves"]))


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}s ago"


def _run_sim(args: argparse.Namespace, run: Callable[[argparse.Namespace], Any]) -> int:
    from .sim import SimError

    try:
        print(json.dumps(run(args), indent=2))
    except SimError as exc:
        raise CliError(str(exc), exc.code) from None
    return 0


def _dev_up(args: argparse.Namespace) -> int:
    from .devstack import run

    return run(args)


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value <= 600:
        raise argparse.ArgumentTypeError(f"must be 0..600 seconds, got {text}")
    return value


def _dev_add_pod(args: argparse.Namespace) -> int:
    from .devstack import DevError, add_pod

    try:
        code, text = add_pod(args)
    except DevError as exc:
        raise CliError(str(exc), exc.code) from None
    print(text)
    return code


def _check_database_url(url: str) -> None:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("postgres", "postgresql", "sqlite"):
        raise CliError(
            f"--database-url must be postgresql://... or sqlite:///path, not {url[:80]!r}",
            EXIT_USAGE,
        )


def _quiet_pool_logs() -> None:
    """The connection pool logs every failed attempt (several lines each); the CLI's
    answer is its own one line."""
    import logging

    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)


async def _probe_database(url: str) -> None:
    """One connection attempt with a short timeout before a pool is opened, so a dead
    database fails in one line at once instead of after the pool's 5 s of retries."""
    if not url.lower().startswith("postgres"):
        return
    import psycopg

    try:
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=3)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"database unavailable: {first}", EXIT_UNAVAILABLE) from None
    except psycopg.ProgrammingError as exc:  # a malformed URL
        raise CliError(f"--database-url: {' '.join(str(exc).split())}", EXIT_USAGE) from None
    await conn.close()


def _db_upgrade(args: argparse.Namespace) -> int:
    from config_store.store import StoreError, open_store

    _check_database_url(args.database_url)
    _quiet_pool_logs()

    async def go() -> list[str]:
        await _probe_database(args.database_url)
        try:
            store = await open_store(args.database_url, schema=args.db_schema, migrate=False)
        except ValueError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
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


def _backup_call(action: str, args: argparse.Namespace) -> int:
    from config_store.backup import BackupError, backup, client_from_args, restore
    from config_store.s3 import S3Error, S3Url

    _check_database_url(args.database_url)
    try:
        url = S3Url.parse(args.to if action == "backup" else args.source)
        s3 = client_from_args(args)
        if action == "backup":
            m = backup(args.database_url, args.db_schema, url, s3)
            print(
                f"backed up table version {m.table_version} ({m.size} bytes) to s3://{url.bucket}/{m.key}"
            )
        else:
            m = restore(args.database_url, url, s3)
            print(f"restored s3://{url.bucket}/{m.key}: table version {m.table_version}, checked")
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except S3Error as exc:
        code = _HTTP_EXIT.get(exc.status, EXIT_ERROR)
        raise CliError(str(exc), code) from None
    except BackupError as exc:
        code = (
            EXIT_UNAVAILABLE if exc.unavailable else EXIT_NOT_FOUND if exc.not_found else EXIT_ERROR
        )
        raise CliError(str(exc), code) from None
    return 0


def _db_backup(args: argparse.Namespace) -> int:
    return _backup_call("backup", args)


def _db_restore(args: argparse.Namespace) -> int:
    return _backup_call("restore", args)


def _completion(parser: argparse.ArgumentParser, shell: str) -> int:
    """A static script from the parser itself, so it never drifts from the commands and
    costs nothing at startup (no argcomplete hook running Python on every TAB)."""
    print(completion_script(parser, shell))
    return 0


def command_tree(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Every command path ("", "db", "db upgrade", ...) -> the words that may follow it."""
    tree: dict[str, list[str]] = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        if isinstance(p, Parser):
            p.populate()
        words = [o for a in p._actions for o in a.option_strings if o.startswith("--")]
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    words.append(name)
                    walk(child, f"{path} {name}".strip())
        tree[path] = words

    walk(parser, "")
    return tree


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    tree = command_tree(parser)
    known = "|".join(f'"{path}"' for path in sorted(tree) if path)
    cases = "\n".join(
        f'        "{path}") words="{" ".join(words)}" ;;' for path, words in sorted(tree.items())
    )
    body = f"""# modbot-ring {shell} completion (generated by `modbot-ring completion {shell}`)
_modbot_ring() {{
    local cur path="" w i words=""
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        case "${{path:+$path }}$w" in
            {known}) path="${{path:+$path }}$w" ;;
        esac
    done
    case "$path" in
{cases}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _modbot_ring modbot-ring
"""
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + body
    return body


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
