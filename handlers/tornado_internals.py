"""Every use of Tornado's private API, in one module.

Tornado offers no public way to do these few things, and each is worth doing (the reasons are beside
each function). `PRIVATE_NAMES` lists every private name used here, and tests/test_tornado_internals.py
fails when a Tornado upgrade removes or changes one, instead of the server silently falling back or
breaking. No other module may touch a Tornado private name.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import tornado.httpserver
import tornado.httputil
import tornado.iostream
import tornado.web
import tornado.websocket

# (owner, name): what the functions below rely on.
PRIVATE_NAMES: tuple[tuple[type, str], ...] = (
    (tornado.websocket.WebSocketProtocol13, "_handle_message"),
    (tornado.websocket.WebSocketProtocol13, "_abort"),
    (tornado.websocket.WebSocketProtocol13, "_write_frame"),
    (tornado.websocket.WebSocketProtocol13, "_waiting"),  # an instance attribute, set in __init__
    (tornado.iostream.BaseIOStream, "_total_write_index"),  # instance attributes, set in __init__
    (tornado.iostream.BaseIOStream, "_total_write_done_index"),
    (tornado.httpserver.HTTPServer, "_sockets"),  # TCPServer's instance attributes
    (tornado.httpserver.HTTPServer, "_handlers"),
    (tornado.httpserver.HTTPServer, "_handle_connection"),
    (tornado.httpserver._ProxyAdapter, "delegate"),  # the class itself is private too
    (tornado.iostream.BaseIOStream, "_read_regex"),  # an instance attribute, set in __init__
    (tornado.iostream.BaseIOStream, "_state"),  # an instance attribute, set in __init__
    (tornado.web.RequestHandler, "_headers"),  # instance attributes, set in __init__ (by clear())
    (tornado.httputil.HTTPHeaders, "_combined_cache"),
    (tornado.httputil.HTTPHeaders, "_as_list"),
)

CLOSE_PROTOCOL_ERROR = 1002
LINGER_S = 2.0

_lingering_tasks: set[asyncio.Future[None]] = set()


# -- RFC 6455 close handshake -----------------------------------------------------------------------------


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
            _lingering_tasks.add(task)
            task.add_done_callback(_lingering_tasks.discard)
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


# -- writing frames without a Task each -------------------------------------------------------------------


def unsent_bytes(connection: tornado.websocket.WebSocketProtocol | None) -> int | None:
    """Bytes written to the connection's stream that the kernel has not taken yet, or None when this
    connection cannot be written by `write_text_frame` (the caller then uses `write_message`).

    IOStream keeps this figure only in its private write indexes (its public `max_write_buffer_size`
    can only refuse a write, not say how full the buffer is, which the hub needs to shed typing events
    before it has to close a slow reader)."""
    stream = getattr(connection, "stream", None)
    try:
        unsent: int = stream._total_write_index - stream._total_write_done_index  # type: ignore[union-attr]
    except AttributeError:
        return None
    if not hasattr(connection, "_write_frame"):
        return None
    return unsent


def stop_reading(connection: tornado.websocket.WebSocketProtocol | None) -> bool:
    """Take the connection's stream off the loop, so that nothing it receives is read any more (the
    process is about to exit and close it); False when it is closed already.

    IOStream has no public way to stop watching its socket short of closing it, and closing runs the
    whole per-connection close path that a stopping node wants to skip. The stream registers again
    (`_add_io_state`) if anything reads or writes it later, since `_state` says it is not registered."""
    stream = getattr(connection, "stream", None)
    if stream is None or stream.closed():
        return False
    if stream._state is not None:
        stream.io_loop.remove_handler(stream.fileno())
        stream._state = None
    return True


def write_text_frame(connection: tornado.websocket.WebSocketProtocol, data: bytes) -> None:
    """The text frame `write_message` would send (frames are UTF-8 JSON), without the Task it wraps
    around every write only to return a future: the caller accounts for the write by `unsent_bytes`."""
    connection._write_frame(True, 0x1, data)  # type: ignore[attr-defined]


def empty_handshake_headers(handler: tornado.web.RequestHandler) -> None:
    """Empty the request's and the answer's headers in place: Tornado's handshake coroutine keeps both
    for the socket's whole life, so dropping our references would free nothing. The public way,
    MutableMapping's `clear`, deletes one header at a time through four calls each: it would cost a
    connect more CPU than it saves."""
    for headers in (handler.request.headers, handler._headers):  # type: ignore[attr-defined]
        headers._combined_cache.clear()  # type: ignore[attr-defined]
        headers._as_list.clear()  # type: ignore[attr-defined]


# -- HTTP server --------------------------------------------------------------------------------------------


def add_accept_handler(
    server: tornado.httpserver.HTTPServer,
    sock: socket.socket,
    add_handler: Callable[[socket.socket, Callable[[socket.socket, Any], None]], Callable[[], None]],
) -> None:
    """Listen on `sock` like `TCPServer.add_sockets`, but with our own accept loop (`add_handler`, in
    the shape of tornado.netutil.add_accept_handler), registered where `TCPServer.stop` finds it."""
    server._sockets[sock.fileno()] = sock  # type: ignore[attr-defined]
    server._handlers[sock.fileno()] = add_handler(sock, server._handle_connection)  # type: ignore[attr-defined]


def without_proxy_adapter(delegate: Any) -> Any:
    """The request delegate Tornado wraps in its X-Forwarded-For adapter when `xheaders` is on, unwrapped
    (for a peer that is not a trusted proxy: its forwarded headers must not be believed)."""
    if isinstance(delegate, tornado.httpserver._ProxyAdapter):
        return delegate.delegate
    return delegate


def answer_oversized_head(stream: tornado.iostream.IOStream, answer: Callable[[socket.socket], None]) -> None:
    """Let `answer` reply on a connection whose request head outgrows the server's `max_header_size`.

    Tornado reads a request head with `read_until_regex(..., max_bytes=max_header_size)`, and past that
    many bytes the stream closes itself (`close(exc_info=UnsatisfiableReadError)`) before anyone may write:
    the client gets no answer at all. Here the stream's `close` is wrapped. On that error, while a regex
    read is pending (an HTTP/1 server reads nothing else with a regex: bodies and chunk sizes are read by
    length or delimiter), the socket is duplicated before Tornado closes its own descriptor, so the
    connection stays open, and `answer` gets the duplicate to reply on. Any other close goes through as is.
    """
    close = stream.close

    def close_or_answer(exc_info: Any = False) -> None:
        duplicate = None
        oversized = isinstance(exc_info, tornado.iostream.UnsatisfiableReadError) and stream._read_regex is not None
        if oversized and stream.socket is not None and not stream.closed():
            try:
                duplicate = stream.socket.dup()
            except (OSError, NotImplementedError):  # out of descriptors, or a TLS socket (it has no dup)
                duplicate = None
        close(exc_info)
        if duplicate is not None:
            answer(duplicate)

    stream.close = close_or_answer  # type: ignore[method-assign]
