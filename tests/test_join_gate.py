"""The join gate (services/realtime/admission.py): at most JOIN_CONCURRENCY sockets open at once, up to
JOIN_QUEUE more wait their turn in arrival order, and one past both is closed 1013 at once; a client that
retries later gets in. A reconnect storm then queues instead of swamping the store with reads that all
time out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.realtime.admission import JoinGate
from services.realtime.close_codes import CLOSE_GOING_AWAY, CLOSE_TRY_AGAIN_LATER
from services.realtime.hub import LimitExceeded
from tests.support import ws_connect
from tests.ws_helpers import abort, join, notifications, pair, wait_for

USER = 7

# -- the gate alone ------------------------------------------------------------------------------------


async def hold(gate: JoinGate, release: asyncio.Event, user_id: int = USER, open_sockets: int = 0) -> bool:
    """Hold a place at the gate until `release` is set; whether the opening waited for its turn."""
    async with gate.admit(user_id, open_sockets) as waited:
        await release.wait()
    return waited


async def test_openings_past_the_concurrency_wait_in_arrival_order_and_past_the_queue_are_refused() -> None:
    gate = JoinGate(concurrency=2, queue=2, per_user=20)
    release = asyncio.Event()
    order: list[int] = []

    async def opening(n: int) -> None:
        async with gate.admit(USER, 0):
            order.append(n)
            await release.wait()

    tasks = [asyncio.create_task(opening(n)) for n in range(4)]
    await wait_for(lambda: gate.running == 2 and gate.waiting == 2)
    assert order == [0, 1]
    with pytest.raises(LimitExceeded) as refused:
        async with gate.admit(USER, 0):
            pass
    assert refused.value.close_code == CLOSE_TRY_AGAIN_LATER
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]
    assert (gate.running, gate.waiting) == (0, 0)


async def test_an_opening_cancelled_while_waiting_gives_its_turn_to_the_next() -> None:
    gate = JoinGate(concurrency=1, queue=5, per_user=20)
    release = asyncio.Event()
    admitted: list[str] = []

    async def opening(name: str) -> None:
        async with gate.admit(USER, 0):
            admitted.append(name)
            await release.wait()

    first = asyncio.create_task(opening("first"))
    await wait_for(lambda: gate.running == 1)
    gone = asyncio.create_task(opening("gone"))
    last = asyncio.create_task(opening("last"))
    await wait_for(lambda: gate.waiting == 2)
    gone.cancel()
    release.set()
    await asyncio.gather(first, last)
    assert gone.cancelled() and admitted == ["first", "last"]
    assert (gate.running, gate.waiting) == (0, 0)


async def test_a_place_handed_over_at_the_moment_of_cancellation_is_passed_on() -> None:
    gate = JoinGate(concurrency=1, queue=5, per_user=20)
    admitted: list[str] = []

    async def opening(name: str) -> None:
        async with gate.admit(USER, 0):
            admitted.append(name)

    held = gate.admit(USER, 0)
    await held.__aenter__()
    unlucky = asyncio.create_task(opening("unlucky"))
    after = asyncio.create_task(opening("after"))
    await wait_for(lambda: gate.waiting == 2)
    # The place goes to `unlucky`, and it is cancelled before its task runs again.
    await held.__aexit__(None, None, None)
    unlucky.cancel()
    await asyncio.gather(unlucky, after, return_exceptions=True)
    assert unlucky.cancelled() and admitted == ["after"]
    assert (gate.running, gate.waiting) == (0, 0)


async def test_a_closing_gate_refuses_the_waiting_and_the_arriving_with_1001() -> None:
    gate = JoinGate(concurrency=1, queue=5, per_user=20)
    release = asyncio.Event()
    running = asyncio.create_task(hold(gate, release))
    await wait_for(lambda: gate.running == 1)
    waiting = [asyncio.create_task(hold(gate, release)) for _ in range(3)]
    await wait_for(lambda: gate.waiting == 3)
    gate.close()
    for refused in await asyncio.gather(*waiting, return_exceptions=True):
        assert isinstance(refused, LimitExceeded) and refused.close_code == CLOSE_GOING_AWAY
    with pytest.raises(LimitExceeded) as late:
        async with gate.admit(USER, 0):
            pass
    assert late.value.close_code == CLOSE_GOING_AWAY
    release.set()
    await running  # the one already running finishes
    assert (gate.running, gate.waiting) == (0, 0)


async def test_one_user_holds_at_most_per_user_places_counting_the_sockets_already_open() -> None:
    gate = JoinGate(concurrency=1, queue=100, per_user=3)
    release = asyncio.Event()
    mine = [asyncio.create_task(hold(gate, release)) for _ in range(3)]
    await wait_for(lambda: gate.running == 1 and gate.waiting == 2)
    with pytest.raises(LimitExceeded) as refused:
        async with gate.admit(USER, 0):
            pass
    assert (refused.value.close_code, str(refused.value)) == (1008, "too many connections")
    # Someone else still gets a place in line.
    theirs = asyncio.create_task(hold(gate, release, USER + 1))
    await wait_for(lambda: gate.waiting == 3)
    # Sockets already open count: a user with 2 open has room for one opening, not two.
    other = asyncio.create_task(hold(gate, release, USER + 2, open_sockets=2))
    await wait_for(lambda: gate.waiting == 4)
    with pytest.raises(LimitExceeded):
        async with gate.admit(USER + 2, 2):
            pass
    release.set()
    await asyncio.gather(*mine, theirs, other)
    assert [gate.places_of(u) for u in (USER, USER + 1, USER + 2)] == [0, 0, 0]
    assert gate._places_by_user == {}  # nothing kept for users who left
    async with gate.admit(USER, 2):  # and the user's places are free again
        assert gate.places_of(USER) == 1


async def test_a_refused_or_cancelled_opening_gives_back_its_users_place() -> None:
    gate = JoinGate(concurrency=1, queue=1, per_user=5)
    release = asyncio.Event()
    running = asyncio.create_task(hold(gate, release))
    waiting = asyncio.create_task(hold(gate, release))
    await wait_for(lambda: gate.waiting == 1)
    with pytest.raises(LimitExceeded):  # the queue is full: 1013, and the place is not kept
        async with gate.admit(USER, 0):
            pass
    assert gate.places_of(USER) == 2
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert gate.places_of(USER) == 1
    release.set()
    await running
    assert gate.places_of(USER) == 0


async def test_an_opening_learns_whether_it_waited_for_its_turn() -> None:
    """Only an opening that waited can have been left by its client meanwhile: one admitted at once skips
    asking the kernel."""
    gate = JoinGate(concurrency=1, queue=5, per_user=20)
    release = asyncio.Event()
    first = asyncio.create_task(hold(gate, release))
    await wait_for(lambda: gate.running == 1)
    second = asyncio.create_task(hold(gate, release))
    await wait_for(lambda: gate.waiting == 1)
    release.set()
    assert list(await asyncio.gather(first, second)) == [False, True]


# -- on a node -----------------------------------------------------------------------------------------


def with_settings(**overrides: Any) -> Any:
    return pytest.mark.parametrize("settings_overrides", [overrides], indirect=True)


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(getattr(request, "param", {}))


async def fill_the_gate(
    api: Any, services: Any, monkeypatch: pytest.MonkeyPatch, p: Any
) -> tuple[Any, Any, asyncio.Event]:
    """With JOIN_CONCURRENCY 1: A's conversation socket opening (its account read stalled until the
    returned event is set) and B's notifications socket waiting for a turn."""
    store_answers = asyncio.Event()
    accepts = services.users.accepts

    async def slow_store(user_id: int, generation: int) -> bool:
        await store_answers.wait()
        return bool(await accepts(user_id, generation))

    monkeypatch.setattr(services.users, "accepts", slow_store)
    running = await ws_connect(api, f"/ws/conversations/{p.cid}/?token={p.a.access}")
    await wait_for(lambda: services.joins.running == 1)
    waiting = await ws_connect(api, f"/ws/notifications/?token={p.b.access}")
    await wait_for(lambda: services.joins.waiting == 1)
    return running, waiting, store_answers


