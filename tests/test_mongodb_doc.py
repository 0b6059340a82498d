"""docs/mongodb.md's index table is the list of indexes a node creates, collection by collection."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "mongodb.md"


def documented() -> dict[str, set[str]]:
    table: dict[str, set[str]] = {}
    for collection, name in re.findall(r"^\| ([\w.]+) \| `(\w+)` \|", DOC.read_text(), re.MULTILINE):
        table.setdefault(collection, set()).add(name)
    return table


async def test_the_documented_indexes_are_the_ones_a_node_creates(services):
    table = documented()
    assert "messages" in table and "users" in table, table
    created: dict[str, set[str]] = {}
    for collection in await services.store.db.list_collection_names():
        names = set(await services.store.db[collection].index_information()) - {"_id_"}
        if names:
            created[collection] = names
    assert created == table
