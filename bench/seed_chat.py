"""Load-test helper (not an API): N users in N/2 matched pairs, each pair with an open conversation,
and an access token per user, written straight into the store.

Going through the API would cost an Argon2 hash per account and several round trips per match; the
embedded store does ~700 single inserts/s but thousands of documents/s in `insert_many`, so 10,000
users are seeded in seconds this way. The documents come from the factories the server writes with
(services/storage/documents.py), and the ids are reserved on the server's own counters, so a server
running on the same database goes on numbering after them. The accounts have no password: they cannot
sign in, only use their token.

Tokens are access tokens minted by services.accounts.auth.TokenService with the server's JWT secret, valid for
`--token-ttl` seconds (a day by default, so a long soak does not outlive them).

The fixtures file has the peer's format, `{"conversations": [{"id": N, "tokens": [tokenA, tokenB]}]}`,
so bench/loadgen.py reads ours and the peer's alike.

Against a running server (any MongoDB URL, e.g. the one bench/run_compare.py starts):

    JWT_SECRET=... .venv/bin/python bench/seed_chat.py --mongodb-url mongodb://127.0.0.1:27017 \\
        --database chat --users 10000 --out fixtures.json

Into the embedded store of `make run` (stop the server first: the store's files are locked while it
runs; the token secret is the development one the server keeps in DATA_DIR/jwt_secret):

    .venv/bin/python bench/seed_chat.py --data-dir ./data --users 10000 --out fixtures.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.accounts.auth import TokenService
from services.core.config import Settings
from services.core.container import jwt_secret
from services.storage.documents import UNUSABLE_HASH, conversation_document, match_document, user_document
from services.storage.embedded import EmbeddedMongo
from services.storage.store import Store

BATCH = 2000
DEFAULT_TOKEN_TTL_S = 24 * 3600


async def insert_in_batches(collection: Any, docs: list[dict[str, Any]]) -> None:
    for start in range(0, len(docs), BATCH):
        await collection.insert_many(docs[start : start + BATCH], ordered=False)


def mint_access_token(tokens: TokenService, user_id: int, ttl_s: int, now: dt.datetime) -> str:
    # Only the access token is needed: TokenService.issue would also store a refresh token per user,
    # one insert each, which is the slow path this helper exists to avoid.
    return tokens._encode(user_id, "access", ttl_s, uuid.uuid4().hex, now)


async def seed_pairs(
    store: Store, secret: str, pairs: int, *, token_ttl_s: int = DEFAULT_TOKEN_TTL_S
) -> dict[str, Any]:
    """Create `pairs` matched pairs with open conversations; returns the fixtures document."""
    now = dt.datetime.now(dt.UTC)
    # Reserved on the server's own counters: the server's id blocks come from them too, so neither side
    # can hand out these ids.
    first_user = await store.reserve_ids("users", 2 * pairs)
    first_match = await store.reserve_ids("matches", pairs)
    first_conversation = await store.reserve_ids("conversations", pairs)
    users: list[dict[str, Any]] = []
    matches: list[dict[str, Any]] = []
    conversations: list[dict[str, Any]] = []
    for i in range(pairs):
        low, high = first_user + 2 * i, first_user + 2 * i + 1
        match_id, conversation_id = first_match + i, first_conversation + i
        # ids are unique, so the names are too
        users += [user_document(uid, f"load_{uid}", password_hash=UNUSABLE_HASH, created_at=now) for uid in (low, high)]
        matches.append(match_document(match_id, low, high, conversation_id, created_at=now))
        conversations.append(conversation_document(conversation_id, (low, high), match_id, created_at=now))
    # The conversation goes in last: a conversation whose users or match are missing is never visible.
    await insert_in_batches(store.users, users)
    await insert_in_batches(store.matches, matches)
    await insert_in_batches(store.conversations, conversations)
    tokens = TokenService(store, secret, access_ttl_s=token_ttl_s, refresh_ttl_s=token_ttl_s)
    return {
        "conversations": [
            {
                "id": c["_id"],
                "tokens": [mint_access_token(tokens, uid, token_ttl_s, now) for uid in c["participants"]],
            }
            for c in conversations
        ]
    }


async def seed(url: str, database: str, secret: str, pairs: int, token_ttl_s: int) -> tuple[dict[str, Any], float]:
    """(fixtures, seconds it took)."""
    store = Store(url, database, timeout_ms=30_000)
    try:
        # The server creates its indexes at start; a fresh database may be seeded before it ever ran.
        await store.ensure_indexes()
        started = time.perf_counter()
        fixtures = await seed_pairs(store, secret, pairs, token_ttl_s=token_ttl_s)
        return fixtures, time.perf_counter() - started
    finally:
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--mongodb-url", help="the server's MongoDB")
    where.add_argument("--data-dir", help="a stopped server's data dir: seed its embedded store")
    parser.add_argument("--database", default=os.environ.get("MONGODB_DATABASE") or "chat")
    parser.add_argument("--users", type=int, default=1000, help="users to create (two per conversation)")
    parser.add_argument("--jwt-secret", default=os.environ.get("JWT_SECRET", ""), help="default: $JWT_SECRET")
    parser.add_argument("--token-ttl", type=int, default=DEFAULT_TOKEN_TTL_S, help="access token lifetime, s")
    parser.add_argument("--out", type=Path, required=True, help="fixtures file to write")
    args = parser.parse_args()
    pairs = args.users // 2
    if pairs < 1:
        parser.error("--users must be at least 2")
    embedded = None
    secret = args.jwt_secret
    url = args.mongodb_url
    if args.data_dir:
        # The same secret the server will use: the configured one, else its development secret file.
        secret = secret or jwt_secret(Settings(data_dir=args.data_dir))
        embedded = EmbeddedMongo(Path(args.data_dir) / "mongo")
        try:
            embedded.start()
        except RuntimeError as exc:
            print(f"cannot start the embedded store (is the server still running?): {exc}", file=sys.stderr)
            return 1
        url = embedded.url
    if not secret:
        parser.error("the server's JWT secret is needed: --jwt-secret or JWT_SECRET")
    try:
        fixtures, elapsed = asyncio.run(seed(url, args.database, secret, pairs, args.token_ttl))
    finally:
        if embedded is not None:
            embedded.stop()
    args.out.write_text(json.dumps(fixtures))
    print(
        f"seeded {2 * pairs} users, {pairs} matches and conversations in {elapsed:.1f} s; fixtures in {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