@with_settings(join_concurrency=1, join_queue=1)
async def test_a_storm_of_openings_queues_then_refuses_1013_and_the_refused_get_in_later(api, services, monkeypatch):
    p = await pair(api, services)
    running, waiting, store_answers = await fill_the_gate(api, services, monkeypatch, p)
    for path in (f"/ws/conversations/{p.cid}/?token={p.b.access}", f"/ws/notifications/?token={p.a.access}"):
        refused = await ws_connect(api, path)
        assert await refused.closed() == (1013, "server busy: too many sockets opening")
    # A bad token is refused on the spot, without a turn: it needs no store.
    forged = await ws_connect(api, f"/ws/notifications/?token={p.a.access}x")
    assert (await forged.closed())[0] == 4002

    store_answers.set()
    await running.recv_type("status")  # the other participant's status: the socket joined
    await waiting.send({"type": "ping"})
    assert await waiting.recv_type("pong")
    assert (services.joins.running, services.joins.waiting) == (0, 0)
    # The refused come back, as the seed's client does after 1013, and get in.
    back = await join(api, p.cid, p.b)
    await back.send({"type": "typing", "is_typing": True})
    again = await notifications(api, p.a)
    await again.send({"type": "ping"})
    assert await again.recv_type("pong")
    metrics = services.metrics.render().decode()
    assert 'chat_websocket_joins{state="running"} 0.0' in metrics


