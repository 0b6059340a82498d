"""Two nodes in one process sharing one real Redis and one database: every event crosses nodes."""

from __future__ import annotations

import asyncio
import datetime as dt

import redis.exceptions

from services.chat.presence import status_frame
from tests.support import make_conversation, ws_connect
from tests.ws_helpers import wait_for

FAST = {"presence_ttl_s": 3.0, "heartbeat_interval_s": 0.5}


async def alice_watching_bob(cluster_factory, **settings):
    """Two nodes; Alice and Bob share a conversation; Alice's socket on it (node 1) watches Bob."""
    n1, n2 = await cluster_factory(2, **{**FAST, **settings})
    a = await n1.api.user("alice")
    b = await n1.api.user("bob")
    cid = await make_conversation(n1.services, a.id, b.id)
    watcher = await ws_connect(n1.api, f"/ws/conversations/{cid}/?token={a.access}")
    return n1, n2, a, b, cid, watcher


async def test_every_event_crosses_nodes_once(cluster_factory):
    n1, n2 = await cluster_factory(2, **FAST)
    a = await n1.api.user("alice")
    b = await n1.api.user("bob")
    cid = await make_conversation(n1.services, a.id, b.id)
    ws_a = await ws_connect(n1.api, f"/ws/conversations/{cid}/?token={a.access}")
    notif_b = await ws_connect(n2.api, f"/ws/notifications/?token={b.access}")
    status = await ws_a.recv_type("status")
    assert status["user_id"] == b.id
    ws_b = await ws_connect(n2.api, f"/ws/conversations/{cid}/?token={b.access}")
    st_a = await ws_b.recv_type("status")
    assert st_a["user_id"] == a.id and st_a["status"] == "online"

    # message from node 1 reaches node 2 (conversation + notification), exactly once
    await ws_a.send({"type": "message", "content": "hello from node 1"})
    assert (await ws_a.recv_type("message"))["message"]["id"] == 1  # the sender's own echo
    m_b = await ws_b.recv_type("message")
    assert m_b["message"]["content"] == "hello from node 1"
    n = await notif_b.recv_type("notification")
    assert n["notification"]["type"] == "new_message"
    # and the other direction
    await ws_b.send({"type": "message", "content": "hello from node 2"})
    m_a = await ws_a.recv_type("message")
    assert m_a["message"]["content"] == "hello from node 2"
    # typing and read receipts
    await ws_b.send({"type": "typing", "is_typing": True})
    assert (await ws_a.recv_type("typing"))["is_typing"] is True
    await ws_a.send({"type": "read_receipt", "message_id": 2})
    assert (await ws_b.recv_type("read_receipt"))["message_id"] == 2
    # nothing delivered twice
    extra = await ws_b.silent(0.3)
    assert [f for f in extra if f["type"] == "message"] == []


async def test_offline_only_when_last_socket_anywhere_closes(cluster_factory):
    n1, n2, _a, b, _cid, watcher = await alice_watching_bob(cluster_factory)
    await watcher.recv_type("status")  # b offline initially
    b1 = await ws_connect(n1.api, f"/ws/notifications/?token={b.access}")
    assert (await watcher.recv_type("status"))["status"] == "online"
    b2 = await ws_connect(n2.api, f"/ws/notifications/?token={b.access}")
    await b2.send({"type": "ping"})  # answered only once the socket is registered (and b counted on n2)
    assert (await b2.recv_type("pong"))["type"] == "pong"
    b1.close()
    frames = await watcher.silent(0.8)
    assert [f for f in frames if f["type"] == "status"] == []
    b2.close()
    st = await watcher.recv_type("status")
    assert st["status"] == "offline" and st["user_id"] == b.id


async def test_node_death_reports_offline(cluster_factory):
    _n1, n2, _a, b, _cid, watcher = await alice_watching_bob(cluster_factory)
    await watcher.recv_type("status")
    await ws_connect(n2.api, f"/ws/notifications/?token={b.access}")
    assert (await watcher.recv_type("status"))["status"] == "online"
    # Node 2 stops heartbeating without saying goodbye (as after kill -9).
    n2.services.presence.store._loop.cancel()
    st = await watcher.recv_type("status", timeout=FAST["presence_ttl_s"] + 3)
    assert st["status"] == "offline" and st["user_id"] == b.id
    await asyncio.sleep(0)


