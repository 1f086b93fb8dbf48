"""Running a service until SIGINT/SIGTERM, on uvloop where available."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("modbot.runtime")


def run_forever(main: Coroutine[Any, Any, None]) -> int:
    """Run ``main`` until it returns or a signal arrives; then cancel it cleanly."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        return runner.run(_until_signal(main))


async def _until_signal(main: Coroutine[Any, Any, None]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(main)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopper.cancel()
        exc = task.exception()
        if exc is not None:
            log.error("service failed: %s", exc, exc_info=exc)
            return 1
        return 0
    log.info("signal received, shutting down")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0
