"""This node's sockets, and the fan-out of bus events to them.

Every socket is a `Peer`. The registry indexes peers by conversation and by user, subscribes the bus to a
channel when the first local peer needs it and unsubscribes when the last one leaves, and hands each bus
event to exactly the peers it concerns: work per event is proportional to the sockets that receive it,
never to all sockets of the node.

Output is bounded per socket. A peer reads how many bytes its connection still holds unsent (the
transport reports it, or the peer counts its writes until they are flushed); past a quarter of
OUTBOUND_BUFFER_BYTES it drops typing events (they are stale by the time they would arrive), past all
of it the socket is closed with 1008 "slow consumer". The client resumes with `?after=` and loses
nothing, and the server never holds more than the bound for one reader.

Messages reach a conversation socket in id order, without gaps and without repeats: a peer remembers the
last id it delivered, skips repeats, and parks an early arrival until the ids before it arrive or are
fetched from MongoDB (see ChatService.messages_after).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from services.core.metrics import Metrics, frame_label
from services.realtime.bus import Bus, conversation_channel, user_channel
from services.realtime.close_codes import CLOSE_FORBIDDEN, CLOSE_GOING_AWAY, CLOSE_POLICY
from services.realtime.events import CONVERSATION, CONVERSATION_CLOSED, NOTIFICATION, decode

log = logging.getLogger("chat.connections")

MAX_PARKED = 1000
GAP_FILL_DELAY_S = 0.25
# A slow consumer's close frame waits behind everything it has not read: its connection is dropped
# this long after, instead of after the usual wait for a close handshake that cannot come in time.
SLOW_CONSUMER_GRACE_S = 2.0
DEAD_PEER_GRACE_S = 1.0


class LimitExceeded(Exception):
    """A connection limit refuses a new socket (closed with 1008 and this reason)."""


class Peer:
    """The transport-independent half of a socket; the WebSocket handler supplies `_transmit`, `_shut` and
    `_unsent_bytes`."""

    user_id: int = 0
    conversation_id: int | None = None

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
        self.shut(CLOSE_POLICY, "slow consumer")

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


GapFiller = Callable[[int, list[Peer]], Awaitable[None]]


class Connections:
    def __init__(self, bus: Bus, *, max_sockets: int, max_per_user: int, max_conversation_per_user: int) -> None:
        self.bus = bus
        self.max_sockets = max_sockets
        self.max_per_user = max_per_user
        self.max_conversation_per_user = max_conversation_per_user
        self.peers: set[Peer] = set()
        self.by_user: dict[int, set[Peer]] = defaultdict(set)
        self.notifications_by_user: dict[int, set[Peer]] = defaultdict(set)
        self.by_conversation: dict[int, set[Peer]] = defaultdict(set)
        self.gap_filler: GapFiller | None = None
        # Called with a conversation id when an unmatch or block closed it (drop caches).
        self.on_conversation_closed: list[Callable[[int], None]] = []
        # Called with (conversation id, message id) for every stored message the bus brings: the
        # message writer numbers this node's next message in that conversation after it.
        self.on_message_seen: list[Callable[[int, int], None]] = []
        self.metrics: Metrics | None = None
        self._presence_versions: dict[int, int] = {}
        self._all_gone = asyncio.Event()
        self._gap_tasks: dict[int, asyncio.Task[None]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        bus.set_handler(self.on_bus_event)

    def count(self, user_id: int) -> int:
        return len(self.by_user.get(user_id, ()))

    def check_limits(self, user_id: int, conversation_id: int | None) -> None:
        if len(self.peers) >= self.max_sockets:
            raise LimitExceeded("server full")
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
        if emptied:
            with contextlib.suppress(Exception):
                await self.bus.unsubscribe(channel)

    # -- fan-out -----------------------------------------------------------------------------------

    def on_bus_event(self, channel: str, payload: bytes) -> None:
        header, frame = decode(payload)
        kind = header.get("k")
        target = int(channel.partition(":")[2])
        if self.metrics is not None:
            self._count_event(self.metrics, header, kind, target)
        if kind == NOTIFICATION:
            for peer in list(self.notifications_by_user.get(target, ())):
                peer.push(frame)
        elif kind == CONVERSATION:
            self._to_conversation(target, header, frame)
        elif kind == CONVERSATION_CLOSED:
            for hook in self.on_conversation_closed:
                hook(target)
            for peer in list(self.by_conversation.get(target, ())):
                peer.shut(CLOSE_FORBIDDEN, "conversation closed")

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

    # -- liveness and shutdown ---------------------------------------------------------------------

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

    async def close_all(self, code: int, reason: str, grace_s: float = 2.0) -> None:
        """Close every socket, then give clients up to `grace_s` to answer the close frames, so that
        the frames are on the wire before the process exits (a client then sees `code`, not 1006)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        for task in list(self._gap_tasks.values()):
            task.cancel()
        for peer in list(self.peers):
            peer.shut(code, reason)
        if self.peers:
            self._all_gone.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), grace_s)


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
