"""``modbot-ring commands sync`` against the simulator, which keeps commands as Discord does
and delivers interactions only for registered ones."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from conftest import free_port

from discord_sim.commands import registry
from discord_sim.server import RunningSim, start_sim
from gateway_app.commands_sync import command_definitions, diff
from modbot_cli.main import main

BOT = {"Authorization": "Bot sim-token"}


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start_sim()
    running.sim.world.create_guild("g")
    yield running
    await running.stop()


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def puts(sim: RunningSim) -> int:
    return sum(1 for c in sim.sim.calls if c.method == "PUT" and c.path.endswith("/commands"))


def sync_args(sim: RunningSim, *extra: str) -> list[str]:
    return [
        "commands",
        "sync",
        "--discord-api-url",
        sim.api_url,
        "--discord-token",
        "sim-token",
        *extra,
    ]


async def interact(sim: RunningSim, command: str, kind: int = 1) -> tuple[int, Any]:
    guild = next(iter(sim.sim.world.guilds))
    body = {
        "url": f"{sim.url}/control/info",
        "guild_id": str(guild),
        "command": command,
        "kind": kind,
    }
    if kind == 3:
        body["target_message_id"] = "123"
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sim.url}/control/interactions", json=body) as r,
    ):
        return r.status, await r.json()


async def test_sync_registers_once_and_is_idempotent(
    sim: RunningSim, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await run(capsys, *sync_args(sim))
    assert code == 0 and puts(sim) == 1
    assert "+ /setup" in out and "+ /modreport" in out and "+ message: Report" in out
    # the features' commands (gateway_app/features/) too
    for command in (
        "/escalate",
        "/force-ban",
        "/honeypot",
        "/tickets-setup",
        "/reactji-channel",
        "message: Track",
        "message: Escalate",
    ):
        assert f"+ {command}" in out, command
    # Discord's shapes: ids, versions, permissions as strings, its defaults filled in
    stored = {c["name"]: c for c in registry(sim.runner.app).commands(None)}
    setup = stored["setup"]
    assert setup["default_member_permissions"] == "8" and setup["integration_types"] == [0]
    assert {"id", "application_id", "version", "nsfw", "contexts", "type", "description"} <= set(
        setup
    )
    assert stored["Report"]["type"] == 3 and stored["Report"]["description"] == ""
    assert diff(command_definitions(), list(stored.values())).empty

    code, out, _ = await run(capsys, *sync_args(sim))
    assert code == 0 and puts(sim) == 1, "a second run must not PUT"
    assert "up to date" in out


async def test_a_changed_definition_is_one_put_and_dry_run_sends_nothing(
    sim: RunningSim, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await run(capsys, *sync_args(sim)))[0] == 0
    # someone (an older deploy) registered a different list
    old = [d for d in command_definitions() if d["name"] != "modreport"]
    old[0] = {**old[0], "description": "an older description"}
    async with aiohttp.ClientSession() as http:
        url = f"{sim.api_url}/applications/{sim.sim.world.application_id}/commands"
        async with http.put(url, json=old, headers=BOT) as r:
            assert r.status == 200
    before = puts(sim)
    code, out, _ = await run(capsys, *sync_args(sim, "--dry-run", "--json"))
    assert code == 0 and puts(sim) == before
    result = json.loads(out)
    assert result["added"] == ["/modreport"] and result["changed"] == {"/setup": ["description"]}
    assert result["put"] is False
    assert (await run(capsys, *sync_args(sim)))[0] == 0
    assert puts(sim) == before + 1
    assert (await run(capsys, *sync_args(sim)))[0] == 0
    assert puts(sim) == before + 1


async def test_guild_commands_and_unknown_guilds(
    sim: RunningSim, capsys: pytest.CaptureFixture[str]
) -> None:
    guild = next(iter(sim.sim.world.guilds))
    code, _, _ = await run(capsys, *sync_args(sim, "--guild", str(guild)))
    assert code == 0
    assert {c["guild_id"] for c in registry(sim.runner.app).commands(guild)} == {str(guild)}
    assert registry(sim.runner.app).commands(None) == []
    code, _, err = await run(capsys, *sync_args(sim, "--guild", "4242"))
    assert code == 1 and err.count("\n") == 1 and "Unknown Guild" in err
    code, _, err = await run(capsys, *sync_args(sim, "--guild", "12x"))
    assert code == 2 and "invalid guild id" in err


async def test_the_simulator_delivers_only_registered_commands(
    sim: RunningSim, capsys: pytest.CaptureFixture[str]
) -> None:
    status, body = await interact(sim, "setup")
    assert status == 404 and "not registered" in body["error"]
    status, body = await interact(sim, "Report", kind=3)
    assert status == 404
    assert (await run(capsys, *sync_args(sim)))[0] == 0
    status, body = await interact(sim, "setup")
    assert status == 200 and body["interaction"]["data"]["name"] == "setup"  # delivered
    status, body = await interact(sim, "Report", kind=3)
    assert status == 200
    status, body = await interact(sim, "Report", kind=1)  # right name, wrong type
    assert status == 404
    # the setting: off, anything goes (old scripts)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sim.url}/control/commands", json={"enforce": False}),
    ):
        pass
    status, _ = await interact(sim, "nonexistent")
    assert status == 200


async def test_the_simulator_refuses_invalid_definitions(sim: RunningSim) -> None:
    url = f"{sim.api_url}/applications/{sim.sim.world.application_id}/commands"
    bad = [
        [{"name": "Setup", "description": "upper case", "type": 1}],
        [{"name": "x", "type": 1}],  # no description
        [{"name": "x", "description": "d"}, {"name": "x", "description": "again"}],
        {"name": "not a list"},
    ]
    async with aiohttp.ClientSession() as http:
        for body in bad:
            async with http.put(url, json=body, headers=BOT) as r:
                assert r.status == 400, body
                assert (await r.json())["code"] == 50035
        async with http.put(
            url.replace(str(sim.sim.world.application_id), "1"), json=[], headers=BOT
        ) as r:
            assert r.status == 404
        async with http.get(url, headers={"Authorization": "Bot wrong"}) as r:
            assert r.status == 401
    assert registry(sim.runner.app).commands(None) == []


async def test_bad_token_and_unreachable_discord_are_one_line_errors(
    sim: RunningSim, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run(
        capsys, "commands", "sync", "--discord-api-url", sim.api_url, "--discord-token", "wrong"
    )
    assert code == 5 and err.count("\n") == 1 and "refused the bot token" in err
    dead = f"http://127.0.0.1:{free_port()}/api/v10"
    code, _, err = await run(
        capsys, "commands", "sync", "--discord-api-url", dead, "--discord-token", "t"
    )
    assert code == 5 and err.count("\n") == 1 and "cannot reach Discord" in err
    code, _, err = await run(
        capsys, "commands", "sync", "--discord-api-url", sim.api_url, "--discord-token", ""
    )
    assert code == 2 and "bot token is required" in err
    assert puts(sim) == 0
