"""The store-query audit (tests/store_audit.py) reads its rules from docs/mongodb.md and refuses a query on
a large collection that no documented index serves, or that does not name the collection's shard key."""

from __future__ import annotations

from typing import Any

import pytest

from tests import store_audit
from tests.store_audit import RECORDER, documented_rules, render, shape_of, violations
from tests.support import PASSWORD


def record(
    collection: str, query: dict[str, Any], caller: str = "services/x.py:f", command: str = "find"
) -> dict[str, Any]:
    return {"collection": collection, "command": command, "shape": shape_of(query), "caller": caller}


def test_the_rules_are_the_documented_ones() -> None:
    rules = documented_rules()
    assert rules.shard_keys["messages"] == "conversation_id"
    assert rules.shard_keys["likes"] == rules.shard_keys["passes"] == rules.shard_keys["blocks"] == "from_id"
    assert rules.shard_keys["conversations"] == "_id"
    assert "users" not in rules.shard_keys  # unsharded
    assert "username_key" in rules.indexes["users"] and "to_id" in rules.indexes["likes"]
    assert {"messages", "likes", "users", "media.chunks"} <= rules.large


def test_a_shape_keeps_fields_and_operators_but_no_values() -> None:
    shape = shape_of({"_id": {"$in": [1, 2]}, "mutes.42": {"$exists": True}, "$or": [{"a": 1}, {"b": {"$gt": 2}}]})
    assert render(shape) == "{$or: [{a}, {b: {$gt}}], _id: {$in}, mutes.N: {$exists}}"


def test_an_indexed_targeted_query_passes() -> None:
    rules = documented_rules()
    assert violations([record("messages", {"_id": {"$in": [1]}, "conversation_id": 1})], rules) == []
    assert violations([record("likes", {"from_id": 1, "to_id": 2})], rules) == []
    # Small collections are not checked.
    assert violations([record("counters", {"anything": 1})], rules) == []


def test_an_unindexed_query_fails() -> None:
    problems = violations(
        [record("users", {"bio": {"$regex": "x"}}, "services/accounts/users.py:search")], documented_rules()
    )
    assert problems == [
        "users find {bio: {$regex}} from services/accounts/users.py:search: "
        "no documented index starts with one of its fields"
    ]


def test_an_untargeted_query_fails_and_each_or_branch_counts() -> None:
    rules = documented_rules()
    assert violations([record("messages", {"_id": 5})], rules) == [
        "messages find {_id} from services/x.py:f: does not name the shard key's `conversation_id`"
    ]
    branches = record("likes", {"$or": [{"from_id": 1}, {"to_id": 1}]}, command="delete")
    problems = violations([branches], rules)
    assert any("does not name the shard key's `from_id`" in problem for problem in problems)


def test_a_top_level_or_fails_even_on_indexed_targeted_branches() -> None:
    """The embedded store reads every document for a filter with a top-level operator: the writer's old
    look-up of retried client_ids took seconds per batch on a few hundred thousand messages."""
    retried = {"$or": [{"conversation_id": 1, "sender_id": 2, "client_id": "a"}, {"conversation_id": 3}]}
    assert violations([record("messages", retried, "services/chat/writer.py:_answer_replays")], documented_rules()) == [
        "messages find {$or: [{client_id, conversation_id, sender_id}, {conversation_id}]} from "
        "services/chat/writer.py:_answer_replays: a top-level $or, which the embedded store answers by reading the "
        "whole collection"
    ]
    receipt = {"_id": 7, "$or": [{"read_seq.4": {"$lt": 9}}, {"read_seq.4": {"$exists": False}}]}
    assert violations([record("conversations", receipt, command="update")], documented_rules()) != []


def test_the_allow_list_is_by_collection_caller_and_shape() -> None:
    rules = documented_rules()
    allowed = record("likes", {"to_id": 1}, "services/accounts/deletion.py:finish", command="delete")
    assert violations([allowed], rules) == []
    elsewhere = record("likes", {"to_id": 1}, "services/matching/other.py:g")
    assert violations([elsewhere], rules) != []


async def test_the_listener_records_server_queries_and_leaves_test_queries_out(api: Any, services: Any) -> None:
    if not store_audit.enabled():
        pytest.skip("CHAT_STORE_AUDIT=0")
    # A query this test issues itself is not the server's.
    await services.store.users.find_one({"audit_probe_field": 1})
    # One the server issues for a request is, with its caller.
    response = await api.post("/api/register/", {"username": "audit_probe", "password": PASSWORD})
    assert response.status == 201, response.body
    seen = set(RECORDER.seen)
    assert ("users", "find", "{username_key}", "services/accounts/users.py:register") in seen
    assert not any("audit_probe_field" in shape for _, _, shape, _ in seen)
