"""README's Operations section, run line by line against ``modbot-ring dev up``.

Every command of the section's ``sh`` blocks, and every inline ``modbot-ring ...`` span
without a placeholder (``<id>``, ``POD``), runs in README order in one shell (a terminal
that answers "y"), with the README's production values replaced by the local stack's
(the test's substitutions). Each must exit 0, or the code :data:`EXPECT` gives, and print
its key output. ``[k8s]`` lines run the local equivalent in :func:`scale_out` (``dev add-pod``)
or fail the test if there is none. The S3 of the backup lines is moto's, as in
tests/test_backup_s3.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from monolith_gen import generate
from readme_blocks import Command, Shell, blocks, section
from test_backup_s3 import KEYS, bucket, s3_endpoint  # noqa: F401 - fixtures
from test_devstack import free_block

SECTION = "Operations"
CLI = str(Path(sys.executable).parent / "modbot-ring")
TOKENS = {
    "MODBOT_ADMIN_TOKEN": "ops-admin",
    "MODBOT_READ_TOKEN": "ops-read",
    "MODBOT_INTERNAL_TOKEN": "ops-internal",
    "MODBOT_MIGRATION_TOKEN": "ops-migration",
}
GUILD = "81384788765712384"  # the README's example guild: replaced by one of the simulator's

# command prefix -> (exit code, a regex its stdout+stderr must match); the longest prefix wins
EXPECT: dict[str, tuple[int, str]] = {
    "modbot-ring status": (0, r"table v\d+"),
    "modbot-ring route": (0, r"-> gateway-\d"),
    "modbot-ring pin": (0, r"pinned guild \d+ to gateway-2"),
    "modbot-ring unpin": (0, r"unpinned guild"),
    "modbot-ring drain gateway-1": (0, r"gateway-1 is draining"),
    "modbot-ring drain gateway-1 --apply": (0, r"drained|done"),
    "modbot-ring activate gateway-1": (0, r"gateway-1 is active"),
    "modbot-ring verify": (0, r"clean"),
    "modbot-ring pods": (0, r"gateway-2 +active"),
    "modbot-ring audit": (0, r"pin\.set"),
    "modbot-ring db upgrade": (0, r"schema is current"),
    "modbot-ring import-monolith": (0, r"rows would write \(dry run\)"),
    "DISCORD_TOKEN=": (0, r"up to date"),
    "modbot-ring plan -o": (0, r"-> gateway-3.*Saved with the current assignment to plan\.json"),
    "modbot-ring apply plan.json": (0, r"plan \S+: done"),
    "modbot-ring rollback plan.json": (0, r"plan rollback-\S+: done"),
    "modbot-ring cancel": (4, r"no plan is executing"),
    "modbot-ring plan --svg": (0, r"before/after chart: before-after\.svg"),
    "modbot-ring migrate": (0, r"guild \d+ is on gateway-3"),
    "modbot-ring db backup": (0, r"config-\S+\.dump"),
    "modbot-ring db restore": (0, r"restored"),
    "modbot-ring --version": (0, r"\d+\.\d+"),
    "modbot-ring --help": (0, r"usage: modbot-ring"),
    'eval "$(modbot-ring completion bash)"': (0, r"^$"),
}
PLACEHOLDER = re.compile(r"<|\[|\.\.\.|\b[A-Z]+\b")
# spans that name a command group in prose ("`MODBOT_SIM_URL` for `modbot-ring sim`")
GROUPS = {"modbot-ring sim", "modbot-ring dev", "modbot-ring db", "modbot-ring commands"}


def inline_commands(title: str) -> list[Command]:
    """Inline ``modbot-ring ...`` spans of the section that can run as written (a span
    may wrap onto the next line; fenced blocks are left out)."""
    body, first = section(title)
    prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), body, flags=re.S)
    out = []
    for m in re.finditer(r"`([^`]+)`", prose):
        span = " ".join(m.group(1).split())
        runnable = span.startswith(("modbot-ring ", 'eval "$(modbot-ring'))
        if runnable and not PLACEHOLDER.search(span) and span not in GROUPS:
            out.append(Command(span, "", first + prose.count("\n", 0, m.start())))
    return out


def operations() -> list[Command]:
    """The section's commands in README order: fenced lines and inline spans."""
    fenced = [c for b in blocks(SECTION) for c in b.commands]
    return sorted([*fenced, *inline_commands(SECTION)], key=lambda c: c.line)


def expected(text: str) -> tuple[str, tuple[int, str]]:
    matches = [p for p in EXPECT if text.startswith(p)]
    assert matches, f"no expectation for README command {text!r}: add it to EXPECT"
    best = max(matches, key=len)
    return best, EXPECT[best]


