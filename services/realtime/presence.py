"""Who is online: a presence store.

A user is online while they hold at least one WebSocket (either endpoint). This node counts its own
sockets per user. `PresenceStore` is the single-node store, where the local count is the whole truth;
`RedisPresenceStore` shares presence between nodes through Redis, with TTL heartbeats and a sweep for
nodes that died.

In Redis a node vouches for its users under its incarnation, `<NODE_ID>/<boot id>`, fresh at every
start: a node restarted under the same NODE_ID right after a crash (systemd restarts it within seconds)
would otherwise renew its name's heartbeat before anyone noticed the silence, and the users of the dead
process would never be swept. At start a node reclaims the entries every earlier incarnation of its
NODE_ID left behind (NODE_IDs are unique per running node): those users go offline at once, unless they
hold a socket elsewhere. An incarnation that nobody reclaims (its node renamed, or Redis away while it
started) is swept like any silent node once its heartbeat expires. An incarnation that stopped in good
order, leaving its users a grace to reconnect (`RedisPresenceStore.close`), is adopted instead: its
successor vouches for those users while their clients come back to it (`_adopt`).

A store decides transitions (a user's first socket anywhere opened, their last one anywhere closed) and
reports each one, with its version, to its `listener`. What a transition means to other people (a
`status` frame in the user's open conversations, `last_seen`) is the listener's business
(services/chat/presence.py): the store knows nothing of users, conversations or frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from services.core import background
from services.realtime.redis_cluster import UNAVAILABLE_ERRORS, is_cluster, user_tag
from services.realtime.scripts import evalsha_pipeline
from services.storage.batch import Coalescer

log = logging.getLogger("chat.presence")

REDIS_ERRORS = UNAVAILABLE_ERRORS


@dataclass(frozen=True, slots=True)
class Transition:
    """A user came online or went offline, cluster-wide."""

    user_id: int
    online: bool
    at: dt.datetime
    # Orders the transitions of one user: announcing takes a few awaits, so a later transition (on this
    # node or another) can be published before an earlier one, and receivers drop a status older than
    # one they already passed on (services/realtime/hub.py). None when this node decided alone while
    # Redis was away: such an announcement is never dropped.
    version: int | None
    # The user's open conversations when the socket that caused the transition has just read them;
    # None when the listener has to read them itself.
    conversations: Collection[int] | None = None


class PresenceListener(Protocol):
    """What a store tells about transitions. The listener handles its own backends' outages: it must
    not raise because a database is away (the store would lose track of the rest of its work)."""

    async def on_transition(self, transition: Transition) -> None:
        """Make a transition known; awaited in the order the store decided them."""

    async def on_node_stopped(self, user_ids: Collection[int], at: dt.datetime) -> None:
        """A single node stopped while these users had sockets on it: nobody is left to tell, but
        they went offline at `at`."""

    async def on_gone(self, gone: list[tuple[int, int]], at: dt.datetime) -> None:
        """These users, as (user, version of their offline transition), went offline everywhere at `at`,
        handed over by a stopping node or swept with a dead one."""


class Presence(Protocol):
    """What a reader of presence needs (the push service asks whether a user has a socket anywhere)."""

    async def is_online(self, user_id: int) -> bool: ...

    async def reachable(self, user_id: int) -> bool: ...


class _Unheard:
    """The listener of a store nobody listens to (yet)."""

    async def on_transition(self, transition: Transition) -> None:
        pass

    async def on_node_stopped(self, user_ids: Collection[int], at: dt.datetime) -> None:
        pass

    async def on_gone(self, gone: list[tuple[int, int]], at: dt.datetime) -> None:
        pass


def local_version() -> int:
    """A transition's version when this process alone decides it: microseconds of the clock."""
    return time.time_ns() // 1000


