"""Point lookups of one moment sent as one query (services/storage/batch.py): who shares a query, what each
caller gets back, failures and cancellations, and that nothing is answered from an earlier query."""

from __future__ import annotations

import asyncio
import gc

import pytest
from pymongo import AsyncMongoClient, monitoring

from services.storage.batch import Coalescer
from services.storage.store import EMBEDDED_KEYS_PER_QUERY, KEYS_PER_QUERY, Doc, find_by_ids


class Table:
    """A fake store: values by key, and every query it was sent (each can be held until released)."""

    def __init__(self, values: dict[int, str]) -> None:
        self.values = values
        self.queries: list[list[int]] = []
        self.gate: asyncio.Event | None = None
        self.fail_next: Exception | None = None

    async def fetch(self, keys: list[int]) -> dict[int, str]:
        self.queries.append(keys)
        answer = {k: self.values[k] for k in keys if k in self.values}  # read when sent
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return answer


async def test_lookups_of_one_loop_iteration_share_one_query_and_each_caller_gets_its_own_answer():
    table = Table({1: "a", 2: "b", 3: "c"})
    batch = Coalescer(table.fetch)
    answers = await asyncio.gather(batch.get(1), batch.get(2), batch.get(1), batch.get(9), batch.get_many([3, 2, 8]))
    assert list(answers) == ["a", "b", "a", None, {3: "c", 2: "b"}]
    assert table.queries == [[1, 2, 9, 3, 8]]  # each key once
    assert batch.queries == 1


async def test_keys_asked_while_a_query_is_in_flight_wait_for_the_next_one_and_see_later_writes():
    table = Table({1: "old"})
    table.gate = asyncio.Event()
    batch = Coalescer(table.fetch)
    first = asyncio.ensure_future(batch.get(1))
    await asyncio.sleep(0.01)
    assert table.queries == [[1]]
    # Written after the first query left: a caller asking now must not be answered from it.
    table.values[1] = "new"
    later = [asyncio.ensure_future(batch.get(k)) for k in (1, 2)]
    await asyncio.sleep(0.01)
    assert table.queries == [[1]]  # one query in flight at a time
    table.gate.set()
    assert await first == "old"
    assert [await f for f in later] == ["new", None]
    assert table.queries == [[1], [1, 2]]


async def test_a_failed_query_fails_its_callers_only_and_the_next_one_is_sent():
    table = Table({1: "a"})
    table.gate = asyncio.Event()
    table.fail_next = ConnectionError("store away")
    batch = Coalescer(table.fetch)
    failing = [asyncio.ensure_future(batch.get(k)) for k in (1, 2)]
    await asyncio.sleep(0.01)
    after = asyncio.ensure_future(batch.get(1))
    table.gate.set()
    for future in failing:
        with pytest.raises(ConnectionError):
            await future
    assert await after == "a"


async def test_keys_asked_ahead_join_the_query_of_their_moment_and_an_unclaimed_failure_is_no_error(caplog):
    """`ask` queues keys for a caller that waits for something else first: they leave with the other
    lookups of that loop iteration, and a failure nobody ends up awaiting is not reported as unretrieved."""
    table = Table({1: "a", 2: "b"})
    batch = Coalescer(table.fetch)
    ahead = batch.ask([2])
    assert await batch.get(1) == "a"
    assert table.queries == [[2, 1]] and await ahead == {2: "b"}

    table.fail_next = RuntimeError("store away")
    unclaimed = batch.ask([1])
    with pytest.raises(RuntimeError):
        await batch.get(2)
    assert unclaimed.done()
    del unclaimed
    gc.collect()
    assert "exception was never retrieved" not in caplog.text


async def test_a_cancelled_caller_leaves_the_others_their_answer():
    table = Table({1: "a", 2: "b"})
    table.gate = asyncio.Event()
    batch = Coalescer(table.fetch)
    gone = asyncio.ensure_future(batch.get(1))
    stays = asyncio.ensure_future(batch.get(2))
    await asyncio.sleep(0.01)
    gone.cancel()
    table.gate.set()
    assert await stays == "b"
    assert gone.cancelled()


