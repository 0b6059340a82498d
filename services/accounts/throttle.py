"""Sign-in throttling: failed sign-ins per username and per client address, in a sliding window.

With Redis configured the counts live there, shared by every node (a client spreading its guesses over
the nodes behind the proxy gains nothing); without Redis, or while Redis is unreachable, each node
counts on its own, so N nodes admit at most N times the limit.
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import logging
import secrets
import time
from typing import Any

from services.realtime.redis_cluster import is_cluster
from services.realtime.scripts import evalsha_pipeline

log = logging.getLogger("chat.limits")


class FailureWindow:
    """At most `limit` failures per key within `window_s` seconds (a sliding window), in memory.

    A key keeps only its last `limit` timestamps, so memory per key is bounded; keys whose failures all
    expired are pruned, and past `max_keys` the oldest keys are forgotten (a spray over millions of
    names costs the sprayer its per-address budget long before it costs this node memory).
    """

    def __init__(self, limit: int, window_s: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._failures: dict[str, collections.deque[tuple[float, str]]] = {}

    def _live(self, key: str, now: float) -> collections.deque[tuple[float, str]] | None:
        entries = self._failures.get(key)
        if entries is None:
            return None
        while entries and entries[0][0] <= now - self.window_s:
            entries.popleft()
        if not entries:
            del self._failures[key]
            return None
        return entries

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` may fail once more; 0 when it may now."""
        if self.limit <= 0:
            return 0.0
        entries = self._live(key, now)
        if entries is None or len(entries) < self.limit:
            return 0.0
        return entries[len(entries) - self.limit][0] + self.window_s - now

    def add(self, key: str, now: float, token: str) -> None:
        if self.limit <= 0:
            return
        entries = self._live(key, now)
        if entries is None:
            entries = self._failures[key] = collections.deque(maxlen=self.limit)
        entries.append((now, token))
        if len(self._failures) > self.max_keys:
            self._shrink(now)

    def discard(self, key: str, token: str) -> None:
        entries = self._failures.get(key)
        if entries is not None:
            kept = [e for e in entries if e[1] != token]
            if kept:
                entries.clear()
                entries.extend(kept)
            else:
                del self._failures[key]

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)

    def _shrink(self, now: float) -> None:
        for key in list(self._failures):
            self._live(key, now)
        excess = len(self._failures) - int(self.max_keys * 0.9)
        for key in list(self._failures)[: max(0, excess)]:
            del self._failures[key]


# Both scripts take KEYS = [account key, address key] and ARGV = [now ms, window ms, account limit,
# address limit, ...]; a limit of 0 disables that key.
_ATTEMPT_LUA = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 + i])
  if limit > 0 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local count = redis.call('ZCARD', key)
    if count >= limit then
      local entry = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
      local until_free = tonumber(entry[2]) + window - now
      if until_free > wait then wait = until_free end
    end
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 + i])
  if limit > 0 then
    redis.call('ZADD', key, now, ARGV[5])
    redis.call('ZREMRANGEBYRANK', key, 0, -limit - 1)
    redis.call('PEXPIRE', key, window)
  end
