"""Message ids are reserved by the insert itself: what another node stored first, a conversation sealed
while a node still believes it open, a retry stored elsewhere meanwhile, and the conversation metadata
written behind the messages."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from services.chat.ids import message_key
from tests.support import make_conversation
from tests.ws_helpers import history_ids, join, messages, pair, send_rest

METADATA_INTERVAL_S = 30.0


@pytest.fixture
def settings_overrides():
    # Long enough that nothing in a test is written by the interval: only by a reader asking for it.
    return {"metadata_interval_s": METADATA_INTERVAL_S}


async def store_as_another_node(services, cid, seq, sender_id, content, **extra):
    """A message inserted straight into the store, as a second node would, unseen by this one."""
    await services.store.messages.insert_one(
        {
            "_id": message_key(cid, seq),
            "conversation_id": cid,
            "seq": seq,
            "sender_id": sender_id,
            "content": content,
            "created_at": dt.datetime.now(dt.UTC),
            **extra,
        }
    )


def record_message_queries(services, monkeypatch) -> list[dict[str, Any]]:
    """The filters of the `find`s on messages from now on (a `find_one` is one too)."""
    asked: list[dict[str, Any]] = []
    find = services.store.messages.find

    def recording_find(query, *args, **kwargs):
        asked.append(query)
        return find(query, *args, **kwargs)

    monkeypatch.setattr(services.store.messages, "find", recording_find)
    return asked


async def test_an_id_taken_by_another_node_is_not_reused_and_ids_stay_dense(api, services):
    p = await pair(api, services)
    assert (await send_rest(api, p.cid, p.a, "one")).body["id"] == 1
    await store_as_another_node(services, p.cid, 2, p.b.id, "two, from elsewhere")

    got = await send_rest(api, p.cid, p.a, "three")
    assert got.status == 201 and got.body["id"] == 3
    assert await history_ids(api, p.cid, p.a) == [1, 2, 3]
    contents = [
        m["content"] for m in (await api.get(f"/api/conversations/{p.cid}/messages/", token=p.a.access)).body["results"]
    ]
    assert contents == ["one", "two, from elsewhere", "three"]


async def test_concurrent_sends_after_a_collision_keep_each_senders_order(api, services):
    p = await pair(api, services)
    await send_rest(api, p.cid, p.a, "first")
    await store_as_another_node(services, p.cid, 2, p.b.id, "elsewhere")
    live = await join(api, p.cid, p.b)
    texts = [f"a{i}" for i in range(8)]
    results = await asyncio.gather(*(send_rest(api, p.cid, p.a, t) for t in texts))
    assert all(r.status == 201 for r in results)
    by_text = {r.body["content"]: r.body["id"] for r in results}
    assert sorted(by_text.values()) == list(range(3, 11))
    got = await messages(live, 8)
    assert [m["id"] for m in got] == list(range(3, 11))
    assert await history_ids(api, p.cid, p.a) == list(range(1, 11))


async def test_a_node_that_believes_a_closed_conversation_open_stores_nothing_after_the_seal(api, services):
    p = await pair(api, services)
    assert (await send_rest(api, p.cid, p.a, "before")).status == 201
    # Another node closes it: the status and the seal are in the store, but this node's membership
    # cache still says open and no bus event reached it.
    await services.store.conversations.update_one({"_id": p.cid}, {"$set": {"status": "closed"}})
    await services.store.messages.insert_one(
        {"_id": message_key(p.cid, 2), "conversation_id": p.cid, "seq": 2, "hole": True, "sealed": True}
    )
    assert (await services.chat.member_conversation(p.cid, p.a.id, require_open=True)).is_open

    refused = await send_rest(api, p.cid, p.a, "after the close")
    assert refused.status == 403 and refused.body["error"]["code"] == "conversation_closed", refused.body
    assert await services.store.messages.count_documents({"conversation_id": p.cid}) == 2
    assert await services.store.messages.find_one({"conversation_id": p.cid, "content": "after the close"}) is None
    # The cache was dropped: the next attempt is refused by the membership check itself.
    again = await send_rest(api, p.cid, p.a, "again")
    assert again.status == 404 and again.body["error"]["code"] == "conversation_not_found"


async def test_unmatch_seals_the_conversation_after_its_last_message(api, services):
    p = await pair(api, services)
    for text in ("one", "two"):
        assert (await send_rest(api, p.cid, p.a, text)).status == 201
    match_id = (await services.store.conversations.find_one({"_id": p.cid}))["match_id"]
    assert (await api.delete(f"/api/matches/{match_id}/", token=p.b.access)).status == 204

    seal = await services.store.messages.find_one({"_id": message_key(p.cid, 3)})
    assert seal is not None and seal["sealed"] is True and seal["hole"] is True
    assert await history_ids(api, p.cid, p.a) == [1, 2]  # the seal is no message
    # A second close (a repeated unmatch) does not stack seals.
    await services.chat.seal(p.cid)
    assert await services.store.messages.count_documents({"conversation_id": p.cid}) == 3


async def test_seal_of_a_conversation_without_messages_takes_id_one(api, services):
    p = await pair(api, services)
    await services.chat.seal(p.cid)
    assert (await services.store.messages.find_one({"_id": message_key(p.cid, 1)}))["sealed"] is True
    assert await history_ids(api, p.cid, p.a) == []


async def test_a_retry_stored_by_another_node_meanwhile_is_answered_as_a_replay(api, services):
    p = await pair(api, services)
    assert (await send_rest(api, p.cid, p.a, "one")).status == 201
    # Another node stored this client_id; this one has not looked client_ids up before inserting since.
    await store_as_another_node(services, p.cid, 2, p.a.id, "retried", client_id="c-1")
    services.chat.ids.last_seq[p.cid] = 2  # knows id 2 is taken, not by whom
    got = await send_rest(api, p.cid, p.a, "retried", client_id="c-1")
    assert got.status == 200 and got.body["id"] == 2 and got.body["client_id"] == "c-1", got.body
    # No id was used up by the replay.
    assert (await send_rest(api, p.cid, p.a, "next")).body["id"] == 3
    assert await history_ids(api, p.cid, p.a) == [1, 2, 3]


async def test_a_replay_inside_a_batch_does_not_shift_the_other_senders(api, services):
    p = await pair(api, services)
    await store_as_another_node(services, p.cid, 1, p.a.id, "stored", client_id="dup")
    services.chat.ids.last_seq[p.cid] = 0  # stale: believes the conversation empty
    results = await asyncio.gather(
        send_rest(api, p.cid, p.a, "stored", client_id="dup"),
        send_rest(api, p.cid, p.b, "fresh one"),
        send_rest(api, p.cid, p.b, "fresh two"),
    )
    assert results[0].status == 200 and results[0].body["id"] == 1
    assert sorted(r.body["id"] for r in results[1:]) == [2, 3]
    assert await history_ids(api, p.cid, p.a) == [1, 2, 3]


async def test_a_retry_of_a_message_stored_unannounced_delivers_it_to_the_open_sockets(api, services):
    """A send whose insert landed after its writer gave up (the store answered past its timeout) is stored
    and never published: readers would see it only when a later message revealed the gap. Its retry,
    answered as a replay, announces it again; a socket that had it already drops the repeat."""
    p = await pair(api, services)
    reader = await join(api, p.cid, p.b)
    assert (await send_rest(api, p.cid, p.a, "before", client_id="c-0")).status == 201
    assert [m["content"] for m in await messages(reader, 1)] == ["before"]
    await store_as_another_node(services, p.cid, 2, p.a.id, "landed late", client_id="c-1")
    services.chat.ids.last_seq[p.cid] = 2
    retried = await send_rest(api, p.cid, p.a, "landed late", client_id="c-1")
    assert retried.status == 200 and retried.body["id"] == 2
    (delivered,) = await messages(reader, 1)
    assert (delivered["id"], delivered["content"]) == (2, "landed late")
    # Retried again: the reader has it, and gets nothing twice.
    assert (await send_rest(api, p.cid, p.a, "landed late", client_id="c-1")).status == 200
    assert (await send_rest(api, p.cid, p.a, "after", client_id="c-2")).status == 201
    assert [(m["id"], m["content"]) for m in await messages(reader, 1)] == [(3, "after")]


async def test_retries_from_several_conversations_are_answered_each_by_an_index_range(api, services, monkeypatch):
    """The look-up of retried client_ids asks one (conversation, sender) at a time: an `$or` across them
    made the embedded store read every message of the database for each batch."""
    pairs = [await pair(api, services) for _ in range(3)]
    for n, p in enumerate(pairs):
        await store_as_another_node(services, p.cid, 1, p.a.id, f"stored {n}", client_id=f"r-{n}")
        services.chat.ids.last_seq[p.cid] = 1
    find = services.store.messages.find
    asked = record_message_queries(services, monkeypatch)
    results = await asyncio.gather(
        *(send_rest(api, p.cid, p.a, f"stored {n}", client_id=f"r-{n}") for n, p in enumerate(pairs)),
        *(send_rest(api, p.cid, p.b, "fresh", client_id="new") for p in pairs),
    )
    assert [r.status for r in results] == [200] * 3 + [201] * 3, [r.body for r in results]
    assert [r.body["id"] for r in results] == [1, 1, 1, 2, 2, 2]
    # The first retry was found by its insert; the batch's other client_ids were looked up then.
    assert services.chat.writer.replays_found == 1
    lookups = [q for q in asked if "client_id" in q]
    assert lookups and not any(key.startswith("$") for q in lookups for key in q)
    for query in lookups:
        plan = (await find(query).explain())["queryPlanner"]["winningPlan"]
        assert plan.get("inputStage", {}).get("stage") == "IXSCAN", plan


async def test_client_ids_are_looked_up_before_inserting_only_after_a_retry_was_found(api, services, monkeypatch):
    """A send with a new client_id costs its insert alone: the unique index finds a retry. Once one is
    found, the client_ids of the next batches are looked up first, for a while, as retries come in
    bursts (a reconnected client resends what was never acknowledged)."""
    p = await pair(api, services)
    asked = record_message_queries(services, monkeypatch)
    for n in range(3):
        assert (await send_rest(api, p.cid, p.a, f"m{n}", client_id=f"c-{n}")).status == 201
    assert not [q for q in asked if "client_id" in q]
    retried = await send_rest(api, p.cid, p.a, "m1", client_id="c-1")
    assert (retried.status, retried.body["id"]) == (200, 2)
    assert services.chat.writer.replays_found == 1
    asked.clear()
    again = await send_rest(api, p.cid, p.a, "m2", client_id="c-2")
    assert (again.status, again.body["id"]) == (200, 3)
    assert services.chat.writer.replays_found == 1  # found by the look-up, before any insert
    assert [q for q in asked if "client_id" in q]
    assert (await send_rest(api, p.cid, p.a, "m3", client_id="c-3")).body["id"] == 4
    assert await history_ids(api, p.cid, p.a) == [1, 2, 3, 4]


# -- metadata written behind ------------------------------------------------------------------------------


async def test_the_conversation_list_reads_this_nodes_writes_without_waiting_for_the_interval(api, services):
    p = await pair(api, services)
    loop = asyncio.get_running_loop()
    for text in ("one", "two", "three"):
        assert (await send_rest(api, p.cid, p.a, text)).status == 201
    started = loop.time()
    listed = await api.get("/api/conversations/", token=p.b.access)
    assert loop.time() - started < METADATA_INTERVAL_S / 10
    [conv] = [c for c in listed.body if c["id"] == p.cid]
    assert conv["unread_count"] == 3 and conv["last_message"]["content"] == "three"
    # The sender read everything it answered: its own messages are not unread.
    [mine] = [c for c in (await api.get("/api/conversations/", token=p.a.access)).body if c["id"] == p.cid]
    assert mine["unread_count"] == 0
    stored = await services.store.conversations.find_one({"_id": p.cid})
    assert stored["last_seq"] == 3 and stored["read_seq"][str(p.a.id)] == 3


async def test_a_read_receipt_for_a_message_just_stored_is_accepted_and_a_future_id_is_not(api, services):
    p = await pair(api, services)
    b = await join(api, p.cid, p.b)
    assert (await send_rest(api, p.cid, p.a, "hello")).status == 201
    [message] = await messages(b, 1)
    await b.send({"type": "read_receipt", "message_id": message["id"]})
    receipt = await b.recv_type("read_receipt")
    assert receipt["message_id"] == message["id"] and receipt["user_id"] == p.b.id
    await b.send({"type": "read_receipt", "message_id": message["id"] + 5})
    error = await b.recv_type("error")
    assert error["code"] == "message_not_found", error


async def test_ids_past_the_id_space_never_reach_into_the_next_conversation(api, services):
    """A message's key is (conversation << 32) | id: an `after` or `before` of 2**32 or more must not
    address the next conversation's messages."""
    p = await pair(api, services)
    carol = await api.user("carol")
    dave = await api.user("dave")
    first = await make_conversation(services, p.a.id, carol.id)
    second = await make_conversation(services, p.a.id, dave.id)
    assert second == first + 1
    await send_rest(api, second, p.a, "for dave only")
    assert (await send_rest(api, first, p.a, "for carol")).status == 201
    for query in (f"?after={2**32}", f"?after={2**32 - 1}", f"?before={2**32 + 2}", f"?after={2**40}&limit=100"):
        got = await api.get(f"/api/conversations/{first}/messages/{query}", token=carol.access)
        assert got.status in (200, 400), got.body
        if got.status == 200:
            assert all(m["content"] == "for carol" for m in got.body["results"]), (query, got.body)
    resumed = await join(api, first, carol, after=2**32)
    await send_rest(api, first, p.a, "later")
    assert [m["content"] for m in await messages(resumed, 1)] == ["later"]


