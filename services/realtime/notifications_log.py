"""Each user's notifications, numbered and kept for a while, so that a notifications socket can resume.

Every notification frame carries a top-level `id`: per user, counting up by one, in the order the frames
reach that user's sockets on every node. `append` numbers a notification, keeps a copy of it and
publishes its frame, as one step:

- With Redis (several nodes), one script call per notification does all three on the user's key: the
  next id follows the newest entry's, the entry is appended and the list trimmed, and the frame is
  PUBLISHed. Redis runs scripts one at a time and hands a channel's messages to each subscriber in the
  order they were published, so when two nodes notify one user at once, one gets id n and the other
  n + 1 and every subscriber receives n before n + 1: no gap, no inversion, and no coordination between
  the nodes (message ids get the same guarantee from ordered inserts into MongoDB, services/chat/writer.py;
  here the store and the bus are the same Redis, so one atomic step replaces the ordering). The frame
  goes out without the bus's node envelope, so every node, this one included, delivers it from Redis.
- Alone (no Redis), the same steps in memory, and the frame goes out on the in-process bus.

Cost on the send path. `append` never waits: notifications are queued and one task sends what one loop
iteration queued as one pipeline of script calls, one round trip, like the PUBLISH it replaces (the
bus's own pipeline, services/realtime/bus.py). Nothing is written to MongoDB: a notification is derived
from what the store already holds (a message, a like, a match), so the log keeps a compact copy and
what it leaves out is read again when it is replayed (services/chat/notifications.py says which, and why
this beats a write-behind of full copies). Like a bus event, a notification still queued when its node
dies, or refused by a Redis that stays away past the queue's bound, is lost (counted in `dropped`); what
it announced is stored and shows in REST answers.

Retention. A replay returns entries at most NOTIFICATION_RETENTION seconds old, and each user keeps at
most NOTIFICATION_MAX_PER_USER of them. The newest entry outlives the retention by HEAD_KEEP_S, not to be
replayed but so that numbering goes on from it after a quiet spell; a user notified nothing for longer
starts over from an id taken from the clock (microseconds since the epoch), still above every id issued
to them before. A replay tells whether it is `complete`: every id after the one asked for is there. When
some are gone (too old, past the count, or the log itself expired), the socket says so
(`notifications_truncated`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
import redis.exceptions

from services.core import background, errors
from services.realtime.bus import Bus, user_channel
from services.realtime.events import NOTIFICATION, encode
from services.realtime.redis_cluster import is_cluster, user_tag
from services.realtime.scripts import evalsha_pipeline

log = logging.getLogger("chat.notifications")

# How long the newest entry of a user outlives the retention, as the head numbering continues from.
HEAD_KEEP_S = 7 * 86400
MAX_LOCAL_USERS = 100_000
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)


def first_id(now_s: float) -> int:
    """The id a user's numbering starts from when nothing of theirs is kept: the clock in microseconds,
    above any id issued before unless a user received a million notifications a second."""
    return int(now_s * 1_000_000)


@dataclass(frozen=True)
class Kept:
    """What the log holds of one user after an id."""

    entries: list[tuple[int, bytes]]  # (id, kept notification as JSON), in id order, within the retention
    head: int | None  # the newest id issued to the user; None when nothing of theirs is kept
    complete: bool  # every id after the one asked for, up to `head`, is in `entries`


def kept_after(entries: list[tuple[int, float, bytes]], after: int, now_s: float, retention_s: float) -> Kept:
    """`entries` (id, stored at, copy), the user's newest last, cut to those after `after` and within the
    retention. `after` 0 asks for everything kept and is complete by definition (a client that has seen
    nothing cannot have missed anything it knew of)."""
    if not entries:
        return Kept([], None, after == 0)
    head = entries[-1][0]
    live = [(seq, data) for seq, at, data in entries if seq > after and now_s - at <= retention_s]
    complete = after == 0 or after >= head or (bool(live) and live[0][0] == after + 1)
    return Kept(live, head, complete)


class NotificationLog(abc.ABC):
    def __init__(self, retention_s: float, max_per_user: int) -> None:
        self.retention_s = retention_s
        self.max_per_user = max(1, max_per_user)
        self.dropped = 0

    @abc.abstractmethod
    def append(self, user_id: int, notification: dict[str, Any], kept: dict[str, Any]) -> None:
        """Number `notification`, keep `kept` in its place for replays, and publish the frame
        `{"type": "notification", "id": N, "notification": ...}` to the user's notifications sockets."""

    @abc.abstractmethod
    async def since(self, user_id: int, after: int) -> Kept:
        """What is kept of the user's notifications after id `after`."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Send what is queued (the in-memory log has nothing to do)."""


