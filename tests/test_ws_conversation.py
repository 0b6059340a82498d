"""The conversation and notifications sockets against the seed, frame by frame and field by field."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import inspect
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from tests.support import ws_connect
from tests.ws_helpers import (
    ISO_Z,
    PNG,
    abort,
    check_message_object,
    history,
    join,
    messages,
    notifications,
    pair,
)


async def test_message_reaches_every_socket_of_both_participants_in_the_seed_shape(api, services):
    p = await pair(api, services)
    picture = await api.put("/api/users/me/picture/", body=PNG, token=p.a.access, headers={"Content-Type": "image/png"})
    assert picture.status == 200, picture.body
    a1 = await join(api, p.cid, p.a)
    a2 = await join(api, p.cid, p.a)
    b1 = await join(api, p.cid, p.b)
    await a1.send({"type": "message", "content": "Salut, ça va ?"})

    frames = [await s.recv_type("message") for s in (a1, a2, b1)]
    assert frames[0] == frames[1] == frames[2]
    assert set(frames[0]) == {"type", "message"}
    message = frames[0]["message"]
    check_message_object(message)
    assert message == {
        "id": 1,
        "sender_id": p.a.id,
        "sender_username": p.a.username,
        "sender_profile_picture": picture.body["profile_picture"],
        "content": "Salut, ça va ?",
        "created_at": message["created_at"],
        "is_read": False,
        "attachment": None,
        "conversation_id": p.cid,
    }
    assert message["sender_profile_picture"].startswith("http://")

    stored = await history(api, p.cid, p.b)
    assert stored.body["results"] == [message]


async def test_new_message_notifies_every_other_participant_but_not_the_sender(api, services):
    p = await pair(api, services)
    notif_a = await notifications(api, p.a)
    notif_b1 = await notifications(api, p.b)
    notif_b2 = await notifications(api, p.b)
    a = await join(api, p.cid, p.a)
    await a.send({"type": "message", "content": "Salut, ça va ?"})
    sent = (await messages(a, 1))[0]

    for notif in (notif_b1, notif_b2):
        frame = await notif.recv_type("notification")
        # The seed's frame plus the user's notification id (for resuming with `?after=`).
        assert set(frame) == {"type", "id", "notification"} and isinstance(frame["id"], int)
        notification = frame["notification"]
        assert set(notification) == {"type", "timestamp", "message"}
        assert notification["type"] == "new_message"
        assert ISO_Z.match(notification["timestamp"])
        assert notification["message"] == {
            "id": sent["id"],
            "conversation_id": p.cid,
            "sender": {"id": p.a.id, "username": p.a.username, "profile_picture": None},
            "content": "Salut, ça va ?",
            "created_at": sent["created_at"],
        }
    # The sender's notifications socket stays quiet (its status frame about bob's join is on the
    # conversation socket, not here).
    assert [f for f in await notif_a.silent(0.3) if f.get("type") == "notification"] == []


async def test_client_id_is_echoed_to_the_sender_and_shown_to_the_other(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    b = await join(api, p.cid, p.b)
    await a.send({"type": "message", "content": "hi", "client_id": "c-1"})
    for ws in (a, b):
        message = (await messages(ws, 1))[0]
        check_message_object(message)
        assert message["client_id"] == "c-1"


async def test_typing_goes_to_the_others_only(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    b1 = await join(api, p.cid, p.b)
    b2 = await join(api, p.cid, p.b)
    for is_typing in (True, False):
        await b1.send({"type": "typing", "is_typing": is_typing})
        frame = await a.recv_type("typing")
        assert frame == {"type": "typing", "user_id": p.b.id, "username": p.b.username, "is_typing": is_typing}
    # Neither of the typist's sockets hears its own typing.
    assert [f for f in await b1.silent(0.2) + await b2.silent(0.1) if f["type"] == "typing"] == []


async def test_read_receipt_marks_that_message_and_earlier_ones_read_and_is_broadcast(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    b = await join(api, p.cid, p.b)
    for text in ("one", "two", "three"):
        await a.send({"type": "message", "content": text})
    assert [m["is_read"] for m in await messages(a, 3)] == [False] * 3
    await messages(b, 3)

    await b.send({"type": "read_receipt", "message_id": 2})
    for ws in (a, b):
        frame = await ws.recv_type("read_receipt")
        assert set(frame) == {"type", "message_id", "user_id", "username", "timestamp"}
        assert frame["message_id"] == 2 and frame["user_id"] == p.b.id and frame["username"] == p.b.username
        assert ISO_Z.match(frame["timestamp"])

    for viewer in (p.a, p.b):
        results = (await history(api, p.cid, viewer)).body["results"]
        assert [(m["id"], m["is_read"]) for m in results] == [(1, True), (2, True), (3, False)]

    # Reading the same point again changes nothing and broadcasts nothing.
    await b.send({"type": "read_receipt", "message_id": 1})
    assert [f for f in await a.silent(0.3) if f["type"] == "read_receipt"] == []

    # A reader's own messages are not marked read by their own receipt.
    await b.send({"type": "message", "content": "reply"})
    assert (await messages(b, 1))[0]["id"] == 4
    await b.send({"type": "read_receipt", "message_id": 4})
    await b.send({"type": "ping"})
    await b.recv_type("pong")  # frames of one socket are handled in order: the receipt is done
    results = (await history(api, p.cid, p.a)).body["results"]
    assert results[-1]["id"] == 4 and results[-1]["is_read"] is False


async def test_application_ping_is_answered_pong_on_both_endpoints(api, services):
    p = await pair(api, services)
    conv = await join(api, p.cid, p.a)
    notif = await notifications(api, p.a)
    for ws in (conv, notif):
        await ws.send({"type": "ping"})
        assert await ws.recv_type("pong") == {"type": "pong"}


async def test_joining_socket_gets_the_other_participants_current_status(api, services):
    p = await pair(api, services)
    a = await ws_connect(api, f"/ws/conversations/{p.cid}/?token={p.a.access}")
    first = await a.recv()
    assert set(first) == {"type", "user_id", "username", "status", "timestamp"}
    assert first["type"] == "status" and first["user_id"] == p.b.id and first["username"] == p.b.username
    assert first["status"] == "offline" and ISO_Z.match(first["timestamp"])

    await notifications(api, p.b)  # bob is online through either endpoint
    assert (await a.recv_type("status"))["status"] == "online"
    a2 = await ws_connect(api, f"/ws/conversations/{p.cid}/?token={p.a.access}")
    first = await a2.recv()
    assert first["type"] == "status" and first["user_id"] == p.b.id and first["status"] == "online"


async def test_status_transitions_follow_the_last_socket_of_either_endpoint(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)

    notif = await notifications(api, p.b)
    online = await a.recv_type("status")
    assert online["user_id"] == p.b.id and online["username"] == p.b.username and online["status"] == "online"
    assert ISO_Z.match(online["timestamp"])

    conv = await join(api, p.cid, p.b)
    notif.close()
    # A second socket opening and the first one closing are not transitions.
    assert [f for f in await a.silent(0.4) if f["type"] == "status"] == []

    conv.close()
    offline = await a.recv_type("status")
    assert offline["user_id"] == p.b.id and offline["status"] == "offline"
    assert ISO_Z.match(offline["timestamp"])

    # And back online through a conversation socket this time.
    await join(api, p.cid, p.b)
    assert (await a.recv_type("status"))["status"] == "online"
    # The user's own sockets are not told about themselves.
    assert [f for f in await a.silent(0.2) if f["type"] == "status" and f["user_id"] == p.a.id] == []


async def test_a_connection_lost_without_a_close_frame_also_reports_offline(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    b = await join(api, p.cid, p.b)
    assert (await a.recv_type("status"))["status"] == "online"
    abort(b)  # the network goes away: no close handshake
    offline = await a.recv_type("status")
    assert offline["user_id"] == p.b.id and offline["status"] == "offline"


async def test_the_seed_javascript_client_reads_every_field_it_uses(api, services):
    """Replays the `onmessage` switches of the seed's two JavaScript examples over real traffic."""
    p = await pair(api, services)
    log: list[str] = []

    def on_conversation_frame(data):
        match data["type"]:
            case "message":
                log.append(f"Nouveau message de {data['message']['sender_username']}: {data['message']['content']}")
            case "typing":
                verb = "est en train d'écrire..." if data["is_typing"] else "a arrêté d'écrire"
                log.append(f"{data['username']} {verb}")
            case "read_receipt":
                log.append(f"Message {data['message_id']} lu par {data['username']}")
            case "status":
                log.append(f"{data['username']} est {data['status']}")
            case _:
                log.append("Message inconnu")

    def on_notification_frame(data):
        if data["type"] == "notification":
            notification = data["notification"]
            if notification["type"] == "new_message":
                sender = notification["message"]["sender"]["username"]
                log.append(
                    f"Nouveau message de {sender} dans la conversation {notification['message']['conversation_id']}"
                )

    notif_a = await notifications(api, p.a)
    # The pong comes after the socket joined and Alice's `online` was announced; B, joining after that,
    # learns her status once, from the join.
    await notif_a.send({"type": "ping"})
    await notif_a.recv_type("pong")
    b = await ws_connect(api, f"/ws/conversations/{p.cid}/?token={p.b.access}")
    on_conversation_frame(await b.recv())
    await b.send({"type": "typing", "is_typing": True})
    await b.send({"type": "message", "content": "Salut"})
    on_conversation_frame(await b.recv())  # the echo: typing is never echoed to the typist
    on_notification_frame(await notif_a.recv_type("notification"))

    a = await ws_connect(api, f"/ws/conversations/{p.cid}/?token={p.a.access}")
    on_conversation_frame(await a.recv())
    await b.send({"type": "typing", "is_typing": True})
    on_conversation_frame(await a.recv())
    await a.send({"type": "read_receipt", "message_id": 1})
    on_conversation_frame(await a.recv())

    assert log[0] == f"{p.a.username} est online"
    assert log[1:3] == [
        f"Nouveau message de {p.b.username}: Salut",
        f"Nouveau message de {p.b.username} dans la conversation {p.cid}",
    ]
    assert log[3:] == [
        f"{p.b.username} est online",
        f"{p.b.username} est en train d'écrire...",
        f"Message 1 lu par {p.a.username}",
    ]


