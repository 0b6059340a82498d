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


class Recorder:
    """Every report a store makes, in order."""

    def __init__(self) -> None:
        self.transitions: list[Transition] = []
        self.gone: list[tuple[list[int], Any]] = []

    async def on_transition(self, transition: Transition) -> None:
        self.transitions.append(transition)

    async def on_gone(self, gone: list[tuple[int, int]], at: Any) -> None:
        self.gone.append(([user for user, _ in gone], at))

    async def on_node_stopped(self, user_ids: Any, at: Any) -> None:
        raise AssertionError("a shared presence store hands users over instead")


def grace_store(client: Any, prefix: str, name: str, grace: float) -> RedisPresenceStore:
    return RedisPresenceStore(client, node_id=name, prefix=prefix, ttl_s=30, heartbeat_s=10, hand_over_grace_s=grace)


async def stop_holding(
    stopping: RedisPresenceStore, watcher: RedisPresenceStore, users: list[int], recorder: Recorder
) -> tuple[int, float]:
    """Start both stores, open a socket of every user on `stopping`, stop it: (the reports made before the
    stop, when it stopped)."""
    await watcher.start()
    await stopping.start()
    for user in users:
        await stopping.connected(user)
    reports_before = len(recorder.transitions)
    stopped = time.time()
    await stopping.close()
    return reports_before, stopped


async def test_a_node_stopping_with_a_grace_leaves_its_users_online_and_only_those_not_back_go_offline(
    redis_server: Any,
) -> None:
    """A node leaves for good (scaled down): its clients reconnect to another node. Those back within the
    grace were never offline for anyone; the rest are reported offline by the sweep that ends the grace,
    as of the stop, and no catch-up is asked for a node that stopped in good order."""
    prefix = f"g{uuid.uuid4().hex[:8]}:"
    client = redis.asyncio.from_url(redis_server.url)
    grace = 1.0
    leaving, staying = grace_store(client, prefix, "leaving", grace), grace_store(client, prefix, "staying", grace)
    recorder = Recorder()
    leaving.listener = staying.listener = recorder
    caught_up: list[str] = []

    async def catch_up(incarnation: str) -> None:
        caught_up.append(incarnation)

    staying.on_node_swept = catch_up
    users = list(range(1, 1101))  # more than one pipeline (SWEEP_BATCH) when the grace ends
    back, not_back = users[:600], users[600:]
    try:
        reports_before, stopped = await stop_holding(leaving, staying, users, recorder)
        assert time.time() - stopped < 1.0
        assert recorder.transitions[reports_before:] == [] and recorder.gone == []
        assert await staying.online_among(users) == set(users)
        # Shown online, but a push is what reaches them until their clients are back.
        assert await staying.reachable_among(users) == set()

        for user in back:
            await staying.connected(user)
        assert recorder.transitions[reports_before:] == [] and recorder.gone == []
        await staying._sweep_dead_nodes()  # within the grace: nothing to sweep
        assert recorder.gone == [] and await staying.online_among(users) == set(users)
        assert await staying.reachable_among(users) == set(back)

        await asyncio.sleep(grace + 0.1)
        await staying._sweep_dead_nodes()
        assert len(recorder.gone) == 1
        gone_users, at = recorder.gone[0]
        assert sorted(gone_users) == not_back
        assert abs(at.timestamp() - stopped) < 0.5  # as of the stop, not of the sweep
        assert recorder.transitions[reports_before:] == []
        assert caught_up == []
        assert await staying.online_among(users) == set(back)
        assert await client.hget(f"{prefix}nodes", leaving.incarnation) is None
        assert await client.hget(f"{prefix}handed-over", leaving.incarnation) is None
        assert not await client.exists(f"{prefix}node-users:{leaving.incarnation}")
    finally:
        await staying.close()
        await client.aclose()


