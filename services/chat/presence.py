"""Presence as people in a conversation see it.

The presence store (services/realtime/presence.py) decides when a user comes online or goes offline;
`PresenceAnnouncer` makes each transition known: the seed's `status` frame is published to the
conversations the user takes part in, and nowhere else, and going offline records `last_seen`.
Presence is visible only to people who share an open conversation with the user (an unmatch or a
block closes it, and with it the visibility): the same rule gives a profile its `status` and
`last_seen` (`profile_view`).

`PresenceService` is what the WebSocket edge calls when sockets open and close.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Collection
from typing import Any, NamedTuple

import orjson
from pymongo import UpdateOne

from services.accounts.users import UserService
from services.chat.service import ChatService
from services.core.clock import iso, iso_of
from services.core.errors import NotFound
from services.core.logs import FoldedWarning
from services.realtime.events import Publisher
from services.realtime.hub import Connections
from services.realtime.presence import PresenceStore, Transition
from services.storage.batch import Coalescer
from services.storage.store import STORE_DOWN_ERRORS, Doc, Store

log = logging.getLogger("chat.presence")

# Users per "gone offline" event: 1,000 pairs of ids are about 25 KB on the bus.
GONE_PER_EVENT = 1000


class OpenConversation(NamedTuple):
    participants: tuple[int, ...]
    last_seq: int  # as stored: written behind the messages, a lower bound of the newest id


def status_frame(user_id: int, username: str, online: bool, at: dt.datetime | None) -> dict[str, Any]:
    """The seed's `status` frame."""
    return {
        "type": "status",
        "user_id": user_id,
        "username": username,
        "status": "online" if online else "offline",
        "timestamp": iso(at or dt.datetime.now(dt.UTC)),
    }