async def test_a_query_holds_at_most_max_keys():
    table = Table({k: str(k) for k in range(10)})
    batch = Coalescer(table.fetch, max_keys=4)
    answers = await asyncio.gather(*(batch.get(k) for k in range(10)), batch.get_many(list(range(6))))
    assert answers[:10] == [str(k) for k in range(10)]
    assert answers[10] == {k: str(k) for k in range(6)}
    assert [len(q) for q in table.queries] == [4, 4, 2, 6]  # a caller's keys are never split


async def test_a_round_larger_than_a_query_is_sent_as_several_queries_at_once():
    """The embedded store costs n * n for an `$in` of n keys: a round of 11 keys with 4 a query leaves as
    queries of 4, 4 and 3, all in flight together, and each caller still gets exactly its own answer."""
    table = Table({k: str(k) for k in range(10)})
    table.gate = asyncio.Event()
    batch = Coalescer(table.fetch, keys_per_query=lambda: 4)
    waiting = asyncio.gather(*(batch.get(k) for k in range(9)), batch.get_many([8, 9, 42]))
    await asyncio.sleep(0.01)
    assert [len(q) for q in table.queries] == [4, 4, 3]  # all sent before any answered
    table.gate.set()
    answers = await waiting
    assert answers[:9] == [str(k) for k in range(9)]
    assert answers[9] == {8: "8", 9: "9"}
    assert batch.queries == 3


async def test_one_failed_query_of_a_round_fails_every_caller_of_the_round():
    table = Table({k: str(k) for k in range(6)})
    calls = 0

    async def second_fails(keys: list[int]) -> dict[int, str]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("store went away")
        return await table.fetch(keys)

    batch = Coalescer(second_fails, keys_per_query=lambda: 3)
    answers = await asyncio.gather(*(batch.get(k) for k in range(6)), return_exceptions=True)
    assert all(isinstance(a, RuntimeError) for a in answers), answers
    assert await batch.get(1) == "1"  # the next round is sent as usual


class CommandNames(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.mark.parametrize("missing", [0, 1])
async def test_a_read_by_ids_is_one_round_trip_whether_every_id_is_found_or_not(mongo_url, missing):
    """A batch of exactly as many documents as ids left the server's cursor open and cost an empty getMore:
    every coalesced read of accounts, conversations and messages paid two round trips."""
    listener = CommandNames()
    client: AsyncMongoClient[Doc] = AsyncMongoClient(mongo_url, event_listeners=[listener])
    try:
        collection = client["batch_round_trips"][f"docs_{missing}"]
        await collection.insert_many([{"_id": n, "value": n * n} for n in range(1, 31)])
        wanted = list(range(1, 21)) + [1000 + n for n in range(missing)]
        listener.names.clear()
        found = await find_by_ids(collection, {"_id": {"$in": wanted}}, {"value": 1}, len(wanted))
        assert sorted(int(d["value"]) for d in found) == [n * n for n in range(1, 21)]
        assert listener.names == ["find"]
    finally:
        await client.drop_database("batch_round_trips")
        await client.close()


async def test_a_node_on_the_embedded_store_sends_its_point_lookups_in_small_queries(services):
    """Every start asks the server what it is (ensure_indexes): on the embedded store the coalesced reads
    of accounts, conversations and messages then carry at most EMBEDDED_KEYS_PER_QUERY keys a query."""
    assert await services.store.is_secantus()
    assert services.store.keys_per_query() == EMBEDDED_KEYS_PER_QUERY < KEYS_PER_QUERY
    reads = services.users.liveness.reads
    before = reads.queries
    found = await reads.get_many(list(range(10**9, 10**9 + 2 * EMBEDDED_KEYS_PER_QUERY + 1)))
    assert found == {}
    assert reads.queries - before == 3
