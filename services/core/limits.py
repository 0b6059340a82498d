"""Rate limits: token buckets, one per key (a user, a socket, an address).

Token buckets are kept in memory per node. A bucket holds up to `burst` tokens and refills at `rate` per
second; each action takes one. Buckets of users who went quiet are dropped by `prune`, so memory follows
active users, not all users ever seen.
"""

from __future__ import annotations

import time


class TokenBucket:
    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.updated = time.monotonic()

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


class RateLimiter:
    """One bucket per key (a user id, an IP address)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[object, TokenBucket] = {}

    def take(self, key: object) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket.take()

    def prune(self) -> None:
        """Forget full buckets: they behave exactly like new ones."""
        now = time.monotonic()
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * b.rate >= b.burst]
        for key in full:
            del self._buckets[key]
