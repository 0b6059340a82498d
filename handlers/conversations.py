"""Conversations over REST: the source of truth that the sockets speed up."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictStr

from handlers.base import BaseHandler
from handlers.contract import Query, Reply, Tag, Upload, int_query, operation
from handlers.responses import Attachment, Conversation, Message, MessagePage, ReadAnswer
from handlers.schemas import ReadBody, SendMessageBody, Strict
from services.core import errors
from services.core.text import MAX_FILE_NAME_CHARS
from services.media.content import ATTACHMENT_TYPES

MAX_PAGE = 100
MAX_MESSAGE_ID = 2**32 - 1

API_TAG = Tag("conversations", "Conversations, history, sending, editing, unsending, read pointers, attachments")
CONVERSATION = {"conversation_id": "The conversation's id."}
MESSAGE = {**CONVERSATION, "message_id": "The message's id in the conversation."}


class EditMessageBody(Strict):
    """The new text (not only whitespace, unless the message carries an attachment), at most
    MAX_CONTENT_CHARS characters."""

    content: Annotated[StrictStr, Field(max_length=100_000)]


class ConversationListHandler(BaseHandler):
    @operation(
        "listConversations",
        query=(int_query("limit", 1, MAX_PAGE, 50, "Most to return."),),
        responses={200: Reply("Conversations.", list[Conversation])},
        errors=(503,),
    )
    async def get(self) -> None:
        """Open conversations, newest activity first."""
        user_id = self.require_user()
        limit = self.int_argument("limit", 50, low=1, high=MAX_PAGE)
        assert limit is not None
        self.send_json(await self.services.chat.list_conversations(user_id, limit))


class ConversationHandler(BaseHandler):
    @operation(
        "getConversation",
        path=CONVERSATION,
        responses={200: Reply("The conversation.", Conversation)},
        errors=(503,),
        notes={404: "`conversation_not_found`, also when not a participant."},
    )
    async def get(self, conversation_id: str) -> None:
        """One conversation (open or closed)."""
        user_id = self.require_user()
        self.send_json(await self.services.chat.get_conversation(int(conversation_id), user_id))


class MessagesHandler(BaseHandler):
    @operation(
        "listMessages",
        path=CONVERSATION,
        query=(
            int_query("before", 1, MAX_MESSAGE_ID, None, "Messages with smaller ids."),
            int_query("after", 0, MAX_MESSAGE_ID, None, "Messages with larger ids."),
            int_query("limit", 1, MAX_PAGE, 50, "Page size."),
        ),
        responses={200: Reply("A page of messages, oldest first.", MessagePage)},
        errors=(503,),
        notes={404: "`conversation_not_found`."},
    )
    async def get(self, conversation_id: str) -> None:
        """History, by cursor.

        Without a cursor: the newest page. `before` pages back, `after` forward (as a socket's `?after=`
        resume); not both at once (400). Messages are shown as they now are (edited, or unsent
        placeholders). Edits and unsends take ids of their own, which `results` skips: a page read with
        `after` whose range holds some lists them in `events` (as the socket frames) and gives `last_id`,
        the cursor to continue with.
        """
        user_id = self.require_user()
        before = self.int_argument("before", None, low=1, high=MAX_MESSAGE_ID)
        after = self.int_argument("after", None, low=0, high=MAX_MESSAGE_ID)
        limit = self.int_argument("limit", 50, low=1, high=MAX_PAGE)
        assert limit is not None
        if before is not None and after is not None:
            raise errors.Invalid("Use either `before` or `after`", fields={"before": "not with `after`"})
        page = await self.services.chat.history(int(conversation_id), user_id, before=before, after=after, limit=limit)
        self.send_json(page)

    @operation(
        "sendMessage",
        path=CONVERSATION,
        body=SendMessageBody,
        responses={
            201: Reply("Stored and broadcast.", Message),
            200: Reply("A retry of a stored `client_id`: the stored message.", Message),
        },
        notes={
            400: "`empty_message`, `message_too_long` or invalid fields.",
            403: "`conversation_closed`: closed while the message was being stored.",
            404: "`conversation_not_found` (also closed ones) or `attachment_not_found`.",
            429: "`rate_limited`: messages per user, shared with the sockets.",
            503: "`unavailable` or `store_failed`: not stored; retry with the same `client_id`.",
        },
    )
    async def post(self, conversation_id: str) -> None:
        """Send a message (broadcast exactly as a socket send)."""
        user_id = self.require_user()
        body = self.json_body(SendMessageBody)
        self.services.check_message_rate(user_id)
        message, created = await self.services.chat.send_message(
            int(conversation_id), user_id, body.content, body.client_id, body.attachment_id
        )
        self.send_json(message, status=201 if created else 200)


LIFECYCLE_ERRORS = {
    403: "`not_your_message` (another participant's message) or `conversation_closed` (closed meanwhile).",
    404: "`conversation_not_found` (also closed ones) or `message_not_found` (no such message here).",
    409: "`message_deleted`: the message was unsent.",
    429: "`rate_limited`: counts against the messages per user, shared with sending.",
    503: "`unavailable`: not done, or done half-way; retry.",
}


class MessageHandler(BaseHandler):
    @operation(
        "editMessage",
        path=MESSAGE,
        body=EditMessageBody,
        responses={200: Reply("The message as it now is, with `edited_at`; broadcast as `message_edited`.", Message)},
        notes={
            **LIFECYCLE_ERRORS,
            400: "`empty_message`, `message_too_long` or invalid fields.",
            403: "`not_your_message`, `edit_window_closed` (sent too long ago) or `conversation_closed` (closed "
            "meanwhile).",
        },
    )
    async def patch(self, conversation_id: str, message_id: str) -> None:
        """Edit one of your messages.

        Within MESSAGE_EDIT_WINDOW seconds of sending it (15 minutes by default). Every socket of the
        conversation receives `message_edited`; no notification or push is sent.
        """
        user_id = self.require_user()
        body = self.json_body(EditMessageBody)
        self.services.check_message_rate(user_id)
        message = await self.services.chat.edit_message(
            int(conversation_id),
            user_id,
            int(message_id),
            body.content,
            window_s=self.services.settings.message_edit_window_s,
        )
        self.send_json(message)

    @operation(
        "unsendMessage",
        path=MESSAGE,
        responses={200: Reply("The placeholder the message now is; broadcast as `message_deleted`.", Message)},
        notes=LIFECYCLE_ERRORS,
    )
    async def delete(self, conversation_id: str, message_id: str) -> None:
        """Unsend one of your messages (delete it for everyone).

        At any time. Its text and attachment are erased from the store; history shows a placeholder
        (`content` empty, `deleted: true`) and every socket of the conversation receives
        `message_deleted`.
        """
        user_id = self.require_user()
        self.services.check_message_rate(user_id)
        message = await self.services.chat.unsend_message(int(conversation_id), user_id, int(message_id))
        self.send_json(message)


class ReadHandler(BaseHandler):
    @operation(
        "markRead",
        path=CONVERSATION,
        body=ReadBody,
        responses={200: Reply("Where the read pointer is.", ReadAnswer)},
        errors=(503,),
        notes={404: "`conversation_not_found` or `message_not_found`."},
    )
    async def post(self, conversation_id: str) -> None:
        """Mark read up to a message; broadcasts a read receipt."""
        user_id = self.require_user()
        body = self.json_body(ReadBody)
        receipt = await self.services.chat.mark_read(int(conversation_id), user_id, body.message_id)
        self.send_json({"message_id": body.message_id, "read_receipt": receipt})


class AttachmentHandler(BaseHandler):
    @operation(
        "uploadAttachment",
        path=CONVERSATION,
        body=Upload(
            tuple(ATTACHMENT_TYPES),
            "The file's raw bytes, at most {max_upload}. The type is read from the bytes; plain text is accepted "
            "only when declared `text/plain` and valid UTF-8.",
        ),
        responses={201: Reply("Stored.", Attachment)},
        query=(
            Query(
                "name",
                "The file's name, to show to the people of the conversation: its last path part is kept, "
                f"without control or invisible characters, at most {MAX_FILE_NAME_CHARS} characters.",
                {"type": "string", "maxLength": 1000},
            ),
        ),
        errors=(503,),
        notes={
            400: "`empty_file` or `unsupported_media_type`.",
            404: "`conversation_not_found` (also closed ones).",
        },
    )
    async def post(self, conversation_id: str) -> None:
        """Upload a file to send with a message (`attachment_id`)."""
        user_id = self.require_user()
        data = self.body_bytes(self.services.settings.max_upload_bytes)
        declared = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower() or None
        name = self.get_query_argument("name", "")[:1000] or None
        attachment = await self.services.chat.add_attachment(int(conversation_id), user_id, data, declared, name)
        self.send_json(attachment, status=201)


CID = r"([0-9]{1,15})"
MID = CID  # a message id, within its conversation
routes = [
    (r"/api/conversations/", ConversationListHandler),
    (rf"/api/conversations/{CID}/", ConversationHandler),
    (rf"/api/conversations/{CID}/messages/", MessagesHandler),
    (rf"/api/conversations/{CID}/messages/{MID}/", MessageHandler),
    (rf"/api/conversations/{CID}/read/", ReadHandler),
    (rf"/api/conversations/{CID}/attachments/", AttachmentHandler),
]
