"""Revocation reaches open sockets, against real servers (two nodes share a real Redis where it matters).

- Deleting an account (`deleted: true` in the store, then `services.revocations.revoke_user`, as the
  deletion endpoint does) closes that user's sockets with 4002 on every node within 5 s; what the socket
  still tries to send is not stored, and REST refuses the tokens.
- A password change (`POST /api/users/me/password/`) ends every session: sockets on both nodes close with
  4002, old access and refresh tokens are refused on both nodes, the new pair works; its refusals.
- A reused refresh token (its family revoked) closes the user's sockets with 4004.
- An access token that expires on an open socket: 4004 after SOCKET_TOKEN_GRACE, unless an `auth` frame
  renewed it; `auth` with another user's token, a refresh token, garbage or wrong field types is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import pytest
import tornado.websocket

from handlers import openapi
from services.core.config import Settings
from tests.support import (
    PASSWORD,
    TEST_SECRET,
    ApiClient,
    Response,
    TestUser,
    WsClient,
    assert_error,
    conforms,
    make_conversation,
    ws_connect,
)
from tests.ws_helpers import conv_path, history_ids, join, notifications, token

PASSWORD_PATH = "/api/users/me/password/"
NEW_PASSWORD = "a brand new passphrase"
ME = "/api/users/me/"
# The promise: every node closes a revoked user's sockets within this many seconds.
WITHIN_S = 5.0


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi.build_document(Settings())


# -- helpers --------------------------------------------------------------------------------------------


async def closed_within(ws: WsClient, seconds: float = WITHIN_S) -> int | None:
    """The code the server closed the socket with, failing if that took longer than `seconds`."""
    code, _ = await ws.closed(timeout=seconds)
    return code


async def still_open(ws: WsClient) -> None:
    """The socket answers a ping, so it is open and its frames are handled."""
    await ws.send({"type": "ping"})
    assert (await ws.recv_type("pong"))["type"] == "pong"


async def send_ignoring_the_close(ws: WsClient, frame: dict[str, Any]) -> None:
    """Write a frame as a client that ignores the server's close frame would (the client library refuses)."""
    protocol = ws.conn.protocol
    if not isinstance(protocol, tornado.websocket.WebSocketProtocol13):
        return
    with contextlib.suppress(Exception):
        await protocol._write_frame(True, 0x1, orjson.dumps(frame))


async def change_password(
    api: ApiClient, user: TestUser, current: str, new: str, access: str | None = None
) -> Response:
    body = {"current_password": current, "new_password": new}
    return await api.post(PASSWORD_PATH, body, token=access or user.access)


async def sign_in(api: ApiClient, user: TestUser, password: str = PASSWORD) -> Response:
    return await api.post("/api/token/", {"username": user.username, "password": password})


async def refused_within(api: ApiClient, access: str, seconds: float = WITHIN_S) -> float:
    """Seconds until REST refuses `access` with 401 `token_invalid` (fails past `seconds`)."""
    started = time.monotonic()
    while True:
        answer = await api.get(ME, token=access)
        if answer.status == 401:
            assert_error(answer, 401, "token_invalid")
            return time.monotonic() - started
        assert answer.status == 200, answer.body
        assert time.monotonic() - started < seconds, "REST still accepts a revoked token"
        await asyncio.sleep(0.05)


# -- account deletion -----------------------------------------------------------------------------------


