"""Point lookups asked for at nearly the same moment, sent as one query.

A connect storm asks the store the same few questions for every socket: its account, its user's open
conversations, its conversation's newest message id, the other participant's status. Each question
alone is a point lookup, and each round trip through the async driver costs the node about as much CPU
as a bare relay spends on a whole connect. A `Coalescer` collects the keys its callers ask for until the
loop comes back to it, sends them as one query (`fetch(keys) -> {key: value}`, typically one `$in`),
and answers every caller from that one answer. Nothing in it is specific to MongoDB: Redis presence
sends the questions of one moment as one pipeline through it (services/realtime/presence.py).

At most one round of queries per coalescer is in flight: keys asked for meanwhile wait for the next one,
so under load the rounds grow instead of queueing in the driver's pool, and when nothing else is waiting a
lookup leaves on the next loop iteration, as it would alone. A round holds at most `max_keys` keys, sent
as queries of at most `keys_per_query()` keys each, all at once: the embedded store checks a document
against an `$in` list one element at a time, so one query of n keys costs it n times n comparisons
(Store.keys_per_query, docs/mongodb.md). A round that fails fails every caller whose keys it carried,
with its exception; a caller that is cancelled leaves the others alone.

Nothing is cached here: every answer comes from a query sent after the caller asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Fetch = Callable[[list[K]], Awaitable[dict[K, V]]]


class Coalescer(Generic[K, V]):
    def __init__(
        self, fetch: Fetch[K, V], *, max_keys: int = 1000, keys_per_query: Callable[[], int] | None = None
    ) -> None:
        self._fetch = fetch
        self.max_keys = max(1, max_keys)
        self._keys_per_query = keys_per_query
        # Callers waiting for the next query: the keys each asked for, and its answer.
        self._queued_reads: list[tuple[Collection[K], asyncio.Future[dict[K, V]]]] = []
        self._runner: asyncio.Task[None] | None = None
        self.queries = 0  # sent so far (tests and benchmarks read it)

    async def get(self, key: K) -> V | None:
        """The value stored under `key`, or None when there is none."""
        return (await self.get_many((key,))).get(key)

    async def get_many(self, keys: Collection[K]) -> dict[K, V]:
        """The values stored under these keys (those found), from one query shared with other callers."""
        return await self.ask(keys)

    def ask(self, keys: Collection[K]) -> asyncio.Future[dict[K, V]]:
        """Queue these keys for the next query now and return the future of their values (those found):
        for a caller that has something else to wait for first. A failed query's exception is marked
        retrieved, so a future nobody awaits in the end is no error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[K, V]] = loop.create_future()
        self._queued_reads.append((keys, future))
        if self._runner is None:
            self._runner = loop.create_task(self._run())
        return future

    async def _run(self) -> None:
        """Send what waits, one query at a time, until nothing does. Starting as a task lets every caller
        of the current loop iteration join the first query."""
        try:
            while self._queued_reads:
                await self._answer(self._take())
        finally:
            self._runner = None
            # Left only when cancelled (the node shutting down): nobody is left to send these.
            for _, future in self._queued_reads:
                future.cancel()
            self._queued_reads = []

    async def _answer(self, batch: list[tuple[Collection[K], asyncio.Future[dict[K, V]]]]) -> None:
        """The queries for the keys of these callers, and each caller's share of their answers."""
        keys = list({key: None for keys, _ in batch for key in keys})
        found: dict[K, V] = {}
        if keys:
            size = max(1, self._keys_per_query()) if self._keys_per_query is not None else len(keys)
            chunks = [keys[i : i + size] for i in range(0, len(keys), size)]
            self.queries += len(chunks)
            try:
                if len(chunks) == 1:
                    found = await self._fetch(keys)
                else:
                    for answer in await asyncio.gather(*(self._fetch(chunk) for chunk in chunks)):
                        found.update(answer)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                        future.exception()  # retrieved here: a caller that went away is no error
                return
            except BaseException:
                for _, future in batch:
                    future.cancel()
                raise
        for wanted, future in batch:
            if not future.done():
                future.set_result({key: found[key] for key in wanted if key in found})

    def _take(self) -> list[tuple[Collection[K], asyncio.Future[dict[K, V]]]]:
        """The callers of the next query: in arrival order, up to `max_keys` keys (at least one caller)."""
        taken, count = 0, 0
        for keys, future in self._queued_reads:
            if taken and count + len(keys) > self.max_keys:
                break
            if not future.done():
                count += len(keys)
            taken += 1
        batch, self._queued_reads = self._queued_reads[:taken], self._queued_reads[taken:]
        return [(keys, future) for keys, future in batch if not future.done()]