class LocalNotificationLog(NotificationLog):
    """A single node: the log in this process's memory, frames on the in-process bus. A restart forgets
    it; ids then start over from the clock, above the old ones, and a resume says `truncated`."""

    def __init__(self, bus: Bus, retention_s: float = 86400.0, max_per_user: int = 200) -> None:
        super().__init__(retention_s, max_per_user)
        self._bus = bus
        self._logs: dict[int, deque[tuple[int, float, bytes]]] = {}
        self._appends = 0

    def append(self, user_id: int, notification: dict[str, Any], kept: dict[str, Any]) -> None:
        now = time.time()
        entries = self._logs.get(user_id)
        if entries is None or now - entries[-1][1] > self.retention_s + HEAD_KEEP_S:
            entries = self._logs[user_id] = deque()
            seq = first_id(now)
        else:
            seq = entries[-1][0] + 1
        entries.append((seq, now, orjson.dumps(kept)))
        self._trim(entries, now)
        frame = {"type": "notification", "id": seq, "notification": notification}
        self._bus.publish_nowait(user_channel(user_id), encode({"k": NOTIFICATION, "n": seq}, frame))
        self._appends += 1
        if self._appends % 10_000 == 0 or len(self._logs) > MAX_LOCAL_USERS:
            self._prune(now)

    def _trim(self, entries: deque[tuple[int, float, bytes]], now: float) -> None:
        while len(entries) > self.max_per_user:
            entries.popleft()
        while len(entries) > 1 and now - entries[0][1] > self.retention_s:
            entries.popleft()

    def _prune(self, now: float) -> None:
        """Forget what no replay returns: entries past the retention, users whose head is past its keep."""
        for user_id, entries in list(self._logs.items()):
            if now - entries[-1][1] > self.retention_s + HEAD_KEEP_S:
                del self._logs[user_id]
            else:
                self._trim(entries, now)

    async def since(self, user_id: int, after: int) -> Kept:
        return kept_after(list(self._logs.get(user_id, ())), after, time.time(), self.retention_s)


# KEYS[1] the user's log: a list of "<id> <stored at, ms> <kept JSON>", oldest first.
# ARGV: most entries kept, retention ms, the key's lifetime ms, channel, the routing header up to its `n`
# value, the notification JSON, the kept JSON. Returns the id given.
_APPEND = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local newest = redis.call('LINDEX', KEYS[1], -1)
local id
if newest then
  id = tonumber(string.match(newest, '^(%d+)')) + 1
else
  id = tonumber(now[1]) * 1000000 + tonumber(now[2])
end
local sid = string.format('%.0f', id)
redis.call('RPUSH', KEYS[1], sid .. ' ' .. string.format('%.0f', now_ms) .. ' ' .. ARGV[7])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
local horizon = now_ms - tonumber(ARGV[2])
while redis.call('LLEN', KEYS[1]) > 1 do
  local oldest = redis.call('LINDEX', KEYS[1], 0)
  if tonumber(string.match(oldest, '^%d+ (%d+)')) >= horizon then break end
  redis.call('LPOP', KEYS[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4],
  ARGV[5] .. sid .. '}\\n{"type":"notification","id":' .. sid .. ',"notification":' .. ARGV[6] .. '}')
