"""Every refusal of the sockets: the seed's close codes, and error frames that leave the socket open.

Refused input must never be stored: each test that feeds bad input checks REST history afterwards.
"""

from __future__ import annotations

import pytest
import tornado.httpclient
import tornado.websocket

from tests.support import make_conversation, ws_connect
from tests.ws_helpers import conv_path, history_ids, join, messages, notifications, pair, token, wait_for

BASE_OVERRIDES = {"max_frame_bytes": 2048, "max_content_chars": 100}


@pytest.fixture
def settings_overrides(request):
    return {**BASE_OVERRIDES, **getattr(request, "param", {})}


async def closed_with(ws, code, timeout=5.0):
    got, reason = await ws.closed(timeout)
    assert got == code, (got, reason)
    return reason


async def still_open(ws):
    await ws.send({"type": "ping"})
    assert await ws.recv_type("pong") == {"type": "pong"}


# -- authentication: 4000 and 4002 --------------------------------------------------------------------


async def test_no_token_closes_4000_on_both_endpoints(api, services):
    p = await pair(api, services)
    for query in ("", "?token=", "?token=&after=0", "?after=0"):
        for path in (f"/ws/conversations/{p.cid}/{query}", f"/ws/notifications/{query}"):
            ws = await ws_connect(api, path)
            assert (await ws.closed())[0] == 4000, path


BAD_TOKENS = {
    "garbage": lambda uid, refresh: "not-a-jwt",
    "truncated": lambda uid, refresh: token(uid)[:-5],
    "expired": lambda uid, refresh: token(uid, ttl_s=-60),
    "forged signature": lambda uid, refresh: token(uid, secret="another-secret-" + "y" * 40),
    "alg none": lambda uid, refresh: token(uid, algorithm="none"),
    "refresh token": lambda uid, refresh: refresh,
    "unknown token type": lambda uid, refresh: token(uid, kind="reset"),
}


async def test_bad_tokens_close_4002_on_both_endpoints(api, services):
    p = await pair(api, services)
    for kind, make in BAD_TOKENS.items():
        bad = make(p.a.id, p.a.refresh)
        for path in (conv_path(p.cid, bad), f"/ws/notifications/?token={bad}"):
            ws = await ws_connect(api, path)
            assert (await ws.closed())[0] == 4002, (kind, path)
    # The same helper signs a token the server accepts: each refusal above is about its defect alone.
    good = await ws_connect(api, conv_path(p.cid, token(p.a.id)))
    assert (await good.recv())["type"] == "status"


async def test_a_deleted_account_is_refused_4002_on_its_own_conversation_and_never_announced(api, services):
    p = await pair(api, services)
    watcher = await join(api, p.cid, p.a)
    bob = await join(api, p.cid, p.b)  # the node now remembers Bob's account as alive, and his summary
    assert (await watcher.recv_type("status"))["status"] == "online"
    bob.close()
    assert (await watcher.recv_type("status"))["status"] == "offline"
    await services.store.users.update_one({"_id": p.b.id}, {"$set": {"deleted": True}})
    # As the end of ACCOUNT_CACHE_TTL_S would (tests/test_authz_matrix.py waits for it).
    services.users.liveness.forget()
    for after in (None, 0, -1):
        await closed_with(await ws_connect(api, conv_path(p.cid, p.b, after=after)), 4002)
    assert [f for f in await watcher.silent(0.3) if f["type"] == "status"] == []


# -- access: 4001 ---------------------------------------------------------------------------------------


async def test_stranger_and_unknown_conversation_close_4001_alike(api, services):
    p = await pair(api, services)
    stranger = await api.user("eve")
    reasons = set()
    for cid, user in ((p.cid, stranger), (p.cid + 1000, p.a), (999_999_999_999_999, p.a)):
        reasons.add(await closed_with(await ws_connect(api, conv_path(cid, user)), 4001))
    assert len(reasons) == 1  # the reason does not tell a stranger whether the conversation exists


