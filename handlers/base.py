"""What every REST handler shares: JSON in and out, bearer authentication, and the error envelope.

Every failure is answered through handlers/errors.py, so every endpoint answers
`{"error": {"code", "message", "fields"?}}` with the same status for the same kind of failure.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import pydantic
import tornado.web

from handlers.errors import pydantic_fields, report
from services.accounts.auth import TokenError
from services.core import errors

if TYPE_CHECKING:
    from services.core.container import Services

log = logging.getLogger("chat.http")

Model = TypeVar("Model", bound=pydantic.BaseModel)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# No answer of ours lets the browser tell another site where it was. The demo page's own photos ask nothing
# of a Referer (a media file is served to whoever holds its URL, wherever PUBLIC_URL puts it), and a media
# URL is itself the capability to the file, which a Referer would hand to any site the file links to.
REFERRER_POLICY = "no-referrer"


def set_common_headers(handler: tornado.web.RequestHandler) -> None:
    """The headers of every answer, whichever handler makes it: each handler base calls this from
    `set_default_headers`, which Tornado runs for every answer and again before an error answer."""
    handler.set_header("Referrer-Policy", REFERRER_POLICY)
    # Tornado's default `Server` names the framework and its version: nothing a client needs.
    handler.clear_header("Server")


# Probes and scrapes: every few seconds from every checker. Counted apart (status="probe"), so that a
# not-ready /readyz during an outage is no server error to the error-rate alert, and logged at DEBUG.
PROBE_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


class BaseHandler(tornado.web.RequestHandler):
    services: Services
    request_id: str = ""
    user_id_for_log: int | None = None

    def initialize(self, services: Services) -> None:
        self.services = services

    def set_default_headers(self) -> None:
        set_common_headers(self)
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
        # A valid token of a deleted account, or one issued before its sessions were revoked, is refused
        # here, before any handler runs; require_user() (synchronous, in every handler) then only has to
        # check the token itself.
        token = self.bearer_token()
        if token is None:
            return
        try:
            grant = self.services.tokens.verify_access(token)
        except TokenError:
            return  # require_user() reports it, on the endpoints that need a user
        if not await self.services.users.accepts(grant.user_id, grant.generation):
            raise TokenError("Token invalid")

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
        answer = report(exc, status_code)
        if answer.code == "unavailable" and not isinstance(exc, errors.DomainError):
            self.services.metrics.backend_errors.labels(backend="mongodb").inc()
        if answer.retry_after_header is not None:
            self.set_header("Retry-After", answer.retry_after_header)
        if answer.status == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.set_status(answer.status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(orjson.dumps(answer.envelope()))

    def allowed_methods(self) -> list[str]:
        """The methods this handler implements (for 405's Allow header)."""
        base = tornado.web.RequestHandler
        return [
            m
            for m in ("GET", "POST", "PUT", "PATCH", "DELETE")
            if getattr(type(self), m.lower()) is not getattr(base, m.lower())
        ]

    def on_finish(self) -> None:
        status = "probe" if self.request.path in PROBE_PATHS else f"{self.get_status() // 100}xx"
        self.services.metrics.http_requests.labels(status=status).inc()

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        if isinstance(value, errors.DomainError):
            return
        if errors.backend_unavailable(value) if value is not None else False:
            log.warning("store unavailable during %s %s: %s", self.request.method, self.request.path, value)
            return
        super().log_exception(typ, value, tb)


class NotFoundHandler(BaseHandler):
    """Unknown paths answer the JSON envelope, not Tornado's HTML page."""

    async def prepare(self) -> None:
        raise errors.NotFound("No such endpoint", code="not_found")
