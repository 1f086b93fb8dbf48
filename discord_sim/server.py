"""Running the simulator: ``modbot-ring serve discord-sim``, and in-process for tests."""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from . import commands
from .app import PRIVILEGED, DiscordSim, build_sim_app
from .persist import PERSISTER_KEY, Persister
from .world import IdentifyLimits

log = logging.getLogger("modbot.sim")


@dataclass
class RunningSim:
    sim: DiscordSim
    runner: web.AppRunner
    url: str
    persister: Persister | None = None

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"{self.url.replace('http', 'ws', 1)}/gw"

    async def stop(self) -> None:
        if self.persister is not None:
            await self.persister.stop()  # the last changes, before the world goes away
        await self.runner.cleanup()


async def start_sim(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    bot_token: str = "sim-token",
    application_id: int = 900000000000000001,
    signing_seed: str | None = None,
    seed_guilds: int = 0,
    max_concurrency: int = 1,
    session_start_total: int = 1000,
    session_start_reset: float = 86400.0,
    privileged_intents: str = "members,message_content,presences",
    resume_window: float | None = None,
    require_commands: bool = True,
    state_file: str = "",
) -> RunningSim:
    """Start a simulator; with ``state_file``, its world is loaded from there (seeded and
    saved when the file does not exist yet) and saved after every change."""
    from .settings import TEST_SIGNING_SEED

    sim = DiscordSim(
        bot_token=bot_token,
        application_id=application_id,
        signing_seed=signing_seed or TEST_SIGNING_SEED,
        limits=IdentifyLimits(
            total=session_start_total,
            max_concurrency=max_concurrency,
            reset_seconds=session_start_reset,
        ),
        privileged_intents=privileged_mask(privileged_intents),
    )
    if resume_window is not None:
        sim.resume_window = resume_window
    app = build_sim_app(sim)
    registry = commands.registry(app)
    registry.enforce = require_commands  # Discord's rule unless told otherwise
    persister = None
    if state_file:
        persister = Persister(sim, registry, Path(state_file))
        restored = persister.restore()  # StateFileError: the caller says which file, and why
        registry.enforce = require_commands
        app[PERSISTER_KEY] = persister
    if persister is None or not restored:
        for i in range(seed_guilds):
            sim.world.create_guild(f"guild-{i + 1}")
        if persister is not None:
            persister.mark()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if port == 0 else port
    sim.base_url = f"http://{host}:{bound}"
    if persister is not None:
        persister.start()
    return RunningSim(sim, runner, sim.base_url, persister)


def privileged_mask(names: str) -> int:
    """``"members,message_content"`` -> the intent bits; unknown names are a startup error."""
    mask = 0
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in PRIVILEGED:
            raise ValueError(
                f"unknown privileged intent {name!r} (known: {', '.join(sorted(PRIVILEGED))})"
            )
        mask |= PRIVILEGED[name]
    return mask


async def serve(args: argparse.Namespace) -> None:
    running = await start_sim(
        host=args.host,
        port=args.port,
        bot_token=args.bot_token,
        application_id=args.application_id,
        signing_seed=args.signing_seed,
        seed_guilds=args.seed_guilds,
        max_concurrency=args.max_concurrency,
        session_start_total=args.session_start_total,
        session_start_reset=args.session_start_reset,
        privileged_intents=args.privileged_intents,
        resume_window=args.resume_window,
        require_commands=args.require_commands,
        state_file=args.state_file,
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
    import sys

    from modbot_runtime.observability import setup_logging
    from modbot_runtime.runner import run_forever

    from .persist import StateFileError, verify

    try:  # bad limits are an operator error: one line, non-zero exit, nothing started
        if args.state_file:
            verify(Path(args.state_file), args.application_id)  # refused before listening
        privileged_mask(args.privileged_intents)
        IdentifyLimits(
            total=args.session_start_total,
            max_concurrency=args.max_concurrency,
            reset_seconds=args.session_start_reset,
        )
    except (ValueError, StateFileError) as exc:
        print(f"modbot-ring serve discord-sim: {exc}", file=sys.stderr)
        return 2

    setup_logging(args.log_level, "discord-sim")
    return run_forever(serve(args))
