"""The embedded MongoDB-compatible server, used when no MONGODB_URL is configured.

SecantusDB (PyPI `secantusdb`, GPL-2.0, WiredTiger storage) speaks the MongoDB wire protocol. It runs as a
separate child process so the server talks to it through exactly the same PyMongo code path as production,
and so a GPL component is used, never linked or vendored. The child is tied to the parent's life: it gets
SIGTERM when the parent exits normally, and the kernel sends it SIGTERM if the parent dies abruptly
(PR_SET_PDEATHSIG), so no orphan keeps the data directory locked.

WiredTiger lets one process at a time open a data directory, so a second process that needs the same data
(`python server.py grant-moderator`, while a node runs) cannot start a server of its own on it. The
running server's port and pid are therefore written beside the data (`<storage path>.port`, e.g.
`data/mongo.port`) once it accepts connections, and removed when it stops; `EmbeddedMongo.running`
finds that server and connects to it instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("chat.embedded")

_PR_SET_PDEATHSIG = 1


def _tie_to_parent(parent_pid: int) -> Callable[[], None]:
    """What the child runs between fork and exec: ask the kernel to SIGTERM it when the parent dies.

    The kernel tracks the forking *thread*: Popen must run on a thread that lives as long as the
    process (the main thread, or an executor thread, which is only retired at interpreter exit).
    """

    def tie() -> None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass
        # A parent that died between fork and prctl sends no signal: we would be adopted and live on.
        if os.getppid() != parent_pid:
            os._exit(1)
        # Own process group: a Ctrl-C in the terminal reaches the parent, which then stops us in order.
        os.setpgrp()

    return tie


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _resume(pid: int) -> None:
    """Let a paused child (SIGSTOP, a debugger) run again before it is sent SIGTERM.

    A signal sent to a stopped process, or in the instant it resumes, may be taken by any of its threads;
    CPython then only sets a flag and never wakes its main thread, so the child would sit out the whole
    stop timeout. Once its threads have run for a moment, the main thread receives the signal as usual.
    """
    if _state(pid) not in ("T", "t"):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 1.0
    while _state(pid) in ("T", "t") and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 20.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`; raise if `process` exits first or
    `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f}s")


def port_file_of(storage_path: str | Path) -> Path:
    """Where the embedded server using `storage_path` writes its port: beside the data, not in it."""
    path = Path(storage_path)
    return path.with_name(path.name + ".port")


def _serves_embedded_store(pid: int) -> bool:
    """Whether `pid` is alive and is a SecantusDB server (not another process that reused the pid)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"secantus" in command and _state(pid) not in ("", "Z")


class EmbeddedMongo:
    """A SecantusDB child process on a loopback port, with its data under `storage_path`."""

    def __init__(self, storage_path: str | Path, *, port: int | None = None, cache_size: str = "256M") -> None:
        self.storage_path = Path(storage_path)
        self.port = port or free_port()
        self.cache_size = cache_size
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def running(cls, storage_path: str | Path) -> EmbeddedMongo | None:
        """The embedded server another process is running on `storage_path`, or None when none is (no
        port file, or one left by a server that died: its pid gone, or its port closed). The answer is
        not started nor stopped by this process: `stop` leaves it alone."""
        try:
            written = json.loads(port_file_of(storage_path).read_text())
            port, pid = int(written["port"]), int(written["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _serves_embedded_store(pid):
            return None
        try:
            wait_for_port(port, timeout_s=1.0)
        except RuntimeError:
            return None
        return cls(storage_path, port=port)

    @property
    def port_file(self) -> Path:
        return port_file_of(self.storage_path)

    @property
    def url(self) -> str:
        # Without retryable writes: SecantusDB 0.7 keeps a record of every retryable write and walks
        # them on each new one, so an insert cost 1 ms on a fresh store and 16 ms after 12,000 writes
        # (bench/store_probe.py --growth). A single node has no failover for a retry to ride over.
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true&retryWrites=false"

    def start(self, timeout_s: float = 30.0) -> None:
        self.storage_path.mkdir(parents=True, exist_ok=True)
        log_path = self.storage_path.parent / "embedded-mongo.log"
        cmd = [
            sys.executable,
            "-m",
            "secantus",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-path",
            str(self.storage_path),
            "--cache-size",
            self.cache_size,
            "--log-level",
            "WARNING",
        ]
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_tie_to_parent(os.getpid()),
            )
        try:
            wait_for_port(self.port, timeout_s, self.process)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"embedded MongoDB: {exc}; see {log_path}") from exc
        self._write_port_file(self.process.pid)
        log.info("embedded MongoDB listening on 127.0.0.1:%d, data in %s", self.port, self.storage_path)

    def _write_port_file(self, pid: int) -> None:
        # Written whole, then renamed into place: a reader never sees half a file.
        partial = self.port_file.with_name(self.port_file.name + ".partial")
        partial.write_text(json.dumps({"port": self.port, "pid": pid}) + "\n")
        os.replace(partial, self.port_file)

    def _remove_port_file(self, pid: int) -> None:
        """Remove the port file if it still names our server (a later server may have replaced it)."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if int(json.loads(self.port_file.read_text())["pid"]) == pid:
                self.port_file.unlink()

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        self._remove_port_file(proc.pid)
        if proc.poll() is not None:
            return
        _resume(proc.pid)
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("embedded MongoDB ignored SIGTERM for %.0fs; killing it", timeout_s)
            proc.kill()
            proc.wait()
