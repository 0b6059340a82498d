"""Reading messages back: history pages, resuming after an id, and the backlog a socket is sent.

Ids are stored in order (services/chat/writer.py), so a reader that has id n can resume with n + 1 and
never misses a message. Data written by earlier versions, which reserved ids before inserting, can hold
ids that were reserved and never stored; readers wait HOLE_TIMEOUT for such an id, then fill it with a
tombstone and go on (`contiguous_after`). Tombstones (`hole: true`) are left out of every list of
messages.

Messages are read as they now are (edited, or unsent). Lifecycle events (edits and unsends, which are
tombstones with an `event`, services/chat/ids.py) are what a reader who already had a message needs to
learn that it changed: a socket's backlog sends each as its frame at its id, and a REST page read with
`after` whose range holds them lists them in `events`, with `last_id` to continue from, so that no id is
skipped without a reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

import orjson
import pymongo.errors

from services.chat.ids import NEWEST_WINDOW, NewestProbe, StoredIds, is_event, tombstone
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
    ) -> dict[str, Any]:
        """A page of history: `results`, messages in storage order, and `has_more`, whether more lie beyond
        it in the paging direction; with `after`, also `events` and `last_id` (see `_page_after`)."""
        await self._metadata.settled([conversation_id])
        conv_doc = await self._store.conversations.find_one({"_id": conversation_id}, {"read_seq": 1, "last_seq": 1})
        read_seq = {int(k): int(v) for k, v in ((conv_doc or {}).get("read_seq") or {}).items()}
        if after is not None:
            return await self._page_after(conversation_id, after, limit, read_seq)
        newest = await self._ids.newest(conversation_id, int((conv_doc or {}).get("last_seq", 0)))
        top = 0 if newest is None else int(newest["seq"])
        if before is not None:
            top = min(top, before - 1)
        # Tombstones are left out, so a page is never all holes (with no id to page on).
        found = await self._ids.stored_before(conversation_id, top, limit + 1)
        has_more = len(found) > limit
        docs = list(reversed(found[:limit]))
        return {"results": await self._views.serialize_many(docs, read_seq), "has_more": has_more}

    async def _page_after(
        self, conversation_id: int, after: int, limit: int, read_seq: dict[int, int]
    ) -> dict[str, Any]:
        """The page after an id: its messages as `page` gives them and, when its range holds ids that are
        no message (edits, unsends, the seal, skipped holes), the lifecycle `events` among them (one frame
        per changed message, see ChatViews.lifecycle_frames) and `last_id`, the last id it covers. A
        page of messages only is what it always was, so clients that continue from the last message's id
        still can, and lose nothing but the events."""
        docs, events, has_more, last_id = await self.entries_after(conversation_id, after, limit)
        page: dict[str, Any] = {"results": await self._views.serialize_many(docs, read_seq), "has_more": has_more}
        if last_id - after > len(docs):  # ids are read without a gap: the others were tombstones
            frames = await self._views.lifecycle_frames(conversation_id, events, read_seq)
            page["events"] = [frames[seq] for seq in sorted(frames)]
            page["last_id"] = last_id
        return page

    async def messages_after(self, conversation_id: int, after: int, limit: int) -> tuple[list[Doc], bool]:
        """Stored messages with id > after, in order, never past an id still in flight; holes left out."""
        messages, _, has_more, _ = await self.entries_after(conversation_id, after, limit)
        return messages, has_more

    async def entries_after(
        self, conversation_id: int, after: int, limit: int
    ) -> tuple[list[Doc], list[Doc], bool, int]:
        """(messages, lifecycle events, more after them?, last id covered) after `after`, in order, never
        past an id still in flight.

        Pages past tombstones until `limit` messages are found or none are left, so that a page of holes
        or events never comes back without a message while has_more (a client that pages on message ids
        would have none to continue from). The last id covered is that of the last document read, a
        message or a tombstone (`after` when there was none)."""
        messages: list[Doc] = []
        events: list[Doc] = []
        while True:
            docs, has_more = await self.contiguous_after(conversation_id, after, limit - len(messages))
            messages.extend(d for d in docs if not d.get("hole"))
            events.extend(d for d in docs if is_event(d))
            if docs:
                after = int(docs[-1]["seq"])
            if not has_more or not docs or len(messages) >= limit:
                return messages, events, has_more, after

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

    async def last_stored_seq(
        self, conversation_id: int, known: int | None = None, probe: NewestProbe | None = None
    ) -> int:
        """The highest message id stored in the conversation (tombstones included), 0 if none; `known`:
        an id known stored, such as the `last_seq` of a conversation document just read; `probe`: see
        StoredIds.newest."""
        doc = await self._ids.newest(conversation_id, known, probe)
        return 0 if doc is None else int(doc["seq"])

    async def backlog(
        self, conversation_id: int, after: int, limit: int
    ) -> tuple[list[tuple[int, bytes | None]], bool]:
        """(id, socket frame) pairs after `after`, as live delivery would send them (None for holes).

        A lifecycle event's frame shows its message as it now is; of several events of one message in a
        page only the last is sent (the others would repeat it) and the earlier ids are skipped like holes."""
        docs, has_more = await self.contiguous_after(conversation_id, after, limit)
        stored = [d for d in docs if not d.get("hole")]
        read_seq = await self._views.read_pointers(conversation_id)
        messages = iter(await self._views.serialize_many(stored, read_seq))
        events = await self._views.lifecycle_frames(conversation_id, [d for d in docs if is_event(d)], read_seq)
        out: list[tuple[int, bytes | None]] = []
        for doc in docs:
            seq = int(doc["seq"])
            if not doc.get("hole"):
                out.append((seq, orjson.dumps({"type": "message", "message": next(messages)})))
            else:
                event = events.get(seq)
                out.append((seq, None if event is None else orjson.dumps(event)))
        return out, has_more

    async def fill_holes(self, conversation_id: int, first: int, last: int) -> None:
        """Store tombstones at the ids first..last that nobody stored (those stored meanwhile stay)."""
        for seq in range(first, last + 1):
            try:
                await self._store.messages.insert_one(tombstone(conversation_id, seq))
                log.warning("conversation %d: message id %d never stored; skipped as a hole", conversation_id, seq)
            except pymongo.errors.DuplicateKeyError:
                pass
