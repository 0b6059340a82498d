"""Whether a user id still has an account, as every authenticated request and socket asks.

A token stays valid until it expires, but the account behind it may be deleted meanwhile. Each node
remembers for a while whether a user id still has an account, so the check costs one point read per
user per ACCOUNT_CACHE_TTL_S, not one per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from services.storage.store import Doc, Store

ACCOUNT_CACHE_TTL_S = 30.0
ACCOUNT_CACHE_MAX = 100_000


class AccountLiveness:
    def __init__(self, store: Store, on_summary: Callable[[Doc], Any] | None = None) -> None:
        self._store = store
        # The read that answers "alive?" brings the user's summary too; whoever caches summaries gets it.
        self._on_summary = on_summary
        self._entries: dict[int, tuple[float, bool]] = {}
        # Lookups in flight: a user whose sockets all reconnect at once (a node restart, a network
        # blip) costs one read, not one per socket; a reconnect storm of 2,000 sockets otherwise queued
        # 2,000 reads behind MongoDB's connection pool and refused most sockets with 1011.
        self._pending: dict[int, asyncio.Future[bool]] = {}

    async def exists(self, user_id: int) -> bool:
        now = time.monotonic()
        cached = self._entries.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._pending.get(user_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future = self._pending[user_id] = asyncio.get_running_loop().create_future()
        try:
            # A socket that opens next announces the user's presence by username, which would otherwise
            # cost a second read of the same document.
            doc = await self._store.users.find_one({"_id": user_id}, {"deleted": 1, "username": 1, "picture": 1})
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, and nobody waiting is no error
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            self._pending.pop(user_id, None)
        alive = doc is not None and not doc.get("deleted")
        if alive and doc is not None and self._on_summary is not None and "username" in doc:
            self._on_summary(doc)
        if len(self._entries) >= ACCOUNT_CACHE_MAX:
            self._entries.clear()
        self._entries[user_id] = (now + ACCOUNT_CACHE_TTL_S, alive)
        future.set_result(alive)
        return alive

    def forget(self, user_id: int | None = None) -> None:
        """Drop what is known of one user (or of everyone), so the next check reads the store."""
        if user_id is None:
            self._entries.clear()
        else:
            self._entries.pop(user_id, None)
