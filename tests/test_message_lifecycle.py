"""Editing and unsending messages, on a real server: live frames to every socket, `?after=` resume and
REST history in the conversation's order, content erased from the store, who may do what, bad input,
two nodes, and the message rate."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from typing import Any

import pytest

from handlers import openapi
from services.chat.ids import message_key
from services.core.config import Settings
from services.core.limits import RateLimiter
from services.core.text import clean_multiline
from tests.support import (
    ApiClient,
    TestUser,
    WsClient,
    assert_error,
    conforms,
    make_conversation,
    schema_validator,
    stored_media,
)
from tests.ws_helpers import PNG, history, join, messages, notifications, pair, send_rest

pytestmark = pytest.mark.usefixtures("services")

MESSAGE_PATH = "/api/conversations/{conversation_id}/messages/{message_id}/"
HISTORY_PATH = "/api/conversations/{conversation_id}/messages/"
CONVERSATION_SOCKET = "/ws/conversations/{conversation_id}/"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Rates are lifted: these tests do many things quickly; the message rate has its own test below.
    return {"message_rate": 1000.0, "message_burst": 1000}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi.build_document(Settings())


def frame_conforms(document: dict[str, Any], frame: dict[str, Any]) -> None:
    """The frame is one the document lists for the conversation socket, and satisfies its schema."""
    served = document["x-websockets"][CONVERSATION_SOCKET]["serverFrames"]
    documented = {f["type"]: f["schema"]["$ref"] for f in served}
    assert frame["type"] in documented, frame
    problems = [e.message for e in schema_validator(document, documented[frame["type"]]).iter_errors(frame)]
    assert not problems, (problems, frame)


def message_url(cid: int, message_id: int) -> str:
    return f"/api/conversations/{cid}/messages/{message_id}/"


async def edit_rest(api: ApiClient, cid: int, user: TestUser, message_id: int, content: Any) -> Any:
    return await api.patch(message_url(cid, message_id), {"content": content}, token=user.access)


async def unsend_rest(api: ApiClient, cid: int, user: TestUser, message_id: int) -> Any:
    return await api.delete(message_url(cid, message_id), token=user.access)


async def sent(api: ApiClient, cid: int, user: TestUser, content: str, **extra: Any) -> dict[str, Any]:
    answer = await send_rest(api, cid, user, content, **extra)
    assert answer.status == 201, answer.body
    message: dict[str, Any] = answer.body
    return message


async def next_of(ws: WsClient, *kinds: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame of one of these types (status, typing and the like skipped)."""
    while True:
        frame = await ws.recv(timeout)
        assert frame is not None, f"closed ({ws.close_code}) while waiting for {kinds}"
        if frame["type"] in kinds:
            return dict(frame)


async def ordered(ws: WsClient, count: int) -> list[tuple[str, int]]:
    """The next `count` frames that have a place in the conversation's order, as (type, id)."""
    out = []
    for _ in range(count):
        frame = await next_of(ws, "message", "message_edited", "message_deleted")
        out.append((frame["type"], frame["message"]["id"] if frame["type"] == "message" else frame["event_id"]))
    return out


def ordered_frames(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] in ("message", "message_edited", "message_deleted")]


async def still_open(ws: WsClient) -> None:
    await ws.send({"type": "ping"})
    assert (await ws.recv_type("pong"))["type"] == "pong"


async def stored(services: Any, cid: int, message_id: int) -> dict[str, Any]:
    doc = await services.store.messages.find_one({"_id": message_key(cid, message_id)})
    assert doc is not None
    return dict(doc)


# -- live --------------------------------------------------------------------------------------------