async def match_id_of(services, cid):
    return (await services.store.conversations.find_one({"_id": cid}))["match_id"]


async def test_unmatch_closes_open_sockets_4001_and_refuses_new_joins(api, services):
    p = await pair(api, services)
    other = await api.user("carol")
    other_cid = await make_conversation(services, p.a.id, other.id)
    a = await join(api, p.cid, p.a)
    a_other = await join(api, other_cid, p.a)
    b = await join(api, p.cid, p.b)
    await a.send({"type": "message", "content": "before"})
    await messages(b, 1)

    unmatched = await api.delete(f"/api/matches/{await match_id_of(services, p.cid)}/", token=p.b.access)
    assert unmatched.status == 204, unmatched.body
    await closed_with(a, 4001)
    await closed_with(b, 4001)
    for user, after in ((p.a, None), (p.b, 0), (p.a, 1)):
        await closed_with(await ws_connect(api, conv_path(p.cid, user, after=after)), 4001)

    # Nothing more can be said in it, history stays readable, other conversations are untouched.
    refused = await api.post(f"/api/conversations/{p.cid}/messages/", {"content": "after"}, token=p.a.access)
    assert refused.status in (403, 404)
    assert await history_ids(api, p.cid, p.b) == [1]
    await still_open(a_other)


async def test_a_closed_conversation_is_refused_at_once_even_where_it_was_cached_open(api, services):
    """A node with no socket on the conversation does not hear the close event; what it cached must not
    let a socket in (with or without `after`) nor a message be stored."""
    p = await pair(api, services)
    assert (await api.post(f"/api/conversations/{p.cid}/messages/", {"content": "hi"}, token=p.a.access)).status == 201
    blocked = await api.post("/api/blocks/", {"user_id": p.b.id}, token=p.a.access)
    assert blocked.status in (200, 201), blocked.body
    for user, after in ((p.b, 1), (p.b, None), (p.a, 0)):
        await closed_with(await ws_connect(api, conv_path(p.cid, user, after=after)), 4001)
    sent = await api.post(f"/api/conversations/{p.cid}/messages/", {"content": "late"}, token=p.b.access)
    assert sent.status in (403, 404), sent.body
    assert await history_ids(api, p.cid, p.b) == [1]


# -- bad frames: 4003 -----------------------------------------------------------------------------------

BAD_FRAMES = {
    "not json": "hello",
    "truncated json": '{"type": "message"',
    "json array": '[{"type": "message", "content": "x"}]',
    "json number": "42",
    "json string": '"message"',
    "json null": "null",
    "missing type": {"content": "x"},
    "type not a string": {"type": 1, "content": "x"},
    "unknown type": {"type": "shout", "content": "x"},
    "notification-only type": {"type": "notification"},
    "content a number": {"type": "message", "content": 5},
    "content missing": {"type": "message"},
    "content null": {"type": "message", "content": None},
    "client_id a number": {"type": "message", "content": "x", "client_id": 7},
    "client_id too long": {"type": "message", "content": "x", "client_id": "c" * 65},
    "attachment_id a string": {"type": "message", "content": "x", "attachment_id": "1"},
    "is_typing a string": {"type": "typing", "is_typing": "yes"},
    "is_typing a number": {"type": "typing", "is_typing": 1},
    "is_typing missing": {"type": "typing"},
    "message_id a string": {"type": "read_receipt", "message_id": "1"},
    "message_id true": {"type": "read_receipt", "message_id": True},
    "message_id negative": {"type": "read_receipt", "message_id": -1},
    "message_id zero": {"type": "read_receipt", "message_id": 0},
    "message_id a float": {"type": "read_receipt", "message_id": 1.5},
    "message_id missing": {"type": "read_receipt"},
    "binary frame": b'{"type": "message", "content": "x"}',
}


