"""Everything the store holds about an account, for its owner (`GET /api/users/me/export/`).

The archive is a ZIP of JSON files and the original photos (README.txt in it says what each file is). It
is produced as a stream of entries, each a stream of byte chunks, so that the handler can compress and
send it piece by piece: nothing holds the whole archive, and a conversation's messages are read in
batches of `BATCH` (the biggest piece in memory is one batch; photos are read a few GridFS chunks at a
time, services/media/blobs.py).

What is in it: the profile and settings as stored (location included), devices without their push
secrets, likes sent, passes, blocks, matches, the reports the user filed (not reports about them: those
belong to moderation, and would tell who reported them), notification preferences and mutes, every
message of every conversation they took part in (theirs and the other person's, as the history shows
them), and their photo files. Exports are budgeted (`EXPORTS_PER_DAY` per user, shared by the nodes
through services.rates like the other budgets).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from gridfs.errors import CorruptGridFile

from services.accounts.users import UserService, point_of
from services.chat.ids import MAX_SEQ, message_key
from services.core.clock import iso_of
from services.core.config import Settings
from services.media.photos import photos_in
from services.media.store import MediaStore
from services.realtime.counters import Rate, RateCounters, check_rate
from services.storage.store import Doc, Store

BATCH = 500
DAY_S = 86400.0

README = """This archive holds what the service stores about your account.

account.json           your profile and settings as stored (location included), devices (without
                       their push secrets), likes you sent, people you passed and blocked, your
                       matches (ended ones too), reports you filed, notification preferences, mutes
messages/<id>.json     every conversation you took part in: each message, yours and the other
                       person's, as your history shows it (unsent ones as empty placeholders)
photos/<n>.<ext>       your profile photos, as you uploaded them (location data removed at upload)

