"""Publish/subscribe between server nodes, behind one interface.

Channels are named `conv:<id>` (everything said in a conversation) and `user:<id>` (notifications and
control events for one user). A node subscribes only to the channels its local sockets need, and every
node's subscriber hands what arrives to one callback (services/connections.py), which fans it out to
local sockets. `InProcessBus` is the single-node implementation; the Redis one shares the interface.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("chat.bus")

Handler = Callable[[str, bytes], None]


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

    @property
    def healthy(self) -> bool:
        return True

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; the in-process bus has nothing to do."""

    @abc.abstractmethod
    async def publish(self, channel: str, payload: bytes) -> None: ...

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

    async def publish(self, channel: str, payload: bytes) -> None:
        if channel in self._subscribed:
            # Delivered on the next loop iteration, as a network bus would: a publisher never runs
            # socket writes inside its own call stack.
            asyncio.get_running_loop().call_soon(self._deliver, channel, payload)

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)


class RedisBus(Bus):
    """Several nodes: one PUBLISH per event, one pub/sub connection per node.

    The node subscribes to exactly the channels its local sockets need. `subscribe` returns once Redis
    has confirmed the subscription, so whoever reads MongoDB after it cannot miss an event published
    after that read (the resume guarantee rests on this). When Redis goes away (restart, network, or
    the pub/sub output-buffer limit cutting a slow subscriber off), the node keeps serving its own
    sockets by delivering its own events locally, reconnects with backoff, resubscribes everything, and
    calls `on_reconnect` hooks so that sockets catch up from MongoDB on what they missed meanwhile.
    """

    SUBSCRIBE_TIMEOUT_S = 2.0

    def __init__(self, url: str, prefix: str = "chat:") -> None:
        super().__init__()
        import redis.asyncio as aioredis  # imported here: single-node deployments never load redis

        self._aioredis = aioredis
        self.redis = aioredis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=0, decode_responses=False
        )
        self.prefix = prefix
        self._channels: set[str] = set()
        self._confirmations: dict[str, list[asyncio.Future[None]]] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._healthy = False
        self._closing = False
        self.on_reconnect: list[Callable[[], None]] = []
        self.on_error: list[Callable[[], None]] = []
        self.publish_failures = 0
        self.reconnects = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    def _wire(self, channel: str) -> bytes:
        return (self.prefix + channel).encode()

    def _local(self, wire: bytes | str) -> str:
        text = wire.decode() if isinstance(wire, bytes) else wire
        return text[len(self.prefix) :]

    async def start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read_loop(), name="redis-bus-reader")
            # Give a reachable Redis a moment so the node starts ready; never block start-up on it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), self.SUBSCRIBE_TIMEOUT_S)

    async def publish(self, channel: str, payload: bytes) -> None:
        try:
            await self.redis.publish(self._wire(channel), payload)
        except (self._aioredis.ConnectionError, self._aioredis.TimeoutError, OSError):
            # Redis is away: our own sockets still get the event; other nodes' clients catch up with
            # ?after= from MongoDB, which already holds every stored message.
            self.publish_failures += 1
            self._healthy = False
            for hook in self.on_error:
                hook()
            if channel in self._channels:
                asyncio.get_running_loop().call_soon(self._deliver, channel, payload)

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
            pubsub = self.redis.pubsub()
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
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._on_pubsub_message(message)
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

    def _on_pubsub_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in (b"message", "message"):
            self._deliver(self._local(message["channel"]), message["data"])
        elif kind in (b"subscribe", "subscribe"):
            for waiter in self._confirmations.get(self._local(message["channel"]), []):
                if not waiter.done():
                    waiter.set_result(None)

    async def close(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        with contextlib.suppress(Exception):
            await self.redis.aclose()  # type: ignore[no-untyped-call]
