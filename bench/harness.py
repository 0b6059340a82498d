"""The processes a benchmark run needs, on loopback and free ports, each stopped when the run ends.

- the embedded store (SecantusDB, as `server.py` would start it, but started here so that the seeder and
  two server nodes can share it),
- redis-server instances (our nodes' bus, the peer's channel layer: one each, so neither sees the
  other's traffic),
- our server nodes (`server.py`, single node without Redis or several with it),
- the ceiling (`../shared/bench/ceiling_tornado.py`) and the peer (`../shared/bench/peer_channels`, run
  from a copy in the work directory, since shared/ is read-only, with its own venv outside the repo).

Every child logs to a file in the work directory; `Stack.close()` stops them in reverse order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.storage.embedded import EmbeddedMongo, free_port, wait_for_port  # noqa: E402

SHARED_BENCH = Path(os.environ.get("SHARED_BENCH", ROOT.parent / "shared" / "bench"))
BENCH_SECRET = "bench-only-jwt-secret-" + "0123456789" * 4
BENCH_DATABASE = "bench"
# The rate limits are sized for one human per socket; a closed-loop pair sends hundreds of frames per
# second on purpose, so the benchmark lifts them (the references have none).
BENCH_SERVER_ENV = {
    "JWT_SECRET": BENCH_SECRET,
    "MONGODB_DATABASE": BENCH_DATABASE,
    "FRAME_RATE": "1000000",
    "FRAME_BURST": "1000000",
    "MESSAGE_RATE": "1000000",
    "MESSAGE_BURST": "1000000",
    "RATE_STRIKES_TO_CLOSE": "1000000",
}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Child:
    """A process we started: started listening on `port`, stopped with SIGTERM (then SIGKILL)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        *,
        port: int,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> Child:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            wait_for_port(self.port, timeout_s, self.process)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{self.name} did not start ({exc}); see {self.log_path}") from None
        return self

    def stop(self, timeout_s: float = 20.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Stack:
    """Starts what a run needs under `workdir`; `close()` stops all of it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self.store: EmbeddedMongo | None = None

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        if self.store is not None:
            self.store.stop()
            self.store = None

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _spawn(self, name: str, argv: list[str], port: int, **kw: Any) -> Child:
        child = Child(name, argv, self.workdir / f"{name}.log", port=port, **kw)
        self.children.append(child)
        return child.start()

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    # -- backing services ------------------------------------------------------------------------------

    def start_store(self) -> tuple[str, int]:
        """The embedded store with the server's own default cache size; (url, pid)."""
        self.store = EmbeddedMongo(self.workdir / "mongo", cache_size="256M")
        self.store.start()
        assert self.store.process is not None
        return self.store.url, self.store.process.pid

    def start_redis(self, name: str) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.workdir)]
        self._spawn(name, argv, port)
        return f"redis://127.0.0.1:{port}/0"

    # -- the servers -----------------------------------------------------------------------------------

    def start_ours(
        self, name: str, mongodb_url: str, redis_url: str = "", extra_env: dict[str, str] | None = None
    ) -> Child:
        """A node named `name` (its NODE_ID); `extra_env` overrides settings for this run."""
        port = free_port()
        env = {**BENCH_SERVER_ENV, "MONGODB_URL": mongodb_url, "REDIS_URL": redis_url, "NODE_ID": name}
        env.update(extra_env or {})
        data_dir = self.workdir / name
        argv = [sys.executable, str(ROOT / "server.py"), "--port", str(port), "--data-dir", str(data_dir)]
        return self._spawn(name, argv, port, env=env, cwd=ROOT)

    def start_ceiling(self, name: str = "ceiling") -> Child:
        port = free_port()
        return self._spawn(name, [sys.executable, str(SHARED_BENCH / "ceiling_tornado.py"), str(port)], port)

    def prepare_peer(self, peer_python: Path, pairs: int, redis_url: str) -> tuple[Path, dict[str, str], Path]:
        """A copy of the peer with a migrated SQLite database and `pairs` conversations;
        (its directory, its environment, its fixtures file)."""
        peer_dir = self.workdir / "peer_channels"
        if peer_dir.exists():
            shutil.rmtree(peer_dir)
        shutil.copytree(SHARED_BENCH / "peer_channels", peer_dir)
        env = {**os.environ, "PEER_DB": str(self.workdir / "peer.sqlite3"), "PEER_REDIS": redis_url}
        manage = [str(peer_python), "manage.py"]
        subprocess.run([*manage, "migrate", "-v", "0"], cwd=peer_dir, env=env, check=True)
        fixtures = self.workdir / "peer_fixtures.json"
        with open(fixtures, "wb") as out:
            subprocess.run([*manage, "fixtures", str(pairs)], cwd=peer_dir, env=env, check=True, stdout=out)
        json.loads(fixtures.read_text())  # fail here, not in the load generator, on a broken file
        return peer_dir, env, fixtures

    def start_peer(self, peer_python: Path, peer_dir: Path, env: dict[str, str], name: str = "peer") -> Child:
        port = free_port()
        daphne = peer_python.parent / "daphne"
        argv = [str(daphne), "-b", "127.0.0.1", "-p", str(port), "seedpeer.asgi:application"]
        return self._spawn(name, argv, port, env=env, cwd=peer_dir)
