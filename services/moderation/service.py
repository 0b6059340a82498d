"""ModerationService: what the edge calls for reports, the moderators' endpoints and the audit log.

Every moderator method takes the `Actor` that `moderator()` returned for the caller, so no moderator
action can be taken without the check, and each is recorded in the audit log by the module that acts.
"""

from __future__ import annotations

from typing import Any

from services.accounts.users import UserService
from services.chat.service import ChatService
from services.core import errors
from services.core.config import Settings
from services.core.text import clean_multiline
from services.matching.service import MatchingService
from services.media.store import MediaStore
from services.moderation.audit import MESSAGE_REMOVED, Actor, AuditLog
from services.moderation.bans import Bans, RevokeUser
from services.moderation.messages import MessageRemoval
from services.moderation.queue import ReportQueue
from services.moderation.reports import ReportFiling
from services.moderation.roles import ModeratorCheck
from services.realtime.counters import RateCounters
from services.realtime.events import Publisher
from services.storage.store import Doc, Store

MAX_REASON_CHARS = 500


class ModerationService:
    def __init__(
        self,
        store: Store,
        users: UserService,
        matching: MatchingService,
        chat: ChatService,
        media: MediaStore,
        events: Publisher,
        rates: RateCounters,
        settings: Settings,
        *,
        revoke_user: RevokeUser | None = None,
    ) -> None:
        self.audit = AuditLog(store)
        self.filing = ReportFiling(store, users, matching, chat, rates, settings)
        self.bans = Bans(store, matching, self.audit, revoke_user)
        self.queue = ReportQueue(store, users, media, self.bans, self.audit, settings)
        self.removal = MessageRemoval(store, chat, media, events)
        self.moderators = ModeratorCheck(store)

    # -- anyone ---------------------------------------------------------------------------------------

    async def report(
        self, reporter_id: int, reported_id: int, reason: str, message_ids: list[int], note: str | None
    ) -> dict[str, Any]:
        return await self.filing.file(reporter_id, reported_id, reason, message_ids, note)

    # -- moderators -----------------------------------------------------------------------------------

    async def moderator(self, user_id: int, claimed_role: object) -> Actor:
        """The caller as a moderator (token claim and account both), or Forbidden `not_a_moderator`."""
        return await self.moderators.require(user_id, claimed_role)

    async def reports(self, moderator: Actor, **query: Any) -> Doc:
        return await self.queue.page(**query)

    async def report_detail(self, moderator: Actor, report_id: int) -> dict[str, Any]:
        return await self.queue.detail(report_id, moderator)

    async def resolve(self, moderator: Actor, report_id: int, action: str, note: str | None) -> dict[str, Any]:
        return await self.queue.resolve(report_id, action, note, moderator)

    async def ban(self, moderator: Actor, user_id: int, reason: str) -> dict[str, Any]:
        return await self.bans.ban(user_id, _reason(reason), moderator)

    async def unban(self, moderator: Actor, user_id: int, reason: str) -> dict[str, Any]:
        return await self.bans.unban(user_id, _reason(reason), moderator)

    async def remove_message(self, moderator: Actor, conversation_id: int, message_id: int, note: str | None) -> None:
        removed = await self.removal.remove(conversation_id, message_id)
        await self.audit.record(
            MESSAGE_REMOVED,
            moderator,
            target_type="message",
            target_id=message_id,
            conversation_id=conversation_id,
            user_id=int(removed["sender_id"]),
            note=note,
        )

    async def audit_log(self, moderator: Actor, **query: Any) -> Doc:
        return await self.audit.page(**query)


def _reason(text: str) -> str:
    """A ban's reason: required, cleaned like any text people write (services/core/text.py)."""
    cleaned = clean_multiline(text).strip()
    if not cleaned:
        raise errors.Invalid("A reason is required", fields={"reason": "must not be blank"})
    if len(cleaned) > MAX_REASON_CHARS:
        raise errors.Invalid("Reason too long", fields={"reason": f"at most {MAX_REASON_CHARS} characters"})
    return cleaned