async def test_an_edit_reaches_every_socket_live_and_history_shows_it(api, services, document):
    p = await pair(api, services)
    a1, a2, b = await join(api, p.cid, p.a), await join(api, p.cid, p.a), await join(api, p.cid, p.b)
    first = await sent(api, p.cid, p.a, "helo")
    for ws in (a1, a2, b):
        assert (await messages(ws, 1))[0]["id"] == first["id"] == 1

    edited = await edit_rest(api, p.cid, p.a, 1, "hello")
    conforms(document, "patch", MESSAGE_PATH, edited)
    assert edited.status == 200, edited.body
    assert edited.body["id"] == 1 and edited.body["content"] == "hello" and "edited_at" in edited.body
    assert edited.body["created_at"] == first["created_at"]
    for ws in (a1, a2, b):
        frame = await next_of(ws, "message_edited")
        frame_conforms(document, frame)
        assert (frame["event_id"], frame["message_id"]) == (2, 1)
        assert frame["message"]["content"] == "hello" and frame["message"]["edited_at"] == edited.body["edited_at"]

    # The same over the socket: an `edit` frame, answered by the broadcast.
    await a1.send({"type": "edit", "message_id": 1, "content": "hello, bob"})
    for ws in (a1, a2, b):
        frame = await next_of(ws, "message_edited")
        assert (frame["event_id"], frame["message"]["content"]) == (3, "hello, bob")

    page = await history(api, p.cid, p.b)
    conforms(document, "get", HISTORY_PATH, page)
    assert [(m["id"], m["content"]) for m in page.body["results"]] == [(1, "hello, bob")]
    assert "edited_at" in page.body["results"][0]
    listed = await api.get("/api/conversations/", token=p.b.access)
    assert listed.body[0]["last_message"]["content"] == "hello, bob"
    # Ids stay dense: the next message comes after the two edits.
    assert (await sent(api, p.cid, p.b, "hi"))["id"] == 4
    for ws in (a1, a2, b):
        assert [m["id"] for m in await messages(ws, 1)] == [4]


async def test_unsend_reaches_every_socket_and_erases_the_message_from_the_store(api, services, document):
    p = await pair(api, services)
    a, b = await join(api, p.cid, p.a), await join(api, p.cid, p.b)
    upload = await api.post(
        f"/api/conversations/{p.cid}/attachments/", body=PNG, headers={"Content-Type": "image/png"}, token=p.a.access
    )
    assert upload.status == 201, upload.body
    attachment = await services.store.attachments.find_one({"_id": upload.body["id"]})
    # The file and, for an image, the thumbnails beside it.
    named = [attachment["path"], *(attachment.get("thumbnails") or {}).values()]
    assert await stored_media(services) == set(named)
    photo = await sent(api, p.cid, p.a, "my secret photo", attachment_id=upload.body["id"], client_id="c-photo")
    await sent(api, p.cid, p.a, "my secret text")
    await sent(api, p.cid, p.b, "nice")
    await messages(b, 3)
    await messages(a, 3)

    await a.send({"type": "unsend", "message_id": photo["id"]})
    for ws in (a, b):
        frame = await next_of(ws, "message_deleted")
        frame_conforms(document, frame)
        assert (frame["event_id"], frame["message_id"]) == (4, 1)
        placeholder = frame["message"]
        assert placeholder["content"] == "" and placeholder["attachment"] is None and placeholder["deleted"] is True
        assert "deleted_at" in placeholder
    gone = await unsend_rest(api, p.cid, p.a, 2)
    conforms(document, "delete", MESSAGE_PATH, gone)
    assert gone.status == 200 and gone.body["deleted"] is True and gone.body["content"] == ""
    for ws in (a, b):
        assert (await next_of(ws, "message_deleted"))["event_id"] == 5

    page = await history(api, p.cid, p.b)
    conforms(document, "get", HISTORY_PATH, page)
    shown = [(m["id"], m["content"], m.get("deleted", False), m["attachment"]) for m in page.body["results"]]
    assert shown == [(1, "", True, None), (2, "", True, None), (3, "nice", False, None)]
    # The store keeps no trace of the text or the attachment: neither in the message, nor in any event.
    for message_id in (1, 2):
        doc = await stored(services, p.cid, message_id)
        assert doc["content"] == "" and "deleted_at" in doc
        assert not {"attachment_id", "edited_at", "unsend_pending"} & set(doc), doc
    everything = await services.store.messages.find({"conversation_id": p.cid}).to_list(None)
    assert "secret" not in repr(everything)
    assert await services.store.attachments.find_one({"_id": upload.body["id"]}) is None
    assert await stored_media(services) == set()
    assert services.media.quota is not None and await services.media.quota.used(p.a.id) == 0
    media = await api.get(urllib.parse.urlsplit(upload.body["url"]).path)
    assert media.status == 404
    # A late retry of the unsent send gets the placeholder back; nothing is stored again.
    retry = await send_rest(api, p.cid, p.a, "my secret photo", client_id="c-photo")
    assert retry.status == 200 and retry.body["id"] == 1 and retry.body["deleted"] is True
    assert [f for f in await b.silent(0.3) if f["type"] == "message"] == []
    # The conversation list shows the placeholder when the last message is unsent.
    await unsend_rest(api, p.cid, p.b, 3)
    listed = await api.get("/api/conversations/", token=p.a.access)
    assert listed.body[0]["last_message"]["id"] == 3 and listed.body[0]["last_message"]["deleted"] is True


