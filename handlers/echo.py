"""A test-only echo WebSocket at /ws/echo/, the target of the Autobahn|Testsuite conformance run.

Mounted only when ENABLE_ECHO_ROUTE is set (refused in production). It runs inside the production
Application, so it has the same maximum message size (MAX_FRAME_BYTES, larger: close 1009), and it is a
BaseSocket, so it has the same WebSocket-level behaviour as the real sockets (close-frame validation).
What it lacks on purpose is the chat protocol on top: no token, no JSON, no frame-rate limit. Autobahn
measures the WebSocket layer, and an echo of every message is what its fuzzing client expects.
"""

from __future__ import annotations

import contextlib
from typing import Any

import tornado.websocket

from handlers.sockets import BaseSocket


class EchoSocket(BaseSocket):
    endpoint = "echo"

    async def on_message(self, message: str | bytes) -> None:
        # Awaited: Tornado reads the next frame only once this returns, so a client that sends faster
        # than it reads is slowed down instead of growing our output buffer. A client gone mid-echo is
        # cleaned up by on_close.
        with contextlib.suppress(tornado.websocket.WebSocketClosedError):
            await self.write_message(message, binary=isinstance(message, bytes))


routes: list[tuple[str, Any]] = [(r"/ws/echo/", EchoSocket)]
