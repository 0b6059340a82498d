"""Operations: Prometheus metrics, structured logs, request ids, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import ProcessCluster, insert_conversation, process_cluster
from tests.support import ApiClient, PortClient, ws_connect
from tests.ws_helpers import join, pair

# A scrape's samples by (name, sorted label pairs).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def scrape(api: ApiClient) -> Samples:
    r = await api.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    return samples(r.body.decode() if isinstance(r.body, bytes) else json.dumps(r.body))


async def test_metrics_move_with_traffic(api, services):
    before = await scrape(api)
    p = await pair(api, services)
    ws_a = await join(api, p.cid, p.a)
    ws_b = await join(api, p.cid, p.b)  # past its status frame: b has joined, a message now reaches it
    await ws_a.send({"type": "message", "content": "hi"})
    await ws_b.recv_type("message")
    await ws_a.send("not json")
    assert (await ws_a.closed())[0] == 4003
    await asyncio.sleep(0.1)
    after = await scrape(api)

    def value(data: Samples, name: str, **labels: str) -> float:
        return data.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value(after, "chat_messages_stored_total") == value(before, "chat_messages_stored_total") + 1
    assert value(after, "chat_frames_received_total", type="message") == 1
    assert value(after, "chat_frames_received_total", type="invalid") == 1
    assert value(after, "chat_websocket_connections_total", endpoint="conversation") == 2
    assert value(after, "chat_websockets_open", endpoint="conversation") == 1
    assert value(after, "chat_websocket_closes_total", code="4003") == 1
    assert value(after, "chat_frames_sent_total", type="message") >= 2
    assert value(after, "chat_publish_to_deliver_seconds_count") >= 1
    assert value(after, "chat_http_requests_total", status="2xx") >= 4
    # The first scrape counts as a probe, not as an answer of the API (no error-rate alert for a 503 /readyz).
    assert value(after, "chat_http_requests_total", status="probe") >= 1
    assert value(after, "process_resident_memory_bytes") > 0


async def test_request_id_echoed_and_generated(api):
    r = await api.get("/livez", headers={"X-Request-Id": "abc-123"})
    assert r.headers["X-Request-Id"] == "abc-123"
    r = await api.get("/livez", headers={"X-Request-Id": "bad id with spaces"})
    assert r.headers["X-Request-Id"] != "bad id with spaces" and len(r.headers["X-Request-Id"]) == 16
    r = await api.get("/nope/")
    assert r.status == 404 and r.headers["X-Request-Id"]


@pytest.fixture
def cluster(tmp_path, mongo_url) -> Iterator[ProcessCluster]:
    """Nodes that log JSON, with a short presence TTL so that a node gone is noticed within the test."""
    with process_cluster(tmp_path, mongo_url, PRESENCE_TTL="3", HEARTBEAT_INTERVAL="0.5", LOG_FORMAT="json") as started:
        yield started


@pytest.mark.slow
async def test_sigterm_closes_sockets_1001_and_hands_presence_over(cluster: ProcessCluster):
    n1, n2 = cluster.start_node("n1"), cluster.start_node("n2")
    api1, api2 = ApiClient(PortClient(n1.port)), ApiClient(PortClient(n2.port))
    watcher_user = await api1.user("w")
    both = await api1.user("both")
    only2 = await api1.user("only2")
    cids = [
        await insert_conversation(cluster.mongo_url, cluster.database, watcher_user.id, other.id, 800_000 + other.id)
        for other in (both, only2)
    ]
    w_both = await ws_connect(api1, f"/ws/conversations/{cids[0]}/?token={watcher_user.access}")
    w_only2 = await ws_connect(api1, f"/ws/conversations/{cids[1]}/?token={watcher_user.access}")
    await ws_connect(api1, f"/ws/notifications/?token={both.access}")
    on_n2 = await ws_connect(api2, f"/ws/notifications/?token={both.access}")
    conv_n2 = await ws_connect(api2, f"/ws/conversations/{cids[1]}/?token={only2.access}")
    for ws in (on_n2, conv_n2):  # joined (registered) before the signal: pongs come after the join
        await ws.send({"type": "ping"})
        await ws.recv_type("pong")
    for watcher in (w_both, w_only2):  # the greeting: offline or online, depending on who joined first
        assert (await watcher.recv_type("status", timeout=5))["status"] in ("offline", "online")

    assert (await api2.get("/livez")).status == 200 and (await api2.get("/readyz")).status == 200
    started = time.monotonic()
    n2.signal(signal.SIGTERM)
    assert (await on_n2.closed(timeout=10))[0] == 1001
    assert (await conv_n2.closed(timeout=10))[0] == 1001
    assert n2.wait(15) == 0
    assert time.monotonic() - started < 10
    # only2 had no other socket: reported offline at once; `both` still has one on n1: nothing.
    offline = await w_only2.recv_type("status", timeout=5)
    while offline["status"] != "offline":
        offline = await w_only2.recv_type("status", timeout=5)
    assert offline["user_id"] == only2.id
    frames = await w_both.silent(1.5)
    assert not [f for f in frames if f["type"] == "status" and f["status"] == "offline"]

    # Logs are one JSON object per line naming the node, and never contain a token; probes stay quiet.
    for line in n2.log().splitlines():
        entry = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= set(entry) and entry["node"] == "n2", entry
        assert not entry.get("path", "").startswith(("/livez", "/readyz")), entry
        # The sockets released unread at the exit leave no trace: no error, no task destroyed pending.
        assert entry["level"] not in ("error", "critical") and "destroyed" not in entry["msg"], entry
    # A socket is logged when it ends; at a shutdown the node says how many it closed instead.
    assert '"msg":"shutdown: closing 2 sockets with 1001"' in n2.log()
    assert "socket closed" not in n2.log()
    w_both.close()
    for _ in range(50):
        if f"socket closed: /ws/conversations/{cids[0]}/?token=[redacted]" in n1.log():
            break
        await asyncio.sleep(0.1)
    assert f"socket closed: /ws/conversations/{cids[0]}/?token=[redacted]" in n1.log()
    assert watcher_user.access not in n1.log() and both.access not in n2.log()


async def test_wrong_method_answers_405_with_allow(api):
    r = await api.request("DELETE", "/api/token/")
    assert r.status == 405 and r.error_code == "method_not_allowed"
    assert r.headers["Allow"] == "POST"