async def test_a_late_status_announcement_never_overrides_a_newer_one(cluster_factory):
    # Announcing takes a few awaits, so two transitions of one user decided on two nodes can be
    # published in the opposite order, and a node's own events reach its sockets before those that
    # cross Redis; receivers keep the newest, whichever way the older one comes.
    n1, n2, _a, b, cid, watcher = await alice_watching_bob(cluster_factory)
    await watcher.recv_type("status")
    online = status_frame(b.id, b.username, True, None)
    offline = status_frame(b.id, b.username, False, None)
    # The newer one from the other node, then an older one from the watcher's own node.
    await n2.services.events.to_conversation(cid, online, exclude_user=b.id, presence_version=2_000)
    assert (await watcher.recv_type("status"))["status"] == "online"
    await n1.services.events.to_conversation(cid, offline, exclude_user=b.id, presence_version=1_000)
    # The newer one from the watcher's own node, then an older one from the other node.
    await n1.services.events.to_conversation(cid, offline, exclude_user=b.id, presence_version=4_000)
    assert (await watcher.recv_type("status"))["status"] == "offline"
    await n2.services.events.to_conversation(cid, online, exclude_user=b.id, presence_version=3_000)
    assert [f for f in await watcher.silent(0.5) if f["type"] == "status"] == []


async def test_two_nodes_sending_into_one_conversation_get_dense_unique_ids(cluster_factory):
    # Each node reserves ids with a compare-and-set from the value it last wrote; when the other node
    # wrote in between, it reads again and retries: no id is given twice and none is skipped.
    n1, n2, a, b, cid, _watcher = await alice_watching_bob(cluster_factory)
    for node in (n1, n2):
        node.services.message_limiter.rate = node.services.message_limiter.burst = 1000
        node.services.message_budget.rate = node.services.message_budget.burst = 1000  # the cluster-wide one

    async def send(api, token, label):
        answers = []
        for i in range(30):
            r = await api.post(f"/api/conversations/{cid}/messages/", {"content": f"{label}{i}"}, token=token)
            assert r.status == 201, r.body
            answers.append(r.body["id"])
        return answers

    ids_a, ids_b = await asyncio.gather(send(n1.api, a.access, "a"), send(n2.api, b.access, "b"))
    assert sorted(ids_a + ids_b) == list(range(1, 61))
    history = await n1.api.get(f"/api/conversations/{cid}/messages/?after=0&limit=100", token=a.access)
    assert [m["id"] for m in history.body["results"]] == list(range(1, 61))


async def test_a_conversation_closed_on_another_node_is_refused_here_at_once(cluster_factory):
    """Node 1 has no socket on the conversation when node 2 closes it, so it hears no close event: a
    socket opening on node 1 is refused 4001 all the same, whether it is its user's first socket there
    (membership read with the user's open conversations) or not (read of the conversation alone)."""
    n1, n2 = await cluster_factory(2, **FAST)
    a = await n1.api.user("alice")
    b = await n1.api.user("bob")
    cid = await make_conversation(n1.services, a.id, b.id)
    first = await ws_connect(n1.api, f"/ws/conversations/{cid}/?token={a.access}")
    assert (await first.recv_type("status"))["user_id"] == b.id
    first.close()
    await ws_connect(n1.api, f"/ws/notifications/?token={a.access}")  # Alice stays counted on node 1
    sent = await n1.api.post(f"/api/conversations/{cid}/messages/", {"content": "hi"}, token=b.access)
    assert sent.status == 201  # node 1 has the conversation cached as open
    match_id = (await n1.services.store.conversations.find_one({"_id": cid}))["match_id"]
    assert (await n2.api.delete(f"/api/matches/{match_id}/", token=b.access)).status == 204
    assert not n1.services.presence.announces_first_socket(a.id)
    assert n1.services.presence.announces_first_socket(b.id)
    for user in (a, b):
        for after in ("", "&after=0"):
            ws = await ws_connect(n1.api, f"/ws/conversations/{cid}/?token={user.access}{after}")
            assert (await ws.closed())[0] == 4001, (user.username, after)


