"""The seed's two WebSockets: /ws/conversations/<id>/ and /ws/notifications/.

The handshake is always accepted and failures are reported with the seed's close codes (a browser sees
no HTTP status of a refused handshake, only a close code): 4000 no token, 4002 bad token, 4001 not a
participant (or no such conversation, never saying which), 1008 for a refused Origin or a connection limit.
After that, every frame goes through `handlers.protocol` and one method per frame type; no exception
escapes `on_message` (Tornado would drop the connection without a close frame): unexpected ones close
the socket with 1011.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Collection
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
import tornado.iostream
import tornado.websocket

from handlers import protocol
from handlers.base import accounts
from services.accounts.auth import TokenError
from services.core import errors
from services.core.limits import TokenBucket
from services.realtime.hub import (
    CLOSE_BAD_FRAME,
    CLOSE_BAD_TOKEN,
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_NO_TOKEN,
    CLOSE_POLICY,
    CLOSE_SERVER_ERROR,
    LimitExceeded,
    Peer,
)
from services.storage.store import STORE_DOWN_ERRORS

if TYPE_CHECKING:
    from services.core.container import Services

log = logging.getLogger("chat.ws")

LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1"}
BACKLOG_PAGE = 100
STRIKE_WINDOW_S = 60.0
# Seconds a socket closed for persistent abuse has to read its close frame before it is dropped.
ABUSER_GRACE_S = 1.0

_cleanups: set[asyncio.Task[None]] = set()


# -- RFC 6455 close handshake (Tornado fixes; every socket class below gets them) --------------------------

CLOSE_PROTOCOL_ERROR = 1002
LINGER_S = 2.0


def valid_close_payload(payload: bytes) -> bool:
    """Whether a client's close frame may be answered by echoing it (RFC 6455 5.5.1, 7.4).

    Empty, or a code a peer may send (1000-1003, 1007-1014, 3000-4999: 1004-1006 and 1015 are reserved
    for local use, the rest of 1000-2999 for future protocol versions) and a UTF-8 reason.
    """
    if not payload:
        return True
    if len(payload) == 1:
        return False
    code = int.from_bytes(payload[:2], "big")
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        return False
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class StrictCloseProtocol(tornado.websocket.WebSocketProtocol13):
    """Tornado's protocol with two fixes to the closing handshake.

    - Tornado echoes whatever close code the client sent, even one that must never be on the wire, and
      lets a close reason that is not UTF-8 raise out of its read loop. RFC 6455 7.4 makes both a
      protocol error: such a close frame is answered with 1002.
    - When Tornado refuses a frame over MAX_FRAME_BYTES it writes the 1009 close frame and drops the
      connection at once, with the rest of the client's message still unread. The kernel then answers the
      client's next bytes with a reset, which can destroy the 1009 before the client has read it (the
      client sees 1006). Instead the write side is shut (after the close frame) and what the client still
      sends is read and discarded for up to LINGER_S, as HTTP servers do before closing.
    """

    _lingering = False

    def _handle_message(self, opcode: int, data: bytes) -> asyncio.Future[None] | None:
        if opcode == 0x8 and not self.client_terminated and not valid_close_payload(data):
            self.client_terminated = True
            self.close_code = CLOSE_PROTOCOL_ERROR
            self.close(CLOSE_PROTOCOL_ERROR, "invalid close frame")
            return None
        return super()._handle_message(opcode, data)  # type: ignore[no-any-return]

    def _abort(self) -> None:
        stream = self.stream
        if self._lingering:
            return  # the connection is already being closed, by _linger
        if self.server_terminated and not self.client_terminated and stream is not None and not stream.closed():
            # Our close frame is written and the client has not answered it: an abort on a refusal.
            self._lingering = True
            self.client_terminated = True
            if self._waiting is not None:
                stream.io_loop.remove_timeout(self._waiting)
                self._waiting = None
            task = asyncio.ensure_future(self._linger(stream))
            _cleanups.add(task)  # type: ignore[arg-type]
            task.add_done_callback(_cleanups.discard)  # type: ignore[arg-type]
            return
        super()._abort()

    async def _linger(self, stream: tornado.iostream.IOStream) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_S
        try:
            await asyncio.wait_for(stream.write(b""), LINGER_S)  # the close frame is flushed
            if stream.socket is None:
                return
            stream.socket.shutdown(socket.SHUT_WR)
            while (left := deadline - loop.time()) > 0 and not stream.closed():
                if stream.reading():
                    # Tornado's own frame loop already reads (and drops, now that we close): a second
                    # reader is not allowed on a stream, so just give it the time.
                    await asyncio.sleep(min(left, 0.05))
                    continue
                await asyncio.wait_for(stream.read_bytes(64 * 1024, partial=True), left)
        except (tornado.iostream.StreamClosedError, TimeoutError, OSError):
            pass
        finally:
            stream.close()


class BaseSocket(tornado.websocket.WebSocketHandler, Peer):
    endpoint = "conversation"
    server_close_code: int | None = None
    accepted_frames: dict[str, protocol.FrameType] = {}

    def initialize(self, services: Services) -> None:
        self.services = services
        self.registered = False
        self.username = ""
        settings = services.settings
        self.frame_bucket = TokenBucket(settings.frame_rate, settings.frame_burst)
        self.strikes: list[float] = []
        self.init_peer(services.connections, settings.outbound_buffer_bytes)

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        protocol = super().get_websocket_protocol()
        if protocol is None:
            return None
        return StrictCloseProtocol(self, False, protocol.params)  # type: ignore[attr-defined]

    def unavailable_close(self) -> tuple[int, str]:
        """How to close a socket whose opening could not reach the store: during a shutdown the store is
        being closed on purpose, and the client should reconnect elsewhere (1001)."""
        if self.services.shutting_down:
            return CLOSE_GOING_AWAY, "server shutting down"
        return CLOSE_SERVER_ERROR, "storage unavailable"

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
        own_host = self.request.host_name.lower()
        return host == own_host or host in LOCAL_HOSTS

    def authenticate(self) -> int | None:
        """The user id, or None after closing with the seed's code."""
        if not self.origin_allowed():
            self.shut(CLOSE_POLICY, "origin not allowed")
            return None
        token = self.get_query_argument("token", None)
        if not token:
            self.shut(CLOSE_NO_TOKEN, "authentication required")
            return None
        try:
            return self.services.tokens.user_id_from_access(token)
        except TokenError:
            self.shut(CLOSE_BAD_TOKEN, "invalid token")
            return None

    async def authenticate_account(self) -> int | None:
        """authenticate(), and a valid token of a deleted account is refused like an invalid one."""
        user_id = self.authenticate()
        if user_id is not None and not await accounts(self.services).exists(user_id):
            self.shut(CLOSE_BAD_TOKEN, "invalid token")
            return None
        return user_id

    async def register(self, open_conversations: Collection[int] | None = None) -> bool:
        """Join the node's registry; `open_conversations` as for `Presence.connected`."""
        if self.services.shutting_down:
            # Opened while the node stops: the client reconnects (to another node) as after any 1001.
            self.shut(CLOSE_GOING_AWAY, "server shutting down")
            return False
        try:
            await self.services.connections.add(self)
        except LimitExceeded as exc:
            self.shut(CLOSE_POLICY, str(exc))
            return False
        self.registered = True
        self._bound_kernel_buffer()
        metrics = self.services.metrics
        metrics.open_sockets.labels(endpoint=self.endpoint).inc()
        metrics.connections.labels(endpoint=self.endpoint).inc()
        await self.services.presence.connected(self.user_id, open_conversations)
        return True

    # -- Peer transport ----------------------------------------------------------------------------

    def _transmit(self, data: bytes) -> Awaitable[None] | None:
        connection = self.ws_connection
        if connection is None or self._unsent_bytes() is None:
            return self.write_message(data)  # Peer counts this write until the future completes
        if connection.is_closing():
            raise tornado.websocket.WebSocketClosedError()
        # The text frame write_message would send (frames are UTF-8 JSON), without the Task it wraps
        # around every write only to return a future: `_unsent_bytes` accounts for the write instead.
        connection._write_frame(True, 0x1, data)  # type: ignore[attr-defined]
        return None

    def _unsent_bytes(self) -> int | None:
        """Bytes written to this socket's stream that the kernel has not taken yet, or None when
        `_transmit` has to go through `write_message` (Peer then counts the writes itself).

        The one place that relies on Tornado internals, and tests/test_ws_transport.py fails if they
        change: IOStream keeps this figure only in its private write indexes, and WebSocketProtocol13
        writes a frame without a Task only in `_write_frame`. A handler that asks for compression
        (get_compression_options) keeps write_message, which compresses."""
        connection = self.ws_connection
        stream = getattr(connection, "stream", None)
        try:
            unsent: int = stream._total_write_index - stream._total_write_done_index  # type: ignore[union-attr]
        except AttributeError:
            return None
        if not hasattr(connection, "_write_frame") or self.get_compression_options() is not None:
            return None
        return unsent

    def _shut(self, code: int, reason: str) -> None:
        self.server_close_code = code
        self.close(code, reason)

    def _send_ping(self) -> None:
        self.ping()

    def _drop(self, after_s: float) -> None:
        stream = self.ws_connection.stream if self.ws_connection is not None else None
        if stream is not None:
            stream.io_loop.call_later(after_s, lambda: None if stream.closed() else stream.close())

    def _bound_kernel_buffer(self) -> None:
        """What a reader costs is our outbound bound plus the kernel's send buffer, which autotuning
        grows up to tcp_wmem's maximum (4 MiB by default): four times OUTBOUND_BUFFER_BYTES, and as
        much delay before a reader that stopped reading is noticed. An eighth of the bound is plenty
        for chat frames (Linux doubles the figure for its own bookkeeping)."""
        stream = self.ws_connection.stream if self.ws_connection is not None else None
        sock = getattr(stream, "socket", None)
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

    async def on_message(self, message: str | bytes) -> None:
        self.last_activity = time.monotonic()
        if self.closing or not self.registered:
            return
        try:
            kind, values = protocol.parse(message, self.accepted_frames)
        except protocol.BadFrame as exc:
            self.services.metrics.frames_in.labels(type="invalid").inc()
            self.shut(CLOSE_BAD_FRAME, str(exc)[:100])
            return
        self.services.metrics.frames_in.labels(type=kind).inc()
        try:
            wait_s = self.frame_bucket.take()
            if wait_s > 0:
                raise errors.RateLimited("Too many frames", retry_after_s=wait_s)
            await getattr(self, f"frame_{kind}")(**values)
        except errors.DomainError as exc:
            extra = {"client_id": values["client_id"]} if kind == "message" and values.get("client_id") else {}
            self.push_json(protocol.error_frame_for(exc, **extra))
            if isinstance(exc, errors.RateLimited):
                self.strike()
        except STORE_DOWN_ERRORS:
            self.push_json(protocol.error_frame("unavailable", "Storage temporarily unavailable; retry"))
        except Exception:
            log.exception("unexpected error handling a %s frame from user %d", kind, self.user_id)
            self.shut(CLOSE_SERVER_ERROR, "unexpected server error")

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

    async def frame_ping(self) -> None:
        self.push_json({"type": "pong"})

    def on_close(self) -> None:
        self.closing = True
        code = self.server_close_code or self.close_code or 1006
        self.services.metrics.closes.labels(code=str(code)).inc()
        if self.registered:
            log.info(
                "socket closed",
                extra={"user_id": self.user_id, "endpoint": self.endpoint, "close_code": code},
            )
            self.services.metrics.open_sockets.labels(endpoint=self.endpoint).dec()
            self.registered = False
            task = asyncio.get_running_loop().create_task(self._unregister())
            # The loop keeps only weak references to tasks: hold this one until it is done, or the
            # cleanup (and the presence transition it ends with) could vanish half-way.
            _cleanups.add(task)
            task.add_done_callback(_cleanups.discard)

    async def _unregister(self) -> None:
        try:
            await self.services.connections.remove(self)
            if self.services.shutting_down:
                return  # a shutdown hands presence over in bulk (Presence.close), and typing dies with it
            await self.left()
            await self.services.presence.disconnected(self.user_id)
        except Exception:
            log.warning("cleanup after socket close failed for user %d", self.user_id, exc_info=True)

    async def left(self) -> None:
        """Endpoint-specific cleanup."""


