"""Per-client rate limits of the collector: a token bucket of events per write key name, in each worker."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens a second, at most `burst` kept. A refused take takes nothing, so a client that
    waits as long as it is told gets through."""

    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.updated = now

    def take(self, count: float, now: float) -> float:
        """0 when `count` tokens were taken; else the seconds until they would be there."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if count <= self.tokens:
            self.tokens -= count
            return 0.0
        return (count - self.tokens) / self.rate


class KeyRateLimits:
    """One bucket per client (a key name: its keys share it, so a rotation does not double it).
    A rate of 0 or less means no limit."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst = rate, burst
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}

    def take(self, name: str, events: int) -> float:
        """0 when the client may send these events now; else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self.buckets.get(name)
        if bucket is None:
            bucket = self.buckets[name] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(events, now)
