"""A node whose process exits after its stop sends every socket its close frame and does not wait for the
answers: the exit closes the connections. Only a socket whose frame has not left yet is waited for."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from services.realtime.hub import Connections, Peer
from tests.ws_helpers import join, notifications, pair


class ClosingPeer(Peer):
    """A peer whose transport says how much it has not sent yet and can be released."""

    def __init__(self, connections: Connections, unsent: int) -> None:
        self.init_peer(connections, outbound_limit=1 << 20)
        self.unsent = unsent
        self.shut_with: tuple[int, str] | None = None
        self.released = False

    def _unsent_bytes(self) -> int:
        return self.unsent

    def _shut(self, code: int, reason: str) -> None:
        self.shut_with = (code, reason)

    def _release(self) -> bool:
        self.released = True
        return True


def connections_holding(*unsent: int) -> tuple[Connections, list[ClosingPeer]]:
    bus = SimpleNamespace(set_handler=lambda handler: None)
    connections = Connections(bus, max_sockets=10, max_per_user=10, max_conversation_per_user=10)  # type: ignore[arg-type]
    peers = [ClosingPeer(connections, n) for n in unsent]
    connections.peers.update(peers)
    return connections, peers


async def test_sockets_whose_close_frame_left_are_released_and_a_slow_reader_is_waited_for_until_it_leaves():
    connections, (sent, slow) = connections_holding(0, 4096)
    stop = asyncio.ensure_future(connections.close_all(1001, "server shutting down", grace_s=30, process_ends=True))
    await asyncio.sleep(0.3)
    assert sent.shut_with == slow.shut_with == (1001, "server shutting down")
    assert sent.released and not slow.released and not stop.done()
    slow.unsent = 0  # its reader took the rest: the close frame is on the wire
    await asyncio.wait_for(stop, 2)
    assert slow.released


async def test_a_slow_reader_is_not_waited_for_past_the_grace():
    connections, (slow,) = connections_holding(4096)
    await asyncio.wait_for(connections.close_all(1001, "server shutting down", grace_s=0.3, process_ends=True), 5)
    assert slow.shut_with == (1001, "server shutting down") and not slow.released


async def test_without_the_process_ending_the_stop_still_waits_for_the_clients_answers():
    connections, (sent,) = connections_holding(0)
    stop = asyncio.ensure_future(connections.close_all(1001, "server shutting down", grace_s=30))
    await asyncio.sleep(0.3)
    assert not stop.done() and not sent.released
    await connections.remove(sent)  # its answer came: the transport closed it
    await asyncio.wait_for(stop, 2)


async def test_real_clients_see_1001_though_the_node_never_reads_their_answers(api, services):
    p = await pair(api, services)
    sockets = [await join(api, p.cid, p.a), await join(api, p.cid, p.b), await notifications(api, p.a)]
    server_sides = list(services.connections.peers)
    assert len(server_sides) == 3
    await asyncio.wait_for(
        services.connections.close_all(1001, "server shutting down", grace_s=30, process_ends=True), 10
    )
    try:
        for ws in sockets:
            assert (await ws.closed(5))[0] == 1001
        # Nothing of the answers was read: no socket went through its close, none was unregistered.
        assert set(services.connections.peers) == set(server_sides)
        assert all(not peer.closed_connection.stream.closed() for peer in server_sides)
    finally:
        for peer in server_sides:  # what the process exit does
            peer.closed_connection.stream.close()
