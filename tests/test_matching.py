"""Likes, passes, matches, unmatch and blocks: the REST endpoints, their events, and exactly-once matches."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from typing import Any

import orjson
import pytest

from services.core.container import Services, build_services
from services.matching.service import pair_key
from services.realtime.bus import conversation_channel, user_channel
from services.realtime.events import CONVERSATION_CLOSED, NOTIFICATION, decode
from tests.support import TestUser, seed_user


def summary(user: TestUser) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "profile_picture": None}


async def seed_match(services: Services) -> tuple[TestUser, TestUser, dict[str, Any]]:
    """Two seeded users who liked each other, and their match as the second like answered it."""
    a = await seed_user(services)
    b = await seed_user(services)
    await services.matching.like(a.id, b.id)
    answer, _ = await services.matching.like(b.id, a.id)
    return a, b, answer["match"]


class Recorder:
    """Takes the bus's place as the local subscriber and keeps every (channel, header, frame) it gets."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], Any]] = []

    def __call__(self, channel: str, payload: bytes) -> None:
        header, frame = decode(payload)
        self.events.append((channel, header, orjson.loads(frame)))

    def on(self, channel: str) -> list[tuple[str, Any]]:
        """(kind, frame) of each event on the channel; the rest of the routing header is the bus's business."""
        return [(header["k"], frame) for ch, header, frame in self.events if ch == channel]

    def notifications(self, user_id: int) -> list[dict[str, Any]]:
        out = []
        for kind, frame in self.on(user_channel(user_id)):
            assert kind == NOTIFICATION
            assert set(frame) == {"type", "id", "notification"} and frame["type"] == "notification"
            out.append(frame["notification"])
        return out


async def record(services: Services, users: list[int], conversations: list[int] = ()) -> Recorder:  # type: ignore[assignment]
    recorder = Recorder()
    services.bus.set_handler(recorder)
    for user_id in users:
        await services.bus.subscribe(user_channel(user_id))
    for conversation_id in conversations:
        await services.bus.subscribe(conversation_channel(conversation_id))
    return recorder


async def settle() -> None:
    """The in-process bus delivers on a later loop iteration, as a network bus would."""
    for _ in range(5):
        await asyncio.sleep(0.01)


def is_iso(text: Any) -> bool:
    return isinstance(text, str) and text.endswith("Z") and dt.datetime.fromisoformat(text[:-1]) is not None


# -- likes and matches ----------------------------------------------------------------------------------


async def test_mutual_like_creates_one_match_conversation_and_events(api, services):
    alice = await seed_user(services, "alice")
    bob = await seed_user(services, "bob")
    rec = await record(services, [alice.id, bob.id])

    first = await api.post("/api/likes/", {"user_id": bob.id}, token=alice.access)
    assert first.status == 201, first.body
    assert first.body["match"] is None
    assert first.body["like"]["user_id"] == bob.id and is_iso(first.body["like"]["created_at"])
    again = await api.post("/api/likes/", {"user_id": bob.id}, token=alice.access)
    assert again.status == 200 and again.body == first.body
    await settle()
    # Exactly the seed's frame, once: the repeat published nothing.
    [note] = rec.notifications(bob.id)
    assert set(note) == {"type", "timestamp", "liker"}
    assert note["type"] == "new_like" and is_iso(note["timestamp"])
    assert note["liker"] == summary(alice)
    assert rec.on(user_channel(alice.id)) == []

    back = await api.post("/api/likes/", {"user_id": alice.id}, token=bob.access)
    assert back.status == 201, back.body
    match = back.body["match"]
    assert set(match) == {"id", "user", "conversation_id", "created_at"}
    assert match["user"] == summary(alice)
    assert isinstance(match["id"], int) and isinstance(match["conversation_id"], int)
    assert is_iso(match["created_at"])
    await settle()
    to_alice = rec.notifications(alice.id)
    to_bob = rec.notifications(bob.id)
    assert [n["type"] for n in to_alice] == ["new_match"]
    assert [n["type"] for n in to_bob] == ["new_like", "new_match"]  # no new_like for the completing like
    for note, other in ((to_alice[0], bob), (to_bob[1], alice)):
        assert set(note) == {"type", "timestamp", "match"} and is_iso(note["timestamp"])
        assert note["match"] == {
            "id": match["id"],
            "user": summary(other),
            "created_at": match["created_at"],
            "conversation_id": match["conversation_id"],
        }

    # The documents other layers read, exactly.
    low, high = sorted((alice.id, bob.id))
    stored = await services.store.matches.find({"pair": pair_key(alice.id, bob.id)}).to_list(None)
    assert len(stored) == 1
    m = stored[0]
    assert m["_id"] == match["id"] and m["users"] == [low, high] and m["pair"] == f"{low}:{high}"
    assert m["status"] == "active" and m["conversation_id"] == match["conversation_id"]
    conversations = await services.store.conversations.find({"participants": low}).to_list(None)
    assert len(conversations) == 1
    conv = conversations[0]
    assert conv["_id"] == match["conversation_id"] and conv["participants"] == [low, high]
    assert conv["match_id"] == match["id"] and conv["status"] == "open" and conv["last_seq"] == 0
    assert isinstance(conv["created_at"], dt.datetime) and isinstance(conv["updated_at"], dt.datetime)

    # Both see the match, each with the other person; repeating the completing like answers the same.
    for user, other in ((alice, bob), (bob, alice)):
        listed = await api.get("/api/matches/", token=user.access)
        assert listed.status == 200
        assert listed.body == [{**match, "user": summary(other)}]
    repeat = await api.post("/api/likes/", {"user_id": alice.id}, token=bob.access)
    assert repeat.status == 200 and repeat.body == back.body
    repeat_first = await api.post("/api/likes/", {"user_id": bob.id}, token=alice.access)
    assert repeat_first.status == 200 and repeat_first.body["match"] == {**match, "user": summary(bob)}


