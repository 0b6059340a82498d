"""Authorization matrix: every REST endpoint and both sockets, for every kind of caller.

Callers: the owner of the objects (alice), the other participant of her conversation (bob), a stranger
(someone neither discover nor any like or match relates to alice), a discover candidate of hers, a user
alice blocked after matching, a former match alice unmatched, and four kinds of bad credentials
(no token, an expired token, a refresh token, the token of a deleted account). Each cell states the
status or close code the contract promises. Knowing an object's id is never enough to read or change it
(OWASP API1, broken object level authorization): non-participants get the same 404 as for an id that does
not exist, and a refused write leaves no trace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
import pytest

import services.accounts.liveness as services_accounts_liveness
from tests.support import PASSWORD, ApiClient, Response, TestUser, ws_connect
from tests.ws_helpers import PNG, conv_path, history_ids, token

pytestmark = pytest.mark.usefixtures("services")


@dataclass
class World:
    alice: TestUser
    bob: TestUser
    stranger: TestUser
    blocked: TestUser
    unmatched: TestUser
    deleted: TestUser
    cid: int  # alice and bob, open
    match_id: int
    blocked_cid: int  # alice and `blocked`, closed by alice's block
    unmatched_cid: int  # alice and `unmatched`, closed by alice's unmatch
    stranger_attachment: int  # uploaded by the stranger in a conversation of their own
    alice_photo: dict[str, Any]  # alice's only profile photo


async def matched(api: ApiClient, a: TestUser, b: TestUser) -> dict[str, Any]:
    assert (await api.post("/api/likes/", {"user_id": b.id}, token=a.access)).status == 201
    answer = await api.post("/api/likes/", {"user_id": a.id}, token=b.access)
    assert answer.status == 201 and answer.body["match"] is not None, answer.body
    match: dict[str, Any] = answer.body["match"]
    return match


async def build_world(api: ApiClient, services: Any) -> World:
    alice, bob, stranger, blocked, unmatched, deleted, friend = [
        await api.user(name) for name in ("alice", "bob", "stranger", "blocked", "unmatched", "deleted", "friend")
    ]
    # Into nonbinary people only, which alice (no gender stated) is not: neither is the other's candidate.
    narrowed = await api.patch("/api/users/me/", {"interested_in": ["nonbinary"]}, token=stranger.access)
    assert narrowed.status == 200, narrowed.body
    main = await matched(api, alice, bob)
    cid = main["conversation_id"]
    sent = await api.post(f"/api/conversations/{cid}/messages/", {"content": "hello bob"}, token=alice.access)
    assert sent.status == 201, sent.body

    blocked_match = await matched(api, alice, blocked)
    await api.post(
        f"/api/conversations/{blocked_match['conversation_id']}/messages/", {"content": "hi"}, token=blocked.access
    )
    assert (await api.post("/api/blocks/", {"user_id": blocked.id}, token=alice.access)).status in (200, 201)

    unmatched_match = await matched(api, alice, unmatched)
    ucid = unmatched_match["conversation_id"]
    await api.post(f"/api/conversations/{ucid}/messages/", {"content": "hi"}, token=unmatched.access)
    assert (await api.delete(f"/api/matches/{unmatched_match['id']}/", token=alice.access)).status == 204

    await matched(api, alice, deleted)
    await services.store.users.update_one({"_id": deleted.id}, {"$set": {"deleted": True}})
    # The likes above made this node remember the account as alive for ACCOUNT_CACHE_TTL_S: forget it,
    # as that much time passing would (test_an_account_deleted_while_signed_in... covers the wait).
    services.users.liveness.forget()

    friends = await matched(api, stranger, friend)
    upload = await api.post(
        f"/api/conversations/{friends['conversation_id']}/attachments/",
        body=PNG,
        headers={"Content-Type": "image/png"},
        token=stranger.access,
    )
    assert upload.status == 201, upload.body
    photo = await api.post("/api/users/me/photos/", body=PNG, token=alice.access)
    assert photo.status == 201, photo.body
    return World(
        alice,
        bob,
        stranger,
        blocked,
        unmatched,
        deleted,
        cid,
        main["id"],
        blocked_match["conversation_id"],
        ucid,
        upload.body["id"],
        photo.body,
    )


def expired_token(user: TestUser, secret: str) -> str:
    now = int(time.time())
    claims = {"user_id": user.id, "token_type": "access", "iat": now - 3600, "exp": now - 600, "jti": "e" * 32}
    return jwt.encode(claims, secret, algorithm="HS256")


def assert_envelope(r: Response, status: int, context: Any) -> None:
    assert r.status == status, (context, r.status, r.body)
    assert r.headers["Content-Type"].startswith("application/json"), context
    assert isinstance(r.body, dict) and set(r.body) == {"error"}, (context, r.body)
    assert isinstance(r.body["error"].get("code"), str), (context, r.body)


# -- bad credentials: every authenticated endpoint, both sockets ----------------------------------------


def every_endpoint(w: World) -> list[tuple[str, str, dict[str, Any]]]:
    """Every authenticated REST endpoint, aimed at alice's objects where it takes an id."""
    c = w.cid
    return [
        ("GET", "/api/users/me/", {}),
        ("PATCH", "/api/users/me/", {"json": {"bio": "pwned"}}),
        ("POST", "/api/users/me/password/", {"json": {"current_password": PASSWORD, "new_password": "pwned pwned"}}),
        ("DELETE", "/api/users/me/", {"json": {"password": PASSWORD}}),
        ("GET", "/api/users/me/export/", {}),
        ("PUT", "/api/users/me/picture/", {"body": PNG}),
        ("GET", "/api/users/me/photos/", {}),
        ("POST", "/api/users/me/photos/", {"body": PNG}),
        ("PATCH", "/api/users/me/photos/", {"json": {"order": [w.alice_photo["id"]]}}),
        ("DELETE", f"/api/users/me/photos/{w.alice_photo['id']}/", {}),
        ("GET", f"/api/users/{w.alice.id}/", {}),
        ("GET", "/api/discover/", {}),
        ("POST", "/api/likes/", {"json": {"user_id": w.alice.id}}),
        ("GET", "/api/likes/received/", {}),
        ("POST", "/api/passes/", {"json": {"user_id": w.alice.id}}),
        ("GET", "/api/matches/", {}),
        ("DELETE", f"/api/matches/{w.match_id}/", {}),
        ("GET", "/api/blocks/", {}),
        ("POST", "/api/blocks/", {"json": {"user_id": w.alice.id}}),
        ("DELETE", f"/api/blocks/{w.blocked.id}/", {}),
        ("GET", "/api/conversations/", {}),
        ("GET", f"/api/conversations/{c}/", {}),
        ("GET", f"/api/conversations/{c}/messages/", {}),
        ("POST", f"/api/conversations/{c}/messages/", {"json": {"content": "pwned"}}),
        ("PATCH", f"/api/conversations/{c}/messages/1/", {"json": {"content": "pwned"}}),
        ("DELETE", f"/api/conversations/{c}/messages/1/", {}),
        ("POST", f"/api/conversations/{c}/read/", {"json": {"message_id": 1}}),
        ("POST", f"/api/conversations/{c}/attachments/", {"body": PNG, "headers": {"Content-Type": "image/png"}}),
        ("GET", f"/api/conversations/{c}/mute/", {}),
        ("PUT", f"/api/conversations/{c}/mute/", {"json": {"until": None}}),
        ("DELETE", f"/api/conversations/{c}/mute/", {}),
        ("GET", "/api/users/me/notifications/", {}),
        ("PATCH", "/api/users/me/notifications/", {"json": {"messages": False}}),
        ("POST", "/api/reports/", {"json": {"user_id": w.bob.id, "reason": "spam"}}),
        *moderator_endpoints(w),
    ]


