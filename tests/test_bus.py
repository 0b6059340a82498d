"""The Redis bus between nodes, on a real redis-server: own events delivered locally once, every other
node receiving each event once and in publish order, publishing while Redis is away, the queue bound."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio
import tornado.ioloop

from services.realtime.bus import InProcessBus, RedisBus
from tests.processes import RedisProcess
from tests.ws_helpers import wait_for

CHANNEL = "conv:1"


class Node:
    """A RedisBus and what its handler was given."""

    def __init__(self, url: str, prefix: str) -> None:
        self.bus = RedisBus(url, prefix)
        self.received: list[tuple[str, bytes]] = []
        self.bus.set_handler(lambda channel, payload: self.received.append((channel, payload)))

    def payloads(self, channel: str = CHANNEL) -> list[bytes]:
        return [payload for name, payload in self.received if name == channel]


@pytest.fixture
def nodes(io_loop: tornado.ioloop.IOLoop, redis_server: RedisProcess) -> Iterator[list[Node]]:
    prefix = "b" + uuid.uuid4().hex[:8] + ":"
    made = [Node(redis_server.url, prefix), Node(redis_server.url, prefix)]

    async def start() -> None:
        for node in made:
            await node.bus.start()
            await node.bus.subscribe(CHANNEL)

    async def stop() -> None:
        for node in made:
            await node.bus.close()

    io_loop.run_sync(start, timeout=30)
    yield made
    io_loop.run_sync(stop, timeout=30)


async def test_an_own_event_is_delivered_locally_once_and_not_again_from_redis(nodes, redis_server):
    one, two = nodes
    watcher = redis.asyncio.from_url(redis_server.url)
    pubsub = watcher.pubsub()
    await pubsub.subscribe(one.bus.prefix + CHANNEL)
    try:
        await one.bus.publish(CHANNEL, b'{"k":"conversation"}\n{"n":1}')
        assert one.received == []  # never inside the publisher's call stack
        await asyncio.sleep(0)
        assert one.payloads() == [b'{"k":"conversation"}\n{"n":1}']
        await wait_for(lambda: two.payloads() == [b'{"k":"conversation"}\n{"n":1}'])
        # It did go through Redis (once, in its envelope), and node one let it pass when it came back.
        seen: list[bytes] = []
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                seen.append(message["data"])
        assert seen == [one.bus.node_tag + b'{"k":"conversation"}\n{"n":1}']
        await one.bus.publish(CHANNEL, b"ping")  # a later event: the first had its chance to come back
        await wait_for(lambda: two.payloads()[-1:] == [b"ping"])
        await asyncio.sleep(0.1)
        assert one.payloads() == [b'{"k":"conversation"}\n{"n":1}', b"ping"]
        assert two.payloads() == [b'{"k":"conversation"}\n{"n":1}', b"ping"]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await watcher.aclose()


async def test_an_event_published_on_an_unsubscribed_channel_goes_to_other_nodes_only(nodes):
    one, two = nodes
    await two.bus.subscribe("user:7")
    await one.bus.publish("user:7", b"note")
    await wait_for(lambda: two.payloads("user:7") == [b"note"])
    await asyncio.sleep(0.05)
    assert one.received == []


async def test_events_reach_other_nodes_once_and_in_publish_order(nodes):
    one, two = nodes
    count = 2 * RedisBus.MAX_PIPELINE + 17  # several pipelines
    for i in range(count):
        one.bus.publish_nowait(CHANNEL, str(i).encode())
        if i % 300 == 0:
            await asyncio.sleep(0)  # some while a pipeline is in flight
    for i in range(5):
        await two.bus.publish(CHANNEL, f"two-{i}".encode())
    expected = [str(i).encode() for i in range(count)]
    await wait_for(lambda: len(two.payloads()) >= count + 5, timeout=10)
    await wait_for(lambda: len(one.payloads()) >= count + 5, timeout=10)
    await asyncio.sleep(0.1)
    assert [p for p in two.payloads() if not p.startswith(b"two-")] == expected
    assert [p for p in one.payloads() if not p.startswith(b"two-")] == expected
    assert [p for p in one.payloads() if p.startswith(b"two-")] == [f"two-{i}".encode() for i in range(5)]
    assert [p for p in two.payloads() if p.startswith(b"two-")] == [f"two-{i}".encode() for i in range(5)]
    assert one.bus.publish_failures == one.bus.publish_dropped == 0


async def test_a_payload_without_an_envelope_is_delivered_as_it_is(nodes, redis_server):
    one, two = nodes
    control = redis.asyncio.from_url(redis_server.url)
    try:
        await control.publish(one.bus.prefix + CHANNEL, b'{"k":"notification"}\nnull')
        await wait_for(lambda: one.payloads() == two.payloads() == [b'{"k":"notification"}\nnull'])
    finally:
        await control.aclose()


async def test_the_queue_is_bounded_and_what_is_dropped_still_reaches_local_sockets(nodes):
    one, two = nodes
    one.bus.MAX_QUEUED = 5
    for i in range(8):  # in one go: the sender has no chance to run in between
        one.bus.publish_nowait(CHANNEL, str(i).encode())
    assert one.bus.publish_dropped == 3
    await wait_for(lambda: len(one.payloads()) == 8)
    await wait_for(lambda: len(two.payloads()) == 5)
    await asyncio.sleep(0.1)
    assert two.payloads() == [str(i).encode() for i in range(5)]
    one.bus.MAX_QUEUED_BYTES = 100
    one.bus.publish_nowait(CHANNEL, b"x" * 60)
    one.bus.publish_nowait(CHANNEL, b"y" * 60)  # would pass the byte bound
    one.bus.publish_nowait(CHANNEL, b"z")
    assert one.bus.publish_dropped == 4
    await wait_for(lambda: two.payloads()[5:] == [b"x" * 60, b"z"])
    assert one.payloads()[8:] == [b"x" * 60, b"y" * 60, b"z"]


async def test_publishing_while_redis_is_down_returns_at_once_serves_local_sockets_and_recovers(tmp_path: Path):
    server = RedisProcess(tmp_path / "redis")
    server.start()
    prefix = "d" + uuid.uuid4().hex[:8] + ":"
    one, two = Node(server.url, prefix), Node(server.url, prefix)
    try:
        for node in (one, two):
            await node.bus.start()
            await node.bus.subscribe(CHANNEL)
        await one.bus.publish(CHANNEL, b"before")
        await wait_for(lambda: two.payloads() == [b"before"])
        reconnects = (one.bus.reconnects, two.bus.reconnects)
        server.stop()
        await wait_for(lambda: not one.bus.healthy and not two.bus.healthy)
        started = time.monotonic()
        for i in range(50):
            await one.bus.publish(CHANNEL, f"down-{i}".encode())
        assert time.monotonic() - started < 0.1  # nobody waits for Redis
        await wait_for(lambda: len(one.payloads()) == 51)
        assert one.payloads()[1:] == [f"down-{i}".encode() for i in range(50)]
        await wait_for(lambda: one.bus.publish_failures > 0)
        assert not one.bus.healthy
        server.start_same_port()
        await wait_for(lambda: one.bus.reconnects > reconnects[0] and two.bus.reconnects > reconnects[1], timeout=15)
        # Ready again without having to publish anything first.
        await wait_for(lambda: one.bus.healthy and two.bus.healthy, timeout=5)
        await one.bus.publish(CHANNEL, b"after")
        await wait_for(lambda: two.payloads()[-1:] == [b"after"], timeout=5)
        # Node two got some of what was published meanwhile (sent once Redis was back) or none of it,
        # never one twice, and in order.
        got = two.payloads()
        assert got[0] == b"before" and got[-1] == b"after"
        middle = got[1:-1]
        indexes = [int(p.split(b"-")[1]) for p in middle]
        assert indexes == sorted(set(indexes))
        assert one.bus.publish_failures + len(middle) + one.bus.publish_dropped == 50
        assert one.payloads()[-1] == b"after" and one.payloads().count(b"after") == 1
    finally:
        for node in (one, two):
            await node.bus.close()
        server.stop()


async def test_close_sends_what_is_queued_first(nodes):
    one, two = nodes
    for i in range(20):
        one.bus.publish_nowait(CHANNEL, str(i).encode())
    await one.bus.close()
    await wait_for(lambda: len(two.payloads()) == 20)
    assert two.payloads() == [str(i).encode() for i in range(20)]


async def test_the_in_process_bus_delivers_on_the_next_loop_iteration():
    bus = InProcessBus()
    received: list[bytes] = []
    bus.set_handler(lambda _channel, payload: received.append(payload))
    await bus.subscribe(CHANNEL)
    await bus.publish(CHANNEL, b"a")
    bus.publish_nowait(CHANNEL, b"b")
    bus.publish_nowait("conv:2", b"not subscribed")
    assert received == []
    await asyncio.sleep(0)
    assert received == [b"a", b"b"]


async def test_more_commands_at_once_than_connections_wait_for_one_instead_of_failing(nodes):
    """Past its pool size a node's commands queue for a connection: redis-py's default pool refused the
    101st command in flight with "Too many connections", which a reconnect storm reached (the
    notification log then dropped what it was logging)."""
    redis = nodes[0].bus.redis
    await asyncio.gather(*(redis.ping() for _ in range(10)))
    pool_size = redis.connection_pool.max_connections
    # Each holds its connection for 50 ms: three waves through the pool.
    key = f"{uuid.uuid4().hex}:empty"
    answers = await asyncio.gather(*(redis.blpop([key], timeout=0.05) for _ in range(3 * pool_size)))
    assert answers == [None] * (3 * pool_size)
