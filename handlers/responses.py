"""What the REST API answers, as pydantic models: the source of the API document's response schemas.

The services build their answers as plain dicts (services/accounts/users.py, services/chat/,
services/matching/service.py, services/push/service.py, handlers/errors.py for errors); these models say
field for field what those dicts hold. They are closed (`additionalProperties: false`): an answer that
grows a field fails the response tests until its model grows too. A field that is left out of an answer
rather than set to null defaults to `ABSENT`: it is not required, and the schema shows no default
(`AnswerSchema`).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from handlers.schemas import DeviceKind, Gender, Location
from services.core.text import MAX_FILE_NAME_CHARS
from services.media.content import ATTACHMENT_TYPES
from services.moderation.queue import ReportStatus, ResolutionAction
from services.moderation.reports import ReportReason

# The default of a field an answer may leave out; typed Any so that it fits a field of any type.
ABSENT: Any = None

Id = Annotated[int, Field(ge=1)]
Timestamp = Annotated[dt.datetime, Field(examples=["2023-05-15T14:30:45.000Z"])]
Url = Annotated[
    str, Field(json_schema_extra={"format": "uri"}, examples=["http://example.com/media/profile_pictures/x.jpg"])
]
ErrorCode = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", examples=["validation_error"])]
# The types an upload is stored as (services/media/content.py), a table read at run time.
AttachmentType = Annotated[str, WithJsonSchema({"type": "string", "enum": list(ATTACHMENT_TYPES)})]


class AnswerSchema(GenerateJsonSchema):
    """JSON Schema of answers: no defaults, since a field is either in an answer or not."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ErrorDetail(Answer):
    code: ErrorCode
    message: str
    fields: dict[str, str] = ABSENT
    """Per-field messages, keyed by the field's dotted path."""


class Error(Answer):
    """Every error answer: a snake_case `code` to branch on, a message for humans."""

    error: ErrorDetail


class TokenPair(Answer):
    access: str
    """JWT, for `Authorization: Bearer`"""
    refresh: str


class UserSummary(Answer):
    """A user inside other objects and frames."""

    id: Id
    username: str
    profile_picture: Url | None


class _PublicFields(UserSummary):
    display_name: str | None
    bio: str | None
    age: Annotated[int, Field(ge=0)] | None
    gender: Gender | None
    photos: list[Url]
    """The profile's photos in their owner's order; the first is `profile_picture`."""


class PublicProfile(_PublicFields):
    """`status` and `last_seen` only when the viewer shares an open conversation with the user."""

    status: Literal["online", "offline"] = ABSENT
    last_seen: Timestamp | None = ABSENT


class OwnProfile(_PublicFields):
    email: str | None
    birthdate: dt.date | None
    interested_in: set[Gender]
    location: Location | None
    """The stored location: the position sent, moved by a secret offset of the account's own (1.5 to 1.8 km)
    and snapped to a 1 km grid (docs/security.md, "Location privacy")."""
    age_min: int | None
    age_max: int | None
    created_at: Timestamp


class ProfilePicture(Answer):
    profile_picture: Url


class Photo(Answer):
    """One of the own profile's photos, as stored: re-encoded, without metadata, bounded in size."""

    id: Id
    url: Url
    thumbnails: dict[str, Url]
    """The URL of each thumbnail by its longest side in pixels (`"128"`, `"512"`): beside `url`, with the
    side before the extension (`x.jpg`, `x.128.jpg`)."""
    content_type: Literal["image/jpeg", "image/png", "image/webp"]
    width: Annotated[int, Field(ge=1)] | None
    """Pixels; null for a picture stored before photos were re-encoded."""
    height: Annotated[int, Field(ge=1)] | None


class Candidate(_PublicFields):
    """A public profile; `distance_km` when both people share a location."""

    distance_km: Annotated[int, Field(ge=1)] = ABSENT
    """Between the two stored (coarse) locations, as the bucket bound at or above it: 1, 2, 3, 5, 10, 15,
    20, 30, 50, then every 25 km ("within N km"; see docs/matching.md)."""


class DiscoverPage(Answer):
    """A page may be short (even empty) while `next_cursor` is not null: keep going until it is."""

    results: list[Candidate]
    next_cursor: str | None


class LikeRecord(Answer):
    user_id: Id
    created_at: Timestamp


class Match(Answer):
    id: Id
    user: UserSummary
    conversation_id: Id
    created_at: Timestamp


class LikeAnswer(Answer):
    """`match` is set when the like was mutual (and the match is still active)."""

    like: LikeRecord
    match: Match | None


