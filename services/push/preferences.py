"""What a user chose not to be notified of: conversations they muted, and kinds of push they turned off.

Two choices with two reaches:

- **Muting a conversation** (one participant, until a time or until unmuted) silences its `new_message`
  notifications for that participant: no `notification` frame on their notifications sockets and no push.
  The messages themselves are untouched: stored, delivered on the conversation's sockets, counted
  unread. A mute is kept in the conversation document under `mutes.<user id>` (a `conversation_mute`,
  services/storage/documents.py), so what already reads that document reads the mute with it: the push
  worker before each message push, the conversation views (`mute_view`). The publisher of a new message
  reads it on purpose (`muted_participants`): read for every message, never cached (the messages stored at
  one moment share one query), so that a mute answered on one node holds for the next message stored on
  any node.
- **Push preferences** (per user: messages, matches, likes, message previews) decide what is pushed to
  the user's devices. The notifications socket is the app open on screen, which chooses what to show:
  it still receives every notification that is not muted. Preferences are read by the push worker when
  it sends (services/push/service.py), not when a push is queued, so a change applies at once to pushes
  already waiting and queueing (once per notification) reads nothing more. Previews can only be turned
  off: with PUSH_PREVIEW_CHARS=0 the server puts no text in a push whatever the preference says.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pymongo.errors
from pymongo import ReturnDocument

from services.core import errors
from services.core.clock import iso, utcnow
from services.storage.documents import NOTIFICATION_DEFAULTS, conversation_mute, notification_preferences_document
from services.storage.store import STORE_DOWN_ERRORS, Doc, Store

if TYPE_CHECKING:
    from services.core.config import Settings

log = logging.getLogger("chat.push")

# How far ahead a mute may end; longer ones are muted until unmuted (`until: null`).
MAX_MUTE_AHEAD = dt.timedelta(days=365)
# Which preference lets each kind of notification be pushed.
PREFERENCE_OF_KIND = {"new_message": "messages", "new_match": "matches", "new_like": "likes"}


@dataclass(frozen=True)
class Mute:
    """A mute in force: until this time, or until unmuted (None)."""

    until: dt.datetime | None


@dataclass(frozen=True)
class Choices:
    """One user's push preferences (NOTIFICATION_DEFAULTS for a user who never changed one)."""

    messages: bool = True
    matches: bool = True
    likes: bool = True
    message_previews: bool = True

    def pushes(self, kind: str) -> bool:
        """Whether a notification of this kind may be pushed to the user's devices."""
        name = PREFERENCE_OF_KIND.get(kind)
        return name is None or bool(getattr(self, name))

    def as_dict(self) -> dict[str, bool]:
        return {name: bool(getattr(self, name)) for name in NOTIFICATION_DEFAULTS}


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def mute_of(conversation: Doc | None, user_id: int, now: dt.datetime | None = None) -> Mute | None:
    """The user's mute of the conversation in force at `now`, read from its document; None when not muted
    (never muted, unmuted, or muted until a time that has passed)."""
    entry = ((conversation or {}).get("mutes") or {}).get(str(user_id))
    if not isinstance(entry, dict):
        return None
    until = entry.get("until")
    if until is None:
        return Mute(None)
    until = _aware(until)
    return Mute(until) if until > (now or utcnow()) else None


def mute_view(conversation: Doc | None, user_id: int, now: dt.datetime | None = None) -> dict[str, Any]:
    """How the user sees their own mute of the conversation: `muted`, and `muted_until` (null while muted
    until unmuted, or when not muted). Only ever shown to that user."""
    mute = mute_of(conversation, user_id, now)
    return {"muted": mute is not None, "muted_until": iso(mute.until) if mute is not None else None}


async def muted_participants(
    store: Store,
    conversation_id: int,
    user_ids: Sequence[int],
    read: Callable[[int], Awaitable[Doc | None]] | None = None,
) -> set[int]:
    """Which of these participants have the conversation muted now: one point read of its `mutes`, by
    `read` when given (a read of the conversation document, with its `mutes`, made now: the chat's
    shares one query among the messages of one moment).

    When the store cannot answer, nobody counts as muted: the message is already stored and published,
    and a notification too many is better than one lost."""
    if not user_ids:
        return set()
    projection = {f"mutes.{user_id}": 1 for user_id in user_ids}
    try:
        if read is not None:
            doc = await read(conversation_id)
        else:
            doc = await store.conversations.find_one({"_id": conversation_id}, projection)
    except STORE_DOWN_ERRORS:
        log.warning("could not read the mutes of conversation %d: store unavailable", conversation_id)
        return set()
    now = utcnow()
    return {user_id for user_id in user_ids if mute_of(doc, user_id, now) is not None}


def _conversation_not_found() -> errors.NotFound:
    return errors.NotFound("Conversation not found", code="conversation_not_found")


