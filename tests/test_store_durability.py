"""On a replica set, the collections a client is told about are written with `w: majority` and read from
the primary, whatever MONGODB_URL asks for; the embedded single node keeps its fast path."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from pymongo import ReadPreference, WriteConcern

from services.core.container import build_services
from services.storage.store import DURABLE_COLLECTIONS, Store
from tests.support import make_settings


def collections(store: Store) -> dict[str, Any]:
    return {name: getattr(store, name) for name in DURABLE_COLLECTIONS}


async def test_a_replica_set_store_writes_majority_and_reads_the_primary_even_if_the_url_says_otherwise(
    mongo_url: str,
) -> None:
    # A URL that asks for less (w=1, secondary reads) must not weaken them.
    separator = "&" if "?" in mongo_url else "?"
    url = f"{mongo_url}{separator}w=1&readPreference=secondaryPreferred"
    store = Store(url, "t_" + uuid.uuid4().hex[:16], embedded=False)
    try:
        for name, collection in collections(store).items():
            assert collection.write_concern == WriteConcern(w="majority"), name
            assert collection.read_preference == ReadPreference.PRIMARY, name
        # The rest follow the URL.
        assert store.push_outbox.write_concern == WriteConcern(w=1)
        assert store.push_outbox.read_preference == ReadPreference.SECONDARY_PREFERRED
        # And the store takes such writes (a single node is its own majority).
        await store.messages.insert_one({"_id": 1, "conversation_id": 1})
        assert await store.messages.find_one({"_id": 1}) == {"_id": 1, "conversation_id": 1}
    finally:
        await store.client.drop_database(store.db.name)
        await store.close()


async def test_the_embedded_store_keeps_acknowledged_writes_of_its_single_node(mongo_url: str) -> None:
    store = Store(mongo_url, "t_" + uuid.uuid4().hex[:16], embedded=True)
    try:
        for name, collection in collections(store).items():
            assert collection.write_concern.document.get("w", 1) == 1, name
            assert collection.write_concern.acknowledged, name
    finally:
        await store.close()


async def test_a_node_decides_from_its_settings(tmp_path: Path, mongo_url: str) -> None:
    # An empty MONGODB_URL is the embedded store (the tests pass its URL beside the settings).
    embedded = await build_services(make_settings(tmp_path / "a", 1), mongo_url)
    configured = await build_services(make_settings(tmp_path / "b", 1, mongodb_url=mongo_url), mongo_url)
    try:
        assert embedded.store.embedded and embedded.store.messages.write_concern.document.get("w", 1) == 1
        assert not configured.store.embedded
        assert configured.store.messages.write_concern == WriteConcern(w="majority")
    finally:
        await embedded.close()
        await configured.close()


async def test_the_drivers_health_checks_outlast_the_calls(mongo_url: str) -> None:
    """A health check that misses its limit clears the node's whole pool: its limit (the driver's connect
    timeout) is longer than the calls' (timeoutMS), which stay bounded by MONGODB_TIMEOUT_MS."""
    store = Store(mongo_url, "t_" + uuid.uuid4().hex[:16], timeout_ms=2000)
    try:
        assert store.client.options.pool_options.connect_timeout == 10.0
        assert store.client.options.timeout == 2.0
        assert store.client.options.server_selection_timeout == 2.0
    finally:
        await store.close()
