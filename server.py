"""Entry point: read settings, start what is embedded, build the services, serve, shut down cleanly."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import tornado.httpserver
import tornado.iostream
import tornado.web
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPConnection, HTTPHeaders, HTTPMessageDelegate, RequestStartLine, ResponseStartLine
from tornado.ioloop import IOLoop

from handlers import make_app, tornado_internals
from services.core import errors, logs
from services.core.config import Settings
from services.core.container import Services, build_services
from services.core.limits import open_file_limit, socket_budget
from services.core.logs import redact
from services.storage.embedded import EmbeddedMongo

log = logging.getLogger("chat.server")


def log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    path = redact(request.uri or "")
    duration_ms = round(1000.0 * request.request_time(), 2)
    logging.getLogger("tornado.access").log(
        level,
        "%d %s %s %.1fms",
        status,
        request.method,
        path,
        duration_ms,
        extra={
            "status": status,
            "method": request.method,
            "path": path,
            "remote_ip": request.remote_ip,
            "duration_ms": duration_ms,
            "request_id": getattr(handler, "request_id", None),
            "user_id": getattr(handler, "user_id_for_log", None),
        },
    )


def raw_error(status: int, reason: str, code: str, message: str, *headers: str) -> bytes:
    """A complete HTTP/1.1 answer carrying the error envelope, for the few places that answer before
    (or without) a request handler."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json; charset=utf-8", *headers]
    head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(head).encode() + body


SERVER_FULL = raw_error(503, "Service Unavailable", "unavailable", "Server at capacity; retry", "Retry-After: 1")
# After answering a refused request, the rest of its body is read and dropped for this long (or this
# much) before closing: closing with unread bytes resets the connection, and the client could lose the
# answer before reading it (what nginx calls a lingering close).
LINGER_S = 2.0
LINGER_BYTES = 32 * 1024 * 1024
_refusals: set[asyncio.Task[None]] = set()


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
            task = asyncio.get_running_loop().create_task(_refuse_body(self.connection.detach(), answer))
            _refusals.add(task)
            task.add_done_callback(_refusals.discard)
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
        """tornado.netutil.add_accept_handler, minus the spin."""
        io_loop = IOLoop.current()
        state: dict[str, Any] = {"removed": False, "paused": False, "delay": 0.05, "timer": None}

        def resume() -> None:
            state["timer"] = None
            if state["removed"]:
                return
            if self.spare is None:
                self.spare = self._open_spare()
            state["paused"] = False
            io_loop.add_handler(sock, accept_handler, IOLoop.READ)

        def pause() -> None:
            self.pauses += 1
            state["paused"] = True
            io_loop.remove_handler(sock)
            state["timer"] = io_loop.call_later(state["delay"], resume)
            state["delay"] = min(1.0, state["delay"] * 2)

        def accept_handler(fd: Any, events: int) -> None:
            for _ in range(ACCEPT_BATCH):
                if state["removed"] or state["paused"]:
                    return
                try:
                    connection, address = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as exc:
                    outcome = self._refuse_one(sock) if exc.errno in OUT_OF_DESCRIPTORS else "impossible"
                    if outcome == "refused":
                        continue
                    if outcome == "impossible":
                        self._report(exc)
                        pause()
                    return
                state["delay"] = 0.05
                callback(connection, address)

        def remove() -> None:
            state["removed"] = True
            if state["timer"] is not None:
                io_loop.remove_timeout(state["timer"])
            if not state["paused"]:
                io_loop.remove_handler(sock)

        io_loop.add_handler(sock, accept_handler, IOLoop.READ)
        return remove

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