@with_settings(join_concurrency=1, join_queue=5)
async def test_openings_still_waiting_when_the_node_stops_close_1001(api, services, monkeypatch):
    p = await pair(api, services)
    _running, waiting, store_answers = await fill_the_gate(api, services, monkeypatch, p)
    services.shutting_down = True
    services.joins.close()
    assert await waiting.closed() == (1001, "server shutting down")
    store_answers.set()


@with_settings(join_concurrency=1, join_queue=5)
async def test_an_opening_whose_client_left_while_it_waited_reads_nothing_when_its_turn_comes(
    api, services, monkeypatch
):
    """A client whose own timeout ran out while its socket waited for a turn has closed it and come back on
    another connection: its old place in line must not cost the store the reads of a socket nobody holds."""
    p = await pair(api, services)
    running, waiting, store_answers = await fill_the_gate(api, services, monkeypatch, p)
    abandoned = services.metrics.websocket_joins_abandoned
    before = abandoned._value.get()
    abort(waiting)  # as a client does once its close frame went unanswered
    await asyncio.sleep(0.1)
    store_answers.set()
    await running.recv_type("status")
    await wait_for(lambda: (services.joins.running, services.joins.waiting) == (0, 0))
    assert abandoned._value.get() == before + 1
    assert not services.presence.store.has_sockets_here(p.b.id)
    assert services.connections.by_user.get(p.b.id) in (None, set())


@with_settings(join_concurrency=1, join_queue=50, max_sockets_per_user=3)
async def test_one_account_cannot_fill_the_join_queue(api, services, monkeypatch):
    """A script with one valid token opens socket after socket while the store is slow: without a bound per
    user its openings would take every place in the queue and everyone else would wait behind them. Its
    places and sockets together stop at MAX_SOCKETS_PER_USER, refused 1008 like the socket cap."""
    p = await pair(api, services)
    running, b_waiting, store_answers = await fill_the_gate(api, services, monkeypatch, p)
    held = [await ws_connect(api, f"/ws/notifications/?token={p.a.access}") for _ in range(2)]
    await wait_for(lambda: services.joins.waiting == 3 and services.joins.places_of(p.a.id) == 3)
    for path in (f"/ws/notifications/?token={p.a.access}", f"/ws/conversations/{p.cid}/?token={p.a.access}"):
        refused = await ws_connect(api, path)
        assert await refused.closed() == (1008, "too many connections")
    assert services.joins.places_of(p.a.id) == 3
    # Bob still gets a place in line, and in once the store answers.
    b_conversation = await ws_connect(api, f"/ws/conversations/{p.cid}/?token={p.b.access}")
    await wait_for(lambda: services.joins.waiting == 4)
    store_answers.set()
    await running.recv_type("status")
    await b_conversation.recv_type("status")
    for ws in (b_waiting, *held):
        await ws.send({"type": "ping"})
        assert await ws.recv_type("pong")
    await wait_for(lambda: (services.joins.running, services.joins.waiting) == (0, 0))
    # Alice now holds three sockets: a fourth is refused by the socket cap, with the same close.
    over = await ws_connect(api, f"/ws/notifications/?token={p.a.access}")
    assert await over.closed() == (1008, "too many connections")
