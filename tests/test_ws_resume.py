"""Lossless, duplicate-free, in-order delivery: `?after=` resume, client_id retries, concurrent senders,
holes left by writers that died, and a client that follows the seed's reconnect strategy."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.support import ws_connect
from tests.ws_helpers import (
    abort,
    allocate_hole,
    conv_path,
    history,
    history_ids,
    join,
    messages,
    pair,
    send_rest,
)

HOLE_TIMEOUT_S = 0.5


@pytest.fixture
def settings_overrides():
    # Senders here go as fast as they can: the rate limits are not under test.
    return {
        "message_rate": 10_000.0,
        "message_burst": 10_000,
        "frame_rate": 10_000.0,
        "frame_burst": 10_000,
        "hole_timeout_s": HOLE_TIMEOUT_S,
    }


async def send_many(api, cid, user, texts):
    for text in texts:
        got = await send_rest(api, cid, user, text)
        assert got.status == 201, got.body


# -- ?after= --------------------------------------------------------------------------------------------


async def test_after_sends_exactly_the_missing_messages_in_order_then_live_traffic(api, services):
    p = await pair(api, services)
    await send_many(api, p.cid, p.a, [f"m{i}" for i in range(1, 6)])

    resumed = await join(api, p.cid, p.b, after=2)
    assert [(m["id"], m["content"]) for m in await messages(resumed, 3)] == [(3, "m3"), (4, "m4"), (5, "m5")]
    await send_many(api, p.cid, p.a, ["m6"])
    assert [m["id"] for m in await messages(resumed, 1)] == [6]
    assert [f for f in await resumed.silent(0.2) if f["type"] == "message"] == []

    everything = await join(api, p.cid, p.b, after=0)
    assert [m["id"] for m in await messages(everything, 6)] == [1, 2, 3, 4, 5, 6]
    up_to_date = await join(api, p.cid, p.b, after=6)
    live_only = await join(api, p.cid, p.b)
    assert [f for f in await up_to_date.silent(0.2) + await live_only.silent(0.05) if f["type"] == "message"] == []
    await send_many(api, p.cid, p.a, ["m7"])
    for ws in (everything, up_to_date, live_only):
        assert [m["id"] for m in await messages(ws, 1)] == [7]


async def test_backlog_messages_equal_what_live_delivery_and_history_show(api, services):
    p = await pair(api, services)
    live = await join(api, p.cid, p.b)
    await send_many(api, p.cid, p.a, ["one", "two"])
    seen_live = await messages(live, 2)
    resumed = await join(api, p.cid, p.b, after=0)
    assert await messages(resumed, 2) == seen_live
    assert (await history(api, p.cid, p.b, "?after=0")).body["results"] == seen_live


async def test_after_beyond_the_last_message_still_gets_new_messages(api, services):
    p = await pair(api, services)
    await send_many(api, p.cid, p.a, ["one", "two"])
    ahead = await join(api, p.cid, p.b, after=50)
    await send_many(api, p.cid, p.a, ["three"])
    assert [m["id"] for m in await messages(ahead, 1)] == [3]


async def test_a_resume_finds_messages_its_node_never_heard_of_and_one_that_missed_nothing_reads_no_page(api, services):
    """A restarted node knows no message ids, and a conversation's `last_seq` is written behind its messages:
    the resume looks up the newest stored id past what it knows. A socket that missed nothing then reads no
    page of messages (each such page was a hundred lookups, for every socket of a restart storm)."""
    p = await pair(api, services)
    await send_many(api, p.cid, p.a, ["one", "two", "three"])
    services.chat.ids.last_seq.pop(p.cid, None)  # as after a restart
    await services.store.conversations.update_one({"_id": p.cid}, {"$set": {"last_seq": 1}})  # behind

    behind = await join(api, p.cid, p.b, after=1)
    assert [m["content"] for m in await messages(behind, 2)] == ["two", "three"]
    services.chat.ids.last_seq.pop(p.cid, None)
    pages = services.chat.ids._message_reads.queries
    up_to_date = await join(api, p.cid, p.b, after=3)
    assert [f for f in await up_to_date.silent(0.2) if f["type"] == "message"] == []
    assert services.chat.ids._message_reads.queries == pages
    await send_many(api, p.cid, p.a, ["four"])
    for ws in (behind, up_to_date):
        assert [m["content"] for m in await messages(ws, 1)] == ["four"]


async def test_backlog_longer_than_one_page_arrives_whole(api, services):
    p = await pair(api, services)
    for start in range(0, 230, 10):
        await asyncio.gather(*(services.chat.send_message(p.cid, p.a.id, f"m{i}") for i in range(start, start + 10)))
    resumed = await join(api, p.cid, p.b, after=5)
    assert [m["id"] for m in await messages(resumed, 225)] == list(range(6, 231))


# -- client_id retries ----------------------------------------------------------------------------------


async def test_socket_retry_with_the_same_client_id_returns_the_same_message_and_stores_one(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    b = await join(api, p.cid, p.b)
    await a.send({"type": "message", "content": "hello", "client_id": "k1"})
    first = (await messages(a, 1))[0]
    assert first["client_id"] == "k1"
    assert (await messages(b, 1))[0] == first

    # A retry on a socket that already showed the message adds nothing: the client has it, with its
    # client_id. A retry from a socket opened since (the usual case: the first socket died before the
    # echo arrived) is answered with the stored message.
    await a.send({"type": "message", "content": "hello", "client_id": "k1"})
    a2 = await join(api, p.cid, p.a)
    await a2.send({"type": "message", "content": "hello", "client_id": "k1"})
    assert await messages(a2, 1) == [first]
    # Nobody is shown the retries as new messages.
    for ws in (a, a2, b):
        assert [f for f in await ws.silent(0.2) if f["type"] == "message"] == []

    # The same client_id from the other participant is their own message, not a retry.
    await b.send({"type": "message", "content": "hello", "client_id": "k1"})
    assert (await messages(b, 1))[0]["id"] == 2
    assert await history_ids(api, p.cid, p.a) == [1, 2]


async def test_rest_retry_answers_200_with_the_stored_message(api, services):
    p = await pair(api, services)
    b = await join(api, p.cid, p.b)
    first = await send_rest(api, p.cid, p.a, "hi", client_id="r1")
    assert first.status == 201
    again = await send_rest(api, p.cid, p.a, "hi, edited", client_id="r1")
    assert again.status == 200 and again.body == first.body
    assert [m["id"] for m in await messages(b, 1)] == [1]
    assert [f for f in await b.silent(0.3) if f["type"] == "message"] == []
    # A socket retry of a REST send is a retry too.
    a = await join(api, p.cid, p.a)
    await a.send({"type": "message", "content": "hi", "client_id": "r1"})
    assert (await messages(a, 1))[0] == first.body
    assert await history_ids(api, p.cid, p.a) == [1]


async def test_concurrent_retries_store_one_message_and_answer_all_with_it(api, services):
    p = await pair(api, services)
    sockets = [await join(api, p.cid, p.a) for _ in range(3)]
    b = await join(api, p.cid, p.b)
    for round_ in range(3):
        key = f"same-{round_}"
        frame = {"type": "message", "content": f"once {round_}", "client_id": key}
        rest = [send_rest(api, p.cid, p.a, f"once {round_}", client_id=key) for _ in range(3)]
        direct = [services.chat.send_message(p.cid, p.a.id, f"once {round_}", key) for _ in range(3)]
        results = await asyncio.gather(*(ws.send(frame) for ws in sockets), *rest, *direct)
        rest_answers = [r for r in results if r is not None and not isinstance(r, tuple)]
        direct_answers = [r for r in results if isinstance(r, tuple)]
        assert sorted(r.status for r in rest_answers) in ([200, 200, 201], [200, 200, 200])
        # Exactly one of the nine created it (a socket send, when none of these did).
        assert sum(created for _, created in direct_answers) + [r.status for r in rest_answers].count(201) <= 1
        ids = {r.body["id"] for r in rest_answers} | {m["id"] for m, _ in direct_answers}
        for ws in sockets:
            ids |= {m["id"] for m in await messages(ws, 1)}
        assert ids == {round_ + 1}
        assert [m["id"] for m in await messages(b, 1)] == [round_ + 1]
    assert await history_ids(api, p.cid, p.a) == [1, 2, 3]
    assert await services.store.messages.count_documents({"conversation_id": p.cid}) == 3


# -- concurrent senders ---------------------------------------------------------------------------------


async def test_many_concurrent_senders_every_socket_sees_every_message_once_in_order(api, services):
    p = await pair(api, services)
    watchers = [await join(api, p.cid, p.a), await join(api, p.cid, p.b)]
    senders = [await join(api, p.cid, user) for user in (p.a, p.b, p.a, p.b)]
    per_sender = 15
    total = per_sender * (len(senders) + 2)

    async def socket_sender(ws, n):
        for i in range(per_sender):
            await ws.send({"type": "message", "content": f"s{n}-{i}"})

    async def rest_sender(user, n):
        for i in range(per_sender):
            assert (await send_rest(api, p.cid, user, f"r{n}-{i}")).status == 201

    async def resume_midway():
        await asyncio.sleep(0.05)
        ws = await join(api, p.cid, p.b, after=0)
        return [m["id"] for m in await messages(ws, total, timeout=30)]

    results = await asyncio.gather(
        *(socket_sender(ws, n) for n, ws in enumerate(senders)),
        rest_sender(p.a, 0),
        rest_sender(p.b, 1),
        resume_midway(),
    )
    expected = list(range(1, total + 1))
    assert results[-1] == expected
    for ws in watchers + senders:
        assert [m["id"] for m in await messages(ws, total, timeout=30)] == expected
        assert [f for f in await ws.silent(0.05) if f["type"] == "message"] == []
    assert await history_ids(api, p.cid, p.a) == expected[-100:]


async def test_live_socket_gets_messages_in_order_when_publishing_overtakes(api, services):
    """Two messages stored in one batch may be published in the other order (here the first sender's
    summary is not cached and costs a database round trip): a live socket must still get both, in order."""
    p = await pair(api, services)
    await send_many(api, p.cid, p.a, ["warm-up"])
    live = [await join(api, p.cid, p.a), await join(api, p.cid, p.b)]
    for round_ in range(3):
        services.users._summaries.pop(p.a.id, None)
        await services.users.summary(p.b.id)
        await asyncio.gather(
            services.chat.send_message(p.cid, p.a.id, f"first {round_}"),
            services.chat.send_message(p.cid, p.b.id, f"second {round_}"),
        )
    for ws in live:
        assert [m["id"] for m in await messages(ws, 6)] == [2, 3, 4, 5, 6, 7]


# -- holes ----------------------------------------------------------------------------------------------


async def test_an_id_that_is_never_stored_is_waited_for_then_skipped(api, services):
    p = await pair(api, services)
    live = await join(api, p.cid, p.b)
    await send_many(api, p.cid, p.a, ["one", "two"])
    assert [m["id"] for m in await messages(live, 2)] == [1, 2]

    hole = await allocate_hole(services, p.cid)
    assert hole == 3
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    await send_many(api, p.cid, p.a, ["four", "five"])

    # Readers cannot tell a dead writer from a slow one at first: they wait, then skip the hole.
    got = await history(api, p.cid, p.b, "?after=2")
    waited = loop.time() - sent_at
    assert [m["id"] for m in got.body["results"]] == [4, 5] and got.body["has_more"] is False
    assert HOLE_TIMEOUT_S * 0.8 <= waited < HOLE_TIMEOUT_S + 2.5
    assert [(m["id"], m["content"]) for m in await messages(live, 2)] == [(4, "four"), (5, "five")]

    resumed = await join(api, p.cid, p.b, after=1)
    assert [m["id"] for m in await messages(resumed, 3)] == [2, 4, 5]
    assert await history_ids(api, p.cid, p.b) == [1, 2, 4, 5]
    # Skipped for good: a writer that comes back late cannot slip id 3 in behind the readers.
    assert (await services.store.messages.find_one({"conversation_id": p.cid, "seq": 3}))["hole"] is True

    await send_many(api, p.cid, p.a, ["six"])
    for ws in (live, resumed):
        assert [m["id"] for m in await messages(ws, 1)] == [6]


async def test_a_hole_among_concurrent_senders_does_not_reorder_or_lose_live_messages(api, services):
    p = await pair(api, services)
    live = [await join(api, p.cid, p.a), await join(api, p.cid, p.b)]
    await send_many(api, p.cid, p.a, ["one"])
    await allocate_hole(services, p.cid)
    await asyncio.gather(send_many(api, p.cid, p.a, ["a1", "a2", "a3"]), send_many(api, p.cid, p.b, ["b1", "b2"]))
    expected = [1, 3, 4, 5, 6, 7]
    for ws in live:
        assert [m["id"] for m in await messages(ws, 6, timeout=HOLE_TIMEOUT_S + 5)] == expected
    assert await history_ids(api, p.cid, p.a) == expected


async def test_history_pages_over_a_run_of_holes_never_come_back_empty(api, services):
    p = await pair(api, services)
    await send_many(api, p.cid, p.a, ["one"])
    for _ in range(3):
        await allocate_hole(services, p.cid)
    await send_many(api, p.cid, p.a, ["five", "six"])

    got = await history(api, p.cid, p.b, "?after=1&limit=1")
    assert [m["id"] for m in got.body["results"]] == [5] and got.body["has_more"] is True
    got = await history(api, p.cid, p.b, "?after=1&limit=2")
    assert [m["id"] for m in got.body["results"]] == [5, 6] and got.body["has_more"] is False
    got = await history(api, p.cid, p.b, "?before=5&limit=2")
    assert [m["id"] for m in got.body["results"]] == [1] and got.body["has_more"] is False
    got = await history(api, p.cid, p.b, "?limit=2")
    assert [m["id"] for m in got.body["results"]] == [5, 6] and got.body["has_more"] is True


# -- the seed's reconnect strategy ----------------------------------------------------------------------

AUTH_CODES = {1008, 4000, 4001, 4002}


async def test_reconnecting_client_with_after_sees_every_message_exactly_once_in_order(api, services):
    """The seed's strategy: on any close but an authentication one, reconnect after an exponential
    delay with jitter (scaled down here); add `after=<last id seen>` so nothing is lost."""
    p = await pair(api, services)
    total = 80
    seen: list[int] = []
    done = asyncio.Event()
    rng = random.Random(4)

    async def sender():
        for i in range(total):
            assert (await send_rest(api, p.cid, p.a, f"n{i}")).status == 201
            if i % 7 == 0:
                await asyncio.sleep(0.005)

    async def client():
        attempt = 0
        drops = 0
        while not done.is_set():
            after = seen[-1] if seen else 0
            ws = await ws_connect(api, conv_path(p.cid, p.b, after=after))
            attempt = 0
            drop_after = rng.randint(3, 25)
            while True:
                frame = await ws.recv(timeout=10)
                if frame is None:
                    break
                if frame["type"] == "message":
                    seen.append(frame["message"]["id"])
                    if len(seen) == total:
                        done.set()
                        ws.close()
                        return drops
                    drop_after -= 1
                    if drop_after == 0:
                        abort(ws)  # the network goes away mid-stream
                        drops += 1
                        break
            assert ws.close_code not in AUTH_CODES
            delay = min(0.001 * 2**attempt, 0.03)
            attempt += 1
            await asyncio.sleep(delay + delay * 0.2 * (rng.random() * 2 - 1))
        return drops

    _, drops = await asyncio.gather(sender(), client())
    assert drops >= 3
    assert seen == list(range(1, total + 1))