class PassAnswer(Answer):
    pass_: LikeRecord = Field(alias="pass")


class BlockAnswer(Answer):
    block: LikeRecord


class ReceivedLike(Answer):
    user: UserSummary
    liked_at: Timestamp


class ReceivedLikesPage(Answer):
    results: list[ReceivedLike]
    next_cursor: str | None


class BlockEntry(Answer):
    user: UserSummary
    created_at: Timestamp


class Attachment(Answer):
    id: Id
    url: Url
    content_type: AttachmentType
    size: Annotated[int, Field(ge=1)]
    name: Annotated[str, Field(min_length=1, max_length=MAX_FILE_NAME_CHARS)] = ABSENT
    """The file's name as the uploader gave it (`?name=` of the upload), cleaned; absent when none was given.
    Text to show, never markup or a path."""


class Message(Answer):
    """The seed's message object, as it now is; `client_id` when the sender gave one, `edited_at` once
    edited, and for a message its sender unsent a placeholder: `content` empty, `attachment` null,
    `deleted` true and `deleted_at`."""

    id: Id
    """Counts up from 1 within the conversation, in storage order."""
    sender_id: Id
    sender_username: str
    sender_profile_picture: Url | None
    content: str
    created_at: Timestamp
    is_read: bool
    """Read by another participant."""
    attachment: Attachment | None
    conversation_id: Id
    client_id: Annotated[str, Field(max_length=64)] = ABSENT
    edited_at: Timestamp = ABSENT
    """When its sender last edited it."""
    deleted: Literal[True] = ABSENT
    """Its sender unsent it: its text and attachment are erased."""
    deleted_at: Timestamp = ABSENT


class MessageEditedEvent(Answer):
    """A message was edited by its sender: the `message_edited` frame, on the conversation's sockets and in
    `MessagePage.events`. `event_id` is the edit's own place in the conversation's order."""

    type: Literal["message_edited"]
    event_id: Id
    """Resume with `?after=` the highest id received, a message's or an event's."""
    message_id: Id
    message: Message
    """The message as it is when the frame is sent (a replay of an edit shows a later edit or unsend too)."""


class MessageDeletedEvent(Answer):
    """A message was unsent by its sender: the `message_deleted` frame, on the conversation's sockets and in
    `MessagePage.events`. `event_id` is the unsend's own place in the conversation's order."""

    type: Literal["message_deleted"]
    event_id: Id
    """Resume with `?after=` the highest id received, a message's or an event's."""
    message_id: Id
    message: Message
    """The placeholder the message now is."""


LifecycleEvent = Annotated[MessageEditedEvent | MessageDeletedEvent, Field(discriminator="type")]


class MessagePage(Answer):
    """A page of history. Edits and unsends take ids of their own in the conversation's order, which
    `results` never holds (nor the id that seals a closed conversation, nor one skipped as a hole). A page
    read with `after` whose range holds such ids lists the edits and unsends in `events` and says in
    `last_id` where it ends: continue with `after=last_id` when it is there, else with the last message's
    id."""

    results: list[Message]
    """Oldest first, each as it now is."""
    has_more: bool
    """More messages lie beyond, in the paging direction."""
    events: list[LifecycleEvent] = ABSENT
    """The edits and unsends stored in this page's range (of messages before it or in it), oldest first, as
    the sockets receive them; one per message, its latest."""
    last_id: Annotated[int, Field(ge=0)] = ABSENT
    """The last id this page covers: a message's, an event's or a skipped one's."""


class Conversation(Answer):
    id: Id
    participants: list[UserSummary]
    last_message: Message | None
    unread_count: Annotated[int, Field(ge=0)]
    updated_at: Timestamp
    status: Literal["open", "closed"]
    match_id: Id | None
    muted: bool
    """Whether you muted it (only you see your own mute)."""
    muted_until: Timestamp | None
    """When your mute ends by itself; null while muted until unmuted, and when not muted."""


class ReadReceipt(Answer):
    """Who read up to which message: the `read_receipt` frame, on the sockets and in `ReadAnswer`."""

    type: Literal["read_receipt"]
    message_id: Id
    user_id: Id
    username: str
    timestamp: Timestamp


class ReadAnswer(Answer):
    """`read_receipt` is the frame broadcast to the conversation; null when nothing moved."""

    message_id: Id
    read_receipt: ReadReceipt | None


class Device(Answer):
    """A push target of the current user: `endpoint` for `webpush`, `url` for `webhook`."""

    id: Id
    kind: DeviceKind
    endpoint: str = ABSENT
    """The push service URL (`webpush`)."""
    url: str = ABSENT
    """The gateway URL (`webhook`)."""
    created_at: Timestamp


