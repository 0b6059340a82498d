"""Load generator for the conversation WebSockets: many sockets, closed-loop ping-pong, storms.

It speaks only the seed's conversation frames (`typing`, `message`), so the same run works against this
server, the bare Tornado relay (the ceiling) and the Django Channels peer; they ignore what they do not
know (`?after=`). It reads a fixtures file `{"conversations": [{"id": N, "tokens": [tokenA, tokenB]}]}`
(bench/seed_chat.py writes ours, the peer's `manage.py fixtures` writes its own; the ceiling ignores
tokens and takes either) and prints ONE JSON line per scenario on stdout; progress goes to stderr.

Scenarios (`--scenarios a,b,...`):

- `idle`: open `--sockets` authenticated sockets and hold them `--hold` s. With `--server-pid`, the
  server's RSS growth per socket (/proc/<pid>/status VmRSS before and after) and its CPU while idle.
- `typing`, `messages`: closed-loop ping-pong over `--pairs` conversations: A sends, B answers as soon
  as it receives, and so on: one frame in flight per conversation. Deliveries/s and p50/p99/max
  latency (send to receipt by the other participant) over `--duration` s after `--warmup` s.
  Messages are stored by this server and the peer; typing is relayed only.
- `connect-storm`: open `--sockets` sockets, `--concurrency` at a time; connects/s and connect latency.
- `reconnect-storm`: A sends messages in a closed loop on its own echo while every `--interval` s all
  B sockets drop and reconnect at once with `?after=<last id seen>` (and sockets the server closes come
  back too, retrying as long as the run lasts); then checks, from the message contents, that every B
  connected at the end saw every message A's echo confirmed, none twice (`missing`, `duplicated`), and
  counts apart what a B still reconnecting at the end lacks (`undelivered_to_b_not_connected`).
- `slow-readers`: `--pairs` conversations play typing ping-pong while `--slow-fraction` more
  conversations have a B that never reads and an A that sends 4,000-character messages in a closed
  loop on its own echo; reports the others' latency and the slow sockets' close codes.
- `soak`: paced ping-pong at `--rate` deliveries/s in all (typing and messages alternating, or one of
  them: `--soak-kind`) for `--duration` s, sampling the server's RSS every `--sample-every` s.

Two nodes: give `--url` twice; participant A of every pair connects to the first, B to the second. More
nodes (`--url` N times, N even): the pairs' A and B go to different nodes, spread over all of them.

Readiness (`--kind`): a socket of this server (`ours`) counts as connected when its first frame arrives
(the other participant's status, sent once the JWT and the membership were checked: Tornado completes
the handshake before `open()` runs); the peer checks both before it accepts the handshake, and the
ceiling checks nothing, so for them the completed handshake is the mark.

    .venv/bin/python bench/loadgen.py --fixtures fx.json --url ws://127.0.0.1:8888 --kind ours \\
        --server-pid 1234 --scenarios typing,messages --pairs 50 --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import functools
import json
import os
import random
import resource
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

TYPING_FRAME = '{"type":"typing","is_typing":true}'
OPEN_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 30.0
STALL_S = 5.0
FD_MARGIN = 64
SLOW_CONTENT_CHARS = 4000
SLOW_RCVBUF = 4096
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- small utilities ---------------------------------------------------------------------------------


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def latency_summary(samples_s: list[float], prefix: str = "") -> dict[str, float | None]:
    ordered = sorted(samples_s)

    def ms(value: float) -> float | None:
        return None if value != value else round(value * 1000, 2)  # NaN -> null in JSON

    return {
        f"{prefix}p50_ms": ms(percentile(ordered, 0.50)),
        f"{prefix}p99_ms": ms(percentile(ordered, 0.99)),
        f"{prefix}max_ms": ms(ordered[-1] if ordered else float("nan")),
    }


def raise_fd_limit(wanted_sockets: int) -> int:
    """Raise our soft RLIMIT_NOFILE to the hard limit; say so, and say when the system caps the run."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # An unlimited hard limit still stops at the kernel's per-process maximum.
        with open("/proc/sys/fs/nr_open") as f:
            target = int(f.read())
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log(f"open files: soft limit raised from {soft} to {target} (the hard limit)")
    usable = target - FD_MARGIN
    if wanted_sockets > usable:
        log(
            f"open files: the system caps this process at {target} descriptors, so at most {usable} sockets "
            f"of the {wanted_sockets} asked for; raise the hard limit (ulimit -Hn, LimitNOFILE=) for more"
        )
    return usable