def moderator_endpoints(w: World) -> list[tuple[str, str, dict[str, Any]]]:
    """Every moderator endpoint, aimed at alice, her conversation and its first message."""
    return [
        ("GET", "/api/moderation/reports/", {}),
        ("GET", "/api/moderation/reports/1/", {}),
        ("POST", "/api/moderation/reports/1/resolve/", {"json": {"action": "dismissed"}}),
        ("POST", f"/api/moderation/users/{w.alice.id}/ban/", {"json": {"reason": "pwned"}}),
        ("POST", f"/api/moderation/users/{w.alice.id}/unban/", {"json": {"reason": "pwned"}}),
        ("DELETE", f"/api/moderation/messages/{w.cid}/1/", {}),
        ("GET", "/api/moderation/audit/", {}),
    ]


async def test_bad_credentials_are_401_everywhere_and_4000_or_4002_on_the_sockets(api, services):
    w = await build_world(api, services)
    secret = services.settings.jwt_secret
    credentials = {
        "no token": (None, 4000),
        "expired token": (expired_token(w.alice, secret), 4002),
        "refresh token": (w.alice.refresh, 4002),
        "token of a deleted account": (w.deleted.access, 4002),
        "deleted account, handmade fresh token": (token(w.deleted.id, secret=secret), 4002),
    }
    for name, (bad, close_code) in credentials.items():
        for method, path, kw in every_endpoint(w):
            r = await api.request(method, path, token=bad, **kw)
            assert_envelope(r, 401, (name, method, path))
        for path in (conv_path(w.cid, bad), "/ws/notifications/" + (f"?token={bad}" if bad else "")):
            ws = await ws_connect(api, path)
            assert (await ws.closed())[0] == close_code, (name, path)
    # Nothing was written by any of those requests.
    assert await history_ids(api, w.cid, w.alice) == [1]
    me = await api.get("/api/users/me/", token=w.alice.access)
    assert me.body["bio"] is None and me.body["profile_picture"] == w.alice_photo["url"]
    assert (await api.get("/api/users/me/photos/", token=w.alice.access)).body == [w.alice_photo]
    assert (await api.get("/api/matches/", token=w.bob.access)).body[0]["id"] == w.match_id
    assert [b["user"]["id"] for b in (await api.get("/api/blocks/", token=w.alice.access)).body] == [w.blocked.id]
    assert (await api.get(f"/api/conversations/{w.cid}/mute/", token=w.alice.access)).body["muted"] is False
    assert (await api.get("/api/users/me/notifications/", token=w.alice.access)).body["messages"] is True
    # Alice's password is still hers.
    assert (await api.post("/api/token/", {"username": w.alice.username, "password": PASSWORD})).status == 200
    # The deleted account cannot sign in for a new token either.
    signin = {"username": w.deleted.username, "password": PASSWORD}
    assert (await api.post("/api/token/", signin)).status == 401
    assert await services.store.reports.count_documents({}) == 0