class ConversationMute(Answer):
    """Your mute of a conversation: only you see it. While muted, its messages make no `new_message`
    notification and no push for you; they still arrive on its sockets and count as unread."""

    conversation_id: Id
    muted: bool
    muted_until: Timestamp | None
    """When the mute ends by itself; null while muted until unmuted, and when not muted."""


class NotificationPreferences(Answer):
    """What is pushed to your devices while you have no socket open (the notifications socket is not
    affected). Every kind is on until turned off."""

    messages: bool
    """Pushes of new messages (muted conversations make none whatever this says)."""
    matches: bool
    """Pushes of new matches."""
    likes: bool
    """Pushes of new likes."""
    message_previews: bool
    """Whether message pushes may carry the sender's name and the start of the text; only where
    `previews_available`."""
    previews_available: bool
    """Whether this server puts any text in pushes (PUSH_PREVIEW_CHARS): when false, no push carries text,
    whatever `message_previews` says."""


class VapidPublicKey(Answer):
    public_key: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{87}$")]
    """base64url of the uncompressed P-256 point: `applicationServerKey` for `PushManager.subscribe()`."""


class Liveness(Answer):
    status: Literal["ok"]


class Readiness(Answer):
    status: Literal["ok", "unavailable"]
    checks: dict[str, bool]


# -- moderation (services/moderation) -------------------------------------------------------------------


class ReportReceipt(Answer):
    """The report as filed. The reported user is now blocked for you; they are never told of the report."""

    id: Id
    user_id: Id
    """The reported user."""
    reason: ReportReason
    message_ids: list[Id]
    """The reported messages, ids in your conversation with them."""
    note: str | None
    created_at: Timestamp


class ModeratedUser(UserSummary):
    """A user as moderators see them in a report: deleted accounts keep the name they had."""

    deleted: bool
    banned: bool


class ReportResolutionView(Answer):
    action: ResolutionAction
    note: str | None
    moderator_id: Id | None
    resolved_at: Timestamp


class ReportRow(Answer):
    """A report in the moderators' queue."""

    id: Id
    status: ReportStatus
    reason: ReportReason
    reporter: ModeratedUser
    reported: ModeratedUser
    message_count: Annotated[int, Field(ge=0)]
    """How many messages the reporter named (their copies, with context, are in the report's detail)."""
    created_at: Timestamp
    resolution: ReportResolutionView | None


class ReportQueuePage(Answer):
    results: list[ReportRow]
    next_cursor: str | None


class EvidenceAttachment(Answer):
    """What a reported message carried: the file is not copied, so `url` answers 404 once it is erased."""

    id: Id
    content_type: AttachmentType
    size: Annotated[int, Field(ge=0)]
    width: Annotated[int, Field(ge=1)] = ABSENT
    height: Annotated[int, Field(ge=1)] = ABSENT
    url: Url | None


class EvidenceMessage(Answer):
    """A message as it was stored when the report was filed, whatever happened to it since."""

    message_id: Id
    sender_id: Id
    content: str
    attachment: EvidenceAttachment | None
    created_at: Timestamp
    edited_at: Timestamp | None
    deleted_at: Timestamp | None
    reported: bool
    """Named by the reporter; the others are context around those."""


class ReportDetail(ReportRow):
    note: str | None
    """The reporter's note."""
    conversation_id: Id | None
    message_ids: list[Id]
    messages: list[EvidenceMessage]
    """Oldest first: the reported messages and up to 5 messages either side of each."""
    reports_against_reported: Annotated[int, Field(ge=1)]
    """Reports of the reported user, this one included, still kept."""


class BanDetail(Answer):
    reason: str
    banned_by: Id | None
    banned_at: Timestamp


class BanStatus(Answer):
    user_id: Id
    banned: bool
    ban: BanDetail | None


class AuditEntry(Answer):
    """One moderator action. `actor_id` is null for the operator's command line."""

    id: Id
    action: Annotated[str, Field(pattern=r"^[a-z][a-z_]*$", examples=["user_banned"])]
    actor_id: Id | None
    actor: str
    target_type: Literal["report", "user", "message"]
    target_id: Id
    conversation_id: Id | None
    """The conversation of a removed message (its `target_id` is the message's id in it)."""
    user_id: Id | None
    """The user the action is about: reported, banned, or whose message was removed."""
    note: str | None
    created_at: Timestamp


class AuditPage(Answer):
    results: list[AuditEntry]
    next_cursor: str | None
