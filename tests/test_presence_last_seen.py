"""`last_seen` is written for the users who go offline together in one write, and when the store does not
take it, one warning says so for all of them (a line per user flooded the log of a node whose store
timed out under a reconnect storm); the offline announcement still goes out."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import pymongo.errors
import pytest

from services.realtime.presence import Transition
from tests.ws_helpers import join, pair


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
    with caplog.at_level(logging.WARNING, logger="chat.presence"):
        await asyncio.gather(*(announcer.on_transition(Transition(user, False, now, None, [p.cid])) for user in others))
    assert writes == [len(others)]
    warnings = [r.getMessage() for r in caplog.records if "last_seen" in r.getMessage()]
    assert warnings == [f"could not record last_seen of {len(others)} users: store unavailable"]
    statuses = [await listening.recv_type("status") for _ in others]
    assert {"user_id": p.b.id, "status": "offline"}.items() <= next(
        s for s in statuses if s["user_id"] == p.b.id
    ).items()
