"""Real processes for tests: `server.py` nodes to start, kill and wait for, and a redis-server."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
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


def pause_process(pid: int, timeout_s: float = 5.0) -> None:
    """SIGSTOP, then wait until every thread has actually stopped: the signal stops a process's threads one
    by one, and a store thread still running could answer one more command (a probe that then succeeds)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout_s
    while True:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        if states and all(state in ("T", "t") for state in states):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"process {pid} not stopped after {timeout_s}s: {states}")
        time.sleep(0.01)


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


class RedisClusterProcess:
    """A throwaway Redis Cluster on loopback: six `redis-server --cluster-enabled yes` processes, made
    three masters with a replica each by `redis-cli --cluster create`, without persistence and with a
    short node timeout, so that a killed master's replica takes over within a couple of seconds."""

    NODE_TIMEOUT_MS = 1000

    def __init__(self, workdir: Path, size: int = 6) -> None:
        self.workdir = workdir
        self.ports = [free_port() for _ in range(size)]
        self.bus_ports = [free_port() for _ in range(size)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """Any one node names the cluster."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            unavailable("redis-server and redis-cli are not installed (make test installs them)")
        for index in range(len(self.ports)):
            self._start_new_node(index)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_until_ok()

    def _start_new_node(self, index: int, attempts: int = 3) -> None:
        """Start node `index` the first time. Its ports were free when picked, but any connection this
        machine opens meanwhile (a test on another worker) may take one from the same ephemeral range, and
        the node then exits at once: it gets two new ports and another try."""
        for attempt in range(attempts):
            try:
                self.start_node(self.ports[index])
                return
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                self.ports[index], self.bus_ports[index] = free_port(), free_port()

    def start_node(self, port: int) -> None:
        """Start (or start again, with the cluster configuration it saved) the node on `port`."""
        binary = shutil.which("redis-server")
        assert binary is not None
        workdir = self.workdir / str(port)
        workdir.mkdir(parents=True, exist_ok=True)
        bus_port = self.bus_ports[self.ports.index(port)]
        self.processes[port] = subprocess.Popen(
            [
                *(binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                *("--dir", str(workdir), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-node-timeout", str(self.NODE_TIMEOUT_MS), "--cluster-port", str(bus_port)),
                # A replica that never finished its first sync cannot take over: no wait before it starts.
                *("--repl-diskless-sync-delay", "0"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port, timeout_s=10, process=self.processes[port])

    def cli(self, port: int, *args: str) -> str:
        cli = shutil.which("redis-cli")
        assert cli is not None
        done = subprocess.run([cli, "-p", str(port), *args], capture_output=True, timeout=10, check=False)
        return done.stdout.decode(errors="replace")

    def masters(self) -> list[int]:
        """Ports of the live masters that hold slots, as a live node sees them."""
        live = [p for p, proc in self.processes.items() if proc.poll() is None]
        ports = []
        for line in self.cli(live[0], "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2] and len(fields) > 8:
                ports.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return sorted(ports)

    def master_of(self, key: str) -> int:
        """The port of the master that holds `key`'s slot now."""
        slot = int(self.cli(self.ports[0], "cluster", "keyslot", key).strip())
        for line in self.cli(self.ports[0], "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for spec in fields[8:]:
                low, _, high = spec.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(fields[1].split("@")[0].rsplit(":", 1)[1])
        raise LookupError(f"no master holds slot {slot}")

    def wait_until_ok(self, timeout_s: float = 30.0) -> None:
        """Until every live node says the cluster is ok (all slots served) and agrees on three masters, and
        every replica is in sync with its master (only then can it take over from it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            live = [p for p, proc in self.processes.items() if proc.poll() is None]
            if (
                all("cluster_state:ok" in self.cli(p, "cluster", "info") for p in live)
                and len(self.masters()) == 3
                and all(self.in_sync(p) for p in live)
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not become ok")

    def in_sync(self, port: int) -> bool:
        """A master, or a replica whose link to its master is up."""
        info = self.cli(port, "info", "replication")
        return "role:master" in info or "master_link_status:up" in info

    def kill(self, port: int) -> None:
        process = self.processes[port]
        process.kill()
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                # Not stopped by its SIGTERM: without a kill it outlives the run (a cluster node was once
                # found running an hour and a half after the run that started it).
                process.kill()
                process.wait(10)