class ProcStats:
    """RSS and CPU time of server processes, read from /proc (Linux)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    @staticmethod
    def rss_kb(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    @staticmethod
    def cpu_s(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/stat") as f:
                # The command name may contain spaces: fields are counted after its closing parenthesis.
                fields = f.read().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            return 0.0

    def rss_total_kb(self) -> int | None:
        values = [self.rss_kb(p) for p in self.pids]
        return None if not values or None in values else sum(v for v in values if v is not None)

    def cpu_total_s(self) -> float:
        return sum(self.cpu_s(p) for p in self.pids)

    async def wait_quiet(self, limit_s: float = 30.0, below: float = 0.15) -> None:
        """Wait until the servers are nearly idle, so one scenario's tail (disconnects, presence, last_seen
        writes) is not measured in the next one."""
        if not self.pids:
            return
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            before = self.cpu_total_s()
            await asyncio.sleep(0.5)
            if (self.cpu_total_s() - before) / 0.5 < below * len(self.pids):
                return
        log("servers still busy after waiting; measuring anyway")


class CpuMeter:
    """CPU use of the servers and of this process over a window, in % of one core."""

    def __init__(self, procs: ProcStats) -> None:
        self.procs = procs
        self.start()

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.server0 = self.procs.cpu_total_s()
        self.own0 = time.process_time()

    def result(self) -> dict[str, float | None]:
        elapsed = max(1e-9, time.monotonic() - self.t0)
        server = (self.procs.cpu_total_s() - self.server0) / elapsed * 100 if self.procs.pids else None
        return {
            "server_cpu_pct": None if server is None else round(server, 1),
            "loadgen_cpu_pct": round((time.process_time() - self.own0) / elapsed * 100, 1),
        }


class Progress:
    """One status line on stderr, refreshed in place on a terminal, every few seconds otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.status: Callable[[], str] = lambda: ""
        self.tty = sys.stderr.isatty()
        self._task: asyncio.Task[None] | None = None
        self.t0 = time.monotonic()

    def start(self, status: Callable[[], str]) -> None:
        self.status = status
        self.t0 = time.monotonic()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        every = 1.0 if self.tty else 5.0
        while True:
            await asyncio.sleep(every)
            self._show()

    def _show(self, end: str = "") -> None:
        line = f"[{self.label}] {time.monotonic() - self.t0:5.1f}s {self.status()}"
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line + end)
            sys.stderr.flush()
        else:
            log(line)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._show("\n")


# -- targets and sockets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    conversation_id: int
    tokens: tuple[str, str]


def load_fixtures(path: str) -> list[Pair]:
    with open(path, "rb") as f:
        doc = orjson.loads(f.read())
    return [Pair(int(c["id"]), (str(c["tokens"][0]), str(c["tokens"][1]))) for c in doc["conversations"]]


class Refused(Exception):
    """The server closed the socket instead of letting it join (close code in `code`)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed {code} {reason}".strip())
        self.code = code


@dataclass
class Target:
    urls: list[str]
    kind: str  # "ours" | "ceiling" | "peer"
    procs: ProcStats
    label: str

    def url(self, side: int, pair: Pair, after: int | None = None) -> str:
        """Participant `side` (0 = A, 1 = B) of `pair`; with two nodes, A goes to the first, B to the second;
        with more, the pairs' A and B are spread over them, never on the same node."""
        base = self.urls[(2 * pair.conversation_id + side) % len(self.urls)].rstrip("/")
        query = f"?token={pair.tokens[side]}"
        if after is not None:
            query += f"&after={after}"
        return f"{base}/ws/conversations/{pair.conversation_id}/{query}"

    async def open(
        self, side: int, pair: Pair, *, after: int | None = None, max_queue: int = 256, rcvbuf: int | None = None
    ) -> tuple[ClientConnection, list[str]]:
        """A joined socket and the frames that proved it joined (see `--kind`).

        `rcvbuf` shrinks the socket's receive buffer before it connects, so that the TCP window offered
        to the server is small from the start (set later, the window already negotiated stays large)."""
        url = self.url(side, pair, after)
        sock = None
        if rcvbuf is not None:
            host, _, port = url.split("/")[2].partition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port or 80)))
        ws = await connect(
            url,
            sock=sock,
            compression=None,
            proxy=None,
            open_timeout=OPEN_TIMEOUT_S,
            ping_interval=None,  # the server pings; answering is automatic
            close_timeout=2,
            max_size=1 << 22,
            max_queue=max_queue,
            user_agent_header=None,
        )
        if self.kind != "ours":
            return ws, []
        try:
            first = await asyncio.wait_for(ws.recv(), READY_TIMEOUT_S)
        except ConnectionClosed:
            raise Refused(ws.close_code, ws.close_reason or "") from None
        except TimeoutError:
            await ws.close()
            raise
        return ws, [first]  # type: ignore[list-item]


