"""A per-pod circuit breaker: stop sending to a pod that keeps failing, probe it again later.

Closed: requests flow. ``threshold`` consecutive failures open it for ``cooldown``
seconds (jittered, so many proxies do not probe in step). Then one request is let
through (half-open): success closes it, failure opens it again.
"""

from __future__ import annotations

import random
import time


class CircuitBreaker:
    def __init__(self, threshold: int = 5, cooldown: float = 5.0) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.open_until = 0.0
        self._probing = False

    @property
    def state(self) -> str:
        if self.failures < self.threshold:
            return "closed"
        return "half-open" if time.monotonic() >= self.open_until else "open"

    def allow(self) -> bool:
        if self.failures < self.threshold:
            return True
        if time.monotonic() < self.open_until or self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self.failures = 0
        self._probing = False

    def failure(self) -> None:
        self.failures += 1
        self._probing = False
        if self.failures >= self.threshold:
            self.open_until = time.monotonic() + self.cooldown * random.uniform(0.8, 1.2)

    def retry_after(self) -> int:
        return max(1, round(self.open_until - time.monotonic()))
