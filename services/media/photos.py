"""A profile's photos: up to `MAX_PROFILE_PHOTOS`, in the order their owner chose; the first is the picture.

They are kept in the user document: `photos`, a list of entries in order, and `picture`, the first entry's
path, which every summary, frame and public profile reads as `profile_picture` (so none of them changed).
Each change is one update conditional on `photo_rev`, the revision it read, which it increments: two
concurrent changes of one user's photos (an upload and a reorder) cannot lose each other; the second
reads again and retries. A document from before photo lists (a `picture`, no `photos`) gets its picture
as its only photo the first time its photos are read.

Files of an entry a change drops (a deleted photo, a picture replaced) are removed once the change is
stored, and stop counting against the owner's quota.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from services.core.errors import Conflict, NotFound
from services.media.content import IMAGE_TYPES, type_of_path
from services.media.store import MediaStore, StoredFile
from services.storage.store import Doc, Store

# The folder photos are written to: the one profile pictures always had, so their URLs keep their shape.
PHOTO_FOLDER = "profile_pictures"
MAX_ATTEMPTS = 5
Change = Callable[[list[Doc]], list[Doc]]


def photo_not_found() -> NotFound:
    return NotFound("Photo not found", code="photo_not_found")


def photos_in(doc: Doc) -> list[Doc]:
    """The photo entries of a user document, in order (a legacy `picture` as the only one, id 0)."""
    photos = doc.get("photos")
    if isinstance(photos, list):
        return photos
    return [_legacy_entry(0, doc["picture"])] if doc.get("picture") else []


def _legacy_entry(photo_id: int, path: str) -> Doc:
    return {"id": photo_id, "path": path, "content_type": type_of_path(path) or "image/jpeg"}


class ProfilePhotos:
    def __init__(self, store: Store, media: MediaStore, on_change: Callable[[int], None]) -> None:
        self._store = store
        self._media = media
        self._on_change = on_change  # told the user id after a change: the picture may have changed

    # -- reading --------------------------------------------------------------------------------------

    async def current(self, user_id: int) -> list[dict[str, Any]]:
        """The photo objects, in order."""
        _, photos = await self._load(user_id)
        return [self.photo_object(entry) for entry in photos]

    def urls(self, doc: Doc) -> list[str]:
        """The photos of a profile as others see them: their URLs, in order."""
        return [url for entry in photos_in(doc) if (url := self._media.url(entry.get("path")))]

    def photo_object(self, entry: Doc) -> dict[str, Any]:
        return {
            "id": int(entry["id"]),
            "url": self._media.url(entry["path"]),
            "thumbnails": self._media.thumbnail_urls(entry),
            "content_type": entry["content_type"],
            "width": entry.get("width"),
            "height": entry.get("height"),
        }

    # -- changes --------------------------------------------------------------------------------------

    async def add(self, user_id: int, data: bytes) -> dict[str, Any]:
        """Add a photo at the end; 409 `photo_limit_reached` when the profile holds the most it may."""
        _, current = await self._load(user_id)
        self._check_room(current)  # before any decoding; checked again when the entry is stored
        entry = await self._new_entry(user_id, data)

        def append(photos: list[Doc]) -> list[Doc]:
            self._check_room(photos)
            return [*photos, entry]

        await self._mutate(user_id, append, adding=entry)
        return self.photo_object(entry)

    async def replace_first(self, user_id: int, data: bytes) -> str:
        """Make the upload the first photo (the profile picture), in place of the current first one."""
        await self._load(user_id)
        entry = await self._new_entry(user_id, data)
        await self._mutate(user_id, lambda photos: [entry, *photos[1:]], adding=entry)
        url = self._media.url(entry["path"])
        assert url is not None
        return url

    async def delete(self, user_id: int, photo_id: int) -> None:
        def without(photos: list[Doc]) -> list[Doc]:
            kept = [entry for entry in photos if entry["id"] != photo_id]
            if len(kept) == len(photos):
                raise photo_not_found()
            return kept

        await self._mutate(user_id, without)

    async def reorder(self, user_id: int, order: list[int]) -> list[dict[str, Any]]:
        """Put the photos named in `order` first, in that order; the others follow in their current order.

        `[id]` alone makes that photo the profile picture. An id that is not one of the user's photos is
        404 `photo_not_found`, like a photo that does not exist (the request model refuses duplicates)."""

        def reordered(photos: list[Doc]) -> list[Doc]:
            by_id = {entry["id"]: entry for entry in photos}
            if any(photo_id not in by_id for photo_id in order):
                raise photo_not_found()
            named = set(order)
            return [by_id[photo_id] for photo_id in order] + [e for e in photos if e["id"] not in named]

        after = await self._mutate(user_id, reordered)
        return [self.photo_object(entry) for entry in after]

    # -- the stored list ------------------------------------------------------------------------------

    def _check_room(self, photos: list[Doc]) -> None:
        limit = self._media.policy.max_profile_photos
        if len(photos) >= limit:
            raise Conflict(f"A profile holds at most {limit} photos", code="photo_limit_reached")

    async def _new_entry(self, user_id: int, data: bytes) -> Doc:
        stored: StoredFile = await self._media.accept(user_id, data, IMAGE_TYPES, PHOTO_FOLDER)
        try:
            photo_id = await self._store.next_id("photos")
        except BaseException:
            await self._media.discard(user_id, stored)
            raise
        return {"id": photo_id, **stored.fields(), "created_at": dt.datetime.now(dt.UTC)}

    async def _load(self, user_id: int) -> tuple[int | None, list[Doc]]:
        """(revision, photo entries) of a live account; NotFound for a missing or deleted one."""
        for _ in range(MAX_ATTEMPTS):
            doc = await self._store.users.find_one(
                {"_id": user_id, "deleted": {"$ne": True}}, {"photos": 1, "picture": 1, "photo_rev": 1}
            )
            if doc is None:
                raise NotFound("User not found")
            revision = doc.get("photo_rev")
            if isinstance(doc.get("photos"), list) or not doc.get("picture"):
                return revision, photos_in(doc)
            # A picture from before photo lists becomes the first photo, with an id of its own, once.
            legacy = [_legacy_entry(await self._store.next_id("photos"), doc["picture"])]
            if await self._commit(user_id, revision, legacy):
                return (revision or 0) + 1, legacy
        raise _busy()

    async def _commit(self, user_id: int, revision: int | None, photos: list[Doc]) -> bool:
        """Store `photos` if nobody changed them since `revision` was read."""
        result = await self._store.users.update_one(
            # `photo_rev: None` also matches a document that never had one.
            {"_id": user_id, "deleted": {"$ne": True}, "photo_rev": revision},
            {
                "$set": {
                    "photos": photos,
                    "picture": photos[0]["path"] if photos else None,
                    "photo_rev": (revision or 0) + 1,
                }
            },
        )
        return result.matched_count == 1

    async def _mutate(self, user_id: int, change: Change, *, adding: Doc | None = None) -> list[Doc]:
        """Apply `change` to the stored list (retried on a concurrent change); remove what it dropped.

        `adding` is an entry whose files are written already: they are removed if it is not stored."""
        try:
            for _ in range(MAX_ATTEMPTS):
                revision, before = await self._load(user_id)
                after = change(list(before))
                if await self._commit(user_id, revision, after):
                    break
            else:
                raise _busy()
        except BaseException:
            if adding is not None:
                await self._media.forget(user_id, adding)
            raise
        self._on_change(user_id)
        kept = {entry["id"] for entry in after}
        for entry in before:
            if entry["id"] not in kept:
                await self._media.forget(user_id, entry)
        return after


def _busy() -> Conflict:
    return Conflict("The photos changed meanwhile; try again", code="photos_changed")
