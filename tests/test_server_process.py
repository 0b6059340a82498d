"""`server.py` as a real process with its embedded MongoDB child: clean shutdown on SIGTERM, no orphan
after SIGKILL, accounts and tokens that survive a restart, and fast 503s when the store goes away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.core.config import Settings
from services.storage.embedded import free_port
from tests.processes import pause_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "process test password"
# What "fails fast" means for a client: the store's operation budget (MONGODB_TIMEOUT_MS, 3 s in tests)
# plus slack on a busy box.
FAST_S = 4.5

# Straight to 127.0.0.1: a proxy configured in the environment must not sit between test and server.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Reply:
    status: int
    body: Any
    elapsed: float


def call(port: int, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 15) -> Reply:
    data = orjson.dumps(body) if body is not None else (b"" if method in ("POST", "PUT", "PATCH") else None)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    started = time.monotonic()
    try:
        with _opener.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return Reply(status, orjson.loads(raw) if raw else None, time.monotonic() - started)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment minus every server knob (MONGODB_URL above all), plus `extra`."""
    knobs = {env for env, _, _ in Settings.describe()}
    return {**{k: v for k, v in os.environ.items() if k not in knobs}, **extra}


def start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (tells a process from a later one that reuses its pid)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


@dataclass(frozen=True)
class Pid:
    pid: int
    started: int

    def alive(self) -> bool:
        return start_time(self.pid) == self.started

    def wait_gone(self, timeout_s: float) -> float:
        """Seconds until the process is gone (exited, even if not yet reaped); fails after timeout_s."""
        began = time.monotonic()
        while self.alive():
            if time.monotonic() - began > timeout_s:
                pytest.fail(f"process {self.pid} still alive after {timeout_s}s")
            time.sleep(0.05)
        return time.monotonic() - began

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def pause(self, timeout_s: float = 5.0) -> None:
        """SIGSTOP, then wait until every thread has actually stopped."""
        if self.alive():
            pause_process(self.pid, timeout_s)


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, whichever of its threads forked them."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.extend(int(p) for p in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return found


class ServerUnderTest:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.env = env
        self.port = free_port()
        self.log_path = data_dir.parent / f"{data_dir.name}-server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.embedded: Pid | None = None

    def launch(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "server.py"), "--port", str(self.port), "--data-dir", str(self.data_dir)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self.process

    def start(self, timeout_s: float = 60) -> ServerUnderTest:
        process = self.launch()
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{self.log()}")
            try:
                if call(self.port, "GET", "/livez", timeout=1).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not live after {timeout_s}s:\n{self.log()}")
            time.sleep(0.05)
        if "MONGODB_URL" not in self.env:
            self.embedded = self.find_embedded()
        return self

    def find_embedded(self) -> Pid:
        assert self.process is not None
        for child in children_of(self.process.pid):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if b"secantus" in cmdline and str(self.data_dir / "mongo").encode() in cmdline:
                started = start_time(child)
                assert started is not None
                return Pid(child, started)
        pytest.fail(f"no embedded MongoDB child under server {self.process.pid}: {children_of(self.process.pid)}")

    def call(self, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 15) -> Reply:
        return call(self.port, method, path, body, token, timeout)

    def wait_exit(self, timeout_s: float) -> tuple[int, float]:
        assert self.process is not None
        began = time.monotonic()
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running {timeout_s}s after it was told to stop:\n{self.log()}")
        return code, time.monotonic() - began

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.embedded is not None:
            self.embedded.signal(signal.SIGKILL)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Any]:
    started: list[ServerUnderTest] = []

    def make(data_dir: Path | None = None, **env: str) -> ServerUnderTest:
        server = ServerUnderTest(data_dir or tmp_path / "data", clean_env(**env))
        started.append(server)
        return server

    yield make
    for server in started:
        server.cleanup()


def sign_up(server: ServerUnderTest, username: str) -> dict[str, Any]:
    created = server.call("POST", "/api/register/", {"username": username, "password": PASSWORD})
    assert created.status == 201, created.body
    tokens = server.call("POST", "/api/token/", {"username": username, "password": PASSWORD})
    assert tokens.status == 200, tokens.body
    return {"id": created.body["id"], **tokens.body}