async def test_registered_users_through_the_api(api, services):
    # The same flow for users made by /api/register/, to tie the ids and summaries to real accounts.
    sophie = await api.user("sophie", gender="woman", interested_in=["man"])
    marc = await api.user("marc", gender="man", interested_in=["woman"])
    found = await api.get("/api/discover/", token=sophie.access)
    assert found.status == 200 and [p["id"] for p in found.body["results"]] == [marc.id]
    assert (await api.post("/api/likes/", {"user_id": marc.id}, token=sophie.access)).status == 201
    answer = await api.post("/api/likes/", {"user_id": sophie.id}, token=marc.access)
    assert answer.status == 201 and answer.body["match"]["user"]["username"] == sophie.username
    assert (await api.get("/api/discover/", token=sophie.access)).body["results"] == []


async def test_passes(api, services):
    viewer = await seed_user(services)
    other = await seed_user(services)
    first = await api.post("/api/passes/", {"user_id": other.id}, token=viewer.access)
    assert first.status == 201 and first.body["pass"]["user_id"] == other.id
    assert is_iso(first.body["pass"]["created_at"])
    again = await api.post("/api/passes/", {"user_id": other.id}, token=viewer.access)
    assert again.status == 200 and again.body == first.body
    assert await services.store.passes.count_documents({"from_id": viewer.id}) == 1


async def test_likes_received(api, services):
    me = await seed_user(services)
    fans = [await seed_user(services, "fan") for _ in range(6)]
    passed, blocked, blocker, matched, deleted, plain = fans
    for fan in fans:
        assert (await api.post("/api/likes/", {"user_id": me.id}, token=fan.access)).status == 201
    assert (await api.post("/api/passes/", {"user_id": passed.id}, token=me.access)).status == 201
    assert (await api.post("/api/blocks/", {"user_id": blocked.id}, token=me.access)).status == 201
    assert (await api.post("/api/blocks/", {"user_id": me.id}, token=blocker.access)).status == 201
    assert (await api.post("/api/likes/", {"user_id": matched.id}, token=me.access)).body["match"] is not None
    await services.store.users.update_one({"_id": deleted.id}, {"$set": {"deleted": True}})

    received = await api.get("/api/likes/received/", token=me.access)
    assert received.status == 200
    assert received.body["next_cursor"] is None
    [entry] = received.body["results"]
    assert entry["user"] == summary(plain) and is_iso(entry["liked_at"])


