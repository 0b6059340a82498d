"""Removing a message for everyone, as a moderator.

The same erasure as the sender's unsend (services/chat/service.py `unsend_message`), made by someone who
is not a participant, in an open or a closed conversation (a report closes the conversation it is about):
the text is emptied and the edit time dropped in the same update that marks the message deleted, then its
attachment's document and files go. In an open conversation the `message_deleted` event is stored at the
next id and published, as for an unsend (attributed to the sender: participants see an unsend); a closed
conversation is sealed, so no event can follow its last id and none is needed (no socket is open on it):
its former participants read the placeholder in its history. A removal cut short is completed by its retry,
which the `unsend_pending` mark tells apart, as for an unsend.
"""

from __future__ import annotations

import datetime as dt

from services.chat.ids import DELETED
from services.chat.service import ChatService
from services.core import errors
from services.media.store import MediaStore
from services.realtime.events import Publisher
from services.storage.store import Doc, Store


class MessageRemoval:
    def __init__(self, store: Store, chat: ChatService, media: MediaStore, events: Publisher) -> None:
        self._store = store
        self._chat = chat
        self._media = media
        self._events = events

    async def remove(self, conversation_id: int, message_id: int) -> Doc:
        """Erase the message; answers its stored document as it was before (the sender is the audit's
        user). NotFound `conversation_not_found` or `message_not_found`; already erased: done again."""
        conversation = await self._chat.conversation(conversation_id, fresh=True)
        if conversation is None:
            raise errors.NotFound("Conversation not found", code="conversation_not_found")
        found = (await self._chat.ids.at(conversation_id, [message_id])).get(message_id)
        if found is None or found.get("hole"):
            raise errors.NotFound("No such message in this conversation", code="message_not_found")
        doc = found
        if doc.get("deleted_at") is None:
            erased = await self._store.messages.find_one_and_update(
                {"_id": doc["_id"], "conversation_id": conversation_id, "deleted_at": None},
                {
                    "$set": {"content": "", "deleted_at": dt.datetime.now(dt.UTC), "unsend_pending": True},
                    "$unset": {"edited_at": ""},
                },
            )
            if erased is None:
                return found  # unsent meanwhile, by its sender or another moderator
            doc = erased
        elif not doc.get("unsend_pending"):
            return found  # erased already
        if doc.get("attachment_id") is not None:
            attachment = await self._store.attachments.find_one_and_delete(
                {"_id": doc["attachment_id"], "conversation_id": conversation_id}
            )
            if attachment is not None:
                await self._media.forget(int(attachment["uploader_id"]), attachment)
        if conversation.is_open:
            await self._publish_removal(conversation_id, int(doc["sender_id"]), message_id)
        await self._store.messages.update_one(
            {"_id": doc["_id"], "conversation_id": conversation_id},
            {"$unset": {"unsend_pending": "", "attachment_id": ""}},
        )
        return found

    async def _publish_removal(self, conversation_id: int, sender_id: int, message_id: int) -> None:
        try:
            event = await self._chat.writer.write_event(conversation_id, sender_id, DELETED, message_id)
        except errors.Forbidden:
            return  # closed meanwhile: sealed, no event follows, and its sockets are gone
        views = self._chat.views
        read_seq = await views.read_pointers(conversation_id)
        frames = await views.lifecycle_frames(conversation_id, [event], read_seq)
        frame = frames.get(int(event["seq"]))
        if frame is not None:
            await self._events.to_conversation(conversation_id, frame, seq=int(event["seq"]))
