"""services/chat/metadata.py on its own, against a recording stand-in for the collection: touches are
merged, failed writes are retried without losing anything, and readers cut the interval short."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pymongo.errors

from services.chat.metadata import ConversationMetadata

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class RecordingCollection:
    """Records every bulk_write; fails the next `failures` of them; each write takes `delay_s`."""

    def __init__(self, failures: int = 0, delay_s: float = 0.0) -> None:
        self.writes: list[list[Any]] = []
        self.failures = failures
        self.delay_s = delay_s

    async def bulk_write(self, ops: list[Any], ordered: bool = True) -> None:
        await asyncio.sleep(self.delay_s)
        if self.failures > 0:
            self.failures -= 1
            raise pymongo.errors.AutoReconnect("store away")
        self.writes.append(ops)

    def updates(self, index: int) -> dict[int, dict[str, Any]]:
        return {op._filter["_id"]: op._doc for op in self.writes[index]}


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


async def test_touches_of_one_conversation_merge_into_one_max_update():
    coll = RecordingCollection(delay_s=0.05)
    meta = ConversationMetadata(coll)  # type: ignore[arg-type]
    meta.touch(1, 5, at(1), {10: 5})  # starts a flush of this alone
    await asyncio.sleep(0.01)
    meta.touch(1, 6, at(2), {11: 6})
    meta.touch(1, 8, at(3), {10: 8})
    meta.touch(2, 1, at(3), {12: 1})
    await meta.settled()
    assert len(coll.writes) == 2
    assert coll.updates(0) == {1: {"$max": {"last_seq": 5, "updated_at": at(1), "read_seq.10": 5}}}
    assert coll.updates(1) == {
        1: {"$max": {"last_seq": 8, "updated_at": at(3), "read_seq.11": 6, "read_seq.10": 8}},
        2: {"$max": {"last_seq": 1, "updated_at": at(3), "read_seq.12": 1}},
    }
    assert not meta.busy()


async def test_a_failed_write_is_retried_with_what_came_meanwhile_and_nothing_is_lost():
    coll = RecordingCollection(failures=2)
    meta = ConversationMetadata(coll)  # type: ignore[arg-type]
    meta.touch(1, 3, at(1), {10: 3})
    await asyncio.sleep(0)
    meta.touch(1, 4, at(2), {11: 4})
    await meta.settled(timeout_s=5.0)
    assert not meta.busy()
    assert len(coll.writes) == 1  # two failures, then everything in one write
    assert coll.updates(0) == {1: {"$max": {"last_seq": 4, "updated_at": at(2), "read_seq.10": 3, "read_seq.11": 4}}}


async def test_the_interval_spaces_writes_under_load_and_a_reader_cuts_it_short():
    coll = RecordingCollection()
    meta = ConversationMetadata(coll, interval_s=30.0)  # type: ignore[arg-type]
    meta.touch(1, 1, at(1), {})
    await asyncio.sleep(0.05)
    meta.touch(1, 2, at(2), {})  # arrives during the interval: waits
    await asyncio.sleep(0.05)
    assert len(coll.writes) == 1 and meta.busy([1]) and not meta.busy([2])
    loop = asyncio.get_running_loop()
    started = loop.time()
    await meta.settled([1])
    assert loop.time() - started < 1.0
    assert len(coll.writes) == 2 and coll.updates(1)[1]["$max"]["last_seq"] == 2


async def test_settled_gives_up_after_its_timeout_while_the_store_is_down():
    coll = RecordingCollection(failures=1000)
    meta = ConversationMetadata(coll)  # type: ignore[arg-type]
    meta.touch(1, 1, at(1), {})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await meta.settled(timeout_s=0.3)
    assert 0.25 <= loop.time() - started < 2.0
    assert meta.busy([1])  # still pending, not dropped
    coll.failures = 0
    await meta.settled(timeout_s=5.0)
    assert not meta.busy() and coll.updates(0)[1]["$max"]["last_seq"] == 1


async def test_close_writes_what_is_pending():
    coll = RecordingCollection()
    meta = ConversationMetadata(coll, interval_s=30.0)  # type: ignore[arg-type]
    meta.touch(1, 1, at(1), {})
    await asyncio.sleep(0.01)
    meta.touch(2, 7, at(2), {5: 7})
    await meta.close(timeout_s=5.0)
    assert not meta.busy()
    assert [sorted(coll.updates(i)) for i in range(len(coll.writes))] == [[1], [2]]