async def test_deleting_an_account_closes_its_sockets_on_every_node(cluster_factory):
    n1, n2 = await cluster_factory(2)
    alice, bob = await n1.api.user("alice"), await n1.api.user("bob")
    cid = await make_conversation(n1.services, alice.id, bob.id)
    sent = await n1.api.post(f"/api/conversations/{cid}/messages/", {"content": "before"}, token=alice.access)
    assert sent.status == 201, sent.body
    sockets = [await join(n1.api, cid, alice), await join(n2.api, cid, alice), await notifications(n2.api, alice)]
    for ws in sockets:
        await still_open(ws)
    bob_socket = await join(n2.api, cid, bob)
    # Both nodes know the account as alive (cached for ACCOUNT_CACHE_TTL_S): the revocation must undo that.
    for node in (n1, n2):
        assert (await node.api.get(ME, token=alice.access)).status == 200

    # What the account deletion endpoint does: mark the account, then revoke.
    await n1.services.store.users.update_one({"_id": alice.id}, {"$set": {"deleted": True}})
    started = time.monotonic()
    assert await n1.services.revocations.revoke_user(alice.id, "account deleted") == 1

    assert_error(await n1.api.get(ME, token=alice.access), 401, "token_invalid")  # the revoking node: at once
    for ws in sockets:
        assert await closed_within(ws) == 4002
    assert time.monotonic() - started < WITHIN_S
    assert_error(await n2.api.get(ME, token=alice.access), 401, "token_invalid")

    # A client that ignores the close frames and keeps sending stores nothing, nor does REST.
    for ws in sockets[:2]:
        await send_ignoring_the_close(ws, {"type": "message", "content": "after deletion"})
    for node in (n1, n2):
        late = await node.api.post(f"/api/conversations/{cid}/messages/", {"content": "late"}, token=alice.access)
        assert_error(late, 401, "token_invalid")
    await asyncio.sleep(0.5)
    assert await history_ids(n2.api, cid, bob) == [1]
    # The other participant is not touched: told that alice went offline, and the socket works.
    assert (await bob_socket.recv_type("status"))["status"] == "offline"
    await still_open(bob_socket)
    # Nor can the account open a socket or refresh any more.
    for node in (n1, n2):
        assert await closed_within(await ws_connect(node.api, conv_path(cid, alice))) == 4002
        assert_error(await node.api.post("/api/token/refresh/", {"refresh": alice.refresh}), 401, "token_invalid")


async def test_revoking_an_account_that_is_gone_closes_its_sockets(api, services):
    alice = await api.user("alice")
    ws = await notifications(api, alice)
    await still_open(ws)
    await services.store.users.delete_one({"_id": alice.id})
    assert await services.revocations.revoke_user(alice.id, "account erased") is None
    assert await closed_within(ws) == 4002


async def test_rest_refuses_revoked_tokens_on_every_node_within_the_promise(cluster_factory):
    n1, n2, n3 = await cluster_factory(3)
    alice = await n1.api.user("alice")
    for node in (n1, n2, n3):
        assert (await node.api.get(ME, token=alice.access)).status == 200  # cached as alive everywhere
    await n2.services.revocations.revoke_user(alice.id, "test")
    assert_error(await n2.api.get(ME, token=alice.access), 401, "token_invalid")
    for node in (n1, n3):
        assert await refused_within(node.api, alice.access) < WITHIN_S
    # Tokens issued afterwards carry the new generation and work on every node.
    fresh = await sign_in(n3.api, alice)
    assert fresh.status == 200, fresh.body
    for node in (n1, n2, n3):
        assert (await node.api.get(ME, token=fresh.body["access"])).status == 200


async def test_a_revocation_missed_while_the_bus_was_away_is_caught_at_reconnect(cluster_factory):
    (node,) = await cluster_factory(1)
    alice = await node.api.user("alice")
    ws = await notifications(node.api, alice)
    await still_open(ws)
    # As if another node revoked while this one's bus was cut off: the store has it, the event never came.
    await node.services.store.users.update_one({"_id": alice.id}, {"$inc": {"token_generation": 1}})
    await still_open(ws)
    node.services.recheck_tokens()  # what the bus's reconnect runs
    assert await closed_within(ws) == 4002


# -- password change ------------------------------------------------------------------------------------


