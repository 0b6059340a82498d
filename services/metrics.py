"""Prometheus metrics of one node.

Each node (each Services) has its own registry, so several nodes can run in one process (tests) and
nothing is global. Labels are bounded sets (endpoint, frame type, close code), never user or
conversation ids, so the number of series stays fixed however many users come.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

KNOWN_FRAME_TYPES = frozenset(
    {"message", "typing", "read_receipt", "status", "notification", "ping", "pong", "error", "invalid"}
)


def frame_label(kind: object) -> str:
    return kind if isinstance(kind, str) and kind in KNOWN_FRAME_TYPES else "other"


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.open_sockets = Gauge("chat_websockets_open", "WebSockets open on this node", ["endpoint"], registry=r)
        self.connections = Counter(
            "chat_websocket_connections", "WebSocket handshakes accepted", ["endpoint"], registry=r
        )
        self.closes = Counter("chat_websocket_closes", "WebSockets closed, by close code", ["code"], registry=r)
        self.frames_in = Counter("chat_frames_received", "Client frames received, by type", ["type"], registry=r)
        self.frames_out = Counter("chat_frames_sent", "Frames written to sockets, by type", ["type"], registry=r)
        self.messages_stored = Counter("chat_messages_stored", "Chat messages stored", registry=r)
        self.bus_events = Counter("chat_bus_events_received", "Bus events received by this node", ["kind"], registry=r)
        self.deliver_latency = Histogram(
            "chat_publish_to_deliver_seconds",
            "Time from publishing an event to handing it to this node's sockets",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.rate_limited = Counter(
            "chat_rate_limited", "Requests or frames refused by a rate limit", ["scope"], registry=r
        )
        self.slow_consumers = Counter("chat_slow_consumer_closes", "Sockets closed for not reading", registry=r)
        self.backend_errors = Counter(
            "chat_backend_errors", "Errors reaching MongoDB or Redis", ["backend"], registry=r
        )
        self.loop_lag = Histogram(
            "chat_event_loop_lag_seconds",
            "How late the event loop ran a 1 s timer",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
            registry=r,
        )
        self.http_requests = Counter(
            "chat_http_requests", "HTTP requests answered, by status class", ["status"], registry=r
        )
        self._lag_task: asyncio.Task[None] | None = None

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def start(self) -> None:
        if self._lag_task is None:
            self._lag_task = asyncio.get_running_loop().create_task(self._measure_lag(), name="loop-lag")

    async def close(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None

    async def _measure_lag(self) -> None:
        while True:
            expected = time.monotonic() + 1.0
            await asyncio.sleep(1.0)
            self.loop_lag.observe(max(0.0, time.monotonic() - expected))