async def test_malformed_frames_close_4003_and_store_nothing(api, services):
    p = await pair(api, services)
    b = await join(api, p.cid, p.b)
    for kind, frame in BAD_FRAMES.items():
        a = await join(api, p.cid, p.a)
        if isinstance(frame, bytes):
            await a.conn.write_message(frame, binary=True)
        else:
            await a.send(frame)
        assert (await a.closed())[0] == 4003, kind
    # The other side saw nothing of it (but presence) and nothing was stored.
    assert [f for f in await b.silent(0.2) if f["type"] != "status"] == []
    assert await history_ids(api, p.cid, p.a) == []


async def test_notifications_socket_accepts_only_ping(api, services):
    p = await pair(api, services)
    for frame in ('{"type": "message", "content": "x"}', '{"type": "typing", "is_typing": true}', "nope"):
        notif = await notifications(api, p.a)
        await notif.send(frame)
        assert (await notif.closed())[0] == 4003, frame
    notif = await notifications(api, p.a)
    await notif.conn.write_message(b'{"type": "ping"}', binary=True)
    await closed_with(notif, 4003)
    assert await history_ids(api, p.cid, p.a) == []


async def test_malformed_after_cursor_closes_4003(api, services):
    p = await pair(api, services)
    for after in ("abc", "-1", "1.5", "0x10"):
        ws = await ws_connect(api, f"/ws/conversations/{p.cid}/?token={p.a.access}&after={after}")
        assert (await ws.closed())[0] == 4003, after


# -- size: 1009 -----------------------------------------------------------------------------------------


