"""The bytes of uploaded files, kept in MongoDB (GridFS): every node reads what any node wrote.

One GridFS bucket, `media` (collections `media.files` and `media.chunks`), written and deleted through
PyMongo's `AsyncGridFSBucket`. A file's `_id` and `filename` are its path (`attachments/<random>.pdf`,
`profile_pictures/<random>.128.jpg`), the path its URL and its photo or attachment document name, so
serving, deleting and migrating are lookups by `_id`. Its `metadata` holds the owner's user id, the
content type verified at upload and the SHA-256 of the bytes (the ETag it is served with); GridFS keeps
its `length` and `uploadDate`. Chunks are `CHUNK_BYTES`, the GridFS default of 255 KiB (a chunk document
with its fields stays under 256 KiB); an upload of MAX_UPLOAD_BYTES (5 MiB) is 21 of them.

Reads do not use the driver's download stream: it asks for every chunk from the first one wanted to the
end of the file in one cursor whose first batch may hold the whole file (up to 16 MiB), so a 100-byte
range of a 5 MiB file would read 5 MiB. `read` asks for the chunks the range covers only, `READ_BATCH`
at a time, so a download holds at most that many chunks in memory whatever the file's size.

The embedded store (SecantusDB) answers that query from the `files_id_1_n_1` index (its plan: an index
scan, then an in-memory sort of the chunks the range matched), and the files by `_id`. Writes go through
the driver, one insert per chunk, after it checked with two `find_one` that the bucket's indexes exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from gridfs import AsyncGridFSBucket
from gridfs.errors import CorruptGridFile, NoFile
from pymongo.errors import DuplicateKeyError

from services.storage.store import MEDIA_BUCKET, Doc, Store

CHUNK_BYTES = 255 * 1024
READ_BATCH = 2
# What a stored path looks like: a folder and a name of URL-safe characters (services/media/store.py).
STORED_PATH = re.compile(r"^[A-Za-z0-9_-]{1,64}/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
# Hashing more than this many bytes goes to a thread, off the event loop.
INLINE_HASH_BYTES = 64 * 1024


@dataclass(frozen=True)
class Blob:
    """What is known of a stored file without reading its bytes."""

    path: str
    size: int
    content_type: str | None
    sha256: str | None
    uploaded_at: dt.datetime | None
    chunk_bytes: int

    @classmethod
    def of(cls, doc: Doc) -> Blob:
        metadata = doc.get("metadata") or {}
        return cls(
            path=str(doc["_id"]),
            size=int(doc.get("length", 0)),
            content_type=metadata.get("content_type"),
            sha256=metadata.get("sha256"),
            uploaded_at=doc.get("uploadDate"),
            chunk_bytes=int(doc.get("chunkSize") or CHUNK_BYTES),
        )


async def sha256_of(data: bytes) -> str:
    if len(data) <= INLINE_HASH_BYTES:
        return hashlib.sha256(data).hexdigest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())


class MediaFiles:
    def __init__(self, store: Store) -> None:
        self.bucket = AsyncGridFSBucket(store.db, bucket_name=MEDIA_BUCKET, chunk_size_bytes=CHUNK_BYTES)
        self.files = store.media_files
        self.chunks = store.media_chunks

    async def put(self, path: str, data: bytes, content_type: str, owner: int | None) -> None:
        """Store `data` as `path`; DuplicateKeyError if `path` is taken (the file there is left alone).

        A failure half-way (the store went away between two chunks) removes the chunks written."""
        metadata: dict[str, Any] = {"owner": owner, "content_type": content_type, "sha256": await sha256_of(data)}
        try:
            await self.bucket.upload_from_stream_with_id(path, path, data, metadata=metadata)
        except DuplicateKeyError:
            raise
        except BaseException:
            await self.delete(path)
            raise

    async def delete(self, path: str) -> None:
        """Remove a stored file and its chunks; a file already gone is not an error."""
        with contextlib.suppress(NoFile):  # the bucket removed any chunks left behind all the same
            await self.bucket.delete(path)

    async def find(self, path: str) -> Blob | None:
        doc = await self.files.find_one({"_id": path})
        return Blob.of(doc) if doc is not None else None

    async def exists(self, path: str) -> bool:
        return await self.files.find_one({"_id": path}, {"_id": 1}) is not None

    async def read(self, blob: Blob, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes `start` to `end` (exclusive; the end of the file when None), chunk by chunk.

        CorruptGridFile if a chunk is missing or of the wrong size (a file deleted while it was read)."""
        end = blob.size if end is None else min(end, blob.size)
        if start >= end:
            return
        size = blob.chunk_bytes
        first, last = start // size, (end - 1) // size
        cursor = self.chunks.find(
            {"files_id": blob.path, "n": {"$gte": first, "$lte": last}}, {"n": 1, "data": 1}, batch_size=READ_BATCH
        ).sort("n", 1)
        expected = first
        async for chunk in cursor:
            n = int(chunk["n"])
            data = bytes(chunk["data"])
            whole = min(size, blob.size - n * size)
            if n != expected or len(data) != whole:
                await cursor.close()
                raise CorruptGridFile(f"{blob.path}: chunk {expected} missing or truncated")
            offset = n * size
            yield data[max(0, start - offset) : min(len(data), end - offset)]
            expected += 1
        if expected <= last:
            raise CorruptGridFile(f"{blob.path}: chunk {expected} missing")
