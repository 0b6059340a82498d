"""The shapes of the documents the app stores, each built in one place.

The services, the tests that write fixtures straight to the store and the bench seeders all build their
documents here, so a field added to a stored document is added for all of them at once: a fixture can
never hold a document the server would not have written.

Each factory takes the ids already allocated (services/storage/store.py) and the time to record; none
of them reads or writes the store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from bson import ObjectId

from services.storage.store import Doc

# Matches no Argon2 hash, so an account stored with it cannot sign in: for accounts written straight to
# the store (fixtures, bench populations) that only ever use tokens minted for them.
UNUSABLE_HASH = "!"


def pair_key(a: int, b: int) -> str:
    """The key of an unordered pair of users, the same whichever way round: `matches.pair` is unique."""
    low, high = sorted((a, b))
    return f"{low}:{high}"


def user_document(user_id: int, username: str, *, password_hash: str, created_at: dt.datetime, **profile: Any) -> Doc:
    """An account; `profile` holds the optional profile fields (display_name, gender, birthdate...) and
    may override the defaults (interested_in)."""
    return {
        "_id": user_id,
        "username": username,
        # Usernames are unique whatever their case: the unique index is on this key.
        "username_key": username.lower(),
        "password_hash": password_hash,
        "picture": None,
        "created_at": created_at,
        "last_seen": None,
        "interested_in": [],
        **profile,
    }


def relation_document(from_id: int, to_id: int, *, created_at: dt.datetime) -> Doc:
    """One user's like, pass or block of another (the collection says which)."""
    return {"_id": ObjectId(), "from_id": from_id, "to_id": to_id, "created_at": created_at}


def match_document(
    match_id: int, a: int, b: int, conversation_id: int, *, created_at: dt.datetime, status: str = "active"
) -> Doc:
    """The match of two users; it names the id of the conversation that goes with it (see
    `conversation_document`), reserved when the match is created."""
    return {
        "_id": match_id,
        "pair": pair_key(a, b),
        "users": sorted((a, b)),
        "conversation_id": conversation_id,
        "status": status,
        "created_at": created_at,
    }


def conversation_document(
    conversation_id: int,
    participants: Iterable[int],
    match_id: int,
    *,
    created_at: dt.datetime,
    closed_at: dt.datetime | None = None,
) -> Doc:
    """A match's conversation with no message yet: open, or closed at `closed_at` when the match has
    already ended. `last_seq` then follows the newest message id, written behind the messages
    (services/chat/metadata.py)."""
    doc: Doc = {
        "_id": conversation_id,
        "participants": sorted(participants),
        "match_id": match_id,
        "status": "open" if closed_at is None else "closed",
        "created_at": created_at,
        "updated_at": created_at,
        "last_seq": 0,
    }
    if closed_at is not None:
        doc["closed_at"] = closed_at
    return doc


# What a user chose to be pushed (services/push/preferences.py): every kind is on until turned off.
NOTIFICATION_DEFAULTS: dict[str, bool] = {"messages": True, "matches": True, "likes": True, "message_previews": True}


def notification_preferences_document(user_id: int, *, updated_at: dt.datetime, **choices: bool) -> Doc:
    """One user's push preferences, `_id` the user's id; `choices` override NOTIFICATION_DEFAULTS. There is
    no document for a user who never changed one: the defaults apply."""
    unknown = set(choices) - set(NOTIFICATION_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown notification preferences: {sorted(unknown)}")
    return {"_id": user_id, **NOTIFICATION_DEFAULTS, **choices, "updated_at": updated_at}


def conversation_mute(until: dt.datetime | None, *, muted_at: dt.datetime) -> Doc:
    """A participant's mute of a conversation, kept in the conversation document under `mutes.<user id>`
    (beside `read_seq.<user id>`): muted until `until`, or until unmuted when None."""
    return {"until": until, "muted_at": muted_at}


# -- moderation (services/moderation) -------------------------------------------------------------------

# The `role` of an account that may use the moderator endpoints; granted only by `server.py
# grant-moderator`, never through the API.
MODERATOR_ROLE = "moderator"
# What an attachment's document keeps in a report's copy of its message: what it was, not the file.
EVIDENCE_ATTACHMENT_FIELDS = ("content_type", "size", "width", "height", "path")


def evidence_message(message: Doc, attachment: Doc | None, *, reported: bool) -> Doc:
    """A copy of a stored message inside a report (`reported`: one the reporter named, else context
    around one), kept whatever later happens to the message or to its sender's account."""
    copied_attachment = None
    if attachment is not None:
        copied_attachment = {"id": int(attachment["_id"])} | {
            key: attachment[key] for key in EVIDENCE_ATTACHMENT_FIELDS if key in attachment
        }
    return {
        "message_id": int(message["seq"]),
        "sender_id": int(message["sender_id"]),
        "content": str(message.get("content") or ""),
        "attachment": copied_attachment,
        "created_at": message["created_at"],
        "edited_at": message.get("edited_at"),
        "deleted_at": message.get("deleted_at"),
        "reported": reported,
    }


def report_document(
    report_id: int,
    *,
    reporter: Doc,
    reported: Doc,
    reason: str,
    note: str | None,
    conversation_id: int | None,
    message_ids: list[int],
    evidence: list[Doc],
    created_at: dt.datetime,
) -> Doc:
    """An open report of `reported` by `reporter` (their user documents). The usernames are copied: the
    accounts may be deleted before a moderator reads it. Resolving it adds `resolution` and `expires_at`."""
    return {
        "_id": report_id,
        "reporter_id": int(reporter["_id"]),
        "reporter_username": reporter["username"],
        "reported_id": int(reported["_id"]),
        "reported_username": reported["username"],
        "reason": reason,
        "note": note,
        "conversation_id": conversation_id,
        "message_ids": message_ids,
        "evidence": evidence,
        "status": "open",
        "created_at": created_at,
    }


def report_resolution(action: str, note: str | None, *, moderator_id: int | None, resolved_at: dt.datetime) -> Doc:
    """How a moderator closed a report, kept in the report under `resolution`."""
    return {"action": action, "note": note, "moderator_id": moderator_id, "at": resolved_at}


def ban_record(reason: str, *, by: int | None, banned_at: dt.datetime) -> Doc:
    """Why and by whom an account was banned, kept in the user's document under `ban` (beside
    `banned: true`, which the queries that hide banned accounts read)."""
    return {"reason": reason, "by": by, "at": banned_at}


def audit_entry(
    entry_id: int,
    *,
    action: str,
    actor_id: int | None,
    actor: str,
    target_type: str,
    target_id: int,
    user_id: int | None,
    note: str | None,
    at: dt.datetime,
    conversation_id: int | None = None,
) -> Doc:
    """One moderator action in the `audit_log`: who (`actor_id`, None for the command line, and a name
    that stays readable after the account is gone), what, on which target (a message's target id is its id
    in `conversation_id`), about which user, when, why."""
    return {
        "_id": entry_id,
        "action": action,
        "actor_id": actor_id,
        "actor": actor,
        "target_type": target_type,
        "target_id": target_id,
        "conversation_id": conversation_id,
        "user_id": user_id,
        "note": note,
        "at": at,
    }
