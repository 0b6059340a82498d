"""What clients see of stored documents: message objects, lifecycle frames, attachment objects, conversation
summaries.

A message object is the seed's shape plus `conversation_id` (and `client_id` when the sender gave one);
the same object goes into REST answers and, inside a `message` frame, to sockets. A message is always
shown as it now is: an edited one with `edited_at`, an unsent one as a placeholder (`content: ""`, no
attachment, `deleted: true`, `deleted_at`). A lifecycle event (an edit or an unsend, services/chat/ids.py)
is shown as its frame, `message_edited` or `message_deleted`, carrying that message object. Other
tombstones never reach here: callers leave them out.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from services.accounts.users import UserService
from services.chat.ids import EDITED, StoredIds, by_keys, message_key
from services.core.clock import iso
from services.media.store import MediaStore
from services.push.preferences import mute_view
from services.storage.store import Doc, Store


class ChatViews:
    def __init__(self, store: Store, users: UserService, media: MediaStore, ids: StoredIds) -> None:
        self._store = store
        self._users = users
        self._media = media
        self._ids = ids

    async def serialize_many(self, docs: list[Doc], read_seq: dict[int, int]) -> list[dict[str, Any]]:
        senders = {int(d["sender_id"]) for d in docs}
        summaries = {uid: await self._users.summary(uid) for uid in senders}
        attachments = await self.attachments_of(docs)
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

    async def read_pointers(self, conversation_id: int) -> dict[int, int]:
        """How far each participant has read (user id -> message id)."""
        doc = await self._ids.conversations.get(conversation_id)
        return {int(k): int(v) for k, v in ((doc or {}).get("read_seq") or {}).items()}

    async def lifecycle_frames(
        self, conversation_id: int, events: list[Doc], read_seq: dict[int, int]
    ) -> dict[int, dict[str, Any]]:
        """The frames of these lifecycle events, by event id, each carrying its message as it now is.

        The messages are read here, after the events were: a message is changed before its event is
        stored (ChatService.edit_message), so the frame shows at least that change. As each frame shows
        the message's current state, only the last event of each message in `events` gets one: the
        earlier ones would repeat it."""
        last_of: dict[int, Doc] = {}
        for event in sorted(events, key=lambda e: int(e["seq"])):
            last_of[int(event["message_seq"])] = event
        targets = await self._ids.at(conversation_id, last_of)
        docs = [targets[seq] for seq in last_of if seq in targets and not targets[seq].get("hole")]
        messages = {m["id"]: m for m in await self.serialize_many(docs, read_seq)}
        frames: dict[int, dict[str, Any]] = {}
        for message_seq, event in last_of.items():
            if message_seq in messages:
                frames[int(event["seq"])] = {
                    "type": "message_edited" if event["event"] == EDITED else "message_deleted",
                    "event_id": int(event["seq"]),
                    "message_id": message_seq,
                    "message": messages[message_seq],
                }
        return frames

    async def attachments_of(self, docs: list[Doc]) -> dict[Any, Doc]:
        """The attachment documents the messages refer to, by id."""
        ids = [d["attachment_id"] for d in docs if d.get("attachment_id") is not None]
        if not ids:
            return {}
        return {a["_id"]: a async for a in self._store.attachments.find({"_id": {"$in": ids}})}

    def serialize(
        self, doc: Doc, sender: dict[str, Any], *, is_read: bool, attachment: Doc | None = None
    ) -> dict[str, Any]:
        """The seed's message object, plus `conversation_id` and (when given) `client_id`."""
        deleted = doc.get("deleted_at") is not None
        message: dict[str, Any] = {
            "id": int(doc["seq"]),
            "sender_id": int(doc["sender_id"]),
            "sender_username": sender["username"],
            "sender_profile_picture": sender["profile_picture"],
            "content": "" if deleted else doc["content"],
            "created_at": iso(utc_datetime(doc["created_at"])),
            "is_read": is_read,
            "attachment": self.attachment_object(attachment) if attachment and not deleted else None,
            "conversation_id": int(doc["conversation_id"]),
        }
        if doc.get("client_id") is not None:
            message["client_id"] = doc["client_id"]
        if deleted:
            message["deleted"] = True
            message["deleted_at"] = iso(utc_datetime(doc["deleted_at"]))
        elif doc.get("edited_at") is not None:
            message["edited_at"] = iso(utc_datetime(doc["edited_at"]))
        return message

    def attachment_object(self, doc: Doc) -> dict[str, Any]:
        attachment = {
            "id": int(doc["_id"]),
            "url": self._media.url(doc["path"]),
            "content_type": doc["content_type"],
            "size": int(doc["size"]),
        }
        if doc.get("name"):
            attachment["name"] = doc["name"]
        return attachment

    async def describe_conversations(self, docs: list[Doc], user_id: int) -> list[dict[str, Any]]:
        """The conversation objects of the REST API, as `user_id` sees them (last message, unread count)."""
        keys = [message_key(int(d["_id"]), int(d.get("last_seq", 0))) for d in docs if d.get("last_seq")]
        last_docs = {}
        if keys:
            last_docs = {
                int(m["conversation_id"]): m
                async for m in self._store.messages.find({**by_keys(keys), "hole": {"$ne": True}})
            }
        # The last id may be a hole or still in flight: then the last message is the newest one stored.
        for d in docs:
            cid = int(d["_id"])
            if d.get("last_seq") and cid not in last_docs:
                found = await self._ids.stored_before(cid, int(d["last_seq"]), 1)
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
                    # Counted in ids: an edit or unsend stored among unread messages counts too.
                    "unread_count": max(0, int(d.get("last_seq", 0)) - read_seq.get(user_id, 0)),
                    "updated_at": iso(utc_datetime(d.get("updated_at") or d.get("created_at"))),
                    "status": d.get("status", "open"),
                    "match_id": d.get("match_id"),
                    **mute_view(d, user_id),  # the caller's own mute, never the other's
                }
            )
        return out


def utc_datetime(value: Any) -> dt.datetime:
    """A stored time as an aware datetime: a naive one is taken as UTC, a missing one as now."""
    if not isinstance(value, dt.datetime):
        return dt.datetime.now(dt.UTC)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