async def test_edits_and_unsends_notify_nobody_and_text_hygiene_applies(api, services):
    p = await pair(api, services)
    notes = await notifications(api, p.b)
    await sent(api, p.cid, p.a, "first")
    assert (await notes.recv_type("notification"))["notification"]["type"] == "new_message"
    pushes = await services.store.push_outbox.find({"user_id": p.b.id}).to_list(None)
    dirty = "line one\r\nwith a \u202eright-to-left override\u200b and a zero width space"
    edited = await edit_rest(api, p.cid, p.a, 1, dirty)
    assert edited.status == 200 and edited.body["content"] == clean_multiline(dirty) != dirty
    assert (await stored(services, p.cid, 1))["content"] == clean_multiline(dirty)
    assert (await unsend_rest(api, p.cid, p.a, 1)).status == 200
    assert await notes.silent(0.5) == []
    assert await services.store.push_outbox.find({"user_id": p.b.id}).to_list(None) == pushes


# -- resume and history --------------------------------------------------------------------------------


async def test_resume_replays_edits_and_unsends_in_order_then_live_traffic(api, services, document):
    p = await pair(api, services)
    for text in ("one", "two", "three"):
        await sent(api, p.cid, p.a, text)
    assert (await edit_rest(api, p.cid, p.a, 1, "one, edited")).status == 200  # id 4
    await sent(api, p.cid, p.b, "five")  # 5
    assert (await unsend_rest(api, p.cid, p.a, 2)).status == 200  # 6

    # Bob was away after message 3: he gets what changed since, in the conversation's order.
    resumed = await join(api, p.cid, p.b, after=3)
    frames = [await next_of(resumed, "message", "message_edited", "message_deleted") for _ in range(3)]
    for frame in frames:
        frame_conforms(document, frame)
    assert [f["type"] for f in frames] == ["message_edited", "message", "message_deleted"]
    assert frames[0]["event_id"] == 4 and frames[0]["message"]["content"] == "one, edited"
    assert frames[1]["message"]["id"] == 5
    assert frames[2]["event_id"] == 6 and frames[2]["message"]["id"] == 2 and frames[2]["message"]["deleted"]
    # Then live traffic, in order, nothing twice.
    assert (await edit_rest(api, p.cid, p.b, 5, "five!")).status == 200  # 7
    assert await ordered(resumed, 1) == [("message_edited", 7)]
    assert ordered_frames(await resumed.silent(0.3)) == []

    # From the start: every message as it now is, each event at its id.
    everything = await join(api, p.cid, p.b, after=0)
    assert await ordered(everything, 7) == [
        ("message", 1),
        ("message", 2),
        ("message", 3),
        ("message_edited", 4),
        ("message", 5),
        ("message_deleted", 6),
        ("message_edited", 7),
    ]
    up_to_date = await join(api, p.cid, p.b, after=7)
    assert ordered_frames(await up_to_date.silent(0.3)) == []

    # Several events of one message in a replay: only the last is sent, it shows the message as it is.
    assert (await edit_rest(api, p.cid, p.b, 5, "five!!")).status == 200  # 8
    again = await join(api, p.cid, p.b, after=6)
    frame = await next_of(again, "message", "message_edited", "message_deleted")
    assert (frame["event_id"], frame["message"]["content"]) == (8, "five!!")
    assert ordered_frames(await again.silent(0.3)) == []


