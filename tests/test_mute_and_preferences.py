"""Muting a conversation and push preferences, against a real server, a real webhook gateway and real sockets.

A mute silences one participant's `new_message` notifications of one conversation (socket and push) and
nothing else; preferences turn kinds of push off for one user and never touch the notifications socket.
Both hold on every node, for pushes already queued too (services/push/preferences.py, docs/push.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from handlers import openapi
from services.core.config import Settings
from services.core.container import Services
from services.push.preferences import mute_of, mute_view
from services.storage.documents import conversation_mute, notification_preferences_document
from tests.push_helpers import (
    PUSH_SETTINGS,
    QUIET_S,
    Receiver,
    pair,
    register,
    send,
    skipped,
)
from tests.support import ApiClient, TestUser, WsClient, assert_error, conforms, make_conversation, ws_connect


@pytest.fixture
def settings_overrides(receiver: Receiver, push_overrides: dict[str, Any]) -> dict[str, Any]:
    return {**PUSH_SETTINGS, "push_webhook_allowed_prefixes": f"{receiver.origin}/hook/", **push_overrides}


UNKNOWN = 999_999_999


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi.build_document(Settings())


def mute_path(conversation_id: int) -> str:
    return f"/api/conversations/{conversation_id}/mute/"


PREFERENCES = "/api/users/me/notifications/"


def later(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


async def mute(api: ApiClient, user: TestUser, conversation_id: int, until: str | None = None) -> dict[str, Any]:
    answer = await api.put(mute_path(conversation_id), json={"until": until}, token=user.access)
    assert answer.status == 200, answer.body
    return dict(answer.body)


async def unmute(api: ApiClient, user: TestUser, conversation_id: int) -> None:
    answer = await api.delete(mute_path(conversation_id), token=user.access)
    assert answer.status == 204, answer.body


async def prefer(api: ApiClient, user: TestUser, **changes: bool) -> dict[str, Any]:
    answer = await api.patch(PREFERENCES, changes, token=user.access)
    assert answer.status == 200, answer.body
    return dict(answer.body)


async def online(services: Services, user: TestUser) -> None:
    for _ in range(100):
        if await services.push._presence.is_online(user.id):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("never online")


async def notifications_of(socket: WsClient, seconds: float = 0.4) -> list[dict[str, Any]]:
    return [f["notification"] for f in await socket.silent(seconds) if f.get("type") == "notification"]


async def unread(api: ApiClient, user: TestUser, conversation_id: int) -> int:
    answer = await api.get(f"/api/conversations/{conversation_id}/", token=user.access)
    assert answer.status == 200, answer.body
    return int(answer.body["unread_count"])


# -- muting a conversation ---------------------------------------------------------------------------


async def test_a_muted_conversation_sends_no_notification_but_still_delivers_its_messages(api, services, document):
    a, b, cid = await pair(api, services)
    notifications = await ws_connect(api, f"/ws/notifications/?token={b.access}")
    conversation = await ws_connect(api, f"/ws/conversations/{cid}/?token={b.access}")
    try:
        await conversation.recv_type("status")  # the socket has joined: it misses nothing sent from now on
        await online(services, b)
        answer = await api.put(mute_path(cid), json={"until": None}, token=b.access)
        conforms(document, "put", "/api/conversations/{conversation_id}/mute/", answer)
        assert answer.body == {"conversation_id": cid, "muted": True, "muted_until": None}

        await send(api, a, cid, "while muted")
        delivered = await conversation.recv_type("message")
        assert delivered["message"]["content"] == "while muted"
        assert await notifications_of(notifications) == []
        assert await unread(api, b, cid) == 1
        # The mute is b's alone: a is not told, and a's own notifications are untouched.
        seen = await api.get(mute_path(cid), token=b.access)
        conforms(document, "get", "/api/conversations/{conversation_id}/mute/", seen)
        assert seen.body == {"conversation_id": cid, "muted": True, "muted_until": None}
        assert (await api.get(mute_path(cid), token=a.access)).body["muted"] is False

        gone = await api.delete(mute_path(cid), token=b.access)
        conforms(document, "delete", "/api/conversations/{conversation_id}/mute/", gone)
        await send(api, a, cid, "after unmute")
        frame = await notifications.recv_type("notification")
        assert frame["notification"]["type"] == "new_message"
        assert frame["notification"]["message"]["content"] == "after unmute"
        assert (await api.get(mute_path(cid), token=b.access)).body["muted"] is False
        # Unmuting what is not muted is no error.
        await unmute(api, b, cid)
    finally:
        notifications.close()
        conversation.close()


async def test_a_muted_conversation_is_never_pushed_and_unmuting_restores_pushes(api, services, receiver):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.webhook("phone"))
    await mute(api, b, cid)
    await send(api, a, cid, "quiet")
    await asyncio.sleep(QUIET_S)
    assert receiver.attempts == {}
    # Not even queued: muted messages make no notification at all.
    assert await services.store.push_outbox.count_documents({}) == 0

    await unmute(api, b, cid)
    await send(api, a, cid, "loud")
    await receiver.wait(lambda: len(receiver.pushes) == 1)
    # The count is of unread messages: the one sent while muted is among them.
    assert receiver.pushes[0].payload["notification"] == {"type": "new_message", "conversation_id": cid, "count": 2}


@pytest.mark.parametrize("push_overrides", [{"push_grace_s": 1.0}], indirect=True)
async def test_muting_drops_a_push_already_queued(api, services, receiver):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.webhook("phone"))
    await send(api, a, cid, "queued before the mute")
    assert await services.store.push_outbox.count_documents({"count": 1}) == 1
    await mute(api, b, cid, later(3600))
    await receiver.wait(lambda: skipped(services, "muted") == 1)
    await asyncio.sleep(QUIET_S)
    assert receiver.attempts == {}


async def test_a_mute_until_a_past_time_is_no_mute_and_a_timed_mute_ends_by_itself(api, services):
    a, b, cid = await pair(api, services)
    notifications = await ws_connect(api, f"/ws/notifications/?token={b.access}")
    try:
        await online(services, b)
        await mute(api, b, cid)
        past = await mute(api, b, cid, "2020-01-01T00:00:00Z")
        assert past == {"conversation_id": cid, "muted": False, "muted_until": None}
        await send(api, a, cid, "not muted")
        assert [n["type"] for n in await notifications_of(notifications)] == ["new_message"]

        # Any offset is read as the instant it names, and answered in UTC with milliseconds.
        until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)
        paris = until.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat()
        timed = await mute(api, b, cid, paris)
        assert timed["muted"] is True
        assert timed["muted_until"] == until.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        await send(api, a, cid, "muted for a moment")
        assert await notifications_of(notifications) == []
        await asyncio.sleep(max(0.0, (until - dt.datetime.now(dt.UTC)).total_seconds()) + 0.1)
        assert (await api.get(mute_path(cid), token=b.access)).body == {
            "conversation_id": cid,
            "muted": False,
            "muted_until": None,
        }
        await send(api, a, cid, "heard again")
        assert [n["message"]["content"] for n in await notifications_of(notifications)] == ["heard again"]
    finally:
        notifications.close()


# -- push preferences --------------------------------------------------------------------------------


async def test_preferences_start_on_and_change_one_at_a_time(api, services, document):
    b = await api.user("chooser")
    answer = await api.get(PREFERENCES, token=b.access)
    conforms(document, "get", "/api/users/me/notifications/", answer)
    everything = {"messages": True, "matches": True, "likes": True, "message_previews": True}
    assert answer.body == {**everything, "previews_available": False}
    changed = await api.patch(PREFERENCES, {"likes": False}, token=b.access)
    conforms(document, "patch", "/api/users/me/notifications/", changed)
    assert changed.body == {**everything, "likes": False, "previews_available": False}
    assert (await prefer(api, b, message_previews=False, likes=True))["message_previews"] is False
    assert (await api.get(PREFERENCES, token=b.access)).body == {
        **everything,
        "message_previews": False,
        "previews_available": False,
    }
    # Nothing to change is no error; the answer is the preferences as they are.
    assert (await prefer(api, b))["message_previews"] is False
    stored = await services.store.notification_preferences.find_one({"_id": b.id}, {"updated_at": 0})
    assert stored == {"_id": b.id, **everything, "message_previews": False}


async def test_preferences_turn_off_the_pushes_of_their_kind(api, services, receiver):
    a, b = await api.user("liker"), await api.user("liked")
    await register(api, b, receiver.webhook("phone"))
    await prefer(api, b, likes=False, matches=False, messages=False)

    assert (await api.post("/api/likes/", {"user_id": b.id}, token=a.access)).status == 201
    await receiver.wait(lambda: skipped(services, "preference") == 1)
    matched = await api.post("/api/likes/", {"user_id": a.id}, token=b.access)
    cid = matched.body["match"]["conversation_id"]
    await receiver.wait(lambda: skipped(services, "preference") == 2)
    await send(api, a, cid, "not pushed")
    await receiver.wait(lambda: skipped(services, "preference") == 3)
    assert receiver.attempts == {}

    # Turned on again: the next message is pushed, counting what is unread.
    await prefer(api, b, messages=True)
    await send(api, a, cid, "pushed")
    await receiver.wait(lambda: len(receiver.pushes) == 1)
    assert receiver.pushes[0].payload["notification"] == {"type": "new_message", "conversation_id": cid, "count": 2}


@pytest.mark.parametrize("push_overrides", [{"push_grace_s": 1.0}], indirect=True)
async def test_a_preference_changed_while_a_push_waits_applies_to_it(api, services, receiver):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.webhook("phone"))
    await send(api, a, cid, "queued while messages were on")
    await prefer(api, b, messages=False)
    await receiver.wait(lambda: skipped(services, "preference") == 1)
    await asyncio.sleep(QUIET_S)
    assert receiver.attempts == {}


async def test_preferences_leave_the_notifications_socket_alone(api, services):
    a, b, cid = await pair(api, services)
    await prefer(api, b, likes=False, matches=False, messages=False)
    notifications = await ws_connect(api, f"/ws/notifications/?token={b.access}")
    try:
        await online(services, b)
        await send(api, a, cid, "on screen")
        frame = await notifications.recv_type("notification")
        assert frame["notification"]["message"]["content"] == "on screen"
    finally:
        notifications.close()


@pytest.mark.parametrize("push_overrides", [{"push_preview_chars": 5}], indirect=True)
async def test_previews_off_take_the_text_out_of_message_pushes(api, services, receiver):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.webhook("phone"))
    assert (await prefer(api, b, message_previews=False))["previews_available"] is True
    await send(api, a, cid, "secret words")
    await receiver.wait(lambda: len(receiver.pushes) == 1)
    assert receiver.pushes[0].payload["notification"] == {"type": "new_message", "conversation_id": cid, "count": 1}

    await prefer(api, b, message_previews=True)
    read = await api.post(f"/api/conversations/{cid}/read/", {"message_id": 1}, token=b.access)
    assert read.status == 200
    await send(api, a, cid, "plain words")
    await receiver.wait(lambda: len(receiver.pushes) == 2)
    assert receiver.pushes[1].payload["notification"]["text"] == "plain"


async def test_previews_on_add_no_text_where_the_server_sends_none(api, services, receiver):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.webhook("phone"))
    assert (await prefer(api, b, message_previews=True))["previews_available"] is False
    await send(api, a, cid, "secret words")
    await receiver.wait(lambda: len(receiver.pushes) == 1)
    assert "text" not in receiver.pushes[0].payload["notification"]


# -- several nodes -----------------------------------------------------------------------------------


async def test_a_mute_set_on_one_node_holds_on_the_other(cluster_factory, receiver):
    n1, n2 = await cluster_factory(
        2, **PUSH_SETTINGS, push_webhook_allowed_prefixes=f"{receiver.origin}/hook/", heartbeat_interval_s=0.5
    )
    a, b = await n1.api.user("sender"), await n1.api.user("recipient")
    cid = await make_conversation(n1.services, a.id, b.id)

    # Online: the notifications socket on node 2, the mute set on node 1, the message sent on node 2.
    notifications = await ws_connect(n2.api, f"/ws/notifications/?token={b.access}")
    conversation = await ws_connect(n1.api, f"/ws/conversations/{cid}/?token={b.access}")
    try:
        await conversation.recv_type("status")  # the socket has joined: it misses nothing sent from now on
        await online(n2.services, b)
        await send(n2.api, a, cid, "heard")
        assert (await notifications.recv_type("notification"))["notification"]["type"] == "new_message"
        await mute(n1.api, b, cid)
        await send(n2.api, a, cid, "muted on the other node")
        assert (await conversation.recv_type("message"))["message"]["content"] == "heard"
        assert (await conversation.recv_type("message"))["message"]["content"] == "muted on the other node"
        assert await notifications_of(notifications) == []
    finally:
        notifications.close()
        conversation.close()

    # Offline: no push from either node while muted; unmuted on node 1, node 2's message is pushed.
    for _ in range(100):
        if not await n1.services.push._presence.is_online(b.id):
            break
        await asyncio.sleep(0.05)
    await register(n1.api, b, receiver.webhook("phone"))
    await send(n1.api, a, cid, "quiet 1")
    await send(n2.api, a, cid, "quiet 2")
    await asyncio.sleep(QUIET_S)
    assert receiver.attempts == {}
    await unmute(n1.api, b, cid)
    await send(n2.api, a, cid, "loud")
    await receiver.wait(lambda: len(receiver.pushes) == 1)
    assert receiver.pushes[0].payload["notification"]["count"] == 5


# -- who may, and what is refused --------------------------------------------------------------------


async def test_only_participants_of_an_open_conversation_may_mute_it(api, services):
    a, b, cid = await pair(api, services)
    stranger = await api.user("stranger")
    for method, kw in (("GET", {}), ("PUT", {"json": {"until": None}}), ("DELETE", {})):
        refused = await api.request(method, mute_path(cid), token=stranger.access, **kw)
        assert_error(refused, 404, "conversation_not_found")
        unknown = await api.request(method, mute_path(UNKNOWN), token=b.access, **kw)
        assert (unknown.status, unknown.body) == (refused.status, refused.body), method
        assert (await api.request(method, mute_path(cid), **kw)).status == 401
    conversation = await services.store.conversations.find_one({"_id": cid})
    assert conversation is not None and "mutes" not in conversation

    # After an unmatch, the former match gets the same answer as a stranger, for the mute it had too.
    await mute(api, b, cid)
    match = await services.store.matches.find_one({"conversation_id": cid})
    assert match is not None
    assert (await api.delete(f"/api/matches/{match['_id']}/", token=a.access)).status == 204
    for method, kw in (("GET", {}), ("PUT", {"json": {"until": None}}), ("DELETE", {})):
        assert_error(await api.request(method, mute_path(cid), token=b.access, **kw), 404, "conversation_not_found")


@pytest.mark.parametrize(
    "body",
    [
        {"until": 1_900_000_000},
        {"until": "tomorrow"},
        {"until": "2031-01-01"},
        {"until": "2031-01-01T10:00:00"},  # no offset: which zone?
        {"until": "2031-02-30T10:00:00Z"},
        {"until": "2031-01-01T24:00:00Z"},
        {"until": "0001-01-01T00:00:00+01:00"},  # before year 1 in UTC
        {"until": "9999-12-31T23:59:59Z"},  # past the longest mute
        {"until": None, "muted": True},
        {"until": "2031-01-01T10:00:00Z" + "0" * 100},
    ],
)
async def test_bad_mute_bodies_are_refused(api, services, body):
    _a, b, cid = await pair(api, services)
    assert_error(await api.put(mute_path(cid), json=body, token=b.access), 400, "validation_error")
    assert (await api.get(mute_path(cid), token=b.access)).body["muted"] is False


async def test_bad_bodies_are_refused_and_change_nothing(api, services):
    _a, b, cid = await pair(api, services)
    for raw in (b"", b"not json", b"[]", b'"until"'):
        assert_error(await api.request("PUT", mute_path(cid), body=raw, token=b.access), 400, "invalid_json")
        assert_error(await api.request("PATCH", PREFERENCES, body=raw, token=b.access), 400, "invalid_json")
    for body in ({"messages": "no"}, {"messages": None}, {"messages": 0}, {"sounds": False}, {"likes": [False]}):
        assert_error(await api.patch(PREFERENCES, body, token=b.access), 400, "validation_error")
    far = await api.put(mute_path(cid), json={"until": later(366 * 86400)}, token=b.access)
    assert_error(far, 400, "validation_error", "until")
    assert (await api.get(mute_path(cid), token=b.access)).body["muted"] is False
    assert (await api.get(PREFERENCES, token=b.access)).body["messages"] is True
    assert await services.store.notification_preferences.count_documents({}) == 0
    # A path id the route does not match is an unknown path.
    assert_error(await api.put("/api/conversations/abc/mute/", json={}, token=b.access), 404)


# -- the stored shapes -------------------------------------------------------------------------------


def test_a_mute_is_read_as_its_document_says():
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    hour = dt.timedelta(hours=1)
    forever = {"mutes": {"7": conversation_mute(None, muted_at=now)}}
    timed = {"mutes": {"7": conversation_mute(now + hour, muted_at=now)}}
    assert mute_of(forever, 7, now) is not None and mute_of(forever, 8, now) is None
    assert mute_view(forever, 7, now) == {"muted": True, "muted_until": None}
    assert mute_view(timed, 7, now) == {"muted": True, "muted_until": "2030-01-01T01:00:00.000Z"}
    assert mute_view(timed, 7, now + hour) == {"muted": False, "muted_until": None}
    assert mute_view(None, 7, now) == {"muted": False, "muted_until": None}
    # BSON dates may come back naive from a client without tz_aware: they are UTC.
    naive = {"mutes": {"7": {"until": (now + hour).replace(tzinfo=None), "muted_at": now}}}
    assert mute_view(naive, 7, now)["muted"] is True
    with pytest.raises(ValueError, match="unknown"):
        notification_preferences_document(7, updated_at=now, sounds=False)


async def test_the_conversation_shows_each_participant_only_their_own_mute(api, services, document):
    a, b, cid = await pair(api, services)
    muted = await mute(api, a, cid, until=later(2 * 3600))
    assert muted["muted"] is True and muted["muted_until"] is not None
    mine = await api.get(f"/api/conversations/{cid}/", token=a.access)
    theirs = await api.get(f"/api/conversations/{cid}/", token=b.access)
    for answer in (mine, theirs):
        conforms(document, "get", "/api/conversations/{conversation_id}/", answer)
    assert (mine.body["muted"], mine.body["muted_until"]) == (True, muted["muted_until"])
    assert (theirs.body["muted"], theirs.body["muted_until"]) == (False, None)
    for user, expected in ((a, (True, muted["muted_until"])), (b, (False, None))):
        listed = await api.get("/api/conversations/", token=user.access)
        conforms(document, "get", "/api/conversations/", listed)
        [entry] = [c for c in listed.body if c["id"] == cid]
        assert (entry["muted"], entry["muted_until"]) == expected
