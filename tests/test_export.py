"""Downloading one's data (`GET /api/users/me/export/`), against a real server: what the archive holds and
leaves out, that it is streamed, its daily budget, and who may have it."""

from __future__ import annotations

import datetime as dt
import io
import secrets
import zipfile
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from PIL import Image

from services.chat.ids import message_key
from tests.support import PASSWORD, ApiClient, TestUser, assert_error

EXPORT = "/api/users/me/export/"


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (40, 80, 200)).save(out, "JPEG")
    return out.getvalue()


async def match(api: ApiClient, a: TestUser, b: TestUser) -> int:
    assert (await api.post("/api/likes/", {"user_id": b.id}, token=a.access)).status in (200, 201)
    back = await api.post("/api/likes/", {"user_id": a.id}, token=b.access)
    assert back.body["match"] is not None, back.body
    return int(back.body["match"]["conversation_id"])


async def download(api: ApiClient, user: TestUser) -> tuple[int, dict[str, Any], bytes, int]:
    """Status, headers, body, and how many pieces the body arrived in."""
    pieces: list[bytes] = []
    response = await api.client.fetch(
        EXPORT,
        headers={"Authorization": f"Bearer {user.access}"},
        raise_error=False,
        streaming_callback=pieces.append,
        request_timeout=60,
    )
    return response.code, dict(response.headers), b"".join(pieces), len(pieces)


async def test_the_archive_holds_the_account_and_its_conversations_and_nothing_of_others(api, services):
    alice, bob, carol, dave = [await api.user(name) for name in ("alice", "bob", "carol", "dave")]
    cid = await match(api, alice, bob)
    assert (await api.post("/api/likes/", {"user_id": carol.id}, token=alice.access)).status in (200, 201)
    assert (await api.post("/api/blocks/", {"user_id": dave.id}, token=alice.access)).status in (200, 201)
    photo = await api.post(
        "/api/users/me/photos/", body=jpeg(), token=alice.access, headers={"Content-Type": "image/jpeg"}
    )
    assert photo.status == 201, photo.body
    for content, sender in (("hello bob", alice), ("hi alice", bob), ("forget this", alice)):
        sent = await api.post(f"/api/conversations/{cid}/messages/", {"content": content}, token=sender.access)
        assert sent.status == 201, sent.body
    assert (await api.delete(f"/api/conversations/{cid}/messages/3/", token=alice.access)).status == 200
    filed = await api.post("/api/reports/", {"user_id": dave.id, "reason": "spam"}, token=alice.access)
    assert filed.status == 201, filed.body
    about_alice = await api.post("/api/reports/", {"user_id": alice.id, "reason": "harassment"}, token=bob.access)
    assert about_alice.status == 201, about_alice.body

    status, headers, body, _ = await download(api, alice)
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "application/zip"
    assert headers["Content-Disposition"].startswith("attachment;")
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None
    names = set(archive.namelist())
    assert {"README.txt", "account.json", f"messages/{cid}.json", "photos/1.jpg"} <= names, names

    account = orjson.loads(archive.read("account.json"))
    assert account["profile"]["username"] == alice.username
    assert [like["user_id"] for like in account["likes_sent"]] == [bob.id, carol.id]
    assert [block["user_id"] for block in account["blocks"]] == [dave.id]
    assert [m["user_id"] for m in account["matches"]] == [bob.id]
    assert [(r["user_id"], r["reason"]) for r in account["reports_filed"]] == [(dave.id, "spam")]
    whole = b"".join(archive.read(name) for name in names)
    assert b"harassment" not in whole  # reports about her stay with moderation
    assert b"password_hash" not in whole and b"$argon2" not in whole

    messages = orjson.loads(archive.read(f"messages/{cid}.json"))
    assert [(m["id"], m["sender_id"], m["content"], m["deleted"]) for m in messages] == [
        (1, alice.id, "hello bob", False),
        (2, bob.id, "hi alice", False),
        (3, alice.id, "", True),
    ]
    served = await api.get(urlsplit(photo.body["url"]).path)
    assert served.status == 200 and archive.read("photos/1.jpg") == served.body

    # Bob's archive has the conversation too, and his own likes, blocks and reports, not hers.
    status, _, bob_body, _ = await download(api, bob)
    assert status == 200
    bob_archive = zipfile.ZipFile(io.BytesIO(bob_body))
    bob_account = orjson.loads(bob_archive.read("account.json"))
    assert bob_account["profile"]["id"] == bob.id and bob_account["likes_sent"][0]["user_id"] == alice.id
    assert [block["user_id"] for block in bob_account["blocks"]] == [alice.id]  # his report blocked her
    assert [(r["user_id"], r["reason"]) for r in bob_account["reports_filed"]] == [(alice.id, "harassment")]
    assert len(orjson.loads(bob_archive.read(f"messages/{cid}.json"))) == 3


async def test_a_long_history_is_streamed_in_pieces(api, services):
    alice, bob = await api.user("alice"), await api.user("bob")
    cid = await match(api, alice, bob)
    now = dt.datetime.now(dt.UTC)
    count = 3000
    await services.store.messages.insert_many(
        [
            {
                "_id": message_key(cid, seq),
                "conversation_id": cid,
                "seq": seq,
                "sender_id": alice.id if seq % 2 else bob.id,
                "content": secrets.token_hex(100),
                "created_at": now,
            }
            for seq in range(1, count + 1)
        ]
    )
    status, _, body, pieces = await download(api, alice)
    assert status == 200
    assert pieces >= 3, pieces  # sent as it was built, batch by batch
    messages = orjson.loads(zipfile.ZipFile(io.BytesIO(body)).read(f"messages/{cid}.json"))
    assert [m["id"] for m in messages] == list(range(1, count + 1))


@pytest.mark.parametrize("settings_overrides", [{"exports_per_day": 2}], indirect=True)
async def test_exports_have_a_daily_budget_per_user(api, services):
    alice, bob = await api.user("alice"), await api.user("bob")
    for _ in range(2):
        assert (await download(api, alice))[0] == 200
    refused = await api.get(EXPORT, token=alice.access)
    assert_error(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) > 3600
    assert (await download(api, bob))[0] == 200  # her budget is hers


async def test_an_export_needs_a_live_signed_in_caller(api, services):
    alice = await api.user("alice")
    assert_error(await api.get(EXPORT), 401)
    assert_error(await api.get(EXPORT, token=alice.refresh), 401)
    assert_error(await api.get(EXPORT, token="not.a.token"), 401)
    assert (await api.delete("/api/users/me/", json={"password": PASSWORD}, token=alice.access)).status == 204
    assert_error(await api.get(EXPORT, token=alice.access), 401)
