"""Side by side: this server (one node; two nodes with Redis), the ceiling and the peer, the same
scenarios in the same run, repeated, with medians and ratios printed as a Markdown table.

The machine is shared and noisy, so only ratios measured in one run mean anything: every repetition
runs every scenario against every target back to back (rotating which target goes first), and the
table shows the median of the repetitions with the range beside it.

What it starts (all on 127.0.0.1, free ports, logs in the work directory, all stopped at the end):
the embedded store (SecantusDB, shared by our nodes), a redis-server for our two nodes and one for the
peer's channel layer, our server as one node and as two nodes, the ceiling, and the peer (daphne +
channels-redis, from a copy of ../shared/bench/peer_channels, with the venv given by --peer-python,
created outside the repository). Our fixtures come from bench/seed_chat.py, the peer's from its own
`manage.py fixtures`. Each scenario is one bench/loadgen.py process; `idle` gets a fresh server process
each time, so the RSS growth it measures is not hidden by memory an earlier scenario left behind.

    .venv/bin/python bench/run_compare.py                    # all scenarios, 3 repetitions (~25 min)
    .venv/bin/python bench/run_compare.py --scenarios typing-50,messages-50 --repeats 3
    .venv/bin/python bench/run_compare.py --quick            # 1 repetition, 5 s per scenario

Targets already running can be named instead of started: `--external peer=ws://127.0.0.1:8001`
with `--fixtures peer=peer_fixtures.json` (and `--pid peer=1234` for CPU and RSS figures).
`--raw FILE` keeps every JSON line; `--from-raw FILE` prints the tables of such a file again.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BENCH_DATABASE, BENCH_SECRET, ROOT, Child, Stack, log
from bench.loadgen import raise_fd_limit
from bench.seed_chat import seed

TARGETS = ("ours", "ours-2", "ceiling", "peer")
TARGET_TITLES = {"ours": "ours, 1 node", "ours-2": "ours, 2 nodes", "ceiling": "ceiling", "peer": "peer"}
KINDS = {"ours": "ours", "ours-2": "ours", "ceiling": "ceiling", "peer": "peer"}
DEFAULT_PEER_PYTHON = Path("/work/peer-venv/bin/python")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str


@dataclass(frozen=True)
class Plan:
    name: str
    scenario: str
    args: tuple[str, ...]
    targets: tuple[str, ...]
    metrics: tuple[Metric, ...]
    fresh: bool = False  # a new server process for every run
    sockets: int = 0  # users needed: our fixtures are seeded for the largest plan

    def users_needed(self) -> int:
        pairs = 0
        args = list(self.args)
        if "--pairs" in args:
            pairs = int(args[args.index("--pairs") + 1])
            if self.scenario == "slow-readers":
                pairs += max(1, round(pairs * float(args[args.index("--slow-fraction") + 1])))
        return max(2 * pairs, self.sockets)


DELIVERIES = Metric("deliveries_per_s", "deliveries/s")
P50 = Metric("p50_ms", "p50 ms")
P99 = Metric("p99_ms", "p99 ms")
MAX = Metric("max_ms", "max ms")
ALL = ("ours", "ours-2", "ceiling", "peer")
# Seconds a freshly started server is left alone before its scenario.
FRESH_SETTLE_S = 3.0

PLANS = [
    Plan("typing-50", "typing", ("--pairs", "50"), ALL, (DELIVERIES, P50, P99, MAX)),
    Plan("typing-250", "typing", ("--pairs", "250"), ALL, (DELIVERIES, P50, P99, MAX)),
    Plan(
        "messages-50",
        "messages",
        ("--pairs", "50"),
        ALL,
        (DELIVERIES, P50, P99, MAX, Metric("echo_p50_ms", "sender's echo p50 ms")),
    ),
    Plan(
        "connect-storm",
        "connect-storm",
        ("--sockets", "1000"),
        ("ours", "ceiling", "peer"),
        (
            Metric("connects_per_s", "connects/s"),
            P50,
            P99,
            Metric("server_cpu_ms_per_connect", "server CPU ms per connect"),
        ),
        sockets=1000,
    ),
    Plan(
        # The same storm into a node just started, ten times as large: what a connect costs with thousands
        # of sockets already held (a rolling restart's node taking its sockets back, a load test).
        "connect-storm-10k",
        "connect-storm",
        ("--sockets", "10000"),
        ("ours", "ceiling"),
        (
            Metric("connects_per_s", "connects/s"),
            P50,
            P99,
            Metric("server_cpu_ms_per_connect", "server CPU ms per connect"),
        ),
        fresh=True,
        sockets=10000,
    ),
    Plan(
        "reconnect-storm",
        "reconnect-storm",
        ("--pairs", "50"),
        ALL,
        (
            Metric("reconnects_per_s", "reconnects/s"),
            Metric("reconnect_p99_ms", "reconnect p99 ms"),
            Metric("messages_acked", "messages stored"),
            Metric("missing", "missing on a connected B"),
            Metric("duplicated", "duplicated"),
            Metric("undelivered_to_b_not_connected", "not yet delivered: B still reconnecting"),
        ),
    ),
    Plan(
        "slow-readers",
        "slow-readers",
        # One conversation whose B never reads, flooded with 4,000-character messages from ten of A's
        # sockets: the kernel's socket buffers (4 MB here) fill first, the server's bound after that.
        ("--pairs", "50", "--slow-fraction", "0.02", "--flood-sockets", "10", "--duration", "20"),
        ("ours", "ceiling", "peer"),
        (
            Metric("deliveries_per_s", "others' deliveries/s"),
            Metric("p99_ms", "others' p99 ms"),
            Metric("slow_close_codes", "slow sockets' close codes"),
        ),
    ),
    Plan(
        "soak",
        "soak",
        ("--pairs", "250", "--sample-every", "10"),
        ("ours",),
        (
            Metric("target_rate", "offered deliveries/s"),
            DELIVERIES,
            P99,
            Metric("rss_first_kb", "server RSS at the start, KB"),
            Metric("rss_last_kb", "server RSS at the end, KB"),
            Metric("rss_max_kb", "server RSS at most, KB"),
            Metric("rss_slope_second_half_kb_per_min", "RSS trend over the second half, KB/min"),
        ),
    ),
    Plan(
        "idle",
        "idle",
        ("--sockets", "10000", "--hold", "10"),
        ("ours", "ceiling"),
        (
            Metric("sockets", "sockets held"),
            Metric("rss_per_socket_kb", "server RSS per socket, KB"),
            Metric("idle_server_cpu_pct", "server CPU while idle, %"),
        ),
        fresh=True,
        sockets=10000,
    ),
]


@dataclass
class Setup:
    urls: list[str]
    fixtures: Path
    pids: list[int] = field(default_factory=list)
    start_fresh: Callable[[], Child] | None = None


def median_of(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if numbers:
        return statistics.median(numbers)
    return values[-1] if values else None


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in sorted(value.items())) or "none"
    if isinstance(value, float | int) and not isinstance(value, bool):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return a / b


class Results:
    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def add(self, plan: str, target: str, figures: dict[str, Any]) -> None:
        self.runs.setdefault((plan, target), []).append(figures)

    def values(self, plan: str, target: str, key: str) -> list[Any]:
        return [r.get(key) for r in self.runs.get((plan, target), []) if r.get(key) is not None]

    def median(self, plan: str, target: str, key: str) -> Any:
        return median_of(self.values(plan, target, key))

    def ratio(self, plan: str, a: str, b: str, key: str) -> float | None:
        """The median of the per-repetition ratios a/b: each repetition runs the targets back to back, so
        pairing them cancels the load other work put on the machine at that moment better than a ratio
        of medians taken minutes apart."""
        by_rep = {r.get("repetition"): r.get(key) for r in self.runs.get((plan, b), [])}
        ratios = [
            value
            for r in self.runs.get((plan, a), [])
            if (value := ratio(r.get(key), by_rep.get(r.get("repetition")))) is not None
        ]
        return statistics.median(ratios) if ratios else None

    def cell(self, plan: str, target: str, key: str) -> str:
        values = self.values(plan, target, key)
        if not values:
            return "-"
        mid = median_of(values)
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) > 1:
            return f"{fmt(mid)} <sub>({fmt(min(numbers))} to {fmt(max(numbers))})</sub>"
        return fmt(mid)


def table(results: Results, plans: list[Plan], targets: list[str]) -> str:
    shown = [t for t in TARGETS if t in targets]
    head = ["scenario", "metric", *(TARGET_TITLES[t] for t in shown)]
    pairs_of_ratios = [("ours", "ceiling"), ("ours", "peer"), ("ours-2", "ceiling")]
    ratios = [(a, b) for a, b in pairs_of_ratios if a in shown and b in shown]
    head += [f"{a}/{b}" for a, b in ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for plan in plans:
        for metric in plan.metrics:
            row = [plan.name, metric.label]
            row += [results.cell(plan.name, t, metric.key) if t in plan.targets else "" for t in shown]
            for a, b in ratios:
                r = None
                if a in plan.targets and b in plan.targets:
                    r = results.ratio(plan.name, a, b, metric.key)
                row.append(f"{r:.2f}x" if r is not None else "")
            if any(c not in ("", "-") for c in row[2:]):
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def target_checks(results: Results) -> list[tuple[str, str, bool | None]]:
    """The issue's targets, as (what, measured, met?) from the medians; None when not measured."""
    med = results.median
    out: list[tuple[str, str, bool | None]] = []

    def check(what: str, value: float | None, ok: Callable[[float], bool], shown: str) -> None:
        out.append((what, shown if value is not None else "not measured", None if value is None else ok(value)))

    for plan in ("typing-50", "typing-250"):
        c = results.ratio(plan, "ours", "ceiling", "deliveries_per_s")
        check(f"{plan}: deliveries/s ≥ 0.7x the ceiling", c, lambda v: v >= 0.7, f"{c or 0:.2f}x")
        p = results.ratio(plan, "ours", "peer", "deliveries_per_s")
        check(f"{plan}: deliveries/s ≥ 10x the peer", p, lambda v: v >= 10, f"{p or 0:.1f}x")
        q = results.ratio(plan, "ours", "ceiling", "p99_ms")
        check(f"{plan}: p99 ≤ 1.5x the ceiling's", q, lambda v: v <= 1.5, f"{q or 0:.2f}x")
    p = results.ratio("messages-50", "ours", "peer", "deliveries_per_s")
    check("messages-50: deliveries/s ≥ 10x the peer", p, lambda v: v >= 10, f"{p or 0:.1f}x")
    p99 = med("messages-50", "ours", "p99_ms")
    check("messages-50: p99 < 100 ms", p99, lambda v: v < 100, f"{fmt(p99)} ms")
    for plan in ("typing-50", "typing-250"):
        c = results.ratio(plan, "ours-2", "ceiling", "deliveries_per_s")
        check(f"{plan}, two nodes with Redis: ≥ 0.5x the ceiling", c, lambda v: v >= 0.5, f"{c or 0:.2f}x")
    held = med("idle", "ours", "sockets")
    check("idle: 10,000 sockets held on one node", held, lambda v: v >= 10_000, fmt(held))
    m = results.ratio("idle", "ours", "ceiling", "rss_per_socket_kb")
    shown = f"{m or 0:.2f}x ({fmt(med('idle', 'ours', 'rss_per_socket_kb'))} KB per socket)"
    check("idle: RSS growth per socket ≤ 2x the ceiling's", m, lambda v: v <= 2, shown)
    c = results.ratio("connect-storm", "ours", "ceiling", "connects_per_s")
    check("connect-storm: connects/s ≥ 0.5x the ceiling", c, lambda v: v >= 0.5, f"{c or 0:.2f}x")
    c = results.ratio("connect-storm", "ours", "ceiling", "server_cpu_ms_per_connect")
    check("connect-storm: server CPU per connect ≤ 2x the ceiling's", c, lambda v: v <= 2, f"{c or 0:.2f}x")
    c = results.ratio("reconnect-storm", "ours", "ceiling", "reconnects_per_s")
    check("reconnect-storm: reconnects/s ≥ 0.5x the ceiling", c, lambda v: v >= 0.5, f"{c or 0:.2f}x")
    for target in ("ours", "ours-2"):
        runs = results.runs.get(("reconnect-storm", target), [])
        if runs:
            lossless = sum(1 for r in runs if r.get("lossless"))
            out.append(
                (
                    f"reconnect-storm ({TARGET_TITLES[target]}): nothing missing or duplicated",
                    f"{lossless}/{len(runs)} runs lossless",
                    lossless == len(runs),
                )
            )
    return out


