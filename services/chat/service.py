"""Conversations and messages: membership, sending, history, read pointers, attachments.

Message ids are a dense sequence per conversation (1, 2, 3...), and the insert of a message is what
reserves its id: a message's `_id` packs (conversation id, id), so two nodes that pick the same next id
collide on `_id`, one insert wins and the other node reads the newest stored id and numbers its
messages again (see `_write_batch`). A writer numbers its messages from an id it knows is stored (its
own last insert, one seen on the bus, or one read back), and inserts them in order, so id n is never
stored before id n - 1: a reader that sees id 7 has id 6 as well, and `?after=<id>` resumes without a
gap or a repeat with several nodes writing one conversation.

Closing a conversation stores a sealing tombstone at its next id (`seal`): a writer that still
believes the conversation open collides with it, reads it back and fails the send, so no message is
ever stored after the close. Tombstones (`hole: true`) are left out of everything a client sees. Data
written by earlier versions, which reserved ids before inserting, can hold ids that were reserved and
never stored; readers wait HOLE_TIMEOUT for such an id, then fill it with a tombstone and go on.

Every read of messages is a set of `_id` point lookups: dense ids say which keys a page holds, and the
newest id is found just past the conversation's `last_seq` (`_newest`). The embedded store answers an
`_id` range query by reading the whole collection, so none is sent.

Writes are grouped: concurrent sends wait in one queue and a single writer task stores each batch with
one ordered `insert_many`. Nobody is answered before their batch is acknowledged by MongoDB. With no
concurrency a batch is one message and there is no added delay. What the conversation document says
about its messages (newest id, order in the list, senders' read pointers) is written behind, merged
across batches (services/chat/metadata.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pymongo.errors

from services.accounts.users import UserService, iso
from services.chat.metadata import ConversationMetadata
from services.core import errors
from services.realtime.events import Publisher, now_iso
from services.storage.media import ATTACHMENT_TYPES, MediaStore
from services.storage.store import STORE_DOWN_ERRORS, Doc, Store

log = logging.getLogger("chat.chat")

SEQ_BITS = 32
# message_key must fit MongoDB's signed 64-bit integers, for the conversation after this one too.
MAX_CONVERSATION_ID = (1 << (63 - SEQ_BITS)) - 1
MAX_SEQ = (1 << SEQ_BITS) - 1
# Ids looked up at once past the newest known one (doubling while they are all stored).
NEWEST_WINDOW = 16
MAX_BATCH = 256
MAX_BATCHES_IN_FLIGHT = 2
# Insert rounds per batch before the senders left are told to retry (collisions with other nodes).
MAX_ROUNDS = 20
DUPLICATE_KEY = 11000
SEALED = -1  # in ChatService._last_seq: the conversation is closed, no id is free
CONVERSATION_CACHE_TTL_S = 10.0


def message_key(conversation_id: int, seq: int) -> int:
    return (conversation_id << SEQ_BITS) | seq


def tombstone(conversation_id: int, seq: int, **marks: Any) -> Doc:
    """A document that takes an id without being a message (a skipped hole, or a conversation's seal)."""
    key = message_key(conversation_id, seq)
    return {"_id": key, "conversation_id": conversation_id, "seq": seq, "hole": True, **marks}


@dataclass
class Conversation:
    id: int
    participants: tuple[int, ...]
    is_open: bool
    # As the conversation document said when read: written behind the messages, so a lower bound.
    last_seq: int = 0

    def others(self, user_id: int) -> list[int]:
        return [p for p in self.participants if p != user_id]


@dataclass
class _PendingSend:
    conversation_id: int
    sender_id: int
    content: str
    client_id: str | None
    attachment: Doc | None
    future: asyncio.Future[tuple[Doc, bool]] = field(repr=False)


class ChatService:
    def __init__(
        self,
        store: Store,
        users: UserService,
        events: Publisher,
        media: MediaStore,
        *,
        max_content_chars: int = 4000,
        hole_timeout_s: float = 3.0,
        metadata_interval_s: float = 0.0,
    ) -> None:
        self._store = store
        self._users = users
        self._events = events
        self._media = media
        self.max_content_chars = max_content_chars
        self.hole_timeout_s = hole_timeout_s
        self._conversations: dict[int, tuple[float, Conversation]] = {}
        # The newest message id this node knows to be stored, per conversation (or SEALED): its next
        # message is numbered from here (see _write_batch). Learnt from its own inserts, the bus and
        # the store.
        self._last_seq: dict[int, int] = {}
        self.metadata = ConversationMetadata(store.conversations, interval_s=metadata_interval_s)
        self._queue: list[_PendingSend] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._writing: set[int] = set()  # conversations with a batch in flight
        self._closing = False
        # Called with (conversation_id, sender_id) after a message is stored: the typing tracker uses it
        # to report the sender stopped typing.
        self.on_message_stored: list[Any] = []

    # -- membership --------------------------------------------------------------------------------

    async def conversation(self, conversation_id: int, *, fresh: bool = False) -> Conversation | None:
        """The conversation, from a short-lived cache: participants never change, only `open` does."""
        now = time.monotonic()
        cached = self._conversations.get(conversation_id)
        if cached is not None and cached[0] > now and not fresh:
            return cached[1]
        doc = await self._store.conversations.find_one(
            {"_id": conversation_id}, {"participants": 1, "status": 1, "last_seq": 1}
        )
        if doc is None:
            return None
        conv = Conversation(
            int(doc["_id"]),
            tuple(int(p) for p in doc["participants"]),
            doc.get("status") == "open",
            int(doc.get("last_seq", 0)),
        )
        if len(self._conversations) > 100_000:
            self._conversations.clear()
        self._conversations[conversation_id] = (now + CONVERSATION_CACHE_TTL_S, conv)
        return conv

    def forget_conversation(self, conversation_id: int) -> None:
        self._conversations.pop(conversation_id, None)

    async def member_conversation(
        self, conversation_id: int, user_id: int, *, require_open: bool, fresh: bool = False
    ) -> Conversation:
        """The conversation if `user_id` takes part (and it is open, if asked); else NotFound, never saying which."""
        conv = await self.conversation(conversation_id, fresh=fresh)
        if conv is None or user_id not in conv.participants or (require_open and not conv.is_open):
            raise errors.NotFound("Conversation not found", code="conversation_not_found")
        return conv

    async def open_conversation_ids(self, user_id: int) -> list[int]:
        docs = self._store.conversations.find({"participants": user_id, "status": "open"}, {"_id": 1})
        return [int(d["_id"]) async for d in docs]

    # -- sending -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="message-writer")

    async def close(self, timeout_s: float = 10.0) -> None:
        """Store what was queued, then stop the writer."""
        if self._writer is None:
            return
        self._closing = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(self._writer, timeout_s)
        except TimeoutError:
            log.error("message writer did not finish within %.0fs", timeout_s)
        self._writer = None
        await self.metadata.close(timeout_s)

    async def send_message(
        self,
        conversation_id: int,
        sender_id: int,
        content: str,
        client_id: str | None = None,
        attachment_id: int | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Store a message, then publish it. Returns (the seed's message object, created?).

        A retry with the same `client_id` returns the stored message with created=False and publishes
        nothing again.
        """
        attachment = None
        if attachment_id is not None:
            attachment = await self._attachment_for(conversation_id, sender_id, attachment_id)
        elif not content.strip():
            raise errors.Invalid("Message is empty", code="empty_message")
        if len(content) > self.max_content_chars:
            raise errors.Invalid(f"Message longer than {self.max_content_chars} characters", code="message_too_long")
        await self.member_conversation(conversation_id, sender_id, require_open=True)
        if self._closing:
            raise errors.Unavailable("Server is shutting down; retry", code="unavailable")
        self.start()
        loop = asyncio.get_running_loop()
        pending = _PendingSend(conversation_id, sender_id, content, client_id, attachment, loop.create_future())
        self._queue.append(pending)
        self._wakeup.set()
        doc, created = await pending.future
        sender = await self._users.summary(sender_id)
        if not created and doc.get("attachment_id") is not None:
            attachment = (await self._attachments_of([doc])).get(doc["attachment_id"])
        message = self.serialize(doc, sender, is_read=False, attachment=attachment)
        if created:
            await self._publish_new_message(conversation_id, sender_id, message, sender)
        return message, created

    async def _publish_new_message(
        self, conversation_id: int, sender_id: int, message: dict[str, Any], sender: dict[str, Any]
    ) -> None:
        for hook in self.on_message_stored:
            hook(conversation_id, sender_id)
        await self._events.to_conversation(conversation_id, {"type": "message", "message": message}, seq=message["id"])
        conv = await self.conversation(conversation_id)
        notification = {
            "type": "new_message",
            "timestamp": now_iso(),
            "message": {
                "id": message["id"],
                "conversation_id": conversation_id,
                "sender": sender,
                "content": message["content"],
                "created_at": message["created_at"],
            },
        }
        for other in conv.others(sender_id) if conv else []:
            await self._events.notify(other, notification)

    async def _write_loop(self) -> None:
        """Start a batch of what is queued whenever a slot is free, while earlier batches are in flight:
        the next batch is stored while the server handles the answers to the previous one, instead of
        the two waiting for each other. A conversation is in one batch at a time, which keeps its ids
        stored in order (see _write_batch)."""
        while True:
            batch = self._take_ready() if len(self._batches) < MAX_BATCHES_IN_FLIGHT else []
            if not batch:
                if self._closing and not self._queue and not self._batches:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            if not self._batches and len(self._last_seq) > 100_000:
                self._last_seq.clear()  # only with no batch in flight: none loses an id it just read
            task = asyncio.get_running_loop().create_task(self._run_batch(batch), name="message-batch")
            self._batches.add(task)

    def _take_ready(self) -> list[_PendingSend]:
        """Up to MAX_BATCH queued sends into conversations with no batch in flight, in arrival order."""
        batch: list[_PendingSend] = []
        rest: list[_PendingSend] = []
        for item in self._queue:
            if len(batch) < MAX_BATCH and item.conversation_id not in self._writing:
                batch.append(item)
            else:
                rest.append(item)
        self._queue = rest
        self._writing.update(item.conversation_id for item in batch)
        return batch

    async def _run_batch(self, batch: list[_PendingSend]) -> None:
        try:
            await self._write_batch(batch)
        except Exception as exc:  # never leave a caller waiting forever
            failure = _as_domain_error(exc)
            if not isinstance(exc, STORE_DOWN_ERRORS):
                log.exception("message batch failed")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(failure)
        finally:
            self._writing.difference_update(item.conversation_id for item in batch)
            self._batches.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._wakeup.set()

    async def _write_batch(self, batch: list[_PendingSend]) -> None:
        now = dt.datetime.now(dt.UTC)
        pending = await self._answer_replays(batch)
        stored: list[Doc] = []
        try:
            pending = await self._store_in_rounds(pending, now, stored)
        finally:
            self._record_metadata(stored, now)
        for item in pending:
            item.future.set_exception(
                errors.Unavailable("Too much contention on this conversation; retry", code="unavailable")
            )

    async def _store_in_rounds(
        self, pending: list[_PendingSend], now: dt.datetime, stored: list[Doc]
    ) -> list[_PendingSend]:
        """Store the sends, answering each; return those still unstored after MAX_ROUNDS.

        Every round stores a prefix of what is left: all of it, or up to a collision (another node
        stored that id first, or the message is a retry stored already), which is dealt with before the
        next round. Collisions between nodes are rare: each node learns the others' ids from the bus.
        """
        for _ in range(MAX_ROUNDS):
            unknown = {i.conversation_id for i in pending if i.conversation_id not in self._last_seq}
            if unknown:
                await asyncio.gather(*(self._read_last_seq(cid) for cid in unknown))
            pending = self._fail_closed(pending)
            if not pending:
                return []
            docs = self._number(pending, now)
            try:
                await self._store.messages.insert_many(docs, ordered=True)
            except pymongo.errors.BulkWriteError as exc:
                failure = exc.details["writeErrors"][0]
                index = int(failure["index"])
                self._answer_stored(docs[:index], pending[:index], stored)
                pending = await self._collision(docs[index], pending[index], failure) + pending[index + 1 :]
                continue
            except BaseException:
                # Some prefix of the batch may be stored: learn the ids again before numbering more.
                for item in pending:
                    self._last_seq.pop(item.conversation_id, None)
                raise
            self._answer_stored(docs, pending, stored)
            return []
        return pending

    def _fail_closed(self, pending: list[_PendingSend]) -> list[_PendingSend]:
        """Answer the sends into conversations found sealed; return the others."""
        rest = []
        for item in pending:
            if self._last_seq[item.conversation_id] == SEALED:
                self.forget_conversation(item.conversation_id)
                item.future.set_exception(errors.Forbidden("Conversation is closed", code="conversation_closed"))
            else:
                rest.append(item)
        return rest

    def _number(self, pending: list[_PendingSend], now: dt.datetime) -> list[Doc]:
        """The message documents, numbered from the newest id known stored in each conversation."""
        next_seq: dict[int, int] = {}
        docs: list[Doc] = []
        for item in pending:
            cid = item.conversation_id
            seq = next_seq.get(cid, self._last_seq[cid]) + 1
            next_seq[cid] = seq
            doc: Doc = {
                "_id": message_key(cid, seq),
                "conversation_id": cid,
                "seq": seq,
                "sender_id": item.sender_id,
                "content": item.content,
                "created_at": now,
            }
            if item.client_id is not None:
                doc["client_id"] = item.client_id
            if item.attachment is not None:
                doc["attachment_id"] = item.attachment["_id"]
            docs.append(doc)
        return docs

    def _answer_stored(self, docs: list[Doc], items: list[_PendingSend], stored: list[Doc]) -> None:
        for doc, item in zip(docs, items, strict=True):
            self.observe_seq(int(doc["conversation_id"]), int(doc["seq"]))
            item.future.set_result((doc, True))
            stored.append(doc)

    async def _collision(self, doc: Doc, item: _PendingSend, failure: Doc) -> list[_PendingSend]:
        """An insert failed: what is left to store of this message ([item] or [])."""
        if failure.get("code") != DUPLICATE_KEY:
            item.future.set_exception(errors.Unavailable("Message could not be stored; retry", code="store_failed"))
            return []
        if item.client_id is not None and failure.get("keyPattern") != {"_id": 1}:
            # A retry stored meanwhile (by another node, or by this one before a restart).
            existing = await self._store.messages.find_one(
                {"conversation_id": item.conversation_id, "sender_id": item.sender_id, "client_id": item.client_id}
            )
            if existing is not None:
                item.future.set_result((existing, False))
                return []
        # Another node stored this id first, or the conversation was sealed: look at what is stored.
        await self._read_last_seq(int(doc["conversation_id"]))
        return [item]

    async def _read_last_seq(self, conversation_id: int) -> None:
        """Learn the newest id stored in a conversation, or that it is sealed (closed)."""
        newest = await self._newest(conversation_id)
        if newest is not None and newest.get("sealed"):
            self._last_seq[conversation_id] = SEALED
        else:
            self._last_seq[conversation_id] = 0 if newest is None else int(newest["seq"])

    def observe_seq(self, conversation_id: int, seq: int) -> None:
        """A message with this id is stored (this node's insert, or another node's seen on the bus)."""
        known = self._last_seq.get(conversation_id, 0)
        if known != SEALED and seq > known:
            self._last_seq[conversation_id] = seq

    def _record_metadata(self, stored: list[Doc], now: dt.datetime) -> None:
        """Queue what the stored messages change in their conversations: newest id, order, read pointers
        (sending implies having read everything before)."""
        by_conversation: dict[int, tuple[int, dict[int, int]]] = {}
        for doc in stored:
            cid, seq, sender = int(doc["conversation_id"]), int(doc["seq"]), int(doc["sender_id"])
            last, readers = by_conversation.setdefault(cid, (0, {}))
            readers[sender] = max(readers.get(sender, 0), seq)
            by_conversation[cid] = (max(last, seq), readers)
        for cid, (last, readers) in by_conversation.items():
            self.metadata.touch(cid, last, now, readers)

    async def seal(self, conversation_id: int) -> None:
        """Store the closing tombstone at the conversation's next id: no message can be stored after it."""
        for _ in range(MAX_ROUNDS):
            newest = await self._newest(conversation_id)
            if newest is not None and newest.get("sealed"):
                break
            seq = 1 if newest is None else int(newest["seq"]) + 1
            try:
                await self._store.messages.insert_one(tombstone(conversation_id, seq, sealed=True))
                break
            except pymongo.errors.DuplicateKeyError:
                continue  # a message took that id first: it was sent before the close
        else:
            raise errors.Unavailable("Could not close the conversation; retry", code="unavailable")
        self._last_seq[conversation_id] = SEALED
        self.forget_conversation(conversation_id)

    async def _newest(self, conversation_id: int, known: int | None = None) -> Doc | None:
        """The newest document stored in a conversation (a message or a tombstone), or None.

        Ids are dense, so this needs no range scan (which the embedded store answers by reading the
        whole collection): from the newest id known stored (the conversation's `last_seq`, written behind
        the messages, or this node's own; `known` when the caller has just read the conversation), look
        up the ids just after it by `_id`, in growing windows.
        """
        if conversation_id >= MAX_CONVERSATION_ID:
            return None  # outside the key space: no message can exist there
        known = await self._known_stored(conversation_id, known)
        newest: Doc | None = {"seq": known} if known > 0 else None
        window = NEWEST_WINDOW
        while known < MAX_SEQ:
            found = await self._by_seq(conversation_id, known + 1, known + window, {"seq": 1, "sealed": 1})
            if not found:
                return newest
            newest = max(found, key=lambda d: int(d["seq"]))
            if len(found) < window:
                return newest
            known, window = int(newest["seq"]), window * 2
        return newest

    async def _known_stored(self, conversation_id: int, last_seq: int | None = None) -> int:
        """An id known stored in the conversation (0 if none): the higher of its `last_seq` (read here
        unless the caller just read it) and this node's own knowledge."""
        if last_seq is None:
            conv = await self._store.conversations.find_one({"_id": conversation_id}, {"last_seq": 1})
            last_seq = int((conv or {}).get("last_seq", 0))
        return max(last_seq, self._last_seq.get(conversation_id, 0))

    async def _by_seq(
        self, conversation_id: int, first: int, last: int, projection: Doc | None = None, **filters: Any
    ) -> list[Doc]:
        """The documents with ids first..last (those stored), by `_id` point lookups, in no set order."""
        first, last = max(first, 1), min(last, MAX_SEQ)
        if first > last:
            return []
        keys = [message_key(conversation_id, seq) for seq in range(first, last + 1)]
        return await self._store.messages.find({"_id": {"$in": keys}, **filters}, projection).to_list(None)

    async def _first_stored_from(self, conversation_id: int, first: int) -> Doc | None:
        """The stored document with the lowest id >= first, looked for only up to the newest id known
        stored (usually below `first`: then nothing is read but the conversation's `last_seq`)."""
        known = await self._known_stored(conversation_id)
        window = NEWEST_WINDOW
        while first <= known:
            found = await self._by_seq(conversation_id, first, min(known, first + window - 1))
            if found:
                return min(found, key=lambda d: int(d["seq"]))
            first, window = first + window, window * 2
        return None

    async def _stored_before(self, conversation_id: int, top: int, count: int) -> list[Doc]:
        """Up to `count` messages (tombstones left out) with ids <= top, newest first."""
        out: list[Doc] = []
        while len(out) < count and top >= 1:
            first = max(1, top - (count - len(out)) + 1)
            found = await self._by_seq(conversation_id, first, top, hole={"$ne": True})
            out.extend(sorted(found, key=lambda d: -int(d["seq"])))
            top = first - 1
        return out[:count]

    async def _answer_replays(self, batch: list[_PendingSend]) -> list[_PendingSend]:
        """Answer retries of already stored client_ids, and duplicates inside the batch; return the rest."""
        keyed = [i for i in batch if i.client_id is not None]
        if not keyed:
            return batch
        query = {
            "$or": [
                {"conversation_id": i.conversation_id, "sender_id": i.sender_id, "client_id": i.client_id}
                for i in keyed
            ]
        }
        found = {
            (d["conversation_id"], d["sender_id"], d["client_id"]): d async for d in self._store.messages.find(query)
        }
        rest: list[_PendingSend] = []
        first_of: dict[tuple[int, int, str], _PendingSend] = {}
        for item in batch:
            if item.client_id is None:
                rest.append(item)
                continue
            key = (item.conversation_id, item.sender_id, item.client_id)
            if key in found:
                item.future.set_result((found[key], False))
            elif key in first_of:
                _chain_replay(first_of[key], item)
            else:
                first_of[key] = item
                rest.append(item)
        return rest

    async def _attachment_for(self, conversation_id: int, sender_id: int, attachment_id: int) -> Doc:
        doc = await self._store.attachments.find_one(
            {"_id": attachment_id, "conversation_id": conversation_id, "uploader_id": sender_id}
        )
        if doc is None:
            raise errors.NotFound("Attachment not found", code="attachment_not_found")
        return doc

    # -- reading -----------------------------------------------------------------------------------

    async def mark_read(self, conversation_id: int, user_id: int, message_id: int) -> dict[str, Any] | None:
        """Mark `message_id` and everything before it read by `user_id`; publish a receipt if it moved.

        Returns the receipt frame, or None when the pointer was already there.
        """
        await self.member_conversation(conversation_id, user_id, require_open=False)
        if message_id > max(self._last_seq.get(conversation_id, 0), 0):
            newest = await self._newest(conversation_id)
            last = 0 if newest is None else int(newest["seq"]) - (1 if newest.get("sealed") else 0)
            if message_id > last:
                raise errors.NotFound("No such message in this conversation", code="message_not_found")
        result = await self._store.conversations.update_one(
            {
                "_id": conversation_id,
                "$or": [
                    {f"read_seq.{user_id}": {"$lt": message_id}},
                    {f"read_seq.{user_id}": {"$exists": False}},
                ],
            },
            {"$set": {f"read_seq.{user_id}": message_id}},
        )
        if result.matched_count == 0:
            return None
        user = await self._users.summary(user_id)
        frame = {
            "type": "read_receipt",
            "message_id": message_id,
            "user_id": user_id,
            "username": user["username"],
            "timestamp": now_iso(),
        }
        await self._events.to_conversation(conversation_id, frame)
        return frame

    async def history(
        self,
        conversation_id: int,
        viewer_id: int,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of messages in storage order, and whether more lie beyond it in the paging direction."""
        await self.member_conversation(conversation_id, viewer_id, require_open=False)
        await self.metadata.settled([conversation_id])
        conv_doc = await self._store.conversations.find_one({"_id": conversation_id}, {"read_seq": 1, "last_seq": 1})
        read_seq = {int(k): int(v) for k, v in ((conv_doc or {}).get("read_seq") or {}).items()}
        if after is not None:
            docs, has_more = await self.messages_after(conversation_id, after, limit)
        else:
            newest = await self._newest(conversation_id, int((conv_doc or {}).get("last_seq", 0)))
            top = 0 if newest is None else int(newest["seq"])
            if before is not None:
                top = min(top, before - 1)
            # Tombstones are left out, so a page is never all holes (with no id to page on).
            found = await self._stored_before(conversation_id, top, limit + 1)
            has_more = len(found) > limit
            docs = list(reversed(found[:limit]))
        return await self.serialize_many(docs, read_seq), has_more

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
            found = {int(d["seq"]): d for d in await self._by_seq(conversation_id, after + 1, after + limit + 1)}
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
            age = (dt.datetime.now(dt.UTC) - _aware(gap_at.get("created_at"))).total_seconds()
            if age >= self.hole_timeout_s or time.monotonic() >= deadline:
                await self.fill_holes(conversation_id, expected, int(gap_at["seq"]) - 1)
                continue
            await asyncio.sleep(0.05)

    async def last_stored_seq(self, conversation_id: int, known: int | None = None) -> int:
        """The highest message id stored in the conversation (tombstones included), 0 if none; `known`:
        an id known stored, such as the `last_seq` of a conversation document just read."""
        doc = await self._newest(conversation_id, known)
        return 0 if doc is None else int(doc["seq"])

    async def backlog(
        self, conversation_id: int, after: int, limit: int
    ) -> tuple[list[tuple[int, bytes | None]], bool]:
        """(id, socket frame) pairs after `after`, as live delivery would send them (None for holes)."""
        docs, has_more = await self.contiguous_after(conversation_id, after, limit)
        stored = [d for d in docs if not d.get("hole")]
        conv_doc = await self._store.conversations.find_one({"_id": conversation_id}, {"read_seq": 1})
        read_seq = {int(k): int(v) for k, v in ((conv_doc or {}).get("read_seq") or {}).items()}
        messages = iter(await self.serialize_many(stored, read_seq))
        out: list[tuple[int, bytes | None]] = []
        for doc in docs:
            frame = None if doc.get("hole") else orjson.dumps({"type": "message", "message": next(messages)})
            out.append((int(doc["seq"]), frame))
        return out, has_more

    async def fill_holes(self, conversation_id: int, first: int, last: int) -> None:
        for seq in range(first, last + 1):
            try:
                await self._store.messages.insert_one(tombstone(conversation_id, seq))
                log.warning("conversation %d: message id %d never stored; skipped as a hole", conversation_id, seq)
            except pymongo.errors.DuplicateKeyError:
                pass

    async def serialize_many(self, docs: list[Doc], read_seq: dict[int, int]) -> list[dict[str, Any]]:
        senders = {int(d["sender_id"]) for d in docs}
        summaries = {uid: await self._users.summary(uid) for uid in senders}
        attachments = await self._attachments_of(docs)
        out = []
        for d in docs:
            sender = int(d["sender_id"])
            others_read = [seq for uid, seq in read_seq.items() if uid != sender]
            is_read = bool(others_read) and max(others_read) >= int(d["seq"])
            out.append(
                self.serialize(
                    d, summaries[sender], is_read=is_read, attachment=attachments.get(d.get("attachment_id"))
                )
            )
        return out

    async def _attachments_of(self, docs: list[Doc]) -> dict[Any, Doc]:
        ids = [d["attachment_id"] for d in docs if d.get("attachment_id") is not None]
        if not ids:
            return {}
        return {a["_id"]: a async for a in self._store.attachments.find({"_id": {"$in": ids}})}

    def serialize(
        self, doc: Doc, sender: dict[str, Any], *, is_read: bool, attachment: Doc | None = None
    ) -> dict[str, Any]:
        """The seed's message object, plus `conversation_id` and (when given) `client_id`."""
        message: dict[str, Any] = {
            "id": int(doc["seq"]),
            "sender_id": int(doc["sender_id"]),
            "sender_username": sender["username"],
            "sender_profile_picture": sender["profile_picture"],
            "content": doc["content"],
            "created_at": iso(_aware(doc["created_at"])),
            "is_read": is_read,
            "attachment": self.attachment_object(attachment) if attachment else None,
            "conversation_id": int(doc["conversation_id"]),
        }
        if doc.get("client_id") is not None:
            message["client_id"] = doc["client_id"]
        return message

    # -- conversations over REST -------------------------------------------------------------------

    async def list_conversations(self, user_id: int, limit: int = 50) -> list[dict[str, Any]]:
        await self.metadata.settled()
        docs = await self._store.conversations.find(
            {"participants": user_id, "status": "open"}, sort=[("updated_at", -1)], limit=limit
        ).to_list(None)
        return await self._describe(docs, user_id)

    async def get_conversation(self, conversation_id: int, user_id: int) -> dict[str, Any]:
        await self.metadata.settled([conversation_id])
        doc = await self._store.conversations.find_one({"_id": conversation_id, "participants": user_id})
        if doc is None:
            raise errors.NotFound("Conversation not found", code="conversation_not_found")
        return (await self._describe([doc], user_id))[0]

    async def _describe(self, docs: list[Doc], user_id: int) -> list[dict[str, Any]]:
        keys = [message_key(int(d["_id"]), int(d.get("last_seq", 0))) for d in docs if d.get("last_seq")]
        last_docs = {}
        if keys:
            last_docs = {
                int(m["conversation_id"]): m
                async for m in self._store.messages.find({"_id": {"$in": keys}, "hole": {"$ne": True}})
            }
        # The last id may be a hole or still in flight: then the last message is the newest one stored.
        for d in docs:
            cid = int(d["_id"])
            if d.get("last_seq") and cid not in last_docs:
                found = await self._stored_before(cid, int(d["last_seq"]), 1)
                if found:
                    last_docs[cid] = found[0]
        out = []
        for d in docs:
            cid = int(d["_id"])
            read_seq = {int(k): int(v) for k, v in (d.get("read_seq") or {}).items()}
            participants = [await self._users.summary(int(p)) for p in d["participants"]]
            last = last_docs.get(cid)
            last_message = (await self.serialize_many([last], read_seq))[0] if last else None
            out.append(
                {
                    "id": cid,
                    "participants": participants,
                    "last_message": last_message,
                    "unread_count": max(0, int(d.get("last_seq", 0)) - read_seq.get(user_id, 0)),
                    "updated_at": iso(_aware(d.get("updated_at") or d.get("created_at"))),
                    "status": d.get("status", "open"),
                    "match_id": d.get("match_id"),
                }
            )
        return out

    # -- attachments -------------------------------------------------------------------------------

    async def add_attachment(
        self, conversation_id: int, uploader_id: int, data: bytes, declared_type: str | None
    ) -> dict[str, Any]:
        await self.member_conversation(conversation_id, uploader_id, require_open=True)
        content_type = self._media.check(data, ATTACHMENT_TYPES, declared_type)
        path = await self._media.save("attachments", data, content_type)
        doc: Doc = {
            "_id": await self._store.next_id("attachments"),
            "conversation_id": conversation_id,
            "uploader_id": uploader_id,
            "path": path,
            "content_type": content_type,
            "size": len(data),
            "created_at": dt.datetime.now(dt.UTC),
        }
        await self._store.attachments.insert_one(doc)
        return self.attachment_object(doc)

    def attachment_object(self, doc: Doc) -> dict[str, Any]:
        return {
            "id": int(doc["_id"]),
            "url": self._media.url(doc["path"]),
            "content_type": doc["content_type"],
            "size": int(doc["size"]),
        }


def _chain_replay(first: _PendingSend, duplicate: _PendingSend) -> None:
    """A second send of the same client_id in one batch gets the first one's message, as a replay."""

    def copy(done: asyncio.Future[tuple[Doc, bool]]) -> None:
        if duplicate.future.done():
            return
        if done.exception() is not None:
            duplicate.future.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            duplicate.future.set_result((done.result()[0], False))

    first.future.add_done_callback(copy)


def _aware(value: Any) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        return dt.datetime.now(dt.UTC)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _as_domain_error(exc: BaseException) -> errors.DomainError:
    if isinstance(exc, errors.DomainError):
        return exc
    if isinstance(exc, STORE_DOWN_ERRORS):
        return errors.Unavailable("Storage temporarily unavailable", code="unavailable")
    return errors.Unavailable("Message could not be stored; retry", code="store_failed")
