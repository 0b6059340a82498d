"""Rate counters: how often a key (a user, an address) may do a thing, per node or for the whole cluster.

A `Rate` is a budget: `limit` actions per `window_s`, with bursts up to `limit` (GCRA, the generic cell
rate algorithm: one timestamp per key, no list of past events). `take` spends one unit and answers 0,
or the seconds to wait. With Redis configured the budget is shared by every node (one key per (rate,
key), one script call per action, each script touching one key so it runs on a Redis Cluster too);
without Redis, or while Redis cannot be reached, each node counts alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import redis.exceptions

from services.core.errors import RateLimited

log = logging.getLogger("chat.limits")

REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)
MAX_LOCAL_KEYS = 100_000
# After Redis fails, rates are counted locally for this long before Redis is tried again: a check must
# not wait for a connection timeout on every request while Redis is away.
REDIS_RETRY_AFTER_S = 5.0


@dataclass(frozen=True)
class Rate:
    name: str  # a short scope name, part of the key (and of metrics labels)
    limit: int  # actions per window; 0 disables the rate
    window_s: float
    what: str = "requests"  # for the error message: "Too many <what>; retry in N s"

    @property
    def interval_s(self) -> float:
        return self.window_s / self.limit


class RateCounters(Protocol):
    async def take(self, rate: Rate, key: str) -> float:
        """Spend one unit of `key`'s budget: 0 when allowed, else the seconds until it would be."""
        ...


class LocalRateCounters:
    """GCRA per (rate, key) in this process. Keys whose budget is full again are forgotten when the table
    grows past MAX_LOCAL_KEYS, so memory follows active keys."""

    def __init__(self) -> None:
        self._tat: dict[tuple[str, str], float] = {}

    async def take(self, rate: Rate, key: str) -> float:
        return self.take_now(rate, key, time.monotonic())

    def take_now(self, rate: Rate, key: str, now: float) -> float:
        if rate.limit <= 0:
            return 0.0
        slot = (rate.name, key)
        tat = max(self._tat.get(slot, now), now)
        allowed_at = tat - (rate.window_s - rate.interval_s)  # exactly tat when limit is 1: no rounding refusal
        if allowed_at > now:
            return allowed_at - now
        self._tat[slot] = tat + rate.interval_s
        if len(self._tat) > MAX_LOCAL_KEYS:
            self._tat = {k: v for k, v in self._tat.items() if v > now}
        return 0.0


# KEYS[1] the key's theoretical arrival time (ms); ARGV: interval ms, window ms. Redis's own clock, so
# nodes with skewed clocks share one budget fairly.
_GCRA = """
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now_ms)
if tat < now_ms then tat = now_ms end
local allowed_at = tat + interval - window
if allowed_at > now_ms then return allowed_at - now_ms end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil(tat + interval - now_ms) + 1)
return 0
"""


class RedisRateCounters:
    """GCRA in Redis, one key per (rate, key); counts locally while Redis is away."""

    def __init__(self, redis_client: Any, prefix: str) -> None:
        self._redis = redis_client
        self._prefix = prefix
        self._script = redis_client.register_script(_GCRA)
        self._fallback = LocalRateCounters()
        self._redis_down_until = 0.0

    async def take(self, rate: Rate, key: str) -> float:
        if rate.limit <= 0:
            return 0.0
        if time.monotonic() < self._redis_down_until:
            return await self._fallback.take(rate, key)
        interval_ms = max(1, round(rate.interval_s * 1000))
        try:
            wait_ms = await self._script(
                keys=[f"{self._prefix}rate:{rate.name}:{key}"], args=[interval_ms, round(rate.window_s * 1000)]
            )
        except REDIS_ERRORS as exc:
            log.warning("rates counted on this node only for %.0f s: Redis unavailable (%s)", REDIS_RETRY_AFTER_S, exc)
            self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER_S
            return await self._fallback.take(rate, key)
        return int(wait_ms) / 1000


async def check_rate(counters: RateCounters, rate: Rate, key: str | int) -> None:
    """Spend one unit, or raise RateLimited (429 with Retry-After, or an error frame with retry_after_ms)."""
    wait_s = await counters.take(rate, str(key))
    if wait_s > 0:
        raise RateLimited(f"Too many {rate.what}; retry in {max(1, round(wait_s))} s", retry_after_s=wait_s)