def loadgen_command(plan: Plan, target: str, setup: Setup, args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--fixtures", str(setup.fixtures)]
    for url in setup.urls:
        argv += ["--url", url]
    for pid in setup.pids:
        argv += ["--server-pid", str(pid)]
    argv += ["--kind", KINDS[target], "--label", target, "--scenarios", plan.scenario]
    argv += ["--duration", str(args.duration), "--warmup", str(args.warmup), "--concurrency", str(args.concurrency)]
    return argv + list(plan.args)


def run_loadgen(argv: list[str], timeout_s: float) -> dict[str, Any] | None:
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        log(f"load generator timed out after {timeout_s:.0f}s")
        return None
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        log(f"load generator failed (exit {done.returncode})")
        return None
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def soak_rate(results: Results) -> float | None:
    """Half the maximum measured in this run: the median typing-250 deliveries/s of one node."""
    measured = results.median("typing-250", "ours", "deliveries_per_s")
    return None if measured is None else round(measured / 2)


def parse_pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or name not in TARGETS:
            raise SystemExit(f"--{what} takes NAME=VALUE with NAME one of {', '.join(TARGETS)}")
        out[name] = value
    return out


def build_setups(stack: Stack, plans: list[Plan], args: argparse.Namespace) -> dict[str, Setup]:
    wanted = {t for p in plans for t in p.targets} - set(args.skip)
    external = parse_pairs(args.external, "external")
    fixtures = {k: Path(v) for k, v in parse_pairs(args.fixtures, "fixtures").items()}
    pids = {k: [int(p) for p in v.split(",")] for k, v in parse_pairs(args.pid, "pid").items()}
    setups: dict[str, Setup] = {}
    for name in sorted(wanted & set(external)):
        if name not in fixtures:
            raise SystemExit(f"--external {name} needs --fixtures {name}=FILE")
        setups[name] = Setup(external[name].split(","), fixtures[name], pids.get(name, []))
    local = wanted - set(external)
    ours_local = local & {"ours", "ours-2"}
    if ours_local or (local & {"ceiling"} and "ceiling" not in fixtures):
        store_url, _ = stack.start_store()
        users = max(p.users_needed() for p in plans)
        log(f"seeding {users} users into the embedded store")
        doc, seconds = asyncio.run(seed(store_url, BENCH_DATABASE, BENCH_SECRET, users // 2, 24 * 3600))
        ours_fixtures = stack.workdir / "ours_fixtures.json"
        ours_fixtures.write_text(json.dumps(doc))
        log(f"seeded {users} users and {users // 2} conversations in {seconds:.1f}s")
        if "ours" in local:
            node = stack.start_ours("ours", store_url)
            setups["ours"] = Setup([node.url], ours_fixtures, [node.pid])
            counter = iter(range(1, 1000))
            setups["ours"].start_fresh = lambda: stack.start_ours(f"ours-fresh{next(counter)}", store_url)
        if "ours-2" in local:
            redis_url = stack.start_redis("redis-ours")
            nodes = [stack.start_ours(f"ours-node{i}", store_url, redis_url) for i in (1, 2)]
            setups["ours-2"] = Setup([n.url for n in nodes], ours_fixtures, [n.pid for n in nodes])
        fixtures.setdefault("ceiling", ours_fixtures)  # the ceiling ignores tokens
    if "ceiling" in local:
        node = stack.start_ceiling()
        setups["ceiling"] = Setup([node.url], fixtures["ceiling"], [node.pid])
        counter_c = iter(range(1, 1000))
        setups["ceiling"].start_fresh = lambda: stack.start_ceiling(f"ceiling-fresh{next(counter_c)}")
    if "peer" in local:
        peer_python = Path(args.peer_python)
        if not peer_python.exists():
            log(f"no peer venv at {peer_python} (see BENCHMARKS.md); the peer is left out")
        else:
            redis_url = stack.start_redis("redis-peer")
            peer_users = max(p.users_needed() for p in plans if "peer" in p.targets and not p.fresh)
            log(f"preparing the peer with {peer_users // 2} conversations")
            peer_dir, env, peer_fixtures = stack.prepare_peer(peer_python, peer_users // 2, redis_url)
            node = stack.start_peer(peer_python, peer_dir, env)
            setups["peer"] = Setup([node.url], peer_fixtures, [node.pid])
    return setups


def environment_line() -> str:
    git = shutil.which("git")
    commit = "?"
    if git is not None:
        found = subprocess.run([git, "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=False)
        commit = found.stdout.decode().strip() or "?"
        # The servers run the working tree: say when it is not the commit.
        dirty = subprocess.run(
            [git, "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, check=False
        )
        if dirty.stdout.strip():
            commit += " plus uncommitted changes"
    load = os.getloadavg()
    return (
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}, commit {commit}, "
        f"{os.cpu_count()} cores, load average {load[0]:.1f} at the end, Python {sys.version.split()[0]}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scenarios", default=",".join(p.name for p in PLANS if p.name != "soak"), help="plans to run, in order"
    )
    parser.add_argument("--soak-rate", type=float, help="soak: deliveries/s (default: half of typing-250 measured)")
    parser.add_argument("--soak-kind", default="typing", choices=["typing", "messages", "mix"])
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=50, help="connects in flight at once")
    parser.add_argument("--quick", action="store_true", help="1 repetition of 5 s (a smoke run)")
    parser.add_argument("--skip", action="append", default=[], choices=TARGETS, help="leave a target out")
    parser.add_argument("--peer-python", default=str(DEFAULT_PEER_PYTHON), help="python of the peer's venv")
    parser.add_argument("--external", action="append", default=[], help="NAME=ws://host:port[,ws://...] already up")
    parser.add_argument("--fixtures", action="append", default=[], help="NAME=fixtures.json for an external target")
    parser.add_argument("--pid", action="append", default=[], help="NAME=pid[,pid] of an external target")
    parser.add_argument("--workdir", help="where logs and data go (default: a temporary directory, removed)")
    parser.add_argument("--raw", help="also write every JSON line here")
    parser.add_argument("--from-raw", help="print the tables of a saved --raw file and exit")
    args = parser.parse_args()
    if args.from_raw:
        return report_from_raw(args.from_raw)
    if args.quick:
        args.repeats, args.duration = 1, 5.0
    by_name = {p.name: p for p in PLANS}
    try:
        plans = [by_name[n.strip()] for n in args.scenarios.split(",") if n.strip()]
    except KeyError as exc:
        raise SystemExit(f"unknown scenario {exc}; choose from {', '.join(by_name)}") from None
    # Our servers and the references inherit this: they must hold the idle scenario's sockets too.
    raise_fd_limit(max(p.users_needed() for p in plans) + 1000)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-compare-"))
    results = Results()
    raw_lines: list[str] = []
    started = time.monotonic()
    with Stack(workdir) as stack:
        setups = build_setups(stack, plans, args)
        targets = [t for t in TARGETS if t in setups]
        log(f"targets: {', '.join(f'{t} {setups[t].urls}' for t in targets)}; logs in {workdir}")
        for rep in range(args.repeats):
            for plan in plans:
                order = [t for t in plan.targets if t in setups]
                order = order[rep % len(order) :] + order[: rep % len(order)] if order else order
                for target in order:
                    setup = setups[target]
                    log(f"== repetition {rep + 1}/{args.repeats}: {plan.name} on {target}")
                    fresh: Child | None = None
                    if plan.fresh and setup.start_fresh is not None:
                        fresh = setup.start_fresh()
                        setup = Setup([fresh.url], setup.fixtures, [fresh.pid])
                        # What a process does once at start (our node imports its push library on a
                        # thread) is not a connect's cost: the scenario starts once it is done.
                        time.sleep(FRESH_SETTLE_S)
                    try:
                        argv = loadgen_command(plan, target, setup, args)
                        limit = args.warmup + args.duration + 300
                        if plan.name == "soak":
                            rate = args.soak_rate or soak_rate(results)
                            if rate is None:
                                log("soak: no rate (give --soak-rate or run typing-250 first); skipped")
                                continue
                            seconds = args.soak_minutes * 60
                            argv += ["--soak-kind", args.soak_kind, "--rate", str(rate), "--duration", str(seconds)]
                            limit += seconds
                        figures = run_loadgen(argv, limit)
                    finally:
                        if fresh is not None:
                            stack.stop(fresh)
                    if figures is not None:
                        figures["repetition"] = rep + 1
                        results.add(plan.name, target, figures)
                        raw_lines.append(json.dumps({"plan": plan.name, **figures}))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    header = (
        f"Measured {environment_line()}; {args.repeats} repetition(s) of {args.duration:.0f} s "
        f"(after {args.warmup:.0f} s of warm-up), {minutes:.0f} min in all."
    )
    if args.raw:
        Path(args.raw).write_text("\n".join([json.dumps({"header": header}), *raw_lines]) + "\n")
    report(header, results, plans, targets)
    return 0


def report(header: str, results: Results, plans: list[Plan], targets: list[str]) -> None:
    print(f"{header} Median (min to max); ratios are medians of the per-repetition ratios.\n")
    print(table(results, plans, targets))
    print("\n| target | measured | met |\n|---|---|---|")
    for what, measured, ok in target_checks(results):
        if measured == "not measured":
            continue
        print(f"| {what} | {measured} | {'-' if ok is None else 'yes' if ok else '**no**'} |")


def report_from_raw(path: str) -> int:
    """The tables again, from the JSON lines a run saved with --raw."""
    results = Results()
    header = f"Rebuilt from {path}."
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)
        if "header" in doc:
            header = doc["header"]
        else:
            results.add(doc["plan"], doc["target"], doc)
    plans = [p for p in PLANS if any(plan == p.name for plan, _ in results.runs)]
    targets = [t for t in TARGETS if any(target == t for _, target in results.runs)]
    report(header, results, plans, targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
