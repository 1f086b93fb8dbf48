"""``modbot-ring sim ...``: drive the local Discord simulator's control API from a shell."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any

from modbot_runtime.flags import Flag, add_flags

SIM_FLAGS = [Flag("sim-url", "MODBOT_SIM_URL", "http://127.0.0.1:8790", "the simulator's base URL")]


class SimError(Exception):
    """One line for the operator; ``code`` is the CLI's exit code (2 usage, 3 not found,
    4 conflict, 5 unreachable, 1 anything else)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


_HTTP_EXIT = {400: 2, 404: 3, 409: 4, 422: 2, 502: 5, 503: 5, 504: 5}


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{args.sim_url.rstrip('/')}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise SimError(
            f"simulator answered {exc.code}: {exc.read().decode(errors='replace')[:200]}",
            _HTTP_EXIT.get(exc.code, 1),
        ) from None
    except urllib.error.URLError as exc:
        raise SimError(f"cannot reach the simulator at {args.sim_url}: {exc.reason}", 5) from None
    except (TimeoutError, ConnectionError) as exc:
        raise SimError(f"the simulator at {args.sim_url} did not answer: {exc}", 5) from None
    except ValueError as exc:  # a URL that is not one
        raise SimError(f"--sim-url {args.sim_url!r}: {exc}", 2) from None


def add_sim_commands(sub: Any, handler: Any) -> None:
    sim = sub.add_parser("sim", help="drive the local Discord simulator")
    sim_sub = sim.add_subparsers(metavar="ACTION")

    def command(name: str, help: str, run: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sim_sub.add_parser(name, help=help, description=help)
        add_flags(p, SIM_FLAGS)
        p.set_defaults(handler=lambda args: handler(args, run))
        return p

    command(
        "info", "the simulator's URLs and public key", lambda a: _call(a, "GET", "/control/info")
    )
    command("guilds", "list guilds", lambda a: _call(a, "GET", "/control/guilds"))
    p = command(
        "create-guilds",
        "create guilds (each gets channels, roles and members)",
        lambda a: _call(a, "POST", "/control/guilds", {"count": a.count, "members": a.members}),
    )
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--members", type=int, default=3)
    p = command(
        "messages",
        "inject MESSAGE_CREATE events at a rate",
        lambda a: _call(
            a,
            "POST",
            "/control/messages",
            {"guild_ids": a.guild, "count": a.count, "rate": a.rate, "content": a.content},
        ),
    )
    p.add_argument("--guild", action="append", required=True, help="guild id (repeatable)")
    p.add_argument("--count", type=int, default=1, help="messages per guild")
    p.add_argument(
        "--rate", type=float, default=0, help="messages per second (0: as fast as possible)"
    )
    p.add_argument("--content", default="hello from the simulator")
    p = command(
        "event",
        "inject a message delete, ban or member removal",
        lambda a: _call(
            a,
            "POST",
            "/control/events",
            {"type": a.type, "guild_id": a.guild, "user_id": a.user, "message_id": a.message},
        ),
    )
    p.add_argument("type", choices=["message_delete", "ban", "member_remove"])
    p.add_argument("--guild", required=True)
    p.add_argument("--user", default=None)
    p.add_argument("--message", default=None)
    p = command(
        "interact",
        "send a signed interaction webhook (as Discord) and print the answer",
        _interact,
    )
    p.add_argument(
        "--url",
        required=True,
        help="the interactions endpoint, e.g. http://127.0.0.1:8080/webhooks/discord",
    )
    p.add_argument("--guild", required=True)
    p.add_argument("--command", required=True, help="command name, e.g. setup, modreport, Report")
    p.add_argument(
        "--kind",
        type=int,
        choices=(1, 3),
        default=None,
        help="1 slash command, 3 message context menu (default: 3 with --target-message, else 1)",
    )
    p.add_argument("--options", default="{}", help='JSON, e.g. {"user": ["user", "123"]}')
    p.add_argument(
        "--target-message",
        default=None,
        metavar="ID",
        help="a message the simulator sent (sim messages prints ids): invoke a message"
        " context-menu command such as Report on it",
    )
    p.add_argument("--user", default=None, help="the member who invokes it (default: the owner)")
    p = command(
        "calls",
        "REST calls the simulator received",
        lambda a: _call(a, "GET", f"/control/calls?since={a.since}"),
    )
    p.add_argument("--since", type=int, default=0)
    command(
        "sessions", "gateway sessions and IDENTIFYs", lambda a: _call(a, "GET", "/control/sessions")
    )
    command(
        "drop-sessions",
        "disconnect every gateway session (clients RESUME)",
        lambda a: _call(a, "POST", "/control/sessions/drop"),
    )
    # sign-in users for the simulator's OAuth2 (discord_sim/oauth.py)
    p = command(
        "user",
        "create or replace a user who can sign in, with permissions per guild",
        lambda a: _call(a, "POST", "/control/oauth/users", _user_body(a)),
    )
    p.add_argument("username")
    p.add_argument("--id", default=None, help="user id (default: a new snowflake)")
    p.add_argument(
        "--guild",
        action="append",
        default=[],
        metavar="ID:PERMISSIONS[:ROLE,ROLE]",
        help="a guild the user is in, e.g. 123:32 (Manage Server) or 123:0:456 (role 456)",
    )
    command("users", "users who can sign in", lambda a: _call(a, "GET", "/control/oauth/users"))


def _interact(args: argparse.Namespace) -> Any:
    """A type 2 interaction as Discord sends it: slash (data.type 1) or, with
    ``--target-message``, message context menu (data.type 3, ``target_id`` and the message
    in ``resolved.messages``). A non-2xx answer from the endpoint is a failure (exit 1)."""
    kind = args.kind or (3 if args.target_message else 1)
    body: dict[str, Any] = {
        "url": args.url,
        "guild_id": args.guild,
        "command": args.command,
        "kind": kind,
        "options": _json_option(args.options),
    }
    if args.user:
        body["user_id"] = _snowflake("--user", args.user)
    if args.target_message is not None:
        if kind != 3:
            raise SimError("--target-message needs a message command (--kind 3)")
        body["target_message_id"] = _snowflake("--target-message", args.target_message)
        body["require_target"] = True  # Discord only offers the menu on a message that exists
    elif kind == 3:
        raise SimError("a message command (--kind 3) needs --target-message ID")
    answer = _call(args, "POST", "/control/interactions", body)
    status = int(answer.get("status", 0))
    if not 200 <= status < 300:
        text = " ".join(str(answer.get("body", "")).split())[:200]
        raise SimError(f"the interactions endpoint answered {status}: {text}", 1)
    return answer


def _snowflake(flag: str, text: str) -> str:
    if not text.isdigit() or len(text) > 20:
        raise SimError(f"{flag} {text[:40]!r}: expected a numeric id")
    return text


def _json_option(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise SimError(f"--options is not JSON: {text[:80]!r}") from None


def _user_body(args: argparse.Namespace) -> dict[str, Any]:
    guilds: dict[str, Any] = {}
    for spec in args.guild:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[0].isdigit() or not parts[1].isdigit():
            raise SimError(f"--guild {spec!r}: expected ID:PERMISSIONS[:ROLE,ROLE]")
        roles = [r for r in (parts[2].split(",") if len(parts) == 3 else []) if r]
        guilds[parts[0]] = {"permissions": parts[1], "roles": roles}
    return {"id": args.id, "username": args.username, "guilds": guilds}
