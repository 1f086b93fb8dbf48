"""Per-replica rate limits: a token bucket per client IP (anonymous) or per user.

Why per replica: the proxy is stateless and must not ask Redis on every request; a
shared limit would cost a round trip per request. With N replicas a client can get up
to N times the configured rate in the worst case (the Service spreads connections, so
usually much less). The limits are there to blunt floods and credential guessing, not
to meter usage. Refusals are 429 with ``Retry-After`` (whole seconds, at least 1).

The table is bounded: when it holds ``max_keys`` buckets, the full (idle) ones are
dropped first, and if that is not enough the table starts over (a flood of fresh
addresses cannot grow memory without bound).
"""

from __future__ import annotations

import math
import time


class RateLimiter:
    __slots__ = ("buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate  # tokens per second; 0 disables the limit
        self.burst = max(burst, 1.0)
        self.max_keys = max_keys
        self.buckets: dict[str, list[float]] = {}

    def hit(self, key: str, now: float | None = None) -> int:
        """0 if allowed, else the seconds to wait (for ``Retry-After``)."""
        if self.rate <= 0:
            return 0
        now = time.monotonic() if now is None else now
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                self._shrink(now)
            self.buckets[key] = [self.burst - 1.0, now]
            return 0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0
        bucket[0] = tokens
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def _shrink(self, now: float) -> None:
        full = [
            k for k, (t, at) in self.buckets.items() if t + (now - at) * self.rate >= self.burst
        ]
        for k in full:
            del self.buckets[k]
        if len(self.buckets) >= self.max_keys:
            self.buckets.clear()


def client_ip(forwarded_for: str | None, peer: str, hops: int) -> str:
    """The client address: the peer, or with ``hops`` trusted proxies in front (an
    Ingress), the entry they appended to ``X-Forwarded-For``. Entries a client wrote
    itself are never trusted."""
    if hops <= 0 or not forwarded_for:
        return peer
    entries = [e.strip() for e in forwarded_for.split(",") if e.strip()]
    entries.append(peer)
    return entries[-(hops + 1)] if len(entries) > hops else entries[0]