async def bounded(concurrency: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run jobs at most `concurrency` at a time; results (or exceptions) in order."""
    gate = asyncio.Semaphore(concurrency)

    async def run(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            try:
                return await job()
            except Exception as exc:
                return exc

    return await asyncio.gather(*(run(j) for j in jobs))


async def close_all(sockets: list[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


def failure_name(exc: BaseException) -> str:
    if isinstance(exc, Refused):
        return f"closed {exc.code}"
    if isinstance(exc, InvalidHandshake):
        return f"handshake: {exc}"[:60]
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


async def open_pairs(
    target: Target, pairs: list[Pair], concurrency: int, progress: Progress, b_options: dict[str, Any] | None = None
) -> tuple[list[tuple[Pair, ClientConnection, ClientConnection]], collections.Counter[str]]:
    """Both participants of every pair, joined; pairs where either side failed are dropped (and counted).
    `b_options` go to `Target.open` for participant B only."""
    failures: collections.Counter[str] = collections.Counter()
    opened = 0

    def status() -> str:
        return f"opening sockets {opened}/{2 * len(pairs)}"

    progress.start(status)

    def job(side: int, pair: Pair) -> Callable[[], Awaitable[ClientConnection]]:
        async def go() -> ClientConnection:
            nonlocal opened
            ws, _ = await target.open(side, pair, **(b_options or {} if side else {}))
            opened += 1
            return ws

        return go

    results = await bounded(concurrency, [job(s, p) for p in pairs for s in (0, 1)])
    out = []
    strays = []
    for i, pair in enumerate(pairs):
        a, b = results[2 * i], results[2 * i + 1]
        for r in (a, b):
            if isinstance(r, BaseException):
                failures[failure_name(r)] += 1
        if isinstance(a, ClientConnection) and isinstance(b, ClientConnection):
            out.append((pair, a, b))
        else:
            strays += [r for r in (a, b) if isinstance(r, ClientConnection)]
    await close_all(strays)
    return out, failures


# -- ping-pong ---------------------------------------------------------------------------------------


@dataclass
class Rally:
    """One conversation's closed loop: exactly one frame in flight, awaited by side `waiting_for`."""

    pair: Pair
    sockets: tuple[ClientConnection, ClientConnection]
    waiting_for: int | None = None  # None: the ball is with a side that is about to send
    seq: int = 0
    sent_at: float = 0.0
    next_kind: str = "typing"
    # Per side: the sequence number and time of its last message, to time its echo.
    own: list[tuple[int, float]] = field(default_factory=lambda: [(0, 0.0), (0, 0.0)])


@dataclass
class PingPongStats:
    deliveries: int = 0
    latencies: list[float] = field(default_factory=list)
    echoes: list[float] = field(default_factory=list)
    stalls: int = 0
    unexpected: int = 0
    error_frames: collections.Counter[str] = field(default_factory=collections.Counter)
    closes: collections.Counter[str] = field(default_factory=collections.Counter)


class PingPong:
    """Closed-loop ping-pong over a set of rallies.

    `kind` is "typing", "messages" or "mix" (alternating; the soak). A message's content names its
    sender and sequence number ("a:17"), so a receiver tells a delivery from its own echo and a late
    duplicate from the frame it waits for. Typing frames carry nothing of ours: a typing frame counts
    when it is `is_typing: true` and the receiver is the side awaited (the server's own `false` after a
    message or a silence is not an answer). `interval_s` paces each rally (soak); 0 is as fast as it goes.
    """

    def __init__(self, rallies: list[Rally], kind: str, interval_s: float = 0.0) -> None:
        self.rallies = rallies
        self.kind = kind
        self.interval_s = interval_s
        self.stats = PingPongStats()
        self.measuring = False
        self.running = True
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for rally in self.rallies:
            for side in (0, 1):
                self.tasks.append(loop.create_task(self._reader(rally, side)))
            self.tasks.append(loop.create_task(self._send(rally, 0)))
        self.tasks.append(loop.create_task(self._watchdog()))

    async def stop(self) -> None:
        self.running = False
        self.measuring = False
        await close_all([ws for r in self.rallies for ws in r.sockets])
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _send(self, rally: Rally, side: int) -> None:
        rally.waiting_for = None
        if self.interval_s:
            wait = rally.sent_at + self.interval_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        if not self.running:
            return
        rally.seq += 1
        kind = self.kind if self.kind != "mix" else rally.next_kind
        if self.kind == "mix":
            rally.next_kind = "messages" if kind == "typing" else "typing"
        if kind == "typing":
            text = TYPING_FRAME
        else:
            text = orjson.dumps({"type": "message", "content": f"{'ab'[side]}:{rally.seq}"}).decode()
        rally.sent_at = time.monotonic()
        rally.own[side] = (rally.seq, rally.sent_at)
        rally.waiting_for = 1 - side
        with contextlib.suppress(ConnectionClosed):
            await rally.sockets[side].send(text)

    async def _reader(self, rally: Rally, side: int) -> None:
        ws = rally.sockets[side]
        me = "ab"[side]
        try:
            async for raw in ws:
                now = time.monotonic()
                frame = orjson.loads(raw)
                kind = frame.get("type")
                if kind == "typing":
                    if not frame.get("is_typing"):
                        continue
                    if rally.waiting_for != side:
                        self.stats.unexpected += 1
                        continue
                elif kind == "message":
                    content = str((frame.get("message") or {}).get("content", ""))
                    author, _, number = content.partition(":")
                    if author == me:
                        seq, sent_at = rally.own[side]
                        if self.measuring and number == str(seq):
                            self.stats.echoes.append(now - sent_at)
                        continue
                    if rally.waiting_for != side or number != str(rally.seq):
                        self.stats.unexpected += 1
                        continue
                elif kind == "error":
                    self.stats.error_frames[str(frame.get("code"))] += 1
                    continue
                else:
                    continue  # status frames, read receipts
                if self.measuring:
                    self.stats.deliveries += 1
                    self.stats.latencies.append(now - rally.sent_at)
                await self._send(rally, side)
        except ConnectionClosed:
            pass
        if self.running:
            self.stats.closes[str(ws.close_code)] += 1

    async def _watchdog(self) -> None:
        """A frame that never arrives (dropped, refused) would stop its rally for good: count it, serve again."""
        while self.running:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for rally in self.rallies:
                awaited = rally.waiting_for
                if self.running and awaited is not None and now - rally.sent_at > STALL_S:
                    self.stats.stalls += 1
                    asyncio.get_running_loop().create_task(self._send(rally, 1 - awaited))


async def measure_pingpong(
    target: Target,
    pairs: list[Pair],
    kind: str,
    args: argparse.Namespace,
    progress: Progress,
    *,
    interval_s: float = 0.0,
    sampler: Callable[[], None] | None = None,
) -> dict[str, Any]:
    opened, failures = await open_pairs(target, pairs, args.concurrency, progress)
    rallies = [Rally(p, (a, b)) for p, a, b in opened]
    game = PingPong(rallies, kind, interval_s)
    stats = game.stats
    game.start()
    warm_until = time.monotonic() + args.warmup
    progress.start(lambda: measuring_status() if game.measuring else f"warming up, {len(rallies)} pairs")
    t_measure = 0.0

    def measuring_status() -> str:
        rate = stats.deliveries / max(1e-9, time.monotonic() - t_measure)
        return f"{len(rallies)} pairs  deliveries {stats.deliveries}  {rate:,.0f}/s  stalls {stats.stalls}"

    await asyncio.sleep(max(0.0, warm_until - time.monotonic()))
    meter = CpuMeter(target.procs)
    game.measuring = True
    t_measure = time.monotonic()
    end = t_measure + args.duration
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(left, args.sample_every if sampler else left))
        if sampler is not None:
            sampler()
    elapsed = time.monotonic() - t_measure
    game.measuring = False
    cpu = meter.result()
    progress.start(lambda: "closing")
    await game.stop()
    result: dict[str, Any] = {
        "pairs": len(rallies),
        "duration_s": round(elapsed, 2),
        "deliveries": stats.deliveries,
        "deliveries_per_s": round(stats.deliveries / elapsed, 1),
        **latency_summary(stats.latencies),
    }
    if stats.echoes:
        result.update(latency_summary(stats.echoes, "echo_"))
    result.update(
        stalls=stats.stalls,
        unexpected_frames=stats.unexpected,
        error_frames=dict(stats.error_frames),
        server_closed=dict(stats.closes),
        failed_to_open=dict(failures),
        **cpu,
    )
    return result


