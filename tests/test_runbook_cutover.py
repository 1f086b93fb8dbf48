"""README's cut-over runbook, run block by block as written, against a local 3-pod stack.

The stack is tests/stack.py's (simulator as Discord, config service on PostgreSQL, the
proxy, three ``modbot-ring serve gateway`` processes); the mod-bot file is made by
tests/monolith_gen.py with the simulator's guild ids; :class:`OldBot` stands in for
today's mod-bot (it holds the SQLite file open and is the endpoint Discord sends
interactions to). ``[k8s]`` lines are played by the local equivalents in
:data:`LOCAL`. After each step the test checks what the README says is then true, runs
the step again (nothing changes) and, before the pods start, runs the import out of
order (refused in one line, nothing written). "Traffic switched" locally: the URL the
simulator delivers interactions to moves from the stand-in to the proxy, as the Developer
Portal's Interactions Endpoint URL does on Discord (which first checks the new URL with a
signed PING and a badly signed request; so does the test).

The kill -9 mid-import drill is tests/test_monolith.py's; it is not repeated here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import ADMIN, PG_URL, eventually, free_port
from monolith_gen import generate
from readme_blocks import Block, Shell, blocks
from stack import MIGRATION, Stack, running_stack
from test_monolith import check_owners, expected_counts, pod_counts, routing

from discord_sim.commands import registry

SECTION = "Cut-over from today's mod-bot"
STEPS = ["", "1. **Stop mod-bot**", "2. **Start the pods**", "3. **Import**", "4. **Commands**"]
STEPS += ["5. **Switch traffic**", ""]  # the export block first; the rollback block last


class OldBot:
    """Today's mod-bot, as far as a cut-over can tell: it has its SQLite file open and
    answers the interactions Discord sends to its endpoint."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.port = free_port()
        self.runner: web.AppRunner | None = None
        self.conn: sqlite3.Connection | None = None
        self.answered = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/interactions"

    async def start(self) -> None:
        if self.runner is not None:
            return
        self.conn = sqlite3.connect(self.db)
        app = web.Application()
        app.router.add_post("/interactions", self.interaction)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def interaction(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.answered += 1
        if body["type"] == 1:
            return web.json_response({"type": 1})
        name = body["data"]["name"]
        return web.json_response({"type": 4, "data": {"content": f"mod-bot (old): /{name}"}})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def table_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


async def deliver(stack: Stack, url: str, guild: int, command: str, **kw: Any) -> dict[str, Any]:
    """Play Discord: sign and POST an interaction to ``url`` (the endpoint URL of the day)."""
    body = {"url": url, "guild_id": str(guild), "command": command, **kw}
    async with stack.http.post(f"{stack.sim.url}/control/interactions", json=body) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


def pod_logs(stack: Stack, lines: int = 15) -> str:
    """The pods' last log lines: what a hung step leaves behind."""
    out = []
    for name, pod in stack.pods.items():
        tail = Path(pod.log_path).read_text(errors="replace").splitlines()[-lines:]
        out += [f"--- {name}", *tail]
    return "\n".join(out)


def running(stack: Stack) -> list[str]:
    return [n for n, p in stack.pods.items() if p.proc is not None and p.proc.poll() is None]


def connected(stack: Stack) -> int:
    """Gateway sessions the simulator has open (the pods': the stand-in holds none)."""
    return sum(1 for s in stack.sim.sim.sessions.values() if s.ws is not None)


def stop_pods(stack: Stack) -> None:
    for pod in stack.pods.values():
        if pod.proc is not None:
            pod.proc.terminate()
            pod.proc.wait(20)
            pod.proc = None


async def start_pods(stack: Stack) -> None:
    for name, pod in stack.pods.items():
        if name not in running(stack):
            pod.start()


async def rollout_status(stack: Stack) -> None:
    await stack.wait_ready()
    await stack.converge()


def local_equivalents(stack: Stack, old: OldBot) -> dict[str, Callable[[], Awaitable[None]]]:
    """What each ``[k8s]`` line does, played on the local stack."""

    async def stop_old() -> None:
        await old.stop()

    async def scale_to_zero() -> None:
        stop_pods(stack)

    return {
        "kubectl scale deployment mod-bot --replicas=0": stop_old,
        "kubectl scale deployment mod-bot --replicas=1": old.start,
        "kubectl scale statefulset gateway --replicas=3": lambda: start_pods(stack),
        "kubectl rollout status statefulset gateway": lambda: rollout_status(stack),
        "kubectl scale statefulset gateway --replicas=0": scale_to_zero,
    }


async def run_block(
    shell: Shell,
    block: Block,
    local: dict[str, Callable[[], Awaitable[None]]],
    logs: Callable[[], str] = str,
) -> list[str]:
    """Every line of a block in order; each must exit 0. Returns stdout per line."""
    outputs = []
    for cmd in block.commands:
        if cmd.k8s:
            assert cmd.text in local, (
                f"README line {cmd.line}: no local equivalent for {cmd.text!r}"
            )
            await local[cmd.text]()
            outputs.append("")
            continue
        try:
            r = await asyncio.to_thread(shell.run, cmd.text)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"README line {cmd.line} hung: {cmd.text}\n{logs()}") from None
        assert r.returncode == 0, f"README line {cmd.line}: {cmd.text}\n{r.stdout}\n{r.stderr}"
        outputs.append(r.stdout)
    return outputs