class NotificationPreferences:
    """Mutes and push preferences, as the REST API sets them and the push worker reads them."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings

    # -- muting conversations ----------------------------------------------------------------------

    @staticmethod
    def _open_and_taking_part(user_id: int, conversation_id: int) -> Doc:
        """The filter of a conversation the user may mute: open, and theirs. Anything else (no such id,
        someone else's, closed by an unmatch or a block) is one same NotFound."""
        return {"_id": conversation_id, "participants": user_id, "status": "open"}

    async def mute(self, user_id: int, conversation_id: int, until: dt.datetime | None) -> dict[str, Any]:
        """Mute the conversation for the user until `until` (aware), or until unmuted (None); a time that
        has already passed unmutes it. Returns the mute as `mute_view` shows it, with `conversation_id`.

        Refusals: NotFound `conversation_not_found`; Invalid `validation_error` for a time more than
        MAX_MUTE_AHEAD ahead."""
        now = utcnow()
        key = f"mutes.{user_id}"
        if until is not None:
            until = until.astimezone(dt.UTC)
            # Stored with millisecond precision (BSON dates): answer what a later read will show.
            until = until.replace(microsecond=until.microsecond // 1000 * 1000)
            if until - now > MAX_MUTE_AHEAD:
                raise errors.Invalid(
                    "Mute ends too far ahead",
                    code="validation_error",
                    fields={"until": f"at most {MAX_MUTE_AHEAD.days} days ahead; null mutes until unmuted"},
                )
        if until is not None and until <= now:
            update: Doc = {"$unset": {key: ""}}
        else:
            update = {"$set": {key: conversation_mute(until, muted_at=now)}}
        result = await self._store.conversations.update_one(
            self._open_and_taking_part(user_id, conversation_id), update
        )
        if result.matched_count == 0:
            raise _conversation_not_found()
        muted = "$set" in update
        return {"conversation_id": conversation_id, "muted": muted, "muted_until": iso(until) if muted else None}

    async def unmute(self, user_id: int, conversation_id: int) -> None:
        """Unmute the conversation for the user (nothing to do when it was not muted); NotFound as `mute`."""
        result = await self._store.conversations.update_one(
            self._open_and_taking_part(user_id, conversation_id), {"$unset": {f"mutes.{user_id}": ""}}
        )
        if result.matched_count == 0:
            raise _conversation_not_found()

    async def mute_state(self, user_id: int, conversation_id: int) -> dict[str, Any]:
        """The user's mute of the conversation, as `mute` answers it; NotFound as `mute`."""
        doc = await self._store.conversations.find_one(
            self._open_and_taking_part(user_id, conversation_id), {f"mutes.{user_id}": 1}
        )
        if doc is None:
            raise _conversation_not_found()
        return {"conversation_id": conversation_id, **mute_view(doc, user_id)}

    # -- push preferences --------------------------------------------------------------------------

    async def choices(self, user_id: int) -> Choices:
        """The user's push preferences: one point read (the defaults when they never changed one)."""
        doc = await self._store.notification_preferences.find_one({"_id": user_id})
        return self._choices_of(doc)

    @staticmethod
    def _choices_of(doc: Doc | None) -> Choices:
        stored = doc or {}
        return Choices(**{name: bool(stored.get(name, default)) for name, default in NOTIFICATION_DEFAULTS.items()})

    def view(self, choices: Choices) -> dict[str, Any]:
        """The preferences as the API shows them, with whether this server puts text in pushes at all."""
        return {**choices.as_dict(), "previews_available": self._settings.push_preview_chars > 0}

    async def preferences(self, user_id: int) -> dict[str, Any]:
        return self.view(await self.choices(user_id))

    async def update_preferences(self, user_id: int, changes: Mapping[str, bool]) -> dict[str, Any]:
        """Change some preferences (the others keep their value); returns them all, as `preferences`."""
        unknown = set(changes) - set(NOTIFICATION_DEFAULTS)
        if unknown:
            raise errors.Invalid("Unknown preferences", fields=dict.fromkeys(sorted(unknown), "unknown preference"))
        if not changes:
            return await self.preferences(user_id)
        now = utcnow()
        update: Doc = {"$set": {**changes, "updated_at": now}}
        # A user's first change writes the whole document, as the factory shapes it.
        first = notification_preferences_document(user_id, updated_at=now, **changes)
        untouched = {name: value for name, value in first.items() if name not in update["$set"] and name != "_id"}
        if untouched:
            update["$setOnInsert"] = untouched
        for attempt in range(2):
            try:
                doc = await self._store.notification_preferences.find_one_and_update(
                    {"_id": user_id}, update, upsert=True, return_document=ReturnDocument.AFTER
                )
                break
            except pymongo.errors.DuplicateKeyError:
                if attempt:
                    raise  # two first changes of one user collide once at most: the retry updates
        return self.view(self._choices_of(doc))