async def test_an_account_deleted_while_signed_in_is_refused_within_the_cache_lifetime(api, services, monkeypatch):
    user = await api.user("leaving")
    assert (await api.get("/api/conversations/", token=user.access)).status == 200
    await services.store.users.update_one({"_id": user.id}, {"$set": {"deleted": True}})
    monkeypatch.setattr(services_accounts_liveness, "ACCOUNT_CACHE_TTL_S", 0.0)
    # The entry cached by the first request lives ACCOUNT_CACHE_TTL_S (30 s); drop it instead of waiting.
    services.users.liveness.forget()
    assert_envelope(await api.get("/api/conversations/", token=user.access), 401, "deleted")
    ws = await ws_connect(api, f"/ws/notifications/?token={user.access}")
    assert (await ws.closed())[0] == 4002


# -- roles: alice's objects ------------------------------------------------------------------------------


async def test_conversation_objects_answer_participants_only(api, services):
    w = await build_world(api, services)
    c = w.cid
    outsiders = {"stranger": w.stranger, "blocked": w.blocked, "unmatched": w.unmatched}
    unknown = 999_999_999
    for role, user in outsiders.items():
        for method, template, kw in (
            ("GET", "/api/conversations/{}/", {}),
            ("GET", "/api/conversations/{}/messages/", {}),
            ("GET", "/api/conversations/{}/messages/?after=0", {}),
            ("POST", "/api/conversations/{}/messages/", {"json": {"content": "pwned"}}),
            ("PATCH", "/api/conversations/{}/messages/1/", {"json": {"content": "pwned"}}),
            ("DELETE", "/api/conversations/{}/messages/1/", {}),
            ("POST", "/api/conversations/{}/read/", {"json": {"message_id": 1}}),
            ("POST", "/api/conversations/{}/attachments/", {"body": PNG, "headers": {"Content-Type": "image/png"}}),
            ("GET", "/api/conversations/{}/mute/", {}),
            ("PUT", "/api/conversations/{}/mute/", {"json": {"until": None}}),
            ("DELETE", "/api/conversations/{}/mute/", {}),
        ):
            r = await api.request(method, template.format(c), token=user.access, **kw)
            assert_envelope(r, 404, (role, method, template))
            # The same answer as for a conversation that does not exist: no existence oracle.
            same = await api.request(method, template.format(unknown), token=user.access, **kw)
            assert (same.status, same.body) == (r.status, r.body), (role, method, template)
        ws = await ws_connect(api, conv_path(c, user))
        assert (await ws.closed())[0] == 4001, role
        listed = await api.get("/api/conversations/", token=user.access)
        assert c not in [conv["id"] for conv in listed.body], role

    for role, user in {"owner": w.alice, "other participant": w.bob}.items():
        assert (await api.get(f"/api/conversations/{c}/", token=user.access)).status == 200, role
        assert (await api.get(f"/api/conversations/{c}/messages/", token=user.access)).status == 200, role
        assert (await api.post(f"/api/conversations/{c}/read/", {"message_id": 1}, token=user.access)).status == 200
        sent = await api.post(f"/api/conversations/{c}/messages/", {"content": f"from {role}"}, token=user.access)
        assert sent.status == 201, (role, sent.body)
        upload = await api.post(
            f"/api/conversations/{c}/attachments/", body=PNG, headers={"Content-Type": "image/png"}, token=user.access
        )
        assert upload.status == 201, (role, upload.body)
        muted = await api.put(f"/api/conversations/{c}/mute/", json={"until": None}, token=user.access)
        assert muted.status == 200 and muted.body["muted"] is True, (role, muted.body)
        assert (await api.delete(f"/api/conversations/{c}/mute/", token=user.access)).status == 204, role
        ws = await ws_connect(api, conv_path(c, user))
        assert (await ws.recv())["type"] == "status", role
        ws.close()
    # Only the participants' two messages were added.
    assert await history_ids(api, c, w.bob) == [1, 2, 3]
    # A message is edited or unsent by its sender only: the other participant is refused.
    for method, kw in (("PATCH", {"json": {"content": "pwned"}}), ("DELETE", {})):
        r = await api.request(method, f"/api/conversations/{c}/messages/1/", token=w.bob.access, **kw)
        assert_envelope(r, 403, method)
        assert r.error_code == "not_your_message", r.body
    edited = await api.patch(f"/api/conversations/{c}/messages/1/", {"content": "hello, bob"}, token=w.alice.access)
    assert edited.status == 200 and edited.body["content"] == "hello, bob", edited.body


