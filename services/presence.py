"""Who is online.

A user is online while they hold at least one WebSocket (either endpoint). This node counts its own
sockets per user; `Presence` is the single-node implementation where the local count is the whole truth.
Transitions (first socket opened, last socket closed) are published as the seed's `status` frame to the
conversations the user takes part in, and nowhere else: presence is visible only to people who share
an open conversation with the user (an unmatch or a block closes it, and with it the visibility).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from services.chat import ChatService
from services.events import Publisher
from services.store import STORE_DOWN_ERRORS, Doc, Store
from services.users import UserService, iso

log = logging.getLogger("chat.presence")


class Presence:
    def __init__(self, store: Store, chat: ChatService, events: Publisher, users: UserService) -> None:
        self._store = store
        self._chat = chat
        self._events = events
        self._users = users
        self.local_counts: dict[int, int] = {}
        self.online_since: dict[int, dt.datetime] = {}
        users.presence_view = self.profile_view

    async def start(self) -> None:
        """Nothing to do for a single node."""

    async def close(self) -> None:
        """Nothing to do for a single node."""

    async def connected(self, user_id: int) -> None:
        count = self.local_counts.get(user_id, 0) + 1
        self.local_counts[user_id] = count
        if count == 1:
            await self._online_here(user_id)

    async def disconnected(self, user_id: int) -> None:
        count = self.local_counts.get(user_id, 0) - 1
        if count > 0:
            self.local_counts[user_id] = count
            return
        self.local_counts.pop(user_id, None)
        await self._offline_here(user_id)

    async def _online_here(self, user_id: int) -> None:
        await self.announce(user_id, online=True)

    async def _offline_here(self, user_id: int) -> None:
        await self.announce(user_id, online=False)

    async def is_online(self, user_id: int) -> bool:
        return user_id in self.local_counts

    async def announce(self, user_id: int, *, online: bool, at: dt.datetime | None = None) -> None:
        """Publish a transition to every open conversation of the user; record last_seen when offline."""
        at = at or dt.datetime.now(dt.UTC)
        if online:
            self.online_since[user_id] = at
        else:
            self.online_since.pop(user_id, None)
            try:
                await self._store.users.update_one({"_id": user_id}, {"$set": {"last_seen": at}})
            except STORE_DOWN_ERRORS:
                log.warning("could not record last_seen of user %d", user_id)
        try:
            user = await self._users.summary(user_id)
            conversations = await self._chat.open_conversation_ids(user_id)
        except STORE_DOWN_ERRORS:
            log.warning("could not announce presence of user %d: store unavailable", user_id)
            return
        frame = self.frame(user_id, user["username"], online, at)
        for conversation_id in conversations:
            await self._events.to_conversation(conversation_id, frame, exclude_user=user_id)

    @staticmethod
    def frame(user_id: int, username: str, online: bool, at: dt.datetime | None) -> dict[str, Any]:
        return {
            "type": "status",
            "user_id": user_id,
            "username": username,
            "status": "online" if online else "offline",
            "timestamp": iso(at or dt.datetime.now(dt.UTC)),
        }

    async def current_frame(self, user_id: int) -> dict[str, Any]:
        """The seed's `status` frame for the user as things stand (sent to a socket that joins)."""
        online = await self.is_online(user_id)
        user = await self._users.summary(user_id)
        if online:
            at = self.online_since.get(user_id)
        else:
            doc = await self._store.users.find_one({"_id": user_id}, {"last_seen": 1})
            at = (doc or {}).get("last_seen")
        return self.frame(user_id, user["username"], online, at)

    async def profile_view(self, viewer_id: int, doc: Doc) -> dict[str, Any]:
        """`status` and `last_seen` for a profile, when the viewer shares an open conversation with them."""
        user_id = int(doc["_id"])
        if viewer_id != user_id:
            shared = await self._store.conversations.find_one(
                {"participants": {"$all": [viewer_id, user_id]}, "status": "open"}, {"_id": 1}
            )
            if shared is None:
                return {}
        online = await self.is_online(user_id)
        return {"status": "online" if online else "offline", "last_seen": None if online else iso(doc.get("last_seen"))}
