"""bench/scale_restart.py at a tiny scale, so that it cannot rot: 300 sockets on 3 nodes, a short hold, a
rolling restart under a message load. Its figures are not checked against targets (a benchmark measures
those); its own checks are: every node's sockets came back and resumed, every acknowledged message
reached its recipient exactly once, and the figures it publishes are there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import pytest

from tests.processes import ROOT, unavailable

pytestmark = pytest.mark.slow

SOCKETS = 300
NODES = 3


def test_the_rolling_restart_benchmark_runs_and_checks_delivery(tmp_path):
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")
    raw = tmp_path / "scale.jsonl"
    command = [sys.executable, str(ROOT / "bench" / "scale_restart.py"), "--sockets", str(SOCKETS)]
    command += ["--nodes", str(NODES), "--workers", "2", "--hold", "2", "--sample-every", "1"]
    command += ["--senders", "10", "--rate", "1", "--steady", "2", "--settle", "1", "--drain", "90"]
    # Quick reconnects keep the test short; the benchmark's own defaults model a phone's backoff.
    command += ["--backoff-base", "0.3", "--backoff-cap", "1", "--back-timeout", "90"]
    command += ["--workdir", str(tmp_path / "work"), "--raw", str(raw)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    lines: list[dict[str, Any]] = [json.loads(line) for line in raw.read_text().splitlines()]
    assert "load average" in lines[0]["header"]
    by_phase: dict[str, list[dict[str, Any]]] = {}
    for line in lines[1:]:
        by_phase.setdefault(line["phase"], []).append(line)

    (connect,) = by_phase["connect"]
    assert connect["sockets_joined"] == SOCKETS
    # Both participants of every pair on different nodes: each node holds a third.
    assert connect["per_node"] == [SOCKETS // NODES] * NODES
    held = {line["node"]: line for line in by_phase["hold"]}
    for name in ("node1", "node2", "node3"):
        assert held[name]["sockets"] == SOCKETS // NODES
        assert held[name]["rss_held_mb"] > held[name]["rss_empty_mb"] > 0
        assert held[name]["cpu_pct"] >= 0
    restarts = by_phase["restart"]
    assert [r["node"] for r in restarts] == ["node1", "node2", "node3"]
    for restart in restarts:
        assert restart["exit_code"] == 0, restart
        assert restart["all_back"] and restart["back"] == restart["sockets"] == SOCKETS // NODES, restart
        assert restart["resumed"] >= restart["sockets"], restart
        assert restart["close_codes"].get("1001", 0) == SOCKETS // NODES, restart
        assert restart["sigterm_to_exit_s"] <= restart["sigterm_to_listening_s"] <= restart["sigterm_to_all_back_s"]
        assert restart["other_nodes_lost_sockets"] == 0, restart
    (messages,) = by_phase["messages"]
    assert messages["acked"] > 0
    # Senders on every node (and so readers on every node), not all on one.
    assert sum(messages["senders_per_node"]) == messages["sending_pairs"]
    assert all(count > 0 for count in messages["senders_per_node"]), messages
    assert messages["acked"] == messages["generated"] == messages["delivered"], messages
    assert messages["unacked"] == messages["lost"] == messages["duplicated"] == messages["stored_twice"] == 0
    # The table for a person reads the same figures.
    assert "SIGTERM to all back, s" in done.stdout
    assert done.stdout.count('"phase": "restart"') == NODES
