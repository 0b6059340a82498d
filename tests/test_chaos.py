"""Chaos with real processes: a node killed with SIGKILL, Redis restarted, MongoDB gone for a while, each
while people chat across two nodes.

The clients behave as the documented client does: one message at a time with a `client_id`, resent with
the same `client_id` until the server echoes it (the echo is the acknowledgement), and on any lost
socket a reconnect to whichever node answers with `?after=<last id seen>`. Afterwards every acknowledged
message is in the history exactly once, in each sender's order, and every client saw every message
exactly once and in order.

(tests/test_cluster_faults.py covers presence when a node dies and REST sends across a Redis restart.)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
import tornado.websocket

from services.storage.embedded import EmbeddedMongo
from tests.processes import RedisProcess, ServerProcess, insert_conversation, node_env
from tests.support import ApiClient, PortClient, TestUser, WsClient, ws_connect

pytestmark = pytest.mark.slow

PAUSE_S = 0.02  # between one acknowledged message and the next, per socket client
REST_SENDERS = 4  # per conversation, besides its two socket clients


class Closed(Exception):
    pass


class Chatter:
    """One participant with one conversation socket, sending and reading until told to stop."""

    def __init__(self, name: str, user: TestUser, cid: int, nodes: list[ServerProcess]) -> None:
        self.name = name
        self.user = user
        self.cid = cid
        self.nodes = nodes  # the first is this client's own; the others are where it goes when that fails
        self.seen: list[int] = []
        self.violations: list[str] = []
        self.sent: list[str] = []  # client_ids, in sending order
        self.acked: dict[str, int] = {}  # client_id -> message id
        self.errors: Counter[str] = Counter()
        self.acked_at: dict[str, float] = {}
        self.connects = 0
        self.ws: WsClient | None = None
        self.stop = asyncio.Event()

    # -- the socket -----------------------------------------------------------------------------------

    async def connect(self) -> WsClient:
        delay = 0.1
        while True:
            for node in self.nodes:
                if node.process is None or node.process.poll() is not None:
                    continue
                after = self.seen[-1] if self.seen else 0
                path = f"/ws/conversations/{self.cid}/?token={self.user.access}&after={after}"
                try:
                    ws = await ws_connect(ApiClient(PortClient(node.port)), path)
                except OSError:
                    continue
                self.connects += 1
                return ws
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)

    async def next_frame(self, timeout: float) -> dict[str, Any] | None:
        """The next frame (message frames are recorded on the way); None on timeout; Closed when the
        socket is gone (it is then reopened by the caller)."""
        assert self.ws is not None
        try:
            frame = await self.ws.recv(timeout)
        except TimeoutError:
            return None
        if frame is None:
            self.ws = None
            raise Closed
        if frame["type"] == "message":
            mid = frame["message"]["id"]
            if self.seen and mid <= self.seen[-1]:
                self.violations.append(f"{self.name}: id {mid} after {self.seen[-1]}")
            else:
                self.seen.append(mid)
            key = frame["message"].get("client_id")
            if key is not None and key.startswith(self.name + "-") and key not in self.acked:
                self.acked[key] = mid
                self.acked_at[key] = time.monotonic()
        return frame  # type: ignore[no-any-return]

    # -- the client's loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        pending: str | None = None
        while pending is not None or not self.stop.is_set():
            if pending is None:
                pending = f"{self.name}-{len(self.sent) + 1}"
                self.sent.append(pending)
            try:
                if self.ws is None:
                    self.ws = await self.connect()
                if pending in self.acked:  # acknowledged by the backlog of a resumed socket
                    pending = None
                    continue
                await self.ws.send({"type": "message", "content": pending, "client_id": pending})
                outcome = await self._outcome(pending)
            except (Closed, tornado.websocket.WebSocketClosedError):
                self.ws = None
                continue
            if outcome == "acked":
                pending = None
                await asyncio.sleep(PAUSE_S)
            else:
                await asyncio.sleep(0.2)  # refused (store unavailable...): the same client_id again later

    async def _outcome(self, key: str) -> str:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            frame = await self.next_frame(timeout=max(0.01, deadline - time.monotonic()))
            if frame is None:
                break
            if key in self.acked:
                return "acked"
            if frame["type"] == "error" and frame.get("client_id") == key:
                self.errors[frame["code"]] += 1
                return "refused"
        return "silent"

    async def read_until(self, last_id: int, timeout: float = 20) -> None:
        """Keep reading (reconnecting if need be) until message `last_id` has been seen."""
        deadline = time.monotonic() + timeout
        while (not self.seen or self.seen[-1] < last_id) and time.monotonic() < deadline:
            try:
                if self.ws is None:
                    self.ws = await self.connect()
                await self.next_frame(timeout=0.5)
            except Closed:
                continue


class RestSender:
    """More load: the same users also post over REST, several at once, each one message at a time,
    retried with the same client_id (against the other node when its own is gone) until answered."""

    def __init__(self, name: str, user: TestUser, cid: int, nodes: list[ServerProcess]) -> None:
        self.name = name
        self.user = user
        self.cid = cid
        self.nodes = nodes
        self.sent: list[str] = []
        self.acked: dict[str, int] = {}
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            key = f"{self.name}-{len(self.sent) + 1}"
            self.sent.append(key)
            while key not in self.acked:
                for node in self.nodes:
                    if node.process is None or node.process.poll() is not None:
                        continue
                    api = ApiClient(PortClient(node.port))
                    body = {"content": key, "client_id": key}
                    try:
                        answer = await api.post(
                            f"/api/conversations/{self.cid}/messages/", body, token=self.user.access
                        )
                    except (OSError, tornado.httpclient.HTTPClientError):
                        continue
                    if answer.status in (200, 201):
                        self.acked[key] = answer.body["id"]
                        break
                else:
                    await asyncio.sleep(0.2)


async def history(api: ApiClient, cid: int, token: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while True:
        after = messages[-1]["id"] if messages else 0
        page = await api.get(f"/api/conversations/{cid}/messages/?after={after}&limit=100", token=token)
        assert page.status == 200, page.body
        messages.extend(page.body["results"])
        if not page.body["has_more"]:
            return messages


class Cluster:
    """Two nodes sharing one MongoDB and one Redis, and two conversations, each across both nodes."""

    def __init__(self, tmp_path: Path, mongo_url: str, redis: RedisProcess, **env: str) -> None:
        self.tmp_path = tmp_path
        self.mongo_url = mongo_url
        self.redis = redis
        self.env = node_env(
            mongo_url,
            REDIS_URL=redis.url,
            PRESENCE_TTL="3",
            HEARTBEAT_INTERVAL="0.5",
            HOLE_TIMEOUT="1",
            MESSAGE_RATE="1000",
            MESSAGE_BURST="1000",
            **env,
        )
        self.database = self.env["MONGODB_DATABASE"]
        self.nodes: list[ServerProcess] = []
        self.chatters: list[Chatter] = []
        self.rest: list[RestSender] = []
        self.tasks: list[asyncio.Future[None]] = []

    async def start(self) -> None:
        for name in ("n1", "n2"):
            self.nodes.append(ServerProcess(self.tmp_path / name, {**self.env, "NODE_ID": name}).start())
        one, two = self.nodes
        api = ApiClient(PortClient(one.port))
        for pair in range(2):
            a, b = await api.user(f"a{pair}"), await api.user(f"b{pair}")
            cid = await insert_conversation(self.mongo_url, self.database, a.id, b.id, 700 + pair)
            # Each conversation spans both nodes, each node holds a sender of each conversation.
            first, second = (one, two) if pair == 0 else (two, one)
            self.chatters.append(Chatter(f"a{pair}", a, cid, [first, second]))
            self.chatters.append(Chatter(f"b{pair}", b, cid, [second, first]))
            for i in range(REST_SENDERS):
                user, nodes = (a, [first, second]) if i % 2 else (b, [second, first])
                self.rest.append(RestSender(f"r{pair}{i}", user, cid, nodes))
        for chatter in self.chatters:
            chatter.ws = await chatter.connect()
        self.tasks = [asyncio.ensure_future(c.run()) for c in self.senders()]

    def senders(self) -> list[Chatter | RestSender]:
        return [*self.chatters, *self.rest]

    def api(self) -> ApiClient:
        node = next(n for n in self.nodes if n.process is not None and n.process.poll() is None)
        return ApiClient(PortClient(node.port))

    async def finish(self, timeout: float = 30) -> None:
        """Stop sending, wait for every message to be acknowledged, then check everything."""
        for sender in self.senders():
            sender.stop.set()
        done, _ = await asyncio.wait(self.tasks, timeout=timeout)
        assert len(done) == len(self.tasks), [c.sent[-1] for c in self.chatters if c.sent[-1] not in c.acked]
        for task in done:
            task.result()
        api = self.api()
        for cid in sorted({c.cid for c in self.chatters}):
            members = [c for c in self.chatters if c.cid == cid]
            stored = await history(api, cid, members[0].user.access)
            ids = [m["id"] for m in stored]
            assert ids == sorted(set(ids)), "history out of order or with repeats"
            keys = [m["client_id"] for m in stored if m.get("client_id")]
            assert len(keys) == len(set(keys)), Counter(keys).most_common(3)
            by_key = {m["client_id"]: m["id"] for m in stored}
            for sender in [s for s in self.senders() if s.cid == cid]:
                # Every acknowledged message is stored once, under the id its echo (or answer) carried,
                # in the sender's order; nothing was sent that is not acknowledged.
                assert sender.acked == {k: by_key.get(k) for k in sender.acked}, sender.name
                assert set(sender.sent) == set(sender.acked), sender.name
                mine = [k for k in keys if k.startswith(sender.name + "-")]
                assert mine == sender.sent, sender.name
            for chatter in members:
                # Every client saw every stored message once, in order, across all its reconnections.
                await chatter.read_until(ids[-1])
                assert not chatter.violations, chatter.violations[:5]
                assert chatter.seen == ids, (chatter.name, set(ids) ^ set(chatter.seen))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for chatter in self.chatters:
            if chatter.ws is not None:
                chatter.ws.close()
        for node in self.nodes:
            node.stop()


@pytest.fixture
def redis(tmp_path: Path) -> Any:
    server = RedisProcess(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def acked_between(cluster: Cluster, start: float, end: float) -> int:
    return sum(1 for c in cluster.chatters for t in c.acked_at.values() if start < t < end)


async def traffic_resumes(cluster: Cluster, since: float, within: float = 10.0) -> float:
    """Seconds from `since` until every socket client has had a message acknowledged again."""
    deadline = since + within
    while not all(any(t > since for t in c.acked_at.values()) for c in cluster.chatters):
        assert time.monotonic() < deadline, "traffic did not resume"
        await asyncio.sleep(0.05)
    return time.monotonic() - since


async def test_sigkill_of_a_node_under_load_loses_and_repeats_nothing(tmp_path, mongo_url, redis):
    cluster = Cluster(tmp_path, mongo_url, redis)
    try:
        await cluster.start()
        await asyncio.sleep(2.0)
        cluster.nodes[1].kill()
        await traffic_resumes(cluster, time.monotonic())
        await asyncio.sleep(1.0)
        await cluster.finish()
        # The clients of the dead node moved to the other one, resuming where they were.
        assert all(c.connects >= 2 for c in cluster.chatters if c.nodes[0] is cluster.nodes[1])
    finally:
        await cluster.close()


async def test_redis_restart_under_socket_traffic_loses_and_repeats_nothing(tmp_path, mongo_url, redis):
    cluster = Cluster(tmp_path, mongo_url, redis)
    try:
        await cluster.start()
        await asyncio.sleep(1.5)
        redis.stop()
        await asyncio.sleep(1.0)
        redis.start_same_port()
        await traffic_resumes(cluster, time.monotonic())
        await asyncio.sleep(1.0)
        await cluster.finish()
    finally:
        await cluster.close()


async def test_mongodb_gone_for_a_while_sends_are_refused_unacknowledged_then_all_land_once(tmp_path, redis):
    store = EmbeddedMongo(tmp_path / "mongo")  # its own: the session's store must not be disturbed
    store.start()
    # Calls to the absent store give up after 1 s instead of 2 (the default), to keep the test short.
    cluster = Cluster(tmp_path, store.url, redis, MONGODB_TIMEOUT_MS="1000")
    try:
        await cluster.start()
        await asyncio.sleep(1.5)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, store.stop)
        down_at = time.monotonic()
        await asyncio.sleep(2.0)

        # The nodes stay up, say they are not ready, and refuse sends without acknowledging them; a
        # socket opened now is closed 1013 (try again later: the seed's client retries it), not left hanging.
        async def while_down(node: ServerProcess) -> None:
            api, chatter = ApiClient(PortClient(node.port)), cluster.chatters[0]
            assert (await api.get("/livez")).status == 200
            assert (await api.get("/readyz")).status == 503
            late = await ws_connect(api, f"/ws/conversations/{chatter.cid}/?token={chatter.user.access}")
            assert (await late.closed(timeout=10))[0] == 1013

        await asyncio.gather(*(while_down(node) for node in cluster.nodes))
        up_at = time.monotonic()
        restarted = EmbeddedMongo(tmp_path / "mongo", port=store.port)
        await loop.run_in_executor(None, restarted.start)
        try:
            # A message stored just before the store went away may still be echoed; none after that.
            assert acked_between(cluster, down_at + 1.0, up_at) == 0
            assert sum(c.errors["unavailable"] for c in cluster.chatters) > 0
            await traffic_resumes(cluster, time.monotonic())
            await asyncio.sleep(1.0)
            await cluster.finish()
            assert all(node.process is not None and node.process.poll() is None for node in cluster.nodes)
        finally:
            await cluster.close()
            await loop.run_in_executor(None, restarted.stop)
    finally:
        await cluster.close()
        store.stop()
