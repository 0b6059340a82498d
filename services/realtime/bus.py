"""Publish/subscribe between server nodes, behind one interface.

Channels are named `conv:<id>` (everything said in a conversation) and `user:<id>` (notifications and
control events for one user). A node subscribes only to the channels its local sockets need, and every
node's subscriber hands what arrives to one callback (services/realtime/hub.py), which fans it out to
local sockets. `InProcessBus` is the single-node implementation; the Redis one shares the interface, and
so does the Redis Cluster one (services/realtime/redis_cluster.py `ClusterBus`, sharded pub/sub). A channel
may have any name: the Redis buses prefix it, and on a cluster it lives on the shard of its own name.

What a publish means, on either bus: the event is handed to this node's own subscriber on the next loop
iteration (never inside the publisher's call stack) when the channel is subscribed here, and it is on its
way to the other nodes. `publish` never waits for the network: it returns once the event is queued
(`publish_nowait` is the same call for code that cannot await). It does not fail either: on the Redis
bus, an event that does not reach Redis is logged and counted (`publish_failures`, `publish_dropped`),
and while Redis refuses commands the node reports itself unready. Stored messages are not lost by that:
they are written to MongoDB before they are published, a socket that sees a gap in message ids fetches
it, and a node that lost Redis catches every conversation socket up from MongoDB when it is back
(services/core/container.py, `catch_up_all`). Other events (typing, presence, receipts, notification frames)
are transient and may miss other nodes during an outage.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from services.core import background

log = logging.getLogger("chat.bus")

Handler = Callable[[str, bytes], None]

# Connections of a node's command client (presence, budgets, notification log...), and how long a command
# waits for one when all are busy before it fails like any Redis error.
REDIS_POOL_SIZE = 100
REDIS_POOL_WAIT_S = 2.0


def conversation_channel(conversation_id: int) -> str:
    return f"conv:{conversation_id}"


def user_channel(user_id: int) -> str:
    return f"user:{user_id}"


class Bus(abc.ABC):
    def __init__(self) -> None:
        self._handler: Handler | None = None

    def set_handler(self, handler: Handler) -> None:
        """The one callback that receives (channel, payload) for every subscribed channel."""
        self._handler = handler

    def _deliver(self, channel: str, payload: bytes) -> None:
        if self._handler is None:
            return
        try:
            self._handler(channel, payload)
        except Exception:
            log.exception("bus handler failed for %s", channel)

    def deliver_here(self, channel: str, payload: bytes) -> None:
        """Hand an event to this node's own subscribers only, on the next loop iteration (for an event that
        could not go through the shared backend: better this node's sockets than nobody)."""
        asyncio.get_running_loop().call_soon(self._deliver, channel, payload)

    @property
    def healthy(self) -> bool:
        return True

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; the in-process bus has nothing to do."""

    async def publish(self, channel: str, payload: bytes) -> None:
        """Queue an event for every subscriber of `channel` (see the module docstring)."""
        self.publish_nowait(channel, payload)

    @abc.abstractmethod
    def publish_nowait(self, channel: str, payload: bytes) -> None: ...

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None: ...

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect."""


class InProcessBus(Bus):
    """A single node: publishing is a direct, asynchronous hand-off to the local subscriber."""

    def __init__(self) -> None:
        super().__init__()
        self._subscribed: set[str] = set()

    def publish_nowait(self, channel: str, payload: bytes) -> None:
        if channel in self._subscribed:
            # Delivered on the next loop iteration, as a network bus would: a publisher never runs
            # socket writes inside its own call stack.
            asyncio.get_running_loop().call_soon(self._deliver, channel, payload)

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)


async def _as_is(reply: Any) -> Any:
    """Pub/sub replies as hiredis parsed them (redis-py's default handler logs each one first)."""
    return reply