class PresenceStore:
    """Presence of a single node: its own socket counts are the whole truth."""

    def __init__(self) -> None:
        self.listener: PresenceListener = _Unheard()
        # Called with a dead node's incarnation once this node swept it (never for a single node): the
        # container tells every node, whose sockets may be missing what the dead node stored last.
        self.on_node_swept: Callable[[str], Awaitable[None]] | None = None
        self.local_counts: dict[int, int] = {}
        self._online_since: dict[int, dt.datetime] = {}
        self.closed = False

    async def start(self) -> None:
        """Nothing to do for a single node."""

    def hand_over_at_close(self) -> None:
        """From now on sockets that close leave the count alone: the shutdown closes them all, and `close`
        hands every user over at once instead of one transition per socket."""
        self.closed = True

    async def close(self) -> None:
        """A single node going down takes every user's last socket with it."""
        self.closed = True
        users = list(self.local_counts)
        self.local_counts.clear()
        if users:
            await self.listener.on_node_stopped(users, dt.datetime.now(dt.UTC))

    async def connected(self, user_id: int, conversations: Collection[int] | None = None) -> None:
        """A socket of the user opened here. `conversations`, the user's open conversations when the
        caller has just read them, travel with an online transition to the listener."""
        count = self.local_counts.get(user_id, 0) + 1
        self.local_counts[user_id] = count
        if count == 1:
            await self._online_here(user_id, conversations)

    async def disconnected(self, user_id: int) -> None:
        if self.closed:
            return  # sockets closed by a shutdown were handed over in close()
        count = self.local_counts.get(user_id, 0) - 1
        if count > 0:
            self.local_counts[user_id] = count
            return
        self.local_counts.pop(user_id, None)
        await self._offline_here(user_id)

    def has_sockets_here(self, user_id: int) -> bool:
        return user_id in self.local_counts

    async def is_online(self, user_id: int) -> bool:
        return user_id in self.local_counts

    async def online_among(self, user_ids: Collection[int]) -> set[int]:
        """Those of these users who are online."""
        return {user_id for user_id in user_ids if user_id in self.local_counts}

    async def reachable(self, user_id: int) -> bool:
        """Whether the user holds a socket somewhere (a push would reach nobody else)."""
        return user_id in self.local_counts

    def online_since(self, user_id: int) -> dt.datetime | None:
        """When the user came online, as far as this node knows; None when it does not know."""
        return self._online_since.get(user_id)

    async def _online_here(self, user_id: int, conversations: Collection[int] | None = None) -> None:
        await self._report(user_id, online=True, version=local_version(), conversations=conversations)

    async def _offline_here(self, user_id: int) -> None:
        await self._report(user_id, online=False, version=local_version())

    async def _report(
        self, user_id: int, *, online: bool, version: int | None, conversations: Collection[int] | None = None
    ) -> None:
        at = dt.datetime.now(dt.UTC)
        if online:
            self._online_since[user_id] = at
        else:
            self._online_since.pop(user_id, None)
        await self.listener.on_transition(Transition(user_id, online, at, version, conversations))


# Versions of transitions decided in Redis come from Redis's own clock, read inside the script that
# decides the transition, so they increase in the order Redis serialised the transitions.
_VERSION = "local now = redis.call('TIME') local version = now[1] * 1000000 + now[2]\n"

# Each user has a sorted set `online:<user>` whose members are node ids and whose scores are the times
# until which that node vouches for the user (refreshed by the node's heartbeat). A user is online while
# some member's score lies in the future. Scripts make every transition atomic, so that exactly one node
# reports each online and each offline, however the connections race across nodes.
#
# On a single Redis the connect and disconnect scripts also add the user to (remove them from) the node's
# user set, KEYS[2]. On a Redis Cluster that set lives in another slot than `online:{user:<id>}`, so the
# scripts get one key and the node writes its set with a plain command: added before the script runs and
# removed after it, so that the set always holds at least the users the node vouches for, and a sweep of
# the node finds them all (one more is harmless: its disconnect changes nothing). The heartbeat script
# takes the keys of one slot per call on a cluster.

# A restarted node vouches for the users it adopted from its previous run (no socket of theirs yet) under
# its incarnation followed by this: shown online, but not reachable (`RedisPresenceStore.reachable_among`).
# A socket of theirs opening on that node replaces the adoption (counted live before it, so not reported).
ADOPTED_SUFFIX = "+adopted"

