"""Message ids: how a message's `_id` is made, what this node knows is stored, and lookups by id.

Message ids are a dense sequence per conversation (1, 2, 3...), and a message's `_id` packs
(conversation id, id) (`message_key`), so the ids a page holds say which keys to look up. Every read of
messages is a set of `_id` point lookups, and the newest id is found just past the conversation's
`last_seq` (`StoredIds.newest`). The embedded store answers an `_id` range query by reading the whole
collection, so none is sent.

A tombstone (`hole: true`) takes an id without being a message: the seal of a closed conversation
(services/chat/writer.py), an id that was never stored (services/chat/history.py), or a lifecycle event:
an edit or an unsend of an earlier message (`event`: EDITED or DELETED, `message_seq`: the message it
changed). Events take their place in the conversation's order like messages, so sockets and `?after=`
readers receive them in order, none missing and none twice; everything that lists messages leaves them
out with the other tombstones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, NamedTuple

from services.storage.batch import Coalescer
from services.storage.store import Doc, Store, find_by_ids

SEQ_BITS = 32
# message_key must fit MongoDB's signed 64-bit integers, for the conversation after this one too.
MAX_CONVERSATION_ID = (1 << (63 - SEQ_BITS)) - 1
MAX_SEQ = (1 << SEQ_BITS) - 1
# Ids looked up at once when searching forward for the first stored one (history.py, doubling each time).
NEWEST_WINDOW = 16
# The first window of `newest`, which every socket that opens or resumes looks up: the conversation's
# `last_seq` trails its messages by what was sent in the last METADATA_INTERVAL (a second), usually
# nothing, so most of these ids are never stored, and each costs the embedded store about 90 us. Past
# it the windows grow fourfold.
FIRST_NEWEST_WINDOW = 4
SEALED = -1  # in StoredIds.last_seq: the conversation is closed, no id is free
# What a lifecycle event did to its message (the `event` field of its document).
EDITED = "edited"
DELETED = "deleted"
# What `StoredIds.conversations` reads of a conversation: membership, the stored ids, read pointers, mutes.
CONVERSATION_FIELDS = {"participants": 1, "status": 1, "last_seq": 1, "read_seq": 1, "mutes": 1}


def message_key(conversation_id: int, seq: int) -> int:
    return (conversation_id << SEQ_BITS) | seq


def by_keys(keys: list[int]) -> Doc:
    """The filter of the messages at these `_id`s. It names their conversations too: a sharded deployment
    (shard key `conversation_id`, docs/mongodb.md) then asks only the shards that hold them."""
    conversations = sorted({key >> SEQ_BITS for key in keys})
    return {
        "_id": {"$in": keys},
        "conversation_id": conversations[0] if len(conversations) == 1 else {"$in": conversations},
    }


def tombstone(conversation_id: int, seq: int, **marks: Any) -> Doc:
    """A document that takes an id without being a message (a skipped hole, or a conversation's seal)."""
    key = message_key(conversation_id, seq)
    return {"_id": key, "conversation_id": conversation_id, "seq": seq, "hole": True, **marks}


def lifecycle_event(kind: str, message_seq: int) -> Doc:
    """The fields that make a stored document the event `kind` (EDITED, DELETED) of message `message_seq`."""
    return {"hole": True, "event": kind, "message_seq": message_seq}


def is_event(doc: Doc) -> bool:
    return doc.get("event") in (EDITED, DELETED)


class NewestProbe(NamedTuple):
    """The first window of `StoredIds.newest`, asked for before the conversation's `last_seq` is read
    (`StoredIds.probe_newest`): the id it starts after, and the documents found in it."""

    start: int
    found: asyncio.Future[dict[int, Doc]]


class StoredIds:
    """What this node knows of each conversation's stored ids, and the `_id` point lookups."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # The newest message id this node knows to be stored, per conversation (or SEALED): its next
        # message is numbered from here (see MessageWriter). Learnt from its own inserts, the bus and
        # the store.
        self.last_seq: dict[int, int] = {}
        # The first window of `newest` of every conversation asked at one moment, as one query.
        self._newest_reads: Coalescer[int, Doc] = Coalescer(self._read_keys, keys_per_query=store.keys_per_query)
        self._message_reads: Coalescer[int, Doc] = Coalescer(self._read_messages, keys_per_query=store.keys_per_query)
        # Conversation documents by id (CONVERSATION_FIELDS), read now: those asked for at one moment
        # (sockets opening or resuming together) as one query.
        self.conversations: Coalescer[int, Doc] = Coalescer(
            self._read_conversations, keys_per_query=store.keys_per_query
        )

    async def _read_conversations(self, conversation_ids: list[int]) -> dict[int, Doc]:
        docs = await find_by_ids(
            self._store.conversations, {"_id": {"$in": conversation_ids}}, CONVERSATION_FIELDS, len(conversation_ids)
        )
        return {int(d["_id"]): d for d in docs}

    async def _read_keys(self, keys: list[int]) -> dict[int, Doc]:
        return await self._read_messages(keys, {"seq": 1, "sealed": 1})

    async def _read_messages(self, keys: list[int], projection: Doc | None = None) -> dict[int, Doc]:
        docs = await find_by_ids(self._store.messages, by_keys(keys), projection, len(keys))
        return {int(d["_id"]): d for d in docs}

    def observe_seq(self, conversation_id: int, seq: int) -> None:
        """A message with this id is stored (this node's insert, or another node's seen on the bus)."""
        known = self.last_seq.get(conversation_id, 0)
        if known != SEALED and seq > known:
            self.last_seq[conversation_id] = seq

    def probe_newest(self, conversation_id: int) -> NewestProbe | None:
        """Start the first window of `newest` now, from what this node knows, for a caller that reads the
        conversation's `last_seq` at the same time (a socket opening): when that `last_seq` is no further
        than this node knew, `newest` takes the probe's answer instead of a round trip of its own. None
        outside the key space."""
        if conversation_id >= MAX_CONVERSATION_ID:
            return None
        start = self.known_here(conversation_id)
        return NewestProbe(start, self._newest_reads.ask(self._first_window(conversation_id, start)))

    @staticmethod
    def _first_window(conversation_id: int, known: int) -> list[int]:
        return [
            message_key(conversation_id, seq) for seq in range(known + 1, min(known + FIRST_NEWEST_WINDOW, MAX_SEQ) + 1)
        ]

    async def newest(
        self, conversation_id: int, known: int | None = None, probe: NewestProbe | None = None
    ) -> Doc | None:
        """The newest document stored in a conversation (a message or a tombstone), or None.

        Ids are dense, so this needs no range scan (which the embedded store answers by reading the
        whole collection): from the newest id known stored (the conversation's `last_seq`, written behind
        the messages, or this node's own; `known` when the caller has just read the conversation), look
        up the ids just after it by `_id`, in growing windows. A `probe` that started from that same id
        is the first window; one that started before it (the conversation's `last_seq` was further than
        this node knew) is not used, since ids that an earlier design never stored may lie in between.
        """
        if conversation_id >= MAX_CONVERSATION_ID:
            return None  # outside the key space: no message can exist there
        known = await self.known_stored(conversation_id, known)
        newest: Doc | None = {"seq": known} if known > 0 else None
        window = FIRST_NEWEST_WINDOW
        first_window = True
        while known < MAX_SEQ:
            if first_window:
                # Usually the only window: shared with the other conversations looked up at this moment.
                first_window = False
                if probe is not None and probe.start >= known:
                    answer = await probe.found
                else:
                    answer = await self._newest_reads.get_many(self._first_window(conversation_id, known))
                found = list(answer.values())
            else:
                found = await self.by_seq(conversation_id, known + 1, known + window, {"seq": 1, "sealed": 1})
            if not found:
                return newest
            newest = max(found, key=lambda d: int(d["seq"]))
            if len(found) < window:
                return newest
            known, window = int(newest["seq"]), window * 4
        return newest

    async def known_stored(self, conversation_id: int, last_seq: int | None = None) -> int:
        """An id known stored in the conversation (0 if none): the higher of its `last_seq` (read here
        unless the caller just read it) and this node's own knowledge."""
        if last_seq is None:
            conv = await self.conversations.get(conversation_id)
            last_seq = int((conv or {}).get("last_seq", 0))
        return self.known_here(conversation_id, last_seq)

    def known_here(self, conversation_id: int, last_seq: int = 0) -> int:
        """`known_stored` from what this node knows and a `last_seq` just read, reading nothing."""
        return max(last_seq, self.last_seq.get(conversation_id, 0))

    async def by_seq(
        self, conversation_id: int, first: int, last: int, projection: Doc | None = None, **filters: Any
    ) -> list[Doc]:
        """The documents with ids first..last (those stored), by `_id` point lookups, in no set order."""
        first, last = max(first, 1), min(last, MAX_SEQ)
        if first > last:
            return []
        keys = [message_key(conversation_id, seq) for seq in range(first, last + 1)]
        if projection is None and not filters:
            # Whole documents (backlogs of sockets resuming together): one query for the moment's readers.
            return list((await self._message_reads.get_many(keys)).values())
        return await self._store.messages.find({**by_keys(keys), **filters}, projection).to_list(None)

    async def at(self, conversation_id: int, seqs: Iterable[int]) -> dict[int, Doc]:
        """The documents stored at these ids, by id (those outside the id space are not looked up)."""
        if conversation_id >= MAX_CONVERSATION_ID:
            return {}
        keys = [message_key(conversation_id, seq) for seq in set(seqs) if 1 <= seq <= MAX_SEQ]
        if not keys:
            return {}
        return {int(d["seq"]): d async for d in self._store.messages.find(by_keys(keys))}

    async def stored_before(self, conversation_id: int, top: int, count: int) -> list[Doc]:
        """Up to `count` messages (tombstones left out) with ids <= top, newest first."""
        out: list[Doc] = []
        while len(out) < count and top >= 1:
            first = max(1, top - (count - len(out)) + 1)
            found = await self.by_seq(conversation_id, first, top, hole={"$ne": True})
            out.extend(sorted(found, key=lambda d: -int(d["seq"])))
            top = first - 1
        return out[:count]