async def test_rest_history_after_lists_the_events_and_where_the_page_ends(api, services, document):
    p = await pair(api, services)
    for text in ("one", "two", "three"):
        await sent(api, p.cid, p.a, text)
    await edit_rest(api, p.cid, p.a, 1, "one, edited")  # 4
    await sent(api, p.cid, p.b, "five")  # 5
    await unsend_rest(api, p.cid, p.a, 2)  # 6
    await edit_rest(api, p.cid, p.b, 5, "five!")  # 7

    page = await history(api, p.cid, p.b, "?after=3")
    conforms(document, "get", HISTORY_PATH, page)
    assert [(m["id"], m["content"]) for m in page.body["results"]] == [(5, "five!")]
    assert [(e["type"], e["event_id"], e["message_id"]) for e in page.body["events"]] == [
        ("message_edited", 4, 1),
        ("message_deleted", 6, 2),
        ("message_edited", 7, 5),
    ]
    assert page.body["events"][0]["message"]["content"] == "one, edited"
    assert (page.body["has_more"], page.body["last_id"]) == (False, 7)
    # Paged one message at a time: the events go with the page they lie in, none skipped, none twice.
    first = (await history(api, p.cid, p.b, "?after=3&limit=1")).body
    assert [m["id"] for m in first["results"]] == [5] and [e["event_id"] for e in first["events"]] == [4]
    assert (first["has_more"], first["last_id"]) == (True, 5)
    rest = (await history(api, p.cid, p.b, f"?after={first['last_id']}&limit=1")).body
    assert rest["results"] == [] and [e["event_id"] for e in rest["events"]] == [6, 7]
    assert (rest["has_more"], rest["last_id"]) == (False, 7)
    # A page of messages only keeps the shape it always had; `last_id` is where it ends past them.
    assert (await history(api, p.cid, p.b, "?after=7")).body == {"results": [], "has_more": False}
    assert set((await history(api, p.cid, p.b, "?after=4&limit=1")).body) == {"results", "has_more"}
    # Two edits of one message in a page: one event, the latest.
    await edit_rest(api, p.cid, p.b, 5, "five!!")  # 8
    latest = (await history(api, p.cid, p.b, "?after=6")).body
    assert [(e["event_id"], e["message"]["content"]) for e in latest["events"]] == [(8, "five!!")]
    # Pages without `after` show messages as they now are and nothing else.
    newest = (await history(api, p.cid, p.b)).body
    assert set(newest) == {"results", "has_more"}
    assert [(m["id"], m["content"], m.get("deleted", False)) for m in newest["results"]] == [
        (1, "one, edited", False),
        (2, "", True),
        (3, "three", False),
        (5, "five!!", False),
    ]
    older = (await history(api, p.cid, p.b, "?before=5&limit=2")).body
    assert [m["id"] for m in older["results"]] == [2, 3] and older["has_more"] is True


# -- who may ---------------------------------------------------------------------------------------------


async def matched(api: ApiClient, a: TestUser, b: TestUser) -> dict[str, Any]:
    assert (await api.post("/api/likes/", {"user_id": b.id}, token=a.access)).status == 201
    answer = await api.post("/api/likes/", {"user_id": a.id}, token=b.access)
    match: dict[str, Any] = answer.body["match"]
    return match


async def test_only_the_sender_of_an_open_conversation_may_edit_or_unsend(api, services):
    p = await pair(api, services)
    stranger = await api.user("stranger")
    await sent(api, p.cid, p.a, "mine")
    for method, body in (("PATCH", {"content": "pwned"}), ("DELETE", None)):
        # A stranger: the same 404 as for a conversation that does not exist.
        refused = await api.request(method, message_url(p.cid, 1), body, token=stranger.access)
        assert_error(refused, 404, "conversation_not_found")
        unknown = await api.request(method, message_url(999_999_999, 1), body, token=stranger.access)
        assert (unknown.status, unknown.body) == (refused.status, refused.body)
        # The other participant sees the message but may not change it.
        assert_error(await api.request(method, message_url(p.cid, 1), body, token=p.b.access), 403, "not_your_message")
    b = await join(api, p.cid, p.b)
    for frame in ({"type": "edit", "message_id": 1, "content": "pwned"}, {"type": "unsend", "message_id": 1}):
        await b.send(frame)
        assert (await b.recv_type("error"))["code"] == "not_your_message"
    await still_open(b)
    assert (await stored(services, p.cid, 1))["content"] == "mine"
    assert await services.store.messages.count_documents({"conversation_id": p.cid}) == 1

    # After an unmatch, the former participants read the history and change nothing, not even their own.
    alice, bob = await api.user("alice"), await api.user("bob")
    match = await matched(api, alice, bob)
    cid = match["conversation_id"]
    await sent(api, cid, alice, "before the end")
    assert (await api.delete(f"/api/matches/{match['id']}/", token=bob.access)).status == 204
    for user in (alice, bob):
        assert_error(await edit_rest(api, cid, user, 1, "after"), 404, "conversation_not_found")
        assert_error(await unsend_rest(api, cid, user, 1), 404, "conversation_not_found")
    assert [m["content"] for m in (await history(api, cid, alice)).body["results"]] == ["before the end"]