async def test_what_a_dying_node_stored_but_never_published_reaches_the_others_when_it_is_swept(cluster_factory):
    """A node acknowledges a message, stores it, and dies before its event reaches the bus: readers on
    other nodes get it once the dead node's presence is swept (PRESENCE_TTL plus a heartbeat), not only
    when a next message comes."""
    n1, n2 = await cluster_factory(2, presence_ttl_s=1.0, heartbeat_interval_s=0.2)
    alice, bob = await n1.api.user("alice"), await n1.api.user("bob")
    cid = await make_conversation(n1.services, alice.id, bob.id)
    reader = await ws_connect(n2.api, f"/ws/conversations/{cid}/?token={bob.access}")
    # Joined (a socket without `after` gets what is stored from its join on, and the handshake comes first).
    await reader.recv_type("status")
    first = await n1.api.post(f"/api/conversations/{cid}/messages/", {"content": "before"}, token=alice.access)
    assert first.status == 201
    assert (await reader.recv_type("message"))["message"]["content"] == "before"

    async def lost_on_the_way(*_args: object, **_kwargs: object) -> None:
        return None

    n1.services.events.to_conversation = lost_on_the_way  # type: ignore[method-assign]
    acked = await n1.api.post(f"/api/conversations/{cid}/messages/", {"content": "last words"}, token=alice.access)
    assert acked.status == 201
    # The node dies without a word: its heartbeat stops, nothing is withdrawn.
    store = n1.services.presence.store
    heartbeat = getattr(store, "_loop", None)
    assert heartbeat is not None
    heartbeat.cancel()
    store.closed = True

    arrived = await reader.recv_type("message", timeout=10)
    assert (arrived["message"]["id"], arrived["message"]["content"]) == (2, "last words")


async def test_a_block_on_another_node_refuses_every_socket_opening_here_together(cluster_factory):
    """Sockets opening on node 1 at the same moment share their store reads: when node 2 has just closed
    their conversation (a block), every one of them is refused 4001, first sockets of their users and
    not, though node 1 has the conversation cached as open and heard no close."""
    n1, n2 = await cluster_factory(2, **FAST)
    a = await n1.api.user("alice")
    b = await n1.api.user("bob")
    cid = await make_conversation(n1.services, a.id, b.id)
    sent = await n1.api.post(f"/api/conversations/{cid}/messages/", {"content": "hi"}, token=b.access)
    assert sent.status == 201  # node 1 has the conversation cached as open, and both accounts as alive
    await ws_connect(n1.api, f"/ws/notifications/?token={a.access}")  # Alice's next socket is not her first
    assert (await n2.api.post("/api/blocks/", {"user_id": b.id}, token=a.access)).status == 201
    paths = [f"/ws/conversations/{cid}/?token={u.access}{after}" for u in (a, b, a, b) for after in ("", "&after=1")]
    sockets = await asyncio.gather(*(ws_connect(n1.api, path) for path in paths))
    assert [(await ws.closed())[0] for ws in sockets] == [4001] * len(paths)


async def test_a_ban_on_another_node_refuses_the_account_here_at_once(cluster_factory):
    """Node 1 knows Bob's account as alive (his socket there just opened, and his REST request); a ban
    answered by node 2 closes that socket 4002 and refuses his next ones on node 1 with 4002 at once."""
    from tests.test_moderation import make_moderator

    n1, n2 = await cluster_factory(2, **FAST)
    a = await n1.api.user("alice")
    b = await n1.api.user("bob")
    cid = await make_conversation(n1.services, a.id, b.id)
    moderator = await make_moderator(n2.api, n2.services)
    open_socket = await ws_connect(n1.api, f"/ws/conversations/{cid}/?token={b.access}")
    await open_socket.recv_type("status")
    assert (await n1.api.get("/api/users/me/", token=b.access)).status == 200
    banned = await n2.api.post(f"/api/moderation/users/{b.id}/ban/", {"reason": "scam"}, token=moderator.access)
    assert banned.status == 200, banned.body
    assert (await open_socket.closed())[0] == 4002
    for path in (f"/ws/conversations/{cid}/?token={b.access}", f"/ws/notifications/?token={b.access}"):
        assert (await (await ws_connect(n1.api, path)).closed())[0] == 4002, path
    assert (await n1.api.get("/api/users/me/", token=b.access)).status == 401