async def test_former_participants_keep_history_but_cannot_write_or_listen(api, services):
    w = await build_world(api, services)
    for role, user, cid in (
        ("blocked", w.blocked, w.blocked_cid),
        ("blocker", w.alice, w.blocked_cid),
        ("unmatched", w.unmatched, w.unmatched_cid),
        ("unmatcher", w.alice, w.unmatched_cid),
    ):
        assert (await api.get(f"/api/conversations/{cid}/messages/", token=user.access)).status == 200, role
        sent = await api.post(f"/api/conversations/{cid}/messages/", {"content": "late"}, token=user.access)
        assert sent.status in (403, 404), (role, sent.status, sent.body)
        assert_envelope(sent, sent.status, role)
        upload = await api.post(
            f"/api/conversations/{cid}/attachments/", body=PNG, headers={"Content-Type": "image/png"}, token=user.access
        )
        assert upload.status in (403, 404), (role, upload.status)
        # Not even its sender edits or unsends a message of a closed conversation.
        for change, change_kw in (("PATCH", {"json": {"content": "late"}}), ("DELETE", {})):
            changed = await api.request(change, f"/api/conversations/{cid}/messages/1/", token=user.access, **change_kw)
            assert_envelope(changed, 404, (role, change))
        # Nor mutes a conversation that is closed.
        for method, kw in (("GET", {}), ("PUT", {"json": {"until": None}}), ("DELETE", {})):
            mute = await api.request(method, f"/api/conversations/{cid}/mute/", token=user.access, **kw)
            assert_envelope(mute, 404, (role, method, "mute"))
        ws = await ws_connect(api, conv_path(cid, user))
        assert (await ws.closed())[0] == 4001, role
        assert await history_ids(api, cid, user) == [1], role


