"""Domain errors. Services raise these; the edge maps each to an HTTP status or a WebSocket frame."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    code = "error"

    def __init__(self, message: str, *, code: str | None = None, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.fields = fields


class Invalid(DomainError):
    code = "invalid"


class Unauthorized(DomainError):
    code = "unauthorized"


class Forbidden(DomainError):
    code = "forbidden"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class TooLarge(DomainError):
    code = "too_large"


class RateLimited(DomainError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Unavailable(DomainError):
    """A backing store (MongoDB, Redis) cannot be reached: the request may succeed later."""

    code = "unavailable"


def backend_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means a backing store cannot be reached right now (the request may succeed later).

    Raw driver errors escape from many awaits, so the edge asks this instead of knowing the drivers."""
    from services.storage.store import STORE_DOWN_ERRORS  # storage depends on nothing here: no cycle

    return isinstance(exc, (Unavailable, *STORE_DOWN_ERRORS))
