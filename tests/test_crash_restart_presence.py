"""A node killed and restarted at once under the same NODE_ID (systemd's `Restart=on-failure`,
`RestartSec=2`): its users' entries from before the crash are reclaimed when it starts again, so the
people who watch them see them go offline, and nothing of the dead process stays in Redis.

Real processes: two `server.py` nodes sharing one MongoDB database and one redis-server. PRESENCE_TTL is
long on purpose: the sweep of silent nodes cannot explain what the test sees within its bounds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from collections.abc import Iterator

import pytest
import redis.asyncio

from tests.processes import ProcessCluster, insert_conversation, process_cluster
from tests.support import ApiClient, PortClient, WsClient, ws_connect

pytestmark = pytest.mark.slow

TTL_S = 120.0
HEARTBEAT_S = 1.0
RESTART_DELAY_S = 2.0
# What docs/operations.md promises: the offline announcement leaves while the restarted node starts,
# before it accepts connections; this is the slack for it to reach the watcher on the other node.
DELIVERY_S = 3.0


@pytest.fixture
def cluster(tmp_path, mongo_url) -> Iterator[ProcessCluster]:
    with process_cluster(tmp_path, mongo_url, PRESENCE_TTL=str(TTL_S), HEARTBEAT_INTERVAL=str(HEARTBEAT_S)) as c:
        yield c


async def joined(api: ApiClient, cid: int, token: str) -> WsClient:
    """A conversation socket, registered (its pong comes after the join)."""
    ws = await ws_connect(api, f"/ws/conversations/{cid}/?token={token}")
    await ws.send({"type": "ping"})
    await ws.recv_type("pong")
    return ws


async def next_status(ws: WsClient, user_id: int, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        frame = await ws.recv_type("status", timeout=max(0.01, deadline - time.monotonic()))
        if frame["user_id"] == user_id:
            return frame


async def test_a_node_restarted_under_its_name_reclaims_its_dead_users(cluster: ProcessCluster):
    n1, n2 = cluster.start_node("n1"), cluster.start_node("n2")
    api1, api2 = ApiClient(PortClient(n1.port)), ApiClient(PortClient(n2.port))
    alice = await api1.user("alice")
    bob = await api1.user("bob")
    cid = await insert_conversation(cluster.mongo_url, cluster.database, alice.id, bob.id, 700_000 + bob.id)
    watcher = await joined(api1, cid, alice.access)
    await joined(api2, cid, bob.access)
    assert (await next_status(watcher, bob.id, timeout=5))["status"] == "online"

    n2.kill()
    await asyncio.sleep(RESTART_DELAY_S)
    n2_again = cluster.start_node("n2")  # same NODE_ID, as systemd restarts it
    listening = time.monotonic()

    offline = await next_status(watcher, bob.id, timeout=DELIVERY_S)
    assert offline["status"] == "offline"
    assert time.monotonic() - listening <= DELIVERY_S
    # Once: no second announcement of the same death (the sweep has nothing left to find either).
    later = [f for f in await watcher.silent(2 * HEARTBEAT_S + 0.5) if f.get("type") == "status"]
    assert later == []

    profile = await api1.get(f"/api/users/{bob.id}/", token=alice.access)
    assert profile.status == 200, profile.body
    assert profile.body["status"] == "offline"
    assert profile.body["last_seen"] is not None

    client = redis.asyncio.Redis.from_url(cluster.redis.url, decode_responses=True)
    try:
        prefix = "chat:"
        assert await client.zcard(f"{prefix}online:{bob.id}") == 0
        user_sets = [key async for key in client.scan_iter(f"{prefix}node-users:n2*")]
        for key in user_sets:
            assert str(bob.id) not in await client.smembers(key), key
        nodes = {str(n) for n in await client.hkeys(f"{prefix}nodes")}
        # One live entry per running process named n2: the dead one's is gone.
        assert len([n for n in nodes if n == "n2" or n.startswith("n2/")]) == 1, nodes
    finally:
        await client.aclose()

    # The restarted node announces its own users as before.
    api2_again = ApiClient(PortClient(n2_again.port))
    await joined(api2_again, cid, bob.access)
    assert (await next_status(watcher, bob.id, timeout=5))["status"] == "online"


GRACE_S = 5.0


@pytest.fixture
def graceful_cluster(tmp_path, mongo_url) -> Iterator[ProcessCluster]:
    with process_cluster(
        tmp_path,
        mongo_url,
        PRESENCE_TTL=str(TTL_S),
        HEARTBEAT_INTERVAL=str(HEARTBEAT_S),
        PRESENCE_HAND_OVER_GRACE=str(GRACE_S),
    ) as c:
        yield c


async def test_a_node_restarted_in_good_order_keeps_its_users_online_while_they_come_back(
    graceful_cluster: ProcessCluster,
):
    """A rolling restart (SIGTERM, then the same NODE_ID started again): Bob comes back to the restarted
    node and Alice, watching from the other node, sees nothing of it; Carol does not come back and Alice
    sees her offline once the grace is over, as of the stop."""
    cluster = graceful_cluster
    n1, n2 = cluster.start_node("n1"), cluster.start_node("n2")
    api1, api2 = ApiClient(PortClient(n1.port)), ApiClient(PortClient(n2.port))
    alice, bob, carol = [await api1.user(name) for name in ("alice", "bob", "carol")]
    cid_bob = await insert_conversation(cluster.mongo_url, cluster.database, alice.id, bob.id, 710_000 + bob.id)
    cid_carol = await insert_conversation(cluster.mongo_url, cluster.database, alice.id, carol.id, 710_000 + carol.id)
    watch_bob = await joined(api1, cid_bob, alice.access)
    watch_carol = await joined(api1, cid_carol, alice.access)
    await joined(api2, cid_bob, bob.access)
    await joined(api2, cid_carol, carol.access)
    assert (await next_status(watch_bob, bob.id, timeout=5))["status"] == "online"
    assert (await next_status(watch_carol, carol.id, timeout=5))["status"] == "online"

    n2.signal(signal.SIGTERM)
    stopped = dt.datetime.now(dt.UTC)
    assert n2.wait(15) == 0
    n2_again = cluster.start_node("n2")
    await joined(ApiClient(PortClient(n2_again.port)), cid_bob, bob.access)

    offline = await next_status(watch_carol, carol.id, timeout=GRACE_S + 10)
    assert offline["status"] == "offline"
    assert abs(dt.datetime.fromisoformat(str(offline["timestamp"])) - stopped) < dt.timedelta(seconds=2)
    assert [f for f in await watch_bob.silent(0.5) if f.get("type") == "status"] == []
    profile = await api1.get(f"/api/users/{bob.id}/", token=alice.access)
    assert profile.status == 200 and profile.body["status"] == "online", profile.body
