"""One server node per fuzzing module, on an event loop in a background thread.

Hypothesis calls a test function once per example and does not run async tests or function-scoped
fixtures per example, so the fuzz tests are plain functions that hand coroutines to this node's loop.
Building the services once per module (not per example) keeps a hundred examples within seconds.
"""

from __future__ import annotations

import asyncio
import resource
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import tornado.httpserver
import tornado.testing
from pymongo import AsyncMongoClient

from handlers import make_app
from services.core.container import Services, build_services
from tests.support import ApiClient, PortClient, make_settings

T = TypeVar("T")


class FuzzNode:
    def __init__(self, data_dir: Path, mongo_url: str, **overrides: Any) -> None:
        self.data_dir = data_dir
        self.mongo_url = mongo_url
        self.overrides = overrides
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-node", daemon=True)
        self.services: Services
        self.server: tornado.httpserver.HTTPServer
        self.api: ApiClient
        self.port = 0

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the node's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> FuzzNode:
        self.thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        sock, self.port = tornado.testing.bind_unused_port()
        settings = make_settings(self.data_dir, self.port, **self.overrides)
        self.services = await build_services(settings, self.mongo_url)
        self.server = tornado.httpserver.HTTPServer(make_app(self.services))
        self.server.add_sockets([sock])
        self.api = ApiClient(PortClient(self.port))

    def stop(self) -> None:
        try:
            self.run(self._stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    async def _stop(self) -> None:
        self.server.stop()
        await self.services.close()
        await self.server.close_all_connections()
        client: AsyncMongoClient[Any] = AsyncMongoClient(self.mongo_url)
        await client.drop_database(self.services.settings.mongodb_database)
        await client.close()


def node_fixture(data_dir: Path, mongo_url: str, **overrides: Any) -> Iterator[FuzzNode]:
    node = FuzzNode(data_dir, mongo_url, **overrides).start()
    try:
        yield node
    finally:
        node.stop()


def rss_bytes() -> int:
    """Resident memory of this process now (not the peak)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize()


def assert_rss_grew_less_than(bound: int, baseline: int) -> None:
    """This process holds less than `bound` bytes more than `baseline` (an earlier `rss_bytes()`)."""
    grown = rss_bytes() - baseline
    assert grown < bound, f"RSS grew by {grown / 2**20:.1f} MiB over the fuzz runs"
