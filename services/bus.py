"""Publish/subscribe between server nodes, behind one interface.

Channels are named `conv:<id>` (everything said in a conversation) and `user:<id>` (notifications and
control events for one user). A node subscribes only to the channels its local sockets need, and every
node's subscriber hands what arrives to one callback (services/connections.py), which fans it out to
local sockets. `InProcessBus` is the single-node implementation; the Redis one shares the interface.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable

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