@pytest.mark.parametrize("behind", [0, 3, 4, 5, 21, 90])
async def test_the_newest_id_is_found_however_far_last_seq_trails_the_messages(api, services, behind):
    """A conversation's `last_seq` is written behind its messages, and another node's messages are unseen
    here: the newest id is looked up in windows past it (4 ids, then 16, 64...), and whatever the lag a
    socket that resumes from the last id it saw gets exactly what it missed."""
    p = await pair(api, services)
    for seq in range(1, behind + 3):
        await store_as_another_node(services, p.cid, seq, p.a.id, f"m{seq}")
    newest = behind + 2
    await services.store.conversations.update_one({"_id": p.cid}, {"$set": {"last_seq": 2}})
    assert await services.chat.last_stored_seq(p.cid, 2) == newest
    resumed = await join(api, p.cid, p.b, after=1)
    assert [m["id"] for m in await messages(resumed, newest - 1)] == list(range(2, newest + 1))
    fresh = await join(api, p.cid, p.b)
    await send_rest(api, p.cid, p.a, "next")
    assert [m["id"] for m in await messages(fresh, 1)] == [newest + 1]


async def test_a_socket_opening_from_now_asks_for_the_newest_id_with_its_membership(api, services):
    """The first window of the newest id leaves with the membership read, not after its answer: one round
    trip less for every socket that opens without `after`. It starts from what this node knows."""
    p = await pair(api, services)
    await send_rest(api, p.cid, p.a, "known here")
    events: list[str] = []
    ids = services.chat.ids
    reads = {"membership": services.presence.announcer._open_conversations, "newest": ids._newest_reads}
    for name, coalescer in reads.items():
        fetch = coalescer._fetch

        async def recorded(keys, name=name, fetch=fetch):
            events.append(f"{name} sent")
            try:
                return await fetch(keys)
            finally:
                events.append(f"{name} answered")

        coalescer._fetch = recorded
    fresh = await join(api, p.cid, p.b)
    assert events.index("newest sent") < events.index("membership answered"), events
    assert events.count("newest sent") == 1, events
    await send_rest(api, p.cid, p.a, "next")
    assert [m["id"] for m in await messages(fresh, 1)] == [2]