# -- what opening a socket costs ---------------------------------------------------------------------------


def count_store_commands(monkeypatch):
    """Count the commands sent to each collection (a find_one is one, not also the find it runs)."""
    counts: collections.Counter[str] = collections.Counter()
    inner = contextvars.ContextVar("inner", default=False)
    for name in ("find", "find_one", "aggregate", "count_documents", "insert_one", "update_one", "update_many"):
        method = getattr(AsyncCollection, name)
        if inspect.iscoroutinefunction(method):

            async def counted_async(self, *args, _method=method, **kwargs):
                counts[self.name] += 1
                token = inner.set(True)
                try:
                    return await _method(self, *args, **kwargs)
                finally:
                    inner.reset(token)

            monkeypatch.setattr(AsyncCollection, name, counted_async)
        else:

            def counted(self, *args, _method=method, **kwargs):
                if not inner.get():
                    counts[self.name] += 1
                return _method(self, *args, **kwargs)

            monkeypatch.setattr(AsyncCollection, name, counted)
    return counts


async def test_opening_a_conversation_socket_reads_each_thing_once(api, services, monkeypatch):
    p = await pair(api, services)
    # A node that has seen neither user yet, as in a connect storm.
    services.users.liveness.forget()
    services.users._summaries.clear()
    counts = count_store_commands(monkeypatch)
    a = await join(api, p.cid, p.a)
    # Alice's account and summary (one document), her open conversations (which answer the membership
    # and are where she is announced), the newest message id, and Bob's summary with his last_seen.
    assert counts == {"users": 2, "conversations": 1, "messages": 1}, counts
    counts.clear()
    await join(api, p.cid, p.b)
    assert counts == {"users": 1, "conversations": 1, "messages": 1}, counts  # Alice is online: no read
    assert (await a.recv_type("status"))["status"] == "online"
    counts.clear()
    # Not her first socket: nothing to announce, the membership is a point read of the conversation.
    await join(api, p.cid, p.a)
    assert counts == {"conversations": 1, "messages": 1}, counts


