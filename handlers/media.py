"""Serving uploaded files read-only under /media/, from the database (services/media/blobs.py).

Whoever holds a file's URL may read it: the URL, with its random name, is the capability (handlers/base.py
REFERRER_POLICY). The answer is streamed chunk by chunk as the client takes it, and carries:

- the content type verified at upload (by the bytes, services/media/content.py), `nosniff` and a sandbox;
- `Cache-Control: public, max-age=86400, immutable` (a path is never reused for other bytes), an `ETag`
  (the SHA-256 of the bytes) and `Last-Modified` (the upload): `If-None-Match` (or, without it,
  `If-Modified-Since`) that still holds is 304 with no body;
- `Accept-Ranges: bytes`: one range (`bytes=0-99`, `bytes=100-`, `bytes=-100`) is 206 with its
  `Content-Range`; a range that starts past the end is 416 `range_not_satisfiable` (the JSON envelope)
  with `Content-Range: bytes */<size>`; several
  ranges or a malformed header are ignored (the whole file, 200), as RFC 9110 allows; an `If-Range` that
  does not name the current ETag or date asks for the whole file.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import re
from typing import Any

import tornado.http1connection
import tornado.iostream
import tornado.web
from gridfs.errors import CorruptGridFile

from handlers.base import set_common_headers
from handlers.files import write_file_error
from services.media.blobs import STORED_PATH, Blob
from services.media.content import ATTACHMENT_TYPES, type_of_path
from services.media.store import MediaStore

log = logging.getLogger("chat.media")
CACHE_CONTROL = "public, max-age=86400, immutable"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Unsatisfiable(Exception):
    """A range that starts past the end of the file (416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The bytes [start, end) that a `Range` header asks of a file of `size` bytes; None for the whole
    file (no header, several ranges, or one this parser does not read); Unsatisfiable for a range that
    holds no byte of the file."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)  # the last `suffix` bytes
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None  # `bytes=9-3`: invalid, so ignored
    if start >= size:
        raise Unsatisfiable
    return start, min(int(last) + 1 if last else size, size)


def served_type(blob: Blob) -> str:
    """The type verified at upload; for a file migrated without one, the type its extension was chosen for
    (never the host's mime.types, which may lack webp or map an extension to something a browser renders)."""
    content_type = blob.content_type
    if content_type not in ATTACHMENT_TYPES:
        content_type = type_of_path(blob.path) or "application/octet-stream"
    return content_type + ("; charset=utf-8" if content_type == "text/plain" else "")


class MediaHandler(tornado.web.RequestHandler):
    def initialize(self, media: MediaStore) -> None:
        self.media = media
        self._size: int | None = None  # of the file asked for, once found

    def set_default_headers(self) -> None:
        set_common_headers(self)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        unsatisfiable = status_code == 416 and self._size is not None
        headers = {"Content-Range": f"bytes */{self._size}"} if unsatisfiable else None
        write_file_error(self, status_code, headers, **kwargs)

    async def head(self, path: str) -> None:
        await self.get(path, include_body=False)

    async def get(self, path: str, include_body: bool = True) -> None:
        blob = await self.media.files.find(path) if STORED_PATH.match(path) else None
        if blob is None:
            raise tornado.web.HTTPError(404)
        self._size = blob.size
        self._describe(blob)
        if self._not_modified(blob):
            self.set_status(304)
            return
        wanted = self.request.headers.get("Range") if self._range_applies(blob) else None
        try:
            span = byte_range(wanted, blob.size)
        except Unsatisfiable:
            raise tornado.web.HTTPError(416, "The range holds no byte of the file") from None
        start, end = span if span is not None else (0, blob.size)
        if span is not None:
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")
        self.set_header("Content-Length", str(end - start))
        if not include_body:
            return
        await self._stream(blob, start, end)

    def _describe(self, blob: Blob) -> None:
        self.set_header("Content-Type", served_type(blob))
        # Uploaded bytes were type-checked on the way in; still never let a browser guess another type,
        # and never let an uploaded file run script in our origin.
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        self.set_header("Cache-Control", CACHE_CONTROL)
        self.set_header("Accept-Ranges", "bytes")
        if blob.sha256:
            self.set_header("ETag", f'"{blob.sha256}"')
        if blob.uploaded_at is not None:
            self.set_header("Last-Modified", blob.uploaded_at)

    def _not_modified(self, blob: Blob) -> bool:
        if self.request.headers.get("If-None-Match"):
            return blob.sha256 is not None and self.check_etag_header()
        since = _http_date(self.request.headers.get("If-Modified-Since"))
        return since is not None and blob.uploaded_at is not None and _seconds(blob.uploaded_at) <= since

    def _range_applies(self, blob: Blob) -> bool:
        """False when an `If-Range` names another version than the stored one (then the whole file goes)."""
        condition = self.request.headers.get("If-Range")
        if not condition:
            return True
        if condition.startswith('"'):
            return blob.sha256 is not None and condition == f'"{blob.sha256}"'
        date = _http_date(condition)
        return date is not None and blob.uploaded_at is not None and _seconds(blob.uploaded_at) == date

    async def _stream(self, blob: Blob, start: int, end: int) -> None:
        try:
            async for piece in self.media.files.read(blob, start, end):
                self.write(piece)
                await self.flush()  # waits for the client: a slow reader holds one chunk, not the file
        except tornado.iostream.StreamClosedError:
            return  # the client went away
        except CorruptGridFile as exc:
            # Deleted while it was sent: the headers are gone already, only closing tells the client.
            log.info("media file cut short: %s", exc)
            if isinstance(self.request.connection, tornado.http1connection.HTTP1Connection):
                self.request.connection.close()


def _http_date(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _seconds(moment: dt.datetime) -> dt.datetime:
    """`moment` at the precision of an HTTP date (whole seconds), aware."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
    return aware.replace(microsecond=0)


def make_routes(media: MediaStore) -> list[tuple[str, type, dict[str, object]]]:
    return [(r"/media/(.*)", MediaHandler, {"media": media})]