Dates are UTC, in ISO 8601. Reports other people filed about you are not included.
"""

Entry = tuple[str, AsyncIterator[bytes]]


def export_rate(settings: Settings) -> Rate:
    return Rate("exports", settings.exports_per_day, DAY_S, "data exports")


async def spend_export(rates: RateCounters, settings: Settings, user_id: int) -> None:
    """One export by `user_id`, or RateLimited (429 with Retry-After) past EXPORTS_PER_DAY."""
    await check_rate(rates, export_rate(settings), user_id)


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return iso_of(value)
    return str(value)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


class AccountExport:
    def __init__(self, store: Store, users: UserService, media: MediaStore) -> None:
        self._store = store
        self._users = users
        self._media = media

    async def entries(self, user_id: int) -> AsyncIterator[Entry]:
        """The archive's files in order, each as a stream of chunks."""
        doc = await self._users.get(user_id)
        yield "README.txt", _once(README.encode())
        yield "account.json", _once(_json(await self._account(user_id, doc)))
        conversations = self._store.conversations.find({"participants": user_id}, {"_id": 1}).sort("_id", 1)
        async for conversation in conversations:
            cid = int(conversation["_id"])
            yield f"messages/{cid}.json", self._messages(cid)
        for n, photo in enumerate(photos_in(doc), start=1):
            path = photo.get("path")
            if path:
                yield f"photos/{n}{Path(str(path)).suffix}", self._file(str(path))

    async def _account(self, user_id: int, doc: Doc) -> dict[str, Any]:
        store = self._store
        location = point_of(doc)

        async def rows(collection: Any, query: Doc, fields: dict[str, str]) -> list[dict[str, Any]]:
            found = await collection.find(query).sort("_id", 1).to_list(None)
            return [{out: row.get(key) for out, key in fields.items()} for row in found]

        conversations = await store.conversations.find(
            {"participants": user_id, f"mutes.{user_id}": {"$exists": True}}, {f"mutes.{user_id}": 1}
        ).to_list(None)
        preferences = await store.notification_preferences.find_one({"_id": user_id}) or {}
        return {
            "profile": self._users.own_profile(doc),
            "stored_location": {"lat": location[1], "lon": location[0]} if location else None,
            "last_seen": doc.get("last_seen"),
            "devices": await rows(
                store.push_devices,
                {"user_id": user_id},
                {"id": "_id", "kind": "kind", "created_at": "created_at", "updated_at": "updated_at"},
            ),
            "likes_sent": await rows(store.likes, {"from_id": user_id}, {"user_id": "to_id", "at": "created_at"}),
            "passes": await rows(store.passes, {"from_id": user_id}, {"user_id": "to_id", "at": "created_at"}),
            "blocks": await rows(store.blocks, {"from_id": user_id}, {"user_id": "to_id", "at": "created_at"}),
            "matches": [
                {
                    "id": int(m["_id"]),
                    "user_id": next(int(u) for u in m["users"] if int(u) != user_id),
                    "conversation_id": m.get("conversation_id"),
                    "status": m.get("status"),
                    "created_at": m.get("created_at"),
                    "ended_at": m.get("ended_at"),
                }
                for m in await store.matches.find({"users": user_id}).sort("_id", 1).to_list(None)
            ],
            "reports_filed": await rows(
                store.reports,
                {"reporter_id": user_id},
                {
                    "id": "_id",
                    "user_id": "reported_id",
                    "reason": "reason",
                    "note": "note",
                    "conversation_id": "conversation_id",
                    "message_ids": "message_ids",
                    "status": "status",
                    "created_at": "created_at",
                },
            ),
            "notification_preferences": {k: v for k, v in preferences.items() if k != "_id"},
            "mutes": [
                {"conversation_id": int(c["_id"]), **(c.get("mutes") or {}).get(str(user_id), {})}
                for c in conversations
            ],
        }

    async def _messages(self, cid: int) -> AsyncIterator[bytes]:
        """A JSON array written as it is read, one batch at a time."""
        attachments: dict[int, Doc] = {}
        yield b"["
        first = True
        low = message_key(cid, 0)
        high = message_key(cid, MAX_SEQ)
        while True:
            batch = (
                await self._store.messages.find(
                    {"_id": {"$gt": low, "$lte": high}, "conversation_id": cid, "hole": {"$ne": True}}
                )
                .sort("_id", 1)
                .limit(BATCH)
                .to_list(None)
            )
            if not batch:
                break
            low = int(batch[-1]["_id"])
            wanted = [int(m["attachment_id"]) for m in batch if m.get("attachment_id") is not None]
            if wanted:
                found = await self._store.attachments.find({"_id": {"$in": wanted}}).to_list(None)
                attachments = {int(a["_id"]): a for a in found}
            parts = []
            for message in batch:
                parts.append(_json(self._message(message, attachments)))
            yield (b"" if first else b",\n") + b",\n".join(parts)
            first = False
            if len(batch) < BATCH:
                break
        yield b"]\n"

    def _message(self, doc: Doc, attachments: dict[int, Doc]) -> dict[str, Any]:
        deleted = doc.get("deleted_at") is not None
        attachment = attachments.get(int(doc["attachment_id"])) if doc.get("attachment_id") is not None else None
        return {
            "id": int(doc.get("seq", int(doc["_id"]) & MAX_SEQ)),
            "sender_id": doc.get("sender_id"),
            "content": "" if deleted else doc.get("content", ""),
            "created_at": doc.get("created_at"),
            "edited_at": None if deleted else doc.get("edited_at"),
            "deleted": deleted,
            "attachment": None
            if attachment is None or deleted
            else {"url": self._media.url(attachment.get("path")), "content_type": attachment.get("content_type")},
        }

    async def _file(self, path: str) -> AsyncIterator[bytes]:
        """A stored file, read from the database chunk by chunk; a file deleted before it is read is an
        empty entry, one deleted while it is read ends where its chunks did."""
        blob = await self._media.files.find(path)
        if blob is None:
            return
        with contextlib.suppress(CorruptGridFile):
            async for chunk in self._media.files.read(blob):
                yield chunk
