"""`last_seen` is written LAST_SEEN_DELAY after a user went offline, unless they are back online by then,
for the users who went offline together in one write; when the store does not take it, one warning says
so for all of them (a line per user flooded the log of a node whose store timed out under a reconnect
storm); the offline announcement goes out at once."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import pymongo.errors
import pytest

from services.realtime.presence import Transition
from tests.support import ws_connect
from tests.ws_helpers import conv_path, join, pair, wait_for


async def test_last_seen_of_users_offline_together_is_one_write_and_one_warning_when_it_fails(
    api: Any, services: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    p, *more = [await pair(api, services) for _ in range(3)]
    listening = await join(api, p.cid, p.a)
    writes: list[int] = []

    async def store_away(requests: list[Any], **kwargs: Any) -> None:
        writes.append(len(requests))
        raise pymongo.errors.ServerSelectionTimeoutError("store away")

    monkeypatch.setattr(services.store.users, "bulk_write", store_away)
    now = dt.datetime.now(dt.UTC)
    others = [p.b.id, *(user.id for q in more for user in (q.a, q.b))]
    announcer = services.presence.announcer
    monkeypatch.setattr(announcer, "last_seen_delay_s", 0.2)
    with caplog.at_level(logging.WARNING, logger="chat.presence"):
        await asyncio.gather(*(announcer.on_transition(Transition(user, False, now, None, [p.cid])) for user in others))
        assert writes == []  # not before the delay
        await wait_for(lambda: writes == [len(others)])
        await wait_for(lambda: not announcer._last_seen_flushes)
    warnings = [r.getMessage() for r in caplog.records if "last_seen" in r.getMessage()]
    assert warnings == [f"could not record last_seen of {len(others)} users: store unavailable"]
    statuses = [await listening.recv_type("status") for _ in others]
    assert {"user_id": p.b.id, "status": "offline"}.items() <= next(
        s for s in statuses if s["user_id"] == p.b.id
    ).items()


async def test_the_offline_announcement_does_not_wait_for_the_last_seen_write(
    api: Any, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node handing thousands of users over at its SIGTERM writes their last_seen in writes that take the
    store seconds; the announcements waited for them and were cut short when the node stopped waiting."""
    p = await pair(api, services)
    listening = await join(api, p.cid, p.a)
    release = asyncio.Event()
    real_bulk_write = services.store.users.bulk_write

    async def slow_store(requests: list[Any], **kwargs: Any) -> Any:
        await release.wait()
        return await real_bulk_write(requests, **kwargs)

    monkeypatch.setattr(services.store.users, "bulk_write", slow_store)
    at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    announcer = services.presence.announcer
    monkeypatch.setattr(announcer, "last_seen_delay_s", 0.1)
    await announcer.on_transition(Transition(p.b.id, False, at, None, [p.cid]))
    status = await listening.recv_type("status")
    assert (status["user_id"], status["status"]) == (p.b.id, "offline")
    await wait_for(lambda: bool(announcer._last_seen_flushes))  # the write is under way, and waits
    release.set()
    await wait_for(lambda: not announcer._last_seen_flushes)
    doc = await services.store.users.find_one({"_id": p.b.id}, {"last_seen": 1})
    assert doc["last_seen"] == at