async def test_frame_over_max_frame_bytes_closes_1009_and_stores_nothing(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    await a.send({"type": "message", "content": "x" * 50})  # under the limit: fine
    await messages(a, 1)
    await a.send({"type": "message", "content": "x" * 2100})
    await closed_with(a, 1009)
    assert await history_ids(api, p.cid, p.a) == [1]


# -- policy: 1008 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"allowed_origins": "https://app.example"}], indirect=True)
async def test_foreign_origins_close_1008_before_anything_is_sent_and_allowed_ones_pass(api, services):
    p = await pair(api, services)
    paths = (conv_path(p.cid, p.a), f"/ws/notifications/?token={p.a.access}")
    for origin in ("https://evil.example", "http://localhost.evil.example", "null", "https://app.example.evil"):
        for path in paths:
            ws = await ws_connect(api, path, headers={"Origin": origin})
            frames = []
            while (frame := await ws.recv()) is not None:
                frames.append(frame)
            assert (ws.close_code, frames) == (1008, []), (origin, path)
    # No Origin (not a browser), the server's own host, localhost on any port, and the allow-list pass.
    for allowed in (None, f"http://127.0.0.1:{api.port}", "http://localhost:3000", "https://app.example"):
        ws = await ws_connect(api, paths[0], headers={"Origin": allowed} if allowed else None)
        assert (await ws.recv())["type"] == "status", allowed
        ws.close()


@pytest.mark.parametrize("settings_overrides", [{"max_sockets_per_user": 2}], indirect=True)
async def test_sockets_over_the_per_user_limit_close_1008(api, services):
    p = await pair(api, services)
    first = await join(api, p.cid, p.a)
    await notifications(api, p.a)
    for path in (conv_path(p.cid, p.a), f"/ws/notifications/?token={p.a.access}"):
        await closed_with(await ws_connect(api, path), 1008)
    # Another user is not affected, and closing one socket makes room again.
    await join(api, p.cid, p.b)
    first.close()
    await wait_for(lambda: services.connections.count(p.a.id) < 2)
    await join(api, p.cid, p.a)


@pytest.mark.parametrize("settings_overrides", [{"max_conversation_sockets_per_user": 1}], indirect=True)
async def test_conversation_sockets_over_their_own_limit_close_1008(api, services):
    p = await pair(api, services)
    await join(api, p.cid, p.a)
    ws = await ws_connect(api, conv_path(p.cid, p.a))
    code, reason = await ws.closed()
    assert code == 1008 and reason == "too many conversation connections"
    notif = await notifications(api, p.a)  # the notifications socket does not count
    await still_open(notif)


@pytest.mark.parametrize(
    "settings_overrides",
    [{"message_rate": 0.1, "message_burst": 3, "rate_strikes_to_close": 4}],
    indirect=True,
)
async def test_rate_limit_answers_error_frames_then_closes_1008_when_abuse_persists(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    for i in range(3):
        await a.send({"type": "message", "content": f"ok {i}"})
    assert [m["content"] for m in await messages(a, 3)] == ["ok 0", "ok 1", "ok 2"]

    await a.send({"type": "message", "content": "too fast", "client_id": "late-1"})
    error = await a.recv_type("error")
    assert error["code"] == "rate_limited" and isinstance(error["message"], str)
    assert isinstance(error["retry_after_ms"], int) and 0 < error["retry_after_ms"] <= 10_000
    assert error["client_id"] == "late-1"
    await still_open(a)

    # REST sends share the user's budget.
    rest = await api.post(f"/api/conversations/{p.cid}/messages/", {"content": "rest"}, token=p.a.access)
    assert rest.status == 429 and rest.error_code == "rate_limited" and int(rest.headers["Retry-After"]) >= 1

    for _ in range(3):
        await a.send({"type": "message", "content": "still too fast"})
    await closed_with(a, 1008)
    assert await history_ids(api, p.cid, p.a) == [1, 2, 3]


@pytest.mark.parametrize("settings_overrides", [{"frame_rate": 0.5, "frame_burst": 2}], indirect=True)
async def test_frame_rate_limit_covers_every_frame_type(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    await a.send({"type": "ping"})
    await a.send({"type": "typing", "is_typing": True})
    await a.send({"type": "ping"})
    error = await a.recv_type("error")
    assert error["code"] == "rate_limited" and error["retry_after_ms"] > 0


# -- well-formed but refused: error frame, socket open ---------------------------------------------------


async def test_refused_requests_answer_error_frames_and_keep_the_socket_open(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    b = await join(api, p.cid, p.b)

    async def refused(frame, code):
        await a.send(frame)
        error = await a.recv_type("error")
        assert set(error) >= {"type", "code", "message"} and error["code"] == code, error
        await still_open(a)

    await refused({"type": "message", "content": ""}, "empty_message")
    await refused({"type": "message", "content": "   \n\t"}, "empty_message")
    await refused({"type": "message", "content": "x" * 101}, "message_too_long")
    await refused({"type": "read_receipt", "message_id": 1}, "message_not_found")
    await refused({"type": "message", "content": "x", "attachment_id": 12345}, "attachment_not_found")

    # The longest allowed content and a read receipt for an existing message still work afterwards.
    await a.send({"type": "message", "content": "x" * 100})
    assert (await messages(a, 1))[0]["id"] == 1
    await refused({"type": "read_receipt", "message_id": 2}, "message_not_found")
    assert [f for f in await b.silent(0.2) if f["type"] == "error"] == []
    assert await history_ids(api, p.cid, p.a) == [1]


# -- server side: 1011 and 1001 ------------------------------------------------------------------------


async def test_unexpected_server_error_closes_1011(api, services, monkeypatch):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)

    async def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(services.chat, "mark_read", broken)
    await a.send({"type": "read_receipt", "message_id": 1})
    await closed_with(a, 1011)


async def test_shutdown_closes_every_socket_1001(api, services):
    p = await pair(api, services)
    sockets = [await join(api, p.cid, p.a), await join(api, p.cid, p.b), await notifications(api, p.a)]
    await services.connections.close_all(1001, "server shutting down")
    for ws in sockets:
        await closed_with(ws, 1001)


async def test_unknown_paths_are_not_websockets(api, services):
    with pytest.raises((tornado.httpclient.HTTPClientError, tornado.websocket.WebSocketClosedError)):
        await ws_connect(api, "/ws/conversations/abc/?token=x")