end
return 0
"""


REDIS_RETRY_S = 5.0


def address_key(ip: str | None) -> str:
    """The unit an address budget applies to: one IPv4 address, or one IPv6 /64 (a single host is
    routinely given a whole /64, so per-address counting of IPv6 would be no limit at all)."""
    if not ip:
        return "unknown"
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def account_key(username: str) -> str:
    """A fixed-size key for a username (whether or not such an account exists)."""
    return hashlib.blake2b(username.lower().encode(), digest_size=16).hexdigest()


class LoginThrottle:
    """Failed sign-ins per username and per client address, with a sliding window.

    `attempt` is called before a password is checked: it refuses (returns the seconds to wait) when
    either budget is spent, else it books the attempt as a failure up front, so that concurrent guesses
    cannot all slip through before the first one is counted. `succeeded` then takes the booking back and
    forgets the account's failures (its owner is in; an attacker who can sign in needs no guessing).
    The same answer comes whether or not the username exists: only the name is counted, never the
    account.
    """

    def __init__(
        self,
        per_account: int,
        per_address: int,
        window_s: float,
        *,
        redis: Any = None,
        prefix: str = "chat:",
    ) -> None:
        self.per_account = per_account
        self.per_address = per_address
        self.window_s = window_s
        self._accounts = FailureWindow(per_account, window_s)
        self._addresses = FailureWindow(per_address, window_s)
        self._redis = redis
        self._prefix = prefix + "login:"
        self._script: Any = redis.register_script(_ATTEMPT_LUA) if redis is not None else None
        self._redis_failing = False
        self._redis_retry_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.per_account > 0 or self.per_address > 0

    async def attempt(self, username: str | None, ip: str | None) -> tuple[float, str]:
        """(seconds to wait, booking). A wait of 0 means go ahead; the booking is then a failure until
        `succeeded` takes it back. `username` None books against the address only."""
        token = secrets.token_hex(8)
        if not self.enabled:
            return 0.0, token
        account = account_key(username) if username is not None else None
        address = address_key(ip)
        if self._script is not None and (not self._redis_failing or time.monotonic() >= self._redis_retry_at):
            wait = await self._redis_attempt(account, address, token)
            if wait is not None:
                return wait, token
        now = time.time()
        wait = max(self._accounts.wait(account, now) if account else 0.0, self._addresses.wait(address, now))
        if wait > 0:
            return wait, token
        if account:
            self._accounts.add(account, now, token)
        self._addresses.add(address, now, token)
        return 0.0, token

    async def succeeded(self, username: str | None, ip: str | None, token: str) -> None:
        """Take back the booking of an attempt that did not fail (and forget the account's failures)."""
        if not self.enabled:
            return
        account, address = (account_key(username) if username is not None else None), address_key(ip)
        if account:
            self._accounts.clear(account)
        self._addresses.discard(address, token)
        if self._redis is not None and not self._redis_failing:
            try:
                pipe = self._redis.pipeline(transaction=False)
                if account:
                    pipe.delete(self._prefix + "u:" + account)
                pipe.zrem(self._prefix + "ip:" + address, token)
                await pipe.execute()
            except Exception as exc:  # a throttle must never fail a sign-in
                self._redis_down(exc)

    async def _redis_attempt(self, account: str | None, address: str, token: str) -> float | None:
        """The wait from Redis, or None when Redis cannot answer (then this node counts alone)."""
        keys = [self._prefix + "u:" + (account or "-"), self._prefix + "ip:" + address]
        args = [
            int(time.time() * 1000),
            int(self.window_s * 1000),
            self.per_account if account else 0,
            self.per_address,
            token,
        ]
        try:
            if is_cluster(self._redis):
                wait_ms = await self._attempt_per_key(keys, args)
            else:
                wait_ms = await self._script(keys=keys, args=args)
        except Exception as exc:  # any Redis trouble: fall back to this node's memory
            self._redis_down(exc)
            return None
        if self._redis_failing:
            log.info("sign-in throttling is shared through Redis again")
            self._redis_failing = False
        return max(0.0, float(wait_ms) / 1000.0)

    async def _attempt_per_key(self, keys: list[str], args: list[Any]) -> float:
        """The script once per key, both calls in one pipeline, on a Redis Cluster (an account's key and an
        address's key lie in different slots). Each call checks and books its own key; when one refuses,
        the booking the other made is taken back. Until then a concurrent attempt may see that booking:
        it is refused a little early, never let through more."""
        now, window, account_limit, address_limit, token = args
        calls: list[tuple[str | list[str], list[Any]]] = [
            (keys[0], [now, window, account_limit, 0, token]),
            (keys[1], [now, window, address_limit, 0, token]),
        ]
        results = await evalsha_pipeline(self._redis, self._script, calls)
        for result in results:
            if isinstance(result, Exception):
                raise result
        waits = [float(result) for result in results]
        if max(waits) > 0:
            pipe = self._redis.pipeline(transaction=False)
            for key, wait in zip(keys, waits, strict=True):
                if wait == 0:
                    pipe.zrem(key, token)
            await pipe.execute()
        return max(waits)

    def _redis_down(self, exc: Exception) -> None:
        if not self._redis_failing:
            log.warning("sign-in throttling falls back to this node's memory: Redis unavailable (%s)", exc)
        self._redis_failing = True
        # Sign-ins must not each wait for a Redis timeout while it is away: look again now and then.
        self._redis_retry_at = time.monotonic() + REDIS_RETRY_S