async def test_a_last_socket_closed_while_redis_refused_is_withdrawn_at_the_next_heartbeat(cluster_factory):
    """The disconnect that Redis refused is kept, and the heartbeat withdraws it once Redis answers: the
    others then see the user offline, once."""
    _n1, n2, _a, b, _cid, watcher = await alice_watching_bob(cluster_factory)
    await watcher.recv_type("status")
    b_socket = await ws_connect(n2.api, f"/ws/notifications/?token={b.access}")
    assert (await watcher.recv_type("status"))["status"] == "online"
    store = n2.services.presence.store
    real = store._run_disconnect

    async def refused(*args, **kwargs):
        raise redis.exceptions.ConnectionError("Redis away")

    store._run_disconnect = refused
    b_socket.close()
    for _ in range(50):
        if b.id in store._unsynced_offline:
            break
        await asyncio.sleep(0.05)
    assert b.id in store._unsynced_offline
    store._run_disconnect = real
    st = await watcher.recv_type("status", timeout=FAST["heartbeat_interval_s"] + 3)
    assert st["status"] == "offline" and st["user_id"] == b.id
    # The offline frame goes out while the heartbeat still waits for the last_seen write beside it.
    await wait_for(lambda: not store._unsynced_offline)
    assert [f for f in await watcher.silent(0.6) if f["type"] == "status"] == []


async def test_a_stopping_node_hands_presence_over_while_its_sockets_are_still_closing(cluster_factory):
    """Closing a node's sockets waits up to 2 s for the clients' answers; the users' offline announcements
    need not wait for that. Run one after the other they held a 3,000-socket node's stop for seconds, and
    its clients came back a backoff step later. (Without a grace: the users are offline at the stop.)"""
    _n1, n2, _a, b, cid, watcher = await alice_watching_bob(cluster_factory, presence_hand_over_grace_s=0)
    await watcher.recv_type("status")
    b_socket = await ws_connect(n2.api, f"/ws/conversations/{cid}/?token={b.access}")
    assert (await watcher.recv_type("status"))["status"] == "online"
    closing_done = asyncio.Event()
    real_close_all = n2.services.connections.close_all

    async def slow_clients(code: int, reason: str, **options: bool) -> None:
        await real_close_all(code, reason, **options)
        await asyncio.sleep(1.5)  # as if the clients were slow to answer their close frames
        closing_done.set()

    n2.services.connections.close_all = slow_clients
    n2.server.stop()
    stopping = asyncio.create_task(n2.services.close())
    assert (await b_socket.closed())[0] == 1001
    offline = await watcher.recv_type("status", timeout=3)
    assert (offline["user_id"], offline["status"]) == (b.id, "offline")
    assert not closing_done.is_set()  # announced while the sockets were still closing
    await asyncio.wait_for(stopping, 10)
    assert closing_done.is_set()


async def test_users_handed_over_by_a_stopping_node_are_announced_by_the_nodes_that_watch_them(cluster_factory):
    """A stopping node withdraws its users from Redis and tells every node at once; each node announces
    them offline to its own sockets watching them, in the name those sockets were shown. The stopping node
    reads no user's conversations for it: that read, per 64 users, outlasted a busy store's answer.
    (Without a grace: the users are offline at the stop.)"""
    n1, n2 = await cluster_factory(2, **FAST, presence_hand_over_grace_s=0)
    alice = await n1.api.user("alice")
    others = [await n1.api.user(f"friend{i}") for i in range(4)]
    watchers = {}
    for other in others:
        cid = await make_conversation(n1.services, alice.id, other.id)
        watchers[other.id] = await ws_connect(n1.api, f"/ws/conversations/{cid}/?token={alice.access}")
        assert (await watchers[other.id].recv_type("status"))["status"] == "offline"
        await ws_connect(n2.api, f"/ws/notifications/?token={other.access}")
        assert (await watchers[other.id].recv_type("status"))["status"] == "online"
    conversation_reads = n2.services.presence.announcer._open_conversations
    reads_before = conversation_reads.queries

    n2.server.stop()
    await asyncio.wait_for(n2.services.close(), 10)
    for other in others:
        frame = await watchers[other.id].recv_type("status", timeout=3)
        assert (frame["user_id"], frame["username"], frame["status"]) == (other.id, other.username, "offline")
    assert conversation_reads.queries == reads_before
    seen = {
        d["_id"]: d.get("last_seen")
        async for d in n1.services.store.users.find({"_id": {"$in": [o.id for o in others]}})
    }
    assert all(seen[o.id] is not None for o in others)


