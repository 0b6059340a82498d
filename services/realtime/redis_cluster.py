"""Redis Cluster: telling a cluster from a single Redis, where keys live, and the bus over sharded pub/sub.

A node finds out at start whether REDIS_URL names a node of a Redis Cluster (`INFO cluster` says
`cluster_enabled:1`); nothing else has to be configured. On a cluster:

- Keys are laid out so that every script touches one slot. Everything that belongs to one user and goes
  through one script shares the hash tag `{user:<id>}`: the notifications log `notifications:{user:<id>}`
  and the user's channel, whose name on the wire is `<prefix>{user:<id>}`, so the script that appends to
  the log can publish the frame in the same step. Every channel is tagged that way (`<prefix>{conv:<id>}`,
  any other name alike): a channel lives on the shard of its own name. Presence keys are
  `online:{user:<id>}`; a node's user set and the node table are single keys, written by plain commands
  next to the scripts rather than inside them. Rate and budget scripts touch one key each already.
- Events use sharded pub/sub (SPUBLISH / SSUBSCRIBE, Redis 7): an event goes to the shard that owns its
  channel's slot and to nobody else, so the cluster's pub/sub traffic grows with the events, not with the
  events times the number of shards (classic PUBLISH is broadcast to every node of the cluster).
- A node holds one subscriber connection per shard it needs (one per master owning a slot of a channel
  its sockets listen to), and re-resolves the slots whenever one is lost (failover, restart, resharding).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.core import background
from services.realtime.bus import Bus, RedisBus, user_channel

log = logging.getLogger("chat.bus")

# What a Redis that cannot answer now raises: unreachable, too slow, or (on a cluster) a shard without a
# master for the moment, while a replica takes over.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterException,
)

# How long a node starting up tries to reach its Redis to find out whether it is a cluster.
DETECT_DEADLINE_S = 10.0


async def detect_cluster(url: str, deadline_s: float = DETECT_DEADLINE_S) -> bool | None:
    """Whether `url` names a node of a Redis Cluster; None when no Redis answered within `deadline_s`."""
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline_s
    delay = 0.1
    while True:
        client = aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            info = await client.info("cluster")
            return str(info.get("cluster_enabled", 0)) == "1"
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            if loop.time() + delay >= until:
                return None
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


def is_cluster(client: Any) -> bool:
    """Whether a Redis client talks to a cluster (its scripts must then touch one slot each)."""
    return isinstance(client, RedisCluster)


def tagged(channel: str) -> str:
    """A channel's name on a cluster, after the prefix: the whole name is the hash tag."""
    return f"{{{channel}}}"


def user_tag(user_id: int) -> str:
    """The hash tag of what belongs to one user on a cluster: the same as their channel's."""
    return tagged(user_channel(user_id))


class _Shard:
    """The subscriber connection to one master, and the channels subscribed there."""

    def __init__(self, node: ClusterNode) -> None:
        self.name = node.name
        self.conn: Any = node.connection_class(**{**node.connection_kwargs, "socket_timeout": None})
        self.channels: set[str] = set()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reader: asyncio.Task[None] | None = None


