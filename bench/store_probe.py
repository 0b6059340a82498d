"""Time the embedded store's answers to the chat hot path's queries as the conversations grow.

The message writer allocates ids with one `find_one_and_update` per conversation and batch
(services/chat.py `_write_batch`). On SecantusDB that command re-runs its write with the filter
`{_id: <found>, $and: [<query>]}`, which no index covers, so the write walks the whole collection:
its cost grows with the number of conversations, while `update_one` on the same `_id` stays flat.
This probe seeds N conversations (bench/seed_chat.py) into a fresh embedded store for each size and
times, on one conversation in the middle:

- `find_one_and_update` as the writer sends it (`_id`, open, participants `$all`; `$inc last_seq`),
- a compare-and-set `update_one` (`_id`, open, `last_seq` as read; `$inc last_seq`): one way to allocate
  the same ids atomically (matched 0 means another node moved first: read again and retry),
- the same compare-and-set for 50 conversations in one `bulk_write` (a whole batch),
- `find_one` by `_id` (the membership read) and the newest message of a conversation (`last_stored_seq`).

    .venv/bin/python bench/store_probe.py --sizes 250,1000,5000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pymongo import ReturnDocument, UpdateOne

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BENCH_SECRET
from bench.seed_chat import seed_pairs
from services.chat import message_key
from services.embedded import EmbeddedMongo
from services.store import Store


async def timed(call: Callable[[], Awaitable[Any]], repeat: int) -> float:
    """Median milliseconds of `repeat` sequential calls."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def probe(url: str, size: int, repeat: int) -> dict[str, float]:
    store = Store(url, f"probe_{size}", timeout_ms=60_000)
    try:
        await store.ensure_indexes()
        fixtures = await seed_pairs(store, BENCH_SECRET, size)
        ids = [c["id"] for c in fixtures["conversations"]]
        cid = ids[len(ids) // 2]
        conv = await store.conversations.find_one({"_id": cid})
        assert conv is not None
        members = list(conv["participants"])
        batch = ids[: min(50, len(ids))]

        async def find_and_modify() -> None:
            await store.conversations.find_one_and_update(
                {"_id": cid, "status": "open", "participants": {"$all": members[:1]}},
                {"$inc": {"last_seq": 0}},
                projection={"last_seq": 1},
                return_document=ReturnDocument.AFTER,
            )

        async def compare_and_set() -> None:
            await store.conversations.update_one(
                {"_id": cid, "status": "open", "last_seq": 0}, {"$inc": {"last_seq": 0}}
            )

        async def compare_and_set_batch() -> None:
            ops = [UpdateOne({"_id": c, "status": "open", "last_seq": 0}, {"$inc": {"last_seq": 0}}) for c in batch]
            await store.conversations.bulk_write(ops, ordered=False)

        async def point_read() -> None:
            await store.conversations.find_one({"_id": cid}, {"participants": 1, "status": 1, "last_seq": 1})

        async def newest_message() -> None:
            await store.messages.find_one(
                {"_id": {"$gt": message_key(cid, 0), "$lt": message_key(cid + 1, 0)}}, {"seq": 1}, sort=[("_id", -1)]
            )

        return {
            "find_one_and_update": await timed(find_and_modify, repeat),
            "update_one CAS": await timed(compare_and_set, repeat),
            f"bulk CAS x{len(batch)}": await timed(compare_and_set_batch, repeat),
            "find_one _id": await timed(point_read, repeat),
            "newest message": await timed(newest_message, repeat),
        }
    finally:
        await store.close()


async def run(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="store-probe-") as tmp:
        server = EmbeddedMongo(Path(tmp) / "mongo", cache_size="256M")
        server.start()
        try:
            rows = {size: await probe(server.url, size, args.repeat) for size in sizes}
        finally:
            server.stop()
    names = list(next(iter(rows.values())))
    print("| conversations | " + " | ".join(f"`{n}` ms" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for size, row in rows.items():
        print(f"| {size:,} | " + " | ".join(f"{row[n]:.1f}" for n in names) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="250,1000,5000", help="conversations to seed, per measurement")
    parser.add_argument("--repeat", type=int, default=9, help="calls per figure (the median is shown)")
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