def prepare_modbot_file(path: Path, stack: Stack, guilds: int) -> tuple[dict[str, Any], int, int]:
    """A mod-bot file whose guilds are the simulator's, and a user of one of them with a
    ban on record (for /modreport). Returns (generator info, guild, user)."""
    info = generate(path, guilds=guilds, messages=3000)
    for gid in info["guilds"]:
        stack.world.create_guild(f"guild-{gid}", guild_id=gid, members=4)
    guild = info["guilds"][0]
    g = stack.world.guilds[guild]
    user = next(m for m in g.members if m not in (g.owner.id, stack.world.bot.id))
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE mod_actions SET user_id = ? WHERE guild_id = ? AND action_type = 'ban'",
            (str(user), str(guild)),
        )
    return info, guild, user


@pytest.mark.slow
async def test_the_cutover_runbook_runs_as_written_and_rolls_back(
    tmp_path: Path, pg_schema: str
) -> None:
    found = blocks(SECTION)
    assert [b.heading.split(" ", 1)[0] if b.heading else "" for b in found] == [
        s.split(" ", 1)[0] for s in STEPS
    ], "the runbook's steps changed: update STEPS and the checks below"
    for block, step in zip(found[1:6], STEPS[1:6], strict=True):
        assert block.heading.startswith(step), (block.heading, step)
    export, stop_old, start, imp, commands, switch, rollback = found

    work = tmp_path / "operator"  # the operator's working directory
    work.mkdir()
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=3, guilds=0, shard_count=4) as stack:
        original = work / "mod-bot.sqlite3"
        info, guild, user = prepare_modbot_file(original, stack, guilds=12)
        want = expected_counts(original, info["guilds"])
        stop_pods(stack)  # before the cut-over: the pods are deployed, not running
        old = OldBot(original)
        await old.start()
        answer = await deliver(stack, old.url, guild, "setup")
        assert "mod-bot (old)" in answer["body"]  # today: Discord talks to mod-bot
        before = sha256(original)

        shell = Shell(
            work,
            {
                "PATH": "/usr/bin:/bin",
                "HOME": str(tmp_path),
                # the production default is Discord itself; locally, the simulator
                "MODBOT_DISCORD_API_URL": stack.sim.api_url,
            },
            {
                "http://config:8700": stack.config.url,
                "MODBOT_ADMIN_TOKEN=...": f"MODBOT_ADMIN_TOKEN={ADMIN}",
                "MODBOT_MIGRATION_TOKEN=...": f"MODBOT_MIGRATION_TOKEN={MIGRATION}",
                "DISCORD_TOKEN=...": "DISCORD_TOKEN=sim-token",
                "https://proxy.example": stack.proxy.url,
            },
        )
        local = local_equivalents(stack, old)

        def logs() -> str:
            return pod_logs(stack)

        await run_block(shell, export, local, logs)

        # out of order: importing before the copy exists names the missing file
        r = await asyncio.to_thread(shell.run, imp.commands[0].text)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r
        assert "modbot-final.db: no such file" in r.stderr

        # 1. mod-bot stopped, a consistent copy beside the untouched original
        for _ in range(2):
            await run_block(shell, stop_old, local, logs)
            assert old.runner is None and old.conn is None
            assert table_counts(work / "modbot-final.db") == table_counts(original)
            assert (work / "mod-bot.sqlite3.sha256").read_text().split()[0] == before

        # out of order: the import before the pods run is refused in one line, nothing written
        # (the dry run reads only the table: it works)
        r = await asyncio.to_thread(shell.run, imp.commands[1].text)
        assert r.returncode == 5, r
        assert r.stderr.count("\n") == 1 and "unreachable" in r.stderr and "re-run" in r.stderr
        assert all(not p.rows("SELECT 1 FROM message_stats LIMIT 1") for p in stack.pods.values())

        # 2. pods up, every one active; they registered the commands at login
        for _ in range(2):
            out = await run_block(shell, start, local, logs)
            assert sorted(running(stack)) == sorted(stack.pods)
            listed = [line.split() for line in out[2].splitlines()[2:]]
            assert {row[0] for row in listed} == set(stack.pods)
            assert all(row[1] == "active" for row in listed), out[2]
        await eventually(lambda: connected(stack), timeout=15)  # the pods' Discord sessions
        names = {c["name"] for c in registry(stack.sim.runner.app).commands(None)}
        assert {"setup", "modreport", "Report"} <= names

        # 3. dry run, import, spread, verify: per-guild counts on the owners equal the source
        out = await run_block(shell, imp, local, logs)
        assert "mod-bot schema state" in out[0] and "dry run" in out[0]
        assert "plan " in out[3] and ": done" in out[3], out[3]
        assert "clean" in out[4]
        table = await routing(stack)
        owners = {table.owner(g) for g in info["guilds"]}
        assert len(owners) > 1, f"every guild on {owners}: the plan did not spread them"
        check_owners(stack, table, want)
        counts = pod_counts(stack)
        out = await run_block(shell, imp, local, logs)  # again: nothing written, nothing moved
        assert "\n0 rows written" in out[1], out[1]
        assert "0 move(s)" in out[2], out[2]
        assert pod_counts(stack) == counts and await routing(stack) == table

        # 4. the commands are up to date: no PUT
        puts = len([c for c in stack.sim.sim.calls if c.method == "PUT"])
        for _ in range(2):
            out = await run_block(shell, commands, local, logs)
            assert "up to date" in out[0]
        assert len([c for c in stack.sim.sim.calls if c.method == "PUT"]) == puts

        # 5. the proxy is up at its public URL; Discord's checks of a new endpoint URL pass;
        # interactions now go to the proxy and are answered by the owning pod
        for _ in range(2):
            out = await run_block(shell, switch, local, logs)
            assert out[0].strip() == "401"
        endpoint = f"{stack.proxy.url}/webhooks/discord"
        ping = {"type": 1, "id": "1", "application_id": "1", "token": "t", "version": 1}
        status, text, _ = await stack.sim.sim.send_webhook(endpoint, ping)
        assert (status, json.loads(text)) == (200, {"type": 1})
        raw = json.dumps(ping).encode()  # Discord's second check: a bad signature
        headers = stack.sim.sim.signer.headers(raw, None)
        async with stack.http.post(endpoint, data=raw.replace(b"1", b"2"), headers=headers) as r:
            assert r.status == 401
        answered_by_old = old.answered
        answer = await deliver(
            stack, endpoint, guild, "modreport", options={"user": ["user", str(user)]}
        )
        reply = json.loads(answer["body"])
        assert answer["status"] == 200, answer
        assert "recent actions: ban (rule 1)" in reply["data"]["content"], reply
        assert old.answered == answered_by_old

        # rollback: pods stopped, the original file verified, mod-bot back on it
        for _ in range(2):
            out = await run_block(shell, rollback, local, logs)
            assert running(stack) == []
            await eventually(lambda: not connected(stack), timeout=15)  # no session left
            assert "mod-bot.sqlite3: OK" in out[1]
            assert sha256(original) == before
            answer = await deliver(stack, old.url, guild, "setup")
            assert "mod-bot (old)" in answer["body"]
        # the pods' volumes keep what they imported (a later attempt starts from empty ones)
        assert pod_counts(stack) == counts
        await old.stop()
