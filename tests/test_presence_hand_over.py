"""A stopping node hands its users over: their presence entries leave Redis in pipelines, then the listener
is told of every user now offline at once, and a listener that cannot finish (the store too busy for the
last_seen write) holds the stop no longer than HAND_OVER_REPORTS_S."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import redis.asyncio

from services.realtime import presence as presence_module
from services.realtime.presence import RedisPresenceStore, Transition


class StuckListener:
    """Takes the online reports; hangs on the users handed over, as an announcer whose store times out."""

    def __init__(self) -> None:
        self.offline_asked: list[int] = []
        self.never = asyncio.Event()

    async def on_transition(self, transition: Transition) -> None:
        if not transition.online:
            raise AssertionError("a hand-over tells of its users together (on_gone)")

    async def on_gone(self, gone: list[tuple[int, int]], at: Any) -> None:
        self.offline_asked.extend(user for user, _ in gone)
        assert all(version > 0 for _, version in gone)
        await self.never.wait()

    async def on_node_stopped(self, user_ids: Any, at: Any) -> None:
        raise AssertionError("a shared presence store hands users over instead")


async def test_a_stopping_node_withdraws_its_users_and_waits_for_their_announcements_only_so_long(
    redis_server: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(presence_module, "HAND_OVER_REPORTS_S", 0.5)
    prefix = f"h{uuid.uuid4().hex[:8]}:"
    client = redis.asyncio.from_url(redis_server.url)
    leaving = RedisPresenceStore(client, node_id="leaving", prefix=prefix, ttl_s=30, heartbeat_s=10)
    staying = RedisPresenceStore(client, node_id="staying", prefix=prefix, ttl_s=30, heartbeat_s=10)
    listener = StuckListener()
    leaving.listener = staying.listener = listener
    users = list(range(1, 1201))  # more than one pipeline (SWEEP_BATCH)
    try:
        for user in users:
            await leaving.connected(user)
        await staying.connected(users[0])  # also on the other node: stays online, no offline report
        started = time.monotonic()
        await leaving.close()
        assert time.monotonic() - started < 5.0
        assert sorted(listener.offline_asked) == users[1:]
        keys = [f"{prefix}online:{user}" for user in users]
        members = [await client.zrange(key, 0, -1) for key in keys]
        assert members[0] == [staying.incarnation.encode()]
        assert all(not m for m in members[1:])
    finally:
        listener.never.set()
        await staying.close()
        await client.aclose()


async def test_a_stopping_node_ends_its_heartbeat_even_when_a_cancellation_is_swallowed(redis_server: Any) -> None:
    """Python 3.11's asyncio.wait_for, which redis-py awaits commands with, swallows a cancellation that
    arrives as the command completes: the heartbeat then went on as if never cancelled, and the node's stop
    (a test's teardown, in a full run) waited for it until its timeout."""
    prefix = f"h{uuid.uuid4().hex[:8]}:"
    client = redis.asyncio.from_url(redis_server.url)
    store = RedisPresenceStore(client, node_id="swallowing", prefix=prefix, ttl_s=30, heartbeat_s=0.05)
    swallowed = asyncio.Event()
    real_beat = store._beat
    beats = 0

    async def beat_that_swallows_one_cancellation() -> None:
        nonlocal beats
        beats += 1
        if beats == 1 or swallowed.is_set():  # the first one is start()'s own
            await real_beat()
            return
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            swallowed.set()  # as wait_for does when its command completed at that moment

    store._beat = beat_that_swallows_one_cancellation  # type: ignore[method-assign]
    await store.start()
    try:
        await asyncio.sleep(0.2)  # the heartbeat is inside the beat
        started = time.monotonic()
        await asyncio.wait_for(store.close(), 5)
        assert swallowed.is_set() and time.monotonic() - started < 2.0
        assert store._loop is None
    finally:
        await client.aclose()
