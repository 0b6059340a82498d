"""Serving uploaded files read-only under /media/."""

from __future__ import annotations

import orjson
import tornado.web


class MediaHandler(tornado.web.StaticFileHandler):
    def set_extra_headers(self, path: str) -> None:
        # Uploaded bytes were type-checked on the way in; still never let a browser guess another type,
        # and never let an uploaded file run script in our origin.
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        self.set_header("Cache-Control", "public, max-age=86400, immutable")

    def write_error(self, status_code: int, **kwargs: object) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        code = "not_found" if status_code == 404 else "error"
        self.finish(orjson.dumps({"error": {"code": code, "message": self._reason}}))


def make_routes(media_root: str) -> list[tuple[str, type, dict[str, object]]]:
    return [(r"/media/(.*)", MediaHandler, {"path": media_root})]