async def test_likes_received_paging(api, services):
    me = await seed_user(services)
    fans = [await seed_user(services, "fan") for _ in range(5)]
    for fan in fans:
        await services.matching.like(fan.id, me.id)
    # Two likes in one millisecond, to exercise the tie-break.
    await services.store.likes.update_many(
        {"from_id": {"$in": [fans[1].id, fans[2].id]}}, {"$set": {"created_at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)}}
    )
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        path = "/api/likes/received/?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await api.get(path, token=me.access)
        assert page.status == 200, page.body
        seen += [r["user"]["id"] for r in page.body["results"]]
        cursor = page.body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(f.id for f in fans) and len(seen) == len(set(seen))
    assert set(seen[:2]) == {fans[1].id, fans[2].id}  # the newest first
    bad = await api.get("/api/likes/received/?cursor=nonsense", token=me.access)
    assert bad.status == 400 and bad.error_code == "invalid_cursor"


async def test_unmatch_closes_the_conversation(api, services):
    a, b, match = await seed_match(services)
    outsider = await seed_user(services)
    match_id, cid = match["id"], match["conversation_id"]
    rec = await record(services, [], [cid])

    for token in (outsider.access,):
        denied = await api.delete(f"/api/matches/{match_id}/", token=token)
        assert denied.status == 404 and denied.error_code == "match_not_found"
    assert (await api.delete("/api/matches/999999/", token=a.access)).status == 404
    done = await api.delete(f"/api/matches/{match_id}/", token=a.access)
    assert done.status == 204 and done.body is None
    await settle()
    assert rec.on(conversation_channel(cid)) == [(CONVERSATION_CLOSED, None)]

    stored = await services.store.matches.find_one({"_id": match_id})
    assert stored["status"] == "ended" and stored["ended_by"] == a.id and isinstance(stored["ended_at"], dt.datetime)
    conv = await services.store.conversations.find_one({"_id": cid})
    assert conv["status"] == "closed" and isinstance(conv["closed_at"], dt.datetime)
    for user in (a, b):
        assert (await api.get("/api/matches/", token=user.access)).body == []
        shown = (await api.get("/api/discover/", token=user.access)).body["results"]
        assert {p["id"] for p in shown} <= {outsider.id}
        assert (await api.get("/api/likes/received/", token=user.access)).body["results"] == []
    # Idempotent for members; a repeat like does not bring the match back.
    assert (await api.delete(f"/api/matches/{match_id}/", token=b.access)).status == 204
    repeat = await api.post("/api/likes/", {"user_id": a.id}, token=b.access)
    assert repeat.status == 200 and repeat.body["match"] is None
    assert await services.store.matches.count_documents({}) == 1


async def test_block_unmatches_hides_and_unblocks(api, services):
    a, b, match = await seed_match(services)
    cid = match["conversation_id"]
    rec = await record(services, [a.id, b.id], [cid])

    blocked = await api.post("/api/blocks/", {"user_id": b.id}, token=a.access)
    assert blocked.status == 201 and blocked.body["block"]["user_id"] == b.id
    again = await api.post("/api/blocks/", {"user_id": b.id}, token=a.access)
    assert again.status == 200 and again.body == blocked.body
    await settle()
    assert (CONVERSATION_CLOSED, None) in rec.on(conversation_channel(cid))
    # Both are told the match ended, by the same frame an unmatch sends: nothing says "blocked", or who.
    ended = {user.id: rec.notifications(user.id) for user in (a, b)}
    for user, other in ((a, b), (b, a)):
        assert [n["type"] for n in ended[user.id]] == ["match_ended"]
        assert {k: v for k, v in ended[user.id][0].items() if k != "timestamp"} == {
            "type": "match_ended",
            "conversation_id": cid,
            "match_id": match["id"],
            "user_id": other.id,
        }
    assert (await services.store.conversations.find_one({"_id": cid}))["status"] == "closed"
    assert (await services.store.matches.find_one({"conversation_id": cid}))["ended_by"] == a.id
    for user in (a, b):
        assert (await api.get("/api/matches/", token=user.access)).body == []
    listed = await api.get("/api/blocks/", token=a.access)
    assert listed.status == 200 and [x["user"] for x in listed.body] == [summary(b)]
    assert is_iso(listed.body[0]["created_at"])
    assert (await api.get("/api/blocks/", token=b.access)).body == []

    # Blocked either way: likes and passes answer as for an unknown user.
    for user, target in ((a, b), (b, a)):
        for path in ("/api/likes/", "/api/passes/"):
            refused = await api.post(path, {"user_id": target.id}, token=user.access)
            assert refused.status == 404 and refused.error_code == "user_not_found", (path, refused.body)

    assert (await api.delete(f"/api/blocks/{b.id}/", token=a.access)).status == 204
    assert (await api.delete(f"/api/blocks/{b.id}/", token=a.access)).status == 204
    assert (await api.get("/api/blocks/", token=a.access)).body == []
    # The ended match stays ended: unblocking does not resurrect it.
    assert (await api.get("/api/matches/", token=a.access)).body == []


async def test_block_without_match_and_new_like_not_sent_across_a_block(api, services):
    a = await seed_user(services)
    b = await seed_user(services)
    rec = await record(services, [a.id, b.id])
    assert (await api.post("/api/blocks/", {"user_id": a.id}, token=b.access)).status == 201
    refused = await api.post("/api/likes/", {"user_id": b.id}, token=a.access)
    assert refused.status == 404
    await settle()
    assert rec.events == []
    assert await services.store.likes.count_documents({}) == 0


async def test_self_unknown_and_errors_envelope(api, services):
    me = await seed_user(services)
    for path in ("/api/likes/", "/api/passes/", "/api/blocks/"):
        own = await api.post(path, {"user_id": me.id}, token=me.access)
        assert own.status == 400 and own.error_code == "self_target", own.body
        assert own.body["error"]["fields"] == {"user_id": "is you"}
        unknown = await api.post(path, {"user_id": 10**12}, token=me.access)
        assert unknown.status == 404 and unknown.error_code == "user_not_found"
        assert set(unknown.body) == {"error"} and unknown.body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1]", "invalid_json"),
        (b'"5"', "invalid_json"),
        (b"{}", "validation_error"),
        (b'{"user_id": "5"}', "validation_error"),
        (b'{"user_id": 5.5}', "validation_error"),
        (b'{"user_id": 5.0}', "validation_error"),
        (b'{"user_id": -1}', "validation_error"),
        (b'{"user_id": 0}', "validation_error"),
        (b'{"user_id": true}', "validation_error"),
        (b'{"user_id": null}', "validation_error"),
        (b'{"user_id": 99999999999999999999}', "validation_error"),
        (b'{"user_id": 5, "extra": 1}', "validation_error"),
    ],
)
async def test_bad_bodies(api, services, body, code):
    me = await seed_user(services)
    for path in ("/api/likes/", "/api/passes/", "/api/blocks/"):
        r = await api.post(path, body=body, token=me.access, headers={"Content-Type": "application/json"})
        assert r.status == 400, (path, body, r.body)
        assert r.error_code == code, (path, body, r.body)
    assert await services.store.likes.count_documents({}) == 0