async def test_refused_edits_and_unsends_get_documented_errors_and_change_nothing(api, services, document):
    p = await pair(api, services)
    other = await make_conversation(services, p.a.id, (await api.user("carol")).id)
    await sent(api, p.cid, p.a, "one")
    for n in range(2, 5):
        await sent(api, other, p.a, f"elsewhere {n}")
    await sent(api, p.cid, p.a, "two")
    too_long = "x" * (services.settings.max_content_chars + 1)
    refusals = [
        (await edit_rest(api, p.cid, p.a, 2, "   "), 400, "empty_message"),
        (await edit_rest(api, p.cid, p.a, 2, too_long), 400, "message_too_long"),
        (await edit_rest(api, p.cid, p.a, 2, 5), 400, "validation_error"),
        (await api.patch(message_url(p.cid, 2), {}, token=p.a.access), 400, "validation_error"),
        (await api.patch(message_url(p.cid, 2), {"content": "x", "more": 1}, token=p.a.access), 400, None),
        # Ids that are no message of this conversation: unknown, past the id space, a message elsewhere.
        (await edit_rest(api, p.cid, p.a, 3, "x"), 404, "message_not_found"),
        (await unsend_rest(api, p.cid, p.a, 3), 404, "message_not_found"),
        (await edit_rest(api, p.cid, p.a, 2**40, "x"), 404, "message_not_found"),
        (await unsend_rest(api, p.cid, p.a, 0), 404, "message_not_found"),
    ]
    for answer, status, code in refusals:
        assert_error(answer, status, code)
        conforms(document, "patch", MESSAGE_PATH, answer)

    # The edit window: past MESSAGE_EDIT_WINDOW, no edit; unsend has no limit.
    old = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=services.settings.message_edit_window_s + 60)
    await services.store.messages.update_one({"_id": message_key(p.cid, 1)}, {"$set": {"created_at": old}})
    assert_error(await edit_rest(api, p.cid, p.a, 1, "late"), 403, "edit_window_closed")
    assert (await unsend_rest(api, p.cid, p.a, 1)).status == 200  # id 3
    # An unsent message cannot be edited or unsent again; an event's id is no message.
    assert_error(await unsend_rest(api, p.cid, p.a, 1), 409, "message_deleted")
    assert_error(await edit_rest(api, p.cid, p.a, 1, "back"), 409, "message_deleted")
    assert_error(await edit_rest(api, p.cid, p.a, 3, "x"), 404, "message_not_found")

    # The same on the socket: an error frame each, and the socket stays open.
    a = await join(api, p.cid, p.a)
    for frame, code in (
        ({"type": "edit", "message_id": 2, "content": " \n "}, "empty_message"),
        ({"type": "edit", "message_id": 2, "content": too_long}, "message_too_long"),
        ({"type": "edit", "message_id": 99, "content": "x"}, "message_not_found"),
        ({"type": "unsend", "message_id": 2**50}, "message_not_found"),
        ({"type": "edit", "message_id": 1, "content": "x"}, "message_deleted"),
        ({"type": "unsend", "message_id": 1}, "message_deleted"),
    ):
        await a.send(frame)
        error = await a.recv_type("error")
        assert error["code"] == code, (frame, error)
        frame_conforms(document, error)
    await still_open(a)
    # Nothing changed, nothing was stored: two messages and the one unsend.
    assert (await stored(services, p.cid, 2))["content"] == "two"
    assert await services.store.messages.count_documents({"conversation_id": p.cid}) == 3
    assert ordered_frames(await a.silent(0.2)) == []


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "edit", "message_id": "1", "content": "x"},
        {"type": "edit", "message_id": 1},
        {"type": "edit", "message_id": 1, "content": 5},
        {"type": "edit", "message_id": 1.5, "content": "x"},
        {"type": "edit", "message_id": True, "content": "x"},
        {"type": "unsend"},
        {"type": "unsend", "message_id": 0},
        {"type": "unsend", "message_id": -1},
        {"type": "unsend", "message_id": None},
    ],
)
async def test_malformed_lifecycle_frames_close_4003(api, services, frame):
    p = await pair(api, services)
    await sent(api, p.cid, p.a, "one")
    a = await join(api, p.cid, p.a)
    await a.send(frame)
    assert (await a.closed())[0] == 4003
    assert (await stored(services, p.cid, 1))["content"] == "one"


