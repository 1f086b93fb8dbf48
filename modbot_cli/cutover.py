"""The cut-over commands of ``modbot-ring``: ``import-monolith`` and ``commands sync``.

Registered by ``modbot_cli.main`` (``add_cutover_commands``); failures end as the CLI's
one line on stderr with the CLI's exit codes (2 usage, 3 not found, 4 conflict,
5 unreachable, 1 anything else).
``commands sync`` builds the definitions from the gateway pods' discord.py tree, so it
loads ``gateway_app`` lazily, as ``serve gateway`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from typing import Any

from modbot_runtime.flags import Flag, add_flags

IMPORT_FLAGS = [
    Flag("config-url", "MODBOT_CONFIG_URL", "http://127.0.0.1:8700", "config service base URL"),
    Flag(
        "token",
        "MODBOT_ADMIN_TOKEN",
        "",
        "admin (or read) token for the routing table",
        secret=True,
    ),
    Flag(
        "migration-token",
        "MODBOT_MIGRATION_TOKEN",
        "",
        "the pods' migration API token (imports go through it)",
        secret=True,
    ),
]
COMMAND_FLAGS = [
    Flag(
        "discord-api-url",
        "MODBOT_DISCORD_API_URL",
        "https://discord.com/api/v10",
        "Discord REST base (the simulator locally)",
    ),
    Flag("discord-token", "DISCORD_TOKEN", "", "bot token", secret=True),
]


# monolith.py and gateway_app.commands_sync keep their own numbering (2 bad input,
# 3 conflict, 4 unreachable): translated here to the CLI's table
_LEGACY_EXIT = {3: 4, 4: 5}


def _exit(code: int) -> int:
    return _LEGACY_EXIT.get(code, code)


def add_cutover_commands(sub: Any, error: Callable[[str, int], Exception]) -> None:
    """Add the subcommands; ``error(message, code)`` is the CLI's one-line failure."""
    p = sub.add_parser(
        "import-monolith",
        help="load today's mod-bot SQLite file into the pods that own its guilds",
        description="Load a mod-bot SQLite database into the gateway pods (resumable, idempotent).",
    )
    p.add_argument("path", help="the mod-bot SQLite file (opened read-only)")
    add_flags(p, IMPORT_FLAGS)
    p.add_argument(
        "--dry-run", action="store_true", help="print rows per pod and table; write nothing"
    )
    p.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="import the rest when rows have no resolvable guild or invalid values (reported)",
    )
    p.add_argument(
        "--chunk-rows", type=int, default=5000, help="rows per request to a pod (default 5000)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=lambda args: _import(args, error))

    commands = sub.add_parser("commands", help="Discord application commands")
    csub = commands.add_subparsers(metavar="ACTION")
    s = csub.add_parser(
        "sync",
        help="register the pods' commands with Discord if they differ (PUT only on a change)",
        description="Compare the pods' command definitions with Discord's and overwrite on a difference.",
    )
    add_flags(s, COMMAND_FLAGS)
    s.add_argument(
        "--guild", default="", help="sync this guild's commands instead of the global ones"
    )
    s.add_argument("--dry-run", action="store_true", help="print the difference; send nothing")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(handler=lambda args: _sync(args, error))


def _import(args: argparse.Namespace, error: Callable[[str, int], Exception]) -> int:
    from config_store.monolith import MonolithError, Options, main

    if args.chunk_rows < 1:
        raise error("--chunk-rows must be at least 1", 2)
    opts = Options(
        path=args.path,
        config_url=args.config_url,
        token=args.token,
        migration_token=args.migration_token,
        dry_run=args.dry_run,
        skip_bad_rows=args.skip_bad_rows,
        chunk_rows=args.chunk_rows,
        progress=not args.no_progress,
    )
    try:
        return main(opts, as_json=args.json)
    except MonolithError as exc:
        raise error(str(exc), _exit(exc.code)) from None


def _sync(args: argparse.Namespace, error: Callable[[str, int], Exception]) -> int:
    guild: int | None = None
    if args.guild:
        if not args.guild.isdigit() or not 0 < int(args.guild) < 2**63:
            raise error(f"invalid guild id {args.guild!r}", 2)
        guild = int(args.guild)
    try:
        from gateway_app import commands_sync
    except ModuleNotFoundError as exc:
        if exc.name != "gateway_app":  # a dependency: the CLI names the extra to install
            raise
        raise error("gateway_app is not available in this build", 2) from None
    try:
        result = asyncio.run(
            commands_sync.sync(
                args.discord_api_url, args.discord_token, guild_id=guild, dry_run=args.dry_run
            )
        )
    except commands_sync.SyncError as exc:
        raise error(str(exc), _exit(exc.code)) from None
    print(json.dumps(result.to_json(), indent=2) if args.json else result.human())
    return 0
