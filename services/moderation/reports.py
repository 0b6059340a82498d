"""Filing a report: who may report whom, for what, and the copy of the messages it is about.

Anyone who has seen a user may report them: a discover candidate, someone who liked them or whom they
liked, a match, current or former (services/accounts/visibility.py, blocks either way included: someone
blocked may still be reported). Anyone else gets exactly the 404 of an id nobody has.

A report blocks the reported user for the reporter at once, with matching's own block, so the pair's
conversation closes exactly as a block closes it. The reported user is never told: no notification, and
nothing of theirs (an answer, a frame) says a report exists.

Evidence. The messages named (`message_ids`, ids in the pair's conversation, sent by the reported user)
are copied into the report with up to CONTEXT_MESSAGES messages either side, as they are stored at report
time (text, attachment metadata, times), so a later unsend, edit or account deletion changes nothing of
the report. The copy is kept until REPORT_RETENTION_DAYS after the report is resolved (a TTL index on
`expires_at`, services/storage/store.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, get_args

from services.accounts.users import UserService
from services.chat.service import ChatService
from services.core import errors
from services.core.clock import iso_of
from services.core.config import Settings
from services.core.text import clean_multiline
from services.matching.service import MatchingService, pair_key
from services.realtime.counters import Rate, RateCounters, check_rate
from services.storage.documents import evidence_message, report_document
from services.storage.store import Doc, Store

# Why someone may be reported (docs/security.md says what each means).
ReportReason = Literal[
    "spam",
    "harassment",
    "hate",
    "sexual_content",
    "underage",
    "scam",
    "impersonation",
    "violence",
    "other",
]
REASONS: tuple[str, ...] = get_args(ReportReason)
MAX_REPORTED_MESSAGES = 10
MAX_NOTE_CHARS = 1000
# Messages copied on each side of a reported one, found among the ids this far on each side (edits and
# unsends take ids of their own, and are no messages).
CONTEXT_MESSAGES = 5
CONTEXT_SCAN_IDS = 15
DAY_S = 86_400.0


def report_rate(settings: Settings) -> Rate:
    return Rate("reports", settings.reports_per_day, DAY_S, "reports")


def clean_note(note: str | None, limit: int = MAX_NOTE_CHARS) -> str | None:
    """Free text of a reporter or a moderator: controls and invisible characters removed, trimmed; None
    when nothing is left. Invalid `note_too_long` past `limit` characters."""
    if note is None:
        return None
    cleaned = clean_multiline(note).strip()
    if len(cleaned) > limit:
        raise errors.Invalid(f"Note longer than {limit} characters", code="note_too_long", fields={"note": "too long"})
    return cleaned or None


def _user_not_found() -> errors.NotFound:
    # Byte for byte what an unknown user id gets from every other endpoint.
    return errors.NotFound("User not found", code="user_not_found")


def _message_not_found() -> errors.NotFound:
    return errors.NotFound(
        "No such message between you and this user",
        code="message_not_found",
        fields={"message_ids": "not a message of your conversation with this user"},
    )


class ReportFiling:
    def __init__(
        self,
        store: Store,
        users: UserService,
        matching: MatchingService,
        chat: ChatService,
        rates: RateCounters,
        settings: Settings,
    ) -> None:
        self._store = store
        self._users = users
        self._matching = matching
        self._chat = chat
        self._rates = rates
        self._rate = report_rate(settings)

    async def file(
        self, reporter_id: int, reported_id: int, reason: str, message_ids: list[int], note: str | None
    ) -> dict[str, Any]:
        """Store a report, block the reported user for the reporter, and answer the reporter's receipt."""
        if reporter_id == reported_id:
            raise errors.Invalid("You cannot report yourself", code="self_target", fields={"user_id": "is you"})
        if reason not in REASONS:
            raise errors.Invalid("Unknown reason", fields={"reason": f"one of {', '.join(REASONS)}"})
        if len(message_ids) > MAX_REPORTED_MESSAGES:
            raise errors.Invalid("Too many messages", fields={"message_ids": f"at most {MAX_REPORTED_MESSAGES}"})
        note = clean_note(note)
        # Spent before anything is looked up: probing ids through reports costs the same budget.
        await check_rate(self._rates, self._rate, reporter_id)
        # Who may not report gets the answer for an id nobody has, after the same reads.
        if not await self._users.visibility.may_view(reporter_id, reported_id):
            raise _user_not_found()
        accounts = {
            int(d["_id"]): d
            async for d in self._store.users.find(
                {"_id": {"$in": [reporter_id, reported_id]}, "deleted": {"$ne": True}}, {"username": 1}
            )
        }
        if reported_id not in accounts or reporter_id not in accounts:
            raise _user_not_found()
        ids = list(dict.fromkeys(message_ids))
        conversation_id = await self._conversation_of(reporter_id, reported_id)
        evidence = await self._evidence(conversation_id, reported_id, ids) if ids else []
        # Blocked before the report is stored: a retry after a failure in between repeats the block
        # (idempotent) rather than leaving a stored report without it.
        await self._matching.block(reporter_id, reported_id)
        now = dt.datetime.now(dt.UTC)
        report = report_document(
            await self._store.next_id("reports"),
            reporter=accounts[reporter_id],
            reported=accounts[reported_id],
            reason=reason,
            note=note,
            conversation_id=conversation_id if ids else None,
            message_ids=ids,
            evidence=evidence,
            created_at=now,
        )
        await self._store.reports.insert_one(report)
        return {
            "id": int(report["_id"]),
            "user_id": reported_id,
            "reason": reason,
            "message_ids": ids,
            "note": note,
            "created_at": iso_of(now),
        }

    async def _conversation_of(self, a: int, b: int) -> int | None:
        """The id of the pair's conversation (one per match, one match per pair), or None."""
        match = await self._store.matches.find_one({"pair": pair_key(a, b)}, {"conversation_id": 1})
        return None if match is None else int(match["conversation_id"])

    async def _evidence(self, conversation_id: int | None, reported_id: int, ids: list[int]) -> list[Doc]:
        """Copies of the reported messages and of up to CONTEXT_MESSAGES messages on each side of each."""
        if conversation_id is None:
            raise _message_not_found()
        window = {seq for mid in ids for seq in range(max(1, mid - CONTEXT_SCAN_IDS), mid + CONTEXT_SCAN_IDS + 1)}
        stored = await self._chat.ids.at(conversation_id, window)
        messages = sorted(seq for seq, doc in stored.items() if not doc.get("hole"))
        chosen: set[int] = set()
        for mid in ids:
            doc = stored.get(mid)
            if doc is None or doc.get("hole"):
                raise _message_not_found()
            if int(doc["sender_id"]) != reported_id:
                raise errors.Invalid(
                    "Only the reported user's messages can be reported",
                    code="not_their_message",
                    fields={"message_ids": f"message {mid} was not sent by this user"},
                )
            at = messages.index(mid)
            chosen.update(messages[max(0, at - CONTEXT_MESSAGES) : at + CONTEXT_MESSAGES + 1])
        attachment_ids = [stored[s]["attachment_id"] for s in chosen if stored[s].get("attachment_id") is not None]
        attachments: dict[Any, Doc] = {}
        if attachment_ids:
            attachments = {a["_id"]: a async for a in self._store.attachments.find({"_id": {"$in": attachment_ids}})}
        return [
            evidence_message(stored[s], attachments.get(stored[s].get("attachment_id")), reported=s in ids)
            for s in sorted(chosen)
        ]
