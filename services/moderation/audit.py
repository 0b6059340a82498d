"""The audit log: every moderator action, who took it, on what, about whom, when and why.

Written by the service that acts, after the action succeeded, one document per action (a repeated ban
is a second entry): the log answers "who did this" for every change a moderator can make, and "who read
this" for the reports whose evidence (private messages) a moderator opened. Entries are never changed
or removed by the server; the log is kept until an operator prunes it (docs/operations.md).
"""

from __future__ import annotations

import datetime as dt
import getpass
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING

from services.core.clock import iso_of
from services.moderation.paging import decode_cursor, encode_cursor
from services.storage.documents import audit_entry
from services.storage.store import Doc, Store

# What an entry's `action` says.
REPORT_VIEWED = "report_viewed"
REPORT_RESOLVED = "report_resolved"
USER_BANNED = "user_banned"
USER_UNBANNED = "user_unbanned"
MESSAGE_REMOVED = "message_removed"
MODERATOR_GRANTED = "moderator_granted"
MODERATOR_REVOKED = "moderator_revoked"


@dataclass(frozen=True)
class Actor:
    """Who acts: a moderator's account, or the operator at the command line (`id` None)."""

    id: int | None
    name: str


def command_line_actor() -> Actor:
    """The operator running `server.py grant-moderator` (or revoke-moderator), by their system login."""
    try:
        login = getpass.getuser()
    except (OSError, KeyError):
        login = "unknown"
    return Actor(None, f"command line ({login})")


class AuditLog:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def record(
        self,
        action: str,
        actor: Actor,
        *,
        target_type: str,
        target_id: int,
        user_id: int | None,
        note: str | None = None,
        conversation_id: int | None = None,
    ) -> None:
        entry = audit_entry(
            await self._store.next_id("audit_log"),
            action=action,
            actor_id=actor.id,
            actor=actor.name,
            target_type=target_type,
            target_id=target_id,
            conversation_id=conversation_id,
            user_id=user_id,
            note=note,
            at=dt.datetime.now(dt.UTC),
        )
        await self._store.audit_log.insert_one(entry)

    async def page(
        self, *, limit: int, cursor: str | None, oldest_first: bool = False, user_id: int | None = None
    ) -> Doc:
        """`{results, next_cursor}`: entries newest first (or oldest first), all or those about one user."""
        flt: Doc = {}
        if user_id is not None:
            flt["user_id"] = user_id
        if cursor is not None:
            last = decode_cursor(cursor, oldest_first)
            flt["_id"] = {"$gt": last} if oldest_first else {"$lt": last}
        order = ASCENDING if oldest_first else DESCENDING
        docs = await self._store.audit_log.find(flt).sort("_id", order).limit(limit + 1).to_list(None)
        more = len(docs) > limit
        docs = docs[:limit]
        next_cursor = encode_cursor(int(docs[-1]["_id"]), oldest_first) if more else None
        return {"results": [entry_view(d) for d in docs], "next_cursor": next_cursor}


def entry_view(doc: Doc) -> dict[str, Any]:
    return {
        "id": int(doc["_id"]),
        "action": doc["action"],
        "actor_id": doc.get("actor_id"),
        "actor": doc["actor"],
        "target_type": doc["target_type"],
        "target_id": int(doc["target_id"]),
        "conversation_id": doc.get("conversation_id"),
        "user_id": doc.get("user_id"),
        "note": doc.get("note"),
        "created_at": iso_of(doc["at"]),
    }
