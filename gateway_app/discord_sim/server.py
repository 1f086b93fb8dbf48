"""Running the simulator: ``modbot-ring serve discord-sim``, and in-process for tests."""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from .app import DiscordSim, build_sim_app

log = logging.getLogger("modbot.sim")


@dataclass
class RunningSim:
    sim: DiscordSim
    runner: web.AppRunner
    url: str

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"{self.url.replace('http', 'ws', 1)}/gw"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_sim(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    bot_token: str = "sim-token",
    application_id: int = 900000000000000001,
    signing_seed: str | None = None,
    seed_guilds: int = 0,
) -> RunningSim:
    from .settings import TEST_SIGNING_SEED

    sim = DiscordSim(
        bot_token=bot_token,
        application_id=application_id,
        signing_seed=signing_seed or TEST_SIGNING_SEED,
    )
    for i in range(seed_guilds):
        sim.world.create_guild(f"guild-{i + 1}")
    runner = web.AppRunner(build_sim_app(sim), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if port == 0 else port
    sim.base_url = f"http://{host}:{bound}"
    return RunningSim(sim, runner, sim.base_url)


async def serve(args: argparse.Namespace) -> None:
    running = await start_sim(
        host=args.host,
        port=args.port,
        bot_token=args.bot_token,
        application_id=args.application_id,
        signing_seed=args.signing_seed,
        seed_guilds=args.seed_guilds,
    )
    log.info(
        "discord simulator on %s (REST %s, gateway %s, public key %s)",
        running.url,
        running.api_url,
        running.gateway_url,
        running.sim.signer.public_key_hex,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await running.stop()


def run(args: argparse.Namespace) -> int:
    from config_store.client.observability import setup_logging
    from config_store.runtime import run_forever

    setup_logging(args.log_level, "discord-sim")
    return run_forever(serve(args))
