"""Time the embedded store's answers to the chat hot path's commands as the stored messages grow.

For each size, a fresh database gets 50 conversations (bench/seed_chat.py) holding N messages in all,
then one conversation in the middle is timed (median of `--repeat` calls) on:

- `insert_many` of 50 messages, one per conversation, ordered: a message batch (services/chat/service.py);
- `update_one` with `$max` of a conversation's `last_seq`, `updated_at` and a read pointer: one entry of
  the metadata written behind the messages (services/chat/metadata.py);
- the newest message of a conversation by point lookups: `_id $in` the 16 ids after its `last_seq`
  (`ChatService._newest`), and a page of 51 ids by `_id $in` (history, backlog);
- the same two reads as `_id` range queries with a sort, which the server no longer sends: SecantusDB
  answers them by reading the whole collection, so they grow with the total number of messages.

    .venv/bin/python bench/store_probe.py --sizes 5000,50000

`--growth N` measures something else: the cost of a write as writes accumulate in one store process, with
retryable writes (the driver's default) and without (what services/storage/embedded.py asks for): N single
inserts from 8 concurrent writers, the mean per block of 2,000.

    .venv/bin/python bench/store_probe.py --growth 16000

`--in-lists N` measures how the size of an `$in` list costs: N user documents read by `_id` among 20 * N,
as one query of N keys and as queries of 256, 64 and 16 keys sent at once (median of `--repeat` rounds),
which is how services/storage/batch.py sends a round of point lookups.

    .venv/bin/python bench/store_probe.py --in-lists 1000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BENCH_SECRET
from bench.seed_chat import seed_pairs
from services.chat.ids import message_key
from services.storage.embedded import EmbeddedMongo
from services.storage.store import Store

CONVERSATIONS = 50


async def timed(call: Callable[[], Awaitable[Any]], repeat: int) -> float:
    """Median milliseconds of `repeat` sequential calls."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def probe(url: str, messages: int, repeat: int) -> dict[str, float]:
    store = Store(url, f"probe_{messages}", timeout_ms=120_000)
    try:
        await store.ensure_indexes()
        fixtures = await seed_pairs(store, BENCH_SECRET, CONVERSATIONS)
        ids = [c["id"] for c in fixtures["conversations"]]
        per_conversation = messages // len(ids)
        now = dt.datetime.now(dt.UTC)
        last = dict.fromkeys(ids, 0)

        def message(cid: int) -> dict[str, Any]:
            last[cid] += 1
            seq = last[cid]
            return {"_id": message_key(cid, seq), "conversation_id": cid, "seq": seq, "sender_id": 1,
                    "content": f"message {seq} of a conversation", "created_at": now}  # fmt: skip

        for cid in ids:
            for start in range(0, per_conversation, 1000):
                batch = [message(cid) for _ in range(min(1000, per_conversation - start))]
                await store.messages.insert_many(batch)
            await store.conversations.update_one({"_id": cid}, {"$set": {"last_seq": last[cid]}})
        cid = ids[len(ids) // 2]
        top = last[cid]

        async def insert_batch() -> None:
            await store.messages.insert_many([message(c) for c in ids], ordered=True)

        async def metadata_update() -> None:
            await store.conversations.update_one(
                {"_id": cid}, {"$max": {"last_seq": last[cid], "updated_at": now, "read_seq.1": last[cid]}}
            )

        def by_ids(first: int, count: int) -> Callable[[], Awaitable[Any]]:
            keys = [message_key(cid, s) for s in range(first, first + count)]
            return lambda: store.messages.find({"_id": {"$in": keys}}).to_list(None)

        async def newest_by_range() -> None:
            await store.messages.find_one(
                {"_id": {"$gt": message_key(cid, 0), "$lt": message_key(cid + 1, 0)}}, sort=[("_id", -1)]
            )

        async def page_by_range() -> None:
            await store.messages.find(
                {"_id": {"$gt": message_key(cid, 0), "$lt": message_key(cid, top)}}, sort=[("_id", -1)], limit=51
            ).to_list(None)

        return {
            f"insert_many x{len(ids)}": await timed(insert_batch, repeat),
            "metadata update_one": await timed(metadata_update, repeat),
            "newest: 16 ids by $in": await timed(by_ids(top + 1, 16), repeat),
            "page: 51 ids by $in": await timed(by_ids(max(1, top - 51), 51), repeat),
            "newest: range + sort": await timed(newest_by_range, min(repeat, 3)),
            "page: range + sort": await timed(page_by_range, min(repeat, 3)),
        }
    finally:
        await store.close()


async def write_growth(url: str, total: int, label: str) -> list[float]:
    """Mean milliseconds per insert, per block of 2,000 inserts, as they accumulate."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    collection = client["growth"][label]
    written = 0
    means = []
    try:
        while written < total:
            started = time.perf_counter()

            async def writer(name: int) -> None:
                nonlocal written
                for _ in range(250):
                    written += 1
                    await collection.insert_one({"_id": f"{name}-{written}"})

            await asyncio.gather(*(writer(k) for k in range(8)))
            means.append((time.perf_counter() - started) * 1000 / 2000)
    finally:
        await client.close()
    return means


async def run_growth(total: int) -> None:
    with tempfile.TemporaryDirectory(prefix="store-probe-") as tmp:
        server = EmbeddedMongo(Path(tmp) / "mongo", cache_size="256M")
        server.start()
        try:
            base = server.url.replace("&retryWrites=false", "")
            rows = {
                "retryable writes": await write_growth(base + "&retryWrites=true", total, "retryable"),
                "without": await write_growth(base + "&retryWrites=false", total, "plain"),
            }
        finally:
            server.stop()
    blocks = len(next(iter(rows.values())))
    print("| writes so far | " + " | ".join(f"{(i + 1) * 2000:,}" for i in range(blocks)) + " |")
    print("|---|" + "---|" * blocks)
    for label, means in rows.items():
        print(f"| {label}, ms per insert | " + " | ".join(f"{m:.2f}" for m in means) + " |")


async def in_list_costs(url: str, keys: int, repeat: int) -> list[tuple[int, int, float]]:
    """(keys per query, queries, median ms for all `keys`) for each query size."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    users = client["in_lists"]["users"]
    try:
        await users.insert_many([{"_id": n, "username": f"u{n}", "deleted": False} for n in range(1, 20 * keys + 1)])
        wanted = list(range(1, 20 * keys + 1, 20))
        rows = []
        for size in (keys, 256, 64, 16):
            chunks = [wanted[i : i + size] for i in range(0, keys, size)]

            async def round_of_queries(chunks: list[list[int]] = chunks) -> None:
                found = await asyncio.gather(
                    *(users.find({"_id": {"$in": c}}, limit=len(c), batch_size=len(c)).to_list() for c in chunks)
                )
                assert sum(len(f) for f in found) == keys

            rows.append((size, len(chunks), await timed(round_of_queries, repeat)))
        return rows
    finally:
        await client.close()


async def run_in_lists(keys: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="store-probe-") as tmp:
        server = EmbeddedMongo(Path(tmp) / "mongo", cache_size="256M")
        server.start()
        try:
            rows = await in_list_costs(server.url, keys, repeat)
        finally:
            server.stop()
    print(f"| keys per query | queries | ms for the {keys:,} keys | us per key |")
    print("|---|---|---|---|")
    for size, queries, ms in rows:
        print(f"| {size:,} | {queries} | {ms:.0f} | {ms * 1000 / keys:.0f} |")


async def run(args: argparse.Namespace) -> None:
    if args.growth:
        await run_growth(args.growth)
        return
    if args.in_lists:
        await run_in_lists(args.in_lists, args.repeat)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="store-probe-") as tmp:
        server = EmbeddedMongo(Path(tmp) / "mongo", cache_size="256M")
        server.start()
        try:
            rows = {size: await probe(server.url, size, args.repeat) for size in sizes}
        finally:
            server.stop()
    names = list(next(iter(rows.values())))
    print("| messages stored | " + " | ".join(f"{n} ms" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for size, row in rows.items():
        print(f"| {size:,} | " + " | ".join(f"{row[n]:.1f}" for n in names) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,50000", help="messages to store before each measurement")
    parser.add_argument("--repeat", type=int, default=9, help="calls per figure (the median is shown)")
    parser.add_argument("--growth", type=int, default=0, help="instead: time this many inserts as they accumulate")
    parser.add_argument("--in-lists", type=int, default=0, help="instead: time reads of this many ids by query size")
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
