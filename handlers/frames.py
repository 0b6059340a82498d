"""The frames clients send on the two sockets: each type's model and handler, registered in one place.

Adding a frame type is one model and one decorated function here (and its tests); the sockets, the
error answers and the API document's WebSocket section follow from the registry (handlers/protocol.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Annotated, Literal

import orjson
from pydantic import Field, StrictBool, StrictInt, StrictStr

from handlers.protocol import REGISTRY, ClientFrame

if TYPE_CHECKING:
    from handlers.sockets import BaseSocket, ConversationSocket

MAX_CLIENT_ID_CHARS = 64
MAX_TOKEN_CHARS = 4096
MAX_ID = 2**53
FrameId = Annotated[StrictInt, Field(gt=0, le=MAX_ID)]


class MessageFrame(ClientFrame):
    """A chat message. `client_id` makes a retry safe: the same id is stored once and answered again."""

    type: Literal["message"]
    content: StrictStr
    client_id: Annotated[StrictStr, Field(max_length=MAX_CLIENT_ID_CHARS)] | None = None
    attachment_id: FrameId | None = None


class TypingFrame(ClientFrame):
    """Whether the sender is typing; the server reports `false` itself when they go silent."""

    type: Literal["typing"]
    is_typing: StrictBool


class ReadReceiptFrame(ClientFrame):
    """Everything up to `message_id` has been read."""

    type: Literal["read_receipt"]
    message_id: FrameId


class EditFrame(ClientFrame):
    """A new text for one of the sender's own messages, within MESSAGE_EDIT_WINDOW of sending it."""

    type: Literal["edit"]
    message_id: FrameId
    content: StrictStr


class UnsendFrame(ClientFrame):
    """Delete one of the sender's own messages for everyone: its text and attachment are erased."""

    type: Literal["unsend"]
    message_id: FrameId


class PingFrame(ClientFrame):
    """An application-level keepalive, answered with `{"type": "pong"}`."""

    type: Literal["ping"]


class AuthFrame(ClientFrame):
    """A new access token of the same user, sent before the socket's token expires (or within
    SOCKET_TOKEN_GRACE after): the socket stays open until the new token expires."""

    type: Literal["auth"]
    token: Annotated[StrictStr, Field(max_length=MAX_TOKEN_CHARS)]


def spend_message_rate(socket: BaseSocket, frame: ClientFrame) -> None:
    """On arrival: sends, edits and unsends spend the user's message rate (shared with REST sends)."""
    socket.services.check_message_rate(socket.user_id)


@REGISTRY.frame(MessageFrame, "conversation", admit=spend_message_rate)
async def message(socket: ConversationSocket, frame: MessageFrame) -> None:
    """Store a message and deliver it to every socket of the conversation (the sender's included)."""
    services = socket.services
    stored, created = await services.chat.send_message(
        socket.conversation, socket.user_id, frame.content, frame.client_id, frame.attachment_id
    )
    if not created:
        # A retry publishes nothing; its answer goes to the socket that asked.
        socket.answer_replay(stored["id"], orjson.dumps({"type": "message", "message": stored}))


@REGISTRY.frame(TypingFrame, "conversation")
def typing(socket: ConversationSocket, frame: TypingFrame) -> Awaitable[None] | None:
    """Tell the other participants whether the sender is typing."""
    return socket.services.typing.update(socket.conversation, socket.user_id, frame.is_typing)


def _read_receipt_changes_nothing(socket: ConversationSocket, frame: ReadReceiptFrame) -> bool:
    return frame.message_id <= socket.read_target or socket.read_writer is not None


@REGISTRY.frame(ReadReceiptFrame, "conversation", free=_read_receipt_changes_nothing, ordered=False)
def read_receipt(socket: ConversationSocket, frame: ReadReceiptFrame) -> None:
    """Move the sender's read pointer and tell the other participants.

    A high-water mark: a receipt at or below what this socket already marked changes nothing, and
    receipts that arrive while one is being written only raise the mark the writer stores next. A client
    that sends one receipt per message of a long replay (90 in a row) so costs a write or two and no
    frame budget for the rest; nothing waits on the store, so the frames behind it are read at once."""
    if frame.message_id <= socket.read_target:
        return
    socket.read_target = frame.message_id
    if socket.read_writer is None:
        socket.read_writer = asyncio.get_running_loop().create_task(_write_read_marks(socket, frame))


async def _write_read_marks(socket: ConversationSocket, frame: ReadReceiptFrame) -> None:
    """Store the socket's read mark until it stops moving; a refusal is answered on the frame that
    started the run."""
    written = 0
    try:
        while written < socket.read_target and not socket.closing:
            target = socket.read_target
            await socket.services.chat.mark_read(socket.conversation, socket.user_id, target)
            written = target
    except Exception as exc:
        # A refused mark (no such message) must not block the next receipts: they start a new run.
        socket.read_target = written
        socket.answer_error(exc, frame)
    finally:
        socket.read_writer = None


@REGISTRY.frame(EditFrame, "conversation", admit=spend_message_rate)
async def edit(socket: ConversationSocket, frame: EditFrame) -> None:
    """Edit one of the sender's messages; every socket of the conversation receives `message_edited`.

    Counts against the sender's message rate, like a send."""
    services = socket.services
    await services.chat.edit_message(
        socket.conversation,
        socket.user_id,
        frame.message_id,
        frame.content,
        window_s=services.settings.message_edit_window_s,
    )


@REGISTRY.frame(UnsendFrame, "conversation", admit=spend_message_rate)
async def unsend(socket: ConversationSocket, frame: UnsendFrame) -> None:
    """Unsend one of the sender's messages; every socket of the conversation receives `message_deleted`.

    Counts against the sender's message rate, like a send."""
    await socket.services.chat.unsend_message(socket.conversation, socket.user_id, frame.message_id)


@REGISTRY.frame(PingFrame, "conversation", "notifications", ordered=False)
def ping(socket: BaseSocket, frame: PingFrame) -> None:
    """Answer `pong` (to clients that cannot see WebSocket control frames)."""
    socket.push_json({"type": "pong"})


@REGISTRY.frame(AuthFrame, "conversation", "notifications", ordered=False)
def auth(socket: BaseSocket, frame: AuthFrame) -> Awaitable[None] | None:
    """Renew the socket's access token; no answer.

    The token must be a valid access token of the socket's user: another user's token, a refresh token,
    or an invalid, expired or revoked one closes the socket with 4002. Without a renewal, the socket is
    closed with 4004 SOCKET_TOKEN_GRACE seconds after its token expired."""
    return socket.renew(frame.token)