def test_sigterm_stops_both_processes_and_a_restart_keeps_users_and_tokens(servers, tmp_path):
    first = servers().start()
    assert first.embedded is not None
    ready = first.call("GET", "/readyz")
    assert ready.status == 200 and ready.body["checks"]["mongodb"] is True
    user = sign_up(first, "survivor")

    first.process.send_signal(signal.SIGTERM)
    code, _ = first.wait_exit(15)
    assert code == 0, first.log()
    first.embedded.wait_gone(5)
    assert (tmp_path / "data" / "jwt_secret").exists()

    second = servers(tmp_path / "data").start()
    assert second.embedded is not None and second.embedded.pid != first.embedded.pid
    me = second.call("GET", "/api/users/me/", token=user["access"])
    assert me.status == 200 and me.body["id"] == user["id"] and me.body["username"] == "survivor"
    assert second.call("POST", "/api/token/", {"username": "survivor", "password": PASSWORD}).status == 200
    rotated = second.call("POST", "/api/token/refresh/", {"refresh": user["refresh"]})
    assert rotated.status == 200, rotated.body
    # Ids keep growing past the ones handed out before the restart.
    other = sign_up(second, "newcomer")
    assert other["id"] > user["id"]

    second.process.send_signal(signal.SIGTERM)
    assert second.wait_exit(15)[0] == 0
    second.embedded.wait_gone(5)


def test_sigkill_of_the_server_leaves_no_orphan_store(servers, tmp_path):
    first = servers().start()
    assert first.embedded is not None
    user = sign_up(first, "orphan_check")
    first.process.kill()
    assert first.wait_exit(5)[0] == -signal.SIGKILL
    # The kernel's parent-death signal reaches the child, which shuts down on its own.
    first.embedded.wait_gone(10)

    # Nothing holds the data directory: a new server opens it and finds the account.
    second = servers(tmp_path / "data").start()
    me = second.call("GET", "/api/users/me/", token=user["access"])
    assert me.status == 200 and me.body["id"] == user["id"]


def test_requests_answer_503_fast_when_the_store_dies(servers):
    server = servers().start()
    assert server.embedded is not None
    user = sign_up(server, "store_dies")
    assert server.call("GET", "/api/users/me/", token=user["access"]).status == 200

    server.embedded.signal(signal.SIGKILL)
    server.embedded.wait_gone(5)
    for method, path, body, token in [
        ("GET", "/api/users/me/", None, user["access"]),
        ("PATCH", "/api/users/me/", {"bio": "x"}, user["access"]),
        ("POST", "/api/token/", {"username": "store_dies", "password": PASSWORD}, None),
        ("POST", "/api/token/refresh/", {"refresh": user["refresh"]}, None),
    ]:
        reply = server.call(method, path, body, token)
        assert reply.status == 503, (method, path, reply.status, reply.body)
        assert reply.body["error"]["code"] == "unavailable"
        assert reply.elapsed < FAST_S, (method, path, reply.elapsed)
    live = server.call("GET", "/livez")
    assert live.status == 200
    ready = server.call("GET", "/readyz")
    assert ready.status == 503 and ready.body["checks"]["mongodb"] is False
    assert ready.elapsed < FAST_S

    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(15)[0] == 0


def test_a_paused_store_is_reported_fast(servers):
    """A store that accepted connections and then hangs (SIGSTOP, a half-open network path)."""
    server = servers().start()
    assert server.embedded is not None
    user = sign_up(server, "store_hangs")
    assert server.call("GET", "/readyz").status == 200

    server.embedded.pause()
    try:
        ready = server.call("GET", "/readyz")
        assert ready.status == 503 and ready.body["checks"]["mongodb"] is False
        assert ready.elapsed < FAST_S, ready.elapsed
        reply = server.call("GET", "/api/users/me/", token=user["access"], timeout=FAST_S + 1)
        assert reply.elapsed < FAST_S, reply.elapsed
        assert reply.status == 503 and reply.body["error"]["code"] == "unavailable"
    finally:
        server.process.send_signal(signal.SIGTERM)
        assert server.wait_exit(30)[0] == 0
        server.embedded.wait_gone(5)
        # Stopping the server resumed the paused child, which then acted on its SIGTERM at once
        # rather than being killed after the stop timeout.
        assert "ignored SIGTERM" not in server.log()


def test_an_unreachable_mongodb_url_is_waited_for_and_a_stop_is_not_held_up_by_it(servers, tmp_path):
    closed_port = free_port()
    server = servers(MONGODB_URL=f"mongodb://127.0.0.1:{closed_port}/?directConnection=true", MONGODB_TIMEOUT_MS="500")
    server.start()  # alive (tests/test_store_down_at_start.py: ready once the store comes)
    assert server.call("GET", "/readyz").status == 503
    time.sleep(1.0)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    code, elapsed = server.wait_exit(30)
    assert code == 0
    assert elapsed < 15  # SHUTDOWN_TIMEOUT (10 s) at most, though every write it tries times out
    assert f"127.0.0.1:{closed_port}" in server.log()
    assert not (tmp_path / "data" / "mongo").exists()
