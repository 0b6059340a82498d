"""What the cluster-wide message budget costs: two nodes and one redis-server under the stored-message
load, with the shared budget (services/realtime/counters.py SharedBudget) on and off
(`MESSAGE_BUDGET_SHARED`), side by side in one run.

The embedded store is started and seeded (bench/seed_chat.py), then for each repetition and each
setting (the order alternates between repetitions) two fresh nodes start on it with the setting, and
bench/loadgen.py plays the `messages` ping-pong over `--pairs` conversations, A on node 1 and B on node 2.
The budget is as large as the other benchmarks make it (MESSAGE_RATE = MESSAGE_BURST = 1,000,000), so it
never refuses: what is measured is its bookkeeping alone. Once messages flow and `--warmup` seconds have
passed, this script measures `--window` seconds on its own clock:

- messages: the growth of the messages collection (each stored message is delivered to the other
  participant, and echoed to its sender);
- node CPU: user + system time of both node processes (/proc), per message;
- Redis: commands (INFO commandstats, all of them and EVALSHA apart), per second and per message, and
  redis-server's own CPU (INFO cpu), per message.

Prints one Markdown table of every measurement and one of the medians per setting.

    .venv/bin/python bench/budget_cost.py                      # 50 pairs, 2 x 2 runs of 12 s: about 2 minutes
    .venv/bin/python bench/budget_cost.py --pairs 100 --repeats 3 --window 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BENCH_DATABASE, BENCH_SECRET, ROOT, Child, Stack, log
from bench.loadgen import ProcStats
from bench.seed_chat import seed

SETTINGS = {"on": {"MESSAGE_BUDGET_SHARED": "true"}, "off": {"MESSAGE_BUDGET_SHARED": "false"}}


@dataclass
class Sample:
    at: float
    messages: int
    node_cpu_s: float
    redis_calls: int
    redis_evalsha: int
    redis_cpu_s: float
    by_command: dict[str, int]


@dataclass
class Measure:
    setting: str
    repeat: int
    seconds: float
    messages: int
    node_cpu_s: float
    redis_calls: int
    redis_evalsha: int
    redis_cpu_s: float
    loadgen: dict[str, Any]
    by_command: dict[str, int]

    def row(self) -> dict[str, float]:
        per = max(1, self.messages)
        return {
            "messages/s": self.messages / self.seconds,
            "node CPU % (both)": 100 * self.node_cpu_s / self.seconds,
            "node CPU µs/message": 1e6 * self.node_cpu_s / per,
            "Redis commands/s": self.redis_calls / self.seconds,
            "Redis commands/message": self.redis_calls / per,
            "EVALSHA/message": self.redis_evalsha / per,
            "redis-server CPU µs/message": 1e6 * self.redis_cpu_s / per,
        }


def sample(messages: Any, procs: ProcStats, client: redis.Redis) -> Sample:
    stats = client.info("commandstats")
    cpu = client.info("cpu")
    return Sample(
        at=time.monotonic(),
        messages=messages.estimated_document_count(),
        node_cpu_s=procs.cpu_total_s(),
        redis_calls=sum(int(v["calls"]) for v in stats.values()),
        redis_evalsha=int(stats.get("cmdstat_evalsha", {}).get("calls", 0)),
        redis_cpu_s=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        # Commands a script runs (HSET inside the budget's EVALSHA...) are counted under their own names.
        by_command={name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()},
    )


def wait_for_messages(messages: Any, loadgen: subprocess.Popen[bytes], limit_s: float = 60.0) -> None:
    start = messages.estimated_document_count()
    deadline = time.monotonic() + limit_s
    while messages.estimated_document_count() == start:
        if loadgen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("no message was stored: see the load generator's and the nodes' logs")
        time.sleep(0.2)


def run_once(
    stack: Stack, setting: str, repeat: int, urls: tuple[str, str], fixtures: Path, args: argparse.Namespace
) -> Measure:
    nodes: list[Child] = [
        stack.start_ours(f"{setting}{repeat}-node{i}", urls[0], urls[1], SETTINGS[setting]) for i in (1, 2)
    ]
    procs = ProcStats([n.pid for n in nodes])
    mongo: MongoClient[dict[str, Any]] = MongoClient(urls[0])
    messages = mongo[BENCH_DATABASE]["messages"]
    client = redis.Redis.from_url(urls[1])
    loadgen_duration = args.warmup + args.window + 10.0  # outlasts this script's window whatever the connects take
    argv = [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--fixtures", str(fixtures)]
    for node in nodes:
        argv += ["--url", node.url, "--server-pid", str(node.pid)]
    argv += ["--kind", "ours", "--label", f"budget-{setting}", "--scenarios", "messages"]
    argv += ["--pairs", str(args.pairs), "--duration", str(loadgen_duration), "--warmup", "1"]
    log(f"budget {setting}, run {repeat}: {args.pairs} pairs")
    loadgen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        wait_for_messages(messages, loadgen)
        time.sleep(args.warmup)
        before = sample(messages, procs, client)
        time.sleep(args.window)
        after = sample(messages, procs, client)
        out, _ = loadgen.communicate(timeout=loadgen_duration + 60)
    finally:
        if loadgen.poll() is None:
            loadgen.kill()
            loadgen.wait()
        mongo.close()
        client.close()
        for node in nodes:
            stack.stop(node)
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    return Measure(
        setting,
        repeat,
        after.at - before.at,
        after.messages - before.messages,
        after.node_cpu_s - before.node_cpu_s,
        after.redis_calls - before.redis_calls,
        after.redis_evalsha - before.redis_evalsha,
        after.redis_cpu_s - before.redis_cpu_s,
        json.loads(lines[-1]) if lines else {},
        {name: calls - before.by_command.get(name, 0) for name, calls in after.by_command.items()},
    )


def fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def report(measures: list[Measure]) -> str:
    columns = list(measures[0].row())
    out = [
        "| budget | run | " + " | ".join(columns) + " | loadgen p50 / p99 |",
        "|---|---:|" + "---:|" * len(columns) + "---|",
    ]
    for m in measures:
        lat = f"{m.loadgen.get('p50_ms', '?')} / {m.loadgen.get('p99_ms', '?')} ms"
        out.append(f"| {m.setting} | {m.repeat} | " + " | ".join(fmt(v) for v in m.row().values()) + f" | {lat} |")
    out += ["", "Medians:", "", "| budget | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    medians: dict[str, list[float]] = {}
    for setting in SETTINGS:
        rows = [m.row() for m in measures if m.setting == setting]
        medians[setting] = [statistics.median(r[c] for r in rows) for c in columns]
        out.append(f"| {setting} | " + " | ".join(fmt(v) for v in medians[setting]) + " |")
    diff = [a - b for a, b in zip(medians["on"], medians["off"], strict=True)]
    out.append("| on - off | " + " | ".join(fmt(v) for v in diff) + " |")
    names = sorted({name for m in measures for name in m.by_command if m.by_command[name]})
    out += ["", "Redis commands per message, by command (median of the runs):", ""]
    out += ["| command | " + " | ".join(SETTINGS) + " |", "|---|" + "---:|" * len(SETTINGS)]
    for name in names:
        cells = [
            statistics.median(m.by_command.get(name, 0) / max(1, m.messages) for m in measures if m.setting == setting)
            for setting in SETTINGS
        ]
        if max(cells) >= 0.01:
            out.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=50, help="conversations playing ping-pong")
    parser.add_argument("--window", type=float, default=12.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the window")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting (the order alternates)")
    parser.add_argument("--workdir", help="where logs and data go (default: a temporary directory, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="budget-cost-") as tmp:
        workdir = Path(args.workdir or tmp)
        with Stack(workdir) as stack:
            store_url, _ = stack.start_store()
            doc, seconds = asyncio.run(seed(store_url, BENCH_DATABASE, BENCH_SECRET, args.pairs, 3600))
            fixtures = workdir / "fixtures.json"
            fixtures.write_text(json.dumps(doc))
            log(f"seeded {args.pairs} pairs in {seconds:.1f}s")
            redis_url = stack.start_redis("redis")
            measures = []
            for repeat in range(1, args.repeats + 1):
                order = ["off", "on"] if repeat % 2 else ["on", "off"]
                for setting in order:
                    measures.append(run_once(stack, setting, repeat, (store_url, redis_url), fixtures, args))
    print(report(measures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
