"""Rates are checked when frames arrive: a client that keeps sending at the documented rates while MongoDB
stalls is never refused for a burst it did not send, nor closed 1008, when the frames that waited are
handled together once the store answers again."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from handlers import sockets
from services.storage.embedded import EmbeddedMongo
from tests.processes import pause_process
from tests.support import ApiClient, TestUser, WsClient, make_conversation, ws_connect

# One message a second at most, none ahead (burst 1): frames handled together would be refused at once.
STRICT = {
    "message_rate": 1.0,
    "message_burst": 1,
    "frame_rate": 2.0,
    "frame_burst": 2,
    "rate_strikes_to_close": 3,
    "mongodb_timeout_ms": 1000,
}
SEND_EVERY_S = 1.25  # within the rate


@pytest.fixture
def mongo_url(own_store: EmbeddedMongo) -> str:
    return own_store.url


@pytest.mark.parametrize("settings_overrides", [STRICT], indirect=True)
async def test_sends_at_the_documented_rate_through_a_store_stall_are_never_rate_limited(api, services, own_store):
    alice, bob = await api.user("alice"), await api.user("bob")
    cid = await make_conversation(services, alice.id, bob.id)
    ws = await ws_connect(api, f"/ws/conversations/{cid}/?token={alice.access}")
    await ws.send({"type": "message", "content": "before", "client_id": "c0"})
    assert (await ws.recv_type("message"))["message"]["client_id"] == "c0"

    assert own_store.process is not None
    pid = own_store.process.pid
    pause_process(pid)
    try:
        for n in range(1, 6):  # 6 s of sending at the documented rate, all while the store is stalled
            await asyncio.sleep(SEND_EVERY_S)
            await ws.send({"type": "message", "content": f"during {n}", "client_id": f"c{n}"})
        await asyncio.sleep(1.0)
    finally:
        os.kill(pid, signal.SIGCONT)
    await asyncio.sleep(SEND_EVERY_S)
    await ws.send({"type": "message", "content": "after", "client_id": "c6"})

    # Every send is answered, stored (echoed) or refused because the store was away; none for its rate.
    answered: dict[str, str] = {}
    while len(answered) < 6:
        frame = await ws.recv(timeout=30)
        assert frame is not None, f"closed {ws.close_code} with {answered}"
        if frame["type"] == "message":
            answered[frame["message"]["client_id"]] = "stored"
        elif frame["type"] == "error":
            assert frame["code"] != "rate_limited", frame
            answered[frame["client_id"]] = frame["code"]
    assert set(answered) == {f"c{n}" for n in range(1, 7)}
    assert answered["c6"] == "stored", answered
    assert set(answered.values()) <= {"stored", "unavailable"}, answered
    # Handled in the order they were sent: what was stored has ids in that order.
    stored = [
        m["client_id"]
        for m in (await api.get(f"/api/conversations/{cid}/messages/", token=alice.access)).body["results"]
    ]
    assert stored == sorted(stored, key=lambda c: int(c[1:])) and stored[-1] == "c6", stored
    assert ws.close_code is None


@pytest.mark.parametrize("settings_overrides", [{"mongodb_timeout_ms": 1000}], indirect=True)
async def test_frames_waiting_on_a_stalled_store_are_bounded_and_the_client_told_to_come_back(
    api, services, own_store, monkeypatch
):
    monkeypatch.setattr(sockets, "MAX_WAITING_FRAMES", 3)
    _alice, _cid, ws = await alice_in_a_conversation(api, services)
    assert own_store.process is not None
    pause_process(own_store.process.pid)
    try:
        # One waits for the store, three queue behind it; pings are answered meanwhile, not queued.
        for n in range(4):
            await ws.send({"type": "message", "content": f"m{n}", "client_id": f"c{n}"})
        await ws.send({"type": "ping"})
        assert await ws.recv_type("pong") == {"type": "pong"}
        await ws.send({"type": "message", "content": "one too many"})
        code, reason = await ws.closed(timeout=10)
    finally:
        os.kill(own_store.process.pid, signal.SIGCONT)
    # Retryable: the node is not keeping up, the client did nothing wrong.
    assert (code, reason) == (1013, "server busy")


TIMEOUT_MS = 1500


async def alice_in_a_conversation(api: ApiClient, services: Any) -> tuple[TestUser, int, WsClient]:
    """Alice, her conversation with Bob, and her socket on it (past its first `status` frame)."""
    alice, bob = await api.user("alice"), await api.user("bob")
    cid = await make_conversation(services, alice.id, bob.id)
    ws = await ws_connect(api, f"/ws/conversations/{cid}/?token={alice.access}")
    await ws.recv_type("status")
    return alice, cid, ws


@pytest.mark.parametrize("settings_overrides", [{"mongodb_timeout_ms": TIMEOUT_MS}], indirect=True)
async def test_a_stalled_store_fails_rest_calls_and_sends_after_mongodb_timeout_ms(api, services, own_store):
    alice, cid, ws = await alice_in_a_conversation(api, services)
    assert own_store.process is not None
    pause_process(own_store.process.pid)
    waits: dict[str, float] = {}
    try:
        loop = asyncio.get_running_loop()
        for name, path in (("history", f"/api/conversations/{cid}/messages/"), ("profile", "/api/users/me/")):
            started = loop.time()
            assert (await api.get(path, token=alice.access)).status == 503
            waits[name] = loop.time() - started
        started = loop.time()
        sent = await api.post(f"/api/conversations/{cid}/messages/", {"content": "rest"}, token=alice.access)
        assert sent.status == 503 and sent.body["error"]["code"] == "unavailable"
        waits["rest send"] = loop.time() - started
        started = loop.time()
        await ws.send({"type": "message", "content": "socket", "client_id": "s1"})
        refused = await ws.recv_type("error", timeout=30)
        assert refused["code"] == "unavailable" and refused["client_id"] == "s1"
        waits["socket send"] = loop.time() - started
    finally:
        os.kill(own_store.process.pid, signal.SIGCONT)
    # The setting is the whole budget of a call (it used to be the setting plus a second), with slack for
    # a loaded machine well below that second.
    assert all(TIMEOUT_MS / 1000 - 0.1 < s < TIMEOUT_MS / 1000 + 0.7 for s in waits.values()), waits
