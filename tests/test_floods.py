"""Floods and slow readers, with real sockets: a reader that never reads while others chat, thousands of
sockets that connect and say nothing, ping floods (application and WebSocket control pings), and a node
whose Redis subscription is cut off by Redis's pub/sub output-buffer limit.

Memory is measured on a real server process (its RSS is the server's alone); the ping floods run against
the in-process application, where the server's side of each socket can be inspected.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import re
import resource
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio
import tornado.httpserver
import tornado.testing
from pymongo import AsyncMongoClient

from handlers import make_app
from services.core.container import build_services
from services.realtime.events import NOTIFICATION, encode
from services.storage.documents import UNUSABLE_HASH, user_document
from tests.processes import RedisProcess, ServerProcess, insert_conversation, node_env
from tests.support import ApiClient, PortClient, WsClient, make_conversation, make_settings, ws_connect
from tests.ws_helpers import join, pair, token, wait_for

# -- a minimal WebSocket client, for what a well-behaved client library would not do ------------------


class RawWs:
    """Just enough RFC 6455 to misbehave: control frames at will, reading only when told to."""

    def __init__(self, sock: socket.socket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sock = sock
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, path: str, *, rcvbuf: int | None = None) -> RawWs:
        sock = await handshake(port, path, rcvbuf=rcvbuf)
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(sock, reader, writer)

    def send(self, opcode: int, payload: bytes = b"") -> None:
        """One final frame, masked with a zero key (the payload goes as is; any key is valid)."""
        n = len(payload)
        if n < 126:
            length = bytes([0x80 | n])
        elif n < 65536:
            length = bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            length = bytes([0x80 | 127]) + n.to_bytes(8, "big")
        self.writer.write(bytes([0x80 | opcode]) + length + b"\0\0\0\0" + payload)

    def send_json(self, frame: dict[str, Any]) -> None:
        self.send(0x1, orjson.dumps(frame))

    async def recv(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame; (-1, b"") when the connection ended."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
            n = head[1] & 0x7F
            if n >= 126:
                n = int.from_bytes(await self.reader.readexactly(2 if n == 126 else 8), "big")
            return head[0] & 0x0F, await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return -1, b""

    def close(self) -> None:
        self.writer.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def handshake(port: int, path: str, *, rcvbuf: int | None = None) -> socket.socket:
    """A connected socket past the WebSocket handshake (nothing of the server's frames read yet)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    while True:
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock, _resolve, readable)
        try:
            await asyncio.wait_for(readable, 30)
        finally:
            loop.remove_reader(sock)
        # Peeked, then only the answer's own bytes are taken: the first frame stays in the socket.
        answer = sock.recv(65536, socket.MSG_PEEK)
        assert answer, "closed during the handshake"
        if b"\r\n\r\n" in answer:
            head = answer[: answer.index(b"\r\n\r\n") + 4]
            assert sock.recv(len(head)) == head and head.startswith(b"HTTP/1.1 101"), head
            return sock


