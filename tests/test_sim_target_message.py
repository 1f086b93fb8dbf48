"""``modbot-ring sim interact --target-message ID``: a message context-menu command (Report)
invoked on a message the simulator sent, shaped as Discord sends it: an interaction of type
2 whose ``data`` has ``type`` 3, ``target_id`` and the message in ``resolved.messages``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from conftest import AppServer, free_port

from discord_sim.server import RunningSim, start_sim
from modbot_cli.main import main as cli

APP = 900000000000000001
BOT = {"Authorization": "Bot sim-token"}


class Endpoint:
    """An interactions endpoint that records what it got and answers ``status``."""

    def __init__(self) -> None:
        self.got: list[dict] = []
        self.status = 200
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append(await request.json())
        body = {"type": 4, "data": {"content": "Thanks", "flags": 64}}
        return web.json_response(body, status=self.status)


@pytest.fixture
async def world() -> AsyncIterator[tuple[RunningSim, Endpoint]]:
    sim = await start_sim(seed_guilds=2, port=free_port())
    endpoint = Endpoint()
    server = AppServer({("POST", "/interactions"): endpoint.handle})
    endpoint.url = f"{await server.start()}/interactions"
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{sim.url}/api/v10/applications/{APP}/commands",
            json=[{"name": "Report", "type": 3}],
            headers=BOT,
        ) as r,
    ):
        assert r.status == 200  # Discord only sends registered commands
    try:
        yield sim, endpoint
    finally:
        await server.stop()
        await sim.stop()


async def run(argv: list[str]) -> tuple[int, str, str]:
    def call() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli(argv)
        return code, out.getvalue(), err.getvalue()

    return await asyncio.to_thread(call)


async def send(sim: RunningSim, guild: str, content: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sim.url}/control/messages", json={"guild_id": guild, "content": content}) as r,
    ):
        return str((await r.json())["message_ids"][0])


def base(sim: RunningSim, endpoint: Endpoint, guild: str) -> list[str]:
    return ["sim", "interact", "--sim-url", sim.url, "--url", endpoint.url, "--guild", guild]


async def test_report_on_a_sent_message_is_shaped_as_discord_sends_it(world):
    sim, endpoint = world
    guild = next(iter(sim.sim.world.guilds.values()))
    message_id = await send(sim, str(guild.id), "buy cheap followers")
    code, out, err = await run(
        [*base(sim, endpoint, str(guild.id)), "--command", "Report", "--target-message", message_id]
    )
    assert code == 0 and not err, err
    assert json.loads(out)["status"] == 200
    (payload,) = endpoint.got
    assert payload["type"] == 2  # APPLICATION_COMMAND
    data = payload["data"]
    assert data["type"] == 3 and data["name"] == "Report"  # MESSAGE command
    assert data["target_id"] == message_id
    target = data["resolved"]["messages"][message_id]
    assert target["content"] == "buy cheap followers" and target["id"] == message_id
    assert "guild_id" not in target and "member" not in target  # the REST message shape
    assert payload["channel_id"] == target["channel_id"]  # invoked where the message is
    assert target["author"]["id"] in {str(m) for m in guild.members}
    assert "options" not in data


async def test_unknown_foreign_or_malformed_targets_are_refused(world):
    sim, endpoint = world
    first, second = (str(g) for g in sim.sim.world.guilds)
    elsewhere = await send(sim, second, "in the other guild")
    cases = [
        (["--command", "Report", "--target-message", "123"], 3),  # no such message: 404
        (["--command", "Report", "--target-message", "12x"], 2),
        (["--command", "Report", "--target-message", elsewhere], 2),  # not in --guild
        (["--command", "Report", "--kind", "1", "--target-message", elsewhere], 2),
        (["--command", "Report", "--kind", "3"], 2),  # a message command names a message
    ]
    for extra, expected in cases:
        code, out, err = await run([*base(sim, endpoint, first), *extra])
        assert code == expected, (extra, code, err)
        assert len(err.strip().splitlines()) == 1 and not out, (extra, err)
    assert endpoint.got == []  # nothing was sent for any of them


async def test_an_endpoint_that_fails_is_a_failure_not_exit_0(world):
    sim, endpoint = world
    guild = str(next(iter(sim.sim.world.guilds)))
    message_id = await send(sim, guild, "hello")
    endpoint.status = 500
    code, out, err = await run(
        [*base(sim, endpoint, guild), "--command", "Report", "--target-message", message_id]
    )
    assert code == 1 and not out
    assert len(err.strip().splitlines()) == 1 and "answered 500" in err