async def test_a_password_change_ends_every_session_on_both_nodes(cluster_factory, document):
    n1, n2 = await cluster_factory(2)
    alice, bob = await n1.api.user("alice"), await n1.api.user("bob")
    cid = await make_conversation(n1.services, alice.id, bob.id)
    phone = await sign_in(n2.api, alice)  # a second sign-in, on another device
    assert phone.status == 200
    sockets = [
        await join(n1.api, cid, alice),
        await notifications(n2.api, alice),
        await ws_connect(n2.api, f"/ws/notifications/?token={phone.body['access']}"),
    ]
    for ws in sockets:
        await still_open(ws)
    bob_socket = await join(n1.api, cid, bob)
    for node in (n1, n2):
        assert (await node.api.get(ME, token=alice.access)).status == 200

    changed = await change_password(n1.api, alice, PASSWORD, NEW_PASSWORD)
    assert changed.status == 200, changed.body
    conforms(document, "post", PASSWORD_PATH, changed)
    new = TestUser(alice.id, alice.username, changed.body["access"], changed.body["refresh"])
    for ws in sockets:
        assert await closed_within(ws) == 4002

    # Every old token is refused on both nodes, the refresh tokens of both sign-ins too.
    for node in (n1, n2):
        for old_access in (alice.access, phone.body["access"]):
            assert_error(await node.api.get(ME, token=old_access), 401, "token_invalid")
        for old_refresh in (alice.refresh, phone.body["refresh"]):
            assert_error(await node.api.post("/api/token/refresh/", {"refresh": old_refresh}), 401, "token_invalid")
        assert await closed_within(await ws_connect(node.api, f"/ws/notifications/?token={alice.access}")) == 4002
    # The new pair works on both nodes: REST, sockets, and its refresh token rotates.
    for node in (n1, n2):
        assert (await node.api.get(ME, token=new.access)).status == 200
    again = await join(n2.api, cid, new)
    await again.send({"type": "message", "content": "new password, same me"})
    assert (await again.recv_type("message"))["message"]["content"] == "new password, same me"
    assert (await bob_socket.recv_type("message"))["message"]["content"] == "new password, same me"
    rotated = await n2.api.post("/api/token/refresh/", {"refresh": new.refresh})
    assert rotated.status == 200, rotated.body
    assert (await n1.api.get(ME, token=rotated.body["access"])).status == 200
    # The new socket opened with the new generation stays open; bob was never touched.
    await still_open(again)
    await still_open(bob_socket)
    # Only the new password signs in.
    assert_error(await sign_in(n1.api, alice), 401, "invalid_credentials")
    assert (await sign_in(n2.api, alice, NEW_PASSWORD)).status == 200


async def test_a_refused_password_change_changes_nothing(api, services, document):
    alice = await api.user("alice")
    ws = await notifications(api, alice)
    await still_open(ws)
    limit = services.settings.max_password_chars
    refusals: list[tuple[Any, int, str | None]] = [
        ({"current_password": "not my password", "new_password": NEW_PASSWORD}, 400, "wrong_password"),
        ({"current_password": "x" * (limit + 1), "new_password": NEW_PASSWORD}, 400, "wrong_password"),
        ({"current_password": PASSWORD, "new_password": "short"}, 400, "validation_error"),
        ({"current_password": PASSWORD, "new_password": "y" * (limit + 1)}, 400, "validation_error"),
        ({"current_password": PASSWORD}, 400, "validation_error"),
        ({"current_password": PASSWORD, "new_password": 12345678}, 400, "validation_error"),
        ({"current_password": PASSWORD, "new_password": NEW_PASSWORD, "more": 1}, 400, "validation_error"),
    ]
    for body, status, code in refusals:
        answer = await api.post(PASSWORD_PATH, body, token=alice.access)
        assert_error(answer, status, code)
        conforms(document, "post", PASSWORD_PATH, answer)
    wrong = await api.post(PASSWORD_PATH, refusals[0][0], token=alice.access)
    assert wrong.body["error"]["fields"] == {"current_password": "is wrong"}
    for bad in (None, alice.refresh, "garbage"):
        answer = await api.post(PASSWORD_PATH, {"current_password": PASSWORD, "new_password": NEW_PASSWORD}, token=bad)
        assert_error(answer, 401)
        conforms(document, "post", PASSWORD_PATH, answer)
    # The session lives on and the password is the old one.
    await still_open(ws)
    assert (await api.get(ME, token=alice.access)).status == 200
    assert (await sign_in(api, alice)).status == 200
    assert (await services.store.users.find_one({"_id": alice.id})).get("token_generation") is None


