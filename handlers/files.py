"""Files served as they are (the demo page, the API document's page, uploaded media): Tornado's static
file handler, with the server's JSON error envelope and no way for a path to cause a 500."""

from __future__ import annotations

from typing import Any

import orjson
import tornado.web

from handlers.base import set_common_headers
from handlers.errors import report


class FileHandler(tornado.web.StaticFileHandler):
    def set_default_headers(self) -> None:
        set_common_headers(self)

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        # A NUL byte makes the file system calls behind this raise ValueError (a 500): no file has one.
        if "\x00" in absolute_path:
            raise tornado.web.HTTPError(404)
        return super().validate_absolute_path(root, absolute_path)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        write_file_error(self, status_code, **kwargs)


def write_file_error(
    handler: tornado.web.RequestHandler, status_code: int, headers: dict[str, str] | None = None, **kwargs: Any
) -> None:
    """The JSON envelope in place of a file (with `headers`): what `write_error` of a handler serving
    files writes."""
    exc = kwargs.get("exc_info", (None, None, None))[1]
    answer = report(exc, status_code)
    # Extra headers meant for a file (caching, a sandbox, a range) do not describe an error answer.
    for name in ("Cache-Control", "ETag", "Last-Modified", "Accept-Ranges", "Content-Range", "Content-Length"):
        handler.clear_header(name)
    handler.set_header("Cache-Control", "no-store")
    handler.set_status(answer.status)
    handler.set_header("Content-Type", "application/json; charset=utf-8")
    handler.set_header("X-Content-Type-Options", "nosniff")
    for name, value in (headers or {}).items():
        handler.set_header(name, value)
    handler.finish(orjson.dumps(answer.envelope()))
