"""Deleting one's account (`DELETE /api/users/me/` with the password), against a real server.

What the owner and the other people see: every session and socket ends (4002), the match ends for both
(the other person's conversation socket closes with 4001), the messages the account sent become
placeholders in the other person's history (ids and order kept), photos answer 404, and nothing of the
account is left to find: no likes, no profile, no username (freed: someone else may take it and inherits
nothing). A deletion that a dying node left half done is finished by a node that starts later.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

from services.accounts.deletion import DELETED_NAME, deleted_username_key
from tests.support import PASSWORD, ApiClient, TestUser, assert_error, ws_connect
from tests.ws_helpers import conv_path, history, join, notifications

ME = "/api/users/me/"


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 80, 40)).save(out, "JPEG")
    return out.getvalue()


async def match(api: ApiClient, a: TestUser, b: TestUser) -> dict[str, Any]:
    assert (await api.post("/api/likes/", {"user_id": b.id}, token=a.access)).status in (200, 201)
    back = await api.post("/api/likes/", {"user_id": a.id}, token=b.access)
    assert back.body["match"] is not None, back.body
    found: dict[str, Any] = back.body["match"]
    return found


async def delete_account(api: ApiClient, user: TestUser, password: str = PASSWORD) -> Any:
    return await api.delete(ME, json={"password": password}, token=user.access)


async def test_a_deleted_account_is_gone_for_everyone_and_its_name_is_free(api, services):
    alice, bob, carol = await api.user("alice"), await api.user("bob"), await api.user("carol")
    cid = int((await match(api, alice, bob))["conversation_id"])
    # Alice liked carol too (no match), and carol blocked nobody: both relations must go.
    assert (await api.post("/api/likes/", {"user_id": carol.id}, token=alice.access)).status in (200, 201)
    photo = await api.post(
        "/api/users/me/photos/", body=jpeg(), token=alice.access, headers={"Content-Type": "image/jpeg"}
    )
    assert photo.status == 201, photo.body
    photo_url = str(photo.body["url"])
    assert (await api.get(urlsplit(photo_url).path)).status == 200
    for content, sender in (("hello bob", alice), ("hi alice", bob), ("my number is 555", alice)):
        sent = await api.post(f"/api/conversations/{cid}/messages/", {"content": content}, token=sender.access)
        assert sent.status == 201, sent.body
    alice_socket = await join(api, cid, alice)
    alice_notes = await notifications(api, alice)
    bob_socket = await join(api, cid, bob)

    # The wrong password deletes nothing.
    assert_error(await delete_account(api, alice, "not the password"), 400, "wrong_password", "password")
    assert (await api.get(ME, token=alice.access)).status == 200

    answer = await delete_account(api, alice)
    assert answer.status == 204, answer.body

    assert (await alice_socket.closed())[0] == 4002
    assert (await alice_notes.closed())[0] == 4002
    assert (await bob_socket.closed())[0] == 4001  # the conversation closed, as after an unmatch
    assert_error(await api.get(ME, token=alice.access), 401, "token_invalid")
    assert_error(await api.post("/api/token/refresh/", {"refresh": alice.refresh}), 401)
    signin = await api.post("/api/token/", {"username": alice.username, "password": PASSWORD})
    assert signin.status == 401, signin.body
    assert (await api.get(urlsplit(photo_url).path)).status == 404

    # Bob's history keeps its ids and order; alice's words are gone, his stay.
    shown = (await history(api, cid, bob)).body
    messages = shown["results"] if isinstance(shown, dict) else shown
    by_id = {int(m["id"]): m for m in messages}
    assert sorted(by_id) == [1, 2, 3]
    assert by_id[1]["content"] == by_id[3]["content"] == "" and by_id[1]["deleted"] is True
    assert by_id[2]["content"] == "hi alice"
    assert (await api.get("/api/matches/", token=bob.access)).body == []
    # Nothing of the account is stored beyond a stub.
    store = services.store
    for collection in (store.likes, store.passes, store.blocks):
        assert await collection.count_documents({"$or": [{"from_id": alice.id}, {"to_id": alice.id}]}) == 0
    assert await store.messages.count_documents({"sender_id": alice.id, "content": {"$ne": ""}}) == 0
    stub = await store.users.find_one({"_id": alice.id})
    assert stub is not None and stub["deleted"] is True
    assert stub["username"] == DELETED_NAME and stub["username_key"] == deleted_username_key(alice.id)
    assert "password_hash" not in stub and "birthdate" not in stub and "pending" not in stub["deletion"]
    assert_error(await api.get(f"/api/users/{alice.id}/", token=carol.access), 404)

    # The name is free; whoever takes it is a new account with nothing of the old one.
    again = await api.post("/api/register/", {"username": alice.username, "password": "another password 1"})
    assert again.status == 201, again.body
    assert again.body["id"] != alice.id
    newcomer = await api.post("/api/token/", {"username": alice.username, "password": "another password 1"})
    assert newcomer.status == 200
    access = newcomer.body["access"]
    assert_error(await api.get(f"/api/conversations/{cid}/messages/", token=access), 404)
    assert (await api.get("/api/matches/", token=access)).body == []
    # The old token opens no socket any more.
    late = await ws_connect(api, conv_path(cid, alice))
    assert (await late.closed())[0] == 4002


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, None),
        (b"{not json", 400, None),
        (b'{"password": 12345678}', 400, "validation_error"),
        (b'{"password": "x", "extra": 1}', 400, "validation_error"),
        (b'{"password": ""}', 400, "validation_error"),
        (b'{"password": "' + b"p" * 5000 + b'"}', 400, "validation_error"),
    ],
)
async def test_bad_deletion_requests_delete_nothing(api, services, body, status, code):
    alice = await api.user("alice")
    answer = await api.request(
        "DELETE", ME, body=body, token=alice.access, headers={"Content-Type": "application/json"}
    )
    assert_error(answer, status, code)
    assert (await api.get(ME, token=alice.access)).status == 200


async def test_deletion_needs_a_signed_in_caller_and_acts_on_the_caller_only(api, services):
    alice, bob = await api.user("alice"), await api.user("bob")
    assert_error(await api.delete(ME, json={"password": PASSWORD}), 401)
    assert_error(await api.delete(ME, json={"password": PASSWORD}, token=alice.refresh), 401)
    # Bob's password with alice's token is a wrong password for alice: bob's account is not touched.
    assert (await delete_account(api, alice, PASSWORD + "x")).status == 400
    assert (await delete_account(api, bob)).status == 204
    assert (await api.get(ME, token=alice.access)).status == 200


async def test_a_password_over_the_limit_is_a_wrong_one_and_guesses_are_throttled(api, services):
    alice = await api.user("alice")
    too_long = "p" * (services.settings.max_password_chars + 1)
    assert_error(await delete_account(api, alice, too_long), 400, "wrong_password")
    statuses = [(await delete_account(api, alice, f"guess {n}")).status for n in range(12)]
    assert 429 in statuses, statuses
    assert (await api.get(ME, token=alice.access)).status == 200


async def test_a_deletion_a_node_left_pending_is_finished_by_a_node_that_starts_later(cluster_factory):
    (n1,) = await cluster_factory(1)
    alice, bob = await n1.api.user("alice"), await n1.api.user("bob")
    cid = int((await match(n1.api, alice, bob))["conversation_id"])
    sent = await n1.api.post(f"/api/conversations/{cid}/messages/", {"content": "secret"}, token=alice.access)
    assert sent.status == 201
    # What a node that died right after the first step leaves: the mark and the revocation, nothing else.
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    await n1.services.revocations.revoke_user(
        alice.id, "account deleted", changes={"deleted": True, "deletion": {"requested_at": long_ago, "pending": True}}
    )
    # A deletion still within its grace (its node may be working on it) is left alone.
    carol = await n1.api.user("carol")
    await n1.services.store.users.update_one(
        {"_id": carol.id},
        {"$set": {"deleted": True, "deletion": {"requested_at": dt.datetime.now(dt.UTC), "pending": True}}},
    )

    (n2,) = await cluster_factory(1)  # starts its worker, which looks at once

    async def finished() -> bool:
        doc = await n2.services.store.users.find_one({"_id": alice.id})
        return doc is not None and "pending" not in doc["deletion"]

    for _ in range(100):
        if await finished():
            break
        await asyncio.sleep(0.1)
    assert await finished()
    match_doc = await n2.services.store.matches.find_one({"conversation_id": cid})
    assert match_doc is not None and match_doc["status"] == "ended"
    assert (await n2.services.store.messages.find_one({"sender_id": alice.id}))["content"] == ""
    carol_doc = await n2.services.store.users.find_one({"_id": carol.id})
    assert (
        carol_doc is not None and carol_doc["deletion"]["pending"] is True and carol_doc["username"] == carol.username
    )
