"""Reading messages back: history pages, resuming after an id, and the backlog a socket is sent.

Ids are stored in order (services/chat/writer.py), so a reader that has id n can resume with n + 1 and
never misses a message. Data written by earlier versions, which reserved ids before inserting, can hold
ids that were reserved and never stored; readers wait HOLE_TIMEOUT for such an id, then fill it with a
tombstone and go on (`contiguous_after`). Tombstones (`hole: true`) are left out of everything a client
sees.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

import orjson
import pymongo.errors

from services.chat.ids import NEWEST_WINDOW, StoredIds, tombstone
from services.chat.metadata import ConversationMetadata
from services.chat.views import ChatViews, utc_datetime
from services.storage.store import Doc, Store

log = logging.getLogger("chat.chat")


class HistoryReader:
    def __init__(
        self,
        store: Store,
        ids: StoredIds,
        metadata: ConversationMetadata,
        views: ChatViews,
        *,
        hole_timeout_s: float = 3.0,
    ) -> None:
        self._store = store
        self._ids = ids
        self._metadata = metadata
        self._views = views
        self.hole_timeout_s = hole_timeout_s

    async def page(
        self, conversation_id: int, *, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of messages in storage order, and whether more lie beyond it in the paging direction."""
        await self._metadata.settled([conversation_id])
        conv_doc = await self._store.conversations.find_one({"_id": conversation_id}, {"read_seq": 1, "last_seq": 1})
        read_seq = {int(k): int(v) for k, v in ((conv_doc or {}).get("read_seq") or {}).items()}
        if after is not None:
            docs, has_more = await self.messages_after(conversation_id, after, limit)
        else:
            newest = await self._ids.newest(conversation_id, int((conv_doc or {}).get("last_seq", 0)))
            top = 0 if newest is None else int(newest["seq"])
            if before is not None:
                top = min(top, before - 1)
            # Tombstones are left out, so a page is never all holes (with no id to page on).
            found = await self._ids.stored_before(conversation_id, top, limit + 1)
            has_more = len(found) > limit
            docs = list(reversed(found[:limit]))
        return await self._views.serialize_many(docs, read_seq), has_more

    async def messages_after(self, conversation_id: int, after: int, limit: int) -> tuple[list[Doc], bool]:
        """Stored messages with id > after, in order, never past an id still in flight; holes left out.

        Pages past holes until `limit` messages are found or none are left, so that a page of holes
        never comes back empty with has_more (the client would have no id to continue from)."""
        out: list[Doc] = []
        while True:
            docs, has_more = await self.contiguous_after(conversation_id, after, limit - len(out))
            out.extend(d for d in docs if not d.get("hole"))
            if not has_more or not docs or len(out) >= limit:
                return out, has_more
            after = int(docs[-1]["seq"])

    async def contiguous_after(self, conversation_id: int, after: int, limit: int) -> tuple[list[Doc], bool]:
        """Documents with ids after+1, after+2, ... without a gap (holes included, marked `hole`).

        A missing id is waited for briefly; once the message after it is older than HOLE_TIMEOUT the id
        is declared a hole (tombstone) and passed. Returns (documents, more stored after them?).
        """
        deadline = time.monotonic() + self.hole_timeout_s + 1.0
        while True:
            found = {int(d["seq"]): d for d in await self._ids.by_seq(conversation_id, after + 1, after + limit + 1)}
            contiguous: list[Doc] = []
            expected = after + 1
            while expected in found:
                contiguous.append(found[expected])
                expected += 1
            if len(contiguous) > limit:
                return contiguous[:limit], True
            later = [seq for seq in found if seq > expected]
            if not later:
                # Ids missing past the whole window (left by earlier versions) hide what lies beyond.
                beyond = await self._first_stored_from(conversation_id, after + limit + 2)
                if beyond is not None:
                    found[int(beyond["seq"])] = beyond
                    later = [int(beyond["seq"])]
            if contiguous:
                return contiguous, bool(later)
            if not later:
                return [], False
            # The very next id is missing while a later one exists: in flight, or a dead writer's hole.
            gap_at = found[min(later)]
            age = (dt.datetime.now(dt.UTC) - utc_datetime(gap_at.get("created_at"))).total_seconds()
            if age >= self.hole_timeout_s or time.monotonic() >= deadline:
                await self.fill_holes(conversation_id, expected, int(gap_at["seq"]) - 1)
                continue
            await asyncio.sleep(0.05)

    async def _first_stored_from(self, conversation_id: int, first: int) -> Doc | None:
        """The stored document with the lowest id >= first, looked for only up to the newest id known
        stored (usually below `first`: then nothing is read but the conversation's `last_seq`)."""
        known = await self._ids.known_stored(conversation_id)
        window = NEWEST_WINDOW
        while first <= known:
            found = await self._ids.by_seq(conversation_id, first, min(known, first + window - 1))
            if found:
                return min(found, key=lambda d: int(d["seq"]))
            first, window = first + window, window * 2
        return None

    async def last_stored_seq(self, conversation_id: int, known: int | None = None) -> int:
        """The highest message id stored in the conversation (tombstones included), 0 if none; `known`:
        an id known stored, such as the `last_seq` of a conversation document just read."""
        doc = await self._ids.newest(conversation_id, known)
        return 0 if doc is None else int(doc["seq"])

    async def backlog(
        self, conversation_id: int, after: int, limit: int
    ) -> tuple[list[tuple[int, bytes | None]], bool]:
        """(id, socket frame) pairs after `after`, as live delivery would send them (None for holes)."""
        docs, has_more = await self.contiguous_after(conversation_id, after, limit)
        stored = [d for d in docs if not d.get("hole")]
        conv_doc = await self._store.conversations.find_one({"_id": conversation_id}, {"read_seq": 1})
        read_seq = {int(k): int(v) for k, v in ((conv_doc or {}).get("read_seq") or {}).items()}
        messages = iter(await self._views.serialize_many(stored, read_seq))
        out: list[tuple[int, bytes | None]] = []
        for doc in docs:
            frame = None if doc.get("hole") else orjson.dumps({"type": "message", "message": next(messages)})
            out.append((int(doc["seq"]), frame))
        return out, has_more

    async def fill_holes(self, conversation_id: int, first: int, last: int) -> None:
        """Store tombstones at the ids first..last that nobody stored (those stored meanwhile stay)."""
        for seq in range(first, last + 1):
            try:
                await self._store.messages.insert_one(tombstone(conversation_id, seq))
                log.warning("conversation %d: message id %d never stored; skipped as a hole", conversation_id, seq)
            except pymongo.errors.DuplicateKeyError:
                pass
