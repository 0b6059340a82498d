"""`python server.py` holds its port before it imports the server: a client that connects while the imports
run (seconds on a busy machine) waits in the listen backlog and is answered, instead of being refused."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from services.core import command_line
from services.core.config import Settings
from services.storage.embedded import free_port
from tests.processes import ServerProcess, node_env

# Put first on the child's path: holds the import of `handlers` (the bulk of the server's imports) until
# the test says so, and says when it started waiting.
SLOW_IMPORT = """
import os, sys, time
from importlib.abc import MetaPathFinder

class HoldHandlers(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "handlers":
            sys.meta_path.remove(self)
            open(os.environ["IMPORT_STARTED"], "w").close()
            deadline = time.monotonic() + 30
            while not os.path.exists(os.environ["IMPORT_GO"]) and time.monotonic() < deadline:
                time.sleep(0.02)
        return None

sys.meta_path.insert(0, HoldHandlers())
"""


def wait_for_file(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_client_connecting_while_the_server_imports_is_answered_once_it_serves(tmp_path, mongo_url):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_IMPORT)
    started, go = tmp_path / "import-started", tmp_path / "import-go"
    env = node_env(mongo_url, PYTHONPATH=str(hook), IMPORT_STARTED=str(started), IMPORT_GO=str(go))
    # Not `start()`, which waits for the port: the point is what the port does before the node serves.
    node = ServerProcess(tmp_path / "data", env).spawn()
    try:
        wait_for_file(started)
        # The server's modules are not imported yet, and the port already takes the connection.
        client = socket.create_connection(("127.0.0.1", node.port), timeout=30)
        client.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        go.touch()
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        client.close()
        assert answer.startswith(b"HTTP/1.1 200"), (answer[:200], node.log())
    finally:
        go.touch()
        node.stop()


def test_the_early_hold_takes_nothing_for_an_operator_command_or_a_bad_setting_and_says_nothing(monkeypatch, capsys):
    port = free_port()
    monkeypatch.setenv("JWT_SECRET", "x" * 40)
    wanted = settings_for(port)
    command_line.hold_ports_early(["grant-moderator", "alice", "--host", "127.0.0.1", "--port", str(port)])
    assert command_line.take_held_ports(wanted) is None
    monkeypatch.setenv("SHUTDOWN_TIMEOUT", "soon")
    command_line.hold_ports_early(["--host", "127.0.0.1", "--port", str(port)])
    assert command_line.take_held_ports(wanted) is None
    command_line.hold_ports_early(["--no-such-flag"])
    command_line.hold_ports_early(["--help"])
    assert capsys.readouterr() == ("", "")  # main says it, once
    with socket.create_server(("127.0.0.1", port)):  # nobody holds the port
        pass


def test_held_ports_that_the_settings_no_longer_ask_for_are_let_go(monkeypatch):
    port = free_port()
    monkeypatch.setenv("JWT_SECRET", "x" * 40)
    command_line.hold_ports_early(["--host", "127.0.0.1", "--port", str(port)])
    assert command_line.take_held_ports(settings_for(free_port())) is None
    with socket.create_server(("127.0.0.1", port)):  # closed, not leaked
        pass
    command_line.hold_ports_early(["--host", "127.0.0.1", "--port", str(port)])
    held = command_line.take_held_ports(settings_for(port))
    assert held is not None and held.api[0].getsockname()[1] == port
    assert command_line.take_held_ports(settings_for(port)) is None  # taken once
    held.close()


def settings_for(port: int) -> Settings:
    return Settings.from_env(host="127.0.0.1", port=port)


def test_listening_sockets_share_one_port_across_families_and_take_connections():
    every = command_line.listening_sockets("", 0, 16)
    try:
        assert every and len({sock.getsockname()[1] for sock in every}) == 1
        for sock in every:
            assert not sock.getblocking()
            if sock.family == socket.AF_INET6:
                assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        port = every[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        for sock in every:
            sock.close()
    (loopback,) = command_line.listening_sockets("127.0.0.1", 0, 16)
    assert loopback.getsockname()[0] == "127.0.0.1"
    loopback.close()
