"""Ring settings: the shard count and the placement algorithm, a version each change."""

from __future__ import annotations

from modbot_ring import Algorithm
from modbot_ring.table import MAX_SHARD_COUNT

from ..db import Tx
from ..errors import Conflict, Invalid
from .core import StoreCore

__all__ = ["RingMixin"]


class RingMixin(StoreCore):
    """The store's ring-settings operations."""

    async def set_ring(
        self,
        shard_count: int | None,
        algorithm: str,
        actor: str,
        expected_version: int | None = None,
    ) -> int:
        if shard_count is not None and not 1 <= shard_count <= MAX_SHARD_COUNT:
            raise Invalid(f"shard_count must be 1..{MAX_SHARD_COUNT} or null, got {shard_count}")
        if algorithm not in {a.value for a in Algorithm}:
            raise Invalid(f"unknown algorithm {algorithm!r}")

        async def apply(tx: Tx) -> bool:
            row = await tx.fetchone("SELECT shard_count, algorithm FROM ring_state WHERE id = 1")
            if row is not None and (row[0], row[1]) == (shard_count, algorithm):
                return False
            high = await tx.fetchone("SELECT max(shard) FROM shard_pins")
            if high and high[0] is not None and (shard_count is None or high[0] >= shard_count):
                raise Conflict("shard pins would not fit the new shard count: remove them first")
            await tx.execute(
                "UPDATE ring_state SET shard_count = %s, algorithm = %s WHERE id = 1",
                (shard_count, algorithm),
            )
            return True

        detail = {"shard_count": shard_count, "algorithm": algorithm}
        return await self._change("ring.set", actor, detail, apply, expected_version)

    async def initialize_ring(self, shard_count: int | None, algorithm: str = "quota") -> None:
        """Set ring settings on a brand-new store (version 0); later starts leave them alone."""
        if await self.version() == 0:
            await self.set_ring(shard_count, algorithm, "control-plane", expected_version=0)