async def test_profiles_matches_and_blocks_by_role(api, services):
    w = await build_world(api, services)
    profile = f"/api/users/{w.alice.id}/"
    # Status and last_seen only for someone sharing an open conversation; a blocked user sees nothing.
    seen_by_bob = await api.get(profile, token=w.bob.access)
    assert seen_by_bob.status == 200 and "status" in seen_by_bob.body
    candidate = await api.user("candidate")  # suits alice's preferences (none) and she suits theirs
    for role, user in {"candidate": candidate, "unmatched": w.unmatched}.items():
        seen = await api.get(profile, token=user.access)
        assert seen.status == 200 and "status" not in seen.body and "last_seen" not in seen.body, (role, seen.body)
    # Anyone who could not meet her gets the answer for an id nobody has, and she sees nothing of them.
    for role, reader, target in (("stranger", w.stranger, w.alice.id), ("of the stranger", w.alice, w.stranger.id)):
        hidden = await api.get(f"/api/users/{target}/", token=reader.access)
        missing = await api.get("/api/users/999999999/", token=reader.access)
        assert_envelope(hidden, 404, role)
        assert (hidden.status, hidden.body) == (missing.status, missing.body), role
    assert_envelope(await api.get(profile, token=w.blocked.access), 404, "blocked")
    assert_envelope(await api.get(f"/api/users/{w.blocked.id}/", token=w.alice.access), 404, "blocker")
    # Private fields never leak through a public profile.
    assert not {"email", "birthdate", "password_hash", "location", "age_min", "age_max"} & set(seen_by_bob.body)

    # A blocked user cannot like or pass their way back, and does not see alice in discover.
    like = await api.post("/api/likes/", {"user_id": w.alice.id}, token=w.blocked.access)
    assert like.status in (400, 403, 404), like.body
    discover = await api.get("/api/discover/", token=w.blocked.access)
    assert w.alice.id not in [u["id"] for u in discover.body["results"]]

    # Match and block objects of alice's: someone else's id is "not found" and changes nothing.
    for role, user in {"stranger": w.stranger, "blocked": w.blocked, "unmatched": w.unmatched}.items():
        assert_envelope(await api.delete(f"/api/matches/{w.match_id}/", token=user.access), 404, role)
        assert w.match_id not in [m["id"] for m in (await api.get("/api/matches/", token=user.access)).body]
        unblock = await api.delete(f"/api/blocks/{w.blocked.id}/", token=user.access)
        assert unblock.status in (204, 404), (role, unblock.status)
        assert w.blocked.id not in [b["user"]["id"] for b in (await api.get("/api/blocks/", token=user.access)).body]
        received = await api.get("/api/likes/received/", token=user.access)
        assert received.status == 200
    assert_envelope(await api.get(profile, token=w.blocked.access), 404, "still blocked")
    assert [m["id"] for m in (await api.get("/api/matches/", token=w.bob.access)).body] == [w.match_id]

    # The other participant may end the match: then neither of them can write or listen.
    assert (await api.delete(f"/api/matches/{w.match_id}/", token=w.bob.access)).status == 204
    ws = await ws_connect(api, conv_path(w.cid, w.alice))
    assert (await ws.closed())[0] == 4001


async def test_object_ids_of_other_conversations_are_refused(api, services):
    w = await build_world(api, services)
    # An attachment the stranger uploaded elsewhere cannot be attached here by id.
    for user in (w.alice, w.bob):
        r = await api.post(
            f"/api/conversations/{w.cid}/messages/",
            {"content": "look", "attachment_id": w.stranger_attachment},
            token=user.access,
        )
        assert r.status in (400, 404) and r.error_code == "attachment_not_found", r.body
    alice_ws = await ws_connect(api, conv_path(w.cid, w.alice))
    await alice_ws.recv()
    await alice_ws.send({"type": "message", "content": "look", "attachment_id": w.stranger_attachment})
    assert (await alice_ws.recv_type("error"))["code"] == "attachment_not_found"
    # A read receipt for an id that only exists in another conversation is not found here.
    read = await api.post(f"/api/conversations/{w.cid}/read/", {"message_id": 5}, token=w.bob.access)
    assert read.status in (400, 404), read.body
    assert await history_ids(api, w.cid, w.alice) == [1]


