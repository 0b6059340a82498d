"""Prometheus metrics of one node.

Each node (each Services) has its own registry, so several nodes can run in one process (tests) and
nothing is global. Labels are bounded sets (endpoint, frame type, close code), never user or
conversation ids, so the number of series stays fixed however many users come.

What is counted per frame (frames in and out, bus events, publish-to-deliver latency) is kept in plain
numbers and turned into samples when scraped: prometheus_client validates the arguments of `labels()`
and takes a lock on every call, and another lock per `inc` or `observe`, which a typing frame paid four
times on its way through a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

KNOWN_FRAME_TYPES = frozenset(
    {
        "message",
        "typing",
        "read_receipt",
        "status",
        "notification",
        "ping",
        "pong",
        "error",
        "invalid",
        "edit",
        "unsend",
        "message_edited",
        "message_deleted",
    }
)


def frame_label(kind: object) -> str:
    return kind if isinstance(kind, str) and kind in KNOWN_FRAME_TYPES else "other"


class TallyChild:
    """One series of a Tally; bind it once and call `inc` per event."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class Tally:
    """A counter with one label, in plain numbers, exported when the registry is scraped.

    Called like prometheus_client's Counter (`labels(type=...).inc()`), with the same exposition
    (`<name>_total` and `<name>_created` per label value). Updated only from the event loop's thread,
    which is why it needs no lock."""

    def __init__(self, name: str, documentation: str, labelname: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelname = labelname
        self._children: dict[str, TallyChild] = {}
        registry.register(self)

    def labels(self, *values: object, **labelkwargs: object) -> TallyChild:
        if labelkwargs:
            ((name, value),) = labelkwargs.items()
            if name != self.labelname:
                raise ValueError(f"{self.name} has the label {self.labelname!r}, not {name!r}")
        else:
            (value,) = values
        return self.child(str(value))

    def child(self, value: str) -> TallyChild:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = TallyChild()
        return child

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=[self.labelname])]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.labelname])
        for value, child in list(self._children.items()):
            family.add_metric([value], child.value, created=child.created)
        yield family


class TallyHistogram:
    """A histogram without labels in plain numbers, exported like prometheus_client's Histogram."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = [*sorted(buckets), math.inf]
        self._le = [floatToGoString(bound) for bound in self._bounds]  # type: ignore[no-untyped-call]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._created = time.time()
        registry.register(self)

    def observe(self, amount: float) -> None:
        # The first bound at or above `amount`: Prometheus buckets are "less than or equal".
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation)
        cumulative, buckets = 0, []
        for le, count in zip(self._le, list(self._counts), strict=True):
            cumulative += count
            buckets.append((le, float(cumulative)))
        family.add_metric([], buckets, self._sum)
        family.samples.append(Sample(self.name + "_created", {}, self._created))
        yield family


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, process_max_fds...
        # from /proc: what the dashboard and the descriptor alert read.
        ProcessCollector(registry=r)
        self.open_sockets = Gauge("chat_websockets_open", "WebSockets open on this node", ["endpoint"], registry=r)
        self._open_sockets_by_endpoint: dict[str, Gauge] = {}
        self.connections = Tally("chat_websocket_connections", "WebSocket handshakes accepted", "endpoint", r)
        # Set to read the join gate (services/realtime/admission.py) when the services are built.
        self.joins = Gauge(
            "chat_websocket_joins",
            "Sockets opening on this node: `running` (waiting on the store) and `waiting` (queued for a turn)",
            ["state"],
            registry=r,
        )
        self.websocket_joins_abandoned = Counter(
            "chat_websocket_joins_abandoned",
            "Sockets their client closed while their opening waited for a turn (nothing read for them)",
            registry=r,
        )
        self.closes = Tally("chat_websocket_closes", "WebSockets closed, by close code", "code", r)
        self.frames_in = Tally("chat_frames_received", "Client frames received, by type", "type", r)
        self.frames_out = Tally("chat_frames_sent", "Frames written to sockets, by type", "type", r)
        self.messages_stored = Counter("chat_messages_stored", "Chat messages stored", registry=r)
        self.bus_events = Tally("chat_bus_events_received", "Bus events received by this node", "kind", r)
        self.deliver_latency = TallyHistogram(
            "chat_publish_to_deliver_seconds",
            "Time from publishing an event to handing it to this node's sockets",
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            r,
        )
        self.rate_limited = Counter(
            "chat_rate_limited", "Requests or frames refused by a rate limit", ["scope"], registry=r
        )
        self.slow_consumers = Counter("chat_slow_consumer_closes", "Sockets closed for not reading", registry=r)
        self.backend_errors = Counter(
            "chat_backend_errors", "Errors reaching MongoDB or Redis", ["backend"], registry=r
        )
        # Set by the node's backend probe (services/core/container.py), every few seconds and on /readyz.
        self.backend_up = Gauge(
            "chat_backend_up",
            "Whether MongoDB, or Redis when configured, answered this node's last probe (1) or not (0)",
            ["backend"],
            registry=r,
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

    def open_sockets_of(self, endpoint: str) -> Gauge:
        """The open-sockets gauge of one endpoint, bound once: every socket's opening and closing moves it,
        and prometheus_client's `labels()` validates and locks on every call."""
        gauge = self._open_sockets_by_endpoint.get(endpoint)
        if gauge is None:
            gauge = self._open_sockets_by_endpoint[endpoint] = self.open_sockets.labels(endpoint=endpoint)
        return gauge

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
