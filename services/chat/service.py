"""Conversations and messages: `ChatService` is what the rest of the server calls; it delegates to the modules below.

The package, one job per module:

    service.py    ChatService: membership, sending, editing and unsending, read pointers, attachments;
                  delegates the rest
    writer.py     the message writer: id numbering, batched inserts, collisions between nodes, replays
                  of client_id retries, sealing closed conversations (the design of ids is explained there)
    history.py    reading messages back: history pages, resuming after an id, socket backlogs, holes
    views.py      stored documents as clients see them: message, attachment and conversation objects
    ids.py        how a message's `_id` is made, the ids this node knows stored, lookups by id
    metadata.py   the conversation document's `last_seq`, `updated_at` and read pointers, written behind
    presence.py   presence as people in a conversation see it (status frames, `last_seen`)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from services.accounts.users import UserService
from services.chat.history import HistoryReader
from services.chat.ids import DELETED, EDITED, NewestProbe, StoredIds
from services.chat.metadata import ConversationMetadata
from services.chat.views import ChatViews, utc_datetime
from services.chat.writer import MessageWriter
from services.core import errors
from services.core.clock import now_iso
from services.core.text import clean_file_name, clean_multiline
from services.media.content import ATTACHMENT_TYPES
from services.media.store import MediaStore
from services.push.preferences import muted_participants
from services.realtime.events import Publisher, conversation_read_notification
from services.storage.store import Doc, Store

CONVERSATION_CACHE_TTL_S = 10.0


@dataclass
class Conversation:
    id: int
    participants: tuple[int, ...]
    is_open: bool
    # As the conversation document said when read: written behind the messages, so a lower bound.
    last_seq: int = 0

    def others(self, user_id: int) -> list[int]:
        return [p for p in self.participants if p != user_id]


# A conversation's document being read (`ChatService.ask_conversation`), by conversation id.
ConversationLookup = asyncio.Future[dict[int, Doc]]


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
        self._conversations: dict[int, tuple[float, Conversation]] = {}
        self.metadata = ConversationMetadata(store.conversations, interval_s=metadata_interval_s)
        self.ids = StoredIds(store)
        self.writer = MessageWriter(store, self.ids, self.metadata, self.forget_conversation)
        self.views = ChatViews(store, users, media, self.ids)
        self.reader = HistoryReader(store, self.ids, self.metadata, self.views, hole_timeout_s=hole_timeout_s)
        # Called with (conversation_id, sender_id) after a message is stored: the typing tracker uses it
        # to report the sender stopped typing.
        self.on_message_stored: list[Any] = []

    @property
    def _last_seq(self) -> dict[int, int]:
        """The newest id known stored per conversation (StoredIds.last_seq): tests set it to make this
        node number from a stale or skipped id."""
        return self.ids.last_seq

    # -- membership --------------------------------------------------------------------------------

    async def conversation(self, conversation_id: int, *, fresh: bool = False) -> Conversation | None:
        """The conversation, from a short-lived cache: participants never change, only `open` does."""
        now = time.monotonic()
        cached = self._conversations.get(conversation_id)
        if cached is not None and cached[0] > now and not fresh:
            return cached[1]
        # Read now, with the other conversations asked for at this moment (StoredIds.conversations).
        return self.conversation_from(await self.ids.conversations.get(conversation_id), now)

    def ask_conversation(self, conversation_id: int) -> ConversationLookup:
        """Start reading the conversation now, in the next query shared with this moment's other reads, for
        a caller that waits on something else first; `conversation_from` makes its document a Conversation."""
        return self.ids.conversations.ask((conversation_id,))

    def conversation_from(self, doc: Doc | None, asked_at: float) -> Conversation | None:
        """The conversation of a document read from the store by a query sent after `asked_at` (a
        `time.monotonic()`), kept for `conversation`'s cache, which counts its age from then."""
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
        self._conversations[conv.id] = (asked_at + CONVERSATION_CACHE_TTL_S, conv)
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

    # -- sending -----------------------------------------------------------------------------------

    def start(self) -> None:
        self.writer.start()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Store what was queued, then stop the writer and write the metadata it left behind."""
        await self.writer.close(timeout_s)

    async def send_message(
        self,
        conversation_id: int,
        sender_id: int,
        content: str,
        client_id: str | None = None,
        attachment_id: int | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Store a message, then publish it. Returns (the seed's message object, created?).

        A retry with the same `client_id` returns the stored message with created=False and notifies
        nobody again; its message frame is published again, since the first send may have been stored
        after its writer gave up on the store (then nothing announced it): sockets that have it drop the
        repeat by its id (services/realtime/hub.py), the others get it now rather than at the next message.
        """
        content = clean_multiline(content)
        attachment = None
        if attachment_id is not None:
            attachment = await self._attachment_for(conversation_id, sender_id, attachment_id)
        elif not content.strip():
            raise errors.Invalid("Message is empty", code="empty_message")
        if len(content) > self.max_content_chars:
            raise errors.Invalid(f"Message longer than {self.max_content_chars} characters", code="message_too_long")
        await self.member_conversation(conversation_id, sender_id, require_open=True)
        doc, created = await self.writer.write(conversation_id, sender_id, content, client_id, attachment)
        sender = await self._users.summary(sender_id)
        if not created and doc.get("attachment_id") is not None:
            attachment = (await self.views.attachments_of([doc])).get(doc["attachment_id"])
        message = self.views.serialize(doc, sender, is_read=False, attachment=attachment)
        if created:
            await self._publish_new_message(conversation_id, sender_id, message, sender)
        else:
            await self._events.to_conversation(
                conversation_id, {"type": "message", "message": message}, seq=message["id"]
            )
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
        recipients = conv.others(sender_id) if conv else []
        # A participant who muted the conversation gets no notification of it, so no push either; the
        # message still reached their conversation sockets above and counts as unread.
        muted = await muted_participants(self._store, conversation_id, recipients, self.ids.conversations.get)
        for other in recipients:
            if other not in muted:
                await self._events.notify(other, notification)

    def observe_seq(self, conversation_id: int, seq: int) -> None:
        """A message with this id is stored (this node's insert, or another node's seen on the bus)."""
        self.ids.observe_seq(conversation_id, seq)

    async def seal(self, conversation_id: int) -> None:
        """Store the closing tombstone at the conversation's next id: no message can be stored after it."""
        await self.writer.seal(conversation_id)

    # -- editing and unsending ---------------------------------------------------------------------
    #
    # The message document is changed first, then the lifecycle event is stored at the conversation's
    # next id (MessageWriter.write_event), then its frame is published at that id. In that order, whoever
    # reads the event (a socket's backlog, a REST page, the publisher) reads the message after it
    # changed. An unsend that fails half-way (the store went away) is completed by its retry, which the
    # `unsend_pending` mark tells from an unsend that is done; a failed edit is simply applied again.

    async def edit_message(
        self, conversation_id: int, editor_id: int, message_id: int, content: str, *, window_s: float
    ) -> dict[str, Any]:
        """Replace the text of one of the editor's own messages, sent at most `window_s` seconds ago, and
        publish `message_edited`. Returns the message as it now is. No notification or push is sent.

        Refusals: Invalid `empty_message` (blank, unless the message carries an attachment) or
        `message_too_long`; NotFound `conversation_not_found` (also a closed one) or `message_not_found`;
        Forbidden `not_your_message`, `edit_window_closed` or `conversation_closed` (closed meanwhile);
        Conflict `message_deleted`."""
        content = clean_multiline(content)
        if len(content) > self.max_content_chars:
            raise errors.Invalid(f"Message longer than {self.max_content_chars} characters", code="message_too_long")
        # Read fresh: a conversation closed on another node must not take an edit the seal would refuse.
        await self.member_conversation(conversation_id, editor_id, require_open=True, fresh=True)
        doc = await self._own_message(conversation_id, editor_id, message_id)
        if doc.get("deleted_at") is not None:
            raise _message_deleted()
        now = dt.datetime.now(dt.UTC)
        if (now - utc_datetime(doc.get("created_at"))).total_seconds() > window_s:
            raise errors.Forbidden("This message can no longer be edited", code="edit_window_closed")
        if not content.strip() and doc.get("attachment_id") is None:
            raise errors.Invalid("Message is empty", code="empty_message")
        changed = await self._store.messages.update_one(
            {"_id": doc["_id"], "conversation_id": conversation_id, "deleted_at": None},
            {"$set": {"content": content, "edited_at": now}},
        )
        if changed.matched_count == 0:
            raise _message_deleted()  # unsent meanwhile
        event = await self.writer.write_event(conversation_id, editor_id, EDITED, message_id)
        return await self._publish_event(conversation_id, event)

    async def unsend_message(self, conversation_id: int, sender_id: int, message_id: int) -> dict[str, Any]:
        """Delete one of the sender's own messages for everyone, at any time: its text and attachment are
        erased from the store, and `message_deleted` is published. Returns the placeholder the message
        now is.

        Refusals: NotFound `conversation_not_found` (also a closed one) or `message_not_found`; Forbidden
        `not_your_message` or `conversation_closed` (closed meanwhile); Conflict `message_deleted`."""
        await self.member_conversation(conversation_id, sender_id, require_open=True, fresh=True)
        doc = await self._own_message(conversation_id, sender_id, message_id)
        if doc.get("deleted_at") is None:
            erased = await self._store.messages.find_one_and_update(
                {"_id": doc["_id"], "conversation_id": conversation_id, "deleted_at": None},
                {
                    # `client_id` stays: a late retry of the send gets the placeholder, not a new message.
                    "$set": {"content": "", "deleted_at": dt.datetime.now(dt.UTC), "unsend_pending": True},
                    "$unset": {"edited_at": ""},
                },
            )
            if erased is None:
                raise _message_deleted()  # unsent meanwhile, by another request
            doc = erased  # as it was: its attachment is erased next
        elif not doc.get("unsend_pending"):
            raise _message_deleted()
        if doc.get("attachment_id") is not None:
            await self._erase_attachment(conversation_id, sender_id, int(doc["attachment_id"]))
        event = await self.writer.write_event(conversation_id, sender_id, DELETED, message_id)
        await self._store.messages.update_one(
            {"_id": doc["_id"], "conversation_id": conversation_id},
            {"$unset": {"unsend_pending": "", "attachment_id": ""}},
        )
        return await self._publish_event(conversation_id, event)

    async def _own_message(self, conversation_id: int, user_id: int, message_id: int) -> Doc:
        """The stored message `message_id` of the conversation if `user_id` sent it; else NotFound (no
        such message: the id of another conversation's message, of a tombstone, past the newest) or
        Forbidden (another participant's message)."""
        found = (await self.ids.at(conversation_id, [message_id])).get(message_id)
        if found is None or found.get("hole"):
            raise errors.NotFound("No such message in this conversation", code="message_not_found")
        if int(found["sender_id"]) != user_id:
            raise errors.Forbidden("Only its sender may change a message", code="not_your_message")
        return found

    async def _erase_attachment(self, conversation_id: int, uploader_id: int, attachment_id: int) -> None:
        """Remove an unsent message's attachment: its document, then its file and thumbnails (their URLs
        then answer 404), which stop counting against the uploader's storage quota."""
        attachment = await self._store.attachments.find_one_and_delete(
            {"_id": attachment_id, "conversation_id": conversation_id, "uploader_id": uploader_id}
        )
        if attachment is not None:
            await self._media.forget(uploader_id, attachment)

    async def _publish_event(self, conversation_id: int, event: Doc) -> dict[str, Any]:
        """Publish a stored lifecycle event's frame at its id; return the message it carries."""
        read_seq = await self.views.read_pointers(conversation_id)
        frame = (await self.views.lifecycle_frames(conversation_id, [event], read_seq))[int(event["seq"])]
        await self._events.to_conversation(conversation_id, frame, seq=int(event["seq"]))
        message: dict[str, Any] = frame["message"]
        return message

    # -- read pointers -----------------------------------------------------------------------------

    async def mark_read(self, conversation_id: int, user_id: int, message_id: int) -> dict[str, Any] | None:
        """Mark `message_id` and everything before it read by `user_id`; if the pointer moved, publish a
        receipt to the conversation and `conversation_read` to the reader's own notifications sockets.

        Returns the receipt frame, or None when the pointer was already there.
        """
        await self.member_conversation(conversation_id, user_id, require_open=False)
        if message_id > max(self.ids.last_seq.get(conversation_id, 0), 0):
            newest = await self.ids.newest(conversation_id)
            last = 0 if newest is None else int(newest["seq"]) - (1 if newest.get("sealed") else 0)
            if message_id > last:
                raise errors.NotFound("No such message in this conversation", code="message_not_found")
        # `$max` moves the pointer only forward, and the filter is the `_id` alone: an `$or` in it (pointer
        # lower, or none yet) makes the embedded store scan every conversation.
        result = await self._store.conversations.update_one(
            {"_id": conversation_id}, {"$max": {f"read_seq.{user_id}": message_id}}
        )
        if result.modified_count == 0:
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
        # The reader's other tabs and devices clear their unread count for this conversation.
        await self._events.notify(user_id, conversation_read_notification(conversation_id, message_id))
        return frame

    # -- reading (services/chat/history.py) --------------------------------------------------------

    async def history(
        self,
        conversation_id: int,
        viewer_id: int,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> dict[str, Any]:
        """A page of history (HistoryReader.page): `results` in storage order and `has_more`; with `after`,
        also the lifecycle `events` among them and the `last_id` to continue from."""
        await self.member_conversation(conversation_id, viewer_id, require_open=False)
        return await self.reader.page(conversation_id, before=before, after=after, limit=limit)

    async def messages_after(self, conversation_id: int, after: int, limit: int) -> tuple[list[Doc], bool]:
        """Stored messages with id > after, in order, never past an id still in flight; holes left out."""
        return await self.reader.messages_after(conversation_id, after, limit)

    async def contiguous_after(self, conversation_id: int, after: int, limit: int) -> tuple[list[Doc], bool]:
        """Documents with ids after+1, after+2, ... without a gap (holes included, marked `hole`)."""
        return await self.reader.contiguous_after(conversation_id, after, limit)

    def probe_newest(self, conversation_id: int) -> NewestProbe | None:
        """Start looking up the newest id now, for `last_stored_seq` after the conversation is read."""
        return self.ids.probe_newest(conversation_id)

    async def last_stored_seq(
        self, conversation_id: int, known: int | None = None, probe: NewestProbe | None = None
    ) -> int:
        """The highest message id stored in the conversation (tombstones included), 0 if none."""
        return await self.reader.last_stored_seq(conversation_id, known, probe)

    async def backlog(
        self, conversation_id: int, after: int, limit: int
    ) -> tuple[list[tuple[int, bytes | None]], bool]:
        """(id, socket frame) pairs after `after`, as live delivery would send them (None for holes)."""
        return await self.reader.backlog(conversation_id, after, limit)

    async def fill_holes(self, conversation_id: int, first: int, last: int) -> None:
        await self.reader.fill_holes(conversation_id, first, last)

    # -- what clients see (services/chat/views.py) -------------------------------------------------

    async def serialize_many(self, docs: list[Doc], read_seq: dict[int, int]) -> list[dict[str, Any]]:
        return await self.views.serialize_many(docs, read_seq)

    def serialize(
        self, doc: Doc, sender: dict[str, Any], *, is_read: bool, attachment: Doc | None = None
    ) -> dict[str, Any]:
        """The seed's message object, plus `conversation_id` and (when given) `client_id`."""
        return self.views.serialize(doc, sender, is_read=is_read, attachment=attachment)

    # -- conversations over REST -------------------------------------------------------------------

    async def list_conversations(self, user_id: int, limit: int = 50) -> list[dict[str, Any]]:
        await self.metadata.settled()
        docs = await self._store.conversations.find(
            {"participants": user_id, "status": "open"}, sort=[("updated_at", -1)], limit=limit
        ).to_list(None)
        return await self.views.describe_conversations(docs, user_id)

    async def get_conversation(self, conversation_id: int, user_id: int) -> dict[str, Any]:
        await self.metadata.settled([conversation_id])
        doc = await self._store.conversations.find_one({"_id": conversation_id, "participants": user_id})
        if doc is None:
            raise errors.NotFound("Conversation not found", code="conversation_not_found")
        return (await self.views.describe_conversations([doc], user_id))[0]

    # -- attachments -------------------------------------------------------------------------------

    async def add_attachment(
        self,
        conversation_id: int,
        uploader_id: int,
        data: bytes,
        declared_type: str | None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Store a file to send with a message (`attachment_id`). Images are re-encoded, the uploader's rate
        and quota apply (services/media/store.py). It stays `sent: false` until a message carries it, and
        is removed UNSENT_ATTACHMENT_TTL after its upload if none does (services/media/sweeper.py).
        `name` is the file's name as the uploader's device called it, kept as text (clean_file_name)."""
        shown_name = clean_file_name(name) if name else None
        await self.member_conversation(conversation_id, uploader_id, require_open=True)
        stored = await self._media.accept(uploader_id, data, ATTACHMENT_TYPES, "attachments", declared_type)
        try:
            doc: Doc = {
                "_id": await self._store.next_id("attachments"),
                "conversation_id": conversation_id,
                "uploader_id": uploader_id,
                **stored.fields(),
                **({"name": shown_name} if shown_name else {}),
                "sent": False,
                "created_at": dt.datetime.now(dt.UTC),
            }
            await self._store.attachments.insert_one(doc)
        except BaseException:
            await self._media.discard(uploader_id, stored)
            raise
        return self.views.attachment_object(doc)

    def attachment_object(self, doc: Doc) -> dict[str, Any]:
        return self.views.attachment_object(doc)

    async def _attachment_for(self, conversation_id: int, sender_id: int, attachment_id: int) -> Doc:
        """The sender's own attachment in this conversation, to send with a message; else NotFound.

        Marked sent in the same atomic update, so the sweep of unsent attachments, which deletes only
        those still unsent, either comes first (then this answers NotFound) or never takes it."""
        doc = await self._store.attachments.find_one_and_update(
            {"_id": attachment_id, "conversation_id": conversation_id, "uploader_id": sender_id},
            {"$set": {"sent": True}},
        )
        if doc is None:
            raise errors.NotFound("Attachment not found", code="attachment_not_found")
        return doc


def _message_deleted() -> errors.Conflict:
    return errors.Conflict("This message was unsent", code="message_deleted")
