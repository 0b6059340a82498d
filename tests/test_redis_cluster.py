"""Nodes on a real Redis Cluster (six redis-server processes on loopback: three masters, a replica each).

REDIS_URL names one node of the cluster and nothing else: the nodes find out that it is a cluster. The
tests of several nodes on a single Redis that matter most run here again unchanged (imported below, with
`cluster_factory` building nodes on the cluster), then what only a cluster has: users whose channels hang
on different shards, a master killed under traffic while its replica takes over, a master restarted.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.ioloop

from services.accounts.throttle import LoginThrottle
from services.realtime.bus import RedisBus, conversation_channel, user_channel
from services.realtime.counters import Rate, RedisRateCounters, SharedBudget
from services.realtime.redis_cluster import ClusterBus, detect_cluster
from tests.conftest import node_factory
from tests.processes import RedisClusterProcess, RedisProcess, ServerProcess, insert_conversation, node_env
from tests.support import ApiClient, PortClient, make_conversation, ws_connect
from tests.test_abuse_limits import test_nodes_share_the_sign_up_budget_through_redis  # noqa: F401

# The same tests, on the cluster (pytest collects them here too, with this module's `cluster_factory`).
from tests.test_cluster_faults import all_message_ids
from tests.test_crash_restart_presence import joined, next_status
from tests.test_limits import test_failures_are_shared_by_nodes_through_redis  # noqa: F401
from tests.test_multinode import (  # noqa: F401
    test_a_late_status_announcement_never_overrides_a_newer_one,
    test_every_event_crosses_nodes_once,
    test_node_death_reports_offline,
    test_offline_only_when_last_socket_anywhere_closes,
    test_two_nodes_sending_into_one_conversation_get_dense_unique_ids,
)
from tests.test_shared_budget import test_sending_through_two_nodes_gets_one_budget_not_two  # noqa: F401

pytestmark = pytest.mark.slow

FAST = {"presence_ttl_s": 3.0, "heartbeat_interval_s": 0.5}
FLOWING = {**FAST, "message_rate": 1000.0, "message_burst": 1000, "hole_timeout_s": 1.0}


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcess]:
    cluster = RedisClusterProcess(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def healthy_cluster(redis_cluster: RedisClusterProcess) -> RedisClusterProcess:
    """The module's cluster with all six processes running and every slot served (a test before may have
    killed a master)."""
    for port, process in redis_cluster.processes.items():
        if process.poll() is not None:
            redis_cluster.start_node(port)
    redis_cluster.wait_until_ok()
    return redis_cluster


@pytest.fixture
def cluster_factory(
    io_loop: tornado.ioloop.IOLoop, tmp_path: Path, mongo_url: str, healthy_cluster: RedisClusterProcess
) -> Iterator[Any]:
    """Nodes whose REDIS_URL is one node of the Redis Cluster."""
    yield from node_factory(io_loop, tmp_path, mongo_url, healthy_cluster.url)


def shard_of(node: Any, channel: str) -> str:
    """The master that holds `channel`'s slot, as a node's client sees it."""
    bus = node.services.bus
    master = bus.redis.get_node_from_key(bus._wire(channel))
    return str(master.name)


async def users_on_two_shards(node: Any) -> tuple[Any, Any]:
    """Two users whose channels hang on different shards (ids come from the store: new users until one
    lands elsewhere than the first)."""
    first = await node.api.user("alice")
    for n in range(30):
        other = await node.api.user(f"bob{n}")
        if shard_of(node, user_channel(other.id)) != shard_of(node, user_channel(first.id)):
            return first, other
    raise AssertionError("thirty users' channels all on one shard")


async def test_the_url_of_one_node_is_enough_to_run_on_the_cluster(cluster_factory, redis_server: RedisProcess):
    (node,) = await cluster_factory(1)
    assert isinstance(node.services.bus, ClusterBus)
    assert node.services.bus.healthy
    assert await detect_cluster(node.services.settings.redis_url) is True
    # A single Redis stays a single Redis, and nobody answering is told apart from both.
    assert await detect_cluster(redis_server.url) is False
    assert await detect_cluster("redis://127.0.0.1:1/0", deadline_s=0.3) is None


async def test_events_and_presence_cross_nodes_whose_users_hang_on_different_shards(cluster_factory):
    n1, n2 = await cluster_factory(2, **FAST)
    a, b = await users_on_two_shards(n1)
    cid = await make_conversation(n1.services, a.id, b.id)
    ws_a = await ws_connect(n1.api, f"/ws/conversations/{cid}/?token={a.access}")
    assert (await ws_a.recv_type("status"))["status"] == "offline"
    notif_a = await ws_connect(n1.api, f"/ws/notifications/?token={a.access}")
    notif_b = await ws_connect(n2.api, f"/ws/notifications/?token={b.access}")
    assert (await ws_a.recv_type("status"))["status"] == "online"  # b came online on the other node
    ws_b = await ws_connect(n2.api, f"/ws/conversations/{cid}/?token={b.access}")
    await ws_b.recv_type("status")
    # Each node subscribes on the shards its sockets need, one connection per shard.
    shards_1 = {shard_of(n1, user_channel(a.id)), shard_of(n1, conversation_channel(cid))}
    assert set(n1.services.bus._shards) >= shards_1
    assert len(n1.services.bus._shards) <= 3 and len(n2.services.bus._shards) <= 3

    await ws_a.send({"type": "message", "content": "across shards"})
    assert (await ws_a.recv_type("message"))["message"]["id"] == 1  # the sender's own echo
    assert (await ws_b.recv_type("message"))["message"]["content"] == "across shards"
    first = await notif_b.recv_type("notification")
    await ws_b.send({"type": "message", "content": "and back"})
    assert (await ws_b.recv_type("message"))["message"]["id"] == 2
    assert (await ws_a.recv_type("message"))["message"]["content"] == "and back"
    assert (await notif_a.recv_type("notification"))["notification"]["type"] == "new_message"
    await ws_a.send({"type": "typing", "is_typing": True})
    assert (await ws_b.recv_type("typing"))["is_typing"] is True
    # Notification ids count up by one per user, whichever node notified (one script on the user's slot).
    await ws_a.send({"type": "message", "content": "again"})
    second = await notif_b.recv_type("notification")
    assert second["id"] == first["id"] + 1
    resumed = await ws_connect(n1.api, f"/ws/notifications/?token={b.access}&after={first['id'] - 1}")
    replayed = [await resumed.recv_type("notification") for _ in range(2)]
    assert [f["id"] for f in replayed] == [first["id"], second["id"]]

    # b's last socket closes on node 2: a hears it on node 1, once.
    for ws in (ws_b, notif_b):
        ws.close()
    await resumed.send({"type": "ping"})
    resumed.close()
    status = await ws_a.recv_type("status")
    assert status["user_id"] == b.id and status["status"] == "offline"


async def test_rates_and_budgets_run_on_the_cluster(healthy_cluster: RedisClusterProcess):
    bus = ClusterBus(healthy_cluster.url, "rates:")
    await bus.start()
    try:
        rates = RedisRateCounters(bus.redis, "rates:")
        rate = Rate("t", 2, 60.0)
        waits = [await rates.take(rate, key) for key in ("k1", "k1", "k1", "k2")]
        assert waits[:2] == [0.0, 0.0] and waits[2] > 0 and waits[3] == 0.0
        budget = SharedBudget(bus.redis, "rates:", "m", rate=1.0, burst=2)
        users = list(range(1, 40))  # spread over every shard
        await budget._flush({user: 5 for user in users})
        assert all(budget.refused_for(user) > 2 for user in users)
    finally:
        await bus.close()


async def test_the_sign_in_throttle_counts_account_and_address_apart_on_the_cluster(
    healthy_cluster: RedisClusterProcess,
):
    bus = ClusterBus(healthy_cluster.url, "throttle:")
    await bus.start()
    try:
        throttle = LoginThrottle(2, 3, 60.0, redis=bus.redis, prefix="throttle:")
        # An account's key and an address's key lie in different slots: two calls, one pipeline.
        assert (await throttle.attempt("carol", "198.51.100.7"))[0] == 0
        assert (await throttle.attempt("carol", "198.51.100.8"))[0] == 0
        assert (await throttle.attempt("carol", "198.51.100.9"))[0] > 0  # the account's budget is spent
        assert (await throttle.attempt("dave", "198.51.100.7"))[0] == 0
        assert (await throttle.attempt("erin", "198.51.100.7"))[0] == 0
        assert (await throttle.attempt("frank", "198.51.100.7"))[0] > 0  # the address's budget is spent
        # The refused attempt booked nothing: frank's account still has its whole budget elsewhere.
        assert (await throttle.attempt("frank", "203.0.113.1"))[0] == 0
        assert (await throttle.attempt("frank", "203.0.113.2"))[0] == 0
        assert (await throttle.attempt("frank", "203.0.113.3"))[0] > 0
        # No node fell back to counting alone: every answer came from the cluster.
        assert not throttle._redis_failing
    finally:
        await bus.close()


async def traffic_through_a_fault(cluster_factory, fault) -> None:
    """Two nodes send into one conversation, then `fault()` strikes the conversation's shard and node 1
    goes on sending: the socket on node 2 must end with every stored message exactly once, in order, with
    no later message to reveal what it missed, and live delivery must come back."""
    n1, n2 = await cluster_factory(2, **FLOWING)
    a, b = await users_on_two_shards(n1)
    cid = await make_conversation(n1.services, a.id, b.id)
    ws_b = await ws_connect(n2.api, f"/ws/conversations/{cid}/?token={b.access}")
    await ws_b.send({"type": "ping"})
    await ws_b.recv_type("pong")
    seen: list[int] = []
    contents: list[str] = []

    async def read_b() -> None:
        while (frame := await ws_b.recv(timeout=60)) is not None:
            if frame["type"] == "message":
                seen.append(frame["message"]["id"])
                contents.append(frame["message"]["content"])

    reader = asyncio.ensure_future(read_b())
    acknowledged: list[int] = []

    async def send_many(api: ApiClient, token: str, label: str, count: int) -> None:
        for i in range(count):
            answer = await api.post(f"/api/conversations/{cid}/messages/", {"content": f"{label}{i}"}, token=token)
            if answer.status == 201:
                acknowledged.append(answer.body["id"])
            await asyncio.sleep(0.03)

    await asyncio.gather(send_many(n1.api, a.access, "a", 20), send_many(n2.api, b.access, "b", 20))
    await fault(shard_of(n1, conversation_channel(cid)))
    # Sent through the other node while the conversation's shard has no master (a failover takes seconds),
    # and the last ones: no later message reveals a gap to the socket on node 2.
    await send_many(n1.api, a.access, "c", 10)
    assert len(acknowledged) == 50  # MongoDB stores; a shard's failover refuses no send

    # No message follows the last ones sent while the shard was down (no gap for a later one to reveal):
    # the socket gets them because its node caught it up after resubscribing.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    stored = await all_message_ids(n1.api, cid, a.access)
    assert set(acknowledged) <= set(stored)
    while seen != stored and loop.time() < deadline:
        await asyncio.sleep(0.1)
    assert seen == stored
    # And live delivery across nodes works again.
    while "after the fault" not in contents:
        path = f"/api/conversations/{cid}/messages/"
        answer = await n1.api.post(path, {"content": "after the fault"}, token=a.access)
        assert answer.status == 201
        await asyncio.sleep(0.5)
        assert loop.time() < deadline, "cross-node delivery did not resume"
    reader.cancel()
    for node in (n1, n2):
        while not node.services.bus.healthy and loop.time() < deadline:
            await asyncio.sleep(0.1)
        assert node.services.bus.healthy


async def test_a_master_killed_under_traffic_loses_no_acknowledged_message(
    cluster_factory, healthy_cluster: RedisClusterProcess
):
    killed: list[int] = []

    async def kill_the_conversations_master(master: str) -> None:
        port = int(master.rsplit(":", 1)[1])
        healthy_cluster.kill(port)  # SIGKILL: no goodbye to clients or to the cluster
        killed.append(port)

    await traffic_through_a_fault(cluster_factory, kill_the_conversations_master)
    # Its replica took over the slots: three masters again, the killed one not among them.
    masters = await asyncio.to_thread(healthy_cluster.masters)
    assert len(masters) == 3 and killed[0] not in masters


async def test_a_master_restarted_under_traffic(cluster_factory, healthy_cluster: RedisClusterProcess):
    async def restart(master: str) -> None:
        port = int(master.rsplit(":", 1)[1])
        process = healthy_cluster.processes[port]
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 10)
        await asyncio.to_thread(healthy_cluster.start_node, port)

    await traffic_through_a_fault(cluster_factory, restart)
    await asyncio.to_thread(healthy_cluster.wait_until_ok)


async def test_a_server_node_killed_and_restarted_on_the_cluster(
    healthy_cluster: RedisClusterProcess, mongo_url: str, tmp_path: Path
):
    # `server.py` as deployed: REDIS_URL names one node of the cluster, nothing else says it is one.
    env = node_env(mongo_url, REDIS_URL=healthy_cluster.url, PRESENCE_TTL="120", HEARTBEAT_INTERVAL="1")
    started: list[ServerProcess] = []

    def start(name: str) -> ApiClient:
        node = ServerProcess(tmp_path / name, {**env, "NODE_ID": name}).start()
        started.append(node)
        return ApiClient(PortClient(node.port))

    try:
        api1, api2 = start("n1"), start("n2")
        alice, bob = await api1.user("alice"), await api1.user("bob")
        cid = await insert_conversation(mongo_url, env["MONGODB_DATABASE"], alice.id, bob.id, 700_000 + bob.id)
        watcher = await joined(api1, cid, alice.access)
        await joined(api2, cid, bob.access)
        assert (await next_status(watcher, bob.id, timeout=5))["status"] == "online"
        started[1].kill()
        api2 = start("n2")  # under the same NODE_ID: it reclaims what its dead run left on the cluster
        assert (await next_status(watcher, bob.id, timeout=5))["status"] == "offline"
        ws_bob = await joined(api2, cid, bob.access)
        assert (await next_status(watcher, bob.id, timeout=5))["status"] == "online"
        await ws_bob.send({"type": "message", "content": "back"})
        assert (await watcher.recv_type("message"))["message"]["content"] == "back"
        assert "REDIS_URL names a Redis Cluster" in started[2].log()
    finally:
        for node in started:
            node.stop()


async def test_a_single_redis_keeps_its_own_bus(cluster_factory_single):
    (node,) = await cluster_factory_single(1)
    assert type(node.services.bus) is RedisBus


@pytest.fixture
def cluster_factory_single(
    io_loop: tornado.ioloop.IOLoop, tmp_path: Path, mongo_url: str, redis_server: RedisProcess
) -> Iterator[Any]:
    yield from node_factory(io_loop, tmp_path, mongo_url, redis_server.url)
