"""Rate budgets: GCRA per key, on one node or shared by every node through a real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio

from services.core.errors import RateLimited
from services.realtime.counters import LocalRateCounters, Rate, RedisRateCounters, check_rate

RATE = Rate("test", limit=3, window_s=60.0, what="tries")


def test_a_local_budget_allows_its_burst_then_spaces_the_rest():
    counters = LocalRateCounters()
    assert [counters.take_now(RATE, "a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert counters.take_now(RATE, "a", 100.0) == pytest.approx(20.0)
    assert counters.take_now(RATE, "b", 100.0) == 0.0  # keys do not share a budget
    assert counters.take_now(RATE, "a", 120.0) == 0.0  # one unit back after window / limit
    assert counters.take_now(RATE, "a", 120.0) > 0


def test_a_rate_of_zero_is_off():
    counters = LocalRateCounters()
    off = Rate("off", limit=0, window_s=1.0)
    assert all(counters.take_now(off, "a", 1.0) == 0.0 for _ in range(100))


async def test_check_rate_raises_the_documented_error():
    counters = LocalRateCounters()
    for _ in range(3):
        await check_rate(counters, RATE, 7)
    with pytest.raises(RateLimited) as refused:
        await check_rate(counters, RATE, 7)
    assert refused.value.retry_after_s > 0
    assert "tries" in refused.value.message


async def test_nodes_sharing_a_redis_share_one_budget(redis_url):
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(2)]
    try:
        nodes = [RedisRateCounters(client, prefix) for client in clients]
        answers = await asyncio.gather(*(nodes[i % 2].take(RATE, "user:1") for i in range(6)))
        assert sorted(a == 0 for a in answers) == [False, False, False, True, True, True]
        assert all(0 < a <= 60 for a in answers if a)
        assert await nodes[0].take(RATE, "user:2") == 0
        ttl_ms = await clients[0].pttl(f"{prefix}rate:test:user:1")
        assert 0 < ttl_ms <= 61_000  # the key goes when the budget is full again
    finally:
        for client in clients:
            await client.aclose()


async def test_without_redis_a_node_counts_alone():
    unreachable = redis.asyncio.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        counters = RedisRateCounters(unreachable, "x:")
        assert [await counters.take(RATE, "k") for _ in range(3)] == [0.0, 0.0, 0.0]
        assert await counters.take(RATE, "k") > 0
    finally:
        await unreachable.aclose()


def test_a_budget_of_one_allows_its_first_use_whatever_the_clock():
    once = Rate("once", limit=1, window_s=3600.0)
    counters = LocalRateCounters()
    assert all(counters.take_now(once, f"k{i}", 1_000_000.0 + i * 0.1) == 0.0 for i in range(10_000))
