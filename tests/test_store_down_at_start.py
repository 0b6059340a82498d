"""A node started while MongoDB is down keeps running: alive, not ready, refusing with 503 and JSON log
lines, and ready on its own once the store answers (indexes ensured then), serving as usual."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from services.storage.embedded import EmbeddedMongo, free_port
from tests.processes import ServerProcess, node_env

pytestmark = pytest.mark.slow

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(base: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - the test node, http only
        base + path, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with _opener.open(request, timeout=15) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read() or b"null")


def test_a_node_started_while_mongodb_is_down_waits_for_it_and_becomes_ready(tmp_path: Path) -> None:
    port = free_port()
    env = node_env(f"mongodb://127.0.0.1:{port}/", MONGODB_TIMEOUT_MS="500", LOG_FORMAT="json")
    node = ServerProcess(tmp_path / "node", env).start()
    store: EmbeddedMongo | None = None
    try:
        assert get(node.base, "/livez")[0] == 200
        status, readiness = get(node.base, "/readyz")
        assert status == 503 and readiness["checks"]["mongodb"] is False
        status, refused = get(node.base, "/api/register/", {"username": "early_1", "password": "password123"})
        assert status == 503 and refused["error"]["code"] == "unavailable"
        time.sleep(1.5)  # a retry or two, logged
        assert node.process is not None and node.process.poll() is None, node.log()[-2000:]

        store = EmbeddedMongo(tmp_path / "mongo", port=port)
        store.start()
        deadline = time.monotonic() + 30
        while get(node.base, "/readyz")[0] != 200:
            assert time.monotonic() < deadline, node.log()[-3000:]
            time.sleep(0.2)
        status, created = get(node.base, "/api/register/", {"username": "later_1", "password": "password123"})
        assert status == 201, created
    finally:
        node.stop()
        if store is not None:
            store.stop()
    lines = [json.loads(line) for line in node.log().splitlines() if line.strip()]  # JSON, every one
    assert any("MongoDB unavailable at start" in line["msg"] for line in lines)
    assert any("indexes ensured" in line["msg"] for line in lines)