_CONNECT = (
    _VERSION
    + """
local live = redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf')
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZREM', KEYS[1], ARGV[3] .. '"""
    + ADOPTED_SUFFIX
    + """')
redis.call('EXPIRE', KEYS[1], ARGV[4])
if KEYS[2] then redis.call('SADD', KEYS[2], ARGV[5]) end
return {live, version}
"""
)

# Also used by the sweeper for a dead node's users: returns the transition's version when removing
# `node` (and what it adopted) made the user offline, else 0.
_DISCONNECT = (
    _VERSION
    + """
local removed = redis.call('ZREM', KEYS[1], ARGV[2], ARGV[2] .. '"""
    + ADOPTED_SUFFIX
    + """')
if KEYS[2] then redis.call('SREM', KEYS[2], ARGV[3]) end
if removed >= 1 and redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf') == 0 then
  return version
end
return 0
"""
)

# The heartbeat: re-vouch for every local user in one call; returns [user, version, ...] for those who
# were offline meanwhile (Redis restarted, or this node was declared dead): they are announced again.
_HEARTBEAT = (
    _VERSION
    + """
local back = {}
for i = 1, #ARGV - 4 do
  local key = KEYS[i]
  if redis.call('ZCOUNT', key, ARGV[#ARGV - 2], '+inf') == 0 then
    table.insert(back, ARGV[i])
    table.insert(back, version)
  end
  redis.call('ZADD', key, ARGV[#ARGV - 1], ARGV[#ARGV])
  redis.call('EXPIRE', key, ARGV[#ARGV - 3])
end
return back
"""
)

HEARTBEAT_CHUNK = 500
SWEEP_BATCH = 500  # users withdrawn per pipeline when a node that is gone is swept
# Seconds a stopping node gives the offline announcements (and last_seen writes) of the users it hands
# over: its entries are withdrawn from Redis first, so what is cut short is only news that clients
# reconnecting elsewhere a second later would overtake anyway.
HAND_OVER_REPORTS_S = 3.0
# A restarted node vouches for its previous run's users while they come back, each return giving the
# others the grace again; this many graces at most in all (a trickle must not keep the rest online for ever).
ADOPTION_MAX_GRACES = 12
INCARNATION_SEPARATOR = "/"


