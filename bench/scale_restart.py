"""Many idle sockets on three nodes, then a rolling restart under a steady message load.

What it starts (loopback, free ports, logs in the work directory, all stopped at the end): the embedded
store, one redis-server, `--nodes` server nodes on that store and that Redis (the per-human rate limits
lifted as in bench/run_compare.py; every other setting the default), and `--workers` load-generator
processes. It seeds `--sockets`/2 matched pairs (bench/seed_chat.py), and every pair connects both
participants, each to a different node, so that every message crosses the Redis bus: pair i puts A on
node i mod N and B on node i+1 mod N. Clients connect straight to their node (no proxy): with a proxy,
the sockets of a stopped node would move to the others, and two nodes cannot hold what three held within
a file limit of 20,000 descriptors per process.

Phases, each with its figures:

1. connect: every socket opened (`--concurrency` handshakes in flight per worker) and joined (its first
   frame arrived: the JWT and the membership were checked).
2. hold: the sockets stay idle `--hold` s while each node's RSS (/proc/<pid>/status VmRSS) and CPU time
   (/proc/<pid>/stat) are sampled; RSS per socket is the growth since the node started, divided by its
   sockets.
3. load: about `--senders` pairs (spread over the workers and the nodes) send `--rate` messages/s each from A
   to B, each carrying its sequence number and a `client_id`, for `--steady` s before the first restart
   and through the rest of the run. A client keeps what it sent until its echo (or a resume replay)
   acknowledges it, and sends it again with the same `client_id` after a reconnect.
4. rolling restart: each node in turn gets SIGTERM, is started again on the same port with the same
   NODE_ID once it exited, and the run waits until every socket it held is back. Clients behave like the
   seed's client: a socket closed with any code but 1008 or 4000 to 4003 reconnects after 1 s ± 20%,
   then 2 s, 4 s ... up to `--backoff-cap`, with `?after=<last message id seen>` (0 when none yet), and
   the backoff starts again once a socket is open. The time reported is from the SIGTERM to the last
   socket back (its first frame), with the node's own stop and start within it; the start is reported
   twice: when the port takes connections again (a client then waits in the listen backlog while the
   node builds its services), and when the node answers /livez.
5. check: the senders stop, the run waits for the last acknowledgements, then every acknowledged message
   must have reached its recipient exactly once (`lost`, `duplicated`), none stored twice.

A table goes to stdout, then one JSON line per figure set (`--raw FILE` writes them to a file too);
progress goes to stderr.

    .venv/bin/python bench/scale_restart.py --sockets 3000 --workers 2 --hold 10          # a quick look
    .venv/bin/python bench/scale_restart.py --raw bench/results/scale.jsonl               # 40,000 sockets

Each worker holds `--sockets`/`--workers` sockets (both participants of its pairs, so that it checks
delivery itself) and raises its own open-file limit: with a limit of 20,000 per process, 4 workers of
10,000 sockets leave room; a node holds about 13,400 sockets, below the 17,872 its budget allows there.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from bench.harness import BENCH_DATABASE, BENCH_SECRET, Child, Stack, log
from bench.loadgen import Pair, ProcStats, Refused, Target, failure_name, latency_summary, load_fixtures, raise_fd_limit
from bench.run_compare import environment_line
from bench.seed_chat import seed

# The close codes after which the seed's client gives up: policy, no token, not a participant, bad token,
# bad frame. Every other close is followed by a reconnect.
FINAL_CLOSE_CODES = {1008, 4000, 4001, 4002, 4003}
STATUS_EVERY_S = 0.5
SCRIPT = Path(__file__).resolve()
TARGET_BACK_S = 15.0
BACK_SHARES = (0.1, 0.25, 0.5, 0.75, 0.9)


WORKER_LINE_LIMIT = 64 * 1024 * 1024


def node_of(index: int, side: int, nodes: int) -> int:
    """The node participant `side` of pair `index` connects to: A and B always on different nodes."""
    return (index + side) % nodes


# -- the load-generator worker --------------------------------------------------------------------------


@dataclass
class Flow:
    """One sending pair: A sends numbered messages, B must receive each acknowledged one exactly once."""

    conversation_id: int
    seq: int = 0
    generated: dict[int, float] = field(default_factory=dict)  # seq -> when the client queued it
    unacked: dict[int, str] = field(default_factory=dict)  # seq -> frame, until an echo or replay has it
    last_sent: dict[int, float] = field(default_factory=dict)  # seq -> when it was last written to a socket
    acked: dict[int, int] = field(default_factory=dict)  # seq -> message id
    received: collections.Counter[int] = field(default_factory=collections.Counter)  # seq -> frames at B
    ids: dict[int, set[int]] = field(default_factory=dict)  # seq -> message ids seen at B

    def frame(self, seq: int) -> str:
        cid = f"s{self.conversation_id}-{seq}"
        return json.dumps({"type": "message", "content": f"{self.conversation_id}:{seq}", "client_id": cid})


@dataclass
class Client:
    """One participant's socket, reconnected for as long as the run lasts."""

    pair: Pair
    side: int
    node: int
    target: Target
    flow: Flow | None = None
    ws: ClientConnection | None = None
    last_id: int | None = None
    gone: bool = False  # closed with a code the seed's client does not come back from


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        pairs = load_fixtures(args.fixtures)[args.first : args.first + args.count]
        self.clients: list[Client] = []
        self.flows: list[Flow] = []
        for offset, pair in enumerate(pairs):
            index = args.first + offset
            urls = [args.url[node_of(index, side, len(args.url))] for side in (0, 1)]
            target = Target(urls, "ours", ProcStats([]), "scale")
            flow = Flow(pair.conversation_id) if index % args.sender_every == 0 else None
            if flow is not None:
                self.flows.append(flow)
            for side in (0, 1):
                self.clients.append(Client(pair, side, node_of(index, side, len(args.url)), target, flow))
        nodes = len(args.url)
        self.joined = [0] * nodes
        self.last_join = [0.0] * nodes
        self.rejoins = [0] * nodes
        self.resumed = [0] * nodes
        self.closes: collections.Counter[str] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()
        self.error_frames: collections.Counter[str] = collections.Counter()
        self.gone: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []
        self.retries: set[asyncio.Task[None]] = set()
        self.unanswered = 0
        self.unanswered_examples: list[dict[str, int]] = []
        self.first_joins = 0
        self.all_tried = asyncio.Event()
        self.gate = asyncio.Semaphore(args.concurrency)
        self.sending = False
        self.stopping = False

    def backoff(self, attempt: int) -> float:
        cap: float = self.args.backoff_cap
        base: float = self.args.backoff_base
        return float(min(cap, base * 2.0**attempt) * random.uniform(0.8, 1.2))

    def take(self, c: Client, raw: str | bytes) -> None:
        frame = orjson.loads(raw)
        kind = frame.get("type")
        if kind == "error":
            self.error_frames[str(frame.get("code"))] += 1
            self.retry_refused(c, str(frame.get("client_id", "")))
        if kind != "message":
            return
        message = frame["message"]
        mid = int(message["id"])
        c.last_id = mid if c.last_id is None else max(c.last_id, mid)
        flow = c.flow
        if flow is None:
            return
        head, _, tail = str(message.get("content", "")).partition(":")
        if head != str(flow.conversation_id) or not tail.isdigit():
            return
        seq = int(tail)
        if c.side == 0:
            # The echo of a send, of a resend, or the replay of a resume: any of them says it is stored.
            if flow.unacked.pop(seq, None) is not None:
                flow.acked[seq] = mid
            return
        flow.received[seq] += 1
        flow.ids.setdefault(seq, set()).add(mid)
        if flow.received[seq] == 1 and seq in flow.generated:
            self.latencies.append(time.monotonic() - flow.generated[seq])

    def retry_refused(self, c: Client, client_id: str) -> None:
        """A send refused for a while (`unavailable`, `rate_limited`): send it again after a pause, as a
        client does with what it still holds."""
        flow = c.flow
        head, _, tail = client_id.rpartition("-")
        if flow is None or head != f"s{flow.conversation_id}" or not tail.isdigit():
            return
        seq = int(tail)

        async def again() -> None:
            await asyncio.sleep(self.backoff(0))
            await self.send(flow, c, seq)

        task = asyncio.get_running_loop().create_task(again())
        self.retries.add(task)
        task.add_done_callback(self.retries.discard)

    async def run_client(self, c: Client) -> None:
        first = True
        attempt = 0
        while not self.stopping:
            try:
                if first:
                    async with self.gate:
                        ws, frames = await c.target.open(c.side, c.pair)
                else:
                    ws, frames = await c.target.open(c.side, c.pair, after=c.last_id or 0)
            except Exception as exc:
                if isinstance(exc, Refused) and exc.code in FINAL_CLOSE_CODES:
                    self.gone[f"refused {exc.code}"] += 1
                    c.gone = True
                    break
                self.failures[failure_name(exc)] += 1
                attempt += 1
                await asyncio.sleep(self.backoff(attempt))
                continue
            attempt = 0
            self.joined[c.node] += 1
            self.last_join[c.node] = time.monotonic()
            if first:
                self.joined_first()
                first = False
            else:
                self.rejoins[c.node] += 1
                self.resumed[c.node] += 1
            c.ws = ws
            try:
                for raw in frames:
                    self.take(c, raw)
                if c.side == 0 and c.flow is not None:
                    # What queued up while away, with the same client_id: stored ones are answered, not stored again.
                    for seq in sorted(c.flow.unacked):
                        await self.send(c.flow, c, seq)
                async for received in ws:
                    self.take(c, received)
            except ConnectionClosed:
                pass
            c.ws = None
            self.joined[c.node] -= 1
            code = ws.close_code
            if self.stopping:
                break
            self.closes[str(code)] += 1
            if code in FINAL_CLOSE_CODES:
                self.gone[f"closed {code}"] += 1
                c.gone = True
                break
            await asyncio.sleep(self.backoff(0))
        if first:
            self.joined_first()  # given up before it ever joined: the connect phase must not wait for it

    def joined_first(self) -> None:
        self.first_joins += 1
        if self.first_joins == len(self.clients):
            self.all_tried.set()

    async def send_loop(self, flow: Flow, sender: Client) -> None:
        interval = 1.0 / self.args.rate
        next_at = time.monotonic() + random.uniform(0, interval)
        while self.sending:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            if not self.sending:
                break
            flow.seq += 1
            frame = flow.frame(flow.seq)
            flow.generated[flow.seq] = time.monotonic()
            flow.unacked[flow.seq] = frame
            await self.send(flow, sender, flow.seq)

    async def send(self, flow: Flow, sender: Client, seq: int) -> None:
        """Write a message still unacknowledged to the sender's socket, if it has one open."""
        ws = sender.ws
        if ws is None or seq not in flow.unacked:
            return
        flow.last_sent[seq] = time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            await ws.send(flow.unacked[seq])

    async def resend_loop(self, flow: Flow, sender: Client) -> None:
        """A send neither answered nor refused within `--resend-after` s on an open socket is sent again (the
        same client_id, so never stored twice); counted, since a server should answer every send."""
        while not self.stopping:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for seq in [s for s in flow.unacked if now - flow.last_sent.get(s, now) > self.args.resend_after]:
                if sender.ws is not None:
                    self.unanswered += 1
                    if len(self.unanswered_examples) < 5:
                        self.unanswered_examples.append({"conversation": flow.conversation_id, "seq": seq})
                    await self.send(flow, sender, seq)

    def status(self) -> dict[str, Any]:
        return {
            "event": "status",
            "joined": self.joined,
            "last_join": self.last_join,
            "rejoins": self.rejoins,
            "resumed": self.resumed,
            "closes": dict(self.closes),
            "failures": dict(self.failures),
            "gone": dict(self.gone),
            "generated": sum(f.seq for f in self.flows),
            "acked": sum(len(f.acked) for f in self.flows),
            "cpu_s": time.process_time(),
        }

    def final(self) -> dict[str, Any]:
        senders = {id(c.flow): c for c in self.clients if c.flow is not None and c.side == 1}
        lost = duplicated = stored_twice = lost_b_away = behind = 0
        examples: list[dict[str, Any]] = []
        for flow in self.flows:
            missing = flow.acked.keys() - flow.received.keys()
            receiver = senders[id(flow)]
            # A socket gets its conversation's messages in id order: one whose reader has not reached its id
            # yet is still on its way (the run ended first); one the reader went past will never come.
            reached = receiver.last_id or 0
            passed = sorted(seq for seq in missing if flow.acked[seq] <= reached)
            if receiver.ws is None:
                lost_b_away += len(missing)
            else:
                lost += len(passed)
                behind += len(missing) - len(passed)
            duplicated += sum(n - 1 for n in flow.received.values() if n > 1)
            stored_twice += sum(len(ids) - 1 for ids in flow.ids.values() if len(ids) > 1)
            if passed and len(examples) < 5:
                examples.append(
                    {
                        "conversation": flow.conversation_id,
                        "missing_seqs": passed[:10],
                        "ids": [flow.acked[seq] for seq in passed[:10]],
                        "reader_at": reached,
                    }
                )
        return {
            "event": "final",
            "sending_pairs": len(self.flows),
            "generated": sum(f.seq for f in self.flows),
            "acked": sum(len(f.acked) for f in self.flows),
            "unacked": sum(len(f.unacked) for f in self.flows),
            "resent_unanswered": self.unanswered,
            "unanswered_examples": self.unanswered_examples,
            "delivered": sum(len(f.received) for f in self.flows),
            "lost": lost,
            "lost_receiver_not_connected": lost_b_away,
            "not_delivered_yet": behind,
            "duplicated": duplicated,
            "stored_twice": stored_twice,
            "missing_examples": examples,
            "latencies": [round(x, 4) for x in self.latencies],
            "error_frames": dict(self.error_frames),
            **{k: v for k, v in self.status().items() if k != "event"},
        }

    def settled(self) -> bool:
        return all(not f.unacked and f.acked.keys() <= f.received.keys() for f in self.flows)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        commands = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
        started = time.monotonic()
        tasks = [loop.create_task(self.run_client(c)) for c in self.clients]
        reporter = loop.create_task(self.report_loop())
        # Sockets still trying when the time is up go on trying; the figures say how many there were.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_tried.wait(), self.args.connect_timeout)
        emit(
            {
                "event": "connected",
                "sockets": sum(self.joined),
                "per_node": self.joined,
                "still_trying": len(self.clients) - self.first_joins,
                "seconds": round(time.monotonic() - started, 2),
                "failures": dict(self.failures),
                "gone": dict(self.gone),
            }
        )
        senders: list[asyncio.Task[None]] = []
        resenders: list[asyncio.Task[None]] = []
        while line := await commands.readline():
            command = line.decode().strip()
            if command == "load":
                self.sending = True
                by_flow = {id(c.flow): c for c in self.clients if c.flow is not None and c.side == 0}
                senders = [loop.create_task(self.send_loop(f, by_flow[id(f)])) for f in self.flows]
                resenders = [loop.create_task(self.resend_loop(f, by_flow[id(f)])) for f in self.flows]
            elif command == "stop":
                self.sending = False
                await asyncio.gather(*senders, return_exceptions=True)
                for _ in range(int(self.args.drain / 0.2)):
                    if self.settled():
                        break
                    await asyncio.sleep(0.2)
                emit(self.final())
                break
        self.stopping = True
        reporter.cancel()
        await asyncio.gather(*(c.ws.close() for c in self.clients if c.ws is not None), return_exceptions=True)
        for task in [*tasks, *resenders, *self.retries]:
            task.cancel()
        await asyncio.gather(*tasks, *resenders, *self.retries, reporter, return_exceptions=True)

    async def report_loop(self) -> None:
        while True:
            emit(self.status())
            await asyncio.sleep(STATUS_EVERY_S)


def emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def worker_main(args: argparse.Namespace) -> int:
    raise_fd_limit(2 * args.count)
    asyncio.run(Worker(args).run())
    return 0


# -- the orchestrator --------------------------------------------------------------------------------


class WorkerProcess:
    """A worker subprocess: commands on its stdin, its latest status and events from its stdout."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.status: dict[str, Any] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            doc = json.loads(line)
            if doc["event"] == "status":
                self.status = doc
            else:
                self.events[doc["event"]] = doc

    async def event(self, name: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while name not in self.events:
            if self.reader.done():
                raise RuntimeError(f"{self.name} ended (exit {self.process.returncode}) before '{name}'")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no '{name}' within {timeout_s:.0f} s")
            await asyncio.sleep(0.2)
        return self.events[name]

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")


def total(workers: list[WorkerProcess], key: str, node: int) -> int:
    return sum(w.status.get(key, [0] * (node + 1))[node] for w in workers)


async def answers_livez(port: int, deadline: float) -> float:
    """When the node on `port` first answers GET /livez (its port may take connections before it serves)."""
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET /livez HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                status = await asyncio.wait_for(reader.readline(), max(0.1, deadline - time.monotonic()))
            finally:
                writer.close()
            if status.startswith(b"HTTP/1.1 200"):
                return time.monotonic()
        except (OSError, TimeoutError):
            pass
        if time.monotonic() >= deadline:
            raise RuntimeError(f"nothing answered /livez on port {port}")
        await asyncio.sleep(0.05)


def counter_sum(workers: list[WorkerProcess], key: str) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for w in workers:
        out.update(w.status.get(key, {}))
    return out


def counter_diff(after: collections.Counter[str], before: collections.Counter[str]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


class Run:
    def __init__(self, args: argparse.Namespace, stack: Stack) -> None:
        self.args = args
        self.stack = stack
        self.lines: list[dict[str, Any]] = []
        self.nodes: list[Child] = []
        self.workers: list[WorkerProcess] = []

    def record(self, doc: dict[str, Any]) -> None:
        """Keep a figure set; also appended to lines.jsonl in the work directory at once, so that a run
        stopped half-way leaves what it measured."""
        self.lines.append(doc)
        with open(self.stack.workdir / "lines.jsonl", "a") as out:
            out.write(json.dumps(doc) + "\n")

    async def start(self) -> Path:
        args = self.args
        store_url, self.store_pid = self.stack.start_store()
        pairs = args.sockets // 2
        log(f"seeding {2 * pairs} users in {pairs} conversations")
        doc, seconds = await seed(store_url, BENCH_DATABASE, BENCH_SECRET, pairs, 24 * 3600)
        fixtures = self.stack.workdir / "fixtures.json"
        fixtures.write_text(json.dumps(doc))
        self.record({"phase": "seed", "users": 2 * pairs, "conversations": pairs, "seconds": round(seconds, 1)})
        redis_url = self.stack.start_redis("redis")
        self.redis_pid = self.stack.children[-1].pid
        for i in range(args.nodes):
            self.nodes.append(self.stack.start_ours(f"node{i + 1}", store_url, redis_url))
        # The nodes' memory before any socket, to tell what the sockets cost.
        await asyncio.sleep(1.0)
        self.rss_empty = [ProcStats.rss_kb(n.pid) or 0 for n in self.nodes]
        log(f"nodes {[n.url for n in self.nodes]}; logs in {self.stack.workdir}")
        return fixtures

    async def spawn_workers(self, fixtures: Path) -> None:
        args = self.args
        pairs = args.sockets // 2
        per = -(-pairs // args.workers)
        for w in range(args.workers):
            first, count = w * per, min(per, pairs - w * per)
            if count <= 0:
                break
            argv = [sys.executable, str(SCRIPT), "--worker", "--fixtures", str(fixtures)]
            argv += ["--first", str(first), "--count", str(count), "--sender-every", str(self.sender_every())]
            for n in self.nodes:
                argv += ["--url", n.url]
            options = ("rate", "concurrency", "backoff_base", "backoff_cap", "drain", "resend_after", "connect_timeout")
            for option in options:
                argv += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
            err = os.open(self.stack.workdir / f"worker{w + 1}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                # `limit`: a worker's final line carries every delivery latency (megabytes once messages
                # flow), past asyncio's 64 KiB line limit.
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=err,
                    limit=WORKER_LINE_LIMIT,
                )
            finally:
                os.close(err)
            self.workers.append(WorkerProcess(process, f"worker{w + 1}"))

    def sender_every(self) -> int:
        """Every how many pairs one sends. Pair i's A is on node i mod N and its B on the next one, so a
        stride that shares a factor with N put every sender on one node and every reader on the next
        (4,500 pairs, 300 senders: a stride of 15, all senders on node1, all readers on node2); a stride
        prime to N spreads both over every node, for about `--senders` pairs."""
        pairs: int = self.args.sockets // 2
        every = max(1, pairs // max(1, int(self.args.senders)))
        while every > 1 and math.gcd(every, self.args.nodes) != 1:
            every -= 1
        return every

    def senders_per_node(self) -> list[int]:
        """How many sending pairs have their A (the sender) on each node; their B is on the next one."""
        every, nodes = self.sender_every(), self.args.nodes
        counts = [0] * nodes
        for index in range(0, self.args.sockets // 2, every):
            counts[node_of(index, 0, nodes)] += 1
        return counts

    async def connect(self) -> None:
        t0 = time.monotonic()
        self.record_load("before connecting")
        cpu0 = [ProcStats.cpu_s(n.pid) for n in self.nodes]
        log(f"connecting {self.args.sockets} sockets through {len(self.workers)} workers")
        shown = 0.0
        while not all("connected" in w.events for w in self.workers):
            for w in self.workers:
                if w.reader.done() and "connected" not in w.events:
                    raise RuntimeError(f"{w.name} ended before connecting; see its log in {self.stack.workdir}")
            if time.monotonic() - shown > 10:
                shown = time.monotonic()
                joined = [total(self.workers, "joined", k) for k in range(len(self.nodes))]
                log(f"  {time.monotonic() - t0:5.0f} s: {sum(joined)} joined {joined}")
            await asyncio.sleep(0.5)
        seconds = time.monotonic() - t0
        events = [w.events["connected"] for w in self.workers]
        joined = sum(e["sockets"] for e in events)
        failures: collections.Counter[str] = collections.Counter()
        for e in events:
            failures.update(e["failures"])
            failures.update(e["gone"])
        cpu = [ProcStats.cpu_s(n.pid) - c for n, c in zip(self.nodes, cpu0, strict=True)]
        self.per_node = [sum(e["per_node"][k] for e in events) for k in range(len(self.nodes))]
        self.record(
            {
                "phase": "connect",
                "sockets_asked": self.args.sockets,
                "sockets_joined": joined,
                "still_trying": sum(e["still_trying"] for e in events),
                "per_node": self.per_node,
                "seconds": round(seconds, 1),
                "connects_per_s": round(joined / seconds, 1),
                "node_cpu_ms_per_connect": round(sum(cpu) / max(1, joined) * 1000, 2),
                "failed_attempts": dict(failures),
                "load_average_1min": round(os.getloadavg()[0], 2),
            }
        )
        log(f"{joined} sockets joined in {seconds:.1f} s {self.per_node}")

    def record_load(self, when: str) -> None:
        self.record({"phase": "load_average", "when": when, "load_average_1min": round(os.getloadavg()[0], 2)})

    async def hold(self) -> None:
        args = self.args
        log(f"holding the sockets idle for {args.hold:.0f} s")
        pids = {**{n.name: n.pid for n in self.nodes}, "store": self.store_pid, "redis": self.redis_pid}
        cpu0 = {name: ProcStats.cpu_s(pid) for name, pid in pids.items()}
        worker_cpu0 = sum(w.status.get("cpu_s", 0.0) for w in self.workers)
        samples: dict[str, list[int]] = {name: [] for name in pids}
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.hold:
            for name, pid in pids.items():
                samples[name].append(ProcStats.rss_kb(pid) or 0)
            await asyncio.sleep(min(args.sample_every, max(0.0, args.hold - (time.monotonic() - t0))))
        elapsed = time.monotonic() - t0
        worker_cpu = sum(w.status.get("cpu_s", 0.0) for w in self.workers) - worker_cpu0
        still = [total(self.workers, "joined", k) for k in range(len(self.nodes))]
        for k, node in enumerate(self.nodes):
            rss = samples[node.name] + [ProcStats.rss_kb(node.pid) or 0]
            self.record(
                {
                    "phase": "hold",
                    "node": node.name,
                    "sockets": still[k],
                    "hold_s": round(elapsed, 1),
                    "rss_empty_mb": round(self.rss_empty[k] / 1024, 1),
                    "rss_held_mb": round(rss[-1] / 1024, 1),
                    "rss_max_mb": round(max(rss) / 1024, 1),
                    "rss_per_socket_kb": round((rss[-1] - self.rss_empty[k]) / max(1, still[k]), 1),
                    "cpu_pct": round((ProcStats.cpu_s(node.pid) - cpu0[node.name]) / elapsed * 100, 1),
                }
            )
        for name in ("store", "redis"):
            cpu = (ProcStats.cpu_s(pids[name]) - cpu0[name]) / elapsed * 100
            rss_mb = round((ProcStats.rss_kb(pids[name]) or 0) / 1024, 1)
            self.record({"phase": "hold", "node": name, "rss_held_mb": rss_mb, "cpu_pct": round(cpu, 1)})
        self.record({"phase": "hold", "node": "load generator", "cpu_pct": round(worker_cpu / elapsed * 100, 1)})

    async def restart(self, k: int) -> None:
        args = self.args
        node = self.nodes[k]
        expected = total(self.workers, "joined", k)  # what it holds now (fresh: the last phase lasted seconds)
        closes0 = counter_sum(self.workers, "closes")
        failures0 = counter_sum(self.workers, "failures")
        resumed0 = total(self.workers, "resumed", k)
        others = [j for j in range(len(self.nodes)) if j != k]
        others_before = {j: total(self.workers, "joined", j) for j in others}
        others_low = dict(others_before)
        assert node.process is not None
        process = node.process
        log(f"SIGTERM {node.name} (pid {process.pid}, {expected} sockets)")
        # Where the machine's CPU goes meanwhile: the store, Redis, the nodes that stay, the load generators.
        watched = {"store": [self.store_pid], "redis": [self.redis_pid]}
        watched["other_nodes"] = [self.nodes[j].pid for j in others]
        watched["load_generators"] = [w.process.pid for w in self.workers]
        backing0 = {name: sum(ProcStats.cpu_s(pid) for pid in pids) for name, pids in watched.items()}
        t_term = time.monotonic()
        process.send_signal(signal.SIGTERM)
        killed = False
        try:
            await asyncio.to_thread(process.wait, args.stop_timeout)
        except subprocess.TimeoutExpired:
            # What systemd does after TimeoutStopSec: the figures say so.
            log(f"  {node.name} still running {args.stop_timeout:.0f} s after SIGTERM: SIGKILL")
            process.kill()
            await asyncio.to_thread(process.wait)
            killed = True
        t_exit = time.monotonic()
        exit_code = process.returncode
        node.process = None
        await asyncio.to_thread(node.start, args.start_timeout)
        t_listen = time.monotonic()  # the port takes connections (the node may not serve yet)
        t_serving = await answers_livez(node.port, t_term + args.start_timeout)
        assert node.process is not None
        started_cpu = ProcStats.cpu_s(node.pid)  # its start-up, before any socket
        log(
            f"  {node.name} exited {exit_code} after {t_exit - t_term:.1f} s, listens at {t_listen - t_term:.1f} s,"
            f" serves at {t_serving - t_term:.1f} s"
        )
        deadline = t_term + args.back_timeout
        # The status a worker sent before the restart may still show the old sockets: wait for fresh ones.
        await asyncio.sleep(2 * STATUS_EVERY_S)
        lowest = total(self.workers, "joined", k)
        # When a share of the sockets was back (to the half second of the workers' status): tells a node
        # slow to take sockets from clients that came late, which their backoff decides.
        reached: dict[str, float] = {}
        while time.monotonic() < deadline:
            now_joined = total(self.workers, "joined", k)
            lowest = min(lowest, now_joined)
            if now_joined > lowest:
                for share in BACK_SHARES:
                    if f"{share:.0%}" not in reached and now_joined - lowest >= share * (expected - lowest):
                        reached[f"{share:.0%}"] = round(time.monotonic() - t_term, 1)
            for j in others:
                others_low[j] = min(others_low[j], total(self.workers, "joined", j))
            if now_joined >= expected and total(self.workers, "resumed", k) - resumed0 >= expected:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2 * STATUS_EVERY_S)
        busy = {
            f"{name}_cpu_pct": round(
                (sum(ProcStats.cpu_s(pid) for pid in pids) - backing0[name]) / (time.monotonic() - t_term) * 100, 1
            )
            for name, pids in watched.items()
        }
        back = total(self.workers, "joined", k)
        taking_back_cpu = ProcStats.cpu_s(node.pid) - started_cpu
        resumed = total(self.workers, "resumed", k) - resumed0
        all_back = back >= expected and resumed >= expected
        t_back = max(w.status["last_join"][k] for w in self.workers)
        seconds = round(t_back - t_term, 2) if all_back else None
        self.record(
            {
                "phase": "restart",
                "node": node.name,
                "sockets": expected,
                "sigterm_to_exit_s": round(t_exit - t_term, 2),
                "exit_code": exit_code,
                "killed_after_stop_timeout": killed,
                "sigterm_to_listening_s": round(t_listen - t_term, 2),
                "sigterm_to_serving_s": round(t_serving - t_term, 2),
                "sigterm_to_all_back_s": seconds,
                "listening_to_all_back_s": round(t_back - t_listen, 2) if all_back else None,
                "sigterm_to_share_back_s": reached,
                "all_back": all_back,
                "back": back,
                "resumed": resumed,
                "lowest_joined_seen": lowest,
                "target_s": TARGET_BACK_S,
                "target_met": bool(all_back and seconds is not None and seconds <= TARGET_BACK_S),
                "node_cpu_s_to_start": round(started_cpu, 2),
                "node_cpu_ms_per_socket_back": round(taking_back_cpu / back * 1000, 2) if back else None,
                "rss_after_mb": round((ProcStats.rss_kb(node.pid) or 0) / 1024, 1) if node.process else None,
                **busy,
                "other_nodes_lost_sockets": sum(others_before[j] - others_low[j] for j in others),
                "close_codes": counter_diff(counter_sum(self.workers, "closes"), closes0),
                "failed_attempts": counter_diff(counter_sum(self.workers, "failures"), failures0),
                "load_average_1min": round(os.getloadavg()[0], 2),
            }
        )
        shown = f"{seconds:.1f} s" if seconds is not None else f"NOT all back ({back}/{expected})"
        log(f"  {node.name}: {shown}")

    async def finish(self) -> None:
        for w in self.workers:
            w.send("stop")
        finals = [await w.event("final", self.args.drain + 60) for w in self.workers]
        latencies = sorted(x for f in finals for x in f["latencies"])
        summed = {
            key: sum(f[key] for f in finals)
            for key in (
                "sending_pairs",
                "generated",
                "acked",
                "unacked",
                "resent_unanswered",
                "delivered",
                "lost",
                "lost_receiver_not_connected",
                "not_delivered_yet",
                "duplicated",
                "stored_twice",
            )
        }
        errors: collections.Counter[str] = collections.Counter()
        gone: collections.Counter[str] = collections.Counter()
        for f in finals:
            errors.update(f["error_frames"])
            gone.update(f["gone"])
        self.record(
            {
                "phase": "messages",
                **summed,
                "rate_per_s": round(summed["sending_pairs"] * self.args.rate, 1),
                "senders_per_node": self.senders_per_node(),
                **latency_summary(latencies, "delivery_"),
                "error_frames": dict(errors),
                "sockets_given_up": dict(gone),
                "missing_examples": [e for f in finals for e in f["missing_examples"]][:5],
                "unanswered_examples": [e for f in finals for e in f["unanswered_examples"]][:5],
            }
        )
        for w in self.workers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.process.wait(), 30)

    def stop_workers(self) -> None:
        for w in self.workers:
            if w.process.returncode is None:
                w.process.kill()

    async def run(self) -> None:
        args = self.args
        fixtures = await self.start()
        try:
            await self.spawn_workers(fixtures)
            await self.connect()
            await self.hold()
            log(f"message load: {args.senders} pairs at {args.rate}/s each, {args.steady:.0f} s before the restarts")
            for w in self.workers:
                w.send("load")
            await asyncio.sleep(args.steady)
            for k in range(len(self.nodes)):
                await self.restart(k)
                await asyncio.sleep(args.settle)
            await self.finish()
        finally:
            self.stop_workers()
            for w in self.workers:
                with contextlib.suppress(ProcessLookupError):
                    await w.process.wait()


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(lines: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    out = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(line.get(key)) for key, _ in columns) + " |" for line in lines]
    return "\n".join(out)


def report(header: str, lines: list[dict[str, Any]]) -> str:
    phase = collections.defaultdict(list)
    for line in lines:
        phase[line.get("phase")].append(line)
    parts = [header, ""]
    for doc in phase["connect"]:
        parts.append(
            f"Connect: {fmt(doc['sockets_joined'])} of {fmt(doc['sockets_asked'])} sockets joined in "
            f"{doc['seconds']} s ({fmt(doc['connects_per_s'])}/s; {doc['node_cpu_ms_per_connect']} ms of node CPU "
            f"per connect), per node {doc['per_node']}; failed attempts: {fmt(doc['failed_attempts'])}.\n"
        )
    parts.append(
        table(
            phase["hold"],
            [
                ("node", "process"),
                ("sockets", "sockets held"),
                ("rss_empty_mb", "RSS before, MB"),
                ("rss_held_mb", "RSS held, MB"),
                ("rss_per_socket_kb", "RSS per socket, KB"),
                ("cpu_pct", "CPU idle, % of a core"),
            ],
        )
    )
    parts.append("")
    parts.append(
        table(
            phase["restart"],
            [
                ("node", "node"),
                ("sockets", "sockets"),
                ("sigterm_to_exit_s", "SIGTERM to exit, s"),
                ("sigterm_to_listening_s", "SIGTERM to listening, s"),
                ("sigterm_to_serving_s", "SIGTERM to serving, s"),
                ("sigterm_to_all_back_s", "SIGTERM to all back, s"),
                ("resumed", "resumed"),
                ("target_met", f"≤ {TARGET_BACK_S:.0f} s"),
                ("node_cpu_ms_per_socket_back", "new node's CPU ms per socket"),
                ("other_nodes_lost_sockets", "others' sockets lost"),
                ("close_codes", "close codes"),
                ("failed_attempts", "failed attempts"),
                ("load_average_1min", "load avg"),
            ],
        )
    )
    parts.append("")
    parts.append(
        table(
            phase["messages"],
            [
                ("sending_pairs", "sending pairs"),
                ("rate_per_s", "messages/s"),
                ("generated", "sent"),
                ("acked", "acknowledged"),
                ("unacked", "never acknowledged"),
                ("resent_unanswered", "resent: unanswered on an open socket"),
                ("lost", "lost"),
                ("lost_receiver_not_connected", "not delivered: receiver away"),
                ("not_delivered_yet", "not delivered yet: receiver connected, not at its id"),
                ("duplicated", "duplicated"),
                ("stored_twice", "stored twice"),
                ("delivery_p50_ms", "p50 ms"),
                ("delivery_p99_ms", "p99 ms"),
                ("delivery_max_ms", "max ms"),
            ],
        )
    )
    return "\n".join(parts)


def write_lines(path: str, lines: list[dict[str, Any]]) -> None:
    Path(path).write_text("".join(json.dumps(line) + "\n" for line in lines))


async def orchestrate(args: argparse.Namespace) -> int:
    # The nodes inherit this limit (each raises its soft limit to the hard one itself, too).
    raise_fd_limit(0)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    started = time.monotonic()
    with Stack(workdir) as stack:
        run = Run(args, stack)
        try:
            await run.run()
        finally:
            stack.close()
    minutes = (time.monotonic() - started) / 60
    header = (
        f"Measured {environment_line()}; {args.sockets:,} sockets on {args.nodes} nodes through {args.workers} "
        f"load-generator processes, {minutes:.1f} min in all."
    )
    lines = [{"header": header, "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}, *run.lines]
    print(report(header, run.lines))
    print()
    for line in lines:
        print(json.dumps(line))
    if args.raw:
        write_lines(args.raw, lines)
    messages = next((x for x in run.lines if x.get("phase") == "messages"), {})
    restarts = [x for x in run.lines if x.get("phase") == "restart"]
    ok = bool(messages) and messages["lost"] == 0 and messages["duplicated"] == 0 and messages["stored_twice"] == 0
    ok = ok and len(restarts) == args.nodes and all(r["all_back"] for r in restarts)
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=40_000, help="sockets in all (two per conversation)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="load-generator processes")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds the sockets stay idle")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples while idle")
    parser.add_argument("--senders", type=int, default=300, help="pairs that send messages")
    parser.add_argument("--rate", type=float, default=1.0, help="messages/s per sending pair")
    parser.add_argument("--steady", type=float, default=10.0, help="seconds of message load before the restarts")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between one node back and the next SIGTERM")
    parser.add_argument("--back-timeout", type=float, default=180.0, help="seconds a node's sockets have to come back")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for the last acknowledgements")
    parser.add_argument("--concurrency", type=int, default=25, help="first connects in flight per worker")
    parser.add_argument("--backoff-base", type=float, default=1.0, help="first reconnect delay, s (± 20%%)")
    parser.add_argument("--backoff-cap", type=float, default=5.0, help="longest reconnect delay, s")
    parser.add_argument(
        "--resend-after", type=float, default=30.0, help="seconds before an unanswered send on an open socket is resent"
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=900.0, help="seconds the first connects may take before the hold"
    )
    parser.add_argument(
        "--start-timeout", type=float, default=180.0, help="seconds a restarted node has to listen again"
    )
    parser.add_argument(
        "--stop-timeout", type=float, default=25.0, help="seconds a node has to exit after SIGTERM, then SIGKILL"
    )
    parser.add_argument("--workdir", help="logs and data (default: a temporary directory)")
    parser.add_argument("--raw", help="also write the JSON lines to this file")
    # A load-generator process, started by the run itself.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fixtures", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sender-every", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--url", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sockets < 2 * args.nodes or args.nodes < 2:
        parser.error("at least 2 nodes, and 2 sockets per node")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    return asyncio.run(orchestrate(args))


if __name__ == "__main__":
    sys.exit(main())
