"""Files uploaded by users (profile pictures, message attachments), checked and kept on disk.

Files are written under DATA_DIR/media with random names (not guessable from ids) and served read-only
at /media/ (handlers/media.py).
"""

from __future__ import annotations

import asyncio
import secrets
from functools import partial
from pathlib import Path

from services.core.errors import Invalid, TooLarge
from services.media.content import ATTACHMENT_TYPES, looks_like_text, sniff_content_type


class MediaStore:
    def __init__(self, root: str | Path, public_base: str, max_bytes: int) -> None:
        self.root = Path(root)
        self.public_base = public_base.rstrip("/")
        self.max_bytes = max_bytes

    def url(self, relative_path: str | None) -> str | None:
        """Absolute URL of a stored file (the seed shows absolute picture URLs)."""
        if not relative_path:
            return None
        return f"{self.public_base}/media/{relative_path}"

    def check(self, data: bytes, allowed: dict[str, str], declared_type: str | None = None) -> str:
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

    async def save(self, folder: str, data: bytes, content_type: str) -> str:
        """Write the bytes under a random name and return the path relative to the media root."""
        extension = ATTACHMENT_TYPES[content_type]
        relative = f"{folder}/{secrets.token_urlsafe(16)}.{extension}"
        target = self.root / relative
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _write_file, target, data)
        return relative

    async def delete(self, relative_path: str) -> None:
        """Remove a stored file; a file already gone is not an error."""
        target = (self.root / relative_path).resolve()
        # Paths come from our own documents, but a corrupted one must never reach outside the media root.
        if not target.is_relative_to(self.root.resolve()):
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, partial(target.unlink, missing_ok=True))


def _write_file(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(target)
