"""Whether a user without a socket on this node is online is asked of Redis, and the questions of one
moment (the status frames of sockets joining together, the push check of every message notified) leave
as one pipeline."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis.asyncio

from services.realtime.presence import RedisPresenceStore
from services.storage.embedded import free_port


def presence_store(client: Any, prefix: str, node_id: str) -> RedisPresenceStore:
    return RedisPresenceStore(client, node_id=node_id, prefix=prefix, ttl_s=30, heartbeat_s=10)


async def test_whether_users_elsewhere_are_online_is_asked_in_one_pipeline(redis_server: Any) -> None:
    prefix = f"o{uuid.uuid4().hex[:8]}:"
    client = redis.asyncio.from_url(redis_server.url)
    here, there = presence_store(client, prefix, "here"), presence_store(client, prefix, "there")
    try:
        for user in (1, 2):
            await there.connected(user)
        await here.connected(3)
        answers = await asyncio.gather(*(here.is_online(user) for user in (1, 2, 3, 4, 5)))
        assert answers == [True, True, True, False, False]
        assert here._online_reads.queries == 1  # users 1, 2, 4 and 5; user 3 has a socket here
        await there.disconnected(1)
        assert await here.is_online(1) is False
        assert await here.is_online(2) is True
    finally:
        await here.close()
        await there.close()
        await client.aclose()


async def test_a_user_elsewhere_is_not_taken_for_online_when_redis_does_not_answer() -> None:
    client = redis.asyncio.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    store = presence_store(client, "unreachable:", "alone")
    try:
        assert list(await asyncio.gather(store.is_online(7), store.is_online(8))) == [False, False]
    finally:
        await client.aclose()
