"""How a socket hands frames to Tornado: without a Task per frame, its unsent bytes read from the stream.

`BaseSocket._transmit` and `BaseSocket._unsent_bytes` go through handlers/tornado_internals.py (IOStream's
write indexes, WebSocketProtocol13._write_frame). These tests fail if a Tornado upgrade changes them,
rather than letting the server fall back to its slower path unnoticed."""

from __future__ import annotations

import asyncio
import inspect
import socket

import orjson
import tornado.httpclient
import tornado.iostream
import tornado.websocket

from handlers.sockets import BaseSocket
from tests.support import WsClient
from tests.ws_helpers import conv_path, join, messages, pair, send_rest, wait_for


def server_side(services, client):
    """The server's peer for a client socket (matched by the client's local address)."""
    address = client.conn.protocol.stream.socket.getsockname()
    return next(p for p in services.connections.peers if p.ws_connection.stream.socket.getpeername() == address)


async def test_the_tornado_internals_the_socket_adapter_uses_are_there():
    parameters = list(inspect.signature(tornado.websocket.WebSocketProtocol13._write_frame).parameters)
    assert parameters[:5] == ["self", "fin", "opcode", "data", "flags"]

    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setblocking(False)
    stream = tornado.iostream.IOStream(ours)
    try:
        data = b"z" * (1024 * 1024)
        written = stream.write(data)
        # The write indexes: bytes handed to the stream, and bytes the kernel took.
        assert stream._total_write_index == len(data)
        assert 0 < stream._total_write_index - stream._total_write_done_index < len(data)
        received = 0
        while received < len(data):
            try:
                received += len(theirs.recv(1024 * 1024))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        await written
        assert stream._total_write_done_index == len(data)
    finally:
        stream.close()
        theirs.close()


async def test_frames_go_out_without_a_task_and_the_stream_reports_what_it_has_not_sent(api, services):
    p = await pair(api, services)
    client = await join(api, p.cid, p.b)
    peer = server_side(services, client)
    assert peer._unsent_bytes() == 0  # not None: the Task-free path is in use

    tasks = asyncio.all_tasks()
    peer.push(b'{"type":"pong"}')
    assert asyncio.all_tasks() <= tasks and peer.counted == 0
    assert await client.recv() == {"type": "pong"}

    # The client stops reading (Tornado's client stops taking from its socket once a frame waits
    # unread) and the server's kernel buffer is small: what the kernel cannot take stays in the stream.
    peer.ws_connection.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    frames = [orjson.dumps({"type": "pong", "n": n, "pad": "x" * 4000}) for n in range(200)]
    for frame in frames:
        peer.push(frame)
    unsent = peer._unsent_bytes()
    assert unsent is not None and 0 < unsent <= sum(len(f) + 4 for f in frames)
    assert peer.outstanding == unsent and not peer.closing

    received = [await client.recv() for _ in frames]
    assert [f["n"] for f in received] == list(range(200)) and received[-1]["pad"] == "x" * 4000
    await wait_for(lambda: peer._unsent_bytes() == 0)


async def test_a_socket_that_may_compress_writes_through_write_message_and_counts_its_writes(
    api, services, monkeypatch
):
    monkeypatch.setattr(BaseSocket, "get_compression_options", lambda self: {})
    p = await pair(api, services)
    request = tornado.httpclient.HTTPRequest(f"ws://127.0.0.1:{api.port}{conv_path(p.cid, p.b)}")
    conn = await tornado.websocket.websocket_connect(request, compression_options={})
    assert conn.headers is not None  # set once the handshake is done, which websocket_connect awaited
    assert "permessage-deflate" in conn.headers.get("Sec-WebSocket-Extensions", "")
    client = WsClient(conn)
    assert (await client.recv())["type"] == "status"
    peer = server_side(services, client)
    assert peer._unsent_bytes() is None

    frame = orjson.dumps({"type": "pong", "pad": "y" * 5000})
    peer.push(frame)
    assert peer.counted == len(frame)  # counted until write_message's future completes
    assert await client.recv() == orjson.loads(frame)
    await wait_for(lambda: peer.counted == 0)


async def test_a_joined_socket_keeps_nothing_of_its_handshake_and_goes_on_working(api, services):
    """A socket lives for hours: the handshake's headers and query arguments (a list each, kept by
    Tornado's handshake coroutine) are emptied once it joined, and nothing after the join misses them."""
    p = await pair(api, services)
    first = await send_rest(api, p.cid, p.a, "before")
    assert first.status == 201
    client = await join(api, p.cid, p.b, after=0)  # a resume reads `after` before the join ends
    assert (await messages(client, 1))[0]["content"] == "before"
    peer = server_side(services, client)
    assert len(peer.request.headers) == 0 and peer.request.query_arguments == peer.request.arguments == {}
    assert len(peer._headers) == 0  # the 101's, sent already
    assert "token=" in peer.request.uri and peer.request.remote_ip  # what the close line reads

    await send_rest(api, p.cid, p.a, "after")
    assert (await messages(client, 1))[0]["content"] == "after"
    await client.send({"type": "ping"})
    assert await client.recv() == {"type": "pong"}


async def test_close_codes_a_client_chooses_are_counted_under_one_label(api, services):
    """`chat_websocket_closes` is labelled by close code: a client closing with codes of its own choosing
    (3000 to 4999) must not make a series each."""
    p = await pair(api, services)
    closes = services.metrics.closes
    for code in (3001, 3999, 4321):
        client = await join(api, p.cid, p.b)
        client.close(code)
        await wait_for(lambda code=code: closes.child("other").value == [3001, 3999, 4321].index(code) + 1)
    client = await join(api, p.cid, p.b)
    client.close(1000)
    await wait_for(lambda: closes.child("1000").value == 1)
    assert not {"3001", "3999", "4321"} & set(closes._children)
