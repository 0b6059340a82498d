"""The moderators' side of reports: the queue, one report with its evidence, and resolving it.

Resolving records the action and a note, and starts the retention clock: the report, with its copy of the
messages, is removed REPORT_RETENTION_DAYS after its resolution (TTL index on `expires_at`). The action
`banned` also bans the reported user (bans.py); the others are records of what the moderator did or
decided: `dismissed` (no breach), `warned` (the user was warned, by whatever channel the operator uses),
`content_removed` (messages removed, with the message endpoint). A resolved report cannot be resolved
again (409): a second look is a new report.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, get_args

from pymongo import ASCENDING, DESCENDING

from services.accounts.users import UserService
from services.core import errors
from services.core.clock import iso, iso_of
from services.core.config import Settings
from services.media.store import MediaStore
from services.moderation.audit import REPORT_RESOLVED, REPORT_VIEWED, Actor, AuditLog
from services.moderation.bans import Bans
from services.moderation.paging import decode_cursor, encode_cursor
from services.moderation.reports import clean_note
from services.storage.documents import report_resolution
from services.storage.store import Doc, Store

ResolutionAction = Literal["dismissed", "warned", "content_removed", "banned"]
ACTIONS: tuple[str, ...] = get_args(ResolutionAction)
ReportStatus = Literal["open", "resolved"]
# The queue's rows leave out the copied messages: a page of 100 reports would carry up to 11 messages each.
QUEUE_FIELDS = {"evidence": 0}


def _report_not_found() -> errors.NotFound:
    return errors.NotFound("Report not found", code="report_not_found")


class ReportQueue:
    def __init__(
        self, store: Store, users: UserService, media: MediaStore, bans: Bans, audit: AuditLog, settings: Settings
    ) -> None:
        self._store = store
        self._users = users
        self._media = media
        self._bans = bans
        self._audit = audit
        self._retention = dt.timedelta(days=settings.report_retention_days)

    async def page(
        self,
        *,
        limit: int,
        cursor: str | None = None,
        oldest_first: bool = False,
        status: str | None = None,
        reason: str | None = None,
        reported_id: int | None = None,
    ) -> Doc:
        """`{results, next_cursor}`: reports newest (or oldest) first, filtered by status, reason and the
        reported user."""
        flt: Doc = {}
        if status is not None:
            flt["status"] = status
        if reported_id is not None:
            flt["reported_id"] = reported_id
        if reason is not None:
            flt["reason"] = reason
        if cursor is not None:
            last = decode_cursor(cursor, oldest_first)
            flt["_id"] = {"$gt": last} if oldest_first else {"$lt": last}
        order = ASCENDING if oldest_first else DESCENDING
        docs = await self._store.reports.find(flt, QUEUE_FIELDS).sort("_id", order).limit(limit + 1).to_list(None)
        more = len(docs) > limit
        docs = docs[:limit]
        people = await self._people(docs)
        return {
            "results": [self._row(d, people) for d in docs],
            "next_cursor": encode_cursor(int(docs[-1]["_id"]), oldest_first) if more else None,
        }

    async def detail(self, report_id: int, moderator: Actor) -> dict[str, Any]:
        """One report with its copied messages and both users; the read is audited (private messages)."""
        doc = await self._store.reports.find_one({"_id": report_id})
        if doc is None:
            raise _report_not_found()
        people = await self._people([doc])
        view = self._row(doc, people)
        view["note"] = doc.get("note")
        view["conversation_id"] = doc.get("conversation_id")
        view["message_ids"] = [int(m) for m in doc.get("message_ids", [])]
        view["messages"] = [self._evidence_view(e) for e in doc.get("evidence", [])]
        view["reports_against_reported"] = await self._store.reports.count_documents(
            {"reported_id": doc["reported_id"]}
        )
        await self._audit.record(
            REPORT_VIEWED, moderator, target_type="report", target_id=report_id, user_id=int(doc["reported_id"])
        )
        return view

    async def resolve(self, report_id: int, action: str, note: str | None, moderator: Actor) -> dict[str, Any]:
        """Close an open report with `action` (ACTIONS) and a note; `banned` also bans the reported user."""
        if action not in ACTIONS:
            raise errors.Invalid("Unknown action", fields={"action": f"one of {', '.join(ACTIONS)}"})
        note = clean_note(note)
        doc = await self._store.reports.find_one({"_id": report_id}, QUEUE_FIELDS)
        if doc is None:
            raise _report_not_found()
        if doc["status"] != "open":
            raise errors.Conflict("This report is already resolved", code="report_resolved")
        reported_id = int(doc["reported_id"])
        if action == "banned":
            await self._bans.ban(reported_id, note or f"report {report_id}: {doc['reason']}", moderator)
        now = dt.datetime.now(dt.UTC)
        resolution = report_resolution(action, note, moderator_id=moderator.id, resolved_at=now)
        done = await self._store.reports.update_one(
            {"_id": report_id, "status": "open"},
            {"$set": {"status": "resolved", "resolution": resolution, "expires_at": now + self._retention}},
        )
        if done.matched_count == 0:
            raise errors.Conflict("This report is already resolved", code="report_resolved")
        await self._audit.record(
            REPORT_RESOLVED, moderator, target_type="report", target_id=report_id, user_id=reported_id, note=note
        )
        doc.update(status="resolved", resolution=resolution)
        return self._row(doc, await self._people([doc]))

    # -- views ----------------------------------------------------------------------------------------

    async def _people(self, reports: list[Doc]) -> dict[int, Doc]:
        """The reporters' and reported users' documents, deleted ones included."""
        ids = {int(r[k]) for r in reports for k in ("reporter_id", "reported_id")}
        if not ids:
            return {}
        projection = {"username": 1, "picture": 1, "deleted": 1, "banned": 1}
        return {int(d["_id"]): d async for d in self._store.users.find({"_id": {"$in": list(ids)}}, projection)}

    def _person(self, user_id: int, username: str, people: dict[int, Doc]) -> dict[str, Any]:
        doc = people.get(user_id)
        if doc is None:
            return {"id": user_id, "username": username, "profile_picture": None, "deleted": True, "banned": False}
        return {
            **self._users.summary_of(doc),
            "deleted": bool(doc.get("deleted")),
            "banned": bool(doc.get("banned")),
        }

    def _row(self, doc: Doc, people: dict[int, Doc]) -> dict[str, Any]:
        resolution = doc.get("resolution")
        return {
            "id": int(doc["_id"]),
            "status": doc["status"],
            "reason": doc["reason"],
            "reporter": self._person(int(doc["reporter_id"]), doc["reporter_username"], people),
            "reported": self._person(int(doc["reported_id"]), doc["reported_username"], people),
            "message_count": len(doc.get("message_ids", [])),
            "created_at": iso_of(doc["created_at"]),
            "resolution": None
            if resolution is None
            else {
                "action": resolution["action"],
                "note": resolution.get("note"),
                "moderator_id": resolution.get("moderator_id"),
                "resolved_at": iso_of(resolution["at"]),
            },
        }

    def _evidence_view(self, entry: Doc) -> dict[str, Any]:
        attachment = entry.get("attachment")
        if attachment is not None:
            # The file itself is not copied: its URL answers 404 once the message is unsent or removed.
            attachment = {k: v for k, v in attachment.items() if k != "path"} | {
                "url": self._media.url(attachment.get("path"))
            }
        return {
            "message_id": int(entry["message_id"]),
            "sender_id": int(entry["sender_id"]),
            "content": entry.get("content", ""),
            "attachment": attachment,
            "created_at": iso_of(entry["created_at"]),
            "edited_at": iso(entry.get("edited_at")),
            "deleted_at": iso(entry.get("deleted_at")),
            "reported": bool(entry.get("reported")),
        }