async def test_a_probe_from_behind_the_conversations_last_seq_is_not_taken_for_the_newest_id(services):
    """Data from an earlier design can hold runs of ids never stored, and `last_seq` lies beyond them: a
    probe that started before it (this node knew less) would find nothing there and call the
    conversation empty, so the look-up starts again from `last_seq`."""
    alice, bob = 91, 92
    cid = await make_conversation(services, alice, bob)
    for seq in (10, 11):
        await store_as_another_node(services, cid, seq, alice, f"m{seq}")
    await services.store.conversations.update_one({"_id": cid}, {"$set": {"last_seq": 10}})
    ids = services.chat.ids
    probe = ids.probe_newest(cid)
    assert probe is not None and probe.start == 0
    assert await services.chat.last_stored_seq(cid, 10, probe) == 11
    assert await probe.found == {}  # what the probe saw: nothing after 0 in its window
    known_here = ids.probe_newest(cid)
    ids.observe_seq(cid, 11)
    assert await services.chat.last_stored_seq(cid, 10, known_here) == 11  # started before 11 was known
    await store_as_another_node(services, cid, 12, bob, "m12")
    from_here = ids.probe_newest(cid)
    assert from_here is not None and from_here.start == 11
    assert await services.chat.last_stored_seq(cid, 10, from_here) == 12
    assert list(await from_here.found) == [message_key(cid, 12)]  # the answer came from the probe
