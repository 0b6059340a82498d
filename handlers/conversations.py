"""Conversations over REST: the source of truth that the sockets speed up."""

from __future__ import annotations

from handlers.base import BaseHandler
from handlers.schemas import ReadBody, SendMessageBody
from services.core import errors

MAX_PAGE = 100
MAX_MESSAGE_ID = 2**32 - 1


class ConversationListHandler(BaseHandler):
    async def get(self) -> None:
        user_id = self.require_user()
        limit = self.int_argument("limit", 50, low=1, high=MAX_PAGE)
        assert limit is not None
        self.send_json(await self.services.chat.list_conversations(user_id, limit))


class ConversationHandler(BaseHandler):
    async def get(self, conversation_id: str) -> None:
        user_id = self.require_user()
        self.send_json(await self.services.chat.get_conversation(int(conversation_id), user_id))


class MessagesHandler(BaseHandler):
    async def get(self, conversation_id: str) -> None:
        user_id = self.require_user()
        before = self.int_argument("before", None, low=1, high=MAX_MESSAGE_ID)
        after = self.int_argument("after", None, low=0, high=MAX_MESSAGE_ID)
        limit = self.int_argument("limit", 50, low=1, high=MAX_PAGE)
        assert limit is not None
        if before is not None and after is not None:
            raise errors.Invalid("Use either `before` or `after`", fields={"before": "not with `after`"})
        results, has_more = await self.services.chat.history(
            int(conversation_id), user_id, before=before, after=after, limit=limit
        )
        self.send_json({"results": results, "has_more": has_more})

    async def post(self, conversation_id: str) -> None:
        user_id = self.require_user()
        body = self.json_body(SendMessageBody)
        self.services.check_message_rate(user_id)
        message, created = await self.services.chat.send_message(
            int(conversation_id), user_id, body.content, body.client_id, body.attachment_id
        )
        self.send_json(message, status=201 if created else 200)


class ReadHandler(BaseHandler):
    async def post(self, conversation_id: str) -> None:
        user_id = self.require_user()
        body = self.json_body(ReadBody)
        receipt = await self.services.chat.mark_read(int(conversation_id), user_id, body.message_id)
        self.send_json({"message_id": body.message_id, "read_receipt": receipt})


class AttachmentHandler(BaseHandler):
    async def post(self, conversation_id: str) -> None:
        user_id = self.require_user()
        data = self.body_bytes(self.services.settings.max_upload_bytes)
        declared = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower() or None
        attachment = await self.services.chat.add_attachment(int(conversation_id), user_id, data, declared)
        self.send_json(attachment, status=201)


CID = r"([0-9]{1,15})"
routes = [
    (r"/api/conversations/", ConversationListHandler),
    (rf"/api/conversations/{CID}/", ConversationHandler),
    (rf"/api/conversations/{CID}/messages/", MessagesHandler),
    (rf"/api/conversations/{CID}/read/", ReadHandler),
    (rf"/api/conversations/{CID}/attachments/", AttachmentHandler),
]
