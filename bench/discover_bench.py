"""Discover latency on a large population: seeds N users into a fresh database and times pages.

For each population size it seeds the users with insert_many (bench/seed_users.py), gives every sampled
viewer a history (likes, passes, blocks), then times `MatchingService.discover` in the server's own code
path (no HTTP: add ~1 ms for the handler) for two kinds of viewer:

- newest: a viewer without a location; pages come newest first through windows of account ids;
- nearest: a viewer with a location; pages come nearest first through `$nearSphere` bands on the 2d index.

Each viewer asks for its first page and then follows the cursor for a few more pages. It prints p50 /
p99 per kind and size. Without --mongodb-url it starts the embedded store (SecantusDB) in a temporary
directory, which is what the figures in BENCHMARKS.md measure.

    .venv/bin/python bench/discover_bench.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.seed_users import seed_history, seed_users
from services.accounts.auth import PasswordHasher, TokenService
from services.accounts.users import UserService
from services.core.config import Settings
from services.matching.service import MatchingService
from services.media.store import MediaStore
from services.realtime.bus import InProcessBus
from services.realtime.events import Publisher
from services.storage.embedded import EmbeddedMongo
from services.storage.store import Store


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def build(store: Store) -> MatchingService:
    media = MediaStore(store, "http://localhost:8888", 1 << 20)
    tokens = TokenService(store, "bench-secret-" + "x" * 40, access_ttl_s=900, refresh_ttl_s=3600)
    users = UserService(store, PasswordHasher(1), tokens, media)
    return MatchingService(store, users, Publisher(InProcessBus()), Settings())


async def time_viewers(
    matching: MatchingService, viewers: list[int], pages: int, limit: int
) -> tuple[list[float], list[float], float]:
    """(first-page latencies ms, later-page latencies ms, mean results per page)."""
    first: list[float] = []
    later: list[float] = []
    shown: list[int] = []
    for viewer in viewers:
        cursor = None
        for page in range(pages):
            started = time.perf_counter()
            answer = await matching.discover(viewer, limit=limit, cursor=cursor)
            elapsed = (time.perf_counter() - started) * 1000
            (first if page == 0 else later).append(elapsed)
            shown.append(len(answer["results"]))
            cursor = answer["next_cursor"]
            if cursor is None:
                break
    return first, later, statistics.mean(shown) if shown else 0.0


def line(kind: str, size: int, label: str, values: list[float], per_page: float | None = None) -> str:
    if not values:
        return f"{size:>7} {kind:<8} {label:<6} (no samples)"
    text = (
        f"{size:>7} {kind:<8} {label:<6} n={len(values):<4} p50={statistics.median(values):8.1f} ms"
        f"  p99={percentile(values, 0.99):8.1f} ms  max={max(values):8.1f} ms"
    )
    if per_page is not None:
        text += f"  results/page={per_page:.1f}"
    return text


async def run_size(url: str, size: int, args: argparse.Namespace) -> list[str]:
    database = f"bench_discover_{size}_{int(time.time())}"
    store = Store(url, database, timeout_ms=30_000)
    out: list[str] = []
    try:
        await store.ensure_indexes()
        started = time.perf_counter()
        ids = await seed_users(store, size, seed=args.seed)
        seeded_s = time.perf_counter() - started
        rng = random.Random(args.seed)
        docs = await store.users.find({"_id": {"$in": rng.sample(ids, min(len(ids), 4 * args.viewers))}}).to_list(None)
        placeless = [int(d["_id"]) for d in docs if "location" not in d][: args.viewers]
        located = [int(d["_id"]) for d in docs if "location" in d][: args.viewers]
        for viewer in placeless + located:
            await seed_history(
                store, viewer, ids, rng, likes=args.history, passes=args.history // 2, blocks=args.history // 20
            )
        print(f"seeded {size} users in {seeded_s:.1f} s; history of {args.history} likes per viewer", flush=True)
        matching = build(store)
        for kind, viewers, count in (("newest", placeless, args.viewers), ("nearest", located, args.nearest_viewers)):
            if kind not in args.kinds.split(","):
                continue
            first, later, per_page = await time_viewers(matching, viewers[:count], args.pages, args.limit)
            out.append(line(kind, size, "first", first, per_page))
            out.append(line(kind, size, "later", later))
            print("\n".join(out[-2:]), flush=True)
    finally:
        await store.client.drop_database(database)
        await store.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mongodb-url", default="", help="a MongoDB to measure; default: the embedded store")
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated population sizes")
    parser.add_argument("--viewers", type=int, default=40, help="viewers without a location timed per size")
    parser.add_argument("--nearest-viewers", type=int, default=10, help="viewers with a location timed per size")
    parser.add_argument("--pages", type=int, default=3, help="pages each viewer reads (first + followed cursors)")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--history", type=int, default=200, help="likes per viewer (half as many passes)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kinds", default="newest,nearest", help="which viewers to time: newest, nearest or both")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="discover-bench-") as tmp:
        workdir = Path(tmp)
        embedded = None
        url = args.mongodb_url
        if not url:
            embedded = EmbeddedMongo(workdir / "mongo", cache_size="1G")
            embedded.start()
            url = embedded.url
        try:
            results: list[str] = []
            for size in sizes:
                results += await run_size(url, size, args)
        finally:
            if embedded is not None:
                embedded.stop()
    print("\nsize    kind     pages")
    print("\n".join(results))


if __name__ == "__main__":
    asyncio.run(main())
