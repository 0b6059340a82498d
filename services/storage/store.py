"""MongoDB access: the client, the collections, their indexes, and integer id allocation.

Ids are integers, as in the seed. Each sequence (users, matches, conversations...) has a `counters`
document, and ids are reserved from it in blocks of `ID_BLOCK_SIZE` (one `$inc` per block), so most
inserts cost no round trip for their id; ids stay unique across nodes and restarts, and the unused rest
of a block is simply skipped.

Message ids are different: they are a dense sequence per conversation, reserved by the message's insert
itself, and a message's `_id` packs (conversation id, id in the conversation) into one integer, so every
read of messages is a set of `_id` point lookups (services/chat/ids.py). No `_id` range is queried:
the embedded store answers a range by reading the whole collection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pymongo
import pymongo.errors
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReadPreference, ReturnDocument, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

log = logging.getLogger("chat.store")

# Errors that mean "the store cannot be reached right now" (mapped to 503 `unavailable` at the edge).
STORE_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    pymongo.errors.ConnectionFailure,
    pymongo.errors.ServerSelectionTimeoutError,
    pymongo.errors.NetworkTimeout,
    pymongo.errors.ExecutionTimeout,
)

Doc = dict[str, Any]

# The GridFS bucket of uploaded files (services/media/blobs.py): collections `media.files`, `media.chunks`.
MEDIA_BUCKET = "media"
# The most keys one `$in` point lookup should carry (services/storage/batch.py). MongoDB matches a
# document against an `$in` list by binary search; the embedded store walks the list for every document
# it reads, so a query of n keys costs it n * n comparisons: measured on it, 86 us a key among 64 ids and
# 757 us among 1,000 (docs/mongodb.md).
KEYS_PER_QUERY = 1000
EMBEDDED_KEYS_PER_QUERY = 64

# The driver's own health checks of the server (see `Store`): longer than any call may take.
MONITOR_CHECK_TIMEOUT_MS = 10_000

# The collections whose writes a client is told about and must never see rolled back by a failover (a sent
# message, a like, a match, an account, a session, a block, the id counters that keep ids from going
# backwards), and whose reads must follow those writes. On a replica set they are used with `w: majority`
# and primary reads, whatever MONGODB_URL asks for (docs/mongodb.md).
DURABLE_COLLECTIONS = (
    "users",
    "refresh_tokens",
    "likes",
    "blocks",
    "matches",
    "conversations",
    "messages",
    "counters",
)
DURABLE_WRITES = WriteConcern(w="majority")


async def find_by_ids(collection: AsyncCollection[Doc], query: Doc, projection: Doc | None, count: int) -> list[Doc]:
    """The documents of `query`, which matches at most `count` (one per id of an `_id: {$in}` list), in one
    round trip: with a batch of exactly `count` the server cannot tell the cursor is spent and a second
    round trip (an empty getMore) follows; the limit lets it close the cursor with the first batch."""
    return await collection.find(query, projection, limit=count, batch_size=count).to_list()


async def reserve_block(counters: AsyncCollection[Doc], sequence: str, count: int) -> int:
    """The last of `count` consecutive ids of `sequence`, reserved with one `$inc` of its counter.
    Two nodes creating the counter at the same moment can see their upserts collide (DuplicateKeyError,
    or no document back): the retry then finds the counter and increments it."""
    for _ in range(5):
        try:
            doc = await counters.find_one_and_update(
                {"_id": sequence},
                {"$inc": {"value": count}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except pymongo.errors.DuplicateKeyError:
            continue
        if doc is not None:
            return int(doc["value"])
    raise pymongo.errors.OperationFailure(f"could not reserve ids for {sequence}")


class IdAllocator:
    """Hands out integer ids from blocks reserved with one `$inc` each; safe for concurrent callers."""

    def __init__(self, counters: AsyncCollection[Doc], name: str, block_size: int) -> None:
        self._counters = counters
        self._name = name
        self._block_size = max(1, block_size)
        self._next = 0
        self._end = 0  # exclusive
        self._lock = asyncio.Lock()

    async def next_id(self) -> int:
        async with self._lock:
            if self._next >= self._end:
                self._end = await reserve_block(self._counters, self._name, self._block_size) + 1
                self._next = self._end - self._block_size
            value = self._next
            self._next += 1
            return value


class Store:
    """Owns the client and the collections; built once per process by `build_services`
    (services/core/container.py) and shared by every service."""

    def __init__(
        self, url: str, database: str, *, timeout_ms: int = 2000, id_block_size: int = 50, embedded: bool = False
    ) -> None:
        """`embedded`: the store is the embedded single node (an empty MONGODB_URL), where there is no
        majority to wait for: its collections keep the client's write concern (acknowledged by the node).
        Otherwise the DURABLE_COLLECTIONS are used with `w: majority` and primary reads."""
        self.client: AsyncMongoClient[Doc] = AsyncMongoClient(
            url,
            serverSelectionTimeoutMS=timeout_ms,
            # Also the driver's limit on each of its own health checks of the server, and one check that
            # misses it clears and pauses the whole pool: every call of the node then fails until a check
            # succeeds. A node busy with a connect storm starves its checks (they run on its event loop),
            # so the checks get a longer limit than the calls; calls stay bounded by timeoutMS.
            connectTimeoutMS=max(timeout_ms, MONITOR_CHECK_TIMEOUT_MS),
            # Every operation, server selection and retries included, gives up after this: a store that is
            # down, or accepts connections and then stalls, answers 503 after MONGODB_TIMEOUT_MS instead of
            # holding requests for the socket timeout.
            timeoutMS=timeout_ms,
            tz_aware=True,
            appname="chat-server",
        )
        self.db: AsyncDatabase[Doc] = self.client[database]
        self.embedded = embedded
        self.users = self._durable("users")
        self.refresh_tokens = self._durable("refresh_tokens")
        self.likes = self._durable("likes")
        self.passes = self.db["passes"]
        self.blocks = self._durable("blocks")
        self.matches = self._durable("matches")
        self.conversations = self._durable("conversations")
        self.messages = self._durable("messages")
        self.attachments = self.db["attachments"]
        self.counters = self._durable("counters")
        self.push_devices = self.db["push_devices"]
        self.push_outbox = self.db["push_outbox"]
        # One document per user who changed a push preference, `_id` the user's id: read by `_id` only.
        self.notification_preferences = self.db["notification_preferences"]
        # services/moderation: reports with the messages copied into them, and every moderator action.
        self.reports = self.db["reports"]
        self.audit_log = self.db["audit_log"]
        # The bytes of uploaded files, a GridFS bucket (services/media/blobs.py).
        self.media_files = self.db[f"{MEDIA_BUCKET}.files"]
        self.media_chunks = self.db[f"{MEDIA_BUCKET}.chunks"]
        self._allocators: dict[str, IdAllocator] = {}
        self._secantus: bool | None = None
        self._id_block_size = id_block_size

    def _durable(self, name: str) -> AsyncCollection[Doc]:
        assert name in DURABLE_COLLECTIONS, name
        if self.embedded:
            return self.db[name]
        return self.db.get_collection(name, write_concern=DURABLE_WRITES, read_preference=ReadPreference.PRIMARY)

    def allocator(self, sequence: str) -> IdAllocator:
        alloc = self._allocators.get(sequence)
        if alloc is None:
            alloc = self._allocators[sequence] = IdAllocator(self.counters, sequence, self._id_block_size)
        return alloc

    async def next_id(self, sequence: str) -> int:
        return await self.allocator(sequence).next_id()

    async def reserve_ids(self, sequence: str, count: int) -> int:
        """The first of `count` consecutive ids of `sequence`, none of which any allocator will hand out:
        for writing many documents at once (bench seeders)."""
        return await reserve_block(self.counters, sequence, count) - count + 1

    async def ping(self, timeout_s: float | None = None) -> None:
        """Raise unless the store answers, within `timeout_s` when given: server selection fails fast on
        its own, but a store that accepted the connection and then hung (a paused process, a half-open
        socket) would otherwise hold the caller for the whole socket timeout."""
        if timeout_s is None:
            await self.client.admin.command("ping")
            return
        with pymongo.timeout(timeout_s):
            await self.client.admin.command("ping")

    async def is_secantus(self) -> bool:
        """Whether the server is the embedded one (SecantusDB, whichever URL reaches it), which plans
        queries and geometry differently from MongoDB. Asked once, from `buildInfo`."""
        if self._secantus is None:
            self._secantus = "secantusVersion" in await self.db.command("buildInfo")
        return self._secantus

    def keys_per_query(self) -> int:
        """The most keys a point lookup by `$in` should carry on this server (KEYS_PER_QUERY, or
        EMBEDDED_KEYS_PER_QUERY once `is_secantus` found the embedded store: every start asks it)."""
        return EMBEDDED_KEYS_PER_QUERY if self._secantus else KEYS_PER_QUERY

    async def ensure_indexes(self) -> None:
        """Create every index the queries rely on; idempotent, run at every start."""
        secantus = await self.is_secantus()
        specs: dict[AsyncCollection[Doc], list[IndexModel]] = {
            self.users: [
                IndexModel([("username_key", ASCENDING)], unique=True, name="username_unique"),
                # Legacy [lon, lat] pairs under a 2d index: see services/accounts/users.py point_of.
                IndexModel([("location", "2d")], name="location_2d"),
                IndexModel([("created_at", DESCENDING)], name="newest"),
                # The deletion worker's walk of deletions abandoned past their grace period; sparse: only
                # accounts whose deletion was asked for have the field.
                IndexModel(
                    [("deletion.pending", ASCENDING), ("deletion.requested_at", ASCENDING)],
                    name="pending_deletion",
                    sparse=True,
                ),
            ],
            self.refresh_tokens: [
                IndexModel([("family", ASCENDING)], name="family"),
                # A user's tokens, deleted with their account (services/accounts/deletion.py).
                IndexModel([("user_id", ASCENDING)], name="by_user"),
                IndexModel([("expires_at", ASCENDING)], name="expiry", expireAfterSeconds=0),
            ],
            self.likes: [
                IndexModel([("from_id", ASCENDING), ("to_id", ASCENDING)], unique=True, name="pair_unique"),
                IndexModel([("to_id", ASCENDING), ("created_at", DESCENDING)], name="received"),
                # The daily like quota counts one user's likes since midnight.
                IndexModel([("from_id", ASCENDING), ("created_at", DESCENDING)], name="sent"),
            ],
            self.passes: [
                IndexModel([("from_id", ASCENDING), ("to_id", ASCENDING)], unique=True, name="pair_unique"),
                # The passes on a user, deleted with their account.
                IndexModel([("to_id", ASCENDING)], name="passed_by"),
            ],
            self.blocks: [
                IndexModel([("from_id", ASCENDING), ("to_id", ASCENDING)], unique=True, name="pair_unique"),
                IndexModel([("to_id", ASCENDING)], name="blocked_by"),
                # Discover asks "which of these candidates blocked me" with an `$in` on from_id.
                IndexModel([("to_id", ASCENDING), ("from_id", ASCENDING)], name="blocked_by_pair"),
                IndexModel([("from_id", ASCENDING), ("created_at", DESCENDING)], name="by_blocker"),
            ],
            self.matches: [
                IndexModel([("pair", ASCENDING)], unique=True, name="pair_unique"),
                IndexModel([("users", ASCENDING), ("created_at", DESCENDING)], name="by_user"),
                # The match list reads active matches only, newest first; ended ones stay out of its range.
                IndexModel(
                    [("users", ASCENDING), ("status", ASCENDING), ("created_at", DESCENDING)], name="by_user_status"
                ),
            ],
            self.conversations: [
                IndexModel([("participants", ASCENDING), ("updated_at", DESCENDING)], name="by_participant"),
            ],
            self.messages: [
                IndexModel(
                    [("conversation_id", ASCENDING), ("sender_id", ASCENDING), ("client_id", ASCENDING)],
                    unique=True,
                    name="client_id_unique",
                    partialFilterExpression={"client_id": {"$type": "string"}},
                ),
                # The embedded server plans no query on a partial index: the writer's look-up of retried
                # client_ids (services/chat/writer.py) would scan every message. MongoDB uses the one above.
                *(
                    [
                        IndexModel(
                            [("conversation_id", ASCENDING), ("sender_id", ASCENDING), ("client_id", ASCENDING)],
                            name="client_id_lookup",
                        )
                    ]
                    if secantus
                    else []
                ),
            ],
            self.attachments: [
                # A user's attachments, when their account is deleted (services/media/cleanup.py).
                IndexModel([("uploader_id", ASCENDING)], name="by_uploader"),
                # The sweep of attachments never sent, oldest first (services/media/sweeper.py).
                IndexModel([("sent", ASCENDING), ("created_at", ASCENDING)], name="unsent"),
            ],
            # GridFS's own indexes, under the names and keys the driver gives them when it creates them on
            # the first upload: chunks are read by file and number, files by `_id` (the path).
            self.media_files: [
                IndexModel([("filename", ASCENDING), ("uploadDate", ASCENDING)], name="filename_1_uploadDate_1"),
            ],
            self.media_chunks: [
                IndexModel([("files_id", ASCENDING), ("n", ASCENDING)], unique=True, name="files_id_1_n_1"),
            ],
            # services/push/service.py: a push endpoint or webhook URL belongs to one user at a time.
            self.push_devices: [
                IndexModel([("target", ASCENDING)], unique=True, name="target_unique"),
                IndexModel([("user_id", ASCENDING)], name="by_user"),
            ],
            self.push_outbox: [
                # Workers claim the entry due first; idle entries are dropped after their window.
                IndexModel([("due_at", ASCENDING)], name="due"),
                IndexModel([("expires_at", ASCENDING)], name="idle_expiry", expireAfterSeconds=0),
            ],
            # services/moderation/reports.py: the queue by status or by reported user, newest or oldest
            # first by id; a resolved report is dropped REPORT_RETENTION_DAYS after its resolution (an
            # open one has no `expires_at`, so it stays until resolved).
            self.reports: [
                IndexModel([("status", ASCENDING), ("_id", DESCENDING)], name="queue"),
                IndexModel([("reported_id", ASCENDING), ("_id", DESCENDING)], name="by_reported"),
                IndexModel([("reporter_id", ASCENDING), ("_id", DESCENDING)], name="by_reporter"),
                IndexModel([("expires_at", ASCENDING)], name="retention", expireAfterSeconds=0),
            ],
            # services/moderation/audit.py: newest first (by id), for everyone or for one user concerned.
            self.audit_log: [
                IndexModel([("user_id", ASCENDING), ("_id", DESCENDING)], name="by_user"),
            ],
        }
        for collection, models in specs.items():
            # Create only the indexes missing by name: re-sending an existing spec is not idempotent on
            # every server (the embedded one adds defaults such as 2dsphereIndexVersion to what it stores
            # and then reports the re-sent spec as a conflict).
            existing = await collection.index_information()
            for model in models:
                if model.document["name"] in existing:
                    continue
                try:
                    await collection.create_indexes([model])
                except pymongo.errors.OperationFailure as exc:
                    # Another node starting at the same moment created it first.
                    if exc.code not in (85, 86):
                        raise

    async def close(self) -> None:
        await self.client.close()
