from tests.support import ws_connect
from tests.ws_helpers import conv_path, join, notifications, pair


async def test_message_roundtrip(api, services):
    p = await pair(api, services)
    a, b, cid = p.a, p.b, p.cid
    ws_a = await join(api, cid, a)
    ws_b = await join(api, cid, b)  # past its status frame: b has joined, a message now reaches it
    notif_b = await notifications(api, b)
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
    ws_c = await ws_connect(api, conv_path(cid, b, after=0))
    got = await ws_c.recv_type("message")
    assert got["message"]["id"] == 1 and got["message"]["is_read"] is True
    bad = await ws_connect(api, conv_path(cid, None))
    assert (await bad.closed())[0] == 4000
