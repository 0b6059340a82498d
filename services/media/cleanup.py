"""Removing everything a user uploaded: for account deletion (`remove_user_files`)."""

from __future__ import annotations

from pymongo import ReturnDocument

from services.media.photos import photos_in
from services.media.quota import USAGE_FIELD
from services.media.store import MediaStore, paths_of
from services.storage.store import Store


async def remove_user_files(store: Store, media: MediaStore, user_id: int) -> int:
    """Remove every file `user_id` uploaded, with the documents that name them; how many were removed.

    - Profile photos (and a picture from before photo lists): the list is emptied and `picture` unset in
      one update, then the files go. Other nodes may show the old picture URL in summaries for up to
      their summary cache's 30 s; it then answers 404.
    - Attachments, sent or not: their documents are deleted, then their files. A message that carried one
      then shows `attachment: null` to the other participant.
    - The user's stored-bytes count goes back to zero.

    Safe to call again (it removes what is left) and on a deleted account; it does not delete the account.
    """
    removed = 0
    before = await store.users.find_one_and_update(
        {"_id": user_id},
        {"$set": {"photos": [], "picture": None, USAGE_FIELD: 0}, "$inc": {"photo_rev": 1}},
        projection={"photos": 1, "picture": 1},
        return_document=ReturnDocument.BEFORE,
    )
    for entry in photos_in(before or {}):
        for path in paths_of(entry):
            await media.delete(path)
        removed += 1
    async for attachment in store.attachments.find({"uploader_id": user_id}):
        # Conditional on still being there: a sweep on another node may be removing it at the same moment.
        if (await store.attachments.delete_one({"_id": attachment["_id"]})).deleted_count:
            for path in paths_of(attachment):
                await media.delete(path)
            removed += 1
    return removed