# -- several nodes -------------------------------------------------------------------------------------


async def test_an_edit_on_one_node_reaches_the_sockets_of_the_other_and_ids_stay_dense(cluster_factory):
    n1, n2 = await cluster_factory(2)
    a = await n1.api.user("alice")
    b = await n1.api.user("bob")
    cid = await make_conversation(n1.services, a.id, b.id)
    a1 = await join(n1.api, cid, a)
    b2 = await join(n2.api, cid, b)
    await sent(n1.api, cid, a, "from node 1")
    for ws in (a1, b2):
        assert [m["id"] for m in await messages(ws, 1)] == [1]

    # Edited on node 2 by REST: node 1's socket gets it too.
    assert (await edit_rest(n2.api, cid, a, 1, "edited on node 2")).status == 200
    for ws in (a1, b2):
        frame = await next_of(ws, "message_edited")
        assert (frame["event_id"], frame["message"]["content"]) == (2, "edited on node 2")
    # Node 1 numbers its next message after the event it did not store.
    assert (await sent(n1.api, cid, b, "reply via node 1"))["id"] == 3
    # Unsent on node 1's socket: node 2's socket gets it; node 2 numbers after it.
    await a1.send({"type": "unsend", "message_id": 1})
    for ws in (a1, b2):
        assert (await next_of(ws, "message_deleted"))["event_id"] == 4
    assert (await sent(n2.api, cid, b, "via node 2"))["id"] == 5
    for ws in (a1, b2):
        assert await ordered(ws, 1) == [("message", 5)]
    # A socket resuming on either node sees the same order (the edit of message 1 is not replayed: the
    # unsend that followed it shows the message as it now is).
    for api in (n1.api, n2.api):
        resumed = await join(api, cid, b, after=1)
        assert await ordered(resumed, 3) == [("message", 3), ("message_deleted", 4), ("message", 5)]
        assert ordered_frames(await resumed.silent(0.2)) == []


# -- rate limits --------------------------------------------------------------------------------------


async def test_edits_and_unsends_count_against_the_message_rate(api, services):
    p = await pair(api, services)
    await sent(api, p.cid, p.a, "one")
    await sent(api, p.cid, p.a, "two")
    # Three actions in the burst, shared by sends, edits and unsends, over REST and sockets alike.
    services.message_limiter = RateLimiter(0.01, 3)
    assert (await edit_rest(api, p.cid, p.a, 1, "one, edited")).status == 200
    assert (await send_rest(api, p.cid, p.a, "three")).status == 201
    assert (await unsend_rest(api, p.cid, p.a, 2)).status == 200
    limited = await edit_rest(api, p.cid, p.a, 1, "again")
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    assert_error(await unsend_rest(api, p.cid, p.a, 1), 429, "rate_limited")
    a = await join(api, p.cid, p.a)
    await a.send({"type": "edit", "message_id": 1, "content": "again"})
    error = await a.recv_type("error")
    assert error["code"] == "rate_limited" and error["retry_after_ms"] >= 1
    assert (await stored(services, p.cid, 1))["content"] == "one, edited"
