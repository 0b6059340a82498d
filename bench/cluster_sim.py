"""What a Redis Cluster costs: N server nodes on a 3-master Redis Cluster against one node on one Redis.

Starts the embedded store, seeds `--pairs` conversations (bench/seed_chat.py), then for each setup

- `1 node, 1 Redis`: one `server.py` node whose REDIS_URL is a single redis-server,
- `N nodes, cluster`: `--nodes` server nodes whose REDIS_URL names the first node of a Redis Cluster of
  three masters (no replicas: the cost of the sharding, not of replication),

runs bench/loadgen.py's closed-loop scenarios (`typing`, `messages`; every pair's two participants on two
different nodes when there are several) and reports, per delivery:

- CPU summed over every server process, every redis-server process and the store (loadgen's CPU meter
  over the measured window, given all their pids),
- Redis commands and bytes in and out, summed over every Redis process, from `INFO stats` before and
  after the loadgen run. That window includes the loadgen's connecting, warm-up and closing, so the
  totals are divided by the deliveries of the whole run, estimated as the measured rate times (warm-up
  plus measured seconds): an estimate, a little high.

    .venv/bin/python bench/cluster_sim.py --pairs 100 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BENCH_DATABASE, BENCH_SECRET, ROOT, Child, Stack, log
from bench.seed_chat import seed

STATS = ("total_commands_processed", "total_net_input_bytes", "total_net_output_bytes")


def redis_stats(ports: list[int]) -> dict[str, int]:
    """`INFO stats` counters summed over the Redis processes on `ports`."""
    cli = shutil.which("redis-cli")
    assert cli is not None, "redis-cli is not installed"
    totals = dict.fromkeys(STATS, 0)
    for port in ports:
        done = subprocess.run([cli, "-p", str(port), "info", "stats"], capture_output=True, check=True)
        for line in done.stdout.decode().splitlines():
            name, _, value = line.strip().partition(":")
            if name in totals:
                totals[name] += int(value)
    return totals


def run_scenario(
    scenario: str, nodes: list[Child], redis: list[Child], store_pid: int, fixtures: Path, args: argparse.Namespace
) -> dict[str, Any]:
    argv = [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--fixtures", str(fixtures), "--kind", "ours"]
    for node in nodes:
        argv += ["--url", node.url]
    for pid in [*(child.pid for child in [*nodes, *redis]), store_pid]:
        argv += ["--server-pid", str(pid)]
    argv += ["--scenarios", scenario, "--pairs", str(args.pairs)]
    argv += ["--duration", str(args.duration), "--warmup", str(args.warmup)]
    ports = [child.port for child in redis]
    before = redis_stats(ports)
    done = subprocess.run(argv, stdout=subprocess.PIPE, check=True, timeout=args.duration * 10 + 120)
    after = redis_stats(ports)
    result: dict[str, Any] = json.loads([line for line in done.stdout.decode().splitlines() if line][-1])
    rate = result["deliveries_per_s"]
    deliveries = max(1.0, rate * (args.warmup + args.duration))
    cpu = result.get("server_cpu_pct") or 0.0
    return {
        "scenario": scenario,
        "deliveries_per_s": rate,
        "p50_ms": result.get("p50_ms"),
        "p99_ms": result.get("p99_ms"),
        "cpu_pct": cpu,
        "cpu_us_per_delivery": round(cpu / 100 / max(rate, 1e-9) * 1e6, 1),
        "redis_commands_per_delivery": round((after[STATS[0]] - before[STATS[0]]) / deliveries, 2),
        "redis_bytes_in_per_delivery": round((after[STATS[1]] - before[STATS[1]]) / deliveries),
        "redis_bytes_out_per_delivery": round((after[STATS[2]] - before[STATS[2]]) / deliveries),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=4, help="server nodes on the cluster (even)")
    parser.add_argument("--pairs", type=int, default=100, help="conversations in ping-pong")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--scenarios", default="typing,messages")
    parser.add_argument("--workdir", help="where logs and data go (default: a temporary directory)")
    args = parser.parse_args()
    with TemporaryDirectory(prefix="cluster-sim-") as tmp, Stack(Path(args.workdir or tmp)) as stack:
        store_url, store_pid = stack.start_store()
        doc, seconds = asyncio.run(seed(store_url, BENCH_DATABASE, BENCH_SECRET, args.pairs, 24 * 3600))
        fixtures = stack.workdir / "fixtures.json"
        fixtures.write_text(json.dumps(doc))
        log(f"seeded {args.pairs} conversations in {seconds:.1f}s")
        rows = []
        single_url = stack.start_redis("redis-single")
        single_redis = stack.children[-1]
        single = [stack.start_ours("single-node", store_url, single_url)]
        for scenario in args.scenarios.split(","):
            measured = run_scenario(scenario, single, [single_redis], store_pid, fixtures, args)
            rows.append({"setup": "1 node, 1 Redis", **measured})
            log(json.dumps(rows[-1]))
        for child in [*single, single_redis]:
            stack.stop(child)
        cluster_url, shards = stack.start_redis_cluster("redis-shard")
        nodes = [stack.start_ours(f"node{i}", store_url, cluster_url) for i in range(1, args.nodes + 1)]
        setup = f"{args.nodes} nodes, {len(shards)}-master cluster"
        for scenario in args.scenarios.split(","):
            rows.append({"setup": setup, **run_scenario(scenario, nodes, shards, store_pid, fixtures, args)})
            log(json.dumps(rows[-1]))
    print(
        "| setup | scenario | deliveries/s | p50 | p99 | CPU, all processes | CPU per delivery "
        "| Redis commands per delivery | Redis bytes in / out per delivery |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['setup']} | {row['scenario']} | {row['deliveries_per_s']:,.0f} | {row['p50_ms']} ms "
            f"| {row['p99_ms']} ms | {row['cpu_pct']:.0f}% | {row['cpu_us_per_delivery']:.0f} µs "
            f"| {row['redis_commands_per_delivery']} | {row['redis_bytes_in_per_delivery']} / "
            f"{row['redis_bytes_out_per_delivery']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
