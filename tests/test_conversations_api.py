"""Conversations over REST: the source of truth behind the sockets."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from services.core.text import MAX_FILE_NAME_CHARS
from tests.support import make_conversation
from tests.ws_helpers import (
    ISO_Z,
    PNG,
    allocate_hole,
    check_message_object,
    history,
    join,
    messages,
    notifications,
    pair,
    send_rest,
)

MAX_UPLOAD = 4096


@pytest.fixture
def settings_overrides():
    return {"max_upload_bytes": MAX_UPLOAD, "max_content_chars": 200, "message_burst": 1000}


async def upload(api, cid, user, data=PNG, content_type="image/png"):
    return await api.post(
        f"/api/conversations/{cid}/attachments/", body=data, token=user.access, headers={"Content-Type": content_type}
    )


# -- list and one --------------------------------------------------------------------------------------


async def test_list_shows_last_message_unread_count_and_newest_activity_first(api, services):
    p = await pair(api, services)
    carol = await api.user("carol")
    other = await make_conversation(services, p.a.id, carol.id)
    for text in ("b1", "b2", "b3"):
        assert (await send_rest(api, p.cid, p.b, text)).status == 201
    assert (await send_rest(api, other, carol, "c1")).status == 201

    listed = await api.get("/api/conversations/", token=p.a.access)
    assert listed.status == 200
    assert [c["id"] for c in listed.body] == [other, p.cid]
    first, second = listed.body
    assert first["last_message"]["content"] == "c1" and first["unread_count"] == 1
    check_message_object(first["last_message"])
    assert second["last_message"]["content"] == "b3" and second["unread_count"] == 3
    assert {u["id"] for u in second["participants"]} == {p.a.id, p.b.id}
    for participant in second["participants"]:
        assert set(participant) == {"id", "username", "profile_picture"}
    assert ISO_Z.match(second["updated_at"])

    # Reading moves the count; a new message moves the conversation to the top.
    assert (await api.post(f"/api/conversations/{p.cid}/read/", {"message_id": 2}, token=p.a.access)).status == 200
    assert (await send_rest(api, p.cid, p.a, "a4")).status == 201
    listed = await api.get("/api/conversations/", token=p.a.access)
    assert [c["id"] for c in listed.body] == [p.cid, other]
    assert listed.body[0]["last_message"]["content"] == "a4"
    assert listed.body[0]["unread_count"] == 0  # replying reads everything before it
    bob_view = await api.get("/api/conversations/", token=p.b.access)
    assert [(c["id"], c["unread_count"]) for c in bob_view.body] == [(p.cid, 1)]

    # A conversation without messages is listed with last_message null.
    dave = await api.user("dave")
    empty = await make_conversation(services, dave.id, p.a.id)
    dave_view = await api.get("/api/conversations/", token=dave.access)
    assert [(c["id"], c["last_message"], c["unread_count"]) for c in dave_view.body] == [(empty, None, 0)]


async def test_last_message_skips_an_id_that_was_never_stored(api, services):
    p = await pair(api, services)
    assert (await send_rest(api, p.cid, p.b, "kept")).status == 201
    await allocate_hole(services, p.cid)
    listed = await api.get("/api/conversations/", token=p.a.access)
    assert listed.body[0]["last_message"]["content"] == "kept"


async def test_one_conversation_for_participants_and_404_for_anyone_else(api, services):
    p = await pair(api, services)
    await send_rest(api, p.cid, p.a, "hello")
    got = await api.get(f"/api/conversations/{p.cid}/", token=p.b.access)
    assert got.status == 200 and got.body["id"] == p.cid
    listed = await api.get("/api/conversations/", token=p.b.access)
    assert got.body == listed.body[0]

    stranger = await api.user("eve")
    hidden = await api.get(f"/api/conversations/{p.cid}/", token=stranger.access)
    unknown = await api.get(f"/api/conversations/{p.cid + 1000}/", token=stranger.access)
    assert hidden.status == unknown.status == 404
    assert hidden.body == unknown.body  # existence is not leaked
    for path in ("messages/", "messages/?after=0"):
        assert (await api.get(f"/api/conversations/{p.cid}/{path}", token=stranger.access)).status == 404
    assert (await send_rest(api, p.cid, stranger, "hi")).status == 404
    read = await api.post(f"/api/conversations/{p.cid}/read/", {"message_id": 1}, token=stranger.access)
    assert read.status == 404
    assert (await upload(api, p.cid, stranger)).status == 404
    assert (await api.get("/api/conversations/", token=stranger.access)).body == []


# -- history -------------------------------------------------------------------------------------------


async def test_history_pages_with_before_after_limit_and_has_more(api, services):
    p = await pair(api, services)
    for i in range(1, 8):
        assert (await send_rest(api, p.cid, p.a if i % 2 else p.b, f"m{i}")).status == 201

    async def page(query):
        got = await history(api, p.cid, p.a, query)
        assert got.status == 200, got.body
        assert set(got.body) == {"results", "has_more"}
        return [m["id"] for m in got.body["results"]], got.body["has_more"]

    assert await page("") == ([1, 2, 3, 4, 5, 6, 7], False)
    assert await page("?limit=3") == ([5, 6, 7], True)
    assert await page("?before=5&limit=3") == ([2, 3, 4], True)
    assert await page("?before=2&limit=3") == ([1], False)
    assert await page("?before=4&limit=3") == ([1, 2, 3], False)
    assert await page("?before=1") == ([], False)
    assert await page("?after=0&limit=2") == ([1, 2], True)
    assert await page("?after=4&limit=2") == ([5, 6], True)
    assert await page("?after=5&limit=2") == ([6, 7], False)
    assert await page("?after=7") == ([], False)
    assert await page("?limit=100") == ([1, 2, 3, 4, 5, 6, 7], False)
    # Messages in history are the same objects the sockets carry.
    results = (await history(api, p.cid, p.b, "?limit=1")).body["results"]
    check_message_object(results[0])
    assert results[0]["content"] == "m7" and results[0]["sender_id"] == p.a.id


async def test_history_rejects_bad_cursors_with_400(api, services):
    p = await pair(api, services)
    bad = [
        "?limit=101",
        "?limit=0",
        "?limit=-1",
        "?limit=x",
        "?before=abc",
        "?after=1.5",
        "?before=0",
        "?after=-1",
        "?before=3&after=1",
        "?before=99999999999",
    ]
    for query in bad:
        got = await history(api, p.cid, p.a, query)
        assert got.status == 400, (query, got.body)
        assert isinstance(got.body["error"]["code"], str) and isinstance(got.body["error"]["message"], str)


# -- send and read -------------------------------------------------------------------------------------


async def test_rest_send_is_broadcast_exactly_like_a_socket_send(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    b = await join(api, p.cid, p.b)
    notif_b = await notifications(api, p.b)
    notif_a = await notifications(api, p.a)

    sent = await send_rest(api, p.cid, p.a, "over REST", client_id="rest-1")
    assert sent.status == 201
    check_message_object(sent.body)
    assert sent.body["client_id"] == "rest-1" and sent.body["conversation_id"] == p.cid
    assert await messages(a, 1) == [sent.body]
    assert await messages(b, 1) == [sent.body]
    notification = (await notif_b.recv_type("notification"))["notification"]
    assert notification["type"] == "new_message" and notification["message"]["id"] == sent.body["id"]
    assert notification["message"]["sender"] == {"id": p.a.id, "username": p.a.username, "profile_picture": None}
    assert [f for f in await notif_a.silent(0.2) if f["type"] == "notification"] == []

    # A socket send answers the same object as REST does.
    await b.send({"type": "message", "content": "over the socket"})
    over_socket = (await messages(b, 1))[0]
    assert await messages(a, 1) == [over_socket]
    assert set(over_socket) == set(sent.body) - {"client_id"}

    replay = await send_rest(api, p.cid, p.a, "over REST", client_id="rest-1")
    assert replay.status == 200 and replay.body == sent.body
    assert [f for f in await a.silent(0.2) if f["type"] == "message"] == []


BAD_BODIES = [
    ({"content": ""}, "empty_message"),
    ({"content": "  "}, "empty_message"),
    ({}, "empty_message"),
    ({"content": "x" * 201}, "message_too_long"),
    ({"content": 5}, "validation_error"),
    ({"content": "x", "client_id": ""}, "validation_error"),
    ({"content": "x", "client_id": "c" * 65}, "validation_error"),
    ({"content": "x", "attachment_id": "1"}, "validation_error"),
    ({"content": "x", "surprise": True}, "validation_error"),
]


async def test_rest_send_rejects_bad_bodies_with_400_and_stores_nothing(api, services):
    p = await pair(api, services)
    for body, code in BAD_BODIES:
        got = await api.post(f"/api/conversations/{p.cid}/messages/", body, token=p.a.access)
        assert got.status == 400 and got.error_code == code, (body, got.body)
    for raw in (b"{not json", b"[]", b'"text"', b""):
        for path in ("messages/", "read/"):
            got = await api.post(
                f"/api/conversations/{p.cid}/{path}",
                body=raw,
                token=p.a.access,
                headers={"Content-Type": "application/json"},
            )
            assert got.status == 400 and got.error_code == "invalid_json", (raw, path, got.body)
    assert (await history(api, p.cid, p.a)).body["results"] == []


async def test_rest_read_marks_read_and_broadcasts_the_receipt(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    for text in ("one", "two"):
        await send_rest(api, p.cid, p.a, text)
    await messages(a, 2)

    read = await api.post(f"/api/conversations/{p.cid}/read/", {"message_id": 2}, token=p.b.access)
    assert read.status == 200
    receipt = await a.recv_type("read_receipt")
    assert set(receipt) == {"type", "message_id", "user_id", "username", "timestamp"}
    assert (receipt["message_id"], receipt["user_id"], receipt["username"]) == (2, p.b.id, p.b.username)
    assert [m["is_read"] for m in (await history(api, p.cid, p.a)).body["results"]] == [True, True]

    beyond = await api.post(f"/api/conversations/{p.cid}/read/", {"message_id": 3}, token=p.b.access)
    assert beyond.status == 404
    for body in ({}, {"message_id": "2"}, {"message_id": 0}, {"message_id": True}):
        got = await api.post(f"/api/conversations/{p.cid}/read/", body, token=p.b.access)
        assert got.status == 400, body


# -- attachments ---------------------------------------------------------------------------------------


async def test_attachment_upload_and_a_message_that_carries_it(api, services):
    p = await pair(api, services)
    b = await join(api, p.cid, p.b)
    uploaded = await upload(api, p.cid, p.a)
    assert uploaded.status == 201, uploaded.body
    attachment = uploaded.body
    assert set(attachment) == {"id", "url", "content_type", "size"}
    # Images are decoded and encoded again (metadata stripped), so the size is the re-encoded one's.
    assert attachment["content_type"] == "image/png" and attachment["size"] > 0
    assert attachment["url"].startswith("http://") and "/media/" in attachment["url"]

    served = await api.client.fetch(attachment["url"].split(str(api.port), 1)[1], raise_error=False)
    assert served.code == 200 and len(served.body) == attachment["size"]
    assert served.headers["Content-Type"] == "image/png"

    sent = await send_rest(api, p.cid, p.a, "", attachment_id=attachment["id"])
    assert sent.status == 201, sent.body
    assert sent.body["attachment"] == attachment and sent.body["content"] == ""
    assert (await messages(b, 1))[0]["attachment"] == attachment
    assert (await history(api, p.cid, p.b)).body["results"][0]["attachment"] == attachment

    # Over the socket too, with text.
    await b.send({"type": "message", "content": "look", "attachment_id": (await upload(api, p.cid, p.b)).body["id"]})
    echoed = (await messages(b, 1))[0]
    assert echoed["attachment"]["content_type"] == "image/png" and echoed["content"] == "look"


async def test_foreign_attachment_ids_are_404(api, services):
    p = await pair(api, services)
    carol = await api.user("carol")
    other = await make_conversation(services, p.a.id, carol.id)
    bobs = (await upload(api, p.cid, p.b)).body["id"]
    elsewhere = (await upload(api, other, p.a)).body["id"]
    for attachment_id in (bobs, elsewhere, 987654):
        got = await send_rest(api, p.cid, p.a, "x", attachment_id=attachment_id)
        assert got.status == 404 and got.error_code == "attachment_not_found", got.body
    assert (await history(api, p.cid, p.a)).body["results"] == []


async def test_disallowed_or_oversized_uploads_are_refused(api, services):
    p = await pair(api, services)
    refused = [
        (b"<html><script>alert(1)</script></html>", "text/html", 400),
        (b"<html><script>alert(1)</script></html>", "image/png", 400),
        (b"MZ\x90\x00" + b"\x00" * 60, "application/octet-stream", 400),
        (b"", "image/png", 400),
        (PNG + b"\x00" * MAX_UPLOAD, "image/png", 413),
    ]
    for data, content_type, status in refused:
        got = await upload(api, p.cid, p.a, data, content_type)
        assert got.status == status and "error" in got.body, (data[:10], content_type, got.body)
    # Exactly at the limit is fine.
    at_limit = await upload(api, p.cid, p.a, PNG + b"\x00" * (MAX_UPLOAD - len(PNG)))
    assert at_limit.status == 201, at_limit.body


async def test_plain_text_attachment_is_accepted_when_declared(api, services):
    p = await pair(api, services)
    got = await upload(api, p.cid, p.a, b"bonjour\n", "text/plain")
    assert got.status == 201 and got.body["content_type"] == "text/plain"


async def test_an_attachments_name_is_kept_as_clean_text_of_its_last_path_part(api, services):
    p = await pair(api, services)
    b = await join(api, p.cid, p.b)
    hostile = "C:\\Users\\me/../<img src=x onerror=alert(1)>\u202egpj.pdf\x00\n"
    path = f"/api/conversations/{p.cid}/attachments/?name={quote(hostile)}"
    got = await api.post(path, body=b"%PDF-1.4\n%%EOF\n", token=p.a.access, headers={"Content-Type": "application/pdf"})
    assert got.status == 201, got.body
    assert got.body["name"] == "<img src=x onerror=alert(1)> gpj.pdf"  # text for the page to show as text
    sent = await send_rest(api, p.cid, p.a, "", attachment_id=got.body["id"])
    assert sent.body["attachment"]["name"] == got.body["name"]
    assert (await messages(b, 1))[0]["attachment"]["name"] == got.body["name"]
    assert (await history(api, p.cid, p.b)).body["results"][0]["attachment"] == got.body

    # A long name keeps its end (the extension); one with nothing visible is no name at all.
    long_name = "a" * 500 + "-end.pdf"
    path = f"/api/conversations/{p.cid}/attachments/?name={quote(long_name)}"
    named = (await api.post(path, body=PNG, token=p.a.access, headers={"Content-Type": "image/png"})).body
    assert len(named["name"]) == MAX_FILE_NAME_CHARS and named["name"].endswith("aaa-end.pdf"), named
    for blank in ("", "%E2%80%8B", "dir/"):
        path = f"/api/conversations/{p.cid}/attachments/?name={blank}"
        unnamed = await api.post(path, body=PNG, token=p.a.access, headers={"Content-Type": "image/png"})
        assert unnamed.status == 201 and "name" not in unnamed.body, (blank, unnamed.body)


# -- authentication ------------------------------------------------------------------------------------


async def test_every_endpoint_requires_authentication(api, services):
    p = await pair(api, services)
    calls = [
        ("GET", "/api/conversations/"),
        ("GET", f"/api/conversations/{p.cid}/"),
        ("GET", f"/api/conversations/{p.cid}/messages/"),
        ("POST", f"/api/conversations/{p.cid}/messages/"),
        ("POST", f"/api/conversations/{p.cid}/read/"),
        ("POST", f"/api/conversations/{p.cid}/attachments/"),
    ]
    for method, path in calls:
        for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": f"Bearer {p.a.refresh}"}):
            body = {"content": "x", "message_id": 1} if method == "POST" else None
            got = await api.request(method, path, body, headers=headers)
            assert got.status == 401, (method, path, headers, got.body)
            assert set(got.body["error"]) >= {"code", "message"}
    assert (await history(api, p.cid, p.a)).body["results"] == []
