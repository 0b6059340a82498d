"""Typing indicators, with expiry on the server.

Clients say `is_typing: true` and often never say false (tab closed, network gone). The node where the
typist is connected remembers until when each typist counts as typing and reports `is_typing: false`
itself when they go silent, send a message, or disconnect. One sweep per node per second does the
expiry: no timer per socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, Protocol

from services.core import background
from services.realtime.events import Publisher

log = logging.getLogger("chat.typing")


class UserSummaries(Protocol):
    """Where a typing frame's username comes from (the accounts feature's UserService)."""

    async def summary(self, user_id: int) -> dict[str, Any]: ...

    def cached_summary(self, user_id: int) -> dict[str, Any] | None: ...


def typing_frame(user_id: int, username: str, is_typing: bool) -> dict[str, Any]:
    return {"type": "typing", "user_id": user_id, "username": username, "is_typing": is_typing}


class TypingTracker:
    def __init__(self, events: Publisher, users: UserSummaries, timeout_s: float) -> None:
        self._events = events
        self._users = users
        self.timeout_s = timeout_s
        self._expires: dict[tuple[int, int], float] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop(), name="typing-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            await background.stop(self._sweeper, "typing sweeper")
            self._sweeper = None

    def is_typing(self, conversation_id: int, user_id: int) -> bool:
        return (conversation_id, user_id) in self._expires

    def update(self, conversation_id: int, user_id: int, is_typing: bool) -> Awaitable[None] | None:
        """Record and relay a typing frame. Returns None when it is done (the typist's name was cached: the
        usual case, and then the frame costs no Task and no wait), or an awaitable that reads the name."""
        key = (conversation_id, user_id)
        if is_typing:
            self.start()
            self._expires[key] = time.monotonic() + self.timeout_s
        elif self._expires.pop(key, None) is None:
            # Not typing as far as we know: still relay, a client may have missed our own expiry.
            pass
        user = self._users.cached_summary(user_id)
        if user is None:
            return self._publish(conversation_id, user_id, is_typing)
        self._events.to_conversation_nowait(
            conversation_id, typing_frame(user_id, user["username"], is_typing), exclude_user=user_id
        )
        return None

    async def stop(self, conversation_id: int, user_id: int) -> None:
        """The typist sent a message or left: report them stopped if they were typing."""
        if self._expires.pop((conversation_id, user_id), None) is not None:
            await self._publish(conversation_id, user_id, False)

    def stop_soon(self, conversation_id: int, user_id: int) -> None:
        if (conversation_id, user_id) in self._expires:
            task = asyncio.get_running_loop().create_task(self.stop(conversation_id, user_id))
            # Held until done: the loop keeps only weak references to tasks.
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _publish(self, conversation_id: int, user_id: int, is_typing: bool) -> None:
        user = await self._users.summary(user_id)
        frame = typing_frame(user_id, user["username"], is_typing)
        await self._events.to_conversation(conversation_id, frame, exclude_user=user_id)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.timeout_s / 2))
            now = time.monotonic()
            expired = [key for key, until in self._expires.items() if until <= now]
            for conversation_id, user_id in expired:
                try:
                    await self.stop(conversation_id, user_id)
                except Exception:
                    log.warning("could not report typing expiry", exc_info=True)