async def test_a_user_who_just_left_is_shown_with_this_visits_last_seen_while_it_is_being_written(
    api: Any, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A joining socket reads the others' documents beside its other reads, and a busy store writes
    last_seen late: either way the document can predate the visit that just ended, and the frame must
    not show the last_seen of an earlier one."""
    p = await pair(api, services)
    earlier = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    await services.store.users.update_one({"_id": p.b.id}, {"$set": {"last_seen": earlier}})
    release = asyncio.Event()
    writes: list[int] = []
    real_bulk_write = services.store.users.bulk_write

    async def slow_store(requests: list[Any], **kwargs: Any) -> Any:
        writes.append(len(requests))
        await release.wait()
        return await real_bulk_write(requests, **kwargs)

    monkeypatch.setattr(services.store.users, "bulk_write", slow_store)
    visiting = await join(api, p.cid, p.b)
    left_at = dt.datetime.now(dt.UTC)
    visiting.close()
    await wait_for(lambda: writes == [1])  # B's last_seen is on its way to the store, not there yet

    joining = await ws_connect(api, conv_path(p.cid, p.a))
    status = await joining.recv()
    assert status is not None and (status["type"], status["user_id"], status["status"]) == ("status", p.b.id, "offline")
    assert dt.datetime.fromisoformat(status["timestamp"]) >= left_at - dt.timedelta(seconds=1)
    release.set()
    await wait_for(lambda: not services.presence.announcer._last_seen)  # written, and no longer held
    doc = await services.store.users.find_one({"_id": p.b.id}, {"last_seen": 1})
    assert doc["last_seen"] >= left_at - dt.timedelta(seconds=1)


async def test_a_user_back_online_before_the_delay_gets_no_last_seen_write(
    api: Any, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconnect: the socket drops and the client is back within the moment. Its last_seen would be
    replaced by the next one anyway, and writing it took the store's time from the reconnects' reads."""
    p, q = await pair(api, services), await pair(api, services)
    announcer = services.presence.announcer
    monkeypatch.setattr(announcer, "last_seen_delay_s", 0.3)
    written: list[int] = []
    real_bulk_write = services.store.users.bulk_write

    async def recording(requests: list[Any], **kwargs: Any) -> Any:
        written.append(len(requests))
        return await real_bulk_write(requests, **kwargs)

    monkeypatch.setattr(services.store.users, "bulk_write", recording)
    reconnecting, leaving = await join(api, p.cid, p.b), await join(api, q.cid, q.b)
    reconnecting.close()
    leaving.close()
    await wait_for(lambda: {p.b.id, q.b.id} <= announcer._last_seen.keys())
    back = await join(api, p.cid, p.b)
    await wait_for(lambda: written == [1])
    await wait_for(lambda: not announcer._last_seen_flushes)
    assert p.b.id not in announcer._last_seen
    docs = {d["_id"]: d.get("last_seen") async for d in services.store.users.find({"_id": {"$in": [p.b.id, q.b.id]}})}
    assert docs[p.b.id] is None and docs[q.b.id] is not None
    back.close()


async def test_a_profile_shows_the_last_seen_still_waiting_for_its_delay(api: Any, services: Any) -> None:
    p = await pair(api, services)
    earlier = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    await services.store.users.update_one({"_id": p.b.id}, {"$set": {"last_seen": earlier}})
    assert services.presence.announcer.last_seen_delay_s >= 1.0  # the default: nothing written during the test
    visiting = await join(api, p.cid, p.b)
    left_at = dt.datetime.now(dt.UTC)
    visiting.close()
    await wait_for(lambda: p.b.id in services.presence.announcer._last_seen)
    profile = await api.get(f"/api/users/{p.b.id}/", token=p.a.access)
    assert profile.status == 200 and profile.body["status"] == "offline", profile.body
    assert dt.datetime.fromisoformat(profile.body["last_seen"]) >= left_at - dt.timedelta(seconds=1)
    stored = await services.store.users.find_one({"_id": p.b.id}, {"last_seen": 1})
    assert stored["last_seen"].replace(tzinfo=dt.UTC) == earlier


async def test_a_late_last_seen_never_takes_a_later_one_back(api: Any, services: Any) -> None:
    """Writes are delayed, and another node may have written a later visit's meanwhile: `$max`."""
    p = await pair(api, services)
    later = dt.datetime.now(dt.UTC).replace(microsecond=0)
    await services.store.users.update_one({"_id": p.b.id}, {"$set": {"last_seen": later}})
    announcer = services.presence.announcer
    await announcer.on_transition(Transition(p.b.id, False, later - dt.timedelta(minutes=5), None, [p.cid]))
    await announcer.flush_last_seen()  # what a stopping node does: now, without the delay
    assert not announcer._last_seen_due and not announcer._last_seen
    stored = await services.store.users.find_one({"_id": p.b.id}, {"last_seen": 1})
    assert stored["last_seen"].replace(tzinfo=dt.UTC) == later