# -- a real server process and its figures ------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert match is not None
    return int(match.group(1)) * 1024


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def seed_users(mongo_url: str, database: str, count: int, first_id: int = 1000) -> list[int]:
    """Accounts written straight to the database (the floods need many; hashing each would take minutes)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    now = dt.datetime.now(dt.UTC)
    ids = list(range(first_id, first_id + count))
    await client[database].users.insert_many(
        [user_document(uid, f"flood_{uid}", password_hash=UNUSABLE_HASH, created_at=now) for uid in ids]
    )
    await client.close()
    return ids


def conversation(cid: int, user: int) -> str:
    return f"/ws/conversations/{cid}/?token={token(user)}"


class Chatter:
    """A participant that reads everything and notes how long each message took to reach it."""

    def __init__(self, ws: WsClient, sent_at: dict[str, float]) -> None:
        self.ws = ws
        self.sent_at = sent_at
        self.received: dict[str, float] = {}  # client_id -> seconds from send to arrival
        self.ids: list[int] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            raw = await self.ws.conn.read_message()
            if raw is None:
                return
            assert isinstance(raw, str)  # the server sends text frames only
            if not raw.startswith('{"type":"message"'):
                continue
            message = orjson.loads(raw)["message"]
            self.ids.append(message["id"])
            key = message.get("client_id") or ""
            if key in self.sent_at:
                self.received[key] = time.monotonic() - self.sent_at[key]


def latencies_since(chatters: list[Chatter], sent_at: dict[str, float], since: float, until: float) -> list[float]:
    return [lat for c in chatters for key, lat in c.received.items() if since <= sent_at[key] < until]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
async def test_a_reader_that_never_reads_is_cut_off_within_10s_at_no_cost_to_memory_or_the_others(tmp_path, mongo_url):
    # Large messages (60 kB frames, under MAX_FRAME_BYTES) fill the reader's bound with few sends, so
    # what is measured is the stuck reader's effect, not the box's capacity for messages per second.
    env = node_env(mongo_url, MAX_CONTENT_CHARS="15000", MESSAGE_RATE="100", MESSAGE_BURST="100")
    node = ServerProcess(tmp_path / "node", env).start()
    try:
        assert node.process is not None
        database = env["MONGODB_DATABASE"]
        a, b, c1, d1, c2, d2 = await seed_users(mongo_url, database, 6)
        cid = await insert_conversation(mongo_url, database, a, b, 1)
        x1 = await insert_conversation(mongo_url, database, c1, d1, 2)
        x2 = await insert_conversation(mongo_url, database, c2, d2, 3)
        api = ApiClient(PortClient(node.port))
        sent_at: dict[str, float] = {}

        async def chatter(cid: int, user: int) -> Chatter:
            return Chatter(await ws_connect(api, conversation(cid, user)), sent_at)

        sender = await chatter(cid, a)
        b_fast = await chatter(cid, b)
        talkers = [await chatter(x1, c1), await chatter(x2, c2)]
        listeners = [await chatter(x1, d1), await chatter(x2, d2)]
        big = "\U0001f600" * 15_000  # 60 kB on the wire
        sent = 0
        big_sent = 0
        pid = node.process.pid
        tick = 0
        peak = rss_bytes(pid)
        decided: float | None = None  # seconds into the flood when the server first closed a slow consumer
        closed: float | None = None  # ... and when the stuck socket was gone from the open count

        async def say(who: Chatter, content: str) -> None:
            nonlocal sent
            sent += 1
            key = f"m{sent}"
            sent_at[key] = time.monotonic()
            await who.ws.send({"type": "message", "content": content, "client_id": key})

        async def traffic(tick: int) -> None:
            """Every 100 ms: a line of small talk in two conversations, and half the time a large
            message to B (300 kB/s): light enough for a busy 2-core box, so that what is measured is
            the stuck reader's effect, not the box's capacity."""
            nonlocal big_sent
            for who in talkers:
                await say(who, f"small talk {tick}")
            if tick % 2 == 0:
                await say(sender, big)
                big_sent += 1
            await asyncio.sleep(0.1)

        async def phase(stop: Any) -> tuple[float, float]:
            """Traffic until `stop()`, watching the server; (its CPU seconds per second, start time)."""
            nonlocal tick, peak, decided, closed
            started, cpu_before = time.monotonic(), cpu_seconds(pid)
            while not stop(time.monotonic() - started):
                tick += 1
                await traffic(tick)
                if tick % 3 == 0:
                    peak = max(peak, rss_bytes(pid))
                    figures = (await api.get("/metrics")).body.decode()
                    if decided is None and metric(figures, "chat_slow_consumer_closes_total") >= 1:
                        decided = time.monotonic() - started
                    open_sockets = metric(figures, "chat_websockets_open", '{endpoint="conversation"}')
                    if decided is not None and closed is None and open_sockets == 6:
                        closed = time.monotonic() - started
            return (cpu_seconds(pid) - cpu_before) / (time.monotonic() - started), started

        # The same traffic first without the stuck reader: what this box gives right now.
        control_cpu, control_from = await phase(lambda elapsed: elapsed > 3.0)
        # B's second socket: a small receive window, and never read again after the handshake.
        stuck = await handshake(node.port, conversation(cid, b), rcvbuf=4096)
        await asyncio.sleep(0.1)
        baseline = peak = rss_bytes(pid)
        flood_cpu, flood_from = await phase(
            lambda elapsed: elapsed > 12 or (closed is not None and elapsed > closed + 1.0)
        )
        await wait_for(lambda: len(b_fast.ids) == big_sent and all(len(c.ids) == tick for c in listeners), 20)
        stuck.close()

        assert decided is not None and closed is not None, "the reader that never reads was never closed"
        assert closed <= 10.0, f"closed {closed:.1f}s after the flood began (decided at {decided:.1f}s)"
        assert peak - baseline < 50 * 2**20, f"server RSS grew by {(peak - baseline) / 2**20:.0f} MiB"
        # The stuck reader costs the server no work to speak of...
        assert flood_cpu < 1.5 * control_cpu + 0.05, (flood_cpu, control_cpu)
        # ...and the others no latency: their p99 stays under 100 ms. On a box too busy to give that
        # even without a stuck reader (other test runs), it stays within what the box gives.
        control = latencies_since(listeners, sent_at, control_from, flood_from)
        flood = latencies_since(listeners, sent_at, flood_from, math.inf)
        limit = 0.1 if p99(control) < 0.05 else max(0.1, 3 * p99(control))
        assert p99(flood) < limit, f"p99 {p99(flood) * 1000:.0f} ms; {p99(control) * 1000:.0f} ms before"
        # The other socket of the very same user got every message, in order.
        assert b_fast.ids == list(range(1, big_sent + 1))
    finally:
        node.stop()


# -- thousands of silent sockets ----------------------------------------------------------------------

SILENT = 2000


def raise_own_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= needed, "this test needs a higher hard NOFILE limit"


class SilentClient:
    """A socket that never says anything. A live one answers the server's pings, as browsers do on
    their own; a dead one (a phone that left coverage) never does. Both note how they were closed."""

    def __init__(self, ws: RawWs, *, answers_pings: bool) -> None:
        self.ws = ws
        self.answers_pings = answers_pings
        self.close_code: int | None = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            opcode, payload = await self.ws.recv(timeout=3600)
            if opcode == 0x9 and self.answers_pings:
                self.ws.send(0xA, payload)
            elif opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                return
            elif opcode == -1:
                self.close_code = self.close_code or 1006
                return


@pytest.mark.slow
async def test_two_thousand_silent_sockets_are_held_cheaply_and_the_dead_ones_reaped(tmp_path, mongo_url):
    raise_own_file_limit(3 * SILENT)  # the server process inherits it
    env = node_env(mongo_url, PING_INTERVAL="2")
    node = ServerProcess(tmp_path / "node", env).start()
    clients: list[SilentClient] = []
    try:
        assert node.process is not None
        users = await seed_users(mongo_url, env["MONGODB_DATABASE"], SILENT // 10 + 2)
        api = ApiClient(PortClient(node.port))

        async def open_sockets() -> float:
            figures = (await api.get("/metrics")).body.decode()
            return metric(figures, "chat_websockets_open", '{endpoint="notifications"}')

        assert await open_sockets() == 0
        baseline = rss_bytes(node.process.pid)
        # Ten sockets per user; a quarter of them dead. Opened a hundred at a time, each batch registered
        # before the next, as clients arrive at a busy node (not a storm: that is another test's).
        for batch in range(0, SILENT, 100):
            paths = [f"/ws/notifications/?token={token(users[i % (SILENT // 10)])}" for i in range(batch, batch + 100)]
            sockets = await asyncio.gather(*(RawWs.connect(node.port, path) for path in paths))
            clients.extend(SilentClient(ws, answers_pings=i % 4 != 3) for i, ws in enumerate(sockets))
            deadline = time.monotonic() + 20
            while await open_sockets() + sum(1 for c in clients if c.close_code) < len(clients):
                assert time.monotonic() < deadline, "the node stopped taking sockets"
                await asyncio.sleep(0.05)
            refused = [c.close_code for c in clients if c.close_code and (c.answers_pings or c.close_code != 1001)]
            assert not refused, f"sockets refused: {refused}"
        held = rss_bytes(node.process.pid) - baseline
        assert held < 100 * 2**20, f"{SILENT} silent sockets took {held / 2**20:.0f} MiB"

        # The node still answers at once, and two others can talk through it.
        t0 = time.monotonic()
        assert (await api.get("/livez")).status == 200 and time.monotonic() - t0 < 1.0
        a, b = users[-2:]
        cid = await insert_conversation(mongo_url, env["MONGODB_DATABASE"], a, b, 1)
        ws_a = await ws_connect(api, conversation(cid, a))
        ws_b = await ws_connect(api, conversation(cid, b))
        await ws_a.send({"type": "message", "content": "still there?"})
        assert (await ws_b.recv_type("message", timeout=10))["message"]["content"] == "still there?"

        # Two ping intervals without a pong (and a second's grace) end the dead ones with 1001; the
        # live ones stay, however long they keep quiet.
        live = [c for c in clients if c.answers_pings]
        dead = [c for c in clients if not c.answers_pings]
        await wait_for(lambda: all(c.close_code for c in dead), timeout=15)
        assert {c.close_code for c in dead} == {1001}
        deadline = time.monotonic() + 5
        while (still := await open_sockets()) != len(live) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the server drops each dead connection a second after its 1001
        assert still == len(live) and not any(c.close_code for c in live), still
    finally:
        for c in clients:
            c.task.cancel()
            c.ws.close()
        node.stop()


# -- ping floods --------------------------------------------------------------------------------------


async def test_an_application_ping_flood_is_rate_limited_then_closed_1008_and_harms_no_one(api, services):
    p = await pair(api, services)
    bystander = await join(api, p.cid, p.b)
    same_user = await join(api, p.cid, p.a)
    flooder = await join(api, p.cid, p.a)
    settings = services.settings
    started = time.monotonic()
    for _ in range(1000):
        flooder.conn.write_message('{"type":"ping"}')
    kinds: list[str] = []
    while (frame := await flooder.recv(timeout=10)) is not None:
        kinds.append(frame["type"] if frame["type"] != "error" else frame["code"])
    elapsed = time.monotonic() - started
    assert flooder.close_code == 1008
    assert kinds.count("pong") <= settings.frame_burst + settings.frame_rate * elapsed + 1
    assert kinds.count("rate_limited") == settings.rate_strikes_to_close
    assert set(kinds) == {"pong", "rate_limited"}
    for ws in (bystander, same_user):
        await ws.send({"type": "ping"})
        assert await ws.recv_type("pong") == {"type": "pong"}


@pytest.mark.parametrize("opcode", [0x9, 0xA], ids=["control pings", "unsolicited pongs"])
async def test_a_control_frame_flood_spends_the_frame_budget_and_ends_in_1008(api, services, opcode):
    """Tornado answers each ping with a pong before the application hears of it; a client that floods
    pings and never reads must not pile those pongs up in the server's memory."""
    p = await pair(api, services)
    bystander = await join(api, p.cid, p.b)
    flooder = await RawWs.connect(api.port, f"/ws/conversations/{p.cid}/?token={p.a.access}")
    await wait_for(lambda: services.connections.count(p.a.id) == 1)
    started = time.monotonic()
    for i in range(5000):
        flooder.send(opcode, i.to_bytes(4, "big") * 30)  # 120 bytes: near the largest control frame
    await flooder.writer.drain()
    frames = []
    while (frame := await flooder.recv(timeout=10))[0] not in (-1, 0x8):
        frames.append(frame[0])
    elapsed = time.monotonic() - started
    assert frame[0] == 0x8 and int.from_bytes(frame[1][:2], "big") == 1008, frame
    # Nothing more is answered after the close frame, and the connection is dropped soon after.
    assert await flooder.recv(timeout=3) == (-1, b"")
    settings = services.settings
    assert frames.count(0xA) <= settings.frame_burst + settings.frame_rate * elapsed + settings.rate_strikes_to_close
    await wait_for(lambda: services.connections.count(p.a.id) == 0)
    await bystander.send({"type": "ping"})
    assert await bystander.recv_type("pong") == {"type": "pong"}
    flooder.close()


