"""The HTTP server in front of the Application: what Tornado's HTTPServer does not do for us.

- X-Forwarded-For / X-Real-IP are believed only from TRUSTED_PROXIES.
- A request that declares a body over the limit is answered 413 with the JSON envelope (Tornado answers
  a bare 400), after a lingering read of what the client still sends.
- A request head over MAX_HEADER_BYTES is answered 431 with the JSON envelope (Tornado closes the
  connection without a word), the same way.
- Out of file descriptors, waiting clients are answered 503 at once instead of the accept loop spinning.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import tornado.httpserver
import tornado.iostream
import tornado.web
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPConnection, HTTPHeaders, HTTPMessageDelegate, RequestStartLine, ResponseStartLine
from tornado.ioloop import IOLoop

from handlers import tornado_internals
from handlers.base import REFERRER_POLICY
from services.core.config import Settings

log = logging.getLogger("chat.server")


def raw_error(status: int, reason: str, code: str, message: str, *headers: str) -> bytes:
    """A complete HTTP/1.1 answer carrying the error envelope, for the few places that answer before
    (or without) a request handler."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json; charset=utf-8",
        f"Referrer-Policy: {REFERRER_POLICY}",
        *headers,
    ]
    head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(head).encode() + body


SERVER_FULL = raw_error(503, "Service Unavailable", "unavailable", "Server at capacity; retry", "Retry-After: 1")
# After answering a refused request, the rest of its body is read and dropped for this long (or this
# much) before closing: closing with unread bytes resets the connection, and the client could lose the
# answer before reading it (what nginx calls a lingering close).
LINGER_S = 2.0
LINGER_BYTES = 32 * 1024 * 1024
_refusals: set[asyncio.Task[None]] = set()


def refuse(stream: tornado.iostream.IOStream, answer: bytes) -> None:
    """Answer on a connection no handler will serve, drain what the client still sends, then close."""
    task = asyncio.get_running_loop().create_task(_refuse_body(stream, answer))
    _refusals.add(task)
    task.add_done_callback(_refusals.discard)


async def _refuse_body(stream: tornado.iostream.IOStream, answer: bytes) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_S
    discarded = 0
    try:
        await stream.write(answer)
        while discarded < LINGER_BYTES and (left := deadline - loop.time()) > 0:
            discarded += len(await asyncio.wait_for(stream.read_bytes(64 * 1024, partial=True), left))
    except (tornado.iostream.StreamClosedError, TimeoutError, OSError):
        pass
    finally:
        stream.close()


class _BodyLimit(HTTPMessageDelegate):
    """Answers a request that declares a body over the server's limit with 413 and the error envelope.

    Tornado's own answer to such a Content-Length is a bare `400 Bad Request` with no body; every
    error is promised as the JSON envelope, and "too large" is 413."""

    def __init__(self, delegate: HTTPMessageDelegate, connection: HTTPConnection, limit: int) -> None:
        self.delegate = delegate
        self.connection = connection
        self.limit = limit

    def headers_received(
        self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders
    ) -> Awaitable[None] | None:
        declared = headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.limit and isinstance(self.connection, HTTP1Connection):
            answer = raw_error(
                413, "Payload Too Large", "body_too_large", f"Request body larger than {self.limit} bytes"
            )
            refuse(self.connection.detach(), answer)
            return None
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()


# accept() errors that mean "no descriptor (or memory) for one more connection right now".
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BATCH = 128
REPORT_EVERY_S = 10.0


class AcceptGuard:
    """Accepting connections when the process is out of file descriptors.

    Tornado's accept loop lets EMFILE escape: the listening socket stays readable, so the event loop
    calls it again at once, logging a traceback each time, at 100% CPU, and clients wait in the
    backlog until they time out. Here one descriptor is kept in reserve; on EMFILE it is released, the
    waiting connection is accepted, answered 503 with Retry-After and closed, and the reserve is taken
    back: each client learns at once that the node is full, and the loop never spins. If even that is
    impossible (the reserve is gone, or the kernel is out of memory), accepting pauses with backoff.
    """

    def __init__(self, file_limit: int) -> None:
        self.file_limit = file_limit
        self.spare = self._open_spare()
        self.refused = 0
        self.pauses = 0
        self._reported = 0
        self._reported_at = 0.0

    @staticmethod
    def _open_spare() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    def add_accept_handler(
        self, sock: socket.socket, callback: Callable[[socket.socket, Any], None]
    ) -> Callable[[], None]:
        """tornado.netutil.add_accept_handler, minus the spin: returns the function that stops accepting."""
        return _AcceptLoop(self, sock, callback).remove

    def _refuse_one(self, sock: socket.socket) -> str:
        """Answer one waiting connection 503 using the reserve: "refused", "none" waiting, or "impossible"."""
        if self.spare is None:
            return "impossible"
        os.close(self.spare)
        self.spare = None
        try:
            connection, _ = sock.accept()
        except BlockingIOError:
            self.spare = self._open_spare()
            return "none"
        except OSError:
            self.spare = self._open_spare()
            return "impossible"
        with contextlib.closing(connection):
            try:
                connection.setblocking(False)  # accepted sockets start blocking whatever the listener is
                # Drop what the client sent already, so that closing sends FIN, not a reset that could
                # destroy the answer before the client reads it.
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    connection.recv(64 * 1024)
                connection.send(SERVER_FULL)
            except OSError:
                pass
        # Taken back only now that the connection's descriptor is free again.
        self.spare = self._open_spare()
        self.refused += 1
        self._report(None)
        return "refused"

    def _report(self, exc: OSError | None) -> None:
        now = time.monotonic()
        if now - self._reported_at < REPORT_EVERY_S:
            return
        self._reported_at = now
        refused, self._reported = self.refused - self._reported, self.refused
        log.warning(
            "out of file descriptors (limit %d): %d connections answered 503 since the last report%s",
            self.file_limit,
            refused,
            f"; accepting paused ({exc})" if exc is not None else "",
        )