async def test_a_new_match_admits_its_participants_and_carries_their_presence(api, services):
    """A conversation opened after a user came online: their next socket is admitted on it (membership is
    read, not remembered), and the first socket of the other announces them there."""
    a = await api.user("alice")
    b = await api.user("bob")
    await notifications(api, a)  # Alice is online, counted on this node, before the match exists
    assert (await api.post("/api/likes/", {"user_id": b.id}, token=a.access)).status == 201
    liked = await api.post("/api/likes/", {"user_id": a.id}, token=b.access)
    assert liked.status == 201 and liked.body["match"] is not None, liked.body
    cid = liked.body["match"]["conversation_id"]
    on_a = await join(api, cid, a)
    await join(api, cid, b)  # Bob's first socket: his open conversations are read with the membership
    online = await on_a.recv_type("status")
    assert online["user_id"] == b.id and online["status"] == "online"


async def test_a_read_receipt_per_replayed_message_is_one_high_water_mark_and_costs_no_budget(api, services):
    """A client that marks each of 90 replayed messages read, one frame each, faster than FRAME_BURST
    allows, is neither refused nor closed: receipts at or below the mark, or arriving while it is being
    written, change nothing and cost nothing; the mark ends at the newest."""
    p = await pair(api, services)
    for start in range(0, 90, 10):
        await asyncio.gather(*(services.chat.send_message(p.cid, p.a.id, f"m{i}") for i in range(start, start + 10)))
    watcher = await join(api, p.cid, p.a)
    reader = await join(api, p.cid, p.b, after=0)
    replayed = await messages(reader, 90)
    assert [m["id"] for m in replayed] == list(range(1, 91))
    assert services.settings.frame_burst < 90 + 2
    for message in replayed:
        await reader.send({"type": "read_receipt", "message_id": message["id"]})
    for message in replayed[:10]:  # once more, as a second tab would: nothing moves
        await reader.send({"type": "read_receipt", "message_id": message["id"]})
    await reader.send({"type": "ping"})
    answered: list[dict[str, Any]] = []
    while (frame := await reader.recv(timeout=10)) is not None and frame["type"] != "pong":
        answered.append(frame)
    assert frame is not None, (reader.close_code, answered)
    assert [f for f in answered if f["type"] == "error"] == []

    receipts: list[dict[str, Any]] = []
    while not receipts or receipts[-1]["message_id"] != 90:
        receipts.append(await watcher.recv_type("read_receipt"))
    ids = [r["message_id"] for r in receipts]
    assert ids == sorted(set(ids)) and len(ids) < 90, ids  # increasing, coalesced
    stored = await services.store.conversations.find_one({"_id": p.cid})
    assert stored["read_seq"][str(p.b.id)] == 90
    # A receipt past the newest message is still refused, and the socket stays usable.
    await reader.send({"type": "read_receipt", "message_id": 500})
    refused = await reader.recv_type("error")
    assert refused["code"] == "message_not_found"
    await reader.send({"type": "read_receipt", "message_id": 90})
    await reader.send({"type": "ping"})
    assert (await reader.recv_type("pong"))["type"] == "pong"
