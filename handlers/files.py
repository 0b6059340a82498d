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
        exc = kwargs.get("exc_info", (None, None, None))[1]
        answer = report(exc, status_code)
        # Extra headers meant for a file (caching, a sandbox) do not describe an error answer.
        self.clear_header("Cache-Control")
        self.set_header("Cache-Control", "no-store")
        self.set_status(answer.status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(orjson.dumps(answer.envelope()))
