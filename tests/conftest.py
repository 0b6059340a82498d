"""Shared fixtures: one real embedded MongoDB server and one real redis-server for the whole run,
a fresh database per test, and a running Application with an HTTP client for it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.ioloop
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect

from handlers import make_app
from services.core.config import Settings
from services.core.container import Services, build_services
from services.storage.embedded import EmbeddedMongo
from tests import store_audit
from tests.processes import RedisProcess
from tests.push_helpers import push_overrides, receiver  # noqa: F401 - fixtures of the push tests
from tests.support import ApiClient, PortClient, make_settings


def pytest_configure(config: pytest.Config) -> None:
    store_audit.configure(config)


@pytest.hookimpl(tryfirst=True)  # on a worker, before pytest-xdist tells the controller it finished
def pytest_sessionfinish(session: pytest.Session) -> None:
    store_audit.finish(session)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def mongo_url(session_dir: Path) -> Iterator[str]:
    """A real MongoDB wire-protocol server: TEST_MONGODB_URL if given, else the embedded one."""
    if os.environ.get("TEST_MONGODB_URL"):
        yield os.environ["TEST_MONGODB_URL"]
        return
    server = EmbeddedMongo(session_dir / "mongo", cache_size="512M")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def own_store(tmp_path: Path) -> Iterator[EmbeddedMongo]:
    """An embedded store of the test's own, for tests that stall it (SIGSTOP) or stop it: the session's
    must not be disturbed. A module uses it with `def mongo_url(own_store): return own_store.url`."""
    server = EmbeddedMongo(tmp_path / "own-mongo")
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            os.kill(server.process.pid, signal.SIGCONT)  # a test that failed while the store was stopped
        server.stop()


@pytest.fixture(scope="session")
def redis_server(session_dir: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(session_dir / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for one test (`@pytest.mark.parametrize("settings_overrides", [{...}], indirect=True)`),
    or override this fixture in a test module to change them for every test in it."""
    overrides: dict[str, Any] = getattr(request, "param", {})
    return overrides


@pytest.fixture
def settings(
    tmp_path: Path, http_server_port: tuple[socket.socket, int], settings_overrides: dict[str, Any]
) -> Settings:
    return make_settings(tmp_path, http_server_port[1], **settings_overrides)


async def drop_database(client: AsyncMongoClient[Any], name: str) -> None:
    """A heartbeat that times out on a loaded machine clears the driver's pool and cancels what is in
    flight ("operation cancelled"): the drop is retried rather than failing a test that passed."""
    for attempt in range(5):
        try:
            await client.drop_database(name)
            return
        except AutoReconnect:
            if attempt == 4:
                raise
            await asyncio.sleep(0.5)


@pytest.fixture
def services(io_loop: tornado.ioloop.IOLoop, settings: Settings, mongo_url: str) -> Iterator[Services]:
    built: Services = io_loop.run_sync(lambda: build_services(settings, mongo_url))

    async def teardown() -> None:
        await drop_database(built.store.client, settings.mongodb_database)
        await built.close()

    yield built
    io_loop.run_sync(teardown, timeout=60)


@pytest.fixture
def app(services: Services) -> Any:
    return make_app(services)


@pytest.fixture
def api(http_server_client: Any) -> ApiClient:
    return ApiClient(http_server_client)


class TestNode:
    """One server node inside the test process: its services, its HTTP server and a client for it."""

    def __init__(self, services: Services, server: Any, port: int, client: Any) -> None:
        self.services = services
        self.server = server
        self.port = port
        self.api = ApiClient(client)


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    return redis_server.url


@pytest.fixture
def cluster_factory(
    io_loop: tornado.ioloop.IOLoop, tmp_path: Path, mongo_url: str, redis_server: RedisProcess
) -> Iterator[Any]:
    """Builds N nodes sharing one database and one real Redis (each with its own prefix per test)."""
    yield from node_factory(io_loop, tmp_path, mongo_url, redis_server.url)


def node_factory(io_loop: tornado.ioloop.IOLoop, tmp_path: Path, mongo_url: str, redis_url: str) -> Iterator[Any]:
    """The body of `cluster_factory`, for any REDIS_URL (a single Redis, or a node of a Redis Cluster)."""
    import tornado.httpserver
    import tornado.testing

    created: list[TestNode] = []
    database = "t_" + uuid.uuid4().hex[:16]
    prefix = "t" + uuid.uuid4().hex[:8] + ":"

    async def make(count: int = 2, **overrides: Any) -> list[TestNode]:
        nodes = []
        for _ in range(count):
            sock, port = tornado.testing.bind_unused_port()
            settings = make_settings(
                tmp_path / f"node{len(created)}",
                port,
                mongodb_database=database,
                redis_url=redis_url,
                redis_prefix=prefix,
                node_id=f"node{len(created)}",
                **overrides,
            )
            services = await build_services(settings, mongo_url)
            server = tornado.httpserver.HTTPServer(make_app(services))
            server.add_sockets([sock])
            client = PortClient(port)
            node = TestNode(services, server, port, client)
            created.append(node)
            nodes.append(node)
        return nodes

    yield make

    async def teardown() -> None:
        for node in created:
            node.server.stop()
            await asyncio.wait_for(node.services.close(), 20)
            await asyncio.wait_for(node.server.close_all_connections(), 20)
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_url, serverSelectionTimeoutMS=5000, timeoutMS=15000)
        await drop_database(client, database)
        await client.close()

    # Bounded: a teardown that hangs must fail the test, never stall the run.
    io_loop.run_sync(teardown, timeout=90)
