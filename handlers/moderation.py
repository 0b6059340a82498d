"""Reports over REST, and the moderators' endpoints: the queue, resolving, bans, removing messages, the
audit log (services/moderation).

Every `/api/moderation/` endpoint asks, before reading anything else of the request, for a token whose
`role` claim is `moderator` and an account that still holds the role (403 `not_a_moderator` otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field, StrictStr

from handlers.base import BaseHandler
from handlers.contract import Query, Reply, Tag, int_query, operation
from handlers.responses import AuditPage, BanStatus, ReportDetail, ReportQueuePage, ReportReceipt, ReportRow
from handlers.schemas import PositiveId, Strict
from services.core import errors
from services.moderation.audit import Actor
from services.moderation.paging import MAX_CURSOR_CHARS
from services.moderation.queue import ResolutionAction
from services.moderation.reports import MAX_NOTE_CHARS, MAX_REPORTED_MESSAGES, REASONS, ReportReason
from services.moderation.service import MAX_REASON_CHARS

API_TAG = Tag("moderation", "Reporting users; for moderators: the report queue, bans, removing messages, the audit log")
DEFAULT_PAGE = 20
MAX_PAGE = 100
STATUSES = ("open", "resolved")
ORDERS = ("newest", "oldest")
MODERATORS_ONLY = {403: "`not_a_moderator`: the token has no moderator role, or the account no longer holds it."}

Note = Annotated[StrictStr, Field(max_length=MAX_NOTE_CHARS)]


class ReportBody(Strict):
    """`reason`: spam, harassment, hate, sexual_content, underage, scam, impersonation, violence or other.
    `message_ids`: messages the reported user sent you, ids in your conversation with them (copied into the
    report with the messages around them). `note`: what you want moderators to know."""

    user_id: PositiveId
    reason: ReportReason
    message_ids: Annotated[list[PositiveId], Field(max_length=MAX_REPORTED_MESSAGES)] = Field(default_factory=list)
    note: Note | None = None


class ResolveBody(Strict):
    """`action`: `dismissed`, `warned`, `content_removed`, or `banned` (which also bans the reported user)."""

    action: ResolutionAction
    note: Note | None = None


class BanBody(Strict):
    """Why: kept with the ban and in the audit log."""

    reason: Annotated[StrictStr, Field(min_length=1, max_length=MAX_REASON_CHARS)]


def enum_query(name: str, values: Sequence[str], description: str) -> Query:
    return Query(name, description, {"type": "string", "enum": list(values)})


PAGE = int_query("limit", 1, MAX_PAGE, DEFAULT_PAGE, "Page size.")
CURSOR = Query(
    "cursor",
    "`next_cursor` of the previous page (opaque), with the same `order`; absent for the first page.",
    {"type": "string", "maxLength": MAX_CURSOR_CHARS, "pattern": "^[A-Za-z0-9_-]*$"},
)
ORDER = enum_query("order", ORDERS, "`newest` first (the default) or `oldest` first.")
USER_FILTER = int_query("user_id", 1, 2**53, None, "Only those about this user.")


class ReportsHandler(BaseHandler):
    @operation(
        "report",
        body=ReportBody,
        responses={201: Reply("Reported; the user is blocked for you.", ReportReceipt)},
        errors=(503,),
        notes={
            400: "`self_target`, `not_their_message` (a message of yours), `note_too_long` or invalid fields.",
            404: "`user_not_found` (also for someone you have never seen); `message_not_found`.",
            429: "`rate_limited`: REPORTS_PER_DAY is spent.",
        },
    )
    async def post(self) -> None:
        """Report a user.

        For anyone you have seen: a discover candidate, someone who liked you or whom you liked, a match
        or a former match. The reported messages, with up to 5 messages either side, are copied into the
        report. The user is blocked for you at once (as `POST /api/blocks/`) and is never told.
        """
        reporter_id = self.require_user()
        body = self.json_body(ReportBody)
        receipt = await self.services.moderation.report(
            reporter_id, body.user_id, body.reason, body.message_ids, body.note
        )
        self.send_json(receipt, status=201)


class ModeratorHandler(BaseHandler):
    async def require_moderator(self) -> Actor:
        """The caller as a moderator: 401 without a usable token, 403 unless a moderator (claim and account)."""
        user_id = self.require_user()
        claims = self.services.tokens.decode(self.bearer_token(), "access")
        return await self.services.moderation.moderator(user_id, claims.get("role"))

    def choice(self, name: str, values: Sequence[str], default: str | None) -> str | None:
        raw = self.get_query_argument(name, None) or None
        if raw is None:
            return default
        if raw not in values:
            raise errors.Invalid(f"Unknown `{name}`", fields={name: f"one of {', '.join(values)}"})
        return raw

    def cursor_argument(self) -> str | None:
        cursor = self.get_query_argument("cursor", None) or None
        if cursor is not None and len(cursor) > MAX_CURSOR_CHARS:
            raise errors.Invalid("Invalid cursor", code="invalid_cursor", fields={"cursor": "too long"})
        return cursor

    def paging(self) -> dict[str, Any]:
        limit = self.int_argument("limit", DEFAULT_PAGE, low=1, high=MAX_PAGE)
        return {
            "limit": limit,
            "cursor": self.cursor_argument(),
            "oldest_first": self.choice("order", ORDERS, "newest") == "oldest",
        }


class ReportQueueHandler(ModeratorHandler):
    @operation(
        "listReports",
        query=(
            enum_query("status", STATUSES, "Only open or only resolved reports."),
            enum_query("reason", REASONS, "Only reports for this reason."),
            int_query("user_id", 1, 2**53, None, "Only reports of this user."),
            ORDER,
            PAGE,
            CURSOR,
        ),
        responses={200: Reply("A page of reports.", ReportQueuePage)},
        errors=(503,),
        notes={**MODERATORS_ONLY, 400: "`invalid_cursor` or a parameter out of range."},
    )
    async def get(self) -> None:
        """The report queue (moderators).

        Newest first unless `order=oldest`; the rows leave out the copied messages (see a report's detail).
        """
        moderator = await self.require_moderator()
        page = await self.services.moderation.reports(
            moderator,
            status=self.choice("status", STATUSES, None),
            reason=self.choice("reason", REASONS, None),
            reported_id=self.int_argument("user_id", None, low=1, high=2**53),
            **self.paging(),
        )
        self.send_json(page)


class ReportHandler(ModeratorHandler):
    @operation(
        "getReport",
        path={"report_id": "The report's id."},
        responses={200: Reply("The report with its copied messages.", ReportDetail)},
        errors=(503,),
        notes={**MODERATORS_ONLY, 404: "`report_not_found`."},
    )
    async def get(self, report_id: str) -> None:
        """One report, with the reported messages and their context (moderators; the read is audited)."""
        moderator = await self.require_moderator()
        self.send_json(await self.services.moderation.report_detail(moderator, int(report_id)))


class ResolveHandler(ModeratorHandler):
    @operation(
        "resolveReport",
        path={"report_id": "The report's id."},
        body=ResolveBody,
        responses={200: Reply("Resolved.", ReportRow)},
        errors=(503,),
        notes={
            **MODERATORS_ONLY,
            404: "`report_not_found`; with `banned`, `user_not_found` when the account is gone.",
            409: "`report_resolved`: it already was.",
        },
    )
    async def post(self, report_id: str) -> None:
        """Resolve a report (moderators).

        Its retention starts: it is removed REPORT_RETENTION_DAYS later, with its copied messages.
        """
        moderator = await self.require_moderator()
        body = self.json_body(ResolveBody)
        self.send_json(await self.services.moderation.resolve(moderator, int(report_id), body.action, body.note))


class BanHandler(ModeratorHandler):
    @operation(
        "banUser",
        path={"user_id": "The user's id."},
        body=BanBody,
        responses={200: Reply("Banned (also when already banned).", BanStatus)},
        errors=(503,),
        notes={**MODERATORS_ONLY, 400: "`self_target` or invalid fields.", 404: "`user_not_found`."},
    )
    async def post(self, user_id: str) -> None:
        """Ban a user (moderators).

        Their tokens stop working and their sockets close (4002) on every node, they cannot sign in, their
        matches end and conversations close (4001 for the other side), and they leave discover and likes.
        """
        moderator = await self.require_moderator()
        body = self.json_body(BanBody)
        self.send_json(await self.services.moderation.ban(moderator, int(user_id), body.reason))


class UnbanHandler(ModeratorHandler):
    @operation(
        "unbanUser",
        path={"user_id": "The user's id."},
        body=BanBody,
        responses={200: Reply("Not banned (also when they were not).", BanStatus)},
        errors=(503,),
        notes={**MODERATORS_ONLY, 404: "`user_not_found`."},
    )
    async def post(self, user_id: str) -> None:
        """Lift a user's ban (moderators): they can sign in again; ended matches stay ended."""
        moderator = await self.require_moderator()
        body = self.json_body(BanBody)
        self.send_json(await self.services.moderation.unban(moderator, int(user_id), body.reason))


class RemoveMessageHandler(ModeratorHandler):
    @operation(
        "removeMessage",
        path={"conversation_id": "The conversation's id.", "message_id": "The message's id in it."},
        responses={204: Reply("Removed (also when it already was).")},
        errors=(503,),
        notes={**MODERATORS_ONLY, 404: "`conversation_not_found` or `message_not_found`."},
    )
    async def delete(self, conversation_id: str, message_id: str) -> None:
        """Remove a message for everyone (moderators).

        Erased as an unsend erases it (text, attachment and its files), in an open or a closed conversation;
        participants of an open one get `message_deleted`.
        """
        moderator = await self.require_moderator()
        await self.services.moderation.remove_message(moderator, int(conversation_id), int(message_id), None)
        self.set_status(204)
        self.finish()


class AuditHandler(ModeratorHandler):
    @operation(
        "auditLog",
        query=(USER_FILTER, ORDER, PAGE, CURSOR),
        responses={200: Reply("A page of the audit log.", AuditPage)},
        errors=(503,),
        notes={**MODERATORS_ONLY, 400: "`invalid_cursor` or a parameter out of range."},
    )
    async def get(self) -> None:
        """The audit log (moderators): every moderator action, newest first unless `order=oldest`."""
        moderator = await self.require_moderator()
        page = await self.services.moderation.audit_log(
            moderator, user_id=self.int_argument("user_id", None, low=1, high=2**53), **self.paging()
        )
        self.send_json(page)


routes: list[tuple[str, Any]] = [
    (r"/api/reports/", ReportsHandler),
    (r"/api/moderation/reports/", ReportQueueHandler),
    (r"/api/moderation/reports/([0-9]{1,15})/", ReportHandler),
    (r"/api/moderation/reports/([0-9]{1,15})/resolve/", ResolveHandler),
    (r"/api/moderation/users/([0-9]{1,15})/ban/", BanHandler),
    (r"/api/moderation/users/([0-9]{1,15})/unban/", UnbanHandler),
    (r"/api/moderation/messages/([0-9]{1,15})/([0-9]{1,15})/", RemoveMessageHandler),
    (r"/api/moderation/audit/", AuditHandler),
]
