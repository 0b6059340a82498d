"""Whether a token's account still accepts it, as every authenticated request and socket asks.

A token stays valid until it expires, but meanwhile the account behind it may be deleted, or all its tokens
revoked (services/accounts/revocation.py raises the account's `token_generation`; a token carries the
generation it was issued in). Each node remembers for a while, from one point read, whether a user id
still has an account and its current token generation, so the check costs one read per user per
ACCOUNT_CACHE_TTL_S, not one per request, and the revocation check costs no read of its own.

A revocation reaches every node on the bus, and each drops the user's entry (`forget`), so the next
check reads the account again; a read that was in flight when its entry was forgotten is answered but
not cached, since it may predate the revocation.

The reads themselves are batched: the accounts asked for in one loop iteration (a connect storm's
sockets, each checking its account) leave as one `$in` query (services/storage/batch.py), which other
readers of a user's document by id share too (`read`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from services.storage.batch import Coalescer
from services.storage.store import Doc, Store, find_by_ids

ACCOUNT_CACHE_TTL_S = 30.0
ACCOUNT_CACHE_MAX = 100_000
# What `read` brings of a user: liveness, the summary (username, picture) and presence's last_seen.
ACCOUNT_FIELDS = {"deleted": 1, "username": 1, "picture": 1, "token_generation": 1, "last_seen": 1}


class AccountLiveness:
    def __init__(self, store: Store, on_summary: Callable[[Doc], Any] | None = None) -> None:
        self._store = store
        # The read that answers "alive?" brings the user's summary too; whoever caches summaries gets it.
        self._on_summary = on_summary
        # user id -> (expires at, alive, token generation)
        self._entries: dict[int, tuple[float, bool, int]] = {}
        # Lookups in flight: a user whose sockets all reconnect at once (a node restart, a network
        # blip) costs one read, not one per socket; a reconnect storm of 2,000 sockets otherwise queued
        # 2,000 reads behind MongoDB's connection pool and refused most sockets with 1011.
        self._pending: dict[int, asyncio.Future[tuple[bool, int]]] = {}
        self.reads: Coalescer[int, Doc] = Coalescer(self._read_many, keys_per_query=store.keys_per_query)

    async def _read_many(self, user_ids: list[int]) -> dict[int, Doc]:
        docs = await find_by_ids(self._store.users, {"_id": {"$in": user_ids}}, ACCOUNT_FIELDS, len(user_ids))
        return {int(d["_id"]): d for d in docs}

    async def read(self, user_id: int) -> Doc | None:
        """The user's document (ACCOUNT_FIELDS), read from the store now, in one query with the other
        reads of this moment; None when there is no such document."""
        return await self.reads.get(user_id)

    def prefetch(self, user_id: int) -> asyncio.Future[dict[int, Doc]]:
        """Start `read` now, in the next shared query, for a caller that awaits something else first; the
        future maps the user id to the document, when there is one."""
        return self.reads.ask((user_id,))

    async def exists(self, user_id: int) -> bool:
        """Whether the account is there and not deleted."""
        alive, _ = await self._alive_and_generation(user_id)
        return alive

    async def accepts(self, user_id: int, generation: int) -> bool:
        """Whether the account is there, not deleted, and accepts tokens of `generation` (none of its
        tokens from before a later revocation)."""
        alive, current = await self._alive_and_generation(user_id)
        return alive and generation >= current

    def refuses(self, user_id: int, generation: int) -> bool:
        """True when what this node already knows refuses a token of `generation`: the account's tokens were
        revoked since it was issued, or the account is deleted. Reads nothing: False when nothing is known.
        Generations only grow, so an outdated entry still refuses the generations below its own."""
        cached = self._entries.get(user_id)
        if cached is None:
            return False
        expires, alive, current = cached
        return generation < current or (not alive and expires > time.monotonic())

    async def _alive_and_generation(self, user_id: int) -> tuple[bool, int]:
        """(alive, token generation), cached."""
        now = time.monotonic()
        cached = self._entries.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        pending = self._pending.get(user_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future = self._pending[user_id] = asyncio.get_running_loop().create_future()
        still_current = False
        try:
            # A socket that opens next announces the user's presence by username, which would otherwise
            # cost a second read of the same document.
            doc = await self.read(user_id)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, and nobody waiting is no error
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            # Forgotten meanwhile (a revocation arrived): the answer may predate it, so it is not kept.
            still_current = self._pending.get(user_id) is future
            if still_current:
                del self._pending[user_id]
        alive = doc is not None and not doc.get("deleted")
        generation = int((doc or {}).get("token_generation") or 0)
        if alive and doc is not None and self._on_summary is not None and "username" in doc:
            self._on_summary(doc)
        if still_current:
            if len(self._entries) >= ACCOUNT_CACHE_MAX:
                self._entries.clear()
            self._entries[user_id] = (now + ACCOUNT_CACHE_TTL_S, alive, generation)
        future.set_result((alive, generation))
        return alive, generation

    def forget(self, user_id: int | None = None) -> None:
        """Drop what is known of one user (or of everyone), so the next check reads the store."""
        if user_id is None:
            self._entries.clear()
            self._pending.clear()
        else:
            self._entries.pop(user_id, None)
            self._pending.pop(user_id, None)
