"""Every subcommand of ``modbot-ring``, found by walking the argparse tree, fails the same
way: exactly one line on stderr, no traceback, and the exit code of the README's table
(2 usage, 3 not found, 4 conflict, 5 unreachable, 1 anything else).

A command added without a case here fails ``test_every_command_has_cases``. Commands run
in-process (``main(argv)``) so the walk stays fast; the console script is exercised in
test_cli.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ADMIN, AppServer, free_port
from monolith_gen import create_schema

from modbot_cli import main as cli_mod

GID = "81384788765712384"
DEAD = f"http://127.0.0.1:{free_port()}"


def leaves() -> dict[str, cli_mod.Parser]:
    """'status', 'db upgrade', 'sim info', ...: every command that runs a handler."""
    found: dict[str, cli_mod.Parser] = {}

    def walk(parser: cli_mod.Parser, path: str) -> None:
        parser.populate()
        subs = [a for a in parser._actions if isinstance(a, argparse_subparsers())]
        if not subs and parser.get_default("handler") is not None:
            found[path] = parser
        for action in subs:
            for name, child in action.choices.items():
                walk(child, f"{path} {name}".strip())

    walk(cli_mod.build_parser(), "")  # type: ignore[arg-type]
    return found


def argparse_subparsers() -> type:
    import argparse

    return argparse._SubParsersAction


@contextlib.contextmanager
def environ(extra: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(extra)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(argv: list[str], env: dict[str, str] | None = None, stdin: str | None = None):
    """``main(argv)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = _Tty(stdin)
    try:
        with environ(env or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli_mod.main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdin = saved_stdin
    return code, out.getvalue(), err.getvalue()


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("walk")
    plan = folder / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "id": "plan-walk",
                "moves": [],
                "current_assignment": {"shards": {"0": "gateway-9"}, "pins": {}},
            }
        )
    )
    bad_id = folder / "bad-id.json"
    bad_id.write_text(json.dumps({"id": "../status?", "moves": [], "current_assignment": {}}))
    monolith = folder / "mod-bot.sqlite3"
    conn = sqlite3.connect(monolith)
    create_schema(conn, "2025-07")
    conn.commit()
    conn.close()
    return {"plan": str(plan), "bad_id": str(bad_id), "monolith": str(monolith), "dir": str(folder)}


# Valid arguments per command, the service unreachable: each must exit 5. None: the
# command talks to no service (it starts one, or prints something).
def unreachable_cases(files: dict[str, str]) -> dict[str, list[str] | None]:
    dead_pg = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    sim = ["--sim-url", DEAD]
    s3 = ["--s3-endpoint", DEAD, "--s3-access-key-id", "k", "--s3-secret-access-key", "s"]
    return {
        "status": [],
        "route": [GID],
        "pin": [GID, "gateway-0"],
        "unpin": [GID],
        "pods": [],
        "drain": ["gateway-0"],
        "activate": ["gateway-0"],
        "audit": [],
        "plan": ["-o", f"{files['dir']}/p.json"],
        "apply": ["plan-x", "--yes"],
        "verify": [],
        "cancel": ["plan-x"],
        "migrate": [GID, "--to", "gateway-1"],
        "rollback": [files["plan"], "--yes"],
        "db upgrade": ["--database-url", dead_pg],
        "db backup": ["--database-url", dead_pg, "--to", "s3://b/x", *s3],
        "db restore": ["--database-url", f"sqlite:///{files['dir']}/r.db", "--from", "s3://b/x/"]
        + s3,
        "sim info": sim,
        "sim guilds": sim,
        "sim create-guilds": sim,
        "sim messages": [*sim, "--guild", GID],
        "sim event": [*sim, "ban", "--guild", GID],
        "sim interact": [*sim, "--url", DEAD, "--guild", GID, "--command", "setup"],
        "sim calls": sim,
        "sim sessions": sim,
        "sim drop-sessions": sim,
        "sim user": [*sim, "alice"],
        "sim users": sim,
        "import-monolith": [files["monolith"], "--no-progress"],
        "commands sync": ["--discord-api-url", DEAD, "--discord-token", "x"],
        "dev up": None,
        "dev add-pod": ["--state-dir", f"{files['dir']}/no-stack"],
        "completion": None,
        "serve config": None,
        "serve proxy": None,
        "serve gateway": None,
        "serve discord-sim": None,
    }


def with_service(path: str, args: list[str], url: str = DEAD) -> list[str]:
    """Operator commands (and import-monolith) take the config service's URL and token."""
    parser = leaves()[path]
    extra: list[str] = []
    if any("--config-url" in a.option_strings for a in parser._actions):
        extra += ["--config-url", url]
    if any("--token" in a.option_strings for a in parser._actions):
        extra += ["--token", ADMIN]
    return [*path.split(), *args, *extra]


def test_every_command_has_cases(files):
    assert set(leaves()) == set(unreachable_cases(files)), "a command without walk cases"


def test_every_command_refuses_a_bad_flag_in_one_line(files):
    cases = unreachable_cases(files)
    for path in leaves():
        args = cases[path] or (["bash"] if path == "completion" else [])
        code, out, err = run([*with_service(path, args), "--no-such-flag"])
        assert code == 2, (path, code, err)
        assert one_line(err) and "--no-such-flag" in err and not out, (path, err)
        code, out, err = run([*path.split(), "--no-such-flag"])  # and without its arguments
        assert code == 2 and one_line(err) and not out, (path, err)


