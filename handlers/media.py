"""Serving uploaded files read-only under /media/."""

from __future__ import annotations

from handlers.files import FileHandler
from services.media.content import ATTACHMENT_TYPES

CONTENT_TYPE_BY_EXTENSION = {extension: content_type for content_type, extension in ATTACHMENT_TYPES.items()}


class MediaHandler(FileHandler):
    def set_extra_headers(self, path: str) -> None:
        # Uploaded bytes were type-checked on the way in; still never let a browser guess another type,
        # and never let an uploaded file run script in our origin.
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        self.set_header("Cache-Control", "public, max-age=86400, immutable")

    def get_content_type(self) -> str:
        # The type verified at upload, by the extension we chose then; the host's mime.types is not
        # consulted (it may lack webp, or map an extension to something a browser would render).
        assert self.absolute_path is not None
        extension = self.absolute_path.rpartition(".")[2].lower()
        content_type = CONTENT_TYPE_BY_EXTENSION.get(extension, "application/octet-stream")
        return content_type + ("; charset=utf-8" if content_type == "text/plain" else "")


def make_routes(media_root: str) -> list[tuple[str, type, dict[str, object]]]:
    return [(r"/media/(.*)", MediaHandler, {"path": media_root})]
