"""Events published on the bus, and the seed's notification frames.

A bus payload is two JSON documents on two lines: a small routing header, then the frame exactly as
sockets receive it. The header says which sockets take it (see services/realtime/hub.py); the frame bytes
are written to every one of them untouched, so a frame is serialised once in the whole cluster, and a
node reads only the header.
Header keys: `k` kind, `t` the frame's type (for metrics), `ts` when it was published (for the
publish-to-deliver latency), `x` a user whose sockets must not receive it, `s` a message id (for
in-order delivery), `n` a notification's id (the same, for a user's notifications), `d` true when the
frame may be dropped for a slow reader (typing), `pu`/`pv` the user and version of a presence transition
(older ones are dropped); for a revocation, `u` the user, `g` the token generation below which their
sockets close (absent: every socket of theirs) and `c` the close code; for users gone offline, `u` their
[user, version] pairs and `at` the time.
Between nodes the Redis bus wraps a payload in an envelope naming the node that published it and removes
it again on arrival (services/realtime/bus.py): subscribers always receive the payload as `encode` made it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from services.core.clock import now_iso
from services.realtime.bus import Bus, conversation_channel

if TYPE_CHECKING:
    from services.realtime.notifications_log import NotificationLog

log = logging.getLogger("chat.events")

# kinds of events
NOTIFICATION = "notification"  # to the user's notifications sockets
CONVERSATION = "conversation"  # to the conversation sockets of a conversation
CONVERSATION_CLOSED = "conversation_closed"  # close the conversation's sockets with 4001
REVOKED = "revoked"  # close a user's sockets opened with revoked tokens (services/accounts/revocation.py)
# A node died (its presence was swept): every node catches its conversation sockets up from the store,
# since what the dead node stored in its last moment may never have reached the bus.
NODE_LOST = "node_lost"
# Users offline everywhere once a stopping node handed them over, or a dead node was swept: `u` lists
# [user, presence version] pairs and `at` when. Every node tells its own conversation sockets that watch
# them, so the node that withdrew them reads nothing per user (services/chat/presence.py).
PRESENCE_GONE = "presence_gone"

# The one channel every node subscribes to from its start, whatever sockets it holds: revocations and node
# losses are rare, and every node must act on them wherever it holds sockets (services/realtime/hub.py).
REVOCATIONS_CHANNEL = "revocations"


def encode(header: dict[str, Any], frame: dict[str, Any] | None) -> bytes:
    header["ts"] = time.time()
    if frame is not None:
        header["t"] = frame.get("type")
    return orjson.dumps(header) + b"\n" + (orjson.dumps(frame) if frame is not None else b"null")


def decode(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, frame bytes) of a bus payload."""
    header, _, frame = payload.partition(b"\n")
    return orjson.loads(header), frame


def conversation_header(
    frame: dict[str, Any], exclude_user: int | None, seq: int | None, presence_version: int | None
) -> dict[str, Any]:
    header: dict[str, Any] = {"k": CONVERSATION}
    if presence_version is not None:
        header["pv"] = presence_version
        header["pu"] = frame["user_id"]
    if exclude_user is not None:
        header["x"] = exclude_user
    if seq is not None:
        header["s"] = seq
    if frame.get("type") == "typing":
        header["d"] = True
    return header


