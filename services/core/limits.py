"""Rate limits: token buckets, one per key (a user, a socket, an address).

Token buckets are kept in memory per node. A bucket holds up to `burst` tokens and refills at `rate` per
second; each action takes one. A limiter drops, every `prune_interval_s`, the buckets of keys that went
quiet, so memory follows active users, not all users ever seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float | None = None) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.updated = time.monotonic() if now is None else now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, now: float | None = None) -> float:
        """0.0 when allowed; otherwise the seconds to wait before one token is available."""
        now = time.monotonic() if now is None else now
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        if self.rate <= 0:
            return float("inf")
        return (1.0 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        """Refilled to `burst` by `now`: it behaves exactly like a new bucket."""
        return self.tokens + (now - self.updated) * self.rate >= self.burst


class RateLimiter:
    """One bucket per key (a user id, an IP address).

    The first `take` after each `prune_interval_s` prunes: that costs one pass over the buckets a
    minute, and needs no task of its own."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        prune_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.prune_interval_s = prune_interval_s
        self._clock = clock
        self._buckets: dict[object, TokenBucket] = {}
        self._next_prune = clock() + prune_interval_s

    def __contains__(self, key: object) -> bool:
        """The key has a bucket: it spent tokens lately, or went quiet after the last prune."""
        return key in self._buckets

    def take(self, key: object) -> float:
        """0.0 when allowed; otherwise the seconds this key must wait."""
        now = self._clock()
        if now >= self._next_prune:
            self.prune()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now)

    def prune(self) -> None:
        """Forget full buckets: they behave exactly like new ones."""
        now = self._clock()
        self._next_prune = now + self.prune_interval_s
        full = [key for key, bucket in self._buckets.items() if bucket.full(now)]
        for key in full:
            del self._buckets[key]
