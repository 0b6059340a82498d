"""The load testers' own tools run for a few seconds against a real server, so that they cannot rot:
bench/artillery/chat.yml (Artillery's WebSocket engine, from npm) and bench/locustfile.py (locust with
websocket-client, from PyPI).

Each tool signs pairs up and in, matches them with mutual likes, plays message ping-pong over the
conversation sockets, leaves and resumes with `?after=`; while the pairs play, the node is restarted
(SIGTERM, then a new process on the same port), so every socket is closed 1001 and must come back and
resume. The tool's own report must show the messages exchanged, the resumes and reconnects, and no error:
both tools check ids (none missing, none twice) and turn any `error` frame or final close into a failure.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from tests.processes import ROOT, ServerProcess, ensure_npm_tool, node_env, unavailable

pytestmark = pytest.mark.slow

ARTILLERY_DIR = ROOT / "bench" / "artillery"
ARTILLERY = ARTILLERY_DIR / "node_modules" / ".bin" / "artillery"
PAIRS = 4
ROUNDS = 12


class Node:
    """One `server.py` whose process can be replaced by a new one on the same port and database."""

    def __init__(self, tmp_path: Path, mongo_url: str) -> None:
        # Every pair signs up from 127.0.0.1: lift the per-address sign-up budget, as BENCHMARKS.md says.
        self.env = node_env(mongo_url, SIGNUPS_PER_IP="0")
        self.mongo_url = mongo_url
        self.data_dir = tmp_path / "node"
        self.process = ServerProcess(self.data_dir, self.env).start()

    @property
    def base(self) -> str:
        return self.process.base

    def restart(self) -> None:
        self.process.signal(signal.SIGTERM)
        assert self.process.wait() == 0, self.process.log()[-3000:]
        self.process = ServerProcess(self.data_dir, self.env, port=self.process.port).start()

    def conversations_under_way(self) -> int:
        """Conversations holding at least two messages: pairs matched, connected and playing."""
        client: MongoClient[dict[str, Any]] = MongoClient(self.mongo_url)
        try:
            return client[self.env["MONGODB_DATABASE"]].messages.count_documents({"seq": 2})
        finally:
            client.close()

    def stop(self) -> None:
        self.process.stop()
        client: MongoClient[dict[str, Any]] = MongoClient(self.mongo_url)
        try:
            client.drop_database(self.env["MONGODB_DATABASE"])
        finally:
            client.close()


@pytest.fixture
def node(tmp_path: Path, mongo_url: str) -> Iterator[Node]:
    started = Node(tmp_path, mongo_url)
    try:
        yield started
    finally:
        started.stop()


def run_with_a_restart(node: Node, command: list[str], cwd: Path, env: dict[str, str], log: Path) -> str:
    """Run a tool; once all PAIRS play, restart the node under it. Its output, once it ended by itself."""
    with open(log, "wb") as out:
        tool = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while node.conversations_under_way() < PAIRS:
                assert tool.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, "the pairs never started playing:\n" + log.read_text()[-4000:]
                time.sleep(0.2)
            node.restart()
            # Generous: on a loaded machine the pairs' last rounds and the tool's own stop take a while.
            tool.wait(150)
        finally:
            if tool.poll() is None:
                tool.kill()
                tool.wait()
    output = log.read_text()
    assert tool.returncode == 0, output[-4000:]
    return output


def ensure_artillery() -> None:
    ensure_npm_tool("bench-tools", ARTILLERY, "Artillery")


def test_the_artillery_scenario_plays_resumes_and_rides_out_a_restart(node, tmp_path):
    ensure_artillery()
    report = tmp_path / "artillery.json"
    command = [
        str(ARTILLERY),
        "run",
        "--target",
        node.base,
        # PAIRS virtual users, all arrived before the restart.
        "--overrides",
        json.dumps({"config": {"phases": [{"duration": 2, "arrivalRate": PAIRS // 2}]}}),
        "--variables",
        json.dumps({"rounds": ROUNDS, "timeout": 20}),
        "--output",
        str(report),
        "chat.yml",
    ]
    output = run_with_a_restart(
        node, command, ARTILLERY_DIR, {"ARTILLERY_DISABLE_TELEMETRY": "true"}, tmp_path / "artillery.log"
    )
    counters: dict[str, int] = json.loads(report.read_text())["aggregate"]["counters"]

    assert [name for name in counters if name.startswith(("errors.", "chat.failures."))] == [], output[-4000:]
    assert counters["vusers.created"] == counters["vusers.completed"] == PAIRS, counters
    assert counters.get("vusers.failed", 0) == 0, counters
    assert counters["chat.matches"] == PAIRS
    # Every round of every pair came back, across the restart.
    assert counters["chat.ping_pongs"] == PAIRS * ROUNDS * 2, counters
    assert counters["chat.resumes"] == PAIRS
    assert counters["chat.replayed_messages"] == PAIRS * 3
    # The restart closed the sockets of the pairs still playing with 1001, and each came back.
    closes = {name: n for name, n in counters.items() if name.startswith("chat.closed_by_server.")}
    assert closes.get("chat.closed_by_server.1001", 0) >= 1, counters
    assert counters["chat.reconnects"] == sum(closes.values()), counters
    assert "chat.ping_pong_ms" in output  # the summary printed for the person running it


def locust_stats(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    """Locust's `--csv` statistics by (type, name)."""
    with open(f"{prefix}_stats.csv", newline="") as stats:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(stats)}


def test_the_locustfile_plays_resumes_and_rides_out_a_restart(node, tmp_path):
    locust = Path(sys.executable).parent / "locust"
    if not locust.exists():
        unavailable("locust is not installed: it is in the test extra (pip install -e '.[test]')")
    stats = tmp_path / "stats"
    command = [
        str(locust),
        "-f",
        str(ROOT / "bench" / "locustfile.py"),
        "--host",
        node.base,
        "--headless",
        "--users",
        str(PAIRS),
        "--spawn-rate",
        str(PAIRS),
        "--run-time",
        "12s",
        # Users finish their round and close their sockets when the time is up.
        "--stop-timeout",
        "25",
        "--drop-every",
        "5",
        "--ws-timeout",
        "20",
        "--csv",
        str(stats),
        "--only-summary",
    ]
    output = run_with_a_restart(node, command, tmp_path, {}, tmp_path / "locust.log")
    entries = locust_stats(stats)

    failures = {key: row["Failure Count"] for key, row in entries.items() if row["Failure Count"] != "0"}
    assert failures == {}, output[-4000:]
    assert Path(f"{stats}_exceptions.csv").read_text().count("\n") == 1, output[-4000:]  # the header alone
    assert "Traceback" not in output, output[-4000:]
    for path in ("/api/register/", "/api/token/", "/api/likes/"):
        assert int(entries[("POST", path)]["Request Count"]) == 2 * PAIRS
    assert int(entries[("WS", "ping-pong")]["Request Count"]) >= PAIRS * 8
    assert int(entries[("WS", "resume")]["Request Count"]) >= PAIRS
    assert int(entries[("WS", "reconnect")]["Request Count"]) >= 1
    assert ("WS", "protocol") not in entries
    assert "ping-pong" in output  # the summary printed for the person running it
