"""Conversations and messages: membership, sending, history, read pointers, attachments.

Message ids are a dense sequence per conversation (1, 2, 3...), reserved by a compare-and-set of the
conversation's `last_seq` (see `_allocate_ids`). Dense ids let a reader tell "not stored yet" from
"never will be": a reader that sees id 7 but not 6 knows 6 is in flight on some node, waits for it, and
only after HOLE_TIMEOUT writes a tombstone in its place (a writer that died between allocating and
inserting). The tombstone takes the message's `_id`, so a late insert of the real message fails and is
never acknowledged: a message is either delivered in order to everyone or reported as failed to its
sender. That is what makes `?after=<id>` resume lossless and duplicate-free with several nodes writing
one conversation.

A message's `_id` packs (conversation id, id) into one integer, so a page of history is a range scan on
`_id` alone, the cheapest query on any MongoDB.

Writes are grouped: concurrent sends wait in one queue and a single writer task stores them with one
compare-and-set per conversation and one `insert_many` per batch. Nobody is answered before their batch is
acknowledged by MongoDB. With no concurrency a batch is one message and there is no added delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
import pymongo.errors

from services import errors
from services.events import Publisher, now_iso
from services.media import ATTACHMENT_TYPES, MediaStore
from services.store import STORE_DOWN_ERRORS, Doc, Store
from services.users import UserService, iso

log = logging.getLogger("chat.chat")

SEQ_BITS = 32
MAX_BATCH = 256
CONVERSATION_CACHE_TTL_S = 10.0


def message_key(conversation_id: int, seq: int) -> int:
    return (conversation_id << SEQ_BITS) | seq


@dataclass
class Conversation:
    id: int
    participants: tuple[int, ...]
    is_open: bool
    last_seq: int = 0  # only current when read with fresh=True

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
    ) -> None:
        self._store = store
        self._users = users
        self._events = events
        self._media = media
        self.max_content_chars = max_content_chars
        self.hole_timeout_s = hole_timeout_s
        self._conversations: dict[int, tuple[float, Conversation]] = {}
        # The last message id this node allocated per conversation: the expected value of the next
        # compare-and-set (see _allocate_ids).
        self._last_seq: dict[int, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._queue: list[_PendingSend] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
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
            if self._background:
                await asyncio.wait_for(asyncio.gather(*self._background, return_exceptions=True), timeout_s)
        except TimeoutError:
            log.error("message writer did not finish within %.0fs", timeout_s)
        self._writer = None

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
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                await self._write_batch(batch)
            except Exception as exc:  # never leave a caller waiting forever
                failure = _as_domain_error(exc)
                if not isinstance(exc, STORE_DOWN_ERRORS):
                    log.exception("message batch failed")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(failure)

    async def _write_batch(self, batch: list[_PendingSend]) -> None:
        now = dt.datetime.now(dt.UTC)
        to_store = await self._answer_replays(batch)
        by_conversation: dict[int, list[_PendingSend]] = defaultdict(list)
        for item in to_store:
            by_conversation[item.conversation_id].append(item)

        async def allocate(cid: int, items: list[_PendingSend]) -> tuple[int, list[_PendingSend], int | None]:
            senders = sorted({i.sender_id for i in items})
            return cid, items, await self._allocate_ids(cid, senders, len(items), now)

        allocations = await asyncio.gather(*(allocate(c, i) for c, i in by_conversation.items()))
        docs: list[Doc] = []
        owners: list[_PendingSend] = []
        read_updates: dict[tuple[int, int], int] = {}
        for cid, items, last_seq in allocations:
            if last_seq is None:
                self.forget_conversation(cid)
                for item in items:
                    item.future.set_exception(errors.Forbidden("Conversation is closed", code="conversation_closed"))
                continue
            first = last_seq - len(items) + 1
            for offset, item in enumerate(items):
                seq = first + offset
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
                owners.append(item)
                # Sending implies having read everything before: the sender's read pointer moves along.
                key = (cid, item.sender_id)
                read_updates[key] = max(read_updates.get(key, 0), seq)
        if not docs:
            return
        failed: dict[int, Exception] = {}
        try:
            await self._store.messages.insert_many(docs, ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            for err in exc.details.get("writeErrors", []):
                failed[int(err["index"])] = exc
        for index, (doc, item) in enumerate(zip(docs, owners, strict=True)):
            if index in failed:
                await self._fail_insert(doc, item)
            else:
                item.future.set_result((doc, True))
        # Senders are answered already; the pointers ($max, so order does not matter) are written beside
        # the next batch instead of before it.
        task = asyncio.get_running_loop().create_task(self._advance_read_pointers(read_updates))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _allocate_ids(self, cid: int, senders: list[int], count: int, now: dt.datetime) -> int | None:
        """Reserve `count` message ids of an open conversation; the last of them, or None if it is closed
        (or the senders are not its participants).

        A compare-and-set on `last_seq` from the value this node last wrote: one `update_one` by `_id`
        when no other node wrote in between, a re-read and a retry when one did. (`find_one_and_update`
        would do it in one command, but the embedded store answers it with a collection scan, which grew
        to 100 ms per call at 5,000 conversations; an `update_one` by `_id` stays at a millisecond.)
        """
        for _ in range(20):
            known = self._last_seq.get(cid)
            if known is None:
                doc = await self._store.conversations.find_one({"_id": cid}, {"last_seq": 1})
                if doc is None:
                    return None
                known = int(doc.get("last_seq", 0))
            result = await self._store.conversations.update_one(
                {"_id": cid, "last_seq": known, "status": "open", "participants": {"$all": senders}},
                {"$set": {"last_seq": known + count, "updated_at": now}},
            )
            if result.matched_count == 1:
                if len(self._last_seq) > 100_000:
                    self._last_seq.clear()
                self._last_seq[cid] = known + count
                return known + count
            # Another node allocated meanwhile, or the conversation closed: look again.
            self._last_seq.pop(cid, None)
            doc = await self._store.conversations.find_one(
                {"_id": cid}, {"last_seq": 1, "status": 1, "participants": 1}
            )
            if doc is None or doc.get("status") != "open" or not set(senders) <= set(doc.get("participants", [])):
                return None
            self._last_seq[cid] = int(doc.get("last_seq", 0))
            await asyncio.sleep(0)
        raise errors.Unavailable("Too much contention on this conversation; retry", code="unavailable")

    async def _fail_insert(self, doc: Doc, item: _PendingSend) -> None:
        """An insert of an allocated id failed: fill the id with a tombstone so readers need not wait,
        then answer the sender (with the stored original, when it was a concurrent client_id retry)."""
        with contextlib.suppress(pymongo.errors.DuplicateKeyError):
            await self._store.messages.insert_one(
                {"_id": doc["_id"], "conversation_id": doc["conversation_id"], "seq": doc["seq"], "hole": True}
            )
        if item.client_id is not None:
            existing = await self._store.messages.find_one(
                {"conversation_id": item.conversation_id, "sender_id": item.sender_id, "client_id": item.client_id}
            )
            if existing is not None:
                item.future.set_result((existing, False))
                return
        item.future.set_exception(errors.Unavailable("Message could not be stored; retry", code="store_failed"))

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

    async def _advance_read_pointers(self, pointers: dict[tuple[int, int], int]) -> None:
        if not pointers:
            return
        ops = [
            pymongo.UpdateOne({"_id": cid}, {"$max": {f"read_seq.{uid}": seq}}) for (cid, uid), seq in pointers.items()
        ]
        try:
            await self._store.conversations.bulk_write(ops, ordered=False)
        except pymongo.errors.PyMongoError:
            log.warning("could not advance read pointers after a send", exc_info=True)

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
        result = await self._store.conversations.update_one(
            {
                "_id": conversation_id,
                "last_seq": {"$gte": message_id},
                "$or": [
                    {f"read_seq.{user_id}": {"$lt": message_id}},
                    {f"read_seq.{user_id}": {"$exists": False}},
                ],
            },
            {"$set": {f"read_seq.{user_id}": message_id}},
        )
        if result.matched_count == 0:
            doc = await self._store.conversations.find_one({"_id": conversation_id}, {"last_seq": 1})
            if doc is None or message_id > int(doc.get("last_seq", 0)):
                raise errors.NotFound("No such message in this conversation", code="message_not_found")
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
        conv_doc = await self._store.conversations.find_one({"_id": conversation_id}, {"read_seq": 1, "last_seq": 1})
        read_seq = {int(k): int(v) for k, v in ((conv_doc or {}).get("read_seq") or {}).items()}
        if after is not None:
            docs, has_more = await self.messages_after(conversation_id, after, limit)
        else:
            # Without `before`, the end of this conversation's key range is the start of the next one's
            # (seq 1 << SEQ_BITS would OR into the conversation bits instead).
            upper = message_key(conversation_id, before) if before is not None else message_key(conversation_id + 1, 0)
            # Tombstones are filtered in the query, so a page is never all holes (with no id to page on).
            cursor = self._store.messages.find(
                {"_id": {"$gt": message_key(conversation_id, 0), "$lt": upper}, "hole": {"$ne": True}},
                sort=[("_id", -1)],
                limit=limit + 1,
            )
            found = await cursor.to_list(None)
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
            cursor = self._store.messages.find(
                {"_id": {"$gt": message_key(conversation_id, after), "$lt": message_key(conversation_id + 1, 0)}},
                sort=[("_id", 1)],
                limit=limit + 1,
            )
            found = await cursor.to_list(None)
            contiguous: list[Doc] = []
            expected = after + 1
            gap_at: Doc | None = None
            for doc in found:
                if int(doc["seq"]) != expected:
                    gap_at = doc
                    break
                contiguous.append(doc)
                expected += 1
            if gap_at is None:
                return contiguous[:limit], len(contiguous) > limit
            if contiguous:
                return contiguous, True
            # The very next id is missing while a later one exists: in flight, or a dead writer's hole.
            age = (dt.datetime.now(dt.UTC) - _aware(gap_at.get("created_at"))).total_seconds()
            if age >= self.hole_timeout_s or time.monotonic() >= deadline:
                await self.fill_holes(conversation_id, expected, int(gap_at["seq"]) - 1)
                continue
            await asyncio.sleep(0.05)

    async def last_stored_seq(self, conversation_id: int) -> int:
        """The highest message id stored in the conversation (tombstones included), 0 if none."""
        doc = await self._store.messages.find_one(
            {"_id": {"$gt": message_key(conversation_id, 0), "$lt": message_key(conversation_id + 1, 0)}},
            {"seq": 1},
            sort=[("_id", -1)],
        )
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
                await self._store.messages.insert_one(
                    {
                        "_id": message_key(conversation_id, seq),
                        "conversation_id": conversation_id,
                        "seq": seq,
                        "hole": True,
                    }
                )
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
        docs = await self._store.conversations.find(
            {"participants": user_id, "status": "open"}, sort=[("updated_at", -1)], limit=limit
        ).to_list(None)
        return await self._describe(docs, user_id)

    async def get_conversation(self, conversation_id: int, user_id: int) -> dict[str, Any]:
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
                found = await self._store.messages.find_one(
                    {
                        "_id": {"$gt": message_key(cid, 0), "$lt": message_key(cid + 1, 0)},
                        "hole": {"$ne": True},
                    },
                    sort=[("_id", -1)],
                )
                if found is not None:
                    last_docs[cid] = found
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