class ConversationSocket(BaseSocket):
    accepted_frames = protocol.CONVERSATION_FRAMES

    async def open(self, conversation_id_text: str) -> None:
        try:
            await self._open_conversation(int(conversation_id_text))
        except STORE_DOWN_ERRORS:
            self.shut(*self.unavailable_close())
        except Exception:
            log.exception("unexpected error opening a conversation socket")
            self.shut(CLOSE_SERVER_ERROR, "unexpected server error")

    async def _open_conversation(self, conversation_id: int) -> None:
        user_id = self.authenticate()
        if user_id is None:
            return
        self.user_id = user_id
        self.conversation_id = conversation_id
        after_text = self.get_query_argument("after", None)
        after: int | None = None
        bad_after = False
        if after_text not in (None, ""):
            try:
                after = int(after_text)  # type: ignore[arg-type]
                bad_after = after < 0
            except ValueError:
                bad_after = True
        chat = self.services.chat
        # The account and the membership are read at once; the refusals keep their order (a deleted
        # account, then a bad `after`, then a stranger or a closed conversation).
        alive, membership = await asyncio.gather(
            accounts(self.services).exists(user_id),
            self._membership(conversation_id, user_id) if not bad_after else asyncio.sleep(0, None),
        )
        if not alive:
            self.shut(CLOSE_BAD_TOKEN, "invalid token")
            return
        if bad_after:
            self.shut(CLOSE_BAD_FRAME, "`after` must be a message id")
            return
        if membership is None:
            self.shut(CLOSE_FORBIDDEN, "not a participant")
            return
        others, open_conversations, last_seq = membership
        if after is None:
            # The socket gets every message stored from now on: the id it starts from is read before
            # subscribing, so what is stored in between arrives as a gap and is fetched.
            self.last_message_id = self.shown_after = await chat.last_stored_seq(conversation_id, last_seq)
        else:
            self.begin_resume()
        if not await self.register(open_conversations):
            return
        for other in others:
            self.push_json(await self.services.presence.current_frame(other))
        if after is not None:
            # An `after` beyond the last stored message (a client's bug, a restored backup) would hold
            # back every new message until the ids caught up with it: resume from what exists instead.
            after = min(after, await chat.last_stored_seq(conversation_id, last_seq))
            await self._send_backlog(conversation_id, after)

    async def _membership(
        self, conversation_id: int, user_id: int
    ) -> tuple[list[int], Collection[int] | None, int] | None:
        """(the other participants, the user's open conversations if read, the conversation's stored
        `last_seq`) when the user takes part in the open conversation; None otherwise, never saying which.

        Read from the store, never a cache: an unmatch or block on another node reaches only nodes with a
        socket on the conversation, so a cached "open" could let a socket in for a while. The user's
        first socket here announces them to all their open conversations, which have to be read anyway:
        then that one read (the conversations where the user takes part and which are open) answers the
        membership too, with the same condition as the single conversation's."""
        presence = self.services.presence
        if presence.announces_first_socket(user_id):
            open_conversations = await presence.open_conversations(user_id)
            found = open_conversations.get(conversation_id)
            if found is None:
                return None
            return [p for p in found.participants if p != user_id], open_conversations.keys(), found.last_seq
        try:
            conversation = await self.services.chat.member_conversation(
                conversation_id, user_id, require_open=True, fresh=True
            )
        except errors.NotFound:
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

    async def frame_message(self, content: str, client_id: str | None, attachment_id: int | None) -> None:
        assert self.conversation_id is not None
        self.services.check_message_rate(self.user_id)
        message, created = await self.services.chat.send_message(
            self.conversation_id, self.user_id, content, client_id, attachment_id
        )
        if not created:
            # A retry publishes nothing; its answer goes to the socket that asked.
            self.answer_replay(message["id"], orjson.dumps({"type": "message", "message": message}))

    async def frame_typing(self, is_typing: bool) -> None:
        assert self.conversation_id is not None
        await self.services.typing.update(self.conversation_id, self.user_id, is_typing)

    async def frame_read_receipt(self, message_id: int) -> None:
        assert self.conversation_id is not None
        await self.services.chat.mark_read(self.conversation_id, self.user_id, message_id)

    async def left(self) -> None:
        assert self.conversation_id is not None
        still_here = self.services.connections.by_conversation.get(self.conversation_id, ())
        if not any(p.user_id == self.user_id for p in still_here):
            await self.services.typing.stop(self.conversation_id, self.user_id)


class NotificationSocket(BaseSocket):
    accepted_frames = protocol.NOTIFICATION_FRAMES
    endpoint = "notifications"

    async def open(self) -> None:
        try:
            user_id = await self.authenticate_account()
            if user_id is None:
                return
            self.user_id = user_id
            await self.register()
        except STORE_DOWN_ERRORS:
            self.shut(*self.unavailable_close())
        except Exception:
            log.exception("unexpected error opening a notifications socket")
            self.shut(CLOSE_SERVER_ERROR, "unexpected server error")


routes: list[tuple[str, Any]] = [
    (r"/ws/conversations/([0-9]{1,15})/", ConversationSocket),
    (r"/ws/notifications/", NotificationSocket),
]
