"""Real processes for tests: `server.py` nodes to start, kill and wait for, and a redis-server."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from pymongo import AsyncMongoClient

from services.storage.documents import conversation_document
from services.storage.embedded import free_port, wait_for_port
from tests.support import TEST_SECRET

ROOT = Path(__file__).resolve().parent.parent


def unavailable(message: str) -> NoReturn:
    """A tool missing here: a skip on a developer's machine, a failure on CI, where `make test` installs it."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def ensure_npm_tool(target: str, installed: Path, what: str) -> None:
    """`make test` installs the npm tools the tests use (the Makefile's `target`); run alone, a test that
    needs `installed` (a file of the tool) runs the same target."""
    if installed.exists():
        return
    make = shutil.which("make")
    if shutil.which("npm") is None or make is None:
        unavailable(f"npm (or make) is not installed: {what} comes from npm, which make test runs")
    assert make is not None
    done = subprocess.run([make, "--no-print-directory", target], cwd=ROOT, capture_output=True, text=True)
    if not installed.exists():
        pytest.fail(f"could not install {what}:\n{done.stdout}\n{done.stderr}")


def node_env(mongo_url: str, **settings: str) -> dict[str, str]:
    """The environment of a `server.py` node under test: the test run's MongoDB with a database of its
    own (read it back from MONGODB_DATABASE), the test secret, text logs, then `settings` by their
    variable names (REDIS_URL="...", PRESENCE_TTL="3"), which may override any of these."""
    return {
        "MONGODB_URL": mongo_url,
        "MONGODB_DATABASE": "t_" + uuid.uuid4().hex[:16],
        "JWT_SECRET": TEST_SECRET,
        "LOG_FORMAT": "text",
        "MONGODB_TIMEOUT_MS": "3000",  # as tests/support.py make_settings: a loaded machine
        **settings,
    }


class ServerProcess:
    """`python server.py` as a user runs it, with settings from the environment."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str],
        port: int | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = env
        # Runs in the child before exec: to give it resource limits of its own (setrlimit).
        self.preexec_fn = preexec_fn
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"server-{self.port}.log"

    def start(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "server.py"), "--port", str(self.port), "--data-dir", str(self.data_dir)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=self.preexec_fn,
            )
        wait_for_port(self.port, process=self.process)
        return self

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait()

    def wait(self, timeout_s: float = 15.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def insert_conversation(mongo_url: str, database: str, a: int, b: int, conversation_id: int) -> int:
    """An open conversation between two users, written straight to the database the processes share
    (its match id is the conversation's: no match document goes with it)."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url)
    now = dt.datetime.now(dt.UTC)
    doc = conversation_document(conversation_id, (a, b), conversation_id, created_at=now)
    await client[database].conversations.insert_one(doc)
    await client.close()
    return conversation_id


class RedisProcess:
    """A throwaway redis-server on a free port, without persistence; skips the test (fails it on CI)
    where redis-server is not installed."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed (make test installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, timeout_s=10, process=self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def start_same_port(self) -> None:
        """Restart on the port it had (clients reconnect to the same address)."""
        self.start()


class ProcessCluster:
    """`server.py` nodes sharing one MongoDB database and a Redis of their own, each started by name.
    The test may stop and restart `redis` under the nodes; `stop` ends the nodes, then Redis."""

    def __init__(self, workdir: Path, mongo_url: str, **settings: str) -> None:
        self.workdir = workdir
        self.redis = RedisProcess(workdir / "redis")
        self.env = node_env(mongo_url, REDIS_URL=self.redis.url, **settings)
        self.nodes: list[ServerProcess] = []

    @property
    def mongo_url(self) -> str:
        return self.env["MONGODB_URL"]

    @property
    def database(self) -> str:
        return self.env["MONGODB_DATABASE"]

    def start_node(self, name: str) -> ServerProcess:
        """A node with this NODE_ID and a data dir of its own, accepting connections."""
        node = ServerProcess(self.workdir / name, {**self.env, "NODE_ID": name}).start()
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.redis.stop()


@contextlib.contextmanager
def process_cluster(workdir: Path, mongo_url: str, **settings: str) -> Iterator[ProcessCluster]:
    """A ProcessCluster with its Redis running (`settings` as for `node_env`), stopped on the way out
    however the test ended."""
    cluster = ProcessCluster(workdir, mongo_url, **settings)
    cluster.redis.start()
    try:
        yield cluster
    finally:
        cluster.stop()
