"""Keeps this pod's gateway sessions equal to ``table.shards_for(pod)``.

discord.py fixes an ``AutoShardedClient``'s shards at construction, so a change of
shard set means a new client. The new one connects first; the old one is closed only
once the new one's shards are ready (or a timeout passes). During the overlap both
deliver events: message rows are idempotent and other events go through a shared
"seen recently" filter, so nothing is processed twice and nothing is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from modbot_ring import RoutingTable

from .bot import GatewayClient

log = logging.getLogger("modbot.gateway.shards")

ShardKey = tuple[int | None, tuple[int, ...]]


class ShardSupervisor:
    def __init__(
        self,
        pod: str,
        token: str,
        make_client: Callable[[list[int], int], GatewayClient],
        *,
        ready_timeout: float = 30.0,
    ) -> None:
        self.pod = pod
        self.token = token
        self.make_client = make_client
        self.ready_timeout = ready_timeout
        self.client: GatewayClient | None = None
        self.key: ShardKey = (None, ())
        self.handovers = 0
        self._runner: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._latest: RoutingTable | None = None
        self._pending: asyncio.Task[None] | None = None

    def follow(self, table: RoutingTable) -> None:
        """Routing-table listener: converge on the newest table, one change at a time."""
        self._latest = table
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._converge())

    async def _converge(self) -> None:
        async with self._lock:
            while self._latest is not None:
                table, self._latest = self._latest, None
                try:
                    await self.apply(table)
                except Exception:
                    log.exception("could not apply the shard set of table v%s", table.version)

    async def apply(self, table: RoutingTable) -> None:
        key: ShardKey = (table.shard_count, table.shards_for(self.pod))
        if key == self.key:
            return
        count, shards = key
        log.info(
            "shards for %s: %s of %s (table v%s)", self.pod, list(shards), count, table.version
        )
        old, old_runner = self.client, self._runner
        new, new_runner = None, None
        if count is not None and shards:
            new = self.make_client(list(shards), count)
            new_runner = asyncio.create_task(new.start(self.token), name=f"gateway-{list(shards)}")
            await self._wait_ready(new, set(shards))
        self.client, self._runner, self.key = new, new_runner, key
        self.handovers += 1
        if old is not None:
            await old.close()
            if old_runner is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(old_runner, 5)

    async def _wait_ready(self, client: GatewayClient, shards: set[int]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while not shards <= client.ready_shards and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if not shards <= client.ready_shards:
            log.warning(
                "shards %s not ready after %ss; switching anyway",
                sorted(shards - client.ready_shards),
                self.ready_timeout,
            )

    def converged(self, table: RoutingTable) -> bool:
        """The sessions match ``table`` and every one of them is ready."""
        count, shards = table.shard_count, table.shards_for(self.pod)
        if self.key != (count, shards):
            return False
        return not shards or (self.client is not None and set(shards) <= self.client.ready_shards)

    @property
    def connected_shards(self) -> list[int]:
        return sorted(self.client.ready_shards) if self.client is not None else []

    async def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        if self.client is not None:
            await self.client.close()
        if self._runner is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._runner, 5)