async def test_a_restarted_node_keeps_its_previous_runs_users_online_while_they_come_back(redis_server: Any) -> None:
    """A rolling restart: the node stops and comes back under the same NODE_ID, and its clients with it.
    It vouches for the users its previous run left online for as long as they keep coming back, so that a
    node taking 13,000 sockets back for longer than any grace counted from its stop shows nobody going
    offline; those who did not come back are reported offline, as of the stop, once none has come back
    for the grace."""
    prefix = f"g{uuid.uuid4().hex[:8]}:"
    client = redis.asyncio.from_url(redis_server.url)
    grace = 0.6
    first_run, watcher = grace_store(client, prefix, "node1", grace), grace_store(client, prefix, "node2", grace)
    second_run = grace_store(client, prefix, "node1", grace)
    recorder = Recorder()
    first_run.listener = watcher.listener = second_run.listener = recorder
    users = list(range(1, 1101))
    try:
        reports_before, stopped = await stop_holding(first_run, watcher, users, recorder)
        await second_run.start()
        # It took the users over: the previous run's entries are gone, the new run vouches for all.
        assert await client.hget(f"{prefix}nodes", first_run.incarnation) is None
        assert not await client.exists(f"{prefix}node-users:{first_run.incarnation}")
        members = await client.zrange(f"{prefix}online:{users[0]}", 0, -1)
        assert members == [f"{second_run.incarnation}+adopted".encode()]
        assert await watcher.online_among(users) == set(users)
        assert await watcher.reachable_among(users) == set()

        # They come back over longer than the grace, none more than a grace after the one before.
        for wave in range(3):
            for user in users[wave * 300 : (wave + 1) * 300]:
                await second_run.connected(user)
            await asyncio.sleep(grace * 0.6)
        await watcher._sweep_dead_nodes()
        assert recorder.transitions[reports_before:] == [] and recorder.gone == []
        assert await watcher.reachable_among(users) == set(users[:900])
        await second_run._beat()  # a heartbeat renews both kinds of entries, and announces nobody
        assert recorder.transitions[reports_before:] == []
        assert await client.zrange(f"{prefix}online:{users[0]}", 0, -1) == [second_run.incarnation.encode()]

        await asyncio.sleep(grace + 0.3)
        assert len(recorder.gone) == 1
        gone_users, at = recorder.gone[0]
        assert sorted(gone_users) == users[900:]
        assert abs(at.timestamp() - stopped) < 0.5
        assert recorder.transitions[reports_before:] == []
        assert await watcher.online_among(users) == set(users[:900])
        assert await watcher.reachable_among(users) == set(users[:900])
        assert await client.zcard(f"{prefix}online:{users[-1]}") == 0
    finally:
        await second_run.close()
        await watcher.close()
        await client.aclose()


async def test_a_node_back_after_its_grace_still_takes_over_users_nobody_swept(redis_server: Any) -> None:
    """A node stopped in good order and came back only after its grace, with no other node to sweep it
    meanwhile: it takes its users over and reports offline, as of the stop, those who do not come back."""
    prefix = f"g{uuid.uuid4().hex[:8]}:"
    client = redis.asyncio.from_url(redis_server.url)
    store, successor = grace_store(client, prefix, "alone", 0.3), grace_store(client, prefix, "alone", 0.3)
    recorder = Recorder()
    store.listener = successor.listener = recorder
    try:
        await store.start()
        await store.connected(7)
        await store.connected(8)
        stopped = time.time()
        await store.close()
        await asyncio.sleep(0.4)
        await successor.start()
        await successor.connected(8)
        await asyncio.sleep(0.5)
        assert [users for users, _ in recorder.gone] == [[7]]
        assert abs(recorder.gone[0][1].timestamp() - stopped) < 0.3
        assert await successor.online_among([7, 8]) == {8}
        assert [t.user_id for t in recorder.transitions if not t.online] == []
    finally:
        await successor.close()
        await client.aclose()


def test_the_grace_never_outlasts_the_entries_it_keeps_alive() -> None:
    """Users' entries are renewed up to PRESENCE_TTL ahead at each heartbeat: a longer grace would let some
    lapse (offline with nobody told) before the sweep that ends it."""
    client = redis.asyncio.Redis()  # connects at its first command, which this test never sends
    store = RedisPresenceStore(client, node_id="n", prefix="p:", ttl_s=3, heartbeat_s=0.5, hand_over_grace_s=10)
    assert store.hand_over_grace_s == 2.5