class ProxyAwareHTTPServer(tornado.httpserver.HTTPServer):
    """Believes X-Forwarded-For / X-Real-IP only from TRUSTED_PROXIES; answers oversized bodies with
    the 413 envelope; keeps accepting sanely when out of file descriptors (see AcceptGuard).

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
        xheaders=bool(settings.trusted_proxy_set),
        trusted_downstream=list(settings.trusted_proxy_set) or None,
        trusted_proxies=settings.trusted_proxy_set,
        accept_guard=AcceptGuard(file_limit),
        idle_connection_timeout=120,
    )


def limit_sockets_to_descriptors(settings: Settings) -> tuple[Settings, int]:
    """Settings whose MAX_SOCKETS_PER_NODE fits the open-file limit, and that limit."""
    file_limit = open_file_limit()
    budget = socket_budget(settings.max_sockets_per_node, file_limit)
    if budget < settings.max_sockets_per_node:
        log.warning(
            "MAX_SOCKETS_PER_NODE lowered from %d to %d: the open-file limit is %d and each socket takes "
            "a descriptor (raise LimitNOFILE / ulimit -n to hold more)",
            settings.max_sockets_per_node,
            budget,
            file_limit,
        )
        settings = dataclasses.replace(settings, max_sockets_per_node=budget)
    else:
        log.info("open-file limit %d: up to %d WebSockets on this node", file_limit, budget)
    return settings, file_limit


def parse_args(argv: list[str]) -> argparse.Namespace:
    knobs = "\n".join(f"  {env:<22} default {default:<12} {text}" for env, default, text in Settings.describe())
    parser = argparse.ArgumentParser(
        description="Chat & Matching API server (REST + WebSockets).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Environment variables (flags win over them):\n" + knobs,
    )
    parser.add_argument("--host", help="interface to listen on (HOST)")
    parser.add_argument("--port", type=int, help="TCP port (PORT)")
    parser.add_argument("--data-dir", help="data directory (DATA_DIR)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(LOG_LEVEL)")
    parser.add_argument("--log-format", choices=["json", "text"], help="(LOG_FORMAT)")
    return parser.parse_args(argv)


class Node:
    """One running server process: its embedded store (if any), services, and HTTP listener."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: EmbeddedMongo | None = None
        self.services: Services | None = None
        self.http: tornado.httpserver.HTTPServer | None = None
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        self.settings, file_limit = limit_sockets_to_descriptors(self.settings)
        settings = self.settings
        mongodb_url = settings.mongodb_url
        if not mongodb_url:
            self.embedded = EmbeddedMongo(Path(settings.data_dir) / "mongo")
            await asyncio.get_running_loop().run_in_executor(None, self.embedded.start)
            mongodb_url = self.embedded.url
        self.services = await build_services(settings, mongodb_url)
        app = make_app(self.services, log_function=log_request)
        self.http = make_http_server(app, settings, file_limit)
        self.http.listen(settings.port, settings.host)
        log.info("listening on http://%s:%d", settings.host, settings.port)

    async def stop(self) -> None:
        """Graceful stop: not ready, no new connections, sockets closed with 1001 (clients reconnect to
        another node), presence handed over, queued writes stored; bounded by SHUTDOWN_TIMEOUT."""
        try:
            await asyncio.wait_for(self._drain(), self.settings.shutdown_timeout_s)
        except TimeoutError:
            log.error("shutdown took longer than %.0fs; exiting anyway", self.settings.shutdown_timeout_s)
        if self.embedded is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.embedded.stop)

    async def _drain(self) -> None:
        if self.services is not None:
            self.services.shutting_down = True
        if self.http is not None:
            self.http.stop()
        if self.services is not None:
            await self.services.close()
        if self.http is not None:
            await self.http.close_all_connections()


async def run(settings: Settings) -> None:
    node = Node(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, node.stopping.set)
    try:
        await node.start()
        await node.stopping.wait()
        log.info("shutting down")
    finally:
        await node.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env(
            host=args.host, port=args.port, data_dir=args.data_dir, log_level=args.log_level, log_format=args.log_format
        )
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level.upper())
    try:
        asyncio.run(run(settings))
    except Exception as exc:
        if not errors.backend_unavailable(exc):
            raise
        where = settings.mongodb_url.rpartition("@")[2] or "the embedded MongoDB"  # never print credentials
        print(f"cannot reach MongoDB ({where}): {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
