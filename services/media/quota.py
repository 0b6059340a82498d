"""How many bytes of files each user keeps stored, and the quota on it (`MEDIA_QUOTA_BYTES`).

The count is a field of the user's document, `media_bytes`, moved by one conditional `$inc` per file: a
reservation succeeds only if the count stays within the quota, so forty uploads at once cannot all pass a
check that each of them read before any was counted, and nodes need no lock. A file counts everything
stored for it (an image's thumbnails too) from the moment it is written until it is removed. Files stored
before this count existed are not in it.
"""

from __future__ import annotations

from pymongo.asynchronous.collection import AsyncCollection

from services.core.errors import TooLarge
from services.storage.store import Doc

USAGE_FIELD = "media_bytes"


def quota_exceeded(limit: int) -> TooLarge:
    return TooLarge(
        f"Storage quota of {limit} bytes reached: delete photos or wait for unsent attachments to expire",
        code="storage_quota_exceeded",
    )


class StorageQuota:
    def __init__(self, users: AsyncCollection[Doc], limit_bytes: int) -> None:
        self._users = users
        self.limit_bytes = limit_bytes  # 0: count, but refuse nothing

    async def reserve(self, user_id: int, size: int) -> None:
        """Count `size` more bytes for the user, or TooLarge (413 `storage_quota_exceeded`)."""
        query: Doc = {"_id": user_id}
        if self.limit_bytes > 0:
            if size > self.limit_bytes:
                raise quota_exceeded(self.limit_bytes)
            # `$not $gt` also matches a document that has no count yet.
            query[USAGE_FIELD] = {"$not": {"$gt": self.limit_bytes - size}}
        result = await self._users.update_one(query, {"$inc": {USAGE_FIELD: size}})
        if result.matched_count == 0 and self.limit_bytes > 0:
            raise quota_exceeded(self.limit_bytes)

    async def release(self, user_id: int, size: int) -> None:
        """Count `size` fewer bytes (never below zero: files stored before counting began were not counted)."""
        if size <= 0:
            return
        done = await self._users.update_one(
            {"_id": user_id, USAGE_FIELD: {"$gte": size}}, {"$inc": {USAGE_FIELD: -size}}
        )
        if done.matched_count == 0:
            await self._users.update_one({"_id": user_id, USAGE_FIELD: {"$lt": size}}, {"$set": {USAGE_FIELD: 0}})

    async def used(self, user_id: int) -> int:
        doc = await self._users.find_one({"_id": user_id}, {USAGE_FIELD: 1})
        return int(doc.get(USAGE_FIELD, 0)) if doc else 0

    async def reset(self, user_id: int) -> None:
        await self._users.update_one({"_id": user_id}, {"$set": {USAGE_FIELD: 0}})
