"""What a user is notified of: muting a conversation, and push preferences (services/push/preferences.py)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, StrictBool, WithJsonSchema

from handlers.base import BaseHandler
from handlers.contract import Reply, Tag, operation
from handlers.responses import ConversationMute, NotificationPreferences
from handlers.schemas import Strict

API_TAG = Tag("notifications", "Muting conversations, and what is pushed to your devices")
CONVERSATION = {"conversation_id": "The conversation's id."}
NOT_YOURS = {404: "`conversation_not_found`: no such conversation, not yours, or closed (unmatch, block)."}

# RFC 3339 (what JSON Schema's `date-time` means): seconds required, an offset or Z required.
_RFC3339 = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt](?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]{1,9}))?(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _aware_time(value: Any) -> dt.datetime:
    """An RFC 3339 time as an aware UTC datetime. Anything else (numbers, times without an offset, which
    would be read in the server's zone, dates alone) is a client bug worth a 400."""
    found = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise ValueError("must be a time written YYYY-MM-DDTHH:MM:SS with Z or an offset")
    fraction = (found["fraction"] or "0")[:6].ljust(6, "0")
    offset = "+00:00" if found["offset"] in ("Z", "z") else found["offset"]
    try:
        return dt.datetime.fromisoformat(f"{found['date']}T{found['time']}.{fraction}{offset}").astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise ValueError("is not a valid time") from None


MuteTime = Annotated[
    dt.datetime, BeforeValidator(_aware_time), WithJsonSchema({"type": "string", "format": "date-time"})
]


def _without_defaults(schema: dict[str, Any]) -> None:
    """A PATCH field left out keeps its value: the schema shows no default for it."""
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class MuteBody(Strict):
    """`until`: when the mute ends by itself (RFC 3339, at most 365 days ahead; a time already past
    unmutes); null or absent: muted until unmuted."""

    until: MuteTime | None = None


class NotificationPreferencesPatch(Strict):
    """The preferences to change; the others keep their value."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_without_defaults)

    # Typed bool but defaulting to None: an absent field is told apart from false, and null is refused.
    messages: StrictBool = None  # type: ignore[assignment]
    matches: StrictBool = None  # type: ignore[assignment]
    likes: StrictBool = None  # type: ignore[assignment]
    message_previews: StrictBool = None  # type: ignore[assignment]


class MuteHandler(BaseHandler):
    @operation(
        "getConversationMute",
        path=CONVERSATION,
        responses={200: Reply("Your mute of the conversation.", ConversationMute)},
        errors=(503,),
        notes=NOT_YOURS,
    )
    async def get(self, conversation_id: str) -> None:
        """Whether you muted a conversation, and until when."""
        user_id = self.require_user()
        self.send_json(await self.services.push.preferences.mute_state(user_id, int(conversation_id)))

    @operation(
        "muteConversation",
        path=CONVERSATION,
        body=MuteBody,
        responses={200: Reply("Your mute as it now is.", ConversationMute)},
        errors=(503,),
        notes={**NOT_YOURS, 400: "`invalid_json`, or `validation_error`: `until` is not a time, or too far ahead."},
    )
    async def put(self, conversation_id: str) -> None:
        """Mute a conversation, until a time or until unmuted.

        While it is muted you get no `new_message` notification of it, on the notifications socket or as
        a push (a push already queued is dropped); its messages still arrive on the conversation's
        sockets and count as unread. Setting the mute again replaces it. The other participant is not
        told.
        """
        user_id = self.require_user()
        body = self.json_body(MuteBody)
        self.send_json(await self.services.push.preferences.mute(user_id, int(conversation_id), body.until))

    @operation(
        "unmuteConversation",
        path=CONVERSATION,
        responses={204: Reply("Not muted (also when it was not).")},
        errors=(503,),
        notes=NOT_YOURS,
    )
    async def delete(self, conversation_id: str) -> None:
        """Unmute a conversation.

        Notifications resume with its next message; those sent while it was muted are not notified
        afterwards (the unread count still has them).
        """
        user_id = self.require_user()
        await self.services.push.preferences.unmute(user_id, int(conversation_id))
        self.set_status(204)
        self.finish()


class PreferencesHandler(BaseHandler):
    @operation(
        "getNotificationPreferences",
        responses={200: Reply("Your push preferences.", NotificationPreferences)},
        errors=(503,),
    )
    async def get(self) -> None:
        """What is pushed to your devices."""
        user_id = self.require_user()
        self.send_json(await self.services.push.preferences.preferences(user_id))

    @operation(
        "updateNotificationPreferences",
        body=NotificationPreferencesPatch,
        responses={200: Reply("All your push preferences, as they now are.", NotificationPreferences)},
        errors=(503,),
    )
    async def patch(self) -> None:
        """Turn kinds of push on or off.

        They decide what is pushed to your devices while you have no socket open, from the next push on
        (pushes already queued included); the notifications socket still receives everything not muted.
        `message_previews: false` removes the text from message pushes; true cannot add text where the
        server sends none (`previews_available`).
        """
        user_id = self.require_user()
        body = self.json_body(NotificationPreferencesPatch)
        changes = body.model_dump(exclude_unset=True)
        self.send_json(await self.services.push.preferences.update_preferences(user_id, changes))


CID = r"([0-9]{1,15})"
routes = [
    (rf"/api/conversations/{CID}/mute/", MuteHandler),
    (r"/api/users/me/notifications/", PreferencesHandler),
]
