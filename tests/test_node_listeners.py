"""The node's ports are held from the moment it starts: the embedded store picks a free port from the
same kernel, and before the node bound its own first, that pick could be the node's PORT (seen in CI as
"Address already in use" from a node whose store had taken its port)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import pytest

import server
from services.core.config import Settings
from services.storage.embedded import EmbeddedMongo, free_port

pytestmark = pytest.mark.slow


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def test_ports_are_held_before_the_embedded_store_picks_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port, metrics_port = free_port(), free_port()
    seen: dict[str, bool] = {}

    class RecordingStore(EmbeddedMongo):
        def __init__(self, storage_path: str | Path) -> None:
            # What the kernel would refuse to hand out as "free" right now.
            seen["port"], seen["metrics_port"] = accepts(port), accepts(metrics_port)
            super().__init__(storage_path)

    monkeypatch.setattr(server, "EmbeddedMongo", RecordingStore)
    settings = dataclasses.replace(
        Settings(), port=port, metrics_port=metrics_port, data_dir=str(tmp_path / "data"), redis_url=""
    )

    async def start_and_stop() -> int:
        node = server.Node(settings)
        try:
            await node.start()
            assert node.embedded is not None and node.embedded.port not in (port, metrics_port)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status_line = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            return int(status_line.split()[1])
        finally:
            await node.stop()

    assert asyncio.run(start_and_stop()) == 200
    assert seen == {"port": True, "metrics_port": True}