async def test_unauthenticated(api, services):
    calls = [
        ("GET", "/api/discover/"),
        ("POST", "/api/likes/"),
        ("GET", "/api/likes/received/"),
        ("POST", "/api/passes/"),
        ("GET", "/api/matches/"),
        ("DELETE", "/api/matches/1/"),
        ("GET", "/api/blocks/"),
        ("POST", "/api/blocks/"),
        ("DELETE", "/api/blocks/1/"),
    ]
    for method, path in calls:
        body = b'{"user_id": 1}' if method == "POST" else None
        r = await api.request(method, path, body=body)
        assert r.status == 401 and r.error_code == "not_authenticated", (method, path, r.body)
        bad = await api.request(method, path, body=body, token="not-a-jwt")
        assert bad.status == 401, (method, path, bad.body)


async def test_bad_query_arguments(api, services):
    me = await seed_user(services)
    for path in (
        "/api/discover/?limit=0",
        "/api/discover/?limit=51",
        "/api/discover/?limit=x",
        "/api/discover/?max_distance_km=0",
        "/api/likes/received/?limit=1000",
        "/api/matches/?limit=-1",
        "/api/blocks/?limit=501",
    ):
        r = await api.get(path, token=me.access)
        assert r.status == 400 and r.error_code == "invalid", (path, r.body)
    assert (await api.get("/api/matches/abc/", token=me.access)).status == 404


@pytest.mark.parametrize("settings_overrides", [{"like_quota_per_day": 2}])
async def test_daily_like_quota(api, services):
    me = await seed_user(services)
    others = [await seed_user(services) for _ in range(3)]
    for other in others[:2]:
        assert (await api.post("/api/likes/", {"user_id": other.id}, token=me.access)).status == 201
    refused = await api.post("/api/likes/", {"user_id": others[2].id}, token=me.access)
    assert refused.status == 429 and refused.error_code == "like_quota_exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 86400
    # Repeats are answers, not new likes: the quota does not refuse them. Likes of yesterday do not count.
    assert (await api.post("/api/likes/", {"user_id": others[0].id}, token=me.access)).status == 200
    await services.store.likes.update_many({}, {"$set": {"created_at": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}})
    assert (await api.post("/api/likes/", {"user_id": others[2].id}, token=me.access)).status == 201


@pytest.mark.parametrize("settings_overrides", [{"like_quota_per_day": 0}])
async def test_zero_quota_means_unlimited(api, services):
    me = await seed_user(services)
    for _ in range(3):
        other = await seed_user(services)
        assert (await services.matching.like(me.id, other.id))[1] is True


