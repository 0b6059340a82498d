"""Typing indicators expire on the server: silence, a sent message or a disconnect report `is_typing: false`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support import make_conversation
from tests.ws_helpers import join, messages, pair, wait_for

TIMEOUT_S = 0.5


# Tests of the other two causes use a timeout far beyond their waits, so the expiry cannot be what
# reports the stop.
LONG_S = 30.0
NOT_EXPIRY = pytest.mark.parametrize("settings_overrides", [{"typing_timeout_s": LONG_S}], indirect=True)


@pytest.fixture
def settings_overrides(request):
    return getattr(request, "param", {"typing_timeout_s": TIMEOUT_S})


def typing_frames(frames):
    return [f for f in frames if f["type"] == "typing"]


async def test_silent_typist_is_reported_stopped_after_the_timeout(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    b = await join(api, p.cid, p.b)
    loop = asyncio.get_running_loop()

    await b.send({"type": "typing", "is_typing": True})
    assert (await a.recv_type("typing"))["is_typing"] is True
    started = loop.time()
    stopped = await a.recv_type("typing", timeout=TIMEOUT_S + 3)
    elapsed = loop.time() - started
    assert stopped == {"type": "typing", "user_id": p.b.id, "username": p.b.username, "is_typing": False}
    assert TIMEOUT_S * 0.8 <= elapsed <= TIMEOUT_S + 1.5
    # Reported once, and never to the typist.
    assert typing_frames(await a.silent(TIMEOUT_S + 0.3)) == []
    assert typing_frames(await b.silent(0.05)) == []


async def test_repeated_typing_true_keeps_the_indicator_alive(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    b = await join(api, p.cid, p.b)

    async def keystrokes():
        # One every third of the timeout for twice the timeout: never silent long enough to expire.
        for _ in range(6):
            await b.send({"type": "typing", "is_typing": True})
            await asyncio.sleep(TIMEOUT_S / 3)

    typist = asyncio.ensure_future(keystrokes())
    during = typing_frames(await a.silent(2 * TIMEOUT_S - 0.1))
    await typist
    assert len(during) >= 4 and all(f["is_typing"] for f in during)
    while (await a.recv_type("typing", timeout=TIMEOUT_S + 1.5))["is_typing"]:
        pass


async def test_explicit_stop_is_relayed_and_not_repeated_by_the_expiry(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    b = await join(api, p.cid, p.b)
    await b.send({"type": "typing", "is_typing": True})
    await b.send({"type": "typing", "is_typing": False})
    assert [f["is_typing"] for f in typing_frames(await a.silent(TIMEOUT_S + 0.5))] == [True, False]


@NOT_EXPIRY
async def test_sending_a_message_reports_the_typist_stopped(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    b = await join(api, p.cid, p.b)
    await b.send({"type": "typing", "is_typing": True})
    assert (await a.recv_type("typing"))["is_typing"] is True
    await b.send({"type": "message", "content": "done typing"})
    frames: list[dict[str, Any]] = []
    while len([f for f in frames if f["type"] in ("typing", "message")]) < 2:
        frames.append(await a.recv())
    assert typing_frames(frames) == [
        {"type": "typing", "user_id": p.b.id, "username": p.b.username, "is_typing": False}
    ]
    assert (await messages(b, 1))[0]["content"] == "done typing"
    # Said once: nothing is left to expire later.
    assert not services.typing.is_typing(p.cid, p.b.id)


@NOT_EXPIRY
async def test_a_message_sent_over_rest_also_stops_the_indicator(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    b = await join(api, p.cid, p.b)
    await b.send({"type": "typing", "is_typing": True})
    assert (await a.recv_type("typing"))["is_typing"] is True
    sent = await api.post(f"/api/conversations/{p.cid}/messages/", {"content": "from REST"}, token=p.b.access)
    assert sent.status == 201
    assert (await a.recv_type("typing"))["is_typing"] is False
    assert not services.typing.is_typing(p.cid, p.b.id)


@NOT_EXPIRY
async def test_disconnecting_reports_the_typist_stopped_once_their_last_socket_leaves(api, services):
    p = await pair(api, services)
    a = await join(api, p.cid, p.a)
    b1 = await join(api, p.cid, p.b)
    b2 = await join(api, p.cid, p.b)
    await b1.send({"type": "typing", "is_typing": True})
    assert (await a.recv_type("typing"))["is_typing"] is True

    # The user is still in the conversation through another socket: still typing.
    b1.close()
    await wait_for(lambda: services.connections.count(p.b.id) == 1)
    assert typing_frames(await a.silent(0.2)) == []
    assert services.typing.is_typing(p.cid, p.b.id)

    b2.close()
    stopped = await a.recv_type("typing")
    assert stopped == {"type": "typing", "user_id": p.b.id, "username": p.b.username, "is_typing": False}
    assert not services.typing.is_typing(p.cid, p.b.id)


async def test_typing_in_one_conversation_is_not_shown_in_another(api, services):
    p = await pair(api, services)
    carol = await api.user("carol")
    other_cid = await make_conversation(services, p.b.id, carol.id)
    a = await join(api, p.cid, p.a)
    c = await join(api, other_cid, carol)
    b = await join(api, other_cid, p.b)
    await b.send({"type": "typing", "is_typing": True})
    assert (await c.recv_type("typing"))["user_id"] == p.b.id
    assert typing_frames(await a.silent(0.3)) == []


async def test_a_typing_frame_is_relayed_without_waiting_once_the_typists_name_is_known(api, services):
    p = await pair(api, services)
    ws_b = await join(api, p.cid, p.b)
    # The first frame of a typist reads their name; from then on a typing frame is handled in the call
    # that receives it: no Task, no wait on the store.
    first = services.typing.update(p.cid, p.a.id, True)
    assert first is None or asyncio.iscoroutine(first)
    if first is not None:
        await first
    tasks_before = len(asyncio.all_tasks())
    assert services.typing.update(p.cid, p.a.id, False) is None
    assert services.typing.update(p.cid, p.a.id, True) is None
    assert len(asyncio.all_tasks()) == tasks_before
    relayed = typing_frames([await ws_b.recv_type("typing") for _ in range(3)])
    assert [f["is_typing"] for f in relayed] == [True, False, True]
    assert relayed[0]["username"] == p.a.username