async def test_password_changes_are_throttled_with_sign_ins(cluster_factory, document):
    (node,) = await cluster_factory(1, login_failures_per_account=2)
    alice = await node.api.user("alice")
    for _ in range(2):
        assert_error(await change_password(node.api, alice, "wrong guess", NEW_PASSWORD), 400, "wrong_password")
    throttled = await change_password(node.api, alice, PASSWORD, NEW_PASSWORD)
    assert_error(throttled, 429, "too_many_attempts")
    conforms(document, "post", PASSWORD_PATH, throttled)
    # The same budget as sign-in's: the guesses through one count against the other.
    assert_error(await sign_in(node.api, alice), 429, "too_many_attempts")
    assert (await node.api.get(ME, token=alice.access)).status == 200  # nothing was revoked


# -- refresh token reuse --------------------------------------------------------------------------------


async def test_a_reused_refresh_token_closes_the_sockets_of_its_account(cluster_factory):
    n1, n2 = await cluster_factory(2, refresh_reuse_grace_s=0)  # every reuse a theft
    alice, bob = await n1.api.user("alice"), await n1.api.user("bob")
    cid = await make_conversation(n1.services, alice.id, bob.id)
    phone = await sign_in(n2.api, alice)
    sockets = [await join(n1.api, cid, alice), await notifications(n2.api, alice)]
    for ws in sockets:
        await still_open(ws)
    bob_socket = await notifications(n2.api, bob)

    rotated = await n1.api.post("/api/token/refresh/", {"refresh": alice.refresh})
    assert rotated.status == 200
    # The rotated token comes back: it leaked. Its family ends, and every socket of the account closes with
    # 4004: each client comes back with a fresh access token, which the leaked family cannot get.
    assert_error(await n2.api.post("/api/token/refresh/", {"refresh": alice.refresh}), 401, "token_revoked")
    for ws in sockets:
        assert await closed_within(ws) == 4004
    assert_error(await n1.api.post("/api/token/refresh/", {"refresh": rotated.body["refresh"]}), 401, "token_revoked")
    # The other sign-in is untouched: it refreshes, and its fresh token opens a socket again.
    renewed = await n1.api.post("/api/token/refresh/", {"refresh": phone.body["refresh"]})
    assert renewed.status == 200, renewed.body
    back = await ws_connect(n2.api, f"/ws/notifications/?token={renewed.body['access']}")
    await still_open(back)
    await still_open(bob_socket)


# -- access token expiry on an open socket ---------------------------------------------------------------

TTL_S = 2
GRACE_S = 1.0


def lasting(user: TestUser) -> TestUser:
    """The user with an access token that outlives the test (signed like the server's)."""
    return TestUser(user.id, user.username, token(user.id, ttl_s=600), user.refresh)


async def test_an_expired_token_closes_its_socket_4004_unless_renewed_in_band(cluster_factory):
    (node,) = await cluster_factory(1, access_token_ttl_s=TTL_S, socket_token_grace_s=GRACE_S)
    bob = lasting(await node.api.user("bob"))
    alice = await node.api.user("alice")  # signed in last: its short token is the one under test
    cid = await make_conversation(node.services, alice.id, bob.id)
    expires_at = node.services.tokens.verify_access(alice.access).expires_at

    forgotten = await join(node.api, cid, alice)  # never renewed
    renewed = await join(node.api, cid, alice)
    renewed_notifications = await notifications(node.api, alice)
    bob_socket = await join(node.api, cid, bob)
    for ws in (renewed, renewed_notifications):
        await ws.send({"type": "auth", "token": lasting(alice).access})
        await still_open(ws)  # frames are handled in order: the renewal is done

    assert await closed_within(forgotten, TTL_S + GRACE_S + 3) == 4004
    closed_at = time.time()
    # Not before the grace was over, and within the sweep's second after it.
    assert expires_at + GRACE_S - 0.1 <= closed_at <= expires_at + GRACE_S + 2.0, (expires_at, closed_at)

    # The renewed sockets outlive the first token, and work.
    await asyncio.sleep(max(0.0, expires_at + GRACE_S + 1.5 - time.time()))
    await renewed.send({"type": "message", "content": "still here"})
    assert (await renewed.recv_type("message"))["message"]["content"] == "still here"
    assert (await bob_socket.recv_type("message"))["message"]["content"] == "still here"
    await still_open(renewed_notifications)


