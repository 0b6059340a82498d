"""systemd's Type=notify with a real server process: READY=1 once it serves, WATCHDOG=1 pings from its
loop at half WATCHDOG_USEC, STOPPING=1 at SIGTERM; a filesystem socket and an abstract one."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from services.core.systemd import Notifier
from tests.processes import ServerProcess, node_env

pytestmark = pytest.mark.slow


def received(sock: socket.socket, until: str, timeout_s: float = 20.0) -> list[str]:
    """Messages read from the notify socket until one holds `until`."""
    messages: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not any(until in m for m in messages):
        assert time.monotonic() < deadline, messages
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        messages.append(sock.recv(4096).decode())
    return messages


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_a_node_tells_systemd_it_is_ready_alive_and_stopping(tmp_path: Path, mongo_url: str, abstract: bool) -> None:
    name = f"chat-test-{uuid.uuid4().hex[:8]}"
    address = "\0" + name if abstract else str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        env = node_env(mongo_url, NOTIFY_SOCKET="@" + name if abstract else address, WATCHDOG_USEC="400000")
        node = ServerProcess(tmp_path / "node", env).start()
        try:
            assert any("READY=1" in m for m in received(sock, "READY=1"))
            started = time.monotonic()
            pings = [m for m in received(sock, "WATCHDOG=1") if m == "WATCHDOG=1"]
            while len(pings) < 4:
                pings += [m for m in received(sock, "WATCHDOG=1") if m == "WATCHDOG=1"]
            # Four pings at 0.2 s apart (half of 0.4 s), so well under the watchdog's 0.4 s each.
            assert time.monotonic() - started < 3.0
            node.signal(signal.SIGTERM)
            assert any("STOPPING=1" in m for m in received(sock, "STOPPING=1"))
            assert node.wait() == 0
        finally:
            node.stop()


def test_without_notify_socket_nothing_is_sent_and_watchdog_pid_is_honoured() -> None:
    assert not Notifier({}).enabled
    Notifier({}).send("READY=1")  # a no-op, no error
    other = Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_s is None or os.getpid() == 1
    mine = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.address == "\0x" and mine.watchdog_s == 1.0