class Publisher:
    def __init__(self, bus: Bus, notifications: NotificationLog | None = None) -> None:
        self.bus = bus
        if notifications is None:
            from services.realtime.notifications_log import LocalNotificationLog  # it imports this module

            notifications = LocalNotificationLog(bus)
        # Numbers, keeps and publishes every notification (services/realtime/notifications_log.py).
        self.notifications = notifications
        # Awaited with (user_id, notification) after each notification is published: push delivery
        # (services/push/service.py) queues it there for users who are offline. A failing hook is logged and
        # never fails the publisher: the notification itself went out.
        self.on_notify: list[Callable[[int, dict[str, Any]], Awaitable[None]]] = []

    async def notify(self, user_id: int, notification: dict[str, Any]) -> None:
        """Send `{"type": "notification", "id": N, "notification": ...}` to one user's notifications sockets,
        N being the user's next notification id, and keep it for sockets that resume (`kept_form`). Never
        waits for the network."""
        self.notifications.append(user_id, notification, kept_form(notification))
        for hook in self.on_notify:
            try:
                await hook(user_id, notification)
            except Exception:
                log.exception("notification hook failed for user %s", user_id)

    async def to_conversation(
        self,
        conversation_id: int,
        frame: dict[str, Any],
        *,
        exclude_user: int | None = None,
        seq: int | None = None,
        presence_version: int | None = None,
    ) -> None:
        """Send a frame to every socket open on a conversation (optionally not to one user's)."""
        header = conversation_header(frame, exclude_user, seq, presence_version)
        await self.bus.publish(conversation_channel(conversation_id), encode(header, frame))

    def to_conversation_nowait(self, conversation_id: int, frame: dict[str, Any], *, exclude_user: int | None) -> None:
        """`to_conversation` without yielding to the loop: for a caller that must not wait (a typing frame)."""
        header = conversation_header(frame, exclude_user, None, None)
        self.bus.publish_nowait(conversation_channel(conversation_id), encode(header, frame))

    async def close_conversation(self, conversation_id: int) -> None:
        """Close every socket on the conversation with 4001 (unmatch or block), on every node."""
        await self.bus.publish(conversation_channel(conversation_id), encode({"k": CONVERSATION_CLOSED}, None))

    async def node_lost(self, incarnation: str) -> None:
        """Tell every node (this one included) that a node died: each catches its sockets up."""
        await self.bus.publish(REVOCATIONS_CHANNEL, encode({"k": NODE_LOST, "n": incarnation}, None))

    async def presence_gone(self, gone: list[tuple[int, int]], at: str) -> None:
        """Tell every node (this one included) that these users, as (user, presence version), went offline
        everywhere at `at`: each announces it to its own sockets that watch them."""
        header: dict[str, Any] = {"k": PRESENCE_GONE, "u": gone, "at": at}
        await self.bus.publish(REVOCATIONS_CHANNEL, encode(header, None))

    async def revoke_sockets(self, user_id: int, close_code: int, generation: int | None = None) -> None:
        """Close, on every node, the user's sockets whose token generation is below `generation` (every one of
        their sockets when None), with `close_code`."""
        header: dict[str, Any] = {"k": REVOKED, "u": user_id, "c": close_code}
        if generation is not None:
            header["g"] = generation
        await self.bus.publish(REVOCATIONS_CHANNEL, encode(header, None))


def kept_form(notification: dict[str, Any]) -> dict[str, Any]:
    """What the notifications log keeps of a notification: what the store holds anyway is left out and read
    again when it is replayed (services/chat/notifications.py). A person is kept as their id (their name and
    picture may change, their account may go), and a message as its ids without its text (an unsent
    message's text must not outlive it in the log)."""
    kind = notification.get("type")
    if kind == "new_message":
        message = notification["message"]
        return {
            **notification,
            "message": {
                "id": message["id"],
                "conversation_id": message["conversation_id"],
                "sender": {"id": message["sender"]["id"]},
                "created_at": message["created_at"],
            },
        }
    if kind == "new_like":
        return {**notification, "liker": {"id": notification["liker"]["id"]}}
    if kind == "new_match":
        match = notification["match"]
        return {**notification, "match": {**match, "user": {"id": match["user"]["id"]}}}
    return notification


def new_like_notification(liker: dict[str, Any]) -> dict[str, Any]:
    return {"type": "new_like", "timestamp": now_iso(), "liker": liker}


def new_match_notification(match_id: int, other_user: dict[str, Any], created_at: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "new_match",
        "timestamp": now_iso(),
        "match": {"id": match_id, "user": other_user, "created_at": created_at, **extra},
    }


def match_ended_notification(match_id: int, conversation_id: int, other_user_id: int) -> dict[str, Any]:
    """The same whatever ended the match (an unmatch, a block, a report, a ban, an account deletion): nobody
    learns from it why."""
    return {
        "type": "match_ended",
        "conversation_id": conversation_id,
        "match_id": match_id,
        "user_id": other_user_id,
        "timestamp": now_iso(),
    }


def conversation_read_notification(conversation_id: int, message_id: int) -> dict[str, Any]:
    """To the reader's own notifications sockets: they read the conversation up to `message_id`."""
    return {
        "type": "conversation_read",
        "conversation_id": conversation_id,
        "message_id": message_id,
        "timestamp": now_iso(),
    }
