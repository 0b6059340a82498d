"""This node's sockets, and the fan-out of bus events to them.

Every socket is a `Peer`. The registry indexes peers by conversation and by user, subscribes the bus to a
channel when the first local peer needs it and unsubscribes when the last one leaves, and hands each bus
event to exactly the peers it concerns: work per event is proportional to the sockets that receive it,
never to all sockets of the node.

Output is bounded per socket. A peer reads how many bytes its connection still holds unsent (the
transport reports it, or the peer counts its writes until they are flushed); past a quarter of
OUTBOUND_BUFFER_BYTES it drops typing events (they are stale by the time they would arrive), past all
of it the socket is closed with 1013 "slow consumer". The client resumes with `?after=` and loses
nothing, and the server never holds more than the bound for one reader.

Messages reach a conversation socket in id order, without gaps and without repeats: a peer remembers the
last id it delivered, skips repeats, and parks an early arrival until the ids before it arrive or are
fetched from MongoDB (see ChatService.messages_after).

Notifications reach a notifications socket in id order too (ids per user, numbered by the notifications
log, services/realtime/notifications_log.py): a peer skips ids it already delivered, and on a jump (the
bus lost events while Redis was away) holds live ones back while `notification_filler` sends it what the
log kept in between.

Every socket holds a token, and the hub enforces two things about it. A revocation (services/accounts/
revocation.py) arrives on the one channel every node subscribes to from its start, `revocations`, and
closes the user's local sockets opened with older tokens, whatever they are open on. And a token expires:
each socket has a deadline (its access token's `exp` plus SOCKET_TOKEN_GRACE, moved on by an `auth`
frame), kept in one heap per node, and a sweep every EXPIRY_SWEEP_S closes those past it with 4004. There
is no timer per socket; a renewal pushes a new heap entry and the stale one is skipped when it comes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from services.core.metrics import Metrics, frame_label
from services.realtime.bus import Bus, conversation_channel, user_channel
from services.realtime.close_codes import (
    CLOSE_BAD_TOKEN,
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TRY_AGAIN_LATER,
)
from services.realtime.events import (
    CONVERSATION,
    CONVERSATION_CLOSED,
    NODE_LOST,
    NOTIFICATION,
    PRESENCE_GONE,
    REVOCATIONS_CHANNEL,
    REVOKED,
    decode,
)

log = logging.getLogger("chat.connections")

MAX_PARKED = 1000
GAP_FILL_DELAY_S = 0.25
# A slow consumer's close frame waits behind everything it has not read: its connection is dropped
# this long after, instead of after the usual wait for a close handshake that cannot come in time.
SLOW_CONSUMER_GRACE_S = 2.0
DEAD_PEER_GRACE_S = 1.0
# At a stop before the process exits: how often sockets still writing their close frame are looked at.
RELEASE_POLL_S = 0.05
# How often the node looks for sockets whose token deadline passed: they close at most this late.
EXPIRY_SWEEP_S = 1.0
# The close reasons of a revocation, by close code.
REVOKED_REASONS = {
    CLOSE_BAD_TOKEN: "token revoked",
    CLOSE_TOKEN_EXPIRED: "sign-in revoked: reconnect with a fresh token",
}


# Live notifications one socket may hold back while its replay from the log is under way.
MAX_HELD_NOTIFICATIONS = 1000


class LimitExceeded(Exception):
    """A connection limit refuses a new socket, closed with `close_code` and this reason: 1013 when the node
    is full (another node, or this one later, will take it: the client retries), 1008 for one user's caps
    (retrying would not help)."""

    def __init__(self, reason: str, close_code: int = CLOSE_POLICY) -> None:
        super().__init__(reason)
        self.close_code = close_code


class Peer:
    """The transport-independent half of a socket; the WebSocket handler supplies `_transmit`, `_shut` and
    `_unsent_bytes`."""

    user_id: int = 0
    conversation_id: int | None = None
    # A conversation socket: the conversation's other participants, whose status frames it is sent.
    others: tuple[int, ...] = ()
    # The generation of the token the socket was opened (or last renewed) with: a revocation of the user
    # closes the sockets below the generation it starts (services/accounts/revocation.py).
    token_generation: int = 0
    # When the socket is closed 4004 unless an `auth` frame moves it on: the token's `exp` plus the grace,
    # in seconds since the epoch. None: no deadline (a transport without a token).
    token_deadline: float | None = None

    def init_peer(self, connections: Connections, outbound_limit: int) -> None:
        self.connections = connections
        self.outbound_limit = outbound_limit
        # Bytes written through a transport that cannot report its unsent bytes, until their flush.
        self.counted = 0
        self.last_message_id: int | None = None
        self.parked: dict[int, bytes] = {}
        self.resume_buffer: list[tuple[int, bytes]] | None = None
        # Messages after this id are the ones this socket shows (backlog, then live); set when it joins.
        self.shown_after: int | None = None
        self.last_activity = time.monotonic()
        self.closing = False
        # Notifications sockets: the last notification id delivered, and live ones held back while a
        # replay from the log is under way (None when none is).
        self.last_notification_id: int | None = None
        self.notification_buffer: list[tuple[int, bytes]] | None = None

    # -- supplied by the transport -----------------------------------------------------------------

    def _transmit(self, data: bytes) -> Awaitable[None] | None:
        """Write `data`; raises when the connection is gone. Returns None only when `_unsent_bytes`
        accounts for the write, else an awaitable that completes once it is flushed."""
        raise NotImplementedError

    def _unsent_bytes(self) -> int | None:
        """Bytes written to the connection that it has not sent yet, or None if it cannot tell."""
        return None

    def _shut(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def _send_ping(self) -> None:
        raise NotImplementedError

    def _drop(self, after_s: float) -> None:
        """End the connection after `after_s` whatever the client does (optional)."""

    def _release(self) -> bool:
        """Stop reading the connection, leaving it to the kernel when the process exits; False when the
        transport cannot (optional)."""
        return False

    # -- output ------------------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Bytes this socket owes its reader: written and not yet sent."""
        unsent = self._unsent_bytes()
        return self.counted if unsent is None else unsent

    def push(self, data: bytes, *, droppable: bool = False) -> None:
        if self.closing:
            return
        owed = self.outstanding
        if droppable and owed > self.outbound_limit // 4:
            return
        if owed + len(data) > self.outbound_limit:
            self.slow_consumer()
            return
        try:
            pending = self._transmit(data)
        except Exception:  # the connection went away under us; its close callback cleans up
            return
        if pending is not None:
            # A future and a callback per frame: only for transports that cannot report unsent bytes.
            size = len(data)
            self.counted += size
            future = asyncio.ensure_future(pending)

            def flushed(done: asyncio.Future[None]) -> None:
                self.counted -= size
                if not done.cancelled():
                    done.exception()  # retrieved, so a closed stream does not log "never retrieved"

            future.add_done_callback(flushed)

    def push_json(self, frame: dict[str, Any]) -> None:
        self.push(orjson.dumps(frame))

    def shut(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self._shut(code, reason)

    def slow_consumer(self) -> None:
        if self.closing:
            return
        if self.connections.metrics is not None:
            self.connections.metrics.slow_consumers.inc()
        self._drop(SLOW_CONSUMER_GRACE_S)  # first: closing detaches the transport from the handler
        # Retryable: the client reconnects with `?after=` and gets what it could not read, from the store.
        self.shut(CLOSE_TRY_AGAIN_LATER, "slow consumer")

    # -- ordered message delivery ------------------------------------------------------------------

    def deliver_message(self, seq: int, data: bytes) -> None:
        if self.resume_buffer is not None:
            self.resume_buffer.append((seq, data))
            return
        last = self.last_message_id
        if last is None or seq == last + 1:
            self.push(data)
            self.last_message_id = seq
            self._drain_parked()
        elif seq > last + 1:
            if len(self.parked) >= MAX_PARKED:
                self.slow_consumer()
                return
            self.parked[seq] = data
            self.connections.request_gap_fill(self)
        # seq <= last: already delivered (resume overlap or a repeat): nothing to do

    def receive_page(self, page: list[tuple[int, bytes | None]]) -> None:
        """Messages fetched from MongoDB, as ChatService.backlog gives them (None marks a hole)."""
        for seq, frame in page:
            if frame is None:
                self.skip_message(seq)
            else:
                self.deliver_message(seq, frame)

    def skip_message(self, seq: int) -> None:
        """`seq` is a hole (never stored): move past it."""
        if self.last_message_id is not None and seq == self.last_message_id + 1:
            self.last_message_id = seq
            self._drain_parked()

    def _drain_parked(self) -> None:
        while self.parked and self.last_message_id is not None:
            nxt = self.last_message_id + 1
            data = self.parked.pop(nxt, None)
            if data is None:
                # Drop anything that is already behind us, keep what is still ahead.
                for seq in [s for s in self.parked if s <= self.last_message_id]:
                    del self.parked[seq]
                return
            self.push(data)
            self.last_message_id = nxt

    def begin_resume(self) -> None:
        """Live messages are held back until `end_resume` (the backlog is being sent first)."""
        self.resume_buffer = []

    def end_resume(self, shown_after: int, last_sent: int) -> None:
        """The socket shows messages after `shown_after`; the backlog went up to `last_sent`."""
        buffered, self.resume_buffer = self.resume_buffer or [], None
        self.shown_after = shown_after
        self.last_message_id = last_sent
        for seq, data in buffered:
            self.deliver_message(seq, data)

    def answer_replay(self, seq: int, data: bytes) -> None:
        """Answer a client_id retry sent on this socket with the stored message, shown once.

        Not shown yet but due (after the last one delivered): it takes its place in order, and the live
        copy, if still on its way, is then a repeat. Already shown by this socket: the client has it.
        From before this socket joined: it would never come, so it is sent now as the answer."""
        if self.last_message_id is not None and seq > self.last_message_id:
            self.deliver_message(seq, data)
        elif self.shown_after is None or seq <= self.shown_after:
            self.push(data)

    # -- ordered notifications ---------------------------------------------------------------------

    def deliver_notification(self, seq: int, data: bytes) -> None:
        """The notification numbered `seq`: pushed in id order, once."""
        if self.notification_buffer is not None:
            if len(self.notification_buffer) >= MAX_HELD_NOTIFICATIONS:
                # The replay is not getting through (a store or Redis that stalls): come back later.
                self.shut(CLOSE_TRY_AGAIN_LATER, "notifications replay too slow")
                return
            self.notification_buffer.append((seq, data))
            return
        last = self.last_notification_id
        if last is not None and seq <= last:
            return  # delivered already: a replay overlapping live traffic
        if last is not None and seq > last + 1:
            # Ids this socket never saw: the log sends them (or says they are gone) before this one.
            self.notification_buffer = [(seq, data)]
            self.connections.request_notification_fill(self)
            return
        self.push(data)
        self.last_notification_id = seq

    def begin_notification_replay(self) -> None:
        """Live notifications are held back until `end_notification_replay` (the log's are sent first)."""
        if self.notification_buffer is None:
            self.notification_buffer = []

    def end_notification_replay(self, last_sent: int | None) -> None:
        """The replay went up to `last_sent` (None: the socket takes whatever comes next): deliver what was
        held back after it, in order. No gap is looked for among those: the replay just read the log up to
        its newest id, so one could only be an id the log no longer has."""
        buffered, self.notification_buffer = self.notification_buffer or [], None
        if last_sent is not None:
            self.last_notification_id = max(last_sent, self.last_notification_id or 0)
        for seq, data in sorted(buffered, key=lambda item: item[0]):
            last = self.last_notification_id
            if last is None or seq > last:
                self.push(data)
                self.last_notification_id = seq


GapFiller = Callable[[int, list[Peer]], Awaitable[None]]
NotificationFiller = Callable[[Peer], Awaitable[None]]


class Connections:
    def __init__(self, bus: Bus, *, max_sockets: int, max_per_user: int, max_conversation_per_user: int) -> None:
        self.bus = bus
        self.max_sockets = max_sockets
        self.max_per_user = max_per_user
        self.max_conversation_per_user = max_conversation_per_user
        self.peers: set[Peer] = set()
        # Set by `close_all`: the node stops, and every socket it held goes with it.
        self.closing_all = False
        self.by_user: dict[int, set[Peer]] = defaultdict(set)
        self.notifications_by_user: dict[int, set[Peer]] = defaultdict(set)
        self.by_conversation: dict[int, set[Peer]] = defaultdict(set)
        # The conversation sockets each user's status frames go to (those where the user is another
        # participant), and the username they were shown: users handed over by a stopping node, or swept
        # with a dead one, are announced offline to them from here, without a store read per user.
        self.watchers: dict[int, set[Peer]] = {}
        self.participant_names: dict[int, str] = {}
        self.gap_filler: GapFiller | None = None
        # Sends a notifications socket what the log kept after its last id, then ends its replay
        # (Services.fill_notifications); called when live ids jump.
        self.notification_filler: NotificationFiller | None = None
        self._notification_fills: set[asyncio.Task[None]] = set()
        # Called with a conversation id when an unmatch or block closed it (drop caches).
        self.on_conversation_closed: list[Callable[[int], None]] = []
        # Called with (conversation id, message id) for every stored message the bus brings: the
        # message writer numbers this node's next message in that conversation after it.
        self.on_message_seen: list[Callable[[int, int], None]] = []
        # Called with a user id when a revocation of that user arrives (drop what is cached of the account).
        self.on_user_revoked: list[Callable[[int], None]] = []
        # Run when any node dies (its presence swept): catch the conversation sockets up from the store.
        self.on_node_lost: list[Callable[[], None]] = []
        # Called with the header of a "users gone offline" event (services/chat/presence.py).
        self.on_presence_gone: list[Callable[[dict[str, Any]], None]] = []
        self.metrics: Metrics | None = None
        self._presence_versions: dict[int, int] = {}
        self._all_gone = asyncio.Event()
        self._gap_tasks: dict[int, asyncio.Task[None]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        # (deadline, tie-breaker, peer): the sockets' token deadlines, earliest first (see the module docstring).
        self._deadlines: list[tuple[float, int, Peer]] = []
        self._deadline_order = itertools.count()
        self._expiry: asyncio.Task[None] | None = None
        bus.set_handler(self.on_bus_event)

    def count(self, user_id: int) -> int:
        return len(self.by_user.get(user_id, ()))

    def check_limits(self, user_id: int, conversation_id: int | None) -> None:
        if len(self.peers) >= self.max_sockets:
            raise LimitExceeded("server full", CLOSE_TRY_AGAIN_LATER)
        if self.count(user_id) >= self.max_per_user:
            raise LimitExceeded("too many connections")
        if conversation_id is not None:
            in_conversations = sum(1 for p in self.by_user.get(user_id, ()) if p.conversation_id is not None)
            if in_conversations >= self.max_conversation_per_user:
                raise LimitExceeded("too many conversation connections")

    async def add(self, peer: Peer) -> None:
        """Register a peer and make sure its channel is subscribed before returning (so nothing
        published after this returns can be missed)."""
        self.check_limits(peer.user_id, peer.conversation_id)
        self.peers.add(peer)
        self.by_user[peer.user_id].add(peer)
        if peer.conversation_id is None:
            group, channel = self.notifications_by_user[peer.user_id], user_channel(peer.user_id)
        else:
            group, channel = self.by_conversation[peer.conversation_id], conversation_channel(peer.conversation_id)
        first = not group
        group.add(peer)
        for other in peer.others:
            self.watchers.setdefault(other, set()).add(peer)
        if peer.token_deadline is not None:
            self._watch_deadline(peer, peer.token_deadline)
        if first:
            await self.bus.subscribe(channel)

    async def remove(self, peer: Peer) -> None:
        if peer not in self.peers:
            return
        self.peers.discard(peer)
        if not self.peers:
            self._all_gone.set()
        _discard(self.by_user, peer.user_id, peer)
        if peer.conversation_id is None:
            emptied = _discard(self.notifications_by_user, peer.user_id, peer)
            channel = user_channel(peer.user_id)
        else:
            emptied = _discard(self.by_conversation, peer.conversation_id, peer)
            channel = conversation_channel(peer.conversation_id)
            for other in peer.others:
                if _discard(self.watchers, other, peer):
                    self.participant_names.pop(other, None)
        if emptied and not self.closing_all:
            # At shutdown the bus goes away with every subscription: one UNSUBSCRIBE per emptied
            # channel was thousands of commands in a stopping node's busiest seconds.
            with contextlib.suppress(Exception):
                await self.bus.unsubscribe(channel)

    # -- fan-out -----------------------------------------------------------------------------------

    def _on_cluster_event(self, header: dict[str, Any], kind: object) -> None:
        """An event of the channel every node hears: a revocation, or a node lost."""
        if self.metrics is not None:
            self.metrics.bus_events.child(str(kind)).inc()
        if kind == REVOKED:
            generation = header.get("g")
            self._revoke(
                int(header["u"]),
                None if generation is None else int(generation),
                int(header.get("c", CLOSE_BAD_TOKEN)),
            )
        elif kind == NODE_LOST:
            for catch_up in self.on_node_lost:
                catch_up()
        elif kind == PRESENCE_GONE:
            for hook in self.on_presence_gone:
                hook(header)

    def on_bus_event(self, channel: str, payload: bytes) -> None:
        header, frame = decode(payload)
        kind = header.get("k")
        if channel == REVOCATIONS_CHANNEL:
            self._on_cluster_event(header, kind)
            return
        target = int(channel.partition(":")[2])
        if self.metrics is not None:
            self._count_event(self.metrics, header, kind, target)
        if kind == NOTIFICATION:
            self._to_user(target, header.get("n"), frame)
        elif kind == CONVERSATION:
            self._to_conversation(target, header, frame)
        elif kind == CONVERSATION_CLOSED:
            for hook in self.on_conversation_closed:
                hook(target)
            for peer in list(self.by_conversation.get(target, ())):
                peer.shut(CLOSE_FORBIDDEN, "conversation closed")

    def _to_user(self, user_id: int, seq: Any, frame: bytes) -> None:
        """A notification to the user's notifications sockets; numbered ones (`n`) in id order."""
        for peer in list(self.notifications_by_user.get(user_id, ())):
            if seq is None:
                peer.push(frame)
            else:
                peer.deliver_notification(int(seq), frame)

    def _revoke(self, user_id: int, generation: int | None, close_code: int) -> None:
        """Close the user's sockets opened with a token below `generation` (all of them when None)."""
        for hook in self.on_user_revoked:
            hook(user_id)
        reason = REVOKED_REASONS.get(close_code, "token revoked")
        for peer in list(self.by_user.get(user_id, ())):
            # A socket opened with a token issued after the revocation (the new pair of a password change)
            # has reached the new generation and stays.
            if generation is None or peer.token_generation < generation:
                peer.shut(close_code, reason)

    def _count_event(self, metrics: Metrics, header: dict[str, Any], kind: Any, target: int) -> None:
        metrics.bus_events.child(str(kind)).inc()
        published = header.get("ts")
        if isinstance(published, float):
            metrics.deliver_latency.observe(max(0.0, time.time() - published))
        receivers = self.notifications_by_user if kind == NOTIFICATION else self.by_conversation
        count = len(receivers.get(target, ()))
        if count and kind != CONVERSATION_CLOSED:
            metrics.frames_out.child(frame_label(header.get("t"))).inc(count)

    def _to_conversation(self, conversation_id: int, header: dict[str, Any], frame: bytes) -> None:
        if "pv" in header and self._stale_presence(int(header["pu"]), int(header["pv"])):
            return
        exclude = header.get("x")
        seq = header.get("s")
        droppable = bool(header.get("d"))
        if seq is not None:
            for seen in self.on_message_seen:
                seen(conversation_id, int(seq))
        for peer in list(self.by_conversation.get(conversation_id, ())):
            if peer.user_id == exclude:
                continue
            if seq is not None:
                peer.deliver_message(int(seq), frame)
            else:
                peer.push(frame, droppable=droppable)

    def remember_name(self, user_id: int, username: str) -> None:
        """The username a socket here was shown for a participant it watches (in the status frame it got
        when it joined): what an offline frame built on this node says."""
        if user_id in self.watchers:
            self.participant_names[user_id] = username

    def status_to_watchers(self, user_id: int, version: int, frame: bytes) -> None:
        """A status frame of the user to every conversation socket here that watches them, unless a newer
        status of theirs was passed on already."""
        if self._stale_presence(user_id, version):
            return
        for peer in list(self.watchers.get(user_id, ())):
            peer.push(frame)

    def _stale_presence(self, user_id: int, version: int) -> bool:
        """True for a status older than one already passed on for that user (announcements race).
        One transition arrives once per shared conversation, all with the same version: equal passes."""
        if version < self._presence_versions.get(user_id, 0):
            return True
        if len(self._presence_versions) > 100_000:
            self._presence_versions.clear()
        self._presence_versions[user_id] = version
        return False

    # -- gaps --------------------------------------------------------------------------------------

    def request_gap_fill(self, peer: Peer) -> None:
        cid = peer.conversation_id
        if cid is None or self.gap_filler is None or cid in self._gap_tasks:
            return
        self._gap_tasks[cid] = asyncio.get_running_loop().create_task(self._fill_gaps(cid))

    async def _fill_gaps(self, conversation_id: int) -> None:
        try:
            # Usually the missing message is simply still on its way through the bus.
            await asyncio.sleep(GAP_FILL_DELAY_S)
            waiting = [p for p in self.by_conversation.get(conversation_id, ()) if p.parked]
            if waiting and self.gap_filler is not None:
                await self.gap_filler(conversation_id, waiting)
        except Exception:
            log.warning("gap fill for conversation %d failed", conversation_id, exc_info=True)
        finally:
            self._gap_tasks.pop(conversation_id, None)
        if any(p.parked for p in self.by_conversation.get(conversation_id, ())):
            self._gap_tasks[conversation_id] = asyncio.get_running_loop().create_task(self._fill_gaps(conversation_id))

    def request_notification_fill(self, peer: Peer) -> None:
        """Have the log send `peer` the notifications it missed (its replay was begun by the caller)."""
        if self.notification_filler is None:
            peer.end_notification_replay(None)
            return
        task = asyncio.get_running_loop().create_task(self._fill_notifications(peer, self.notification_filler))
        # The loop keeps only weak references to tasks: hold each until it is done.
        self._notification_fills.add(task)
        task.add_done_callback(self._notification_fills.discard)

    async def _fill_notifications(self, peer: Peer, filler: NotificationFiller) -> None:
        try:
            await filler(peer)
        except Exception:
            log.warning("notification replay for user %d failed", peer.user_id, exc_info=True)
        finally:
            if peer.notification_buffer is not None:
                peer.end_notification_replay(None)

    # -- token deadlines ----------------------------------------------------------------------------

    def extend_deadline(self, peer: Peer, deadline: float) -> None:
        """The peer's token was renewed: it stays open until `deadline` (never earlier than it was)."""
        if peer.token_deadline is not None and deadline <= peer.token_deadline:
            return
        peer.token_deadline = deadline
        if peer in self.peers:
            self._watch_deadline(peer, deadline)

    def _watch_deadline(self, peer: Peer, deadline: float) -> None:
        heapq.heappush(self._deadlines, (deadline, next(self._deadline_order), peer))

    def close_expired(self, now: float) -> None:
        """Close, with 4004, every socket whose token deadline is before `now` (seconds since the epoch)."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            deadline, _, peer = heapq.heappop(deadlines)
            # An entry whose socket was renewed since (it has a later deadline, with its own entry) or has
            # gone is stale: nothing is removed from the middle of the heap.
            if peer.token_deadline == deadline and peer in self.peers:
                peer.shut(CLOSE_TOKEN_EXPIRED, "access token expired")
        if len(deadlines) > 2 * len(self.peers) + 1024:
            # Mostly entries of sockets that closed or renewed: rebuilt from the open sockets.
            self._deadlines = [
                (p.token_deadline, next(self._deadline_order), p) for p in self.peers if p.token_deadline is not None
            ]
            heapq.heapify(self._deadlines)

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_S)
            try:
                self.close_expired(time.time())
            except Exception:  # the sweep must outlive any one socket's failure
                log.exception("token expiry sweep failed")

    # -- liveness and shutdown ---------------------------------------------------------------------

    async def start(self, ping_interval_s: float) -> None:
        """Listen for revocations (every node, from its start, whatever sockets it holds), and run the
        node's heartbeat and its sweep of expired tokens."""
        await self.bus.subscribe(REVOCATIONS_CHANNEL)
        self.start_heartbeat(ping_interval_s)
        if self._expiry is None:
            self._expiry = asyncio.get_running_loop().create_task(self._expiry_loop())

    def start_heartbeat(self, interval_s: float) -> None:
        if self._heartbeat is None and interval_s > 0:
            self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop(interval_s))

    async def _heartbeat_loop(self, interval_s: float) -> None:
        """One loop for the whole node: ping every socket, close those silent for two intervals."""
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            for peer in list(self.peers):
                if now - peer.last_activity > 2 * interval_s + 1:
                    if not peer.closing:
                        # Silent through two pings: it will not answer a close handshake either.
                        peer._drop(DEAD_PEER_GRACE_S)
                        peer.shut(CLOSE_GOING_AWAY, "ping timeout")
                else:
                    with contextlib.suppress(Exception):
                        peer._send_ping()
            await asyncio.sleep(0)

    async def close_all(self, code: int, reason: str, grace_s: float = 2.0, *, process_ends: bool = False) -> None:
        """Close every socket, then give clients up to `grace_s` to answer the close frames, so that
        the frames are on the wire before the process exits (a client then sees `code`, not 1006).

        `process_ends`: the process exits right after this stop, and its exit closes every connection.
        Then only the close frames have to leave: a socket whose frame the kernel has taken is released
        (no longer read) instead of waited for. Reading 13,333 answers, each closing its connection
        and running the socket's cleanup, was 4 to 5 s of a node's 5 to 7 s stop (BENCHMARKS.md), while
        its clients waited for it to listen again. A client whose answer the node never reads still sees
        `code`: it has read the frame before it answers, and the exit only resets the connection."""
        for task in (self._heartbeat, self._expiry):
            if task is not None:
                task.cancel()
        self._heartbeat = self._expiry = None
        for task in [*self._gap_tasks.values(), *self._notification_fills]:
            task.cancel()
        self.closing_all = True
        peers = list(self.peers)
        for peer in peers:
            peer.shut(code, reason)
        if peers:
            log.info("shutdown: closing %d sockets with %d", len(peers), code)
        if process_ends:
            await self._release_once_sent(peers, grace_s)
        elif self.peers:
            self._all_gone.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), grace_s)

    async def _release_once_sent(self, peers: list[Peer], grace_s: float) -> None:
        """Release each of these sockets once its close frame is written, waiting at most `grace_s` for
        slow readers' buffers; a socket its transport cannot release is waited for until it is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        waiting = peers
        while True:
            waiting = [p for p in waiting if p in self.peers and not (p.outstanding == 0 and p._release())]
            if not waiting or loop.time() >= deadline:
                return
            await asyncio.sleep(RELEASE_POLL_S)


def _discard(index: dict[int, set[Peer]], key: int, peer: Peer) -> bool:
    """Remove peer from index[key]; True when that emptied the group."""
    group = index.get(key)
    if group is None:
        return False
    group.discard(peer)
    if not group:
        del index[key]
        return True
    return False