class ClusterBus(RedisBus):
    """The Redis bus on a Redis Cluster: SPUBLISH and SSUBSCRIBE, one subscriber connection per shard.

    Publishing is the single-Redis bus's (one queue, one pipeline at a time, never resent), except that
    the pipeline is split by shard and each part goes to its master; a part answered MOVED (the slot
    changed hands) is sent again by the client to the new owner, which is safe as nothing ran. Events
    of one channel keep their order, as they all go to one shard over one connection.

    Subscribing: `subscribe` returns once the shard confirmed the subscription, as on a single Redis. When
    a shard's connection is lost (its master died and a replica took over, a restart, a resharding that
    moved a slot away), the node keeps the other shards' subscriptions, re-reads the slot map until every
    channel of the lost shard is subscribed again on its current master, and then calls `on_reconnect`
    so that sockets catch up from MongoDB on what they missed meanwhile. Publishes that failed are not
    resent either; once this node's publishing works again it calls `on_publish_restored` (the container
    then asks every node to catch its sockets up), since a subscriber elsewhere may have resubscribed
    before this node's failed publish.
    """

    def __init__(self, url: str, prefix: str = "chat:") -> None:
        Bus.__init__(self)
        self._aioredis = aioredis
        self.redis = RedisCluster.from_url(url, socket_connect_timeout=2, socket_timeout=5, decode_responses=False)
        self._publisher = RedisCluster.from_url(
            url, socket_connect_timeout=2, socket_timeout=None, decode_responses=False, retry=Retry(NoBackoff(), 0)
        )
        self._setup(prefix)
        self._shards: dict[str, _Shard] = {}
        # Channels wanted but not subscribed anywhere now (their shard was lost, or Redis was away).
        self._homeless: set[str] = set()
        self._rehoming: asyncio.Task[None] | None = None
        self._disconnecting: set[asyncio.Task[None]] = set()
        self.on_publish_restored: list[Callable[[], None]] = []

    def _wire(self, channel: str) -> bytes:
        return (self.prefix + tagged(channel)).encode()

    def _local(self, wire: bytes | str) -> str:
        text = wire.decode() if isinstance(wire, bytes) else wire
        return text[len(self.prefix) + 1 : -1]

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._homeless and not self._publish_down

    async def _read_loop(self) -> None:
        """Learn the slot map (the shards' readers then read, each its own connection)."""
        backoff = 0.1
        while not self._closing:
            try:
                await self._publisher.initialize()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("Redis Cluster not reachable yet: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._healthy = True
            self._connected.set()
            return

    # -- publishing --------------------------------------------------------------------------------

    async def _send_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        pipe = self._publisher.pipeline(transaction=False)
        for wire, data in batch:
            pipe.execute_command("SPUBLISH", wire, data)
        try:
            await pipe.execute()
        except BaseException:
            # A client that does not retry keeps its slot map after a failure: a master that died stays
            # the owner of its slots until the map is read again, which the next pipeline now does first.
            self._publisher._initialize = True
            raise

    def _publishing_restored(self) -> None:
        for hook in self.on_publish_restored:
            hook()

    # -- subscribing -------------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        if channel in self._channels:
            return
        self._channels.add(channel)
        if not self._healthy or self._homeless:
            self._lost([channel])
            return
        try:
            await self._subscribe_all([channel])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("subscription to %s not confirmed (%s); it is renewed when its shard is back", channel, exc)
            self._lost([channel])

    async def unsubscribe(self, channel: str) -> None:
        if channel not in self._channels:
            return
        self._channels.discard(channel)
        self._homeless.discard(channel)
        for shard in list(self._shards.values()):
            if channel in shard.channels:
                shard.channels.discard(channel)
                if shard.ready.done() and shard.ready.exception() is None:
                    with contextlib.suppress(redis.exceptions.RedisError, OSError):
                        await shard.conn.send_command("SUNSUBSCRIBE", self._wire(channel))

    async def _subscribe_all(self, channels: list[str]) -> None:
        """SSUBSCRIBE each channel on the master owning its slot, as the client's map has it, and wait for
        every confirmation (raises when one does not come within SUBSCRIBE_TIMEOUT_S)."""
        loop = asyncio.get_running_loop()
        waiters = []
        try:
            for channel in channels:
                wire = self._wire(channel)
                shard = await self._shard(self._publisher.get_node_from_key(wire))
                shard.channels.add(channel)
                waiter: asyncio.Future[None] = loop.create_future()
                self._confirmations.setdefault(channel, []).append(waiter)
                waiters.append((channel, waiter))
                await shard.conn.send_command("SSUBSCRIBE", wire)
            async with asyncio.timeout(self.SUBSCRIBE_TIMEOUT_S):
                await asyncio.gather(*(waiter for _, waiter in waiters))
        finally:
            for channel, waiter in waiters:
                pending = self._confirmations.get(channel, [])
                if waiter in pending:
                    pending.remove(waiter)
                if not pending:
                    self._confirmations.pop(channel, None)

    async def _shard(self, node: ClusterNode | None) -> _Shard:
        """The subscriber connection to `node`, connected (made on first use)."""
        if node is None:
            raise redis.exceptions.SlotNotCoveredError("a slot is not covered by the cluster")
        shard = self._shards.get(node.name)
        if shard is None:
            shard = self._shards[node.name] = _Shard(node)
            try:
                await shard.conn.connect()
            except BaseException as exc:
                self._shards.pop(node.name, None)
                shard.ready.set_exception(exc)
                shard.ready.exception()  # retrieved: whoever waited on it gets it raised
                raise
            shard.ready.set_result(None)
            shard.reader = asyncio.get_running_loop().create_task(self._read_shard(shard), name=f"shard-{node.name}")
        else:
            await asyncio.shield(shard.ready)
        return shard

    async def _read_shard(self, shard: _Shard) -> None:
        read = shard.conn.read_response
        try:
            while not self._closing:
                try:
                    reply = await read(timeout=math.inf, disconnect_on_error=False, push_request=True)
                except redis.exceptions.ResponseError as exc:
                    # MOVED to an SSUBSCRIBE: the map was stale. The channels this shard holds are
                    # subscribed again wherever their slots are now.
                    log.warning("Redis Cluster shard %s refused a subscription: %s", shard.name, exc)
                    self._drop_shard(shard)
                    return
                if isinstance(reply, list) and len(reply) == 3:
                    self._on_reply(shard, reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._closing:
                log.warning("Redis Cluster shard %s lost: %s", shard.name, exc)
                for hook in self.on_error:
                    hook()
                self._drop_shard(shard)

    def _on_reply(self, shard: _Shard, reply: list[Any]) -> None:
        kind = reply[0]
        if kind == b"smessage":
            self._deliver_received(self._local(reply[1]), reply[2])
        elif kind == b"ssubscribe":
            for waiter in self._confirmations.get(self._local(reply[1]), []):
                if not waiter.done():
                    waiter.set_result(None)
        elif kind == b"sunsubscribe":
            channel = self._local(reply[1])
            if channel in self._channels and channel in shard.channels:
                # Not asked for: the shard no longer owns the slot (moved away, or this master became a
                # replica). Subscribed again where the slot is now.
                shard.channels.discard(channel)
                self._lost([channel])

    def _drop_shard(self, shard: _Shard) -> None:
        if self._shards.get(shard.name) is shard:
            del self._shards[shard.name]
        # The client's slot map may still name the lost master: it is read again before resubscribing.
        self._publisher._initialize = True
        lost = list(shard.channels)
        shard.channels.clear()
        closing = asyncio.get_running_loop().create_task(shard.conn.disconnect())
        # The loop keeps only weak references to tasks: held until the connection is closed.
        self._disconnecting.add(closing)
        closing.add_done_callback(self._disconnecting.discard)
        self._lost(lost)

    def _lost(self, channels: list[str]) -> None:
        self._homeless.update(c for c in channels if c in self._channels)
        if self._homeless and (self._rehoming is None or self._rehoming.done()) and not self._closing:
            self._rehoming = asyncio.get_running_loop().create_task(self._rehome(), name="redis-cluster-resubscribe")

    async def _rehome(self) -> None:
        """Subscribe every homeless channel where its slot is now, re-reading the slot map until that works;
        then tell `on_reconnect`."""
        backoff = 0.05
        while self._homeless and not self._closing:
            try:
                await self._publisher.initialize()
                self._healthy = True
                self._connected.set()
                homeless = [c for c in self._homeless if c in self._channels]
                await self._subscribe_all(homeless)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("Redis Cluster resubscription failed, retrying: %s", exc)
                self._publisher._initialize = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            self._homeless.difference_update(homeless)
            if self._homeless:
                continue  # lost meanwhile
            self.reconnects += 1
            log.warning("Redis Cluster bus resubscribed %d channels", len(homeless))
            for hook in self.on_reconnect:
                hook()

    async def close(self) -> None:
        if self._rehoming is not None:
            await background.stop(self._rehoming, "Redis Cluster bus rehoming")
        shards = list(self._shards.values())
        await super().close()
        for shard in shards:
            if shard.reader is not None:
                await background.stop(shard.reader, "Redis Cluster shard reader")
        for shard in shards:
            with contextlib.suppress(Exception):
                await shard.conn.disconnect()
        self._shards.clear()
