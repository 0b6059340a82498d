"""Reports, moderators, bans and the audit log, against a real server (services/moderation).

Reports: the flow and its evidence (copied with context, surviving the message's removal and its sender's
account), the block that comes with a report, silence towards the reported user, who may report, bodies
refused, the per-user budget. Moderators: every endpoint refuses no token (401), a plain user, a forged
claim and a revoked moderator (403); the queue's filters and paging; resolving; removing a message for
everyone; the audit log. Bans: sockets closed, conversations closed, the user gone from discover, likes and
matches, sign-in refused, unban. The grant command: against a real `server.py` on the embedded store,
while it runs and while it does not.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest

from handlers import openapi
from services.core.config import Settings
from services.moderation.audit import command_line_actor
from services.moderation.reports import CONTEXT_MESSAGES
from services.moderation.roles import set_moderator
from services.storage.documents import MODERATOR_ROLE
from tests.processes import ROOT, ServerProcess
from tests.support import PASSWORD, TEST_SECRET, ApiClient, PortClient, Response, TestUser, assert_error, conforms
from tests.ws_helpers import PNG, history, join, notifications

pytestmark = pytest.mark.usefixtures("services")

REPORTS = "/api/reports/"
QUEUE = "/api/moderation/reports/"
AUDIT = "/api/moderation/audit/"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"message_rate": 1000.0, "message_burst": 1000}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi.build_document(Settings())


# -- helpers --------------------------------------------------------------------------------------------


async def matched(api: ApiClient, a: TestUser, b: TestUser) -> dict[str, Any]:
    assert (await api.post("/api/likes/", {"user_id": b.id}, token=a.access)).status == 201
    answer = await api.post("/api/likes/", {"user_id": a.id}, token=b.access)
    assert answer.status == 201 and answer.body["match"] is not None, answer.body
    match: dict[str, Any] = answer.body["match"]
    return match


async def send(api: ApiClient, cid: int, user: TestUser, content: str, **extra: Any) -> int:
    sent = await api.post(f"/api/conversations/{cid}/messages/", {"content": content, **extra}, token=user.access)
    assert sent.status == 201, sent.body
    return int(sent.body["id"])


async def sign_in(api: ApiClient, user: TestUser) -> Response:
    return await api.post("/api/token/", {"username": user.username, "password": PASSWORD})


async def make_moderator(api: ApiClient, services: Any, prefix: str = "mod") -> TestUser:
    """A user granted the role as `server.py grant-moderator` grants it, signed in afresh (the new token
    carries the claim)."""
    user = await api.user(prefix)
    granted = await set_moderator(services.store, services.moderation.audit, user.username, True, command_line_actor())
    assert granted is not None
    tokens = await sign_in(api, user)
    assert tokens.status == 200, tokens.body
    return TestUser(user.id, user.username, tokens.body["access"], tokens.body["refresh"])


async def report(api: ApiClient, reporter: TestUser, user_id: int, reason: str = "harassment", **body: Any) -> Response:
    return await api.post(REPORTS, {"user_id": user_id, "reason": reason, **body}, token=reporter.access)


def moderator_endpoints(report_id: int, user_id: int, cid: int) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("GET", QUEUE, {}),
        ("GET", f"{QUEUE}{report_id}/", {}),
        ("POST", f"{QUEUE}{report_id}/resolve/", {"json": {"action": "dismissed"}}),
        ("POST", f"/api/moderation/users/{user_id}/ban/", {"json": {"reason": "x"}}),
        ("POST", f"/api/moderation/users/{user_id}/unban/", {"json": {"reason": "x"}}),
        ("DELETE", f"/api/moderation/messages/{cid}/1/", {}),
        ("GET", AUDIT, {}),
    ]


# -- reports ---------------------------------------------------------------------------------------------


async def test_a_report_copies_the_messages_with_context_and_blocks_at_once(api, services, document):
    alice, bob = await api.user("alice"), await api.user("bob")
    cid = (await matched(api, alice, bob))["conversation_id"]
    for n in range(1, 13):
        await send(api, cid, bob, f"bob says {n}")
    upload = await api.post(
        f"/api/conversations/{cid}/attachments/", body=PNG, headers={"Content-Type": "image/png"}, token=bob.access
    )
    assert upload.status == 201, upload.body
    pictured = await send(api, cid, bob, "look", attachment_id=upload.body["id"])
    reply = await send(api, cid, alice, "stop\u202e it")
    sockets = [await join(api, cid, alice), await join(api, cid, bob)]

    filed = await report(
        api, alice, bob.id, message_ids=[7, pictured, 7], note="  he keeps\u200b writing\r\nat night  "
    )
    assert filed.status == 201, filed.body
    conforms(document, "post", REPORTS, filed)
    assert filed.body["user_id"] == bob.id and filed.body["reason"] == "harassment"
    assert filed.body["message_ids"] == [7, pictured]
    assert filed.body["note"] == "he keeps writing\nat night"  # controls and invisible characters removed
    report_id = filed.body["id"]

    # The block came with it: the conversation closed for both, as a block closes it.
    for ws in sockets:
        assert (await ws.closed())[0] == 4001
    blocks = await api.get("/api/blocks/", token=alice.access)
    assert [b["user"]["id"] for b in blocks.body] == [bob.id]
    assert (await api.get("/api/matches/", token=alice.access)).body == []

    # The evidence: the two reported messages and up to 5 messages either side of each, as stored then.
    stored = await services.store.reports.find_one({"_id": report_id})
    copied = {e["message_id"]: e for e in stored["evidence"]}
    assert sorted(copied) == list(range(7 - CONTEXT_MESSAGES, reply + 1))
    assert [m for m, e in copied.items() if e["reported"]] == [7, pictured]
    assert copied[7]["content"] == "bob says 7" and copied[7]["sender_id"] == bob.id
    assert copied[reply]["content"] == "stop it" and copied[reply]["sender_id"] == alice.id
    attachment = copied[pictured]["attachment"]
    assert attachment["content_type"] == "image/png" and attachment["width"] == 1 and attachment["size"] > 0
    file_url = upload.body["url"]

    # A moderator removes the messages, and the account is deleted with its files: the report keeps them.
    moderator = await make_moderator(api, services)
    for message_id in (7, pictured):
        removed = await api.delete(f"/api/moderation/messages/{cid}/{message_id}/", token=moderator.access)
        assert removed.status == 204, removed.body
    page = await history(api, cid, alice, "?limit=100")
    shown = {m["id"]: m for m in page.body["results"]}
    assert shown[7]["content"] == "" and shown[7]["deleted"] is True
    assert shown[pictured]["attachment"] is None
    assert (await api.client.fetch(file_url.split(str(api.port), 1)[1], raise_error=False)).code == 404
    await services.store.users.update_one({"_id": bob.id}, {"$set": {"deleted": True}})

    detail = await api.get(f"{QUEUE}{report_id}/", token=moderator.access)
    assert detail.status == 200, detail.body
    conforms(document, "get", QUEUE + "{report_id}/", detail)
    body = detail.body
    assert body["reported"] == {
        "id": bob.id,
        "username": bob.username,
        "profile_picture": None,
        "deleted": True,
        "banned": False,
    }
    assert body["reporter"]["id"] == alice.id and body["note"] == "he keeps writing\nat night"
    assert body["conversation_id"] == cid and body["message_ids"] == [7, pictured]
    messages = {m["message_id"]: m for m in body["messages"]}
    assert messages[7]["content"] == "bob says 7" and messages[7]["deleted_at"] is None
    assert messages[pictured]["attachment"]["url"] == file_url  # where it was: the file itself is gone
    assert body["reports_against_reported"] == 1


async def test_the_reported_user_is_told_nothing(api, services):
    alice, bob = await api.user("alice"), await api.user("bob")
    cid = (await matched(api, alice, bob))["conversation_id"]
    await send(api, cid, bob, "hello")
    bob_notifications = await notifications(api, bob)
    assert (await report(api, alice, bob.id, "spam", message_ids=[1])).status == 201
    # On bob's notifications socket only the end of the match, the frame an unmatch sends too; nothing
    # in anything bob can read says "report".
    frames = await bob_notifications.silent(0.5)
    assert [f["notification"]["type"] for f in frames] == ["match_ended"]
    assert set(frames[0]["notification"]) == {"type", "conversation_id", "match_id", "user_id", "timestamp"}
    assert frames[0]["notification"]["user_id"] == alice.id
    for path in (
        "/api/users/me/",
        "/api/blocks/",
        "/api/matches/",
        "/api/likes/received/",
        "/api/conversations/",
        f"/api/conversations/{cid}/",
        f"/api/conversations/{cid}/messages/",
    ):
        seen = await api.get(path, token=bob.access)
        assert seen.status == 200, (path, seen.body)
        assert b"report" not in orjson.dumps(seen.body), (path, seen.body)
    assert_error(await api.get(QUEUE, token=bob.access), 403, "not_a_moderator")
    # As after any block: alice's profile is hidden from bob, as a missing one.
    assert_error(await api.get(f"/api/users/{alice.id}/", token=bob.access), 404)


async def test_only_someone_who_has_seen_the_user_may_report_them(api, services):
    alice = await api.user("alice")
    stranger = await api.user("stranger")
    # Into nonbinary people only, which alice is not: neither is the other's discover candidate.
    assert (await api.patch("/api/users/me/", {"interested_in": ["nonbinary"]}, token=stranger.access)).status == 200
    refused = await report(api, stranger, alice.id)
    missing = await report(api, stranger, 999_999_999)
    assert_error(refused, 404, "user_not_found")
    assert (refused.status, refused.body) == (missing.status, missing.body)
    assert await services.store.reports.count_documents({}) == 0
    assert await services.store.blocks.count_documents({}) == 0

    candidate, liker, former = await api.user("candidate"), await api.user("liker"), await api.user("former")
    assert (await api.post("/api/likes/", {"user_id": alice.id}, token=liker.access)).status == 201
    match = await matched(api, alice, former)
    assert (await api.delete(f"/api/matches/{match['id']}/", token=alice.access)).status == 204
    for reporter in (candidate, liker, former):
        assert (await report(api, reporter, alice.id, "spam")).status == 201, reporter.username
    # Alice, liked by `liker`, may report them back; and nobody reports themselves.
    assert (await report(api, alice, liker.id, "scam")).status == 201
    assert_error(await report(api, alice, alice.id), 400, "self_target")


async def test_report_bodies_are_validated_and_refused_ones_store_nothing(api, services):
    alice, bob, carol = await api.user("alice"), await api.user("bob"), await api.user("carol")
    cid = (await matched(api, alice, bob))["conversation_id"]
    other = (await matched(api, alice, carol))["conversation_id"]
    await send(api, cid, bob, "one")
    mine = await send(api, cid, alice, "two")
    for n in range(5):
        await send(api, other, carol, f"carol {n}")  # ids 1-5 there; only 1 and 2 exist between alice and bob

    for body, status, code, field in (
        ({"user_id": bob.id, "reason": "rudeness"}, 400, "validation_error", "reason"),
        ({"user_id": bob.id}, 400, "validation_error", "reason"),
        ({"user_id": bob.id, "reason": "spam", "message_ids": list(range(1, 12))}, 400, "validation_error", None),
        ({"user_id": bob.id, "reason": "spam", "message_ids": ["1"]}, 400, "validation_error", None),
        ({"user_id": bob.id, "reason": "spam", "note": "x" * 1001}, 400, "validation_error", "note"),
        ({"user_id": bob.id, "reason": "spam", "extra": 1}, 400, "validation_error", "extra"),
        ({"user_id": "2", "reason": "spam"}, 400, "validation_error", "user_id"),
        ({"user_id": bob.id, "reason": "spam", "message_ids": [5]}, 404, "message_not_found", "message_ids"),
        ({"user_id": bob.id, "reason": "spam", "message_ids": [mine]}, 400, "not_their_message", "message_ids"),
        ({"user_id": carol.id, "reason": "spam", "message_ids": [6]}, 404, "message_not_found", "message_ids"),
    ):
        refused = await api.post(REPORTS, body, token=alice.access)
        error = assert_error(refused, status, code)
        if field is not None:
            assert any(k.startswith(field) for k in error.get("fields", {})), (body, error)
    for raw in (b"{", b"[]", b"", b'"spam"'):
        assert_error(await api.post(REPORTS, body=raw, token=alice.access), 400, "invalid_json")
    # A note is counted after the invisible characters go: 1000 visible characters and some invisible pass.
    assert await services.store.reports.count_documents({}) == 0
    assert await services.store.blocks.count_documents({}) == 0
    assert (await api.get(f"/api/conversations/{cid}/", token=bob.access)).body["status"] == "open"
    accepted = await report(api, alice, bob.id, "other", note="y" * 990 + "\u200b" * 10)
    assert accepted.status == 201 and accepted.body["note"] == "y" * 990


@pytest.mark.parametrize("settings_overrides", [{"reports_per_day": 3}])
async def test_reports_are_budgeted_per_reporter(api, services):
    alice, bob, carol = await api.user("alice"), await api.user("bob"), await api.user("carol")
    for target in (bob, carol, bob):
        assert (await report(api, alice, target.id, "spam")).status == 201
    refused = await report(api, alice, carol.id, "spam")
    assert_error(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) >= 1
    assert await services.store.reports.count_documents({}) == 3
    # Another reporter has a budget of their own.
    assert (await report(api, bob, carol.id, "spam")).status == 201


# -- moderators ------------------------------------------------------------------------------------------


async def test_moderator_endpoints_refuse_everyone_but_a_current_moderator(api, services):
    alice, bob = await api.user("alice"), await api.user("bob")
    cid = (await matched(api, alice, bob))["conversation_id"]
    await send(api, cid, bob, "hi")
    report_id = (await report(api, alice, bob.id, "spam", message_ids=[1])).body["id"]
    moderator = await make_moderator(api, services)
    claims = jwt.decode(moderator.access, TEST_SECRET, algorithms=["HS256"])
    assert claims["role"] == MODERATOR_ROLE
    assert "role" not in jwt.decode(alice.access, TEST_SECRET, algorithms=["HS256"])
    now = int(dt.datetime.now(dt.UTC).timestamp())
    forged_claim = jwt.encode(
        {
            "user_id": alice.id,
            "token_type": "access",
            "iat": now,
            "exp": now + 600,
            "jti": "f" * 32,
            "role": "moderator",
        },
        TEST_SECRET,
        algorithm="HS256",
    )
    endpoints = moderator_endpoints(report_id, bob.id, cid)
    for name, token, status in (
        ("no token", None, 401),
        ("refresh token", moderator.refresh, 401),
        ("plain user", alice.access, 403),
        ("role claimed by a plain account", forged_claim, 403),
    ):
        for method, path, kw in endpoints:
            refused = await api.request(method, path, token=token, **kw)
            assert_error(refused, status)
            if status == 403:
                assert refused.error_code == "not_a_moderator", (name, path)
    # A plain user's malformed body is refused as not a moderator's, not read.
    assert_error(await api.post(f"/api/moderation/users/{bob.id}/ban/", body=b"{", token=alice.access), 403)
    # Nothing was changed by those requests.
    assert (await services.store.reports.find_one({"_id": report_id}))["status"] == "open"
    assert not (await services.store.users.find_one({"_id": bob.id})).get("banned")
    assert await services.store.audit_log.count_documents({"action": {"$ne": "moderator_granted"}}) == 0

    assert (await api.get(QUEUE, token=moderator.access)).status == 200
    # Revoked: the token still claims the role, the account no longer holds it.
    await set_moderator(services.store, services.moderation.audit, moderator.username, False, command_line_actor())
    for method, path, kw in endpoints:
        assert_error(await api.request(method, path, token=moderator.access, **kw), 403, "not_a_moderator")
    refreshed = await api.post("/api/token/refresh/", {"refresh": moderator.refresh})
    assert refreshed.status == 200 and "role" not in jwt.decode(refreshed.body["access"], TEST_SECRET, ["HS256"])


async def test_the_queue_filters_orders_and_pages(api, services, document):
    reporters = [await api.user("reporter") for _ in range(3)]
    reported = [await api.user("reported") for _ in range(2)]
    filed = []
    for n, (who, whom, reason) in enumerate(
        [(0, 0, "spam"), (1, 0, "scam"), (2, 1, "spam"), (0, 1, "hate"), (1, 1, "spam")]
    ):
        answer = await report(api, reporters[who], reported[whom].id, reason, note=f"report {n}")
        assert answer.status == 201, answer.body
        filed.append(answer.body["id"])
    moderator = await make_moderator(api, services)

    async def ids(query: str) -> list[int]:
        page = await api.get(QUEUE + query, token=moderator.access)
        assert page.status == 200, page.body
        conforms(document, "get", QUEUE, page)
        return [r["id"] for r in page.body["results"]]

    assert await ids("") == filed[::-1]
    assert await ids("?order=oldest") == filed
    assert await ids("?reason=spam") == [filed[4], filed[2], filed[0]]
    assert await ids(f"?user_id={reported[0].id}") == [filed[1], filed[0]]
    assert await ids(f"?user_id={reported[1].id}&reason=spam&order=oldest") == [filed[2], filed[4]]
    resolved = await api.post(f"{QUEUE}{filed[1]}/resolve/", {"action": "dismissed"}, token=moderator.access)
    assert resolved.status == 200, resolved.body
    assert await ids("?status=resolved") == [filed[1]]
    assert await ids("?status=open&order=oldest") == [filed[0], *filed[2:]]
    row = (await api.get(QUEUE + "?status=resolved", token=moderator.access)).body["results"][0]
    assert row["reporter"]["id"] == reporters[1].id and row["reported"]["username"] == reported[0].username
    assert row["message_count"] == 0 and "messages" not in row and row["resolution"]["action"] == "dismissed"

    # Paging: two at a time, each order with its own cursors.
    for order, expected in (("newest", filed[::-1]), ("oldest", filed)):
        seen: list[int] = []
        query = f"?order={order}&limit=2"
        while True:
            page = await api.get(QUEUE + query, token=moderator.access)
            seen += [r["id"] for r in page.body["results"]]
            if page.body["next_cursor"] is None:
                break
            query = f"?order={order}&limit=2&cursor={page.body['next_cursor']}"
        assert seen == expected, order
    first = await api.get(QUEUE + "?limit=1", token=moderator.access)
    for bad in ("?cursor=nonsense", f"?order=oldest&cursor={first.body['next_cursor']}"):
        assert_error(await api.get(QUEUE + bad, token=moderator.access), 400, "invalid_cursor")
    for bad in ("?status=closed", "?reason=rudeness", "?order=sideways", "?limit=0", "?limit=101", "?user_id=x"):
        assert_error(await api.get(QUEUE + bad, token=moderator.access), 400)
    assert_error(await api.get(f"{QUEUE}999999999/", token=moderator.access), 404, "report_not_found")


async def test_resolving_starts_the_retention_and_every_action_is_audited(api, services, document):
    alice, bob = await api.user("alice"), await api.user("bob")
    report_id = (await report(api, alice, bob.id, "impersonation")).body["id"]
    moderator = await make_moderator(api, services)
    assert (await api.get(f"{QUEUE}{report_id}/", token=moderator.access)).status == 200
    for body in ({"action": "ignored"}, {"action": "dismissed", "note": 5}, {"action": "warned", "x": 1}):
        assert_error(await api.post(f"{QUEUE}{report_id}/resolve/", body, token=moderator.access), 400)
    resolved = await api.post(
        f"{QUEUE}{report_id}/resolve/", {"action": "warned", "note": "first\u202e warning"}, token=moderator.access
    )
    assert resolved.status == 200, resolved.body
    conforms(document, "post", QUEUE + "{report_id}/resolve/", resolved)
    resolution = resolved.body["resolution"]
    assert resolved.body["status"] == "resolved"
    assert (resolution["action"], resolution["note"], resolution["moderator_id"]) == (
        "warned",
        "first warning",
        moderator.id,
    )
    again = await api.post(f"{QUEUE}{report_id}/resolve/", {"action": "dismissed"}, token=moderator.access)
    assert_error(again, 409, "report_resolved")
    stored = await services.store.reports.find_one({"_id": report_id})
    days = services.settings.report_retention_days
    kept = stored["expires_at"] - stored["resolution"]["at"]
    assert kept == dt.timedelta(days=days)

    audit = await api.get(AUDIT, token=moderator.access)
    assert audit.status == 200, audit.body
    conforms(document, "get", AUDIT, audit)
    entries = audit.body["results"]
    assert [e["action"] for e in entries] == ["report_resolved", "report_viewed", "moderator_granted"]
    resolved_entry, viewed, granted = entries
    assert resolved_entry["actor_id"] == moderator.id and resolved_entry["actor"] == moderator.username
    assert resolved_entry["target_type"] == "report" and resolved_entry["target_id"] == report_id
    assert resolved_entry["user_id"] == bob.id and resolved_entry["note"] == "first warning"
    assert viewed["target_id"] == report_id and viewed["user_id"] == bob.id
    assert granted["actor_id"] is None and granted["actor"].startswith("command line")
    assert granted["user_id"] == moderator.id
    oldest = await api.get(AUDIT + "?order=oldest&limit=1", token=moderator.access)
    assert [e["action"] for e in oldest.body["results"]] == ["moderator_granted"] and oldest.body["next_cursor"]
    about_bob = await api.get(f"{AUDIT}?user_id={bob.id}", token=moderator.access)
    assert [e["action"] for e in about_bob.body["results"]] == ["report_resolved", "report_viewed"]


async def test_a_moderator_removes_a_message_of_an_open_conversation_for_everyone(api, services, document):
    alice, bob = await api.user("alice"), await api.user("bob")
    cid = (await matched(api, alice, bob))["conversation_id"]
    upload = await api.post(
        f"/api/conversations/{cid}/attachments/", body=PNG, headers={"Content-Type": "image/png"}, token=bob.access
    )
    first = await send(api, cid, bob, "something awful", attachment_id=upload.body["id"])
    await send(api, cid, alice, "what?")
    watchers = [await join(api, cid, alice), await join(api, cid, bob)]
    moderator = await make_moderator(api, services)
    removed = await api.delete(f"/api/moderation/messages/{cid}/{first}/", token=moderator.access)
    assert removed.status == 204 and not removed.body
    conforms(document, "delete", "/api/moderation/messages/{conversation_id}/{message_id}/", removed)
    for ws in watchers:
        frame = await ws.recv_type("message_deleted")
        assert frame["message_id"] == first and frame["message"]["content"] == ""
        assert frame["message"]["deleted"] is True and frame["message"]["attachment"] is None
    stored = await services.store.messages.find_one({"conversation_id": cid, "seq": first})
    assert stored["content"] == "" and "attachment_id" not in stored and "unsend_pending" not in stored
    assert await services.store.attachments.count_documents({"_id": upload.body["id"]}) == 0
    # Repeated: still 204, nothing more published. Unknown ids: 404.
    assert (await api.delete(f"/api/moderation/messages/{cid}/{first}/", token=moderator.access)).status == 204
    assert await watchers[0].silent(0.3) == []
    for path, code in (
        (f"/api/moderation/messages/{cid}/99/", "message_not_found"),
        ("/api/moderation/messages/999999999/1/", "conversation_not_found"),
        (f"/api/moderation/messages/{cid}/999999999999999/", "message_not_found"),
    ):
        assert_error(await api.delete(path, token=moderator.access), 404, code)
    # The conversation goes on.
    assert await send(api, cid, alice, "still here") > first
    entry = (await api.get(AUDIT + "?limit=1", token=moderator.access)).body["results"][0]
    assert entry["action"] == "message_removed" and entry["conversation_id"] == cid
    assert entry["target_id"] == first and entry["user_id"] == bob.id


# -- bans ------------------------------------------------------------------------------------------------


async def test_a_ban_closes_everything_and_hides_the_user_until_unbanned(api, services, document):
    bob = await api.user("bob")
    carol, dave, erin = await api.user("carol"), await api.user("dave"), await api.user("erin")
    moderator = await make_moderator(api, services)
    cid = (await matched(api, carol, bob))["conversation_id"]
    await send(api, cid, bob, "hi carol")
    assert (await api.post("/api/likes/", {"user_id": dave.id}, token=bob.access)).status == 201
    discovered = await api.get("/api/discover/?limit=50", token=erin.access)
    assert bob.id in [u["id"] for u in discovered.body["results"]]
    bob_sockets = [await notifications(api, bob), await join(api, cid, bob)]
    carol_socket = await join(api, cid, carol)

    for body in ({}, {"reason": ""}, {"reason": 5}, {"reason": "x" * 501}):
        assert_error(await api.post(f"/api/moderation/users/{bob.id}/ban/", body, token=moderator.access), 400)
    assert_error(
        await api.post(f"/api/moderation/users/{moderator.id}/ban/", {"reason": "x"}, token=moderator.access),
        400,
        "self_target",
    )
    assert_error(await api.post("/api/moderation/users/999999999/ban/", {"reason": "x"}, token=moderator.access), 404)

    banned = await api.post(f"/api/moderation/users/{bob.id}/ban/", {"reason": "scam ring"}, token=moderator.access)
    assert banned.status == 200, banned.body
    conforms(document, "post", "/api/moderation/users/{user_id}/ban/", banned)
    assert banned.body["banned"] is True and banned.body["ban"]["reason"] == "scam ring"
    assert banned.body["ban"]["banned_by"] == moderator.id

    # Bob's sockets close 4002 and his tokens are refused; carol's side of the conversation closes 4001.
    for ws in bob_sockets:
        assert (await ws.closed())[0] == 4002
    assert (await carol_socket.closed())[0] == 4001
    assert_error(await api.get("/api/users/me/", token=bob.access), 401)
    signed_in = await sign_in(api, bob)
    assert_error(signed_in, 401, "account_banned")
    assert_error(await api.post("/api/token/refresh/", {"refresh": bob.refresh}), 401)
    wrong = await api.post("/api/token/", {"username": bob.username, "password": "not the password"})
    assert_error(wrong, 401, "invalid_credentials")  # the ban is told only to whoever knows the password

    # Gone from carol's matches, dave's likes received, erin's discover; no new like reaches him.
    assert (await api.get("/api/matches/", token=carol.access)).body == []
    assert (await api.get(f"/api/conversations/{cid}/", token=carol.access)).body["status"] == "closed"
    assert (await api.get("/api/likes/received/", token=dave.access)).body["results"] == []
    discovered = await api.get("/api/discover/?limit=50", token=erin.access)
    assert bob.id not in [u["id"] for u in discovered.body["results"]]
    assert_error(await api.post("/api/likes/", {"user_id": bob.id}, token=dave.access), 404, "user_not_found")

    # Repeated: the same answer. Then lifted: he signs in again, the conversation stays closed.
    again = await api.post(f"/api/moderation/users/{bob.id}/ban/", {"reason": "again"}, token=moderator.access)
    assert again.status == 200 and again.body["ban"]["reason"] == "scam ring"
    lifted = await api.post(f"/api/moderation/users/{bob.id}/unban/", {"reason": "appeal"}, token=moderator.access)
    assert lifted.status == 200 and lifted.body == {"user_id": bob.id, "banned": False, "ban": None}
    conforms(document, "post", "/api/moderation/users/{user_id}/unban/", lifted)
    tokens = await sign_in(api, bob)
    assert tokens.status == 200, tokens.body
    assert (await api.get("/api/users/me/", token=tokens.body["access"])).status == 200
    assert_error(await api.get("/api/users/me/", token=bob.access), 401)  # tokens from before stay revoked
    assert (await api.get(f"/api/conversations/{cid}/", token=carol.access)).body["status"] == "closed"
    assert (await api.get("/api/matches/", token=carol.access)).body == []
    assert [r["user"]["id"] for r in (await api.get("/api/likes/received/", token=dave.access)).body["results"]] == [
        bob.id
    ]

    actions = [
        e["action"] for e in (await api.get(f"{AUDIT}?user_id={bob.id}", token=moderator.access)).body["results"]
    ]
    assert actions == ["user_unbanned", "user_banned", "user_banned"]


async def test_resolving_with_a_ban_bans_the_reported_user(api, services):
    alice, bob = await api.user("alice"), await api.user("bob")
    report_id = (await report(api, alice, bob.id, "underage")).body["id"]
    moderator = await make_moderator(api, services)
    resolved = await api.post(
        f"{QUEUE}{report_id}/resolve/", {"action": "banned", "note": "says 15"}, token=moderator.access
    )
    assert resolved.status == 200 and resolved.body["reported"]["banned"] is True, resolved.body
    assert_error(await sign_in(api, bob), 401, "account_banned")
    user = await services.store.users.find_one({"_id": bob.id})
    assert user["banned"] is True and user["ban"]["reason"] == "says 15"
    actions = [
        e["action"] for e in (await api.get(f"{AUDIT}?user_id={bob.id}", token=moderator.access)).body["results"]
    ]
    assert actions == ["report_resolved", "user_banned"]


# -- the grant command against a real node ---------------------------------------------------------------


def run_command(data_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "server.py"), *args, "--data-dir", str(data_dir)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.slow
async def test_the_grant_command_works_against_a_running_node_on_the_embedded_store(tmp_path):
    data_dir = tmp_path / "node"
    # The node's own embedded store, as a node without MONGODB_URL runs.
    env = {"MONGODB_URL": "", "JWT_SECRET": TEST_SECRET, "LOG_FORMAT": "text", "MONGODB_DATABASE": "chat"}
    node = ServerProcess(data_dir, env).start()
    try:
        client = ApiClient(PortClient(node.port))
        await wait_until_ready(client)
        user = await client.user("opsmod")
        assert_error(await client.get(QUEUE, token=user.access), 403, "not_a_moderator")
        assert (data_dir / "mongo.port").exists()

        granted = await asyncio.to_thread(run_command, data_dir, env, "grant-moderator", user.username)
        assert granted.returncode == 0, granted.stderr
        assert user.username in granted.stdout
        tokens = await sign_in(client, user)
        assert tokens.status == 200, tokens.body
        assert (await client.get(QUEUE, token=tokens.body["access"])).status == 200
        audit = await client.get(AUDIT, token=tokens.body["access"])
        assert [e["action"] for e in audit.body["results"]] == ["moderator_granted"]

        unknown = await asyncio.to_thread(run_command, data_dir, env, "grant-moderator", "nobody_here")
        assert unknown.returncode == 1 and "nobody_here" in unknown.stderr

        revoked = await asyncio.to_thread(run_command, data_dir, env, "revoke-moderator", user.username)
        assert revoked.returncode == 0, revoked.stderr
        assert_error(await client.get(QUEUE, token=tokens.body["access"]), 403, "not_a_moderator")
    finally:
        node.stop()
    assert not (data_dir / "mongo.port").exists()

    # No node running: the command starts the embedded store itself, writes, and stops it.
    granted = await asyncio.to_thread(run_command, data_dir, env, "grant-moderator", user.username)
    assert granted.returncode == 0, granted.stderr
    assert not (data_dir / "mongo.port").exists()
    node = ServerProcess(data_dir, env).start()
    try:
        client = ApiClient(PortClient(node.port))
        await wait_until_ready(client)
        tokens = await sign_in(client, user)
        assert (await client.get(QUEUE, token=tokens.body["access"])).status == 200
    finally:
        node.stop()
    assert "Traceback" not in node.log()


async def wait_until_ready(client: ApiClient, timeout_s: float = 30.0) -> None:
    await wait_for_async(lambda: client.get("/readyz"), lambda r: r.status == 200, timeout_s)


async def wait_for_async(call: Any, done: Any, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            if done(await call()):
                return
        except Exception:
            if loop.time() > deadline:
                raise
        if loop.time() > deadline:
            raise AssertionError("not ready in time")
        await asyncio.sleep(0.2)
