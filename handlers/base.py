"""What every REST handler shares: JSON in and out, bearer authentication, and the error envelope.

Domain errors become HTTP statuses here and nowhere else, so every endpoint answers
`{"error": {"code", "message", "fields"?}}` with the same status for the same kind of failure.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import pydantic
import tornado.web

from services.accounts.auth import TokenError
from services.core import errors
from services.storage.store import STORE_DOWN_ERRORS, Store

if TYPE_CHECKING:
    from services.accounts.users import UserService
    from services.core.container import Services

log = logging.getLogger("chat.http")

Model = TypeVar("Model", bound=pydantic.BaseModel)

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
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


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


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# -- accounts that no longer exist --------------------------------------------------------------------
# A token stays valid until it expires, but the account behind it may be deleted meanwhile. Each node
# remembers for a while whether a user id still has an account, so the check costs one point read per
# user per ACCOUNT_CACHE_TTL_S, not one per request.

ACCOUNT_CACHE_TTL_S = 30.0
ACCOUNT_CACHE_MAX = 100_000


class AccountCache:
    def __init__(self, store: Store, users: UserService | None = None) -> None:
        self._store = store
        self._users = users
        self._entries: dict[int, tuple[float, bool]] = {}
        # Lookups in flight: a user whose sockets all reconnect at once (a node restart, a network
        # blip) costs one read, not one per socket; a reconnect storm of 2,000 sockets otherwise queued
        # 2,000 reads behind MongoDB's connection pool and refused most sockets with 1011.
        self._pending: dict[int, asyncio.Future[bool]] = {}

    async def exists(self, user_id: int) -> bool:
        now = time.monotonic()
        cached = self._entries.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._pending.get(user_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future = self._pending[user_id] = asyncio.get_running_loop().create_future()
        try:
            # The same read brings the user's summary: a socket that opens next announces the user's
            # presence by username, which would otherwise cost a second read of the same document.
            doc = await self._store.users.find_one({"_id": user_id}, {"deleted": 1, "username": 1, "picture": 1})
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, and nobody waiting is no error
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            self._pending.pop(user_id, None)
        alive = doc is not None and not doc.get("deleted")
        if alive and doc is not None and self._users is not None and "username" in doc:
            self._users.remember_summary(doc)
        if len(self._entries) >= ACCOUNT_CACHE_MAX:
            self._entries.clear()
        self._entries[user_id] = (now + ACCOUNT_CACHE_TTL_S, alive)
        future.set_result(alive)
        return alive


def accounts(services: Services) -> AccountCache:
    """The node's AccountCache (kept with its services: ids are per database)."""
    cache = services.extras.get("accounts")
    if cache is None:
        cache = services.extras["accounts"] = AccountCache(services.store, services.users)
    return cache  # type: ignore[no-any-return]


async def refuse_deleted_account(services: Services, user_id: int) -> None:
    if not await accounts(services).exists(user_id):
        raise TokenError("Token invalid")


class BaseHandler(tornado.web.RequestHandler):
    services: Services
    request_id: str = ""
    user_id_for_log: int | None = None

    def initialize(self, services: Services) -> None:
        self.services = services

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        if not self.request_id:
            # A proxy's X-Request-Id is kept (so one id follows a request through nginx and the logs);
            # anything else gets a fresh one. Echoed in the response for support requests. (This runs
            # before initialize() and again on errors, so the id is made once, here.)
            incoming = self.request.headers.get("X-Request-Id", "")
            self.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex[:16]
        self.set_header("X-Request-Id", self.request_id)

    # -- input --------------------------------------------------------------------------------------

    def body_bytes(self, limit: int) -> bytes:
        body = self.request.body
        if len(body) > limit:
            raise errors.TooLarge(f"Request body larger than {limit} bytes", code="body_too_large")
        return body

    def json_body(self, model: type[Model]) -> Model:
        body = self.body_bytes(self.services.settings.max_body_bytes)
        if not body.strip():
            raise errors.Invalid("Request body must be a JSON object", code="invalid_json")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise errors.Invalid("Request body is not valid JSON", code="invalid_json") from None
        if not isinstance(data, dict):
            raise errors.Invalid("Request body must be a JSON object", code="invalid_json")
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise errors.Invalid("Invalid fields", code="validation_error", fields=pydantic_fields(exc)) from None

    def int_argument(self, name: str, default: int | None, *, low: int, high: int) -> int | None:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise errors.Invalid(f"`{name}` must be an integer", fields={name: "must be an integer"}) from None
        if not low <= value <= high:
            raise errors.Invalid(f"`{name}` out of range", fields={name: f"must be between {low} and {high}"})
        return value

    # -- authentication -----------------------------------------------------------------------------

    def bearer_token(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()

    async def prepare(self) -> None:
        # A valid token of a deleted account is refused here, before any handler runs; require_user()
        # (synchronous, in every handler) then only has to check the token itself.
        token = self.bearer_token()
        if token is None:
            return
        try:
            user_id = self.services.tokens.user_id_from_access(token)
        except TokenError:
            return  # require_user() reports it, on the endpoints that need a user
        await refuse_deleted_account(self.services, user_id)

    def require_user(self) -> int:
        """The authenticated user's id, or 401."""
        token = self.bearer_token()
        if token is None:
            raise errors.Unauthorized("Authentication required", code="not_authenticated")
        self.user_id_for_log = self.services.tokens.user_id_from_access(token)
        return self.user_id_for_log

    # -- output -------------------------------------------------------------------------------------

    def send_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(orjson.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        code = DEFAULT_CODES.get(status_code, "error")
        message = self._reason
        fields = None
        if isinstance(exc, errors.DomainError):
            status_code = status_of(exc)
            code, message, fields = exc.code, exc.message, exc.fields
            if isinstance(exc, errors.RateLimited):
                self.set_header("Retry-After", str(max(1, math.ceil(exc.retry_after_s))))
        elif isinstance(exc, STORE_DOWN_ERRORS):
            self.services.metrics.backend_errors.labels(backend="mongodb").inc()
            status_code, code, message = 503, "unavailable", "Storage temporarily unavailable"
        elif isinstance(exc, tornado.web.HTTPError):
            message = exc.log_message or self._reason
            if status_code == 413:
                code = "body_too_large"
            if status_code == 405:
                self.set_header("Allow", ", ".join(self.allowed_methods()))
        elif status_code >= 500:
            message = "Internal server error"
        self.set_status(status_code)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        error: dict[str, Any] = {"code": code, "message": message}
        if fields:
            error["fields"] = fields
        self.finish(orjson.dumps({"error": error}))

    def allowed_methods(self) -> list[str]:
        """The methods this handler implements (for 405's Allow header)."""
        base = tornado.web.RequestHandler
        return [
            m
            for m in ("GET", "POST", "PUT", "PATCH", "DELETE")
            if getattr(type(self), m.lower()) is not getattr(base, m.lower())
        ]

    def on_finish(self) -> None:
        self.services.metrics.http_requests.labels(status=f"{self.get_status() // 100}xx").inc()

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        if isinstance(value, errors.DomainError):
            return
        if isinstance(value, STORE_DOWN_ERRORS):
            log.warning("store unavailable during %s %s: %s", self.request.method, self.request.path, value)
            return
        super().log_exception(typ, value, tb)


class NotFoundHandler(BaseHandler):
    """Unknown paths answer the JSON envelope, not Tornado's HTML page."""

    async def prepare(self) -> None:
        raise errors.NotFound("No such endpoint", code="not_found")
