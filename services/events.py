"""Events published on the bus, and the seed's notification frames.

A bus payload is one JSON object: `{"frame": <what sockets receive>, "kind": "...", ...routing}`.
`kind` says which sockets take it (see services/connections.py); `frame` is written to them as is, so it
is serialised once per node, not once per socket.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from services.bus import Bus, conversation_channel, user_channel
from services.users import iso

# kinds of events
NOTIFICATION = "notification"  # to the user's notifications sockets
CONVERSATION = "conversation"  # to the conversation sockets of a conversation
CONVERSATION_CLOSED = "conversation_closed"  # close the conversation's sockets with 4001


def now_iso() -> str:
    value = iso(dt.datetime.now(dt.UTC))
    assert value is not None
    return value


class Publisher:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def notify(self, user_id: int, notification: dict[str, Any]) -> None:
        """Send `{"type": "notification", "notification": ...}` to one user's notifications sockets."""
        frame = {"type": "notification", "notification": notification}
        await self.bus.publish(user_channel(user_id), orjson.dumps({"kind": NOTIFICATION, "frame": frame}))

    async def to_conversation(
        self, conversation_id: int, frame: dict[str, Any], *, exclude_user: int | None = None, **extra: Any
    ) -> None:
        """Send a frame to every socket open on a conversation (optionally not to one user's)."""
        event: dict[str, Any] = {"kind": CONVERSATION, "frame": frame, **extra}
        if exclude_user is not None:
            event["exclude_user"] = exclude_user
        await self.bus.publish(conversation_channel(conversation_id), orjson.dumps(event))

    async def close_conversation(self, conversation_id: int) -> None:
        """Close every socket on the conversation with 4001 (unmatch or block), on every node."""
        event = {"kind": CONVERSATION_CLOSED, "frame": None}
        await self.bus.publish(conversation_channel(conversation_id), orjson.dumps(event))


def new_like_notification(liker: dict[str, Any]) -> dict[str, Any]:
    return {"type": "new_like", "timestamp": now_iso(), "liker": liker}


def new_match_notification(match_id: int, other_user: dict[str, Any], created_at: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "new_match",
        "timestamp": now_iso(),
        "match": {"id": match_id, "user": other_user, "created_at": created_at, **extra},
    }
