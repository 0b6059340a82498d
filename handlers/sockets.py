"""The seed's two WebSockets: /ws/conversations/<id>/ and /ws/notifications/.

The handshake is always accepted and failures are reported with the seed's close codes (a browser sees
no HTTP status of a refused handshake, only a close code): 4000 no token, 4002 bad token, 4001 not a
participant (or no such conversation, never saying which), 1008 for a refused Origin or a connection limit.
After that, every frame goes through `handlers.protocol` and one method per frame type; no exception
escapes `on_message` (Tornado would drop the connection without a close frame): unexpected ones close
the socket with 1011.

A socket lives by its access token. It remembers the token's generation (a revocation of the account closes
it with 4002: services/accounts/revocation.py) and its expiry: SOCKET_TOKEN_GRACE seconds after `exp` the
node's sweep closes it with 4004 (services/realtime/hub.py), and a frame arriving after that is not
handled, unless an `auth` frame renewed the token (`renew`): same user, a valid access token.

Frames are rate-checked as they arrive, never later: `on_message` never makes Tornado wait. A frame whose
handler waits for the store is awaited by one task, and the frames that arrive meanwhile queue behind it,
after their rate checks, to be handled in arrival order (pings, `auth` and read receipts are handled at
once). So when MongoDB stalls, what a client keeps sending at the documented rates waits and is handled
once the store answers, never counted as a burst against it. The queue is bounded (MAX_WAITING_FRAMES,
MAX_WAITING_CHARS): past it the node is not keeping up, and the socket is closed 1013 to come back later.

A notifications socket opened with `?after=<notification id>` first receives what the user's notifications
log kept after that id (`notifications_truncated` first when some of it is no longer kept), then live
notifications, none missing and none twice (services/realtime/notifications_log.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import time
from collections import deque
from collections.abc import Awaitable, Collection, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import tornado.websocket

from handlers import (
    frames,  # noqa: F401 - registers the frame types
    tornado_internals,
)
from handlers.base import set_common_headers
from handlers.errors import BadFrame, report
from handlers.protocol import REGISTRY, ClientFrame, FrameSpec
from services.accounts.auth import AccessGrant, TokenError
from services.chat.presence import OpenConversation
from services.chat.service import ConversationLookup
from services.core import errors
from services.core.limits import TokenBucket
from services.core.logs import redact
from services.realtime.admission import Admission
from services.realtime.close_codes import (
    CLOSE_BAD_FRAME,
    CLOSE_BAD_TOKEN,
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_NO_TOKEN,
    CLOSE_POLICY,
    CLOSE_SERVER_ERROR,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TRY_AGAIN_LATER,
    close_label,
)
from services.realtime.hub import LimitExceeded, Peer

if TYPE_CHECKING:
    from services.core.container import Services

log = logging.getLogger("chat.ws")

LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1"}
BACKLOG_PAGE = 100
STRIKE_WINDOW_S = 60.0
# Seconds a socket closed for persistent abuse has to read its close frame before it is dropped.
ABUSER_GRACE_S = 1.0
MAX_REASON_CHARS = 100
# Frames one socket may have queued behind one that waits for the store (handled in arrival order): more
# than FRAME_BURST plus 30 s of FRAME_RATE at their defaults, so that a client sending at the documented
# rates through a store stall of that length is queued, not cut off.
MAX_WAITING_FRAMES = 1000
MAX_WAITING_CHARS = 1024 * 1024
# Notification ids are microseconds since the epoch plus a count (services/realtime/notifications_log.py).
MAX_NOTIFICATION_ID_DIGITS = 17

# poll() events meaning the peer is gone: POLLRDHUP (Linux) reports a peer that shut its side even when
# bytes it sent before (its close frame) are still unread.
_HUNG_UP = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR

_cleanups: set[asyncio.Task[None]] = set()
_frame_tasks: set[asyncio.Task[None]] = set()


class BaseSocket(tornado.websocket.WebSocketHandler, Peer):
    endpoint = "conversation"
    server_close_code: int | None = None
    server_close_reason: str | None = None
    # The connection a close was written to: Tornado's `close` forgets it, and a node that stops still
    # asks how much of it has left and releases it (Connections.close_all).
    closed_connection: tornado.websocket.WebSocketProtocol | None = None

    def initialize(self, services: Services) -> None:
        self.services = services
        self.arrived_at = time.monotonic()
        self.registered = False
        self.username = ""
        settings = services.settings
        self.frame_bucket = TokenBucket(settings.frame_rate, settings.frame_burst)
        self.strikes: list[float] = []
        # Frames that arrived (rate-checked) while an earlier one waits for the store, with their sizes;
        # None when nothing waits.
        self.waiting_frames: deque[tuple[FrameSpec, ClientFrame, int]] | None = None
        self.waiting_chars = 0
        self.init_peer(services.connections, settings.outbound_buffer_bytes)

    def set_default_headers(self) -> None:
        set_common_headers(self)  # the handshake's 101 carries the same headers as every other answer

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        protocol = super().get_websocket_protocol()
        if protocol is None:
            return None
        return tornado_internals.StrictCloseProtocol(self, False, protocol.params)  # type: ignore[attr-defined]

    def refuse(self, exc: Exception) -> None:
        """Close a socket whose opening failed, with the code the error map gives (handlers/errors.py)."""
        answer = report(exc)
        if self.services.shutting_down and not isinstance(exc, LimitExceeded):
            # Whatever failed, the node is going away (its store client may be closed already): the client
            # reconnects, to another node, as after any 1001.
            self.shut(CLOSE_GOING_AWAY, "server shutting down")
        elif answer.code == "internal_error":
            log.error("unexpected error opening a %s socket", self.endpoint, exc_info=exc)
            self.shut(CLOSE_SERVER_ERROR, "unexpected server error")
        else:
            self.shut(answer.open_close_code, answer.message[:MAX_REASON_CHARS])

    # Origin is checked in open() so that a refusal is the seed's close code 1008, not an HTTP 403.
    def check_origin(self, origin: str) -> bool:
        return True

    def origin_allowed(self) -> bool:
        origin = self.request.headers.get("Origin")
        if not origin:
            return True  # not a browser: cross-site hijacking needs a browser
        allowed = self.services.settings.allowed_origin_set
        if "*" in allowed or origin.rstrip("/").lower() in allowed:
            return True
        parts = urlsplit(origin)
        host = (parts.hostname or "").lower()
        if host == self.request.host_name.lower():
            return True
        # A page served on the developer's own machine (a dev server on any port) may connect while
        # developing. In production a localhost Origin is whatever runs on the visitor's machine, not us.
        return host in LOCAL_HOSTS and self.services.settings.environment == "development"

    def authenticate(self) -> int | None:
        """The user id, or None after closing with the seed's code. The socket holds the token's grant."""
        if not self.origin_allowed():
            self.shut(CLOSE_POLICY, "origin not allowed")
            return None
        token = self.get_query_argument("token", None)
        if not token:
            self.shut(CLOSE_NO_TOKEN, "authentication required")
            return None
        try:
            grant = self.services.tokens.verify_access(token)
        except TokenError:
            self.shut(CLOSE_BAD_TOKEN, "invalid token")
            return None
        self.user_id = grant.user_id
        self.hold(grant)
        return grant.user_id

    def gone_while_waiting(self) -> bool:
        """Whether the client hung up while this socket's opening waited for a turn at the join gate: a
        client that gave up waiting (its own timeout) has usually reconnected already, and reading the store
        for the socket it left would take a turn from one still waiting. Nothing reads the connection until
        the opening ends, so its close frame is not seen yet: the kernel is asked whether the peer shut
        its side (a client drops the connection once its close frame goes unanswered)."""
        sock = self._kernel_socket()
        if sock is None or self.closing:
            gone = True
        else:
            poller = select.poll()
            poller.register(sock.fileno(), _HUNG_UP)
            gone = any(events & _HUNG_UP for _, events in poller.poll(0))
        if gone:
            self.services.metrics.websocket_joins_abandoned.inc()
        return gone

    def admission(self, user_id: int) -> Admission:
        """A place at the node's join gate, counted against the user's cap with the sockets already open;
        the block gets whether the opening waited for its turn (only then can its client have left)."""
        return self.services.joins.admit(user_id, self.services.connections.count(user_id))

    def hold(self, grant: AccessGrant) -> None:
        """Live by this token from now on: its generation, and its expiry plus SOCKET_TOKEN_GRACE."""
        self.token_generation = grant.generation
        deadline = grant.expires_at + self.services.settings.socket_token_grace_s
        if self.token_deadline is None:
            self.token_deadline = deadline
        else:
            self.services.connections.extend_deadline(self, deadline)

    async def register(self, open_conversations: Collection[int] | None = None) -> bool:
        """Join the node's registry; `open_conversations` as for `PresenceService.connected`
        (services/chat/presence.py)."""
        if self.services.shutting_down:
            # Opened while the node stops: the client reconnects (to another node) as after any 1001.
            self.shut(CLOSE_GOING_AWAY, "server shutting down")
            return False
        try:
            await self.services.connections.add(self)
        except LimitExceeded as exc:
            self.refuse(exc)
            return False
        self.registered = True
        self._forget_handshake()
        self._bound_kernel_buffer()
        metrics = self.services.metrics
        metrics.open_sockets_of(self.endpoint).inc()
        metrics.connections.child(self.endpoint).inc()
        await self.services.presence.connected(self.user_id, open_conversations)
        # A revocation that reached this node while the socket was opening found it unregistered; it also
        # dropped the cached account, so this reads the account again (and costs nothing otherwise).
        if not await self.services.users.accepts(self.user_id, self.token_generation):
            self.shut(CLOSE_BAD_TOKEN, "token revoked")
            return False
        return True

    def _forget_handshake(self) -> None:
        """Drop what the handshake carried and nothing reads once the socket joined: the request's and the
        101's headers and the query arguments (the close line reads the URI and the address, kept apart).
        Each header and argument is a list, kept for the socket's whole life by Tornado's handshake
        coroutine: memory at tens of thousands of sockets, and work for every pass of the garbage
        collector."""
        tornado_internals.empty_handshake_headers(self)
        self.request.query_arguments = {}
        self.request.arguments = {}

    def renew(self, token: str) -> Awaitable[None] | None:
        """The `auth` frame: live by a new access token of the same user from now on. Anything else (another
        user's token, a refresh token, an invalid, expired or revoked one) closes the socket with 4002.

        A token that is refused by its signature or its user closes the socket before the next frame is
        handled (a `ping` behind it gets no `pong`); only the revocation check waits on the store."""
        try:
            grant = self.services.tokens.verify_access(token)
        except TokenError:
            self.shut(CLOSE_BAD_TOKEN, "invalid token")
            return None
        if grant.user_id != self.user_id:
            self.shut(CLOSE_BAD_TOKEN, "token of another user")
            return None
        return self._renew_if_accepted(grant)

    async def _renew_if_accepted(self, grant: AccessGrant) -> None:
        if not await self.services.users.accepts(grant.user_id, grant.generation):
            self.shut(CLOSE_BAD_TOKEN, "invalid token")
            return
        if not self.closing:
            self.hold(grant)

    def token_expired(self) -> bool:
        """Whether the socket's deadline passed (the sweep closes it within a second; no frame waits for that)."""
        return self.token_deadline is not None and time.time() > self.token_deadline

    # -- Peer transport ----------------------------------------------------------------------------

    def _transmit(self, data: bytes) -> Awaitable[None] | None:
        connection = self.ws_connection
        if connection is None or self._unsent_bytes() is None:
            return self.write_message(data)  # Peer counts this write until the future completes
        if connection.is_closing():
            raise tornado.websocket.WebSocketClosedError()
        tornado_internals.write_text_frame(connection, data)
        return None

    def _unsent_bytes(self) -> int | None:
        """Bytes written to this socket that the kernel has not taken yet, or None when `_transmit` has
        to go through `write_message` (Peer then counts the writes itself): a handler that asks for
        compression (get_compression_options) keeps write_message, which compresses."""
        if self.get_compression_options() is not None:
            return None
        return tornado_internals.unsent_bytes(self._last_connection)

    @property
    def _last_connection(self) -> tornado.websocket.WebSocketProtocol | None:
        """The connection frames were last written to: Tornado's, or, once a close forgot it, the one the
        close frame was written to."""
        return self.ws_connection or self.closed_connection

    def _shut(self, code: int, reason: str) -> None:
        self.server_close_code = code
        self.server_close_reason = reason
        self.closed_connection = self.ws_connection
        self.close(code, reason)

    def _send_ping(self) -> None:
        self.ping()

    def _drop(self, after_s: float) -> None:
        stream = self.ws_connection.stream if self.ws_connection is not None else None
        if stream is not None:
            stream.io_loop.call_later(after_s, lambda: None if stream.closed() else stream.close())

    def _release(self) -> bool:
        return tornado_internals.stop_reading(self._last_connection)

    def _kernel_socket(self) -> socket.socket | None:
        """The connection's socket, None once Tornado has let it go."""
        stream = self.ws_connection.stream if self.ws_connection is not None else None
        return getattr(stream, "socket", None)

    def _bound_kernel_buffer(self) -> None:
        """What a reader costs is our outbound bound plus the kernel's send buffer, which autotuning
        grows up to tcp_wmem's maximum (4 MiB by default): four times OUTBOUND_BUFFER_BYTES, and as
        much delay before a reader that stopped reading is noticed. An eighth of the bound is plenty
        for chat frames (Linux doubles the figure for its own bookkeeping)."""
        sock = self._kernel_socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(16 * 1024, self.outbound_limit // 8))

    def on_pong(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self._count_control_frame()

    def on_ping(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self._count_control_frame()

    def _count_control_frame(self) -> None:
        """Control frames spend the socket's frame budget like any other frame. Tornado answers every
        ping with a pong before calling us, outside the outbound bound: a flood of pings from a client
        that never reads would otherwise pile pongs up in memory, and cost a write each."""
        if not self.closing and self.registered and self.frame_bucket.take() > 0:
            self.strike()

    # -- frames ------------------------------------------------------------------------------------

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        """Validate the frame against the registry, check its rates now, and run its handler, or queue
        it behind a frame whose handler waits (see the module docstring). Returns None: never makes
        Tornado wait (a subclass may, as the echo socket does), so
        every frame is rate-checked when it arrives; a frame that does not wait costs no Task. No
        exception escapes: Tornado would drop the connection without a close frame."""
        self.last_activity = time.monotonic()
        if self.closing or not self.registered:
            return None
        if self.token_expired():
            self.shut(CLOSE_TOKEN_EXPIRED, "access token expired")
            return None
        try:
            spec, frame = REGISTRY.parse(message, self.endpoint)
        except BadFrame as exc:
            self.services.metrics.frames_in.labels(type="invalid").inc()
            self.shut(CLOSE_BAD_FRAME, exc.message)
            return None
        self.services.metrics.frames_in.labels(type=spec.kind).inc()
        try:
            if spec.free is None or not spec.free(self, frame):
                wait_s = self.frame_bucket.take()
                if wait_s > 0:
                    raise errors.RateLimited("Too many frames", retry_after_s=wait_s)
            if spec.admit is not None:
                spec.admit(self, frame)
            if spec.ordered and self.waiting_frames is not None:
                self._queue(spec, frame, len(message))
                return None
            pending = spec.handler(self, frame)
        except Exception as exc:
            self.answer_error(exc, frame)
            return None
        if pending is None:
            return None
        if not spec.ordered or self.waiting_frames is not None:
            # An unordered frame that waits (an `auth` renewal) does so beside the queue, not in it.
            self._spawn(self._finish(pending, frame))
        else:
            self.waiting_frames = deque()
            self._spawn(self._handle_in_order(pending, frame))
        return None

    def _queue(self, spec: FrameSpec, frame: ClientFrame, size: int) -> None:
        """Keep a frame, already rate-checked, until the ones before it are handled. The queue is bounded:
        past it the node is not keeping up (a store that does not answer), and the client is told to come
        back later (1013), not that it misbehaved."""
        assert self.waiting_frames is not None
        if len(self.waiting_frames) >= MAX_WAITING_FRAMES or self.waiting_chars + size > MAX_WAITING_CHARS:
            self.shut(CLOSE_TRY_AGAIN_LATER, "server busy")
            return
        self.waiting_frames.append((spec, frame, size))
        self.waiting_chars += size

    async def _handle_in_order(self, pending: Awaitable[None], frame: ClientFrame) -> None:
        """Await a frame's handler, then handle the frames that queued meanwhile, in arrival order."""
        try:
            await self._finish(pending, frame)
            while self.waiting_frames and not self.closing:
                spec, frame, size = self.waiting_frames.popleft()
                self.waiting_chars -= size
                try:
                    pending_next = spec.handler(self, frame)
                    if pending_next is not None:
                        await pending_next
                except Exception as exc:
                    self.answer_error(exc, frame)
        finally:
            self.waiting_frames = None
            self.waiting_chars = 0

    async def _finish(self, pending: Awaitable[None], frame: ClientFrame) -> None:
        try:
            await pending
        except Exception as exc:
            self.answer_error(exc, frame)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        # The loop keeps only weak references to tasks: hold each until it is done.
        _frame_tasks.add(task)
        task.add_done_callback(_frame_tasks.discard)

    def answer_error(self, exc: Exception, frame: ClientFrame) -> None:
        """Answer a refused frame with an `error` frame (the socket stays open), or close the socket
        when the error map says the failure ends it."""
        answer = report(exc)
        if answer.close_code is not None:
            if answer.status >= 500:
                log.error(
                    "unexpected error handling a %s frame from user %d", frame_kind(frame), self.user_id, exc_info=exc
                )
                self.shut(answer.close_code, "unexpected server error")
            else:
                self.shut(answer.close_code, answer.message[:MAX_REASON_CHARS])
            return
        client_id = getattr(frame, "client_id", None)
        self.push_json(answer.frame(**({"client_id": client_id} if client_id else {})))
        if isinstance(exc, errors.RateLimited):
            self.strike()

    def strike(self) -> None:
        """Count a rate-limit hit; a client that keeps pushing after being told is closed."""
        self.services.metrics.rate_limited.labels(scope="frames").inc()
        now = time.monotonic()
        self.strikes = [t for t in self.strikes if now - t < STRIKE_WINDOW_S]
        self.strikes.append(now)
        if len(self.strikes) >= self.services.settings.rate_strikes_to_close:
            # A client that kept pushing past its error frames will not be waited for either.
            self._drop(ABUSER_GRACE_S)
            self.shut(CLOSE_POLICY, "rate limit exceeded")

    def on_close(self) -> None:
        self.closing = True
        self.closed_connection = None  # closed: Tornado breaks the handler's cycle with it, so do we
        code = self.server_close_code or self.close_code or 1006
        self.services.metrics.closes.child(close_label(code)).inc()
        if not self.services.connections.closing_all:
            self._log_close(code)  # at shutdown, Connections.close_all says how many it closed
        if self.registered:
            self.services.metrics.open_sockets_of(self.endpoint).dec()
            self.registered = False
            task = asyncio.get_running_loop().create_task(self._unregister())
            # The loop keeps only weak references to tasks: hold this one until it is done, or the
            # cleanup (and the presence transition it ends with) could vanish half-way.
            _cleanups.add(task)
            task.add_done_callback(_cleanups.discard)

    def _log_close(self, code: int) -> None:
        """One line per socket, at its end: the handshake's own access line is at DEBUG (server.py), since
        a line at each end doubled the log of a reconnect storm, and the handshake's line took 5% of the
        node's CPU samples in a storm of connects. A socket refused before it joined says so, with the
        reason it was given."""
        request = self.request
        path = redact(request.uri or "")
        open_s = round(time.monotonic() - self.arrived_at, 3)
        joined = "closed" if self.registered else "closed before joining"
        reason = (self.server_close_reason or "") if self.server_close_code else (self.close_reason or "")
        log.info(
            "socket %s: %s user %s, %s, after %.1fs",
            joined,
            path,
            self.user_id or "-",
            f"{code} {reason}".rstrip(),
            open_s,
            extra={
                "user_id": self.user_id or None,
                "endpoint": self.endpoint,
                "close_code": code,
                "close_reason": reason,
                "path": path,
                "remote_ip": request.remote_ip,
                "open_s": open_s,
                "joined": self.registered,
            },
        )

    async def _unregister(self) -> None:
        try:
            await self.services.connections.remove(self)
            if self.services.shutting_down:
                return  # a shutdown hands presence over in bulk (PresenceService.close), and typing dies with it
            await self.left()
            await self.services.presence.disconnected(self.user_id)
        except Exception:
            log.warning("cleanup after socket close failed for user %d", self.user_id, exc_info=True)

    async def left(self) -> None:
        """Endpoint-specific cleanup."""


class ConversationSocket(BaseSocket):
    # Read receipts are a high-water mark (handlers/frames.py read_receipt): the highest message id this
    # socket asked to mark read, and the task writing it while one runs.
    read_target: int = 0
    read_writer: asyncio.Task[None] | None = None

    @property
    def conversation(self) -> int:
        """The conversation this socket was opened on (known before any frame is handled)."""
        assert self.conversation_id is not None
        return self.conversation_id

    async def open(self, conversation_id_text: str) -> None:
        try:
            await self._open_conversation(int(conversation_id_text))
        except Exception as exc:
            self.refuse(exc)

    async def _open_conversation(self, conversation_id: int) -> None:
        user_id = self.authenticate()
        if user_id is None:
            return
        async with self.admission(user_id) as waited:
            if not (waited and self.gone_while_waiting()):
                await self._join(conversation_id, user_id)

    async def _join(self, conversation_id: int, user_id: int) -> None:
        """The part of opening that waits on the store and Redis, run when the node's join gate admits it."""
        self.conversation_id = conversation_id
        after, bad_after = self._after_argument()
        chat = self.services.chat
        presence = self.services.presence
        # What the opening reads leaves at once, in the queries shared with the sockets opening at this
        # moment, while the account is checked (usually cached): the membership and, for a socket that
        # starts from now, the first window of the newest id. The refusals keep their order (a deleted
        # account, then a bad `after`, then a stranger or a closed conversation).
        open_lookup = conversation_lookup = newest_probe = None
        if not bad_after:
            if presence.announces_first_socket(user_id):
                open_lookup = presence.ask_open_conversations(user_id)
            else:
                conversation_lookup = chat.ask_conversation(conversation_id)
            if after is None:
                newest_probe = chat.probe_newest(conversation_id)
        asked_at = time.monotonic()
        if not await self.services.users.accepts(user_id, self.token_generation):
            self.shut(CLOSE_BAD_TOKEN, "invalid token")
            return
        if bad_after:
            self.shut(CLOSE_BAD_FRAME, "`after` must be a message id")
            return
        membership = await self._membership(conversation_id, user_id, open_lookup, conversation_lookup, asked_at)
        if membership is None:
            self.shut(CLOSE_FORBIDDEN, "not a participant")
            return
        others, open_conversations, last_seq = membership
        self.others = tuple(others)
        # What the joining socket is shown of the others is read while the newest id is, not after joining.
        statuses = [presence.prefetch_status(other) for other in others]
        if after is None:
            # The socket gets every message stored from now on: the id it starts from is read before
            # subscribing, so what is stored in between arrives as a gap and is fetched.
            self.last_message_id = self.shown_after = await chat.last_stored_seq(
                conversation_id, last_seq, newest_probe
            )
        else:
            self.begin_resume()
        if not await self.register(open_conversations):
            return
        for other, prefetched in zip(others, statuses, strict=True):
            frame = await presence.current_frame(other, prefetched)
            self.services.connections.remember_name(other, frame["username"])
            self.push_json(frame)
        if after is not None:
            await self._resume(conversation_id, after, last_seq)

    def _after_argument(self) -> tuple[int | None, bool]:
        """(`?after=` as a message id or None when absent, whether it was given but is no message id)."""
        text = self.get_query_argument("after", None)
        if text is None or text == "":
            return None, False
        try:
            after = int(text)
        except ValueError:
            return None, True
        return after, after < 0

    async def _resume(self, conversation_id: int, after: int, last_seq: int) -> None:
        """Send what was stored after `after`.

        The newest stored id is looked up first: a few point lookups past the newest id known, shared with
        the other sockets opening at this moment. A socket that missed nothing, the usual reconnect, then
        reads nothing more; reading a page of ids after `after` instead cost the store a hundred lookups per
        socket, most of a restarted node's time to take its sockets back. What is stored after the look-up
        arrives live (the socket is subscribed already), and a gap before it is fetched then. Missing ids
        just after `after` mean nothing is newer because ids are dense: the writer never stores id n
        before n - 1 (services/chat/writer.py). Only data written by an earlier design holds runs of ids
        never stored, and there the conversation's `last_seq`, where the look-up starts, lies beyond them.
        An `after` beyond the last stored message (a client's bug, a restored backup) would hold back every
        new message until the ids caught up with it: the socket resumes from what exists instead."""
        chat = self.services.chat
        newest = await chat.last_stored_seq(conversation_id, last_seq)
        after = min(after, newest)
        if after == newest:
            self.end_resume(after, after)
            return
        await self._send_backlog(conversation_id, after)

    async def _membership(
        self,
        conversation_id: int,
        user_id: int,
        open_lookup: asyncio.Future[dict[int, dict[int, OpenConversation]]] | None,
        conversation_lookup: ConversationLookup | None,
        asked_at: float,
    ) -> tuple[list[int], Collection[int] | None, int] | None:
        """(the other participants, the user's open conversations if read, the conversation's stored
        `last_seq`) when the user takes part in the open conversation; None otherwise, never saying which.

        Read from the store, never a cache: an unmatch or block on another node reaches only nodes with a
        socket on the conversation, so a cached "open" could let a socket in for a while. The user's
        first socket here announces them to all their open conversations, which have to be read anyway:
        then that one read (`open_lookup`: the conversations where the user takes part and which are open)
        answers the membership too, with the same condition as the single conversation's
        (`conversation_lookup`)."""
        if open_lookup is not None:
            open_conversations = (await open_lookup).get(user_id) or {}
            found = open_conversations.get(conversation_id)
            if found is None:
                return None
            return [p for p in found.participants if p != user_id], open_conversations.keys(), found.last_seq
        assert conversation_lookup is not None
        conversation = self.services.chat.conversation_from((await conversation_lookup).get(conversation_id), asked_at)
        if conversation is None or not conversation.is_open or user_id not in conversation.participants:
            return None
        return conversation.others(user_id), None, conversation.last_seq

    async def _send_backlog(self, conversation_id: int, after: int) -> None:
        last = after
        while not self.closing:
            page, has_more = await self.services.chat.backlog(conversation_id, last, BACKLOG_PAGE)
            for seq, frame in page:
                if frame is not None:
                    self.push(frame)
                last = seq
            if not has_more:
                break
        self.end_resume(after, last)

    async def left(self) -> None:
        assert self.conversation_id is not None
        still_here = self.services.connections.by_conversation.get(self.conversation_id, ())
        if not any(p.user_id == self.user_id for p in still_here):
            await self.services.typing.stop(self.conversation_id, self.user_id)


class NotificationSocket(BaseSocket):
    endpoint = "notifications"

    async def open(self) -> None:
        try:
            user_id = self.authenticate()
            if user_id is None:
                return
            async with self.admission(user_id) as waited:
                if not (waited and self.gone_while_waiting()):
                    await self._join(user_id)
        except Exception as exc:
            self.refuse(exc)

    async def _join(self, user_id: int) -> None:
        """The part of opening that waits on the store and Redis, run when the node's join gate admits it.
        A valid token of a deleted account, or one its account's revocation refuses, is refused like an
        invalid one."""
        if not await self.services.users.accepts(user_id, self.token_generation):
            self.shut(CLOSE_BAD_TOKEN, "invalid token")
            return
        after = self.get_query_argument("after", None)
        if not after:
            await self.register()
            return
        if not (after.isascii() and after.isdigit()) or len(after) > MAX_NOTIFICATION_ID_DIGITS:
            self.shut(CLOSE_BAD_FRAME, "`after` must be a notification id")
            return
        # Live notifications are held back from the subscription on, so that none published while the
        # log is read is missed or sent twice.
        self.begin_notification_replay()
        if await self.register():
            await self.services.replay_notifications(self, int(after))


routes: list[tuple[str, Any]] = [
    (r"/ws/conversations/([0-9]{1,15})/", ConversationSocket),
    (r"/ws/notifications/", NotificationSocket),
]


def frame_kind(frame: ClientFrame) -> str:
    return str(getattr(frame, "type", "?"))
