from tests.support import make_conversation, ws_connect


async def test_message_roundtrip(api, services):
    a = await api.user("a")
    b = await api.user("b")
    cid = await make_conversation(services, a.id, b.id)
    ws_a = await ws_connect(api, f"/ws/conversations/{cid}/?token={a.access}")
    ws_b = await ws_connect(api, f"/ws/conversations/{cid}/?token={b.access}")
    await ws_b.recv_type("status")  # b has joined: a message sent before that would not reach it
    notif_b = await ws_connect(api, f"/ws/notifications/?token={b.access}")
    await ws_a.send({"type": "message", "content": "Salut, ça va ?"})
    got_a = await ws_a.recv_type("message")
    got_b = await ws_b.recv_type("message")
    assert got_a == got_b
    assert got_a["message"]["id"] == 1 and got_a["message"]["content"] == "Salut, ça va ?"
    n = await notif_b.recv_type("notification")
    assert n["notification"]["type"] == "new_message"
    assert n["notification"]["message"]["conversation_id"] == cid
    await ws_b.send({"type": "typing", "is_typing": True})
    t = await ws_a.recv_type("typing")
    assert t == {"type": "typing", "user_id": b.id, "username": b.username, "is_typing": True}
    await ws_b.send({"type": "read_receipt", "message_id": 1})
    r = await ws_a.recv_type("read_receipt")
    assert r["message_id"] == 1 and r["user_id"] == b.id
    ws_c = await ws_connect(api, f"/ws/conversations/{cid}/?token={b.access}&after=0")
    got = await ws_c.recv_type("message")
    assert got["message"]["id"] == 1 and got["message"]["is_read"] is True
    bad = await ws_connect(api, f"/ws/conversations/{cid}/")
    assert (await bad.closed())[0] == 4000
