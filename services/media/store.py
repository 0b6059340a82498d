"""Files uploaded by users (profile photos, message attachments): accepted, stored in MongoDB, removed.

An upload is accepted in this order: its size and its type, read from its bytes (content.py); the user's
upload rate (`UPLOADS_PER_HOUR`, cluster-wide with Redis); an image is decoded and encoded again, which
strips its metadata and bounds its size (images.py); the user's storage quota (quota.py); then the files
are stored in the database's GridFS bucket under random names (not guessable from ids) (blobs.py), so
that every node serves every file, and served read-only at /media/ (handlers/media.py). An image's
thumbnails are files of their own: `x.jpg` has `x.128.jpg` and `x.512.jpg` (`thumbnail_path`). Unsent
attachments are swept (sweeper.py); `remove_user_files` (cleanup.py) removes everything of one user.

`MediaStore(store, public_base, max_bytes)` alone re-encodes with the default limits and counts nothing;
the container then calls `connect` with the node's settings, store and rate counters, and `start`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.core.config import Settings
from services.core.errors import Invalid, TooLarge
from services.media.blobs import MediaFiles
from services.media.content import ATTACHMENT_TYPES, looks_like_text, sniff_content_type
from services.media.images import ImagePipeline, ProcessedImage
from services.media.policy import MediaPolicy
from services.media.quota import StorageQuota
from services.media.sweeper import AttachmentSweeper
from services.realtime.counters import RateCounters, check_rate
from services.storage.store import Doc, Store


@dataclass(frozen=True)
class StoredFile:
    """A file as written: what its document keeps (`fields`) and what the quota counted for it."""

    path: str
    content_type: str
    size: int  # bytes of the file at `path`, the one its URL serves
    stored_bytes: int  # everything written for it, thumbnails included: what the quota counts
    thumbnails: dict[int, str] = field(default_factory=dict)  # longest side -> path
    width: int | None = None
    height: int | None = None

    def fields(self) -> Doc:
        out: Doc = {
            "path": self.path,
            "content_type": self.content_type,
            "size": self.size,
            "stored_bytes": self.stored_bytes,
        }
        if self.thumbnails:
            out["thumbnails"] = {str(side): path for side, path in self.thumbnails.items()}
            out["width"] = self.width
            out["height"] = self.height
        return out


def paths_of(doc: Mapping[str, Any]) -> list[str]:
    """Every file a photo or attachment document names: the file and its thumbnails."""
    paths = [doc["path"]] if doc.get("path") else []
    thumbnails = doc.get("thumbnails")
    if isinstance(thumbnails, dict):
        paths += [p for p in thumbnails.values() if isinstance(p, str)]
    return paths


def thumbnail_path(path: str, side: int) -> str:
    """Where the thumbnail of `path` with the longest side `side` is: `a/x.jpg` -> `a/x.128.jpg`."""
    stem, dot, extension = path.rpartition(".")
    return f"{stem}.{side}.{extension}" if dot else f"{path}.{side}"


class MediaStore:
    def __init__(self, store: Store, public_base: str, max_bytes: int, policy: MediaPolicy | None = None) -> None:
        self.files = MediaFiles(store)
        self.public_base = public_base.rstrip("/")
        self.max_bytes = max_bytes
        self.policy = policy or MediaPolicy()
        self.pipeline = ImagePipeline(self.policy.image, self.policy.image_concurrency)
        self.quota: StorageQuota | None = None
        self.sweeper: AttachmentSweeper | None = None
        self._rates: RateCounters | None = None

    def connect(self, settings: Settings, store: Store, rates: RateCounters) -> None:
        """Apply the node's limits, count quotas in `store`, rate uploads with `rates`."""
        self.policy = MediaPolicy.from_settings(settings)
        self.pipeline.close()
        self.pipeline = ImagePipeline(self.policy.image, self.policy.image_concurrency)
        self.quota = StorageQuota(store.users, self.policy.quota_bytes)
        self._rates = rates
        self.sweeper = AttachmentSweeper(
            store.attachments,
            self.forget,
            ttl_s=self.policy.unsent_attachment_ttl_s,
            interval_s=self.policy.sweep_interval_s,
        )

    def start(self) -> None:
        if self.sweeper is not None:
            self.sweeper.start()

    async def close(self) -> None:
        if self.sweeper is not None:
            await self.sweeper.close()
        self.pipeline.close()

    # -- URLs -----------------------------------------------------------------------------------------

    def url(self, relative_path: str | None) -> str | None:
        """Absolute URL of a stored file (the seed shows absolute picture URLs)."""
        if not relative_path:
            return None
        return f"{self.public_base}/media/{relative_path}"

    def thumbnail_urls(self, doc: Mapping[str, Any]) -> dict[str, str]:
        """The URL of each configured thumbnail of an image document, by its longest side ("128").

        A side the document has no thumbnail for (an image stored before thumbnails were made, or
        before that side was configured) is the image itself."""
        stored = doc.get("thumbnails")
        if not isinstance(stored, dict):
            stored = {}
        out: dict[str, str] = {}
        for side in self.policy.image.thumbnail_sides:
            url = self.url(stored.get(str(side)) or doc.get("path"))
            if url is not None:
                out[str(side)] = url
        return out

    # -- accepting an upload --------------------------------------------------------------------------

    def check(self, data: bytes, allowed: Mapping[str, str], declared_type: str | None = None) -> str:
        """The verified content type of an upload, or a domain error."""
        if len(data) > self.max_bytes:
            raise TooLarge(f"File larger than {self.max_bytes} bytes", code="file_too_large")
        if not data:
            raise Invalid("Empty file", code="empty_file")
        content_type = sniff_content_type(data)
        if content_type is None and declared_type == "text/plain" and looks_like_text(data):
            content_type = "text/plain"
        if content_type is None or content_type not in allowed:
            raise Invalid(
                "Unsupported file type; allowed: " + ", ".join(sorted(allowed)), code="unsupported_media_type"
            )
        return content_type

    async def accept(
        self, user_id: int, data: bytes, allowed: Mapping[str, str], folder: str, declared_type: str | None = None
    ) -> StoredFile:
        """Check, rate, re-encode (images), count and write one upload of `user_id`.

        Errors: 413 `file_too_large` or `storage_quota_exceeded`; 400 `empty_file`,
        `unsupported_media_type`, `invalid_image`, `image_too_many_pixels`; 429 `rate_limited`."""
        content_type = self.check(data, allowed, declared_type)
        if self._rates is not None:
            # Counted before decoding: a flood of bad images spends the budget too.
            await check_rate(self._rates, self.policy.upload_rate, user_id)
        image = await self.pipeline.process(data) if content_type.startswith("image/") else None
        stored_bytes = image.total_bytes if image is not None else len(data)
        if self.quota is not None:
            await self.quota.reserve(user_id, stored_bytes)
        try:
            if image is not None:
                return await self._write_image(user_id, folder, image)
            path = await self.save(user_id, folder, data, content_type)
            return StoredFile(path, content_type, len(data), len(data))
        except BaseException:
            if self.quota is not None:
                await self.quota.release(user_id, stored_bytes)
            raise

    async def forget(self, user_id: int, doc: Mapping[str, Any]) -> None:
        """Remove the files of a photo or attachment document and stop counting them against the quota."""
        for path in paths_of(doc):
            await self.delete(path)
        if self.quota is not None:
            await self.quota.release(user_id, int(doc.get("stored_bytes") or 0))

    async def discard(self, user_id: int, stored: StoredFile) -> None:
        """Undo `accept` for a file that no document came to name."""
        await self.forget(user_id, stored.fields())

    # -- files ----------------------------------------------------------------------------------------

    async def _write_image(self, user_id: int, folder: str, image: ProcessedImage) -> StoredFile:
        path = _new_path(folder, image.content_type)
        files = {path: image.data} | {thumbnail_path(path, side): data for side, data in image.thumbnails.items()}
        try:
            for name, data in files.items():
                await self.files.put(name, data, image.content_type, user_id)
        except BaseException:
            for name in files:
                await self.delete(name)
            raise
        thumbnails = {side: thumbnail_path(path, side) for side in image.thumbnails}
        return StoredFile(
            path, image.content_type, len(image.data), image.total_bytes, thumbnails, image.width, image.height
        )

    async def save(self, user_id: int, folder: str, data: bytes, content_type: str) -> str:
        """Store the bytes under a random name in `folder`; the path their URL and documents name."""
        path = _new_path(folder, content_type)
        await self.files.put(path, data, content_type, user_id)
        return path

    async def delete(self, path: str) -> None:
        """Remove a stored file; a file already gone is not an error."""
        await self.files.delete(path)


def _new_path(folder: str, content_type: str) -> str:
    return f"{folder}/{secrets.token_urlsafe(16)}.{ATTACHMENT_TYPES[content_type]}"
