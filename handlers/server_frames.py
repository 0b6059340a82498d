"""What the server sends on the two WebSockets, as pydantic models, and what each socket is.

The frames clients send are declared with their handlers (handlers/frames.py); these are the other way.
The services build them as plain dicts (services/chat/, services/realtime/, services/matching/service.py,
`ErrorReport.frame` in handlers/errors.py); these models say field for field what those dicts hold, the
API document's WebSocket section lists them, and the tests validate real frames against their schemas.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from handlers.responses import (
    ABSENT,
    Answer,
    ErrorCode,
    Id,
    Message,
    MessageDeletedEvent,
    MessageEditedEvent,
    ReadReceipt,
    Timestamp,
    UserSummary,
)


class MessageEvent(Answer):
    """A stored message, to every socket of the conversation (the sender's too: that is how it learns the
    id); a socket opened with `?after=` first receives the messages stored since."""

    type: Literal["message"]
    message: Message


class TypingEvent(Answer):
    """Whether another participant is typing; `false` also when they went silent, sent or left."""

    type: Literal["typing"]
    user_id: Id
    username: str
    is_typing: bool


class StatusEvent(Answer):
    """Another participant came online or went offline; a socket receives each one's current status as it
    opens."""

    type: Literal["status"]
    user_id: Id
    username: str
    status: Literal["online", "offline"]
    timestamp: Timestamp


class PongEvent(Answer):
    """The answer to a `ping` frame."""

    type: Literal["pong"]


class ErrorEvent(Answer):
    """A frame the server refused; the socket stays open."""

    type: Literal["error"]
    code: ErrorCode
    message: str
    retry_after_ms: Annotated[int, Field(ge=1)] = ABSENT
    """When rate limited: how long to wait."""
    client_id: str = ABSENT
    """The refused message's `client_id`, when it had one."""


class NotifiedMessage(Answer):
    id: Id
    conversation_id: Id
    sender: UserSummary
    content: str
    """In a replay (`?after=`), the text as it now is: "" once unsent."""
    created_at: Timestamp
    edited_at: Timestamp = ABSENT
    """In a replay: the message was edited since (`content` is the new text)."""
    deleted: Literal[True] = ABSENT
    """In a replay: the message was unsent since."""


class NewMessage(Answer):
    """Someone sent the user a message."""

    type: Literal["new_message"]
    timestamp: Timestamp
    message: NotifiedMessage


class NotifiedMatch(Answer):
    id: Id
    user: UserSummary
    """The other person."""
    created_at: Timestamp
    conversation_id: Id


class NewMatch(Answer):
    """A like became mutual: a match and its conversation."""

    type: Literal["new_match"]
    timestamp: Timestamp
    match: NotifiedMatch


class NewLike(Answer):
    """Someone liked the user."""

    type: Literal["new_like"]
    timestamp: Timestamp
    liker: UserSummary


class MatchEnded(Answer):
    """A match of the user ended, whoever ended it and however (unmatch, block, report, ban, account
    deletion): the same frame to both people. Its conversation is closed."""

    type: Literal["match_ended"]
    conversation_id: Id
    match_id: Id
    user_id: Id
    """The other person."""
    timestamp: Timestamp


class ConversationRead(Answer):
    """The user marked a conversation read up to `message_id` (on any of their devices): its unread count
    is 0 up to there."""

    type: Literal["conversation_read"]
    conversation_id: Id
    message_id: Id
    timestamp: Timestamp


class NotificationEvent(Answer):
    """A notification for the user of the socket. `id` counts up by one per notification of the user; a
    socket opened with `?after=<id>` first receives the ones kept since (NOTIFICATION_RETENTION)."""

    type: Literal["notification"]
    id: Id
    notification: Annotated[
        NewMessage | NewMatch | NewLike | MatchEnded | ConversationRead, Field(discriminator="type")
    ]


class NotificationsTruncated(Answer):
    """Sent first on a socket opened with `?after=` when some notifications after that id are no longer
    kept (older than NOTIFICATION_RETENTION, or past NOTIFICATION_MAX_PER_USER): reload what they would
    have told (matches, conversations, likes) over REST. The kept ones follow."""

    type: Literal["notifications_truncated"]


@dataclass(frozen=True)
class SocketContract:
    """What a socket endpoint (`BaseSocket.endpoint`) is, beside its route in handlers/sockets.py."""

    summary: str
    path: Mapping[str, str]  # the route's groups, in order, and what each is
    query: Mapping[str, str]
    frames: tuple[type[BaseModel], ...]  # what the server sends on it


SOCKETS: dict[str, SocketContract] = {
    "conversation": SocketContract(
        "Live messages, edits and unsends, typing, read receipts and presence of one conversation.",
        {"conversation_id": "The conversation's id."},
        {
            "token": "access token (required)",
            "after": "message or event id: first receive every message, edit and unsend stored after it, then live "
            "traffic",
        },
        (
            MessageEvent,
            MessageEditedEvent,
            MessageDeletedEvent,
            TypingEvent,
            ReadReceipt,
            StatusEvent,
            PongEvent,
            ErrorEvent,
        ),
    ),
    "notifications": SocketContract(
        "Notifications of one user: new_message, new_match, new_like, match_ended, conversation_read.",
        {},
        {
            "token": "access token (required)",
            "after": "notification id: first receive the notifications kept after it (0: all kept), then live ones",
        },
        (NotificationEvent, NotificationsTruncated, PongEvent, ErrorEvent),
    ),
}
