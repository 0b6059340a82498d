"""Write-behind of conversation metadata: `last_seq`, `updated_at` and senders' read pointers.

Storing a message is one insert (services/chat/writer.py); what the conversation document says about it (its
newest id, for unread counts and the conversation list's order, and the sender's read pointer, since
sending implies having read what came before) is bookkeeping that no sender needs to wait for. Every
field is written with `$max`, so updates commute: they can be merged, retried and applied in any order.

One flush runs at a time, and flushes start at least `interval_s` apart: touches that arrive meanwhile
are merged, so under load a conversation costs one update per interval, not one per message (an
update costs the embedded store several times an insert: without the interval, the bookkeeping took
more of its time than the messages). Readers that show this metadata call `settled()` first, which
cuts the wait short, so a node always reads its own writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field

import pymongo
import pymongo.errors
from pymongo.asynchronous.collection import AsyncCollection

from services.storage.store import Doc

log = logging.getLogger("chat.conversation_meta")

# A failed flush is retried after this, doubling up to RETRY_MAX_S while the store stays down.
RETRY_MIN_S = 0.05
RETRY_MAX_S = 2.0


@dataclass
class _Touch:
    last_seq: int
    at: dt.datetime
    read_seq: dict[int, int] = field(default_factory=dict)

    def merge(self, other: _Touch) -> None:
        self.last_seq = max(self.last_seq, other.last_seq)
        self.at = max(self.at, other.at)
        for user_id, seq in other.read_seq.items():
            self.read_seq[user_id] = max(self.read_seq.get(user_id, 0), seq)

    def update(self) -> Doc:
        fields: Doc = {"last_seq": self.last_seq, "updated_at": self.at}
        for user_id, seq in self.read_seq.items():
            fields[f"read_seq.{user_id}"] = seq
        return {"$max": fields}


class ConversationMetadata:
    def __init__(self, conversations: AsyncCollection[Doc], *, interval_s: float = 0.0) -> None:
        self._conversations = conversations
        self._interval_s = interval_s
        self._hurry = asyncio.Event()
        self._last_flush = float("-inf")
        self._pending: dict[int, _Touch] = {}
        self._in_flight: dict[int, _Touch] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._flushed = asyncio.Event()

    def touch(self, conversation_id: int, last_seq: int, at: dt.datetime, read_seq: dict[int, int]) -> None:
        """Record that messages up to `last_seq` were stored at `at`, their senders having read up to theirs."""
        touch = _Touch(last_seq, at, dict(read_seq))
        current = self._pending.get(conversation_id)
        if current is None:
            self._pending[conversation_id] = touch
        else:
            current.merge(touch)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(), name="conversation-metadata")

    def busy(self, conversation_ids: list[int] | None = None) -> bool:
        """Whether some of these conversations (any, if None) have metadata not yet written."""
        if conversation_ids is None:
            return bool(self._pending or self._in_flight)
        return any(c in self._pending or c in self._in_flight for c in conversation_ids)

    async def settled(self, conversation_ids: list[int] | None = None, timeout_s: float = 1.0) -> None:
        """Wait until what this node recorded for these conversations is written (at most `timeout_s`:
        with the store down, a reader gets what is stored rather than nothing)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.busy(conversation_ids) and (left := deadline - loop.time()) > 0:
            self._hurry.set()
            self._flushed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed.wait(), left)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Write what is pending (the caller stopped touching)."""
        self._hurry.set()
        if self._flusher is not None and not self._flusher.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._flusher), timeout_s)
            except TimeoutError:
                log.error("conversation metadata of %d conversations not written at shutdown", len(self._pending))
                self._flusher.cancel()

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RETRY_MIN_S
        while self._pending:
            wait = self._last_flush + self._interval_s - loop.time()
            if wait > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), wait)
            self._hurry.clear()
            self._last_flush = loop.time()
            self._in_flight, self._pending = self._pending, {}
            ops = [pymongo.UpdateOne({"_id": cid}, touch.update()) for cid, touch in self._in_flight.items()]
            try:
                await self._conversations.bulk_write(ops, ordered=False)
                delay = RETRY_MIN_S
            except pymongo.errors.PyMongoError as exc:
                log.warning("could not write conversation metadata (%s); retrying in %.2fs", exc, delay)
                for cid, touch in self._in_flight.items():
                    current = self._pending.setdefault(cid, touch)
                    if current is not touch:
                        current.merge(touch)
                self._in_flight = {}
                # Not cut short by readers: they give up after their own timeout instead.
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            finally:
                self._in_flight = {}
                self._flushed.set()