class RedisBus(Bus):
    """Several nodes: Redis pub/sub, one subscriber connection and one publisher connection per node.

    Own events are delivered locally, as on the in-process bus, and go to Redis in an envelope that names
    this node (`@<16 hex digits> ` before the payload), so the node drops them when Redis sends them back
    and every other node strips the envelope and delivers them once. A payload without an envelope
    (published by something other than a RedisBus) is delivered as it is.

    Publishing: events wait in one queue, in publish order, and a single sender task writes everything
    queued as one pipeline of PUBLISH commands (those of one loop iteration, or more while the previous
    pipeline is in flight), one pipeline at a time, so other nodes see this node's events in the order
    they were published. The publisher connection does not retry: a pipeline that fails may have been
    partly delivered, and sending it again would repeat those events, so it is dropped and counted in
    `publish_failures`. The sender then waits (backoff up to MAX_BACKOFF_S) before sending what has been
    queued meanwhile. The queue holds at most MAX_QUEUED events and MAX_QUEUED_BYTES; past either, a new
    event goes to local subscribers only and is counted in `publish_dropped`. So while Redis is down a
    node holds a bounded amount, and other nodes receive at most what was queued during the last backoff
    once it is back, late but in order. A failed command makes the node unready (`healthy`) until one
    goes through again; an idle node probes with PING meanwhile.

    Subscribing: the node subscribes to exactly the channels its local sockets need. `subscribe` returns
    once Redis has confirmed the subscription, so whoever reads MongoDB after it cannot miss an event
    published after that read (the resume guarantee rests on this; own events published after it are
    delivered locally). When the subscriber connection goes away (restart, network, or the pub/sub
    output-buffer limit cutting a slow subscriber off), the node keeps serving its own sockets, reconnects
    with backoff, resubscribes everything, and calls `on_reconnect` hooks so that sockets catch up from
    MongoDB on what they missed meanwhile.
    """

    SUBSCRIBE_TIMEOUT_S = 2.0
    MAX_QUEUED = 100_000
    MAX_QUEUED_BYTES = 32 * 1024 * 1024
    MAX_PIPELINE = 1_000  # commands per pipeline: one write stays a bounded size
    MIN_BACKOFF_S = 0.05
    MAX_BACKOFF_S = 1.0
    PUBLISH_TIMEOUT_S = 5.0
    CLOSE_FLUSH_S = 2.0  # how long close() lets the queue drain (presence hand-over, last messages)

    def __init__(self, url: str, prefix: str = "chat:") -> None:
        super().__init__()
        import redis.asyncio as aioredis  # imported here: single-node deployments never load redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._aioredis = aioredis
        # A blocking pool: past its size a command waits for a connection to come free (at most
        # REDIS_POOL_WAIT_S) instead of failing at once with "Too many connections", which is what the
        # default pool does at 100 commands in flight (a reconnect storm reaches that).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_POOL_SIZE,
            timeout=REDIS_POOL_WAIT_S,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=0,
        )
        self.redis: Any = aioredis.Redis.from_pool(pool)
        # Its own client so that a pipeline is sent at most once (the default client retries) and the
        # publishes of this node leave on one connection, in order. One deadline per pipeline
        # (PUBLISH_TIMEOUT_S) instead of a socket timeout, which redis-py arms for every reply.
        self._publisher: Any = aioredis.from_url(
            url,
            socket_connect_timeout=2,
            socket_timeout=None,
            health_check_interval=0,
            decode_responses=False,
            retry=Retry(NoBackoff(), 0),
        )
        self._setup(prefix)

    def _setup(self, prefix: str) -> None:
        """The state every Redis bus shares, whatever its clients."""
        self.prefix = prefix
        self._prefix_bytes = prefix.encode()
        self.node_tag = b"@" + secrets.token_hex(8).encode() + b" "
        self._channels: set[str] = set()
        self._confirmations: dict[str, list[asyncio.Future[None]]] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._outbox: deque[tuple[bytes, bytes]] = deque()
        self._outbox_bytes = 0
        self._outbox_ready = asyncio.Event()
        self._outbox_empty = asyncio.Event()
        self._outbox_empty.set()
        self._connected = asyncio.Event()
        self._healthy = False  # the subscriber connection is up
        self._publish_down = False  # the last command on the publisher connection failed
        self._dropping = False
        self._closing = False
        self.on_reconnect: list[Callable[[], None]] = []
        self.on_error: list[Callable[[], None]] = []
        self.publish_failures = 0
        self.publish_dropped = 0
        self.reconnects = 0

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._publish_down

    def _wire(self, channel: str) -> bytes:
        return (self.prefix + channel).encode()

    def _local(self, wire: bytes | str) -> str:
        text = wire.decode() if isinstance(wire, bytes) else wire
        return text[len(self.prefix) :]

    async def start(self) -> None:
        self._start_sender()
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read_loop(), name="redis-bus-reader")
            # Give a reachable Redis a moment so the node starts ready; never block start-up on it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), self.SUBSCRIBE_TIMEOUT_S)

    # -- publishing --------------------------------------------------------------------------------

    async def publish(self, channel: str, payload: bytes) -> None:
        self.publish_nowait(channel, payload)
        if len(self._outbox) >= self.MAX_PIPELINE:
            # A caller publishing in a loop (presence of many conversations) lets the sender take a
            # pipeline's worth before it adds more, rather than filling the queue in one iteration.
            await asyncio.sleep(0)

    def publish_nowait(self, channel: str, payload: bytes) -> None:
        if channel in self._channels:
            # Our own sockets do not wait for Redis, and do not depend on it: delivered on the next
            # loop iteration, and skipped when Redis sends the event back.
            asyncio.get_running_loop().call_soon(self._deliver, channel, payload)
        data = self.node_tag + payload
        if len(self._outbox) >= self.MAX_QUEUED or self._outbox_bytes + len(data) > self.MAX_QUEUED_BYTES:
            self.publish_dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning("Redis publish queue full: events reach this node's sockets only until it drains")
            return
        self._outbox.append((self._wire(channel), data))
        self._outbox_bytes += len(data)
        self._outbox_empty.clear()
        self._outbox_ready.set()
        if self._sender is None:
            self._start_sender()

    def _start_sender(self) -> None:
        if self._sender is None and not self._closing:
            self._sender = asyncio.get_running_loop().create_task(self._send_loop(), name="redis-bus-sender")

    async def _send_loop(self) -> None:
        backoff = self.MIN_BACKOFF_S
        while True:
            if not self._outbox:
                self._outbox_ready.clear()
                self._outbox_empty.set()
                if not self._publish_down:
                    await self._outbox_ready.wait()
                    continue
                # Nothing to send, yet the node stays unready until a command goes through: an idle
                # node tries a PING now and then instead of waiting for its next event.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._outbox_ready.wait(), backoff)
                if not self._outbox:
                    ok = await self._attempt(self._publisher.ping(), 0)
                    backoff = self.MIN_BACKOFF_S if ok else min(backoff * 2, self.MAX_BACKOFF_S)
                continue
            batch = []
            outbox = self._outbox
            for _ in range(min(len(outbox), self.MAX_PIPELINE)):
                batch.append(outbox.popleft())
            self._outbox_bytes -= sum(len(data) for _, data in batch)
            if self._dropping and not outbox:
                self._dropping = False
                log.warning("Redis publish queue drained; %d events dropped so far", self.publish_dropped)
            if await self._attempt(self._send_batch(batch), len(batch)):
                backoff = self.MIN_BACKOFF_S
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.MAX_BACKOFF_S)

    async def _send_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        """One pipeline of PUBLISH commands (a Redis Cluster bus sends SPUBLISH instead)."""
        pipe = self._publisher.pipeline(transaction=False)
        for wire, data in batch:
            pipe.publish(wire, data)
        await pipe.execute()

    async def _attempt(self, command: Awaitable[Any], events: int) -> bool:
        """Run one publisher command (a pipeline of `events` PUBLISHes, or a probe); False if it failed."""
        try:
            # A timeout cancels the read, and redis-py then drops the connection: a half-read pipeline
            # never goes back to the pool.
            async with asyncio.timeout(self.PUBLISH_TIMEOUT_S):
                await command
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not resent: Redis may have delivered part of the pipeline. Stored messages reach other
            # nodes' sockets from MongoDB (gap fill, catch-up after their reconnect).
            self.publish_failures += events
            if not self._publish_down:
                log.warning("Redis publish failed, %d events not sent to other nodes: %s", events, exc)
            self._publish_down = True
            for hook in self.on_error:
                hook()
            return False
        if self._publish_down:
            self._publish_down = False
            log.warning("Redis publishing works again")
            self._publishing_restored()
        return True

    def _publishing_restored(self) -> None:
        """A command went through after some failed (a single Redis has nothing more to do: its
        subscribers all lost their connection with it, and catch up when they are back)."""

    # -- subscribing -------------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        if channel in self._channels:
            return
        self._channels.add(channel)
        if not self._healthy or self._pubsub is None:
            return  # subscribed by the reader as soon as Redis is back
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(channel, []).append(waiter)
        try:
            await self._pubsub.subscribe(self._wire(channel))
            await asyncio.wait_for(waiter, self.SUBSCRIBE_TIMEOUT_S)
        except (self._aioredis.ConnectionError, self._aioredis.TimeoutError, OSError, TimeoutError):
            log.warning("subscription to %s not confirmed; it is renewed when Redis is back", channel)
        finally:
            waiters = self._confirmations.get(channel, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._confirmations.pop(channel, None)

    async def unsubscribe(self, channel: str) -> None:
        if channel not in self._channels:
            return
        self._channels.discard(channel)
        if self._healthy and self._pubsub is not None:
            with contextlib.suppress(self._aioredis.ConnectionError, self._aioredis.TimeoutError, OSError):
                await self._pubsub.unsubscribe(self._wire(channel))

    async def _read_loop(self) -> None:
        backoff = 0.1
        first = True
        while not self._closing:
            pubsub = self.redis.pubsub(push_handler_func=_as_is)
            try:
                # A channel of the node's own keeps the connection subscribed even with no sockets.
                snapshot = set(self._channels)
                await pubsub.subscribe(self._wire("node-control"), *(self._wire(c) for c in snapshot))
                self._pubsub = pubsub
                self._healthy = True
                added_meanwhile = self._channels - snapshot
                if added_meanwhile:
                    await pubsub.subscribe(*(self._wire(c) for c in added_meanwhile))
                self._connected.set()
                backoff = 0.1
                if not first:
                    self.reconnects += 1
                    log.warning("Redis bus reconnected; %d channels resubscribed", len(self._channels))
                    for hook in self.on_reconnect:
                        hook()
                first = False
                await self._read_messages(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._healthy:
                    log.warning("Redis bus connection lost: %s", exc)
                for hook in self.on_error:
                    hook()
                self._healthy = False
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _read_messages(self, pubsub: Any) -> None:
        """Read replies off the subscriber connection until it fails.

        The connection's own `read_response` rather than `get_message`: a reply the parser already holds
        comes back without waiting on the socket, so every message of one socket read is handled in the
        same wake-up, without `get_message`'s timeout, retry and instrumentation layers per message. A
        lost connection raises, and `_read_loop` builds a new one (no silent reconnect here, which would
        skip the catch-up). Replies other than messages go through redis-py's own bookkeeping."""
        read = pubsub.connection.read_response
        skip = len(self._prefix_bytes)
        while not self._closing:
            reply = await read(timeout=math.inf, disconnect_on_error=False, push_request=True)
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                self._deliver_received(reply[1][skip:].decode(), reply[2])
            else:
                message = await pubsub.handle_message(reply)
                if message is not None:
                    self._on_pubsub_message(message)

    def _deliver_received(self, channel: str, data: bytes) -> None:
        """An event read from Redis: another node's, stripped of its envelope; this node's own are
        dropped (delivered locally when they were published)."""
        if data[:1] == b"@":
            if data.startswith(self.node_tag):
                return
            data = data[len(self.node_tag) :]
        self._deliver(channel, data)

    def _on_pubsub_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in (b"message", "message"):
            self._deliver_received(self._local(message["channel"]), message["data"])
        elif kind in (b"subscribe", "subscribe"):
            for waiter in self._confirmations.get(self._local(message["channel"]), []):
                if not waiter.done():
                    waiter.set_result(None)

    async def close(self) -> None:
        # What is queued goes out first: the presence hand-over and the last stored messages are
        # published during shutdown, just before this.
        if self._sender is not None and not self._outbox_empty.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox_empty.wait(), self.CLOSE_FLUSH_S)
        self._closing = True
        for task, name in ((self._sender, "bus sender"), (self._reader, "bus reader")):
            if task is not None:
                await background.stop(task, name)
        self._sender = self._reader = None
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        for client in (self.redis, self._publisher):
            with contextlib.suppress(Exception):
                await client.aclose()  # type: ignore[no-untyped-call]
