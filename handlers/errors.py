"""The one map from an exception to what a client is told.

REST answers, both WebSocket endpoints, the static and media handlers all call `report(exc)`, so the
same failure gets the same error code, message and status everywhere, and nothing a client sends ends in
a 500 with a traceback. An `ErrorReport` renders itself as the JSON envelope
`{"error": {"code", "message", "fields"?}}` or as the socket's `error` frame.
"""

from __future__ import annotations

import http
import math
from dataclasses import dataclass
from typing import Any

import pydantic
import tornado.web

from services.core import errors
from services.realtime.close_codes import (
    CLOSE_BAD_FRAME,
    CLOSE_BAD_TOKEN,
    CLOSE_FORBIDDEN,
    CLOSE_SERVER_ERROR,
    CLOSE_TRY_AGAIN_LATER,
)
from services.realtime.hub import LimitExceeded

STATUS_BY_ERROR: dict[type[errors.DomainError], int] = {
    errors.Invalid: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.TooLarge: 413,
    errors.RateLimited: 429,
    errors.Unavailable: 503,
}

DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    416: "range_not_satisfiable",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal_error",
    503: "unavailable",
}

UNAVAILABLE_MESSAGE = "Storage temporarily unavailable"


class BadFrame(errors.Invalid):
    """A WebSocket frame that breaks the protocol (close 4003): not JSON, not an object, unknown type..."""

    code = "bad_frame"


@dataclass(frozen=True)
class ErrorReport:
    status: int
    code: str
    message: str
    fields: dict[str, Any] | None = None
    retry_after_s: float | None = None
    # On a socket: the close code when the error ends the socket wherever it happens (a bad frame, an
    # unexpected failure); None when an open socket answers with an error frame and stays open.
    close_code: int | None = None
    # The close code when the error happens while a socket opens (every failure then closes it).
    open_close_code: int = CLOSE_SERVER_ERROR

    @property
    def retry_after_header(self) -> str | None:
        return None if self.retry_after_s is None else str(max(1, math.ceil(self.retry_after_s)))

    def envelope(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        return {"error": error}

    def frame(self, **extra: Any) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message, **extra}
        if self.retry_after_s is not None:
            frame["retry_after_ms"] = max(1, int(self.retry_after_s * 1000))
        return frame


def status_of(error: errors.DomainError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[kind]  # type: ignore[index]
    return 400


def pydantic_fields(exc: pydantic.ValidationError) -> dict[str, str]:
    fields: dict[str, str] = {}
    for err in exc.errors(include_url=False, include_input=False):
        key = ".".join(str(part) for part in err["loc"]) or "body"
        fields.setdefault(key, err["msg"])
    return fields


def report(exc: BaseException | None, status: int = 500) -> ErrorReport:
    """What to tell the client about `exc`. `status` is Tornado's, for a handler that called
    `send_error` without an exception."""
    if isinstance(exc, BadFrame):
        return ErrorReport(400, exc.code, exc.message, close_code=CLOSE_BAD_FRAME, open_close_code=CLOSE_BAD_FRAME)
    if isinstance(exc, errors.DomainError):
        return _domain(exc)
    if exc is not None and errors.backend_unavailable(exc):
        # A socket opening meanwhile is told to come back later, the close code for exactly that.
        return ErrorReport(503, "unavailable", UNAVAILABLE_MESSAGE, open_close_code=CLOSE_TRY_AGAIN_LATER)
    if isinstance(exc, pydantic.ValidationError):
        return ErrorReport(400, "validation_error", "Invalid fields", fields=pydantic_fields(exc))
    if isinstance(exc, LimitExceeded):
        return ErrorReport(503, "connection_limit", str(exc), open_close_code=exc.close_code)
    if isinstance(exc, tornado.web.HTTPError):
        status = exc.status_code
        code = "body_too_large" if status == 413 else DEFAULT_CODES.get(status, "error")
        message = exc.log_message or exc.reason or phrase(status)
        if status >= 500:
            message = "Internal server error"
        return ErrorReport(status, code, message)
    if exc is None:
        message = phrase(status) if status < 500 else "Internal server error"
        return ErrorReport(status, DEFAULT_CODES.get(status, "error"), message)
    return ErrorReport(500, "internal_error", "Internal server error", close_code=CLOSE_SERVER_ERROR)


def phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _domain(exc: errors.DomainError) -> ErrorReport:
    status = status_of(exc)
    retry_after_s = exc.retry_after_s if isinstance(exc, errors.RateLimited) else None
    if isinstance(exc, errors.Unauthorized):
        opening = CLOSE_BAD_TOKEN
    elif isinstance(exc, errors.NotFound | errors.Forbidden):
        opening = CLOSE_FORBIDDEN
    else:
        opening = CLOSE_SERVER_ERROR
    return ErrorReport(status, exc.code, exc.message, exc.fields, retry_after_s, open_close_code=opening)
