"""Matching and the notifications socket together: likes and matches arrive live, in the seed's shape."""

from __future__ import annotations

from tests.support import ws_connect

ADULT = {"birthdate": "1994-03-02"}


async def test_like_and_match_notifications_reach_the_notifications_socket(api):
    thomas = await api.user("thomas", gender="man", interested_in=["woman"], **ADULT)
    sophie = await api.user("sophie", gender="woman", interested_in=["man"], **ADULT)
    ws_thomas = await ws_connect(api, f"/ws/notifications/?token={thomas.access}")
    ws_sophie = await ws_connect(api, f"/ws/notifications/?token={sophie.access}")

    liked = await api.post("/api/likes/", {"user_id": sophie.id}, token=thomas.access)
    assert liked.status == 201 and liked.body["match"] is None
    like = await ws_sophie.recv_type("notification")
    assert like["notification"]["type"] == "new_like"
    assert set(like["notification"]) == {"type", "timestamp", "liker"}
    assert like["notification"]["liker"] == {"id": thomas.id, "username": thomas.username, "profile_picture": None}
    assert like["notification"]["timestamp"].endswith("Z")

    back = await api.post("/api/likes/", {"user_id": thomas.id}, token=sophie.access)
    assert back.status == 201 and back.body["match"] is not None
    for ws, other in ((ws_thomas, sophie), (ws_sophie, thomas)):
        match = (await ws.recv_type("notification"))["notification"]
        assert match["type"] == "new_match"
        assert match["match"]["user"] == {"id": other.id, "username": other.username, "profile_picture": None}
        assert match["match"]["id"] == back.body["match"]["id"]
        assert {"id", "user", "created_at"} <= set(match["match"])
        conversation_id = match["match"]["conversation_id"]

    # The match opened a conversation both can use at once; the seed's new_message follows.
    ws_conv = await ws_connect(api, f"/ws/conversations/{conversation_id}/?token={thomas.access}")
    await ws_conv.send({"type": "message", "content": "Salut !"})
    note = (await ws_sophie.recv_type("notification"))["notification"]
    assert note["type"] == "new_message"
    assert note["message"]["conversation_id"] == conversation_id
    assert note["message"]["sender"]["id"] == thomas.id
    assert note["message"]["content"] == "Salut !"
    # Nothing else arrived for Thomas: a sender gets no notification of his own message.
    assert [f for f in await ws_thomas.silent(0.3) if f["type"] == "notification"] == []
