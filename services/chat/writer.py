"""The message writer: numbers messages, stores them in batches, and seals closed conversations.

Message ids are a dense sequence per conversation (1, 2, 3...), and the insert of a message is what
reserves its id: a message's `_id` packs (conversation id, id) (services/chat/ids.py), so two nodes that
pick the same next id collide on `_id`, one insert wins and the other node reads the newest stored id
and numbers its messages again (see `_write_batch`). A writer numbers its messages from an id it knows
is stored (its own last insert, one seen on the bus, or one read back), and inserts them in order, so
id n is never stored before id n - 1: a reader that sees id 7 has id 6 as well, and `?after=<id>`
resumes without a gap or a repeat with several nodes writing one conversation.

Closing a conversation stores a sealing tombstone at its next id (`seal`): a writer that still
believes the conversation open collides with it, reads it back and fails the send, so no message is
ever stored after the close. Tombstones (`hole: true`) are left out of everything a client sees.

An edit or an unsend is stored the same way, as a lifecycle event at the conversation's next id
(`write_event`, services/chat/ids.py): it goes through the queue with the messages, so it is numbered,
ordered and retried on collisions exactly like one, and can never be stored after the seal.

Writes are grouped: concurrent sends wait in one queue and a single writer task stores each batch with
one ordered `insert_many`. Nobody is answered before their batch is acknowledged by MongoDB. With no
concurrency a batch is one message and there is no added delay. What the conversation document says
about its messages (newest id, order in the list, senders' read pointers) is written behind, merged
across batches (services/chat/metadata.py).

A send carrying a `client_id` that is stored already (a retry) is answered with the stored message,
once: the unique index on (conversation, sender, client_id) refuses its insert, and the writer reads the
message it collided with. After such a retry the writer looks up the client_ids of every batch before
inserting it, for REPLAY_LOOKUP_S, since retries come in bursts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pymongo.errors

from services.chat.ids import SEALED, StoredIds, lifecycle_event, message_key, tombstone
from services.chat.metadata import ConversationMetadata
from services.core import errors
from services.storage.store import STORE_DOWN_ERRORS, Doc, Store

log = logging.getLogger("chat.chat")

MAX_BATCH = 256
MAX_BATCHES_IN_FLIGHT = 2
# Insert rounds per batch before the senders left are told to retry (collisions with other nodes).
MAX_ROUNDS = 20
DUPLICATE_KEY = 11000
# Seconds during which every batch's client_ids are looked up before its insert, after one turned out
# stored already. Otherwise a retry is found by its insert alone: the unique index on (conversation,
# sender, client_id) refuses it, and it is answered with the stored message. Looking every batch up
# cost a query per sender per batch (a tenth of a restarted node's CPU under a steady load), for
# retries that are rare but come in bursts: the clients of a restarted node resend what was never
# acknowledged, all at once, and each retry found by its insert costs the batch a round of its own.
REPLAY_LOOKUP_S = 30.0


@dataclass
class _PendingSend:
    conversation_id: int
    sender_id: int
    content: str
    client_id: str | None
    attachment: Doc | None
    future: asyncio.Future[tuple[Doc, bool]] = field(repr=False)
    # A lifecycle event instead of a message: the fields that mark its document (ids.lifecycle_event).
    event: Doc | None = None


class MessageWriter:
    """Stores the messages of every conversation on this node, in order, through one queue."""

    def __init__(
        self,
        store: Store,
        ids: StoredIds,
        metadata: ConversationMetadata,
        forget_conversation: Callable[[int], None],
    ) -> None:
        self._store = store
        self._ids = ids
        self._metadata = metadata
        # Drops a conversation from the membership cache once it is found sealed, so its next read
        # sees it closed.
        self._forget_conversation = forget_conversation
        self._queue: list[_PendingSend] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._writing: set[int] = set()  # conversations with a batch in flight
        self._closing = False
        self._look_up_replays_until = 0.0  # time.monotonic(): see REPLAY_LOOKUP_S
        self.replays_found = 0  # retries of a client_id found stored by an insert (tests read it)

    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="message-writer")

    async def close(self, timeout_s: float = 10.0) -> None:
        """Store what was queued, then stop the writer, then write the metadata it left behind."""
        if self._writer is None:
            return
        self._closing = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(self._writer, timeout_s)
        except TimeoutError:
            log.error("message writer did not finish within %.0fs", timeout_s)
        self._writer = None
        await self._metadata.close(timeout_s)

    async def write(
        self, conversation_id: int, sender_id: int, content: str, client_id: str | None, attachment: Doc | None
    ) -> tuple[Doc, bool]:
        """Store a message with the next batch. Returns (its stored document, created?): a retry of a
        `client_id` stored already is answered with that message and created=False."""
        loop = asyncio.get_running_loop()
        return await self._enqueue(
            _PendingSend(conversation_id, sender_id, content, client_id, attachment, loop.create_future())
        )

    async def write_event(self, conversation_id: int, author_id: int, kind: str, message_seq: int) -> Doc:
        """Store the lifecycle event `kind` (ids.EDITED, ids.DELETED) of message `message_seq` at the
        conversation's next id, in order with the messages; returns its document. Raises Forbidden
        `conversation_closed` when the conversation was sealed first."""
        loop = asyncio.get_running_loop()
        marks = lifecycle_event(kind, message_seq)
        doc, _ = await self._enqueue(
            _PendingSend(conversation_id, author_id, "", None, None, loop.create_future(), event=marks)
        )
        return doc

    async def _enqueue(self, pending: _PendingSend) -> tuple[Doc, bool]:
        if self._closing:
            raise errors.Unavailable("Server is shutting down; retry", code="unavailable")
        self.start()
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

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
            if not self._batches and len(self._ids.last_seq) > 100_000:
                self._ids.last_seq.clear()  # only with no batch in flight: none loses an id it just read
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
        pending = await self._answer_replays(batch, look_up=time.monotonic() < self._look_up_replays_until)
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
            unknown = {i.conversation_id for i in pending if i.conversation_id not in self._ids.last_seq}
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
                replays_found = self.replays_found
                pending = await self._collision(docs[index], pending[index], failure) + pending[index + 1 :]
                if self.replays_found > replays_found:
                    # A retry: the rest of a client's resent messages are likely in this batch too.
                    pending = await self._answer_replays(pending, look_up=True)
                continue
            except BaseException:
                # Some prefix of the batch may be stored: learn the ids again before numbering more.
                for item in pending:
                    self._ids.last_seq.pop(item.conversation_id, None)
                raise
            self._answer_stored(docs, pending, stored)
            return []
        return pending

    def _fail_closed(self, pending: list[_PendingSend]) -> list[_PendingSend]:
        """Answer the sends into conversations found sealed; return the others."""
        rest = []
        for item in pending:
            if self._ids.last_seq[item.conversation_id] == SEALED:
                self._forget_conversation(item.conversation_id)
                item.future.set_exception(errors.Forbidden("Conversation is closed", code="conversation_closed"))
            else:
                rest.append(item)
        return rest

    def _number(self, pending: list[_PendingSend], now: dt.datetime) -> list[Doc]:
        """The documents of messages and lifecycle events, numbered from the newest id known stored in each
        conversation."""
        next_seq: dict[int, int] = {}
        docs: list[Doc] = []
        for item in pending:
            cid = item.conversation_id
            seq = next_seq.get(cid, self._ids.last_seq[cid]) + 1
            next_seq[cid] = seq
            if item.event is not None:
                # `created_at` too: a reader waiting on an id missing before this one judges its age by it.
                key = message_key(cid, seq)
                docs.append(
                    {"_id": key, "conversation_id": cid, "seq": seq, "sender_id": item.sender_id, "created_at": now}
                    | item.event
                )
                continue
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
            self._ids.observe_seq(int(doc["conversation_id"]), int(doc["seq"]))
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
                self.replays_found += 1
                self._look_up_replays_until = time.monotonic() + REPLAY_LOOKUP_S
                return []
        # Another node stored this id first, or the conversation was sealed: look at what is stored.
        await self._read_last_seq(int(doc["conversation_id"]))
        return [item]

    async def _read_last_seq(self, conversation_id: int) -> None:
        """Learn the newest id stored in a conversation, or that it is sealed (closed)."""
        newest = await self._ids.newest(conversation_id)
        if newest is not None and newest.get("sealed"):
            self._ids.last_seq[conversation_id] = SEALED
        else:
            self._ids.last_seq[conversation_id] = 0 if newest is None else int(newest["seq"])

    def _record_metadata(self, stored: list[Doc], now: dt.datetime) -> None:
        """Queue what the stored messages change in their conversations: newest id, order, read pointers
        (sending implies having read everything before). Lifecycle events change none of these: an edit
        alone neither moves a conversation up the list nor adds to its unread count (the conversation's `last_seq` stays
        on its newest message, as it does past the seal)."""
        by_conversation: dict[int, tuple[int, dict[int, int]]] = {}
        for doc in stored:
            if doc.get("hole"):
                continue
            cid, seq, sender = int(doc["conversation_id"]), int(doc["seq"]), int(doc["sender_id"])
            last, readers = by_conversation.setdefault(cid, (0, {}))
            readers[sender] = max(readers.get(sender, 0), seq)
            by_conversation[cid] = (max(last, seq), readers)
        for cid, (last, readers) in by_conversation.items():
            self._metadata.touch(cid, last, now, readers)

    async def seal(self, conversation_id: int) -> None:
        """Store the closing tombstone at the conversation's next id: no message can be stored after it."""
        for _ in range(MAX_ROUNDS):
            newest = await self._ids.newest(conversation_id)
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
        self._ids.last_seq[conversation_id] = SEALED
        self._forget_conversation(conversation_id)

    async def _answer_replays(self, batch: list[_PendingSend], *, look_up: bool) -> list[_PendingSend]:
        """Answer duplicates inside the batch, and with `look_up` retries of client_ids stored already;
        return the rest."""
        keyed = [i for i in batch if i.client_id is not None]
        if not keyed:
            return batch
        found: dict[tuple[int, int, str], Doc] = {}
        if look_up:
            by_author: dict[tuple[int, int], set[str]] = {}
            for i in keyed:
                by_author.setdefault((i.conversation_id, i.sender_id), set()).add(str(i.client_id))
            pages = await asyncio.gather(*(self._stored_client_ids(*author, ids) for author, ids in by_author.items()))
            found = {(d["conversation_id"], d["sender_id"], d["client_id"]): d for page in pages for d in page}
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

    async def _stored_client_ids(self, conversation_id: int, sender_id: int, client_ids: set[str]) -> list[Doc]:
        """The messages of one sender in one conversation stored with these client_ids. One query per
        (conversation, sender), never an `$or` across them: the embedded store scans the whole collection
        for any `$or` (seconds once it holds a few hundred thousand messages), while this shape is one
        index range on both stores (`client_id_unique`; on the embedded store `client_id_lookup`)."""
        query = {"conversation_id": conversation_id, "sender_id": sender_id, "client_id": {"$in": sorted(client_ids)}}
        return await self._store.messages.find(query).to_list(None)


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


def _as_domain_error(exc: BaseException) -> errors.DomainError:
    if isinstance(exc, errors.DomainError):
        return exc
    if isinstance(exc, STORE_DOWN_ERRORS):
        return errors.Unavailable("Storage temporarily unavailable", code="unavailable")
    return errors.Unavailable("Message could not be stored; retry", code="store_failed")