async def test_a_frame_after_the_deadline_is_not_handled(cluster_factory):
    (node,) = await cluster_factory(1, access_token_ttl_s=TTL_S, socket_token_grace_s=0.0)
    bob = lasting(await node.api.user("bob"))
    alice = await node.api.user("alice")
    cid = await make_conversation(node.services, alice.id, bob.id)
    ws = await join(node.api, cid, alice)
    # Stop the node's sweep: the frame itself must find the deadline passed.
    node.services.connections.close_expired = lambda now: None  # type: ignore[method-assign]
    expires_at = node.services.tokens.verify_access(alice.access).expires_at
    await asyncio.sleep(max(0.0, expires_at + 0.2 - time.time()))
    await ws.send({"type": "message", "content": "too late"})
    assert await closed_within(ws) == 4004
    assert await history_ids(node.api, cid, bob) == []


# -- the auth frame's refusals ----------------------------------------------------------------------------


async def test_auth_frames_that_are_not_the_users_valid_access_token_close_the_socket(api, services):
    alice, bob = await api.user("alice"), await api.user("bob")
    cid = await make_conversation(services, alice.id, bob.id)
    cases: list[tuple[str, Any, int]] = [
        ("another user's token", bob.access, 4002),
        ("a refresh token", alice.refresh, 4002),
        ("garbage", "garbage", 4002),
        ("empty", "", 4002),
        ("expired", token(alice.id, ttl_s=-600), 4002),
        ("signed with another secret", token(alice.id, secret="another-secret-" + "z" * 40), 4002),
        ("a number", 12345, 4003),
        ("null", None, 4003),
        ("a list", [alice.access], 4003),
        ("too long", "x" * 4097, 4003),
    ]
    for name, value, code in cases:
        for opened in (lambda: join(api, cid, alice), lambda: notifications(api, alice)):
            ws = await opened()
            await ws.send({"type": "auth", "token": value})
            assert await closed_within(ws) == code, name
    for opened in (lambda: join(api, cid, alice), lambda: notifications(api, alice)):
        ws = await opened()
        await ws.send({"type": "auth"})
        assert await closed_within(ws) == 4003
        # A valid access token of the socket's user keeps it open, repeated or not.
        ws = await opened()
        for _ in range(2):
            await ws.send({"type": "auth", "token": token(alice.id, ttl_s=600, secret=TEST_SECRET)})
            await still_open(ws)


async def write_together(ws: WsClient, frames: list[dict[str, Any]]) -> None:
    """Write the frames in one write to the socket, so that the server reads them in one go."""
    protocol = ws.conn.protocol
    assert isinstance(protocol, tornado.websocket.WebSocketProtocol13)
    stream = protocol.stream
    parts: list[bytes] = []
    real_write = stream.write

    def collect(data: Any) -> asyncio.Future[None]:
        parts.append(bytes(data))
        return asyncio.get_running_loop().create_future()  # never awaited: the bytes leave below

    stream.write = collect  # type: ignore[method-assign,assignment]
    try:
        for frame in frames:
            protocol._write_frame(True, 0x1, orjson.dumps(frame))
    finally:
        stream.write = real_write  # type: ignore[method-assign]
    await real_write(b"".join(parts))


async def test_a_refused_auth_frame_closes_the_socket_before_the_frames_behind_it(api, services):
    """An invalid token read from the frame itself closes the socket at once: a ping written right behind
    it (same TCP segment) gets no pong, whatever the socket kind."""
    alice, bob = await api.user("alice"), await api.user("bob")
    cid = await make_conversation(services, alice.id, bob.id)
    for opened in (lambda: join(api, cid, alice), lambda: notifications(api, alice)):
        for refused in ("", "garbage", bob.access):
            ws = await opened()
            await write_together(ws, [{"type": "auth", "token": refused}, {"type": "ping"}])
            frames = []
            while (raw := await asyncio.wait_for(ws.conn.read_message(), WITHIN_S)) is not None:
                frames.append(orjson.loads(raw)["type"])
            assert "pong" not in frames, (refused[:10], frames)
            assert ws.conn.close_code == 4002, refused[:10]