async def test_a_lost_conversation_is_recreated_when_the_match_is_read(api, services):
    a, b, match = await seed_match(services)
    cid = match["conversation_id"]
    # As if the node died between the match insert and the conversation insert.
    await services.store.conversations.delete_one({"_id": cid})
    listed = await api.get("/api/matches/", token=a.access)
    assert [m["conversation_id"] for m in listed.body] == [cid]
    conv = await services.store.conversations.find_one({"_id": cid})
    assert conv["status"] == "open" and conv["match_id"] == match["id"]
    await services.store.conversations.delete_one({"_id": cid})
    assert (await api.post("/api/likes/", {"user_id": a.id}, token=b.access)).status == 200
    assert await services.store.conversations.count_documents({"_id": cid}) == 1


# -- exactly once under concurrency ---------------------------------------------------------------------

PAIRS = 30


async def assert_one_match_per_pair(services: Services, pairs: list[tuple[TestUser, TestUser]]) -> None:
    matches = await services.store.matches.find({}).to_list(None)
    assert len(matches) == len(pairs)
    assert Counter(m["pair"] for m in matches) == Counter(pair_key(a.id, b.id) for a, b in pairs)
    conversations = await services.store.conversations.find({}).to_list(None)
    assert len(conversations) == len(pairs)
    by_id = {c["_id"]: c for c in conversations}
    for m in matches:
        conv = by_id[m["conversation_id"]]
        assert conv["participants"] == m["users"] and conv["match_id"] == m["_id"] and conv["status"] == "open"


def assert_two_new_match_per_pair(notes: list[tuple[int, dict[str, Any]]], pairs: list[tuple[TestUser, TestUser]]):
    new_match = [(user, n) for user, n in notes if n["type"] == "new_match"]
    assert len(new_match) == 2 * len(pairs)
    received = Counter(user for user, _ in new_match)
    for a, b in pairs:
        assert received[a.id] == 1 and received[b.id] == 1
    for user, note in new_match:
        assert note["match"]["user"]["id"] != user


async def test_concurrent_mutual_likes_make_exactly_one_match(api, services):
    pairs = [(await seed_user(services), await seed_user(services)) for _ in range(PAIRS)]
    rec = await record(services, [u.id for pair in pairs for u in pair])
    answers = await asyncio.gather(
        *(services.matching.like(a.id, b.id) for a, b in pairs),
        *(services.matching.like(b.id, a.id) for a, b in pairs),
    )
    assert all(created for _, created in answers)
    await settle()
    await assert_one_match_per_pair(services, pairs)
    notes = [(int(ch.split(":")[-1]), frame["notification"]) for ch, _, frame in rec.events]
    assert_two_new_match_per_pair(notes, pairs)
    # Every answer that reports a match reports the one stored for its pair.
    stored = {m["pair"]: m["_id"] for m in await services.store.matches.find({}).to_list(None)}
    for (answer, _), (a, b) in zip(answers, pairs + [(b, a) for a, b in pairs], strict=True):
        if answer["match"] is not None:
            assert answer["match"]["id"] == stored[pair_key(a.id, b.id)]


async def test_concurrent_mutual_likes_on_two_nodes(api, services, settings, mongo_url):
    # A second node: its own client, id allocators and bus, on the same database.
    other = await build_services(settings, mongo_url)
    try:
        pairs = [(await seed_user(services), await seed_user(services)) for _ in range(PAIRS)]
        users = [u.id for pair in pairs for u in pair]
        recorders = [await record(services, users), await record(other, users)]
        await asyncio.gather(
            *(services.matching.like(a.id, b.id) for a, b in pairs),
            *(other.matching.like(b.id, a.id) for a, b in pairs),
        )
        await settle()
        await assert_one_match_per_pair(services, pairs)
        notes = [(int(ch.split(":")[-1]), f["notification"]) for rec in recorders for ch, _, f in rec.events]
        assert_two_new_match_per_pair(notes, pairs)
    finally:
        await other.close()


async def test_like_racing_a_block_leaves_no_active_match(api, services):
    for _ in range(10):
        a = await seed_user(services)
        b = await seed_user(services)
        await services.matching.like(a.id, b.id)
        results = await asyncio.gather(
            services.matching.like(b.id, a.id), services.matching.block(a.id, b.id), return_exceptions=True
        )
        assert not any(isinstance(r, Exception) and not hasattr(r, "code") for r in results), results
        active = await services.store.matches.count_documents({"pair": pair_key(a.id, b.id), "status": "active"})
        assert active == 0
        for m in await services.store.matches.find({"pair": pair_key(a.id, b.id)}).to_list(None):
            conv = await services.store.conversations.find_one({"_id": m["conversation_id"]})
            assert conv["status"] == "closed"
