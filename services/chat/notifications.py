"""Replaying a user's notifications to a notifications socket opened with `?after=<notification id>`.

The notifications log (services/realtime/notifications_log.py) numbers every notification and keeps a
compact copy of it (`kept_form`, services/realtime/events.py): people as their ids, a message as its ids
without its text. What it leaves out is derived here, at replay, from what MongoDB holds anyway: the
message as it now is, and each person's current name and picture.

Why derived, and not a copy written to MongoDB behind the sends. A `new_message` goes to every recipient
of every message: a copy in the store per notification, batched or not, would add a write per message
per recipient to the store's heaviest path, for entries read only by the few sockets that resume. The
log costs the send path nothing (its script call replaces the PUBLISH that was there already) and the
store nothing until a replay, which reads the messages of one page with a single `$in` lookup. And a
replay stays true: an unsent message comes back as the placeholder it now is (`content` "" and
`deleted`), not with the text its sender erased, and an edited one with its new text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from services.accounts.users import UserService
from services.chat.ids import by_keys, message_key
from services.chat.views import utc_datetime
from services.core import errors
from services.core.clock import iso
from services.realtime.notifications_log import NotificationLog
from services.storage.store import Doc, Store


@dataclass(frozen=True)
class Replay:
    frames: list[tuple[int, bytes]]  # (id, the notification frame as sockets receive it), in id order
    truncated: bool  # some notifications after the id asked for are no longer kept
    head: int | None  # the newest id issued to the user, None when nothing of theirs is kept


class NotificationFeed:
    def __init__(self, log: NotificationLog, store: Store, users: UserService) -> None:
        self._log = log
        self._store = store
        self._users = users

    async def replay(self, user_id: int, after: int) -> Replay:
        """The user's notifications kept after id `after`, as frames, and whether some are missing."""
        kept = await self._log.since(user_id, after)
        notes: list[tuple[int, dict[str, Any]]] = [(seq, orjson.loads(data)) for seq, data in kept.entries]
        messages = await self._messages([note for _, note in notes])
        people = await self._people([note for _, note in notes])
        frames = [
            (seq, orjson.dumps({"type": "notification", "id": seq, "notification": expand(note, messages, people)}))
            for seq, note in notes
        ]
        return Replay(frames, not kept.complete, kept.head)

    async def _messages(self, notes: list[dict[str, Any]]) -> dict[int, Doc]:
        """The stored messages the `new_message` notifications name, by key, in one lookup."""
        keys = [
            message_key(int(n["message"]["conversation_id"]), int(n["message"]["id"]))
            for n in notes
            if n.get("type") == "new_message"
        ]
        if not keys:
            return {}
        projection = {"content": 1, "deleted_at": 1, "edited_at": 1}
        return {int(d["_id"]): d async for d in self._store.messages.find(by_keys(keys), projection)}

    async def _people(self, notes: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """The current summary of everyone the notifications name (cached by UserService)."""
        out: dict[int, dict[str, Any]] = {}
        for user_id in sorted({p for n in notes if (p := person_of(n)) is not None}):
            try:
                out[user_id] = await self._users.summary(user_id)
            except errors.NotFound:
                out[user_id] = {"id": user_id, "username": "", "profile_picture": None}  # the account is gone
        return out


def person_of(note: dict[str, Any]) -> int | None:
    """The id of the person a kept notification names (`kept_form` keeps people as ids), if any."""
    kind = note.get("type")
    if kind == "new_message":
        return int(note["message"]["sender"]["id"])
    if kind == "new_like":
        return int(note["liker"]["id"])
    if kind == "new_match":
        return int(note["match"]["user"]["id"])
    return None


def expand(note: dict[str, Any], messages: dict[int, Doc], people: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A kept notification as it was sent, with what the log left out read again (see the module docstring)."""
    person = person_of(note)
    kind = note.get("type")
    if kind == "new_like" and person is not None:
        return {**note, "liker": people[person]}
    if kind == "new_match" and person is not None:
        return {**note, "match": {**note["match"], "user": people[person]}}
    if kind != "new_message" or person is None:
        return note
    kept = note["message"]
    message: dict[str, Any] = {"id": kept["id"], "conversation_id": kept["conversation_id"], "sender": people[person]}
    stored = messages.get(message_key(int(kept["conversation_id"]), int(kept["id"])))
    if stored is None or stored.get("deleted_at") is not None:
        # Unsent (or removed): the placeholder it now is, as everywhere else.
        message.update(content="", created_at=kept["created_at"], deleted=True)
    else:
        message.update(content=stored["content"], created_at=kept["created_at"])
        if stored.get("edited_at") is not None:
            message["edited_at"] = iso(utc_datetime(stored["edited_at"]))
    return {**note, "message": message}
