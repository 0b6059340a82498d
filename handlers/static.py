"""The bundled demo page (static/), served at / with no build step."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from handlers.files import FileHandler

log = logging.getLogger("chat.static")

# static/ sits beside handlers/ both in a checkout and in site-packages: setup.cfg installs it as
# package data of its own, so the path relative to this file is the same wherever the server runs from.
STATIC_ROOT = Path(__file__).resolve().parent.parent / "static"


class DemoFileHandler(FileHandler):
    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-cache")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob: http: https:; connect-src 'self' ws: wss:; "
            "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        )


def make_routes() -> list[tuple[str, type, dict[str, Any]]]:
    if not (STATIC_ROOT / "index.html").is_file():
        # An install that left the package data behind: say why / is a 404 once, not at every request.
        log.warning("demo page not found in %s: / and /static/ will answer 404", STATIC_ROOT)
    options = {"path": str(STATIC_ROOT), "default_filename": "index.html"}
    return [(r"/()", DemoFileHandler, options), (r"/static/(.*)", DemoFileHandler, options)]
