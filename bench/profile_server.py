"""Profile our server (and the embedded store it talks to) under load with py-spy, and say where the
time goes: the top frames by own time and by inclusive time, as shares of the samples.

It starts what bench/run_compare.py starts for "ours, 1 node" (the embedded store seeded with
bench/seed_chat.py, one server node), runs a bench/loadgen.py scenario, and while the load is on
records both processes with `py-spy record --format raw` (collapsed stacks, one line per stack).
py-spy samples only threads that are running, so the shares are of CPU time, not of wall time.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile_server.py --scenarios typing,messages --pairs 50 --duration 20 \\
        --out /tmp/profiles [--svg]
    .venv/bin/python bench/profile_server.py --scenarios connect-storm --loadgen-args "--sockets 6000"
    .venv/bin/python bench/profile_server.py --scenarios typing --nodes 2     # two nodes with Redis

`--svg` also records a flame graph of the server per scenario (a second run of the same load).
A collapsed file can be read again without a run: `profile_server.py --summarize FILE`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BENCH_DATABASE, BENCH_SECRET, ROOT, Child, Stack, log
from bench.loadgen import raise_fd_limit
from bench.seed_chat import seed

PY_SPY = Path(sys.executable).parent / "py-spy"
OUR_CODE = ("handlers/", "services/")
FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """`send_message (services/chat/service.py:170)` -> `services/chat/service.py send_message`: lines merged."""
    match = FRAME_RE.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "python3.11/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path} {match.group('func')}"


def summarize(collapsed: str, top: int = 15) -> dict[str, object]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
            if name.startswith(OUR_CODE):
                ours[name] += count
        # Which code the CPU was in: the innermost frame's package.
        packages[frames[-1].split("/", 1)[0].split(" ", 1)[0]] += count

    def shares(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "own": shares(own),
        "inclusive": shares(inclusive),
        "ours": shares(ours),
        "by_package": shares(packages),
    }


def markdown(title: str, summary: dict[str, object], seconds: float, rate: int) -> str:
    samples = int(summary["samples"])  # type: ignore[call-overload]
    busy = 100 * samples / max(1, seconds * rate)
    out = [f"#### {title}: {samples} samples, busy {busy:.0f}% of one core", ""]
    headings = (
        ("own", "own time"),
        ("inclusive", "inclusive"),
        ("ours", "inclusive, this project's code"),
        ("by_package", "innermost package"),
    )
    for key, heading in headings:
        out.append(f"| {heading} | % of samples |\n|---|---|")
        out += [f"| `{name}` | {share} |" for name, share in summary[key]]  # type: ignore[attr-defined]
        out.append("")
    return "\n".join(out)


def record(pid: int, seconds: float, rate: int, out: Path, fmt: str) -> subprocess.Popen[bytes]:
    argv = [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate)]
    argv += ["--format", fmt, "--output", str(out), "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def loadgen(fixtures: Path, nodes: list[Child], scenario: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--fixtures", str(fixtures)]
    for node in nodes:
        argv += ["--url", node.url, "--server-pid", str(node.pid)]
    argv += ["--scenarios", scenario, "--pairs", str(args.pairs)]
    argv += ["--duration", str(args.duration), "--warmup", str(args.warmup), *shlex.split(args.loadgen_args)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE)


def profile_once(
    stack: Stack, nodes: list[Child], fixtures: Path, scenario: str, args: argparse.Namespace, out: Path, svg: bool
) -> tuple[dict[str, object], list[tuple[str, Path]]]:
    """Run the load, record every node (and the store); (the load's figures, [(who, collapsed file)])."""
    store_pid = stack.store.process.pid if stack.store and stack.store.process else None
    load = loadgen(fixtures, nodes, scenario, args)
    # Record the measured part only: after connecting and the warm-up.
    time.sleep(args.warmup + 2.0)
    seconds = args.duration - 2
    spies = []
    files: list[tuple[str, Path]] = []
    for node in nodes:
        if svg:
            spies.append(record(node.pid, seconds, args.rate, out / f"{scenario}-{node.name}.svg", "flamegraph"))
        else:
            files.append((node.name, out / f"{scenario}-{node.name}.txt"))
            spies.append(record(node.pid, seconds, args.rate, files[-1][1], "raw"))
    if store_pid is not None and not svg:
        files.append(("store", out / f"{scenario}-store.txt"))
        spies.append(record(store_pid, seconds, args.rate, files[-1][1], "raw"))
    for spy in spies:
        spy.wait()
    stdout, _ = load.communicate()
    lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="typing,messages")
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=1, help="2: two nodes with Redis, A on one, B on the other")
    parser.add_argument("--users", type=int, default=10_000, help="seeded users (as the comparison's database)")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--out", default="", help="directory for the collapsed stacks (default: temporary)")
    parser.add_argument("--loadgen-args", default="", help='more load generator flags, e.g. "--sockets 4000"')
    parser.add_argument("--svg", action="store_true", help="also record a flame graph per scenario")
    parser.add_argument("--summarize", help="only summarize this collapsed-stack file")
    args = parser.parse_args()
    if args.summarize:
        print(markdown(args.summarize, summarize(Path(args.summarize).read_text()), args.duration, args.rate))
        return 0
    if not PY_SPY.exists():
        raise SystemExit(f"py-spy is not installed in this venv: {Path(sys.executable).parent}/pip install py-spy")
    raise_fd_limit(4 * args.pairs + 1000)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    # A store left by an earlier run would be seeded a second time, with ids the fixtures do not match.
    shutil.rmtree(out / "work", ignore_errors=True)
    with Stack(out / "work") as stack:
        store_url, _ = stack.start_store()
        doc, seconds = asyncio.run(seed(store_url, BENCH_DATABASE, BENCH_SECRET, args.users // 2, 24 * 3600))
        fixtures = out / "work" / "fixtures.json"
        fixtures.write_text(json.dumps(doc))
        log(f"seeded {args.users} users in {seconds:.1f}s")
        if args.nodes == 1:
            nodes = [stack.start_ours("ours", store_url)]
        else:
            redis_url = stack.start_redis("redis")
            nodes = [stack.start_ours(f"node{i}", store_url, redis_url) for i in range(1, args.nodes + 1)]
        for scenario in args.scenarios.split(","):
            figures, files = profile_once(stack, nodes, fixtures, scenario, args, out, svg=False)
            print(f"### {scenario}, {args.pairs} pairs, {args.nodes} node(s)\n")
            print(f"Load during the profile: `{json.dumps(figures)}`\n")
            for who, path in files:
                if path.exists():
                    print(markdown(f"{scenario}: {who}", summarize(path.read_text()), args.duration - 2, args.rate))
            if args.svg:
                profile_once(stack, nodes, fixtures, scenario, args, out, svg=True)
    log(f"collapsed stacks{' and flame graphs' if args.svg else ''} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
