"""Rate counters: how often a key (a user, an address) may do a thing, per node or for the whole cluster.

A `Rate` is a budget: `limit` actions per `window_s`, with bursts up to `limit` (GCRA, the generic cell
rate algorithm: one timestamp per key, no list of past events). `take` spends one unit and answers 0,
or the seconds to wait. With Redis configured the budget is shared by every node (one key per (rate,
key), one script call per action, each script touching one key so it runs on a Redis Cluster too);
without Redis, or while Redis cannot be reached, each node counts alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from services.core import background
from services.core.errors import RateLimited
from services.realtime.redis_cluster import UNAVAILABLE_ERRORS
from services.realtime.scripts import evalsha_pipeline

log = logging.getLogger("chat.limits")

REDIS_ERRORS = UNAVAILABLE_ERRORS
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


# KEYS[1] a user's shared token bucket (a hash: tokens, at ms); ARGV: rate per s, burst, tokens spent, key
# lifetime ms. Returns the tokens left as a string (a float: below 0 is a debt). Redis's own clock.
_SPEND = """
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + now[2] / 1000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now_ms
tokens = math.min(burst, tokens + (now_ms - at) / 1000 * rate) - tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now_ms))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return tostring(tokens)
"""


class SharedBudget:
    """A per-user rate (messages) shared by every node, without a Redis round trip per action.

    Each node decides on its own, at once (the caller's local token bucket, then `refused_for`), and
    counts what it let through (`spent`). Every FLUSH_S one pipeline takes those counts from each user's
    shared bucket in Redis (one script call per user, each on one key, so it runs on a Redis Cluster
    too). A bucket that went below zero is a debt: the user is refused on this node until the debt is
    paid back at the budget's rate. So over time a user gets the budget once, whatever nodes they use;
    within one flush interval the nodes together may let through up to their local bursts before the
    debt is known, and the debt then makes the user wait that much longer. While Redis is away each
    node's local bucket is the only limit, as on a single node."""

    FLUSH_S = 0.1

    def __init__(self, redis_client: Any, prefix: str, name: str, rate: float, burst: int) -> None:
        self._redis = redis_client
        self._prefix = f"{prefix}budget:{name}:"
        self.rate = rate
        self.burst = burst
        self._script = redis_client.register_script(_SPEND)
        self._pending: dict[int, int] = {}
        self._refused_until: dict[int, float] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._failing = False

    def refused_for(self, user_id: int) -> float:
        """Seconds the user still owes the shared budget (0: nothing)."""
        until = self._refused_until.get(user_id)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._refused_until[user_id]
            return 0.0
        return left

    def spent(self, user_id: int) -> None:
        """The user was let through once on this node: counted against the shared bucket at the next flush."""
        self._pending[user_id] = self._pending.get(user_id, 0) + 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(), name="shared-budget")

    async def _flush_loop(self) -> None:
        while self._pending:
            await asyncio.sleep(self.FLUSH_S)
            batch, self._pending = self._pending, {}
            await self._flush(batch)

    async def _flush(self, batch: dict[int, int]) -> None:
        lifetime_ms = max(1000, round(self.burst / max(self.rate, 0.001) * 1000) + 1000)
        calls = [
            (f"{self._prefix}{user_id}", [self.rate, self.burst, count, lifetime_ms])
            for user_id, count in batch.items()
        ]
        try:
            results = await evalsha_pipeline(self._redis, self._script, calls)
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return
        self._failing = False
        now = time.monotonic()
        for user_id, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                continue
            tokens = float(result)
            if tokens < 0 and self.rate > 0:
                self._refused_until[user_id] = now + -tokens / self.rate
        if len(self._refused_until) > MAX_LOCAL_KEYS:
            self._refused_until = {k: v for k, v in self._refused_until.items() if v > now}

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.warning(
                "shared message budget not counted while Redis is unavailable (%s): each node limits alone", exc
            )

    async def close(self) -> None:
        if self._flusher is not None:
            await background.stop(self._flusher, "message budget flusher")
            self._flusher = None