# -- scenarios ---------------------------------------------------------------------------------------


async def scenario_pingpong(target: Target, pairs: list[Pair], args: argparse.Namespace, kind: str) -> dict[str, Any]:
    progress = Progress(f"{target.label} {kind}")
    try:
        return await measure_pingpong(target, pairs[: args.pairs], kind, args, progress)
    finally:
        await progress.stop()


async def scenario_soak(target: Target, pairs: list[Pair], args: argparse.Namespace) -> dict[str, Any]:
    """Paced traffic (`--soak-kind`) for a long time, watching the server's memory."""
    chosen = pairs[: args.pairs]
    if args.rate <= 0:
        raise SystemExit("soak needs --rate (deliveries/s in all)")
    # Each rally delivers one frame per interval.
    interval = len(chosen) / args.rate
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()

    def sample() -> None:
        rss = target.procs.rss_total_kb()
        if rss is not None:
            samples.append((time.monotonic() - t0, rss))

    progress = Progress(f"{target.label} soak")
    try:
        result = await measure_pingpong(
            target, chosen, args.soak_kind, args, progress, interval_s=interval, sampler=sample
        )
    finally:
        await progress.stop()
    result["target_rate"] = args.rate
    result["soak_kind"] = args.soak_kind
    if samples:
        rss = [kb for _, kb in samples]
        half = samples[len(samples) // 2 :]
        slope = 0.0
        if len(half) >= 2:
            # Least squares over the second half: the first half includes warm-up growth (caches, arenas).
            n = len(half)
            mean_t = sum(t for t, _ in half) / n
            mean_r = sum(r for _, r in half) / n
            var = sum((t - mean_t) ** 2 for t, _ in half)
            slope = sum((t - mean_t) * (r - mean_r) for t, r in half) / var if var else 0.0
        result.update(
            rss_first_kb=rss[0],
            rss_last_kb=rss[-1],
            rss_max_kb=max(rss),
            rss_slope_second_half_kb_per_min=round(slope * 60, 1),
            rss_samples=[[round(t, 1), kb] for t, kb in samples],
        )
    return result


def socket_specs(pairs: list[Pair], count: int) -> list[tuple[int, Pair]]:
    """`count` (side, pair) specs: both participants of as many pairs as needed (one socket per user)."""
    specs = [(side, p) for p in pairs for side in (0, 1)]
    if count > len(specs):
        log(f"fixtures hold {len(specs)} users: using {len(specs)} sockets, not {count}")
    return specs[:count]


async def scenario_idle(target: Target, pairs: list[Pair], args: argparse.Namespace) -> dict[str, Any]:
    specs = socket_specs(pairs, min(args.sockets, args.fd_budget))
    progress = Progress(f"{target.label} idle")
    rss_before = target.procs.rss_total_kb()
    opened: list[ClientConnection] = []
    failures: collections.Counter[str] = collections.Counter()
    progress.start(lambda: f"opening {len(opened)}/{len(specs)}  failed {sum(failures.values())}")

    def job(side: int, pair: Pair) -> Callable[[], Awaitable[None]]:
        async def go() -> None:
            try:
                ws, _ = await target.open(side, pair, max_queue=4)
                opened.append(ws)
            except Exception as exc:
                failures[failure_name(exc)] += 1

        return go

    t0 = time.monotonic()
    await bounded(args.concurrency, [job(s, p) for s, p in specs])
    open_s = time.monotonic() - t0
    await asyncio.sleep(2.0)  # let the joins' side effects (presence, status frames) settle
    rss_after = target.procs.rss_total_kb()
    meter = CpuMeter(target.procs)
    progress.start(lambda: f"holding {len(opened)} sockets")
    await asyncio.sleep(args.hold)
    cpu = meter.result()
    rss_end = target.procs.rss_total_kb()
    still_open = sum(1 for ws in opened if ws.close_code is None)
    await progress.stop()
    await close_all(opened)
    result: dict[str, Any] = {
        "sockets": len(opened),
        "still_open_after_hold": still_open,
        "failed_to_open": dict(failures),
        "open_s": round(open_s, 2),
        "hold_s": args.hold,
        "server_rss_before_kb": rss_before,
        "server_rss_after_kb": rss_after,
        "server_rss_end_kb": rss_end,
        "idle_server_cpu_pct": cpu["server_cpu_pct"],
    }
    if rss_before is not None and rss_after is not None and opened:
        result["rss_per_socket_kb"] = round((rss_after - rss_before) / len(opened), 2)
    return result


async def scenario_connect_storm(target: Target, pairs: list[Pair], args: argparse.Namespace) -> dict[str, Any]:
    specs = socket_specs(pairs, min(args.sockets, args.fd_budget))
    progress = Progress(f"{target.label} connect-storm")
    opened: list[ClientConnection] = []
    latencies: list[float] = []
    failures: collections.Counter[str] = collections.Counter()
    progress.start(lambda: f"connected {len(opened)}/{len(specs)}  failed {sum(failures.values())}")

    def job(side: int, pair: Pair) -> Callable[[], Awaitable[None]]:
        async def go() -> None:
            started = time.monotonic()
            try:
                ws, _ = await target.open(side, pair, max_queue=4)
            except Exception as exc:
                failures[failure_name(exc)] += 1
                return
            latencies.append(time.monotonic() - started)
            opened.append(ws)

        return go

    meter = CpuMeter(target.procs)
    t0 = time.monotonic()
    await bounded(args.concurrency, [job(s, p) for s, p in specs])
    elapsed = time.monotonic() - t0
    cpu = meter.result()
    await progress.stop()
    await close_all(opened)
    return {
        "sockets": len(specs),
        "connected": len(opened),
        "failed": dict(failures),
        "concurrency": args.concurrency,
        "duration_s": round(elapsed, 2),
        "connects_per_s": round(len(opened) / elapsed, 1),
        **latency_summary(latencies),
        **cpu,
        # What one connect costs the server, whatever the load generator's own pace.
        "server_cpu_ms_per_connect": None
        if cpu["server_cpu_pct"] is None or not opened
        else round(cpu["server_cpu_pct"] * 10 * elapsed / len(opened), 3),
    }


@dataclass
class Resumer:
    """One pair of the reconnect storm: A writes, B drops and comes back with `?after=`."""

    pair: Pair
    a: ClientConnection
    b: ClientConnection
    sent: int = 0
    sent_at: float = 0.0
    acked: dict[int, int] = field(default_factory=dict)  # content number -> message id, from A's echo
    received: collections.Counter[int] = field(default_factory=collections.Counter)
    last_id: int | None = None
    disorder: int = 0
    reconnecting: bool = False


async def scenario_reconnect_storm(target: Target, pairs: list[Pair], args: argparse.Namespace) -> dict[str, Any]:
    progress = Progress(f"{target.label} reconnect-storm")
    opened, failures = await open_pairs(target, pairs[: args.pairs], args.concurrency, progress)
    resumers = [Resumer(p, a, b) for p, a, b in opened]
    running = True  # A keeps writing
    finished = False  # nobody reconnects any more
    unanchored = 0  # reconnects of a B that had no id to resume from
    reconnect_latencies: list[float] = []
    storm_rates: list[float] = []
    reconnect_failures: collections.Counter[str] = collections.Counter()
    closes: collections.Counter[str] = collections.Counter()
    error_frames: collections.Counter[str] = collections.Counter()

    async def send_next(r: Resumer) -> None:
        r.sent += 1
        r.sent_at = time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            await r.a.send(orjson.dumps({"type": "message", "content": f"r:{r.sent}"}).decode())

    async def writer(r: Resumer) -> None:
        """A: the next message as soon as the echo says the last one is stored. A socket the server
        closes is reopened, as the seed's client does for the codes it retries."""
        while not finished:
            await send_next(r)
            with contextlib.suppress(ConnectionClosed):
                async for raw in r.a:
                    frame = orjson.loads(raw)
                    if frame.get("type") == "error":
                        error_frames[str(frame.get("code"))] += 1
                        if running:
                            await send_next(r)
                        continue
                    if frame.get("type") != "message":
                        continue
                    number = str(frame["message"].get("content", "")).partition(":")[2]
                    if number == str(r.sent):
                        r.acked[r.sent] = int(frame["message"].get("id", 0))
                        if running:
                            await send_next(r)
            if finished:
                return
            closes[f"A {r.a.close_code}"] += 1
            while not finished:
                try:
                    r.a, _ = await target.open(0, r.pair)
                    break
                except Exception as exc:
                    reconnect_failures[f"A {failure_name(exc)}"] += 1
                    await asyncio.sleep(0.2)

    def take(r: Resumer, raw: str | bytes) -> None:
        frame = orjson.loads(raw)
        if frame.get("type") != "message":
            return
        message = frame["message"]
        number = str(message.get("content", "")).partition(":")[2]
        if number.isdigit():
            r.received[int(number)] += 1
        mid = int(message.get("id", 0))
        if r.last_id is not None and mid <= r.last_id:
            r.disorder += 1
        r.last_id = max(mid, r.last_id or 0)

    async def reader(r: Resumer, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                # Once a reconnect has asked for `?after=<last id>`, frames still queued on the old socket
                # are the new socket's to deliver: taking them too would count them twice.
                if r.b is not ws or r.reconnecting:
                    break
                take(r, raw)
        if r.b is ws and not r.reconnecting and not finished:
            # Closed by the server, not by a storm: come back like a client would.
            closes[f"B {ws.close_code}"] += 1
            await asyncio.sleep(0.1)
            await reconnect(r, drop=False)

    async def reconnect(r: Resumer, *, drop: bool = True) -> None:
        nonlocal unanchored
        if r.reconnecting:
            return  # one reconnect at a time: two sockets resuming from one id would deliver twice
        r.reconnecting = True
        started = time.monotonic()
        if drop:
            await r.b.close()
        if r.last_id is None:
            # Nothing seen yet, so no id to resume from: this socket starts "from now", and what is stored
            # meanwhile is not asked for. Counted, so that a `missing` it causes can be told apart.
            unanchored += 1
        try:
            # Like a client: retry with a capped backoff for as long as the run lasts.
            attempt = 0
            while True:
                attempt += 1
                try:
                    ws, first = await target.open(1, r.pair, after=r.last_id)
                    break
                except Exception as exc:
                    reconnect_failures[f"B {failure_name(exc)}"] += 1
                    if finished:
                        return
                    await asyncio.sleep(min(2.0, 0.2 * attempt))
            reconnect_latencies.append(time.monotonic() - started)
            for raw in first:
                take(r, raw)
            r.b = ws
        finally:
            r.reconnecting = False
        readers.append(asyncio.get_running_loop().create_task(reader(r, ws)))

    loop = asyncio.get_running_loop()
    readers = [loop.create_task(reader(r, r.b)) for r in resumers]
    writers = [loop.create_task(writer(r)) for r in resumers]
    storms = 0
    # Every B should have an id to resume from before the first storm: wait for A's first message.
    for _ in range(100):
        if all(r.last_id is not None for r in resumers):
            break
        await asyncio.sleep(0.1)
    progress.start(
        lambda: (
            f"{len(resumers)} pairs  storms {storms}  reconnects {len(reconnect_latencies)}  "
            f"acked {sum(len(r.acked) for r in resumers)}"
        )
    )
    meter = CpuMeter(target.procs)
    end = time.monotonic() + args.duration
    while time.monotonic() + args.interval < end:
        await asyncio.sleep(args.interval)
        t0 = time.monotonic()
        await bounded(args.concurrency, [functools.partial(reconnect, r) for r in resumers if not r.reconnecting])
        storm_rates.append(len(resumers) / max(1e-9, time.monotonic() - t0))
        storms += 1
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    running = False
    cpu = meter.result()
    # Let the last messages reach B before counting what is missing.
    for _ in range(150):
        if all(r.acked.keys() <= r.received.keys() for r in resumers):
            break
        await asyncio.sleep(0.1)
    acked = sum(len(r.acked) for r in resumers)
    # A B still reconnecting when the run ends (the server refusing or slow to take it back) has not had
    # its chance yet: what it lacks is counted apart from what a connected B never got.
    connected = [r for r in resumers if not r.reconnecting and r.b.close_code is None]
    missing = sum(len(r.acked.keys() - r.received.keys()) for r in connected)
    undelivered = sum(len(r.acked.keys() - r.received.keys()) for r in resumers) - missing
    # Which ids went missing where, to tell a lost message from a slow one when it happens.
    examples = [
        {
            "conversation": r.pair.conversation_id,
            "missing_ids": sorted(r.acked[n] for n in r.acked.keys() - r.received.keys())[:10],
            "last_id_seen_by_b": r.last_id,
            "b_state": "reconnecting"
            if r.reconnecting
            else ("open" if r.b.close_code is None else f"closed {r.b.close_code} {r.b.close_reason}".strip()),
        }
        for r in sorted(resumers, key=lambda r: r not in connected)
        if r.acked.keys() - r.received.keys()
    ][:5]
    duplicated = sum(sum(c - 1 for c in r.received.values() if c > 1) for r in resumers)
    finished = True
    await progress.stop()
    await close_all([ws for r in resumers for ws in (r.a, r.b)])
    for task in readers + writers:
        task.cancel()
    await asyncio.gather(*readers, *writers, return_exceptions=True)
    return {
        "pairs": len(resumers),
        "duration_s": args.duration,
        "storms": storms,
        "reconnects": len(reconnect_latencies),
        "reconnects_per_s": round(sorted(storm_rates)[len(storm_rates) // 2], 1) if storm_rates else None,
        **latency_summary(reconnect_latencies, "reconnect_"),
        "messages_acked": acked,
        "missing": missing,
        "duplicated": duplicated,
        "out_of_order": sum(r.disorder for r in resumers),
        "lossless": missing == 0 and duplicated == 0,
        "b_not_connected_at_end": len(resumers) - len(connected),
        "undelivered_to_b_not_connected": undelivered,
        "unanchored_reconnects": unanchored,
        "missing_examples": examples,
        "failed_to_open": dict(failures),
        "failed_to_reconnect": dict(reconnect_failures),
        "error_frames": dict(error_frames),
        "server_closed": dict(closes),
        **cpu,
    }


async def scenario_slow_readers(target: Target, pairs: list[Pair], args: argparse.Namespace) -> dict[str, Any]:
    normal = pairs[: args.pairs]
    slow_count = max(1, round(args.pairs * args.slow_fraction))
    slow = pairs[args.pairs : args.pairs + slow_count]
    if len(slow) < slow_count:
        raise SystemExit(f"slow-readers needs {args.pairs + slow_count} pairs in the fixtures")
    progress = Progress(f"{target.label} slow-readers")
    rss_before = target.procs.rss_total_kb()
    # The slow B sockets: a tiny receive window and a one-frame queue, so the client stops reading almost
    # at once and the backlog piles up on the server, as with a phone on a bad network.
    slow_pairs, slow_failures = await open_pairs(
        target, slow, args.concurrency, progress, {"max_queue": 1, "rcvbuf": SLOW_RCVBUF}
    )
    # More than one socket floods each slow conversation (a user may hold several): a store that
    # batches writes then stores enough per second to fill a slow reader's bound within the run.
    extra = await bounded(
        args.concurrency,
        [functools.partial(target.open, 0, p) for p, _, _ in slow_pairs for _ in range(args.flood_sockets - 1)],
    )
    flooders = [a for _, a, _ in slow_pairs] + [r[0] for r in extra if isinstance(r, tuple)]
    flooding = True
    flood_acked = 0

    async def flood(a: ClientConnection, tag: int) -> None:
        nonlocal flood_acked
        sent = 0
        next_at = time.monotonic()

        async def send() -> None:
            # Paced, so that a server that buffers without bound (the ceiling) grows by a known amount.
            nonlocal sent, next_at
            next_at = max(next_at + 1 / args.flood_rate, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())
            sent += 1
            head = f"f{tag}:{sent}:"
            content = head + "x" * (SLOW_CONTENT_CHARS - len(head))  # the server's longest message
            await a.send(orjson.dumps({"type": "message", "content": content}).decode())

        with contextlib.suppress(ConnectionClosed):
            await send()
            async for raw in a:
                # Every flood socket receives every message of its conversation: find its own echo by a
                # substring rather than parsing 4 KB of JSON per frame, so the load generator keeps up.
                text = raw if isinstance(raw, str) else raw.decode()
                if f'"f{tag}:{sent}:' in text:
                    flood_acked += 1
                elif not text.startswith('{"type":"error"'):
                    continue
                if flooding:
                    await send()

    floods = [asyncio.get_running_loop().create_task(flood(a, i)) for i, a in enumerate(flooders)]
    try:
        result = await measure_pingpong(target, normal, "typing", args, progress)
    finally:
        flooding = False
    rss_after = target.procs.rss_total_kb()
    # What became of the slow sockets: read what they were sent until the close (or the lack of one).
    codes: collections.Counter[str] = collections.Counter()

    async def drain(b: ClientConnection) -> None:
        try:
            async with asyncio.timeout(10):
                async for _ in b:
                    pass
            codes[str(b.close_code)] += 1
        except ConnectionClosed:
            codes[str(b.close_code)] += 1
        except TimeoutError:
            codes["open"] += 1

    progress.start(lambda: f"draining {len(slow_pairs)} slow sockets")
    await asyncio.gather(*(drain(b) for _, _, b in slow_pairs))
    await progress.stop()
    await close_all([b for _, _, b in slow_pairs] + flooders)
    for task in floods:
        task.cancel()
    await asyncio.gather(*floods, return_exceptions=True)
    result.update(
        slow_sockets=len(slow_pairs),
        flood_sockets=len(flooders),
        slow_close_codes=dict(codes),
        slow_failed_to_open=dict(slow_failures),
        flood_messages_acked=flood_acked,
        server_rss_before_kb=rss_before,
        server_rss_after_kb=rss_after,
    )
    return result


SCENARIOS: dict[str, Callable[[Target, list[Pair], argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "idle": scenario_idle,
    "typing": lambda t, p, a: scenario_pingpong(t, p, a, "typing"),
    "messages": lambda t, p, a: scenario_pingpong(t, p, a, "messages"),
    "connect-storm": scenario_connect_storm,
    "reconnect-storm": scenario_reconnect_storm,
    "slow-readers": scenario_slow_readers,
    "soak": scenario_soak,
}


async def run(args: argparse.Namespace) -> int:
    pairs = load_fixtures(args.fixtures)
    if args.shuffle:
        random.Random(args.shuffle).shuffle(pairs)
    procs = ProcStats(args.server_pid or [])
    label = args.label or args.kind + (f"-{len(args.url)}nodes" if len(args.url) > 1 else "")
    target = Target(args.url, args.kind, procs, label)
    for name in args.scenarios.split(","):
        name = name.strip()
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
        await procs.wait_quiet()
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        figures = await SCENARIOS[name](target, pairs, args)
        line = {"scenario": name, "target": label, "kind": args.kind, "nodes": len(args.url), "started": started}
        print(json.dumps({**line, **figures}), flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", required=True, help='{"conversations": [{"id": N, "tokens": [a, b]}]}')
    parser.add_argument("--url", action="append", required=True, help="ws://host:port (twice: two nodes)")
    parser.add_argument("--kind", choices=["ours", "ceiling", "peer"], default="ours", help="when a socket is ready")
    parser.add_argument("--label", help="name of the target in the JSON lines")
    parser.add_argument("--server-pid", type=int, action="append", help="server process(es) to watch (RSS, CPU)")
    parser.add_argument("--scenarios", default="typing", help=", ".join(SCENARIOS))
    parser.add_argument("--pairs", type=int, default=50, help="conversations in ping-pong scenarios")
    parser.add_argument("--sockets", type=int, default=1000, help="sockets for idle and connect-storm")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of traffic before measuring")
    parser.add_argument("--hold", type=float, default=10.0, help="idle: seconds to hold the sockets")
    parser.add_argument("--concurrency", type=int, default=50, help="connects in flight at once")
    parser.add_argument("--interval", type=float, default=2.0, help="reconnect-storm: seconds between storms")
    parser.add_argument("--slow-fraction", type=float, default=0.2, help="slow-readers: slow pairs per normal pair")
    parser.add_argument("--flood-rate", type=float, default=30.0, help="slow-readers: messages/s per flood socket")
    parser.add_argument("--flood-sockets", type=int, default=5, help="slow-readers: flooding sockets per slow pair")
    parser.add_argument("--rate", type=float, default=0.0, help="soak: deliveries/s in all")
    parser.add_argument("--soak-kind", choices=["mix", "typing", "messages"], default="mix", help="soak: frames")
    parser.add_argument("--sample-every", type=float, default=10.0, help="soak: seconds between RSS samples")
    parser.add_argument("--shuffle", type=int, default=0, help="shuffle the fixtures with this seed (0: keep order)")
    args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = max(args.sockets, 2 * args.pairs * (1 + args.slow_fraction))
    args.fd_budget = raise_fd_limit(int(wanted))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