async def test_photos_are_changed_by_their_owner_only(api, services):
    w = await build_world(api, services)
    photo_id = w.alice_photo["id"]
    unknown = 999_999_999
    everyone = {"other participant": w.bob, "stranger": w.stranger, "blocked": w.blocked, "unmatched": w.unmatched}
    for role, user in everyone.items():
        # The photo routes are the caller's own: another user's photo id is "not found", like no photo at all.
        for method, path, kw, missing_path, missing_kw in (
            ("DELETE", f"/api/users/me/photos/{photo_id}/", {}, f"/api/users/me/photos/{unknown}/", {}),
            (
                "PATCH",
                "/api/users/me/photos/",
                {"json": {"order": [photo_id]}},
                "/api/users/me/photos/",
                {"json": {"order": [unknown]}},
            ),
        ):
            r = await api.request(method, path, token=user.access, **kw)
            assert_envelope(r, 404, (role, method))
            assert r.error_code == "photo_not_found", (role, method, r.body)
            same = await api.request(method, missing_path, token=user.access, **missing_kw)
            assert (same.status, same.body) == (r.status, r.body), (role, method)
        assert (await api.get("/api/users/me/photos/", token=user.access)).body == [], role
    # The public profile shows the photo's URL, and nothing was changed.
    assert (await api.get(f"/api/users/{w.alice.id}/", token=w.bob.access)).body["photos"] == [w.alice_photo["url"]]
    assert (await api.get("/api/users/me/photos/", token=w.alice.access)).body == [w.alice_photo]


# -- reports and moderators ------------------------------------------------------------------------------


async def test_reports_answer_who_has_seen_the_user_and_moderator_endpoints_moderators_only(api, services):
    w = await build_world(api, services)
    # Reporting alice: a stranger gets the answer for an id nobody has; a former match and the user she
    # blocked have seen her and may.
    unknown = 999_999_999
    refused = await api.post("/api/reports/", {"user_id": w.alice.id, "reason": "spam"}, token=w.stranger.access)
    missing = await api.post("/api/reports/", {"user_id": unknown, "reason": "spam"}, token=w.stranger.access)
    assert_envelope(refused, 404, "stranger reports")
    assert (refused.status, refused.body) == (missing.status, missing.body)
    assert await services.store.reports.count_documents({}) == 0
    for role, user in {"unmatched": w.unmatched, "blocked": w.blocked}.items():
        filed = await api.post("/api/reports/", {"user_id": w.alice.id, "reason": "spam"}, token=user.access)
        assert filed.status == 201, (role, filed.body)

    # Moderator endpoints: 403 for every user without the role, whatever their relation to the target.
    report_id = (await services.store.reports.find_one({}))["_id"]
    plain = {
        "owner": w.alice,
        "other participant": w.bob,
        "stranger": w.stranger,
        "blocked": w.blocked,
        "unmatched": w.unmatched,
    }
    for role, user in plain.items():
        for method, path, kw in moderator_endpoints(w):
            r = await api.request(
                method, path.replace("/reports/1/", f"/reports/{report_id}/"), token=user.access, **kw
            )
            assert_envelope(r, 403, (role, method, path))
            assert r.error_code == "not_a_moderator", (role, path, r.body)
    # Nothing changed: the reports are open, alice is not banned, the message is there, nothing audited.
    assert await services.store.reports.count_documents({"status": "open"}) == 2
    assert not (await services.store.users.find_one({"_id": w.alice.id})).get("banned")
    assert await history_ids(api, w.cid, w.alice) == [1]
    assert await services.store.audit_log.count_documents({}) == 0


async def test_a_banned_user_is_refused_everywhere(api, services):
    w = await build_world(api, services)
    moderator = await api.user("moderator")
    await services.store.users.update_one({"_id": moderator.id}, {"$set": {"role": "moderator"}})
    signed_in = await api.post("/api/token/", {"username": moderator.username, "password": PASSWORD})
    banned = await api.post(
        f"/api/moderation/users/{w.bob.id}/ban/", {"reason": "matrix"}, token=signed_in.body["access"]
    )
    assert banned.status == 200, banned.body
    for method, path, kw in every_endpoint(w):
        r = await api.request(method, path, token=w.bob.access, **kw)
        assert_envelope(r, 401, ("banned", method, path))
    for path in (conv_path(w.cid, w.bob), f"/ws/notifications/?token={w.bob.access}"):
        ws = await ws_connect(api, path)
        assert (await ws.closed())[0] == 4002, path
    signin = await api.post("/api/token/", {"username": w.bob.username, "password": PASSWORD})
    assert_envelope(signin, 401, "banned sign-in")
