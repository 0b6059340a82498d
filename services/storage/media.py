"""Files uploaded by users: profile pictures and message attachments.

Types are recognised by their leading bytes, never by the client's Content-Type or file name, so an
HTML or script file cannot be stored under an image name and served back to a browser. Files are written
under DATA_DIR/media with random names (not guessable from ids) and served read-only at /media/.
"""

from __future__ import annotations

import asyncio
import secrets
from functools import partial
from pathlib import Path

from services.core.errors import Invalid, TooLarge

IMAGE_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
ATTACHMENT_TYPES = {**IMAGE_TYPES, "image/gif": "gif", "application/pdf": "pdf", "text/plain": "txt"}


def sniff_content_type(data: bytes) -> str | None:
    """The content type that the bytes themselves prove, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def _looks_like_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return "\x00" not in text


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
        if content_type is None and declared_type == "text/plain" and _looks_like_text(data):
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