# -- a node cut off by Redis ------------------------------------------------------------------------


async def test_a_node_cut_off_by_the_pubsub_output_buffer_limit_resubscribes_and_catches_up(tmp_path, mongo_url):
    """Redis disconnects a subscriber whose unread output passes client-output-buffer-limit (a burst on
    a busy channel, a node that stalls). The node must notice, subscribe again, and send its sockets
    what was published meanwhile: from MongoDB, in order, none twice."""
    server = RedisProcess(tmp_path / "redis")
    server.start()
    control = redis.asyncio.from_url(server.url)
    await control.config_set("client-output-buffer-limit", "pubsub 32kb 16kb 1")
    database, prefix = "t_" + uuid.uuid4().hex[:16], "f" + uuid.uuid4().hex[:6] + ":"
    nodes: list[Any] = []
    try:
        for name in ("n1", "n2"):
            sock, port = tornado.testing.bind_unused_port()
            settings = make_settings(
                tmp_path / name,
                port,
                mongodb_database=database,
                redis_url=server.url,
                redis_prefix=prefix,
                node_id=name,
                message_rate=1000.0,
                message_burst=1000,
            )
            services = await build_services(settings, mongo_url)
            http = tornado.httpserver.HTTPServer(make_app(services))
            http.add_sockets([sock])
            nodes.append((services, http, ApiClient(PortClient(port))))
        (one, _, api1), (two, _, api2) = nodes
        a, b = await api1.user("sender"), await api1.user("reader")
        cid = await make_conversation(one, a.id, b.id)
        reader = Chatter(await ws_connect(api2, f"/ws/conversations/{cid}/?token={b.access}"), {})
        await ws_connect(api2, f"/ws/notifications/?token={b.access}")  # node 2 alone takes user:<b>

        live: list[int] = []  # message ids node 2 heard from Redis itself
        hand_on = two.bus._handler

        def counting(channel: str, payload: bytes) -> None:
            if channel == f"conv:{cid}":
                live.append(orjson.loads(payload.partition(b"\n")[0]).get("s") or 0)
            hand_on(channel, payload)

        two.bus.set_handler(counting)
        sent = 0

        async def send(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                sent += 1
                stored = await api1.post(f"/api/conversations/{cid}/messages/", {"content": f"m{sent}"}, token=a.access)
                assert stored.status == 201, stored.body

        await send(5)
        await wait_for(lambda: len(reader.ids) == sent)
        flood = encode({"k": NOTIFICATION}, {"type": "notification", "notification": {"pad": "x" * 100_000}})
        cuts = 0
        for _ in range(3):
            cuts += 1
            reconnects = [two.bus.reconnects]
            await control.publish(prefix + f"user:{b.id}", flood)  # more than the limit in one go
            await wait_for(lambda: not two.bus.healthy, timeout=5)
            await send(10)  # stored while node 2 may be away from Redis
            await wait_for(lambda r=reconnects: two.bus.reconnects > r[0], timeout=10)
            await wait_for(lambda: len(reader.ids) >= sent, timeout=10)
            if len([s for s in live if s]) < sent:
                break  # node 2 missed some live: what it shows came from the catch-up
        assert [s for s in live if s] != list(range(1, sent + 1)), f"node 2 never missed a message in {cuts} cuts"
        await send(3)  # and live delivery works again afterwards
        await wait_for(lambda: len(reader.ids) >= sent, timeout=10)
        await asyncio.sleep(0.3)
        assert reader.ids == list(range(1, sent + 1))
    finally:
        for services, http, _ in nodes:
            http.stop()
            await services.close()
        await control.aclose()
        server.stop()