return sid
"""

# The same on a Redis Cluster, where the user's channel is a shard channel in the slot of their log.
_APPEND_SHARDED = _APPEND.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
assert _APPEND_SHARDED != _APPEND

# KEYS[1] the user's log; ARGV[1] the id to read after. Returns {now ms, newest entry, entries after the id
# (from the oldest kept when that is later)...}, or {} when nothing is kept.
_SINCE = """
local newest = redis.call('LINDEX', KEYS[1], -1)
if not newest then return {} end
local now = redis.call('TIME')
local oldest = redis.call('LINDEX', KEYS[1], 0)
local start = tonumber(ARGV[1]) + 1 - tonumber(string.match(oldest, '^(%d+)'))
if start < 0 then start = 0 end
local out = redis.call('LRANGE', KEYS[1], start, -1)
table.insert(out, 1, newest)
table.insert(out, 1, string.format('%.0f', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)))
return out
"""


def _parse(entry: bytes) -> tuple[int, float, bytes]:
    seq, at, data = entry.split(b" ", 2)
    return int(seq), int(at) / 1000, data


class RedisNotificationLog(NotificationLog):
    """Several nodes: one list per user in Redis, appended and published by one script call (see the
    module docstring). Sent like the bus's publishes: one pipeline at a time, never resent (a pipeline
    that failed may have been applied in part, and a resend would notify twice)."""

    MAX_QUEUED = 100_000
    MAX_PIPELINE = 1_000
    TIMEOUT_S = 5.0
    MAX_BACKOFF_S = 1.0

    def __init__(
        self, bus: Bus, client: Any, prefix: str, retention_s: float = 86400.0, max_per_user: int = 200
    ) -> None:
        super().__init__(retention_s, max_per_user)
        self._bus = bus
        self._redis = client
        self._prefix = prefix
        # On a Redis Cluster the user's log and channel share the user's hash tag, so that one script on one
        # slot appends and publishes, with SPUBLISH (services/realtime/redis_cluster.py).
        self._cluster = is_cluster(client)
        self._append_script = client.register_script(_APPEND_SHARDED if self._cluster else _APPEND)
        self._since_script = client.register_script(_SINCE)
        self._queue: deque[tuple[int, bytes, bytes, bytes]] = deque()
        self._ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._sender: asyncio.Task[None] | None = None
        self._failing = False
        self.failures = 0

    def _key(self, user_id: int) -> str:
        if self._cluster:
            return f"{self._prefix}notifications:{user_tag(user_id)}"
        return f"{self._prefix}notifications:{user_id}"

    def _channel(self, user_id: int) -> str:
        """The user's channel as Redis knows it (as the bus names it on the wire)."""
        if self._cluster:
            return self._prefix + user_tag(user_id)
        return self._prefix + user_channel(user_id)

    def append(self, user_id: int, notification: dict[str, Any], kept: dict[str, Any]) -> None:
        if len(self._queue) >= self.MAX_QUEUED:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("notification queue full: %d notifications dropped so far", self.dropped)
            return
        # The routing header (services/realtime/events.py), closed by the script once the id is known.
        header = encode({"k": NOTIFICATION, "t": "notification"}, None).partition(b"\n")[0][:-1] + b',"n":'
        self._queue.append((user_id, header, orjson.dumps(notification), orjson.dumps(kept)))
        self._empty.clear()
        self._ready.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_loop(), name="notification-log")

    async def _send_loop(self) -> None:
        backoff = 0.05
        while True:
            if not self._queue:
                self._empty.set()
                self._ready.clear()
                await self._ready.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.MAX_PIPELINE))]
            if await self._send(batch):
                backoff = 0.05
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.MAX_BACKOFF_S)

    async def _send(self, batch: list[tuple[int, bytes, bytes, bytes]]) -> bool:
        """One pipeline of script calls; False when some failed (those are delivered here without an id)."""
        lifetime_ms = round((self.retention_s + HEAD_KEEP_S) * 1000)
        retention_ms = round(self.retention_s * 1000)
        calls = []
        for user_id, header, notification, kept in batch:
            channel = self._channel(user_id)
            args = [self.max_per_user, retention_ms, lifetime_ms, channel, header, notification, kept]
            calls.append((self._key(user_id), args))
        try:
            async with asyncio.timeout(self.TIMEOUT_S):
                results = await evalsha_pipeline(self._redis, self._append_script, calls)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failed(batch, exc)
        failed = [item for item, result in zip(batch, results, strict=True) if isinstance(result, Exception)]
        if failed:
            return self._failed(failed, next(r for r in results if isinstance(r, Exception)))
        if self._failing:
            self._failing = False
            log.warning("notifications are logged and published again")
        return True

    def _failed(self, batch: list[tuple[int, bytes, bytes, bytes]], exc: BaseException) -> bool:
        """Notifications Redis did not take: neither numbered nor kept, they still reach this node's own
        sockets, as the seed's frame without an `id` (a pipeline cut off midway may have published some of
        them, which those sockets then receive twice, once with an id: better than not at all)."""
        self.failures += len(batch)
        self.dropped += len(batch)
        for user_id, _header, notification, _kept in batch:
            frame = {"type": "notification", "notification": orjson.loads(notification)}
            self._bus.deliver_here(user_channel(user_id), encode({"k": NOTIFICATION}, frame))
        if not self._failing:
            self._failing = True
            log.warning("could not log and publish %d notifications: %s", len(batch), exc)
        return False

    async def since(self, user_id: int, after: int) -> Kept:
        try:
            raw = await self._since_script(keys=[self._key(user_id)], args=[after])
        except REDIS_ERRORS as exc:
            raise errors.Unavailable("Notifications are unavailable for a moment; retry", code="unavailable") from exc
        if not raw:
            return kept_after([], after, time.time(), self.retention_s)
        now_s = int(raw[0]) / 1000
        head = _parse(raw[1])
        entries = [_parse(entry) for entry in raw[2:]]
        if not entries or entries[-1][0] != head[0]:
            entries.append(head)  # read past the newest: only the head tells what was issued
        return kept_after(entries, after, now_s, self.retention_s)

    async def close(self) -> None:
        if self._sender is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), 2.0)
        await background.stop(self._sender, "notifications log sender")
        self._sender = None