class _AcceptLoop:
    """One listening socket's accept loop, paused with backoff when AcceptGuard cannot refuse."""

    def __init__(self, guard: AcceptGuard, sock: socket.socket, callback: Callable[[socket.socket, Any], None]):
        self.guard = guard
        self.sock = sock
        self.callback = callback
        self.io_loop = IOLoop.current()
        self.removed = False
        self.paused = False
        self.delay = 0.05
        self.timer: object | None = None
        self.io_loop.add_handler(sock, self.on_readable, IOLoop.READ)

    def resume(self) -> None:
        self.timer = None
        if self.removed:
            return
        if self.guard.spare is None:
            self.guard.spare = self.guard._open_spare()
        self.paused = False
        self.io_loop.add_handler(self.sock, self.on_readable, IOLoop.READ)

    def pause(self) -> None:
        self.guard.pauses += 1
        self.paused = True
        self.io_loop.remove_handler(self.sock)
        self.timer = self.io_loop.call_later(self.delay, self.resume)
        self.delay = min(1.0, self.delay * 2)

    def on_readable(self, fd: Any, events: int) -> None:
        for _ in range(ACCEPT_BATCH):
            if self.removed or self.paused:
                return
            try:
                connection, address = self.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if not self.out_of_descriptors(exc):
                    return
                continue
            self.delay = 0.05
            self.callback(connection, address)

    def out_of_descriptors(self, exc: OSError) -> bool:
        """Handle a failed accept; True when the loop may go on accepting."""
        outcome = self.guard._refuse_one(self.sock) if exc.errno in OUT_OF_DESCRIPTORS else "impossible"
        if outcome == "impossible":
            self.guard._report(exc)
            self.pause()
        return outcome == "refused"

    def remove(self) -> None:
        self.removed = True
        if self.timer is not None:
            self.io_loop.remove_timeout(self.timer)
        if not self.paused:
            self.io_loop.remove_handler(self.sock)


class ProxyAwareHTTPServer(tornado.httpserver.HTTPServer):
    """Believes X-Forwarded-For / X-Real-IP only from TRUSTED_PROXIES; answers oversized bodies with
    the 413 envelope and oversized heads with the 431 one; keeps accepting sanely when out of file
    descriptors (see AcceptGuard).

    Tornado's `xheaders` applies those headers whoever sends them (`trusted_downstream` only skips
    trusted hops inside the list), so a client reaching a node directly could claim any address and
    dodge per-IP limits. Here the peer address is checked first, per connection.
    """

    def initialize(
        self,
        *args: Any,
        trusted_proxies: frozenset[str] = frozenset(),
        accept_guard: AcceptGuard | None = None,
        **kwargs: Any,
    ) -> None:
        self.trusted_proxies = trusted_proxies
        self.accept_guard = accept_guard
        self.body_limit: int | None = kwargs.get("max_body_size")
        super().initialize(*args, **kwargs)

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        if self.accept_guard is None:
            super().add_sockets(sockets)
            return
        for sock in sockets:
            tornado_internals.add_accept_handler(self, sock, self.accept_guard.add_accept_handler)

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple[Any, ...]) -> None:
        tornado_internals.answer_oversized_head(stream, self._refuse_oversized_head)
        super().handle_stream(stream, address)

    def _refuse_oversized_head(self, connection: socket.socket) -> None:
        limit = self.conn_params.max_header_size
        answer = raw_error(
            431, "Request Header Fields Too Large", "headers_too_large", f"Request headers larger than {limit} bytes"
        )
        refuse(tornado.iostream.IOStream(connection), answer)

    def start_request(self, server_conn: object, request_conn: HTTPConnection) -> HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        peer = getattr(getattr(request_conn, "context", None), "remote_ip", None)
        if self.xheaders and peer not in self.trusted_proxies:
            delegate = tornado_internals.without_proxy_adapter(delegate)
        if self.body_limit is not None:
            delegate = _BodyLimit(delegate, request_conn, self.body_limit)
        return delegate


def make_http_server(app: tornado.web.Application, settings: Settings, file_limit: int) -> ProxyAwareHTTPServer:
    return ProxyAwareHTTPServer(
        app,
        max_body_size=max(settings.max_upload_bytes, settings.max_body_bytes),
        max_header_size=settings.max_header_bytes,
        xheaders=bool(settings.trusted_proxy_set),
        trusted_downstream=list(settings.trusted_proxy_set) or None,
        trusted_proxies=settings.trusted_proxy_set,
        accept_guard=AcceptGuard(file_limit),
        idle_connection_timeout=120,
    )