def _text(raw: bytes | str) -> str:
    """A name read back from Redis (bytes, unless the client decodes replies)."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def incarnation_of(node_id: str) -> str:
    """A name for this run of the node: its NODE_ID and a boot id no other run shares."""
    return f"{node_id}{INCARNATION_SEPARATOR}{secrets.token_hex(4)}"


def node_of(incarnation: str) -> str:
    """The NODE_ID an incarnation ran under (entries written before incarnations existed are the NODE_ID)."""
    name, separator, _ = incarnation.rpartition(INCARNATION_SEPARATOR)
    return name if separator else incarnation


class RedisPresenceStore(PresenceStore):
    """Presence shared by all nodes through Redis, with TTL heartbeats and a sweep for dead nodes."""

    def __init__(
        self, redis: Any, *, node_id: str, prefix: str, ttl_s: float, heartbeat_s: float, hand_over_grace_s: float = 0.0
    ) -> None:
        super().__init__()
        self.redis = redis
        self.node_id = node_id
        # What this process writes in Redis: members of `online:<user>`, its `nodes` field, its user set.
        self.incarnation = incarnation_of(node_id)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s
        self._connect = redis.register_script(_CONNECT)
        self._disconnect = redis.register_script(_DISCONNECT)
        self._heartbeat_script = redis.register_script(_HEARTBEAT)
        self._cluster = is_cluster(redis)
        self._loop: asyncio.Task[None] | None = None
        # Users whose last local socket closed while Redis was away: their entry is removed (and their
        # offline announced) once Redis is back.
        self._unsynced_offline: set[int] = set()
        # Whether the entries of this NODE_ID's earlier incarnations were reclaimed (retried by the
        # heartbeat while Redis is away at start).
        self._reclaimed = False
        self.sweeps = 0
        # Whether users with no socket here are online, asked at one moment (the status frames of sockets
        # joining together, the push check of every message notified), as one pipeline.
        self._online_reads: Coalescer[int, bool] = Coalescer(self._online_many)
        self._reachable_reads: Coalescer[int, bool] = Coalescer(self._reachable_many)
        # How long a stopping node leaves its users online for them to reconnect (see `close`). At most what
        # their entries outlive the last heartbeat, or some would lapse before the sweep that ends the grace.
        self.hand_over_grace_s = max(0.0, min(hand_over_grace_s, ttl_s - heartbeat_s))
        # Users of this NODE_ID's previous run, stopped in good order, that this run vouches for while
        # their clients come back to it (`_adopt`); released, as of `_adopted_since`, once none has come
        # back for the grace.
        self._adopted: set[int] = set()
        self._adopted_since: dt.datetime | None = None
        self._adoption_timer: asyncio.TimerHandle | None = None
        self._adoption_ends_at = 0.0
        self._releases: set[asyncio.Task[None]] = set()

    def _online_key(self, user_id: int) -> str:
        if self._cluster:
            return f"{self.prefix}online:{user_tag(user_id)}"
        return f"{self.prefix}online:{user_id}"

    async def _run_connect(self, user_id: int, args: list[Any]) -> Any:
        if not self._cluster:
            return await self._connect(keys=[self._online_key(user_id), self._node_users_key], args=args)
        await self.redis.sadd(self._node_users_key, user_id)
        return await self._connect(keys=[self._online_key(user_id)], args=args)

    async def _run_disconnect(self, user_id: int, users_key: str, node: str, now: float) -> int:
        """Withdraw `node`'s entry for the user: the transition's version when that made them offline, else 0."""
        args = [now, node, user_id]
        if not self._cluster:
            return int(await self._disconnect(keys=[self._online_key(user_id), users_key], args=args))
        version = await self._disconnect(keys=[self._online_key(user_id)], args=args)
        await self.redis.srem(users_key, user_id)
        return int(version)

    async def _withdraw(
        self,
        node: str,
        users_key: str,
        user_ids: list[int],
        now: float,
        reports_within_s: float | None = None,
        at: dt.datetime | None = None,
    ) -> None:
        """`_run_disconnect` for many users of one node (an incarnation), in pipelines, then every offline
        report at once: a node restarted with 13,000 users took 144 s to sweep them one round trip at a
        time, and as long to hand them over at its SIGTERM. Reported one by one, each report read the
        user's open conversations to announce them there, and a 3,000-user hand-over still took 3 s and
        more on a busy store (cut short at HAND_OVER_REPORTS_S); now the listener is told of them all at
        once (`on_gone`), and every node announces them to its own sockets that watch them.
        `reports_within_s`: stop waiting for the reports after that long (a node stopping). `at`: when
        they went offline, if not now (the stop of a node whose grace just ended)."""
        offline: list[tuple[int, int]] = []
        for start in range(0, len(user_ids), SWEEP_BATCH):
            batch = user_ids[start : start + SWEEP_BATCH]
            calls = [
                ([self._online_key(u)] if self._cluster else [self._online_key(u), users_key], [now, node, u])
                for u in batch
            ]
            versions = await evalsha_pipeline(self.redis, self._disconnect, calls)
            for result in versions:
                if isinstance(result, Exception):
                    raise result
            if self._cluster:
                await self.redis.srem(users_key, *batch)
            offline.extend((u, int(v)) for u, v in zip(batch, versions, strict=True) if int(v))
        if not offline:
            return
        at = at or dt.datetime.now(dt.UTC)
        for user_id, _ in offline:
            self._online_since.pop(user_id, None)
        try:
            await asyncio.wait_for(self.listener.on_gone(offline, at), reports_within_s)
        except TimeoutError:
            log.warning(
                "offline announcements of %d users handed over were cut short after %.0fs",
                len(offline),
                reports_within_s,
            )

    async def _vouch(self, user_ids: list[int], now: float, member: str | None = None) -> list[Any]:
        """The heartbeat script over `user_ids`, as `member` (this run by default): [user, version, ...] of
        those who were offline meanwhile."""
        tail = [int(self.ttl_s * 4) + 60, now, now + self.ttl_s, member or self.incarnation]
        if not self._cluster:
            back = await self._heartbeat_script(keys=[self._online_key(u) for u in user_ids], args=[*user_ids, *tail])
            return list(back or [])
        by_slot: dict[int, list[int]] = {}
        for user_id in user_ids:
            by_slot.setdefault(self.redis.keyslot(self._online_key(user_id)), []).append(user_id)
        calls = [([self._online_key(u) for u in users], [*users, *tail]) for users in by_slot.values()]
        out: list[Any] = []
        for result in await evalsha_pipeline(self.redis, self._heartbeat_script, calls):
            if isinstance(result, Exception):
                raise result
            out.extend(result or [])
        return out

    @property
    def _node_users_key(self) -> str:
        return self._node_users_key_of(self.incarnation)

    def _node_users_key_of(self, node_id: str) -> str:
        return f"{self.prefix}node-users:{node_id}"

    @property
    def _nodes_key(self) -> str:
        return f"{self.prefix}nodes"

    @property
    def _adopted_member(self) -> str:
        return self.incarnation + ADOPTED_SUFFIX

    @property
    def _handed_over_key(self) -> str:
        """Incarnations that stopped leaving their users online for the grace -> when they stopped."""
        return f"{self.prefix}handed-over"

    async def start(self) -> None:
        if self._loop is None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._reclaim_earlier_incarnations()
                await self._beat()
            self._loop = asyncio.get_running_loop().create_task(self._heartbeat_loop(), name="presence-heartbeat")

    async def close(self) -> None:
        """Hand over this node's users.

        With a grace (`hand_over_grace_s`), the node leaves its users online and says when it stopped:
        its sockets were closed with 1001 and their clients reconnect within seconds, so a user back on
        any node by the end of the grace was never offline for anyone (no offline news, no online news,
        no last_seen write), and the node exits without waiting for Redis or the store. Restarted under
        its NODE_ID, it adopts them (`_adopt`); if it does not come back, its entry in `nodes` expires
        with the grace and the next sweep (any node's) reports offline those who did not come back, as
        of the stop. Without a grace, or if Redis does not take the note, the node withdraws its entries
        now, announcing offline only users with no socket elsewhere. Users it still held adopted are
        handed over with its own."""
        self.closed = True
        if self._loop is not None:
            await background.stop(self._loop, "presence heartbeat")
            self._loop = None
        if self._adoption_timer is not None:
            self._adoption_timer.cancel()
            self._adoption_timer = None
        await asyncio.gather(*self._releases, return_exceptions=True)
        users = list(self.local_counts.keys() | self._adopted)
        self.local_counts.clear()
        self._adopted.clear()
        if users and self.hand_over_grace_s > 0:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._leave_users_for_the_grace()
                return
        with contextlib.suppress(*REDIS_ERRORS):
            await self._withdraw(
                self.incarnation, self._node_users_key, users, self._now(), reports_within_s=HAND_OVER_REPORTS_S
            )
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.hdel(self._nodes_key, self.incarnation)
            await self.redis.delete(self._node_users_key)

    async def _leave_users_for_the_grace(self) -> None:
        """Note when this node stopped, then shorten its heartbeat to the grace: in that order, a sweep
        that finds the node expired always finds the note (and no catch-up is owed for a node that
        stored and published all it had before it stopped)."""
        now = self._now()
        await self.redis.hset(self._handed_over_key, self.incarnation, now)
        await self.redis.hset(self._nodes_key, self.incarnation, now + self.hand_over_grace_s)

    def _now(self) -> float:
        return time.time()

    async def _online_here(self, user_id: int, conversations: Collection[int] | None = None) -> None:
        self._unsynced_offline.discard(user_id)
        if user_id in self._adopted:
            self._adopted.discard(user_id)  # its socket vouches for it now (the script below)
            self._adoption_goes_on()
        now = self._now()
        try:
            live_before, version = await self._run_connect(
                user_id, [now, now + self.ttl_s, self.incarnation, int(self.ttl_s * 4) + 60, user_id]
            )
        except REDIS_ERRORS:
            log.warning("presence of user %d not shared: Redis unavailable", user_id)
            await self._report(user_id, online=True, version=None, conversations=conversations)
            return
        if int(live_before) == 0:
            await self._report(user_id, online=True, version=int(version), conversations=conversations)
        else:
            self._online_since.setdefault(user_id, dt.datetime.now(dt.UTC))

    async def _offline_here(self, user_id: int) -> None:
        try:
            version = await self._run_disconnect(user_id, self._node_users_key, self.incarnation, self._now())
        except REDIS_ERRORS:
            self._unsynced_offline.add(user_id)
            return
        if int(version):
            await self._report(user_id, online=False, version=int(version))

    async def is_online(self, user_id: int) -> bool:
        return user_id in await self.online_among((user_id,))

    async def online_among(self, user_ids: Collection[int]) -> set[int]:
        return await self._here_or_in_redis(user_ids, self._online_reads)

    async def reachable_among(self, user_ids: Collection[int]) -> set[int]:
        """Those of these users who hold a socket somewhere. Unlike `online_among`, not those a stopped node
        left online for its grace, nor those a restarted node adopted: they are shown online while their
        clients reconnect, but a push is what reaches one whose client does not."""
        return await self._here_or_in_redis(user_ids, self._reachable_reads)

    async def _here_or_in_redis(self, user_ids: Collection[int], reads: Coalescer[int, bool]) -> set[int]:
        """Those of these users with a socket here, and those `reads` finds in Redis (asked only about the
        others; none of them while Redis is away)."""
        here = {user_id for user_id in user_ids if user_id in self.local_counts}
        elsewhere = [user_id for user_id in user_ids if user_id not in here]
        if not elsewhere:
            return here
        try:
            return here | set(await reads.get_many(elsewhere))
        except REDIS_ERRORS:
            return here

    async def reachable(self, user_id: int) -> bool:
        return user_id in await self.reachable_among((user_id,))

    async def _reachable_many(self, user_ids: list[int]) -> dict[int, bool]:
        """Which of these users a node vouches for now because it holds a socket of theirs: a live member
        that is neither a stopped run (its grace) nor an adoption."""
        now = self._now()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hkeys(self._handed_over_key)
        for user_id in user_ids:
            pipe.zrangebyscore(self._online_key(user_id), now, "+inf")
        stopped_raw, *members_of = await pipe.execute()
        stopped = {_text(m) for m in stopped_raw}

        def holds_a_socket(member: str) -> bool:
            return member not in stopped and not member.endswith(ADOPTED_SUFFIX)

        return {
            user_id: True
            for user_id, members in zip(user_ids, members_of, strict=True)
            if any(holds_a_socket(_text(m)) for m in members)
        }

    async def _online_many(self, user_ids: list[int]) -> dict[int, bool]:
        """Which of these users some node vouches for now (a live member in their `online` entry)."""
        now = self._now()
        pipe = self.redis.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.zcount(self._online_key(user_id), now, "+inf")
        counts = await pipe.execute()
        return {user_id: True for user_id, count in zip(user_ids, counts, strict=True) if int(count) > 0}

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                if not self._reclaimed:
                    await self._reclaim_earlier_incarnations()
                await self._beat()
                await self._sweep_dead_nodes()
            except REDIS_ERRORS as exc:
                log.warning("presence heartbeat failed: %s", exc)
            except Exception:
                log.exception("presence heartbeat failed")

    async def _beat(self) -> None:
        """Refresh this node's liveness and every local user's entry, in a few round trips in all."""
        now = self._now()
        await self.redis.hset(self._nodes_key, self.incarnation, now + self.ttl_s)
        self._unsynced_offline -= self.local_counts.keys()  # back here meanwhile: nothing to withdraw
        if self._unsynced_offline:
            gone = list(self._unsynced_offline)
            await self._withdraw(self.incarnation, self._node_users_key, gone, now)
            self._unsynced_offline.difference_update(gone)
        user_ids = list(self.local_counts)
        adopted = list(self._adopted - self.local_counts.keys())
        if user_ids or adopted:
            pipe = self.redis.pipeline(transaction=False)
            pipe.sadd(self._node_users_key, *user_ids, *adopted)
            await pipe.execute()
        for start in range(0, len(user_ids), HEARTBEAT_CHUNK):
            chunk = user_ids[start : start + HEARTBEAT_CHUNK]
            back = await self._vouch(chunk, now)
            for user_id, version in zip(back[::2], back[1::2], strict=True):
                await self._report(int(user_id), online=True, version=int(version))
        await self._vouch_adopted(adopted, now)

    async def _vouch_adopted(self, user_ids: list[int], now: float) -> None:
        """Vouch for users adopted from this NODE_ID's previous run (shown online, not reachable)."""
        for start in range(0, len(user_ids), HEARTBEAT_CHUNK):
            await self._vouch(user_ids[start : start + HEARTBEAT_CHUNK], now, self._adopted_member)

    async def _forget_run(self, node: str) -> None:
        """Drop what a stopped or dead incarnation left besides its users' entries: its users set, its
        heartbeat, and its note of a stop in good order (in that order: a sweep that still finds the
        heartbeat expired also finds the note)."""
        await self.redis.delete(self._node_users_key_of(node))
        await self.redis.hdel(self._nodes_key, node)
        await self.redis.hdel(self._handed_over_key, node)

    async def _reclaim_earlier_incarnations(self) -> None:
        """Sweep what earlier runs of this NODE_ID left in Redis, at once: whatever their heartbeat says,
        no process of theirs is left (a NODE_ID names one running node)."""
        now = self._now()
        nodes = await self.redis.hgetall(self._nodes_key)
        handed_over = await self._handed_over() if nodes else {}
        for raw_node, raw_until in nodes.items():
            node = _text(raw_node)
            if node == self.incarnation or node_of(node) != self.node_id:
                continue
            if node in handed_over:
                await self._adopt(node, handed_over[node], now)
                continue
            swept = await self._sweep_node(node, now)
            if swept is not None:
                log.warning(
                    "node %s restarted: reclaimed the %d users of its previous run %s%s",
                    self.node_id,
                    swept,
                    node,
                    # A crash moments ago, or a second process running under the same NODE_ID (whose
                    # users come back at its next heartbeat).
                    " (its heartbeat had not expired yet)" if float(raw_until) > now else "",
                )
        self._reclaimed = True

    async def _take_sweep(self, node: str) -> bool:
        """Whether this node sweeps (or adopts) `node`: whoever takes this lock does, the others skip it. A
        node that took it and failed half-way (Redis went away) takes it again when it retries."""
        key = f"{self.prefix}sweep:{node}"
        if await self.redis.set(key, self.incarnation, nx=True, ex=60):
            return True
        holder = await self.redis.get(key)
        return holder is not None and _text(holder) == self.incarnation

    async def _adopt(self, node: str, stopped_at: float, now: float) -> None:
        """Vouch (as this run's adopted member, not reachable) for the users a previous run of this NODE_ID
        left online when it stopped (`close`), and withdraw its entries without a report: their clients
        are reconnecting here, and at 13,000 sockets taking them back lasts longer than any grace counted
        from the stop. Those back were never offline for anyone; the rest are released
        (`_release_adopted`) once none has come back for the grace."""
        if not await self._take_sweep(node):
            return  # another node is sweeping it: its grace ended
        members = [int(raw) for raw in await self.redis.smembers(self._node_users_key_of(node))]
        adopted = [user for user in members if user not in self.local_counts]
        if members:
            await self.redis.sadd(self._node_users_key, *members)
            await self._vouch_adopted(adopted, now)
            for start in range(0, len(members), SWEEP_BATCH):
                pipe = self.redis.pipeline(transaction=False)
                for user in members[start : start + SWEEP_BATCH]:
                    pipe.zrem(self._online_key(user), node, node + ADOPTED_SUFFIX)
                await pipe.execute()
        await self._forget_run(node)
        log.info(
            "node %s restarted: took over the %d users its previous run %s left online",
            self.node_id,
            len(members),
            node,
        )
        if adopted:
            self._adopted.update(adopted)
            self._adopted_since = dt.datetime.fromtimestamp(stopped_at, dt.UTC)
            loop = asyncio.get_running_loop()
            self._adoption_ends_at = loop.time() + ADOPTION_MAX_GRACES * max(self.hand_over_grace_s, 1.0)
            self._adoption_goes_on()

    def _adoption_goes_on(self) -> None:
        """An adopted user came back (or the adoption began): the others get the grace from now, but the
        whole adoption no more than ADOPTION_MAX_GRACES graces."""
        if self._adoption_timer is not None:
            self._adoption_timer.cancel()
            self._adoption_timer = None
        if not self._adopted:
            return
        loop = asyncio.get_running_loop()
        when = min(loop.time() + self.hand_over_grace_s, self._adoption_ends_at)
        self._adoption_timer = loop.call_at(when, self._release_adopted)

    def _release_adopted(self) -> None:
        self._adoption_timer = None
        users = list(self._adopted - self.local_counts.keys())
        self._adopted.clear()
        if users:
            task = asyncio.get_running_loop().create_task(self._withdraw_adopted(users))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def _withdraw_adopted(self, users: list[int]) -> None:
        """Report offline, as of the previous run's stop, the adopted users who did not come back."""
        at = self._adopted_since
        users = [user for user in users if user not in self.local_counts]  # back while this waited its turn
        try:
            await self._withdraw(self.incarnation, self._node_users_key, users, self._now(), at=at)
            log.info("%d users of this node's previous run did not come back: reported offline", len(users))
        except REDIS_ERRORS:
            self._unsynced_offline.update(users)  # the heartbeat withdraws them once Redis is back

    async def _sweep_dead_nodes(self) -> None:
        """Report offline the users of nodes whose heartbeat stopped, and of nodes that stopped in good
        order once their grace ended; one surviving node sweeps each."""
        now = self._now()
        nodes = await self.redis.hgetall(self._nodes_key)
        expired: list[str] = []
        for raw_node, raw_until in nodes.items():
            node = _text(raw_node)
            if node != self.incarnation and float(raw_until) <= now:
                expired.append(node)
        if not expired:
            return
        handed_over = await self._handed_over()
        for node in expired:
            stopped_at = handed_over.get(node)
            swept = await self._sweep_node(node, now, stopped_at=stopped_at)
            if swept is None:
                continue
            if stopped_at is not None:
                log.info("node %s stopped %.0fs ago: its grace is over for %d users", node, now - stopped_at, swept)
                continue  # it stored and published everything before it stopped: nothing to catch up
            log.warning("node %s stopped heartbeating; swept its %d users", node, swept)
            if self.on_node_swept is not None:
                await self.on_node_swept(node)

    async def _handed_over(self) -> dict[str, float]:
        """Incarnations that stopped leaving their users the grace, with when they stopped."""
        raw = await self.redis.hgetall(self._handed_over_key)
        return {_text(k): float(v) for k, v in raw.items()}

    async def _sweep_node(self, node: str, now: float, stopped_at: float | None = None) -> int | None:
        """Withdraw every entry of a node (an incarnation) that is gone, reporting offline whoever has no
        socket left anywhere (as of `stopped_at` when the node said when it stopped); the number of its
        users, or None when another node holds its sweep."""
        if not await self._take_sweep(node):
            return None
        self.sweeps += 1
        users_key = self._node_users_key_of(node)
        members = [int(raw_user) for raw_user in await self.redis.smembers(users_key)]
        at = None if stopped_at is None else dt.datetime.fromtimestamp(stopped_at, dt.UTC)
        await self._withdraw(node, users_key, members, now, at=at)
        await self._forget_run(node)
        return len(members)