async def test_users_back_within_the_grace_of_a_stopped_node_never_go_offline(cluster_factory):
    """A node's stop leaves its users the grace to reconnect. Alice watches Bob and Carol from node 1; both
    are on node 2, which stops. Bob comes back on node 1 at once: Alice sees nothing of him. Carol does not
    come back: Alice sees her offline once the grace is over, as of the stop."""
    n1, n2 = await cluster_factory(2, **FAST, presence_hand_over_grace_s=1.0)
    alice, bob, carol = [await n1.api.user(name) for name in ("alice", "bob", "carol")]
    cid_bob = await make_conversation(n1.services, alice.id, bob.id)
    cid_carol = await make_conversation(n1.services, alice.id, carol.id)
    watch_bob = await ws_connect(n1.api, f"/ws/conversations/{cid_bob}/?token={alice.access}")
    watch_carol = await ws_connect(n1.api, f"/ws/conversations/{cid_carol}/?token={alice.access}")
    for watcher in (watch_bob, watch_carol):
        assert (await watcher.recv_type("status"))["status"] == "offline"
    bob_socket = await ws_connect(n2.api, f"/ws/conversations/{cid_bob}/?token={bob.access}")
    assert (await watch_bob.recv_type("status"))["status"] == "online"
    await ws_connect(n2.api, f"/ws/notifications/?token={carol.access}")
    assert (await watch_carol.recv_type("status"))["status"] == "online"

    n2.server.stop()
    stopping = asyncio.create_task(n2.services.close())
    stopped = dt.datetime.now(dt.UTC)
    assert (await bob_socket.closed())[0] == 1001
    bob_back = await ws_connect(n1.api, f"/ws/conversations/{cid_bob}/?token={bob.access}")
    assert (await bob_back.recv_type("status"))["status"] == "online"  # Alice, from his side
    await asyncio.wait_for(stopping, 10)

    offline = await watch_carol.recv_type("status", timeout=4)
    assert (offline["user_id"], offline["status"]) == (carol.id, "offline")
    assert abs(dt.datetime.fromisoformat(offline["timestamp"]) - stopped) < dt.timedelta(seconds=0.5)
    assert [f for f in await watch_bob.silent(0.6) if f["type"] == "status"] == []
    assert await n1.services.presence.store.is_online(bob.id)
    assert not await n1.services.presence.store.is_online(carol.id)


async def test_an_offline_news_older_than_what_a_node_passed_on_is_dropped(cluster_factory):
    """Transitions race across nodes: a "gone" event that carries an older version than the status a node
    already passed on for that user (they came back meanwhile) changes nothing."""
    n1, n2 = await cluster_factory(2, **FAST)
    alice, bob = await n1.api.user("alice"), await n1.api.user("bob")
    cid = await make_conversation(n1.services, alice.id, bob.id)
    watcher = await ws_connect(n1.api, f"/ws/conversations/{cid}/?token={alice.access}")
    await watcher.recv_type("status")
    await ws_connect(n2.api, f"/ws/notifications/?token={bob.access}")
    assert (await watcher.recv_type("status"))["status"] == "online"
    online_version = n1.services.connections._presence_versions[bob.id]
    deliver = n1.services.presence.announcer.deliver_gone
    deliver({"u": [[bob.id, online_version - 1]], "at": "2026-12-04T10:00:00.000Z"})
    assert [f for f in await watcher.silent(0.4) if f["type"] == "status"] == []
    deliver({"u": [[bob.id, online_version + 1]], "at": "2026-12-04T10:00:01.000Z"})
    frame = await watcher.recv_type("status")
    assert (frame["status"], frame["timestamp"], frame["username"]) == (
        "offline",
        "2026-12-04T10:00:01.000Z",
        bob.username,
    )


async def test_a_stopping_node_does_not_unsubscribe_channel_by_channel(cluster_factory):
    """Its bus connection goes away with every subscription: an UNSUBSCRIBE for each conversation emptied by
    the shutdown was thousands of Redis commands in a 13,000-socket node's busiest seconds."""
    n1, n2 = await cluster_factory(2, **FAST)
    alice = await n1.api.user("alice")
    sockets = []
    for i in range(3):
        other = await n1.api.user(f"other{i}")
        cid = await make_conversation(n1.services, alice.id, other.id)
        sockets.append(await ws_connect(n2.api, f"/ws/conversations/{cid}/?token={other.access}"))
        await sockets[-1].recv_type("status")
    unsubscribed: list[str] = []
    real_unsubscribe = n2.services.bus.unsubscribe

    async def counted(channel: str) -> None:
        unsubscribed.append(channel)
        await real_unsubscribe(channel)

    n2.services.bus.unsubscribe = counted
    sockets[0].close()  # a socket that ends while the node runs gives its channel up
    await wait_for(lambda: len(unsubscribed) == 1)
    n2.server.stop()
    await asyncio.wait_for(n2.services.close(), 10)
    for ws in sockets[1:]:
        assert (await ws.closed())[0] == 1001
    assert len(unsubscribed) == 1
