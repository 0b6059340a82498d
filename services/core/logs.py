"""Log output: one JSON object per line (for log shippers) or plain text (for a terminal).

Context such as `request_id`, `user_id`, `status` or `close_code` is passed with `extra=` and becomes
top-level JSON keys. Tokens and passwords are never put in a record: request URIs are logged through
`redact`, which masks credentials in query strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import sys
import time
from typing import Any

import orjson

_SECRET_QUERY = re.compile(r"(?i)([?&](?:token|access|refresh|password)=)[^&]*")
_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def redact(uri: str) -> str:
    """The URI with credential values masked."""
    if "=" not in uri:
        return uri
    # A function, not a template: a template is expanded by the re module's Python code on every match.
    return _SECRET_QUERY.sub(_masked, uri)


def _masked(match: re.Match[str]) -> str:
    return match.group(1) + "[redacted]"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `node` (NODE_ID) in every line, so that the lines of several nodes
    shipped to one place say which node wrote them."""

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.node:
            entry["node"] = self.node
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(log_format: str, level: str, node: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(node))
    else:
        prefix = f"[{node}] " if node else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class FoldedWarning:
    """A warning that one cause raises for many subjects at once: when the store times out, every
    recipient of that moment's notifications fails the same way, and one line each flooded the log with
    hundreds of lines saying one thing. The first of a window is logged as it comes, with its subject; the
    others in the next `window_s` seconds are counted, and their count is logged as one line when the
    window ends."""

    def __init__(self, logger: logging.Logger, message: str, window_s: float = 10.0) -> None:
        self._logger = logger
        self._message = message  # %-formatted with the subject
        self.window_s = window_s
        self._window_ends = 0.0
        self._folded = 0

    def warn(self, subject: object) -> None:
        now = time.monotonic()
        if now < self._window_ends:
            self._folded += 1
            return
        self.flush()
        self._window_ends = now + self.window_s
        self._logger.warning(self._message, subject)
        # Without a running loop (a script), the count is logged with the next line after the window.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_later(self.window_s, self.flush)

    def flush(self) -> None:
        """Log how many were folded since the last line, if any."""
        if self._folded:
            folded, self._folded = self._folded, 0
            self._logger.warning("%s: %d more like it", self._message % "...", folded)