class PresenceAnnouncer:
    """Tells a user's conversations about their transitions, and answers what others may see of them.

    The listener of the presence store: it never raises because the store is away, it logs instead."""

    def __init__(
        self,
        presence: PresenceStore,
        store: Store,
        chat: ChatService,
        events: Publisher,
        users: UserService,
        *,
        last_seen_delay_s: float = 0.0,
    ) -> None:
        self._presence = presence
        self._store = store
        self._chat = chat
        self._events = events
        self._users = users
        self._open_conversations: Coalescer[int, dict[int, OpenConversation]] = Coalescer(
            self._read_open_conversations, keys_per_query=store.keys_per_query
        )
        # last_seen of the users who went offline at one moment (a storm of reconnects), as one write.
        self._last_seen: dict[int, dt.datetime] = {}
        self._last_seen_writes: Coalescer[int, None] = Coalescer(self._write_last_seen)
        # Users gone offline whose last_seen waits `last_seen_delay_s` before it is written: one who is
        # back online by then needs none, since going offline again writes a later one. A reconnect
        # storm's clients drop and come back within the moment, and each of their last_seen writes
        # took the store's time from the reads their reconnects waited for.
        self.last_seen_delay_s = last_seen_delay_s
        self._last_seen_due: set[int] = set()
        self._last_seen_timer: asyncio.TimerHandle | None = None
        self._last_seen_flushes: set[asyncio.Task[None]] = set()
        self._announce_failures = FoldedWarning(log, "could not announce presence of user %s: store unavailable")
        # This node's sockets, told of users gone offline (`deliver_gone`); set by the container.
        self.connections: Connections | None = None

    async def on_transition(self, transition: Transition) -> None:
        """Publish a transition to every open conversation of the user; record last_seen when offline.

        The transition's version goes with the frames, so that receivers drop one older than a status
        they already passed on. Its `conversations`, when the socket that caused it read them just
        before, spare reading them again."""
        if transition.online:
            await self._announce(transition)
            return
        self._last_seen[transition.user_id] = transition.at
        # Recorded after a delay, not before the announcement: the last_seen of thousands of users going
        # offline together took the store seconds to write, and announcements that waited for it were
        # cut short when a stopping node stopped waiting.
        self._last_seen_later(transition.user_id)
        await self._announce(transition)

    def _last_seen_later(self, user_id: int) -> None:
        self._last_seen_due.add(user_id)
        if self._last_seen_timer is None:
            loop = asyncio.get_running_loop()
            self._last_seen_timer = loop.call_later(self.last_seen_delay_s, self._last_seen_due_now)

    def _last_seen_due_now(self) -> None:
        self._last_seen_timer = None
        due, self._last_seen_due = self._last_seen_due, set()
        task = asyncio.get_running_loop().create_task(self._write_due_last_seen(due, only_offline=True))
        self._last_seen_flushes.add(task)
        task.add_done_callback(self._last_seen_flushes.discard)

    async def _write_due_last_seen(self, users: set[int], *, only_offline: bool) -> None:
        """Write the last_seen of these users (of those offline now, with `only_offline`)."""
        if only_offline:
            back = await self._presence.online_among(users)
            for user_id in back:
                self._last_seen.pop(user_id, None)  # online: nothing shows it, and the next offline replaces it
            users = users - back
        if users:
            await self._last_seen_writes.get_many(list(users))

    async def flush_last_seen(self) -> None:
        """Write every last_seen still waiting for its delay now, and wait for those being written: a
        stopping node's last word."""
        if self._last_seen_timer is not None:
            self._last_seen_timer.cancel()
            self._last_seen_timer = None
        due, self._last_seen_due = self._last_seen_due, set()
        await asyncio.gather(
            self._write_due_last_seen(due, only_offline=False), *self._last_seen_flushes, return_exceptions=True
        )

    def shown_last_seen(self, user_id: int, stored: dt.datetime | None) -> dt.datetime | None:
        """An offline user's last_seen as shown: the later of the stored one and one this node has not
        written yet (waiting for its delay, or on its way to the store)."""
        pending = self._last_seen.get(user_id)
        if pending is not None and (stored is None or pending > stored):
            return pending
        return stored

    async def on_gone(self, gone: list[tuple[int, int]], at: dt.datetime) -> None:
        """Users handed over by this node as it stops, or swept with a dead node: their last_seen in one
        write, and one event per GONE_PER_EVENT users that every node announces to its own sockets
        (`deliver_gone`). Reading each user's open conversations to publish there cost the store a query
        per 64 users, which a busy embedded store did not answer within a stopping node's wait."""
        for user_id, _ in gone:
            self._last_seen[user_id] = at
        when = iso_of(at)
        published = [
            self._events.presence_gone(gone[start : start + GONE_PER_EVENT], when)
            for start in range(0, len(gone), GONE_PER_EVENT)
        ]
        await asyncio.gather(self._last_seen_writes.get_many([u for u, _ in gone]), *published)

    def deliver_gone(self, header: dict[str, Any]) -> None:
        """A "users gone offline" event (from any node): the offline status frame of each to this node's
        conversation sockets that watch them, in the username those sockets were shown."""
        if self.connections is None:
            return
        connections = self.connections
        at = dt.datetime.fromisoformat(str(header["at"]))
        for user_id, version in header.get("u", ()):
            username = connections.participant_names.get(int(user_id))
            if username is None:
                continue  # no socket here watches them
            frame = status_frame(int(user_id), username, False, at)
            connections.status_to_watchers(int(user_id), int(version), orjson.dumps(frame))

    async def _announce(self, transition: Transition) -> None:
        user_id, at = transition.user_id, transition.at
        conversations = transition.conversations
        try:
            user = await self._users.summary(user_id)
            if conversations is None:
                conversations = list(await self.open_conversations(user_id))
        except STORE_DOWN_ERRORS:
            self._announce_failures.warn(user_id)
            return
        frame = status_frame(user_id, user["username"], transition.online, at)
        for conversation_id in conversations:
            await self._events.to_conversation(
                conversation_id, frame, exclude_user=user_id, presence_version=transition.version
            )

    async def _write_last_seen(self, user_ids: list[int]) -> dict[int, None]:
        """One write for the users who went offline together; a failure is logged once for all of them
        (one line per user flooded the log when the store timed out under a reconnect storm). Each value
        stays in `_last_seen` until written (`current_frame` reads it), unless a later one replaced it."""
        leaving = {u: self._last_seen[u] for u in user_ids if u in self._last_seen}
        # `$max`: a write delayed behind a later visit's (another node's) must not take last_seen back.
        writes = [UpdateOne({"_id": u}, {"$max": {"last_seen": at}}) for u, at in leaving.items()]
        try:
            if writes:
                await self._store.users.bulk_write(writes, ordered=False)
        except STORE_DOWN_ERRORS:
            log.warning("could not record last_seen of %d users: store unavailable", len(writes))
        finally:
            for u, at in leaving.items():
                if self._last_seen.get(u) == at:
                    del self._last_seen[u]
        return {}

    async def on_node_stopped(self, user_ids: Collection[int], at: dt.datetime) -> None:
        """Record when the users of a stopping single node were seen (their sockets are closed already:
        nobody is left to tell)."""
        try:
            await self._store.users.update_many({"_id": {"$in": list(user_ids)}}, {"$max": {"last_seen": at}})
        except STORE_DOWN_ERRORS:
            log.warning("could not record last_seen of %d users at shutdown", len(user_ids))

    async def open_conversations(self, user_id: int) -> dict[int, OpenConversation]:
        """The user's open conversations, read from the store now, not a cache: the users asked for in one
        loop iteration share one query (services/storage/batch.py)."""
        return await self._open_conversations.get(user_id) or {}

    def ask_open_conversations(self, user_id: int) -> asyncio.Future[dict[int, dict[int, OpenConversation]]]:
        """Start `open_conversations` now, for a caller that waits on something else first: the future maps
        the user id to their open conversations (absent when they have none)."""
        return self._open_conversations.ask((user_id,))

    async def _read_open_conversations(self, user_ids: list[int]) -> dict[int, dict[int, OpenConversation]]:
        wanted = set(user_ids)
        found: dict[int, dict[int, OpenConversation]] = {}
        docs = self._store.conversations.find(
            {"participants": {"$in": user_ids}, "status": "open"}, {"participants": 1, "last_seq": 1}, batch_size=1000
        )
        async for d in docs:
            conversation = OpenConversation(tuple(int(p) for p in d["participants"]), int(d.get("last_seq", 0)))
            for participant in conversation.participants:
                if participant in wanted:
                    found.setdefault(participant, {})[int(d["_id"])] = conversation
        return found

    def prefetch_status(self, user_id: int) -> asyncio.Future[dict[int, Doc]]:
        """Start reading what `current_frame` shows of an offline user (last_seen, and the summary in the
        same document), for a socket that has other reads to wait for before it joins: its frame then
        costs no round trip of its own."""
        return self._users.liveness.prefetch(user_id)

    async def current_frame(
        self, user_id: int, prefetched: asyncio.Future[dict[int, Doc]] | None = None
    ) -> dict[str, Any]:
        """The seed's `status` frame for the user as things stand (sent to a socket that joins), from the
        document `prefetch_status` read when given.

        An offline user's last_seen is the later of the stored one and one this node is still writing: a
        user who left a moment ago is not shown with the last_seen of an earlier visit, whether the
        document was read before they left (a prefetch) or before their last_seen was written."""
        online = await self._presence.is_online(user_id)
        if online:
            user = await self._users.summary(user_id)
            at = self._presence.online_since(user_id)
        else:
            doc = (
                (await prefetched).get(user_id) if prefetched is not None else await self._users.liveness.read(user_id)
            )
            if doc is None:
                raise NotFound("User not found")
            user = self._users.remember_summary(doc)
            at = self.shown_last_seen(user_id, doc.get("last_seen"))
        return status_frame(user_id, user["username"], online, at)

    async def profile_view(self, viewer_id: int, doc: Doc) -> dict[str, Any]:
        """`status` and `last_seen` for a profile, when the viewer shares an open conversation with them."""
        user_id = int(doc["_id"])
        if viewer_id != user_id:
            shared = await self._store.conversations.find_one(
                {"participants": {"$all": [viewer_id, user_id]}, "status": "open"}, {"_id": 1}
            )
            if shared is None:
                return {}
        online = await self._presence.is_online(user_id)
        last_seen = None if online else iso(self.shown_last_seen(user_id, doc.get("last_seen")))
        return {"status": "online" if online else "offline", "last_seen": last_seen}


