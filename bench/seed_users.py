"""Seed a database with many users (and some matching history) straight through the store.

Registration costs an argon2 hash per account, so large populations are written with `insert_many`
instead; ids are reserved from the same `users` counter the server allocates from, so a server started
on the seeded database goes on numbering after them.

    python bench/seed_users.py --mongodb-url mongodb://127.0.0.1:27017 --database bench --count 10000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.matching.location import LocationPrivacy
from services.storage.documents import UNUSABLE_HASH, relation_document, user_document
from services.storage.store import Store

GENDERS = ("man", "woman", "nonbinary")
INTERESTS: tuple[list[str], ...] = ([], ["man"], ["woman"], ["man", "woman"], ["woman", "nonbinary"])
# Most of mainland France: about 530 km by 780 km, so a 100 km radius around a point well
# inside it holds ~7% of the located users.
REGION = {"lon": (-1.5, 5.5), "lat": (43.5, 50.5)}
BATCH = 2000
LOCATIONS = LocationPrivacy()  # the server's default grid and offsets


def random_user(user_id: int, rng: random.Random, created_at: dt.datetime, *, located_share: float) -> dict[str, Any]:
    """An account with a random profile: age 18-60, gender and preferences from the lists above, a place
    in REGION for `located_share` of them."""
    today = created_at.date()
    age = rng.randint(18, 60)
    birthdate = dt.datetime(today.year - age, rng.randint(1, 12), rng.randint(1, 28), tzinfo=dt.UTC)
    doc = user_document(
        user_id,
        f"bench{user_id}",
        password_hash=UNUSABLE_HASH,  # these accounts cannot sign in
        created_at=created_at,
        display_name=f"Bench {user_id}",
        bio="Seeded for the discover benchmark.",
        gender=rng.choice(GENDERS),
        interested_in=list(rng.choice(INTERESTS)),
        birthdate=birthdate,
    )
    if rng.random() < 0.4:
        low = rng.randint(18, 40)
        doc["age_min"], doc["age_max"] = low, low + rng.randint(5, 25)
    if rng.random() < located_share:
        lon = rng.uniform(*REGION["lon"])
        lat = rng.uniform(*REGION["lat"])
        # Stored as the server stores a location: coarse, with the account's secret offset beside it.
        secret = LOCATIONS.new_secret()
        doc["location_secret"] = secret
        doc["location"] = LOCATIONS.coarsen([lon, lat], secret)
    return doc


async def seed_users(store: Store, count: int, *, seed: int = 1, located_share: float = 0.8) -> list[int]:
    """Insert `count` users; returns their ids."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    first = await store.reserve_ids("users", count)
    ids = list(range(first, first + count))
    for start in range(0, count, BATCH):
        # One registration a minute, the last one now: ids and creation times grow together.
        batch = [
            random_user(i, rng, now - dt.timedelta(minutes=ids[-1] - i), located_share=located_share)
            for i in ids[start : start + BATCH]
        ]
        await store.users.insert_many(batch, ordered=False)
    return ids


async def seed_history(
    store: Store, viewer_id: int, population: list[int], rng: random.Random, *, likes: int, passes: int, blocks: int
) -> None:
    """Give one viewer a past: likes, passes and blocks on random users, as discover must skip them."""
    others = rng.sample(population, likes + passes + blocks + 1)
    others = [o for o in others if o != viewer_id]
    now = dt.datetime.now(dt.UTC)

    def pairs(targets: list[int]) -> list[dict[str, Any]]:
        return [relation_document(viewer_id, t, created_at=now) for t in targets]

    if likes:
        await store.likes.insert_many(pairs(others[:likes]), ordered=False)
    if passes:
        await store.passes.insert_many(pairs(others[likes : likes + passes]), ordered=False)
    if blocks:
        await store.blocks.insert_many(pairs(others[likes + passes : likes + passes + blocks]), ordered=False)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mongodb-url", required=True)
    parser.add_argument("--database", default="bench")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    store = Store(args.mongodb_url, args.database, timeout_ms=10_000)
    try:
        await store.ensure_indexes()
        ids = await seed_users(store, args.count, seed=args.seed)
        print(f"seeded {len(ids)} users, ids {ids[0]}..{ids[-1]}, into {args.database}")
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