@contextlib.contextmanager
def dev_up(state: Path, base: int) -> Iterator[list[str]]:
    """``modbot-ring dev up`` on consecutive loopback ports from ``base``; yields its output
    lines so far (a thread keeps reading them, so the pipe never fills)."""
    proc = subprocess.Popen(
        [CLI, "dev", "up", "--state-dir", str(state), "--base-port", str(base)]
        + ["--trickle", "0.5"],
        env={**os.environ, **TOKENS, "MODBOT_SIM_MAX_CONCURRENCY": "16"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    up = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "is up" in line:
                up.set()
        up.set()  # exited

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert up.wait(90) and proc.poll() is None, "dev up did not come up:\n" + "".join(lines)
        yield lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return dict(json.loads(r.read()))


def bot_token(state: Path) -> str:
    """The simulator's bot token: dev up keeps it in its state directory."""
    secrets = state / "secrets.json"
    return str(json.loads(secrets.read_text())["bot_token"]) if secrets.exists() else "sim-token"


def scale_out(state: Path, text: str) -> None:
    """``kubectl scale statefulset gateway --replicas=N`` on a dev stack: ``dev add-pod``
    until there are N pods."""
    m = re.fullmatch(r"kubectl scale statefulset gateway --replicas=(\d+)", text)
    assert m, f"no local equivalent for {text!r}"
    while len(list(state.glob("gateway-*.db"))) < int(m.group(1)):
        r = subprocess.run(
            [CLI, "dev", "add-pod", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr


def test_the_section_is_parsed_and_every_command_has_an_expectation() -> None:
    """Fast: a README edit that adds a command without saying what it prints fails here."""
    commands = operations()
    assert len(commands) >= 20
    used = {expected(c.text)[0] for c in commands if not c.text.startswith(("export ", "kubectl"))}
    assert used == set(EXPECT), f"EXPECT entries no README line uses: {set(EXPECT) - used}"
    k8s = [c for c in commands if c.k8s]
    assert [c.text for c in k8s] == ["kubectl scale statefulset gateway --replicas=4"]
    assert not [c for c in commands if c.text.startswith("kubectl") and not c.k8s]


@pytest.mark.slow
def test_every_operations_command_runs_against_dev_up(
    tmp_path: Path,
    s3_endpoint: str,  # noqa: F811 - the fixture imported above
    bucket: tuple[object, str],  # noqa: F811
) -> None:
    state = tmp_path / "state"
    work = tmp_path / "operator"
    work.mkdir()
    base = free_block(8)  # sim, config, proxy, three pods, the proxy's health port
    sim_url, config_url = f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"
    generate(work / "mod-bot.db", guilds=4, messages=100)  # what the import line reads
    with dev_up(state, base):
        guilds = [g["id"] for g in get_json(f"{sim_url}/control/guilds")["guilds"]]
        shell = Shell(
            work,
            {
                "PATH": "/usr/bin:/bin",
                "HOME": str(tmp_path),
                "MODBOT_DISCORD_API_URL": f"{sim_url}/api/v10",  # as the note says
                "MODBOT_SIM_URL": sim_url,  # as the banner says
                "MODBOT_S3_ENDPOINT": s3_endpoint,
                "MODBOT_S3_ACCESS_KEY_ID": KEYS["access"],
                "MODBOT_S3_SECRET_ACCESS_KEY": KEYS["secret"],
            },
            {
                "http://config:8700": config_url,
                "MODBOT_ADMIN_TOKEN=...": f"MODBOT_ADMIN_TOKEN={TOKENS['MODBOT_ADMIN_TOKEN']}",
                "DISCORD_TOKEN=...": f"DISCORD_TOKEN={bot_token(state)}",
                GUILD: guilds[0],
                "postgresql://.../empty": f"sqlite:///{tmp_path}/restored.db",
                "postgresql://...": f"sqlite:///{state}/config.db",
                "s3://modbot-backups/": f"s3://{bucket[1]}/",
            },
        )
        for cmd in operations():
            if cmd.k8s:
                scale_out(state, cmd.text)
                continue
            started = time.monotonic()
            r = shell.run(cmd.text, timeout=120)
            print(f"{time.monotonic() - started:5.1f} s  {cmd.text}")  # shown with -s
            if cmd.text.startswith("export "):
                continue
            _, (code, pattern) = expected(cmd.text)
            where = f"README line {cmd.line}: {cmd.text}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
            assert r.returncode == code, where
            assert re.search(pattern, r.stdout + r.stderr, re.S | re.M), where
            if code:
                assert r.stderr.count("\n") == 1, where  # one line, as promised
    for log in state.glob("*.log"):
        assert "Traceback" not in log.read_text(), log.name
