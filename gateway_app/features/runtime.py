"""What the features share on a pod (:class:`Runtime`), apart from the package that
registers them: the feature modules import this, the package imports them (no cycle)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import discord

from ..events import GatewayEvent
from ..storage import GuildStore

__all__ = [
    "CUSTOM_ID_MAX",
    "ComponentHandler",
    "EventFilter",
    "EventObserver",
    "Runtime",
    "refuse",
]

ComponentHandler = Callable[["Runtime", discord.Interaction, list[str]], Awaitable[None]]
E = TypeVar("E", bound=GatewayEvent)
EventObserver = Callable[["Runtime", int, E], Awaitable[None]]
EventFilter = Callable[[int, E], bool]
CUSTOM_ID_MAX = 100  # Discord's limit


class Runtime:
    """What features share on a pod: the store, the REST client, ownership, settings."""

    def __init__(self, client: discord.Client, store: GuildStore | None) -> None:
        self.client = client
        self._store = store
        # set by the pod (server.Pod.start); the defaults serve a pod-less client (tests)
        self.can_act: Callable[[int], bool] = lambda _guild: True
        self.ready: Callable[[], bool] = lambda: True
        self.escalation_timeout = 36 * 3600.0  # mod-bot: 36 h with no votes
        self.tick = 10.0
        self.delivery_attempts = 5
        self.components: dict[str, ComponentHandler] = {}
        # event type -> [(cheap synchronous pre-check or None, observer)]
        self.observers: dict[type, list[tuple[EventFilter[Any] | None, EventObserver[Any]]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def store(self) -> GuildStore:
        assert self._store is not None, "this command client has no store (definitions only)"
        return self._store

    def on_component(self, prefix: str, handler: ComponentHandler) -> None:
        self.components[prefix] = handler

    def on_event(
        self,
        observer: EventObserver[E],
        kind: type[E],
        wants: EventFilter[E] | None = None,
    ) -> None:
        """``observer(runtime, guild_id, event)`` for each gateway event of type ``kind``
        (``gateway_app/events.py``) written here, unless ``wants(guild_id, event)`` says no.
        Both are checked before a task is made: a task per event per feature costs the
        gateway a quarter of its ingest rate (``benchmarks/gateway_bench.py``: 11,300 ->
        8,500 events/s)."""
        self.observers.setdefault(kind, []).append((wants, observer))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def refuse(interaction: discord.Interaction, text: str) -> None:
    if not interaction.response.is_done():
        await interaction.response.send_message(text, ephemeral=True)
