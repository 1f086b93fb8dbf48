"""The coordinator's way to a pod by name: its URL from the current routing table, the
migration token, one shared HTTP session, and retries while the pod is down."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

from modbot_client.pod_client import PodClient
from modbot_ring import RoutingTable

from .errors import PodUnavailable, StoreError
from .publisher import TablePublisher

log = logging.getLogger("modbot.config.migrator")
T = TypeVar("T")

SLOW = 120.0  # seconds for a call that is retried: an export or import of a large guild
QUICK = 2.0  # seconds for a one-shot question (does it hold data?): an answer or a finding
CONNECT = 2.0


async def current_table(publisher: TablePublisher) -> RoutingTable:
    """The newest routing table (read from the store now, not the cached snapshot)."""
    snapshot = await publisher.refresh()
    if snapshot is None:
        raise StoreError("no routing table")
    return snapshot.table


class PodCalls:
    def __init__(self, publisher: TablePublisher, token: str) -> None:
        self.publisher = publisher
        self.token = token  # the pods' migration API only
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=SLOW, sock_connect=CONNECT)
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def call(
        self, pod: str, op: Callable[[PodClient], Awaitable[T]], *, retry: bool = True
    ) -> T:
        """``op`` on the pod's client. With ``retry`` (a migration step) it is repeated,
        with jittered backoff, for as long as the pod is unavailable; without, the call
        gets ``QUICK`` seconds and any failure is raised (the caller makes it a finding).
        A refusal or a malformed answer is raised either way: waiting will not fix it."""
        delay = 0.1
        while True:
            try:
                return await op(await self.client(pod, timeout=SLOW if retry else QUICK))
            except PodUnavailable as exc:
                if not retry:
                    raise
                log.info("waiting for %s", exc)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 2.0)

    async def client(self, pod: str, *, timeout: float = SLOW) -> PodClient:
        """A client of ``pod`` at the URL the table has for it now (a pod that re-registers
        elsewhere is found there on the next attempt)."""
        snapshot = self.publisher.snapshot
        table = snapshot.table if snapshot else await current_table(self.publisher)
        url = table.pods[pod].url if pod in table.pods else None
        if not url:
            raise PodUnavailable(pod, "resolve", "no URL registered")
        assert self._http is not None, "PodCalls.start() first"
        return PodClient(
            self._http, url, self.token, pod=pod, timeout=timeout, connect_timeout=CONNECT
        )
