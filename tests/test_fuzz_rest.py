"""Property-based fuzzing of every REST operation with hypothesis: never a 500, always the envelope.

The operations are read from the served OpenAPI document, so an endpoint added later is fuzzed without
touching this file. Bodies are random JSON of any shape, objects with the operation's own field names
holding values of every type (huge and negative numbers, deep nesting, giant strings), raw bytes and
invalid UTF-8; upload bodies are random bytes under any content type; query parameters are random text.
Whatever the input, the answer is below 500 and, when it is an error, the contract's
`{"error": {"code", "message", "fields"?}}` as JSON (with Retry-After on 429).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.openapi import build_document
from services.core.config import Settings
from tests.fuzz_node import FuzzNode, assert_rss_grew_less_than, node_fixture, rss_bytes

RSS_BOUND = 96 * 1024 * 1024
FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
METHODS = ("get", "post", "put", "patch", "delete")
# Documentation pages and metrics are not JSON APIs; they take no input either.
NOT_JSON = {"/api/docs/", "/metrics"}


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _operations() -> list[tuple[str, str, list[str], list[str], list[str]]]:
    """(method, path, JSON field names, body content types, query parameter names) per operation."""
    document = build_document(Settings())
    found = []
    for path, item in document["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if op is None or path in NOT_JSON:
                continue
            content = op.get("requestBody", {}).get("content", {})
            fields: list[str] = []
            if "application/json" in content:
                fields = sorted(_resolve(document, content["application/json"]["schema"]).get("properties", {}))
            query = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
            found.append((method.upper(), path, fields, sorted(content), query))
    return found


OPERATIONS = _operations()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, mongo_url: str) -> Any:
    # Message rates are lifted so that sends are judged on their content, not refused for speed.
    yield from node_fixture(tmp_path_factory.mktemp("fuzz-rest"), mongo_url, message_rate=1e6, message_burst=10**6)


@pytest.fixture(scope="module")
def world(node: FuzzNode) -> dict[str, Any]:
    async def setup() -> dict[str, Any]:
        a = await node.api.user("rest_a")
        b = await node.api.user("rest_b")
        await node.api.post("/api/likes/", {"user_id": b.id}, token=a.access)
        liked = await node.api.post("/api/likes/", {"user_id": a.id}, token=b.access)
        match = liked.body["match"]
        ids = {
            "conversation_id": match["conversation_id"],
            "match_id": match["id"],
            "user_id": b.id,
            "device_id": 1,
        }
        return {"a": a, "ids": ids, "rss": rss_bytes()}

    return node.run(setup())


@pytest.fixture(autouse=True)
def memory_stays_bounded(world: dict[str, Any]) -> Any:
    yield
    assert_rss_grew_less_than(RSS_BOUND, world["rss"])


# -- strategies -------------------------------------------------------------------------------------------

huge = st.sampled_from([2**31, 2**53 + 1, 2**63, 2**64, 10**30, -(2**63) - 1, -1, 0, 1e308, -1e308, 5e-324])
scalars = st.none() | st.booleans() | st.integers() | huge | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
odd_values = st.sampled_from(
    [
        "",
        " ",
        "x" * 5000,
        "é" * 70_000,
        "1995-02-30",
        "2999-01-01",
        "0001-01-01",
        "\x00",
        {"lat": 91, "lon": 0},
        {"lat": "NaN", "lon": 1},
        ["man", "man", "alien"],
        json.loads("[" * 200 + "]" * 200),
    ]
)
raw_bodies = st.binary(max_size=300) | st.sampled_from(
    [b"", b"{", b"null", b"[]", b'"x"', b"\xff\xfe{}", b'{"a": NaN}', b'{"a": 1e999}', b"[" * 5000 + b"]" * 5000]
)


def json_body(fields: list[str]) -> st.SearchStrategy[bytes]:
    objects = st.fixed_dictionaries({}, optional={name: json_values | odd_values for name in fields})
    as_json = (objects | json_values).map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return as_json | raw_bodies


def path_for(template: str, ids: dict[str, int], draw: Any) -> str:
    def fill(found: re.Match[str]) -> str:
        name = found.group(1)
        choice = draw(st.sampled_from(["real", "random", "zero"]))
        if choice == "real" and name in ids:
            return str(ids[name])
        return "0" if choice == "zero" else str(draw(st.integers(min_value=1, max_value=10**15 - 1)))

    return re.sub(r"\{([a-z_]+)\}", fill, template)


# -- the property -----------------------------------------------------------------------------------------


def check_answer(status: int, headers: Any, body: bytes, context: Any) -> None:
    assert status < 500, (context, status, body[:300])
    if status == 204:
        return
    content_type = headers.get("Content-Type", "")
    if status == 200 and content_type == "application/zip":
        assert body.startswith(b"PK\x03\x04"), context  # the data export: a ZIP archive
        return
    assert content_type.startswith("application/json"), (context, status, content_type)
    parsed = json.loads(body)
    if status >= 400:
        assert isinstance(parsed, dict) and set(parsed) == {"error"}, (context, parsed)
        error = parsed["error"]
        assert set(error) <= {"code", "message", "fields"}, (context, error)
        assert isinstance(error["code"], str) and error["code"] and isinstance(error["message"], str), (context, error)
        if "fields" in error:
            assert isinstance(error["fields"], dict), (context, error)
    if status == 429:
        assert int(headers["Retry-After"]) >= 1, context
    if status == 405:
        assert headers.get("Allow"), context


@pytest.mark.parametrize(("method", "path", "fields", "content_types", "query"), OPERATIONS, ids=lambda v: str(v))
@FUZZ
@given(data=st.data())
def test_every_operation_answers_bad_input_with_the_envelope_never_500(
    node, world, method, path, fields, content_types, query, data
):
    url = path_for(path, world["ids"], data.draw)
    params = {}
    if query:
        params = data.draw(st.dictionaries(st.sampled_from(query), st.text(max_size=40), max_size=len(query)))
    if params:
        url += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    headers = {"Authorization": f"Bearer {world['a'].access}"}
    body: bytes | None = None
    if "application/json" in content_types:
        body = data.draw(json_body(fields))
        headers["Content-Type"] = "application/json"
    elif content_types:
        body = data.draw(st.binary(max_size=2048))
        headers["Content-Type"] = data.draw(st.sampled_from([*content_types, "application/octet-stream", "text/html"]))
    elif method in ("POST", "PUT", "PATCH"):
        body = b""
    if data.draw(st.integers(0, 9)) == 0:
        headers["Authorization"] = data.draw(st.sampled_from(["Bearer", "Bearer x.y.z", "Basic Zm9vOmJhcg==", ""]))

    async def call() -> tuple[int, Any, bytes]:
        response = await node.api.client.fetch(
            url,
            method=method,
            body=body,
            headers=headers,
            raise_error=False,
            request_timeout=30,
            # DELETE operations that take a JSON body (signing out by refresh token) are fuzzed too.
            allow_nonstandard_methods=True,
        )
        return response.code, response.headers, response.body or b""

    status, answer_headers, answer = node.run(call())
    check_answer(status, answer_headers, answer, (method, url, body[:200] if body else body))


def test_unknown_paths_and_methods_answer_the_envelope(node, world):
    async def call(method: str, url: str, body: bytes | None) -> tuple[int, Any, bytes]:
        response = await node.api.client.fetch(
            url, method=method, body=body, raise_error=False, allow_nonstandard_methods=True
        )
        return response.code, response.headers, response.body or b""

    for method, url, body in (
        ("GET", "/api/nope/", None),
        ("PUT", "/api/users/me/", None),
        ("PUT", "/api/likes/", b"{}"),
        ("GET", "/api/conversations/99999999999999999999/", None),
        ("GET", "/api/users/-1/", None),
        ("PATCH", "/api/register/", b"{}"),
    ):
        status, headers, answer = node.run(call(method, url, body))
        assert status in (404, 405), (method, url, status)
        check_answer(status, headers, answer, (method, url))
