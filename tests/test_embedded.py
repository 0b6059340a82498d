"""The embedded store's connection settings."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

from services.storage.embedded import EmbeddedMongo


async def test_clients_of_the_embedded_store_do_not_use_retryable_writes(tmp_path):
    # SecantusDB walks its record of every retryable write on each new one: with them, an insert grew
    # from 1 ms to 16 ms over 12,000 writes (bench/store_probe.py --growth).
    client: AsyncMongoClient[Any] = AsyncMongoClient(EmbeddedMongo(tmp_path / "mongo", port=1).url, connect=False)
    try:
        assert client.options.retry_writes is False
        assert client.options.retry_reads is True
    finally:
        await client.close()