def test_argparse_errors_are_one_line_and_bad_values_refused(files):
    for argv, text in [
        (["audit", "--limit", "-5"], "at least 1"),
        (["apply", "x", "--concurrency", "0"], "at least 1"),
        (["plan", "--max-moves", "abc"], "whole number"),
        (["nope"], "invalid choice"),
        (["pin", GID], "required"),
        (["completion", "fish"], "invalid choice"),
    ]:
        code, _, err = run(argv)
        assert code == 2 and one_line(err) and text in err, (argv, err)
    code, _, err = run(["db"])  # a command group without its action: usage
    assert code == 2 and one_line(err)


def test_every_command_reports_an_unreachable_service_as_5(files):
    for path, args in unreachable_cases(files).items():
        if args is None:
            continue
        code, _, err = run(with_service(path, args), env={"MODBOT_S3_BUCKET": "b"})
        assert code == 5, (path, code, err)
        assert one_line(err), (path, err)


def test_db_upgrade_against_a_dead_database_fails_at_once_in_one_line():
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "modbot-ring"), "db", "upgrade", "--database-url", dead],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 5 and one_line(proc.stderr), proc.stderr
    assert "pool" not in proc.stderr  # no connection pool retry chatter


def test_usage_errors_that_are_not_argparse_are_2(files):
    for argv in [
        ["db", "upgrade", "--database-url", "mysql://x"],
        ["db", "backup", "--database-url", "mysql://x", "--to", "s3://b/x"],
        ["status", "--config-url", "mysql://x"],
        ["apply", files["bad_id"], "--yes", "--config-url", DEAD],
        ["rollback", files["bad_id"], "--yes", "--config-url", DEAD],
        ["apply", "../status?", "--yes", "--config-url", DEAD],
        ["route", "12x", "--config-url", DEAD],
        ["sim", "interact", "--sim-url", DEAD, "--url", DEAD, "--guild", GID, "--command", "x",
         "--options", "{nope"],
    ]:  # fmt: skip
        code, out, err = run(argv)
        assert code == 2 and one_line(err) and not out, (argv, code, err)


def test_another_commands_bad_env_var_breaks_nothing_else():
    bad = {"MODBOT_TABLE_POLL": "abc", "MODBOT_DEV_BASE_PORT": "x", "MODBOT_S3_REGION": ""}
    code, _, err = run(["status", "--config-url", DEAD], env=bad)
    assert code == 5 and "cannot reach" in err  # got past parsing: the proxy's flag is not ours
    code, _, err = run(["serve", "proxy"], env=bad)
    assert code == 2 and one_line(err) and "$MODBOT_TABLE_POLL='abc'" in err


def test_version_and_help_do_not_import_the_heavy_clients():
    code, out, _ = run(["--version"])
    assert code == 0 and out.startswith("modbot-ring ")
    probe = (
        "import sys, contextlib, io\n"
        "from modbot_cli.main import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'discord', 'psycopg'}))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_completion_script_lists_every_command():
    code, out, _ = run(["completion", "bash"])
    assert code == 0 and "complete -F _modbot_ring modbot-ring" in out
    for path in leaves():
        assert f'"{path}")' in out, path
    done = subprocess.run(
        ["bash", "-c", out + '\nCOMP_WORDS=(modbot-ring db ""); COMP_CWORD=2; _modbot_ring; '
         'echo "${COMPREPLY[@]}"'],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert set(done.stdout.split()) >= {"upgrade", "backup", "restore"}, done.stdout + done.stderr
    code, out, _ = run(["completion", "zsh"])
    assert code == 0 and "bashcompinit" in out


# -- against a real config service: not found (3), conflict (4), HTTP 400 (2) ----------------


NOT_FOUND = {
    "pin": [GID, "ghost"],
    "unpin": [GID],
    "drain": ["ghost"],
    "activate": ["ghost"],
    "apply": ["plan-nope", "--yes"],
    "cancel": ["plan-nope"],
    "migrate": [GID, "--to", "ghost"],
}


async def test_not_found_conflict_and_bad_request_codes(pg_svc, files):
    async def check(path: str, args: list[str], want: int) -> str:
        code, _, err = await asyncio.to_thread(run, with_service(path, args, pg_svc.url))
        assert code == want and one_line(err), (path, args, code, err)
        return err

    for path, args in NOT_FOUND.items():
        await check(path, args, 3)
    # conflict: nothing is executing; a draining pod takes no pin; an expired plan
    await check("cancel", [], 4)
    code, _, err = await asyncio.to_thread(run, with_service("drain", ["gateway-1"], pg_svc.url))
    assert code == 0, err
    err = await check("pin", [GID, "gateway-1"], 4)
    assert "draining" in err
    # HTTP 400 from the service: usage
    await check("plan", ["--epsilon", "50", "-o", f"{files['dir']}/e.json"], 2)
    # wrong token: anything else
    code, _, err = await asyncio.to_thread(
        run, ["status", "--config-url", pg_svc.url, "--token", "nope"]
    )
    assert code == 1 and "HTTP 401" in err and one_line(err)


async def test_a_service_answering_503_is_unreachable_5():
    from aiohttp import web

    async def down(_: web.Request) -> web.Response:
        return web.json_response({"error": "database unavailable: connection refused"}, status=503)

    async with AppServer(down) as url:
        for argv in (["status"], ["pods"], ["route", GID], ["audit"]):
            code, _, err = await asyncio.to_thread(
                run, [*argv, "--config-url", url, "--token", ADMIN]
            )
            assert code == 5 and one_line(err) and "503" in err, (argv, code, err)
