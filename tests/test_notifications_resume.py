"""Notifications resume: every notification frame carries the user's next id, and a notifications socket
opened with `?after=<id>` first receives what it missed, in order, none missing and none twice, on one node
(the log in memory) and across nodes (the log in Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.core.config import Settings
from tests.processes import RedisProcess
from tests.support import ApiClient, TestUser, WsClient, seed_user, ws_connect
from tests.ws_helpers import notifications, wait_for

ADULT = {"birthdate": "1994-03-02"}


async def liked_by(services: Any, target: TestUser, count: int) -> list[TestUser]:
    """`count` new users who each like `target` (one `new_like` each)."""
    likers = []
    for _ in range(count):
        liker = await seed_user(services)
        await services.matching.like(liker.id, target.id)
        likers.append(liker)
    return likers


async def received(ws: WsClient, count: int) -> list[dict[str, Any]]:
    return [await ws.recv_type("notification") for _ in range(count)]


async def resume(api: ApiClient, user: TestUser, after: int | str) -> WsClient:
    return await ws_connect(api, f"/ws/notifications/?token={user.access}&after={after}")


async def no_more_notifications(ws: WsClient) -> None:
    assert [f for f in await ws.silent(0.3) if f["type"] == "notification"] == []


async def test_a_socket_that_was_away_receives_what_it_missed_then_live_ones_none_twice(api, services):
    bob = await seed_user(services)
    ws = await notifications(api, bob)
    [first_liker] = await liked_by(services, bob, 1)
    first = await ws.recv_type("notification")
    seen = first["id"]
    assert isinstance(seen, int) and first["notification"]["liker"]["id"] == first_liker.id
    ws.close()

    # Away: three likes and a match (bob likes the first of them back).
    likers = await liked_by(services, bob, 3)
    await services.matching.like(bob.id, likers[0].id)

    back = await resume(api, bob, seen)
    missed = await received(back, 4)
    assert [n["id"] for n in missed] == [seen + 1, seen + 2, seen + 3, seen + 4]
    assert [n["notification"]["type"] for n in missed] == ["new_like"] * 3 + ["new_match"]
    assert [n["notification"]["liker"]["id"] for n in missed[:3]] == [u.id for u in likers]
    assert set(missed[0]["notification"]["liker"]) == {"id", "username", "profile_picture"}
    assert missed[0]["notification"]["liker"]["username"] == likers[0].username
    assert missed[3]["notification"]["match"]["user"]["id"] == likers[0].id
    # Then live ones, numbered on, and nothing twice.
    await liked_by(services, bob, 1)
    assert (await back.recv_type("notification"))["id"] == seen + 5
    await no_more_notifications(back)

    # `after=0`: everything kept, the first one exactly as it went out live (timestamp included).
    everything = await resume(api, bob, 0)
    replayed = await received(everything, 6)
    assert [n["id"] for n in replayed] == list(range(seen, seen + 6))
    assert replayed[0] == first
    await no_more_notifications(everything)


async def test_an_after_beyond_the_newest_id_holds_nothing_back(api, services):
    bob = await seed_user(services)
    ws = await notifications(api, bob)
    await liked_by(services, bob, 1)
    newest = (await ws.recv_type("notification"))["id"]
    ahead = await resume(api, bob, newest + 1000)
    await liked_by(services, bob, 1)
    assert (await ahead.recv_type("notification"))["id"] == newest + 1


@pytest.mark.parametrize("settings_overrides", [{"notification_max_per_user": 3}], indirect=True)
async def test_a_resume_past_what_is_kept_says_so_first(api, services):
    bob = await seed_user(services)
    ws = await notifications(api, bob)
    await liked_by(services, bob, 1)
    seen = (await ws.recv_type("notification"))["id"]
    ws.close()
    await liked_by(services, bob, 5)

    back = await resume(api, bob, seen)
    assert await back.recv() == {"type": "notifications_truncated"}
    assert [n["id"] for n in await received(back, 3)] == [seen + 3, seen + 4, seen + 5]
    await no_more_notifications(back)
    # Nothing missing after the newest kept one: no truncation to report.
    complete = await resume(api, bob, seen + 3)
    assert [n["id"] for n in await received(complete, 2)] == [seen + 4, seen + 5]


async def test_a_replayed_message_is_the_message_as_it_now_is(api, services):
    alice = await api.user("alice", gender="woman", interested_in=["man"], **ADULT)
    bob = await api.user("bob", gender="man", interested_in=["woman"], **ADULT)
    assert (await api.post("/api/likes/", {"user_id": bob.id}, token=alice.access)).status == 201
    matched = await api.post("/api/likes/", {"user_id": alice.id}, token=bob.access)
    cid = matched.body["match"]["conversation_id"]
    # Kept from before any socket of bob's was open: alice's like, then the match.
    kept = [f for f in await (await resume(api, bob, 0)).silent(0.5) if f["type"] == "notification"]
    assert [f["notification"]["type"] for f in kept] == ["new_like", "new_match"]
    seen = kept[-1]["id"]

    base = f"/api/conversations/{cid}/messages/"
    first = (await api.post(base, {"content": "a secret"}, token=alice.access)).body
    second = (await api.post(base, {"content": "helo"}, token=alice.access)).body
    assert (await api.delete(f"{base}{first['id']}/", token=alice.access)).status == 200
    assert (await api.patch(f"{base}{second['id']}/", {"content": "hello"}, token=alice.access)).status == 200

    back = await resume(api, bob, seen)
    unsent, edited = (n["notification"]["message"] for n in await received(back, 2))
    # The unsent text is gone from the replay too; the edit shows its new text.
    assert unsent["id"] == first["id"] and unsent["content"] == "" and unsent["deleted"] is True
    assert edited["content"] == "hello" and edited["edited_at"].endswith("Z")
    assert edited["sender"] == {"id": alice.id, "username": alice.username, "profile_picture": None}
    assert edited["created_at"] == second["created_at"]


@pytest.mark.parametrize("after", ["abc", "-1", "1.5", "0x10", "1" * 18])
async def test_an_after_that_is_not_a_notification_id_closes_4003(api, services, after):
    bob = await seed_user(services)
    ws = await resume(api, bob, after)
    assert (await ws.closed())[0] == 4003


async def test_after_does_not_open_the_door_without_a_valid_token(api, services):
    assert (await (await ws_connect(api, "/ws/notifications/?after=1")).closed())[0] == 4000
    assert (await (await ws_connect(api, "/ws/notifications/?token=junk&after=1")).closed())[0] == 4002


async def test_another_users_notifications_are_never_replayed(api, services):
    bob, eve = await seed_user(services), await seed_user(services)
    await liked_by(services, bob, 2)
    snoop = await resume(api, eve, 0)
    assert [f for f in await snoop.silent(0.5) if f["type"].startswith("notification")] == []


async def test_the_end_of_a_match_and_a_read_conversation_reach_the_notifications_sockets(api, services):
    alice = await api.user("alice", gender="woman", interested_in=["man"], **ADULT)
    bob = await api.user("bob", gender="man", interested_in=["woman"], **ADULT)
    assert (await api.post("/api/likes/", {"user_id": bob.id}, token=alice.access)).status == 201
    match = (await api.post("/api/likes/", {"user_id": alice.id}, token=bob.access)).body["match"]
    cid = match["conversation_id"]
    alice_tab, bob_tab = await notifications(api, alice), await notifications(api, bob)
    sent = (await api.post(f"/api/conversations/{cid}/messages/", {"content": "hi"}, token=alice.access)).body
    assert (await bob_tab.recv_type("notification"))["notification"]["type"] == "new_message"

    # Bob reads in one tab: his other tabs learn it (and clear their unread count); alice is not told here.
    reader = await ws_connect(api, f"/ws/conversations/{cid}/?token={bob.access}")
    await reader.send({"type": "read_receipt", "message_id": sent["id"]})
    read = (await bob_tab.recv_type("notification"))["notification"]
    assert read["type"] == "conversation_read" and read["conversation_id"] == cid
    assert read["message_id"] == sent["id"]

    # Alice unmatches: both learn it on their notifications sockets, with the same frame.
    assert (await api.delete(f"/api/matches/{match['id']}/", token=alice.access)).status == 204
    for ws, other in ((alice_tab, bob), (bob_tab, alice)):
        ended = (await ws.recv_type("notification"))["notification"]
        assert ended["type"] == "match_ended" and ended["conversation_id"] == cid
        assert ended["match_id"] == match["id"] and ended["user_id"] == other.id
    assert [f["notification"]["type"] for f in await alice_tab.silent(0.3)] == []


# -- several nodes: the log in Redis ----------------------------------------------------------------------


async def test_ids_from_concurrent_nodes_arrive_consecutive_and_resume_on_another_node(cluster_factory):
    n1, n2 = await cluster_factory(2)
    bob = await seed_user(n1.services)
    ws = await notifications(n2.api, bob)
    likers = [await seed_user(n1.services) for _ in range(12)]
    await asyncio.gather(
        *(node.services.matching.like(u.id, bob.id) for u, node in zip(likers, [n1, n2] * 6, strict=True))
    )
    live = await received(ws, 12)
    first = live[0]["id"]
    assert [n["id"] for n in live] == list(range(first, first + 12))
    assert {n["notification"]["liker"]["id"] for n in live} == {u.id for u in likers}
    await no_more_notifications(ws)
    ws.close()

    await liked_by(n2.services, bob, 2)
    back = await resume(n1.api, bob, first + 11)
    assert [n["id"] for n in await received(back, 2)] == [first + 12, first + 13]
    await no_more_notifications(back)


async def listening(liked_on: Any, socket_on: Any) -> tuple[TestUser, WsClient, int]:
    """Bob, his notifications socket on node `socket_on`, and the id of a first like made on `liked_on`."""
    bob = await seed_user(liked_on.services)
    ws = await notifications(socket_on.api, bob)
    await liked_by(liked_on.services, bob, 1)
    return bob, ws, (await ws.recv_type("notification"))["id"]


async def test_notifications_published_while_a_node_was_unsubscribed_are_caught_up(cluster_factory, redis_url):
    n1, n2 = await cluster_factory(2)
    bob, ws, seen = await listening(n1, n2)

    # Cut every subscriber connection and notify at once: node 2 resubscribes after its backoff (0.1 s),
    # so these two are published while nobody on it listens, and reach it only by the catch-up.
    admin = aioredis.from_url(redis_url)
    try:
        reconnects = n2.services.bus.reconnects
        await admin.client_kill_filter(_type="pubsub")
        await liked_by(n1.services, bob, 2)
    finally:
        await admin.aclose()
    assert [n["id"] for n in await received(ws, 2)] == [seen + 1, seen + 2]
    assert n2.services.bus.reconnects > reconnects
    await no_more_notifications(ws)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis of this module's own for the nodes of `cluster_factory`: a test here stops it."""
    server = RedisProcess(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def test_while_redis_is_away_a_nodes_own_sockets_still_get_notifications(cluster_factory, redis_server):
    n1, _n2 = await cluster_factory(2)
    bob, ws, seen = await listening(n1, n1)

    redis_server.stop()
    [liker] = await liked_by(n1.services, bob, 1)
    # Neither numbered nor kept (the log is in Redis), but not lost for the sockets of the node that made it.
    late = await ws.recv_type("notification", timeout=10)
    assert "id" not in late and late["notification"]["liker"]["id"] == liker.id

    # A Redis that came back empty starts a new numbering above the old one; the socket sees the jump, asks
    # the log for what lies between, and is told it is gone before it gets the new one.
    redis_server.start_same_port()
    await wait_for(lambda: n1.services.bus.healthy, timeout=10)
    await liked_by(n1.services, bob, 1)
    assert await ws.recv_type("notifications_truncated", timeout=10) == {"type": "notifications_truncated"}
    assert (await ws.recv_type("notification"))["id"] > seen


def test_the_number_kept_per_user_is_bounded(tmp_path):
    with pytest.raises(ValueError, match="NOTIFICATION_MAX_PER_USER"):
        Settings(data_dir=str(tmp_path), notification_max_per_user=100_000).validate()
