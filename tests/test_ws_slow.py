"""A reader that falls behind: typing events are dropped first, then the socket is closed 1008 "slow
consumer" before the server holds more than OUTBOUND_BUFFER_BYTES for it."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import pytest

from services.realtime.hub import Peer
from tests.ws_helpers import join, pair, send_rest, wait_for

LIMIT = 256 * 1024
# 4-byte characters: one message is about 60 KB on the wire while staying under the frame limit.
BIG = "\U0001f600" * 15_000


@pytest.fixture
def settings_overrides():
    return {
        "outbound_buffer_bytes": LIMIT,
        "max_content_chars": 20_000,
        "max_body_bytes": 128 * 1024,
        "message_rate": 10_000.0,
        "message_burst": 10_000,
    }


class StuckPeer(Peer):
    """A peer whose connection never flushes anything."""

    def __init__(self, limit: int) -> None:
        self.init_peer(connections=SimpleNamespace(metrics=None), outbound_limit=limit)  # type: ignore[arg-type]
        self.sent: list[bytes] = []
        self.shut_with: tuple[int, str] | None = None

    def _transmit(self, data):
        self.sent.append(data)
        return asyncio.get_running_loop().create_future()

    def _shut(self, code, reason):
        self.shut_with = (code, reason)


async def test_typing_is_dropped_once_a_quarter_of_the_buffer_is_owed_and_the_rest_closes_at_the_limit():
    peer = StuckPeer(1000)
    peer.push(b"t" * 10, droppable=True)
    assert peer.sent == [b"t" * 10]  # not behind yet: typing goes out

    peer.push(b"m" * 300)
    peer.push(b"t" * 10, droppable=True)
    assert peer.sent[-1] == b"m" * 300  # behind by more than a quarter: typing dropped
    peer.push(b"m" * 600)
    assert peer.sent[-1] == b"m" * 600 and peer.shut_with is None  # messages still go, up to the limit
    assert peer.outstanding == 910

    peer.push(b"m" * 100)
    assert peer.shut_with == (1013, "slow consumer")
    assert peer.outstanding == 910  # the frame that would pass the limit is not queued
    peer.push(b"m")
    assert len(peer.sent) == 3  # nothing more once closing


def server_side(services, client):
    """The server's peer for a client socket (matched by the client's local address)."""
    address = client.conn.protocol.stream.socket.getsockname()
    return next(p for p in services.connections.peers if p.ws_connection.stream.socket.getpeername() == address)


async def test_a_reader_that_stops_reading_is_closed_1008_without_the_server_holding_more_than_the_limit(api, services):
    p = await pair(api, services)
    fast = await join(api, p.cid, p.b)
    slow = await join(api, p.cid, p.b)
    slow_peer, fast_peer = server_side(services, slow), server_side(services, fast)
    # Keep the server's kernel send buffer small so that what fills is the server's own bound, not the
    # loopback's megabytes. The client just stops reading (Tornado's client then stops taking from its
    # socket); its receive buffer keeps the default size so that catching up later is quick.
    slow_peer.ws_connection.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    typist = await join(api, p.cid, p.a)
    fast_typing = []

    async def keep_reading():
        ids = []
        while True:
            frame = await fast.recv(timeout=30)
            if frame["type"] == "typing":
                fast_typing.append(frame)
            elif frame["type"] == "message":
                ids.append(frame["message"]["id"])
                if frame["message"]["content"] == "still here":
                    return ids

    reader = asyncio.ensure_future(keep_reading())
    highest = 0
    sent = 0
    while not slow_peer.closing:
        results = await asyncio.gather(*(send_rest(api, p.cid, p.a, BIG) for _ in range(2)))
        assert all(r.status == 201 for r in results)
        sent += 2
        highest = max(highest, slow_peer.outstanding)
        if slow_peer.outstanding > LIMIT // 4 and not fast_typing:
            # Behind by more than a quarter: a typing event is not worth queueing for this reader.
            await typist.send({"type": "typing", "is_typing": True})
            await wait_for(lambda: fast_typing)
        assert sent < 100, "the slow reader was never closed"
    assert highest <= LIMIT and not fast_peer.closing

    # The client reads again: it gets what was already on its way, then the close frame.
    drained = []
    while (frame := await slow.recv(timeout=5)) is not None:
        drained.append(frame["type"])
    assert (slow.close_code, slow.conn.close_reason) == (1013, "slow consumer")
    assert 0 < drained.count("message") < sent
    assert fast_typing and "typing" not in drained
    await wait_for(lambda: slow_peer not in services.connections.peers)

    # The other socket of the same user was unaffected and got everything, in order.
    assert (await send_rest(api, p.cid, p.a, "still here")).status == 201
    assert await reader == list(range(1, sent + 2))