class PresenceService:
    """Presence for the WebSocket edge: the store counts sockets and decides transitions, the
    announcer (the store's listener, wired by the container) makes them known."""

    def __init__(self, store: PresenceStore, announcer: PresenceAnnouncer) -> None:
        self.store = store
        self.announcer = announcer

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        """Hand this node's users over: offline for whoever has no socket left anywhere; and write the
        last_seen of those who left earlier and still wait for their delay."""
        await self.store.close()
        await self.announcer.flush_last_seen()

    async def connected(self, user_id: int, open_conversations: Collection[int] | None = None) -> None:
        """A socket of the user opened here. `open_conversations`, when the caller has just read them
        (see `open_conversations`), are where an online transition is announced."""
        await self.store.connected(user_id, open_conversations)

    async def disconnected(self, user_id: int) -> None:
        await self.store.disconnected(user_id)

    def announces_first_socket(self, user_id: int) -> bool:
        """Whether a socket of the user opening now would be their first here, the one that announces
        them online (and so needs their open conversations)."""
        return not self.store.has_sockets_here(user_id)

    async def open_conversations(self, user_id: int) -> dict[int, OpenConversation]:
        return await self.announcer.open_conversations(user_id)

    def ask_open_conversations(self, user_id: int) -> asyncio.Future[dict[int, dict[int, OpenConversation]]]:
        return self.announcer.ask_open_conversations(user_id)

    def prefetch_status(self, user_id: int) -> asyncio.Future[dict[int, Doc]] | None:
        """Start reading what `current_frame` shows of the user if they may be offline; None when they have a
        socket on this node (online: their frame needs no read)."""
        return None if self.store.has_sockets_here(user_id) else self.announcer.prefetch_status(user_id)

    async def current_frame(
        self, user_id: int, prefetched: asyncio.Future[dict[int, Doc]] | None = None
    ) -> dict[str, Any]:
        return await self.announcer.current_frame(user_id, prefetched)

    async def is_online(self, user_id: int) -> bool:
        return await self.store.is_online(user_id)
