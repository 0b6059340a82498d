"""The OpenAPI 3.1 document of the REST API at /api/openapi.json, and an offline Swagger UI at /api/docs/.

Request bodies are described by the pydantic models that validate them (handlers.schemas), tightened by
the limits the services enforce on top (a deployment's password length, message length, minimum age), so
a client or a fuzzer that follows the document sends what the server accepts. Response bodies have no
models: their schemas are written here field for field after what the services return, and the tests
validate real answers against them. tests/test_openapi.py also fails when a route of the application has
no operation here, or an operation has no route.

The docs page is Swagger UI 5 from the `swagger-ui-py` package's static files, served by us: no CDN, and a
Content-Security-Policy that lets the page load nothing but its own origin.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
import pydantic
import tornado.web

from handlers import conversations, matching
from handlers.base import BaseHandler
from handlers.files import FileHandler
from handlers.schemas import (
    DeviceBody,
    ProfilePatch,
    ReadBody,
    RefreshBody,
    RegisterBody,
    SendMessageBody,
    TokenBody,
    UserRef,
)
from services.accounts.users import GENDERS, USERNAME_RE
from services.core.config import Settings
from services.matching.service import DEFAULT_MAX_DISTANCE_KM, MAX_CURSOR_CHARS
from services.realtime.close_codes import (
    CLOSE_BAD_FRAME,
    CLOSE_BAD_TOKEN,
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_NO_TOKEN,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_SERVER_ERROR,
    CLOSE_TOO_LARGE,
)
from services.storage.media import ATTACHMENT_TYPES, IMAGE_TYPES

log = logging.getLogger("chat.openapi")

OPENAPI_VERSION = "3.1.0"
DOCS_ROOT = Path(__file__).resolve().parent / "openapi_assets"
# The only files of the package the page uses; the package also ships Swagger Editor bundles we do not
# want to publish.
SWAGGER_UI_FILES = ("swagger-ui.css", "index.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png")
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# Path ids are matched by `[0-9]{1,15}` in the route table.
MAX_PATH_ID = 10**15 - 1
# Python's str.isspace() set, which is what `content.strip()` removes, written as a class both Python's
# and ECMAScript's regex engines read alike (`\s` differs between them: \x1c-\x1f and \x85).
PY_WHITESPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = f"[^{PY_WHITESPACE}]"

REQUEST_MODELS: tuple[type[pydantic.BaseModel], ...] = (
    RegisterBody,
    TokenBody,
    RefreshBody,
    ProfilePatch,
    SendMessageBody,
    ReadBody,
    UserRef,
    DeviceBody,
)


def swagger_ui_static() -> Path | None:
    """The `static/` folder of the installed swagger-ui-py package, found without importing it (its
    __init__ pulls in web framework adapters we do not use)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if folder.is_dir() else None


def _version() -> str:
    try:
        return importlib.metadata.version("chat-matching-server")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+checkout"


# -- JSON Schema building blocks -----------------------------------------------------------------------


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema or "type" not in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    out = {**schema, "type": [schema["type"], "null"]}
    if "enum" in schema:
        out["enum"] = [*schema["enum"], None]
    return out


def obj(
    properties: dict[str, Any], *, optional: tuple[str, ...] = (), description: str | None = None
) -> dict[str, Any]:
    """A closed object: every property required unless named optional, nothing else allowed (answers
    that grow a field must grow the document too, or the response tests fail)."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }
    if description:
        schema["description"] = description
    return schema


ID = {"type": "integer", "minimum": 1}
TIMESTAMP = {"type": "string", "format": "date-time", "examples": ["2023-05-15T14:30:45.000Z"]}
URL = {"type": "string", "format": "uri", "examples": ["http://example.com/media/profile_pictures/x.jpg"]}
GENDER = {"type": "string", "enum": list(GENDERS)}


def response_schemas() -> dict[str, Any]:
    """What the services answer (services/accounts/users.py, chat.py, matching.py), by component name."""
    summary_properties = {"id": ID, "username": {"type": "string"}, "profile_picture": nullable(URL)}
    public_properties = {
        **summary_properties,
        "display_name": nullable({"type": "string"}),
        "bio": nullable({"type": "string"}),
        "age": nullable({"type": "integer", "minimum": 0}),
        "gender": nullable(GENDER),
    }
    return {
        "Error": obj(
            {
                "error": obj(
                    {
                        "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "examples": ["validation_error"]},
                        "message": {"type": "string"},
                        "fields": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                            "description": "Per-field messages, keyed by the field's dotted path.",
                        },
                    },
                    optional=("fields",),
                )
            },
            description="Every error answer: a snake_case `code` to branch on, a message for humans.",
        ),
        "TokenPair": obj(
            {
                "access": {"type": "string", "description": "JWT, for `Authorization: Bearer`"},
                "refresh": {"type": "string"},
            }
        ),
        "UserSummary": obj(summary_properties, description="A user inside other objects and frames."),
        "PublicProfile": obj(
            {
                **public_properties,
                "status": {"type": "string", "enum": ["online", "offline"]},
                "last_seen": nullable(TIMESTAMP),
            },
            optional=("status", "last_seen"),
            description="`status` and `last_seen` only when the viewer shares an open conversation with the user.",
        ),
        "OwnProfile": obj(
            {
                **public_properties,
                "email": nullable({"type": "string"}),
                "birthdate": nullable({"type": "string", "format": "date"}),
                "interested_in": {"type": "array", "items": GENDER, "uniqueItems": True},
                "location": nullable(ref("Location")),
                "age_min": nullable({"type": "integer"}),
                "age_max": nullable({"type": "integer"}),
                "created_at": TIMESTAMP,
            }
        ),
        "ProfilePicture": obj({"profile_picture": URL}),
        "Candidate": obj(
            {**public_properties, "distance_km": {"type": "integer", "minimum": 1}},
            optional=("distance_km",),
            description="A public profile; `distance_km` when both people share a location.",
        ),
        "DiscoverPage": obj(
            {
                "results": {"type": "array", "items": ref("Candidate")},
                "next_cursor": nullable({"type": "string"}),
            },
            description="A page may be short (even empty) while `next_cursor` is not null: keep going until it is.",
        ),
        "LikeRecord": obj({"user_id": ID, "created_at": TIMESTAMP}),
        "Match": obj({"id": ID, "user": ref("UserSummary"), "conversation_id": ID, "created_at": TIMESTAMP}),
        "LikeAnswer": obj(
            {"like": ref("LikeRecord"), "match": nullable(ref("Match"))},
            description="`match` is set when the like was mutual (and the match is still active).",
        ),
        "PassAnswer": obj({"pass": ref("LikeRecord")}),
        "BlockAnswer": obj({"block": ref("LikeRecord")}),
        "ReceivedLike": obj({"user": ref("UserSummary"), "liked_at": TIMESTAMP}),
        "ReceivedLikesPage": obj(
            {"results": {"type": "array", "items": ref("ReceivedLike")}, "next_cursor": nullable({"type": "string"})}
        ),
        "BlockEntry": obj({"user": ref("UserSummary"), "created_at": TIMESTAMP}),
        "Attachment": obj(
            {
                "id": ID,
                "url": URL,
                "content_type": {"type": "string", "enum": list(ATTACHMENT_TYPES)},
                "size": {"type": "integer", "minimum": 1},
            }
        ),
        "Message": obj(
            {
                "id": {**ID, "description": "Counts up from 1 within the conversation, in storage order."},
                "sender_id": ID,
                "sender_username": {"type": "string"},
                "sender_profile_picture": nullable(URL),
                "content": {"type": "string"},
                "created_at": TIMESTAMP,
                "is_read": {"type": "boolean", "description": "Read by another participant."},
                "attachment": nullable(ref("Attachment")),
                "conversation_id": ID,
                "client_id": {"type": "string", "maxLength": 64},
            },
            optional=("client_id",),
            description="The seed's message object; `client_id` when the sender gave one.",
        ),
        "MessagePage": obj(
            {
                "results": {"type": "array", "items": ref("Message"), "description": "Oldest first."},
                "has_more": {"type": "boolean", "description": "More messages lie beyond, in the paging direction."},
            }
        ),
        "Conversation": obj(
            {
                "id": ID,
                "participants": {"type": "array", "items": ref("UserSummary")},
                "last_message": nullable(ref("Message")),
                "unread_count": {"type": "integer", "minimum": 0},
                "updated_at": TIMESTAMP,
                "status": {"type": "string", "enum": ["open", "closed"]},
                "match_id": nullable(ID),
            }
        ),
        "ReadReceipt": obj(
            {
                "type": {"const": "read_receipt"},
                "message_id": ID,
                "user_id": ID,
                "username": {"type": "string"},
                "timestamp": TIMESTAMP,
            }
        ),
        "ReadAnswer": obj(
            {"message_id": ID, "read_receipt": nullable(ref("ReadReceipt"))},
            description="`read_receipt` is the frame broadcast to the conversation; null when nothing moved.",
        ),
        "Device": obj(
            {
                "id": ID,
                "kind": {"type": "string", "enum": ["webpush", "webhook"]},
                "endpoint": {"type": "string", "description": "The push service URL (`webpush`)."},
                "url": {"type": "string", "description": "The gateway URL (`webhook`)."},
                "created_at": TIMESTAMP,
            },
            optional=("endpoint", "url"),
            description="A push target of the current user: `endpoint` for `webpush`, `url` for `webhook`.",
        ),
        "VapidPublicKey": obj(
            {
                "public_key": {
                    "type": "string",
                    "pattern": "^[A-Za-z0-9_-]{87}$",
                    "description": "base64url of the uncompressed P-256 point: `applicationServerKey` for "
                    "`PushManager.subscribe()`.",
                }
            }
        ),
        "Liveness": obj({"status": {"const": "ok"}}),
        "Readiness": obj(
            {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
            }
        ),
    }


# -- request schemas from the models -------------------------------------------------------------------

_PYDANTIC_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _standard_bounds(node: Any) -> None:
    """pydantic writes a bound on a union (`StrictFloat | StrictInt` with `ge=`) as the non-standard
    `ge`/`le` keywords, which every validator ignores; the models enforce them, so say them in JSON Schema."""
    if isinstance(node, dict):
        for short, keyword in _PYDANTIC_BOUNDS.items():
            if short in node and isinstance(node[short], int | float) and keyword not in node:
                node[keyword] = node.pop(short)
        for value in node.values():
            _standard_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _standard_bounds(value)


def _value_schema(model_schema: dict[str, Any], field: str) -> dict[str, Any]:
    """The schema of a property's value (the non-null branch of an optional one)."""
    prop = model_schema["properties"][field]
    for branch in prop.get("anyOf", ()):
        if branch.get("type") != "null":
            return dict(branch)
    return dict(prop)


def _tighten(model_schema: dict[str, Any], field: str, **constraints: Any) -> None:
    prop = model_schema["properties"][field]
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") != "null":
            branch.update(constraints)


def request_schemas(settings: Settings) -> dict[str, Any]:
    """Each model's JSON Schema (and its $defs) as components, with the services' own limits added."""
    out: dict[str, Any] = {}
    for model in REQUEST_MODELS:
        schema = copy.deepcopy(model.model_json_schema(ref_template="#/components/schemas/{model}"))
        for name, definition in schema.pop("$defs", {}).items():
            if name in out and out[name] != definition:
                raise RuntimeError(f"two different request schemas are named {name}")
            out[name] = definition
        out[model.__name__] = schema
    for schema in out.values():
        _standard_bounds(schema)

    register = out["RegisterBody"]
    # The service matches the whole name; JSON Schema patterns match anywhere unless anchored.
    username = USERNAME_RE.pattern.removeprefix("^").removesuffix("$")
    _tighten(register, "username", pattern=f"^{username}$")
    _tighten(
        register,
        "password",
        maxLength=min(settings.max_password_chars, _value_schema(register, "password")["maxLength"]),
    )
    for name in ("RegisterBody", "ProfilePatch"):
        for field in ("age_min", "age_max"):
            _tighten(out[name], field, minimum=settings.min_age)
        _tighten(
            out[name],
            "birthdate",
            description=f"YYYY-MM-DD; the person must be {settings.min_age} to 120 years old.",
        )
        out[name]["description"] = "`age_min` must not exceed `age_max` (400 otherwise)."
    out["ProfilePatch"]["description"] += " A field set to null is cleared; an absent field is kept."

    send = out["SendMessageBody"]
    _tighten(send, "content", maxLength=min(settings.max_content_chars, _value_schema(send, "content")["maxLength"]))
    # Text that is only whitespace is refused unless an attachment carries the message.
    send["anyOf"] = [
        {"required": ["attachment_id"], "properties": {"attachment_id": {"type": "integer"}}},
        {"required": ["content"], "properties": {"content": {"pattern": NOT_BLANK}}},
    ]
    send["description"] = (
        "Text (not only whitespace) or an attachment uploaded to this conversation, or both. "
        "`client_id` makes a retry safe: the same one returns the stored message (200) and stores nothing."
    )

    device = out["DeviceBody"]
    # Which fields each kind takes (the handler answers 400 `validation_error` otherwise).
    device["oneOf"] = [
        {
            "properties": {"kind": {"const": "webpush"}},
            "required": ["endpoint", "keys"],
            "not": {"required": ["url"]},
        },
        {
            "properties": {"kind": {"const": "webhook"}},
            "required": ["url"],
            "not": {"anyOf": [{"required": [name]} for name in ("endpoint", "keys", "expirationTime")]},
        },
    ]
    device["description"] = (
        "`webpush`: `PushSubscription.toJSON()` plus `kind`; the endpoint must be https on a known push service. "
        "`webhook`: a `url` under one of the operator's PUSH_WEBHOOK_ALLOWED_PREFIXES."
    )
    return out


# -- responses, parameters, operations -----------------------------------------------------------------

ERROR_RESPONSES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Invalid input: `invalid_json`, `validation_error` (see `fields`), or another code."),
    401: ("Unauthorized", "`not_authenticated` (no bearer token), `token_invalid` or `token_expired`."),
    403: ("Forbidden", "Refused for this user."),
    404: ("NotFound", "Not found, or not yours: existence is never revealed."),
    409: ("Conflict", "Conflicts with the current state."),
    413: ("TooLarge", "Body or file too large: `body_too_large`, `file_too_large`."),
    429: ("RateLimited", "Rate limited; retry after `Retry-After` seconds."),
    503: ("Unavailable", "A backing store is unreachable or the server is shutting down; retry later."),
}


def error_responses() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, (name, description) in ERROR_RESPONSES.items():
        response: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": ref("Error")}},
        }
        if status == 429:
            response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
        out[name] = response
    return out


def errors_for(*statuses: int, **descriptions: str) -> dict[str, Any]:
    """References to the shared error responses; `e404="..."` says which codes this operation uses."""
    out: dict[str, Any] = {}
    for status in statuses:
        entry: dict[str, Any] = {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"}
        if f"e{status}" in descriptions:
            entry["description"] = descriptions[f"e{status}"]
        out[str(status)] = entry
    return out


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def json_body(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": ref(model.__name__)}}}


def binary_body(types: list[str], description: str) -> dict[str, Any]:
    schema = {"type": "string", "format": "binary"}
    return {"required": True, "description": description, "content": {t: {"schema": schema} for t in types}}


def path_id(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        # What the route's `[0-9]{1,15}` matches: 0 is routed too (and found nowhere).
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_PATH_ID},
    }


def query_int(name: str, low: int, high: int, default: int | None, description: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": low, "maximum": high}
    if default is not None:
        schema["default"] = default
    # The handlers read `?limit=` (empty) as absent.
    return {
        "name": name,
        "in": "query",
        "required": False,
        "allowEmptyValue": True,
        "description": description,
        "schema": schema,
    }


CURSOR = {
    "name": "cursor",
    "in": "query",
    "required": False,
    "allowEmptyValue": True,
    "description": "`next_cursor` of the previous page (opaque); absent for the first page.",
    "schema": {"type": "string", "maxLength": MAX_CURSOR_CHARS, "pattern": "^[A-Za-z0-9_-]*$"},
}
PUBLIC: list[dict[str, Any]] = []  # `security: []`: no token needed


def operations(settings: Settings) -> dict[str, dict[str, dict[str, Any]]]:
    """path -> method -> operation, for every REST route of the application."""
    paths = _operations(settings)
    for path, item in paths.items():
        if "{" not in path:
            continue
        for operation in item.values():
            # An id the route's pattern does not match (too many digits, not a number) is an unknown path:
            # the same JSON 404, whatever the operation otherwise answers.
            operation["responses"].setdefault("404", errors_for(404)["404"])
            operation["responses"] = dict(sorted(operation["responses"].items()))
    return paths


def _operations(settings: Settings) -> dict[str, dict[str, dict[str, Any]]]:
    upload_mib = f"{settings.max_upload_bytes / 2**20:g} MiB"
    image_types = list(IMAGE_TYPES)
    message_page = query_int("limit", 1, conversations.MAX_PAGE, 50, "Page size.")
    return {
        "/api/register/": {
            "post": {
                "tags": ["accounts"],
                "operationId": "register",
                "summary": "Create an account",
                "security": PUBLIC,
                "requestBody": json_body(RegisterBody),
                "responses": {
                    "201": json_response("The new account's own profile.", ref("OwnProfile")),
                    **errors_for(
                        400,
                        409,
                        413,
                        429,
                        503,
                        e409="`username_taken`.",
                        e429="`too_many_attempts`: too many failed sign-ins or taken names from this address.",
                    ),
                },
            }
        },
        "/api/token/": {
            "post": {
                "tags": ["accounts"],
                "operationId": "obtainTokens",
                "summary": "Sign in: an access and a refresh token",
                "security": PUBLIC,
                "requestBody": json_body(TokenBody),
                "responses": {
                    "200": json_response("The token pair.", ref("TokenPair")),
                    **errors_for(
                        400,
                        401,
                        413,
                        429,
                        503,
                        e401="`invalid_credentials`.",
                        e429="`too_many_attempts`: too many failed sign-ins for this username or from this address.",
                    ),
                },
            }
        },
        "/api/token/refresh/": {
            "post": {
                "tags": ["accounts"],
                "operationId": "refreshTokens",
                "summary": "Rotate a refresh token",
                "description": "The old refresh token stops working; reusing it revokes its whole family.",
                "security": PUBLIC,
                "requestBody": json_body(RefreshBody),
                "responses": {
                    "200": json_response("A new token pair.", ref("TokenPair")),
                    **errors_for(400, 401, 413, 503, e401="`token_invalid`, `token_expired` or `token_revoked`."),
                },
            }
        },
        "/api/users/me/": {
            "get": {
                "tags": ["profiles"],
                "operationId": "getOwnProfile",
                "summary": "Own profile",
                "responses": {
                    "200": json_response("Own profile.", ref("OwnProfile")),
                    **errors_for(401, 404, 503, e404="The account was deleted."),
                },
            },
            "patch": {
                "tags": ["profiles"],
                "operationId": "updateOwnProfile",
                "summary": "Change profile fields",
                "requestBody": json_body(ProfilePatch),
                "responses": {
                    "200": json_response("The updated profile.", ref("OwnProfile")),
                    **errors_for(400, 401, 404, 413, 503, e404="The account was deleted."),
                },
            },
        },
        "/api/users/me/picture/": {
            "put": {
                "tags": ["profiles"],
                "operationId": "setProfilePicture",
                "summary": "Upload the profile picture",
                "requestBody": binary_body(
                    image_types,
                    f"The image's raw bytes, at most {upload_mib}. The type is read from the bytes, not the header.",
                ),
                "responses": {
                    "200": json_response("Where the picture is served.", ref("ProfilePicture")),
                    **errors_for(400, 401, 404, 413, 503, e400="`empty_file` or `unsupported_media_type`."),
                },
            }
        },
        "/api/users/{user_id}/": {
            "get": {
                "tags": ["profiles"],
                "operationId": "getPublicProfile",
                "summary": "Someone's public profile",
                "parameters": [path_id("user_id", "The user's id.")],
                "responses": {
                    "200": json_response("The public profile.", ref("PublicProfile")),
                    **errors_for(401, 404, 503, e404="No such user, or a block either way."),
                },
            }
        },
        "/api/discover/": {
            "get": {
                "tags": ["matching"],
                "operationId": "discover",
                "summary": "Candidates to like or pass",
                "description": "Nearest first within `max_distance_km` when the viewer has a location, then "
                "newest accounts; never oneself, anyone liked, passed, matched or blocked either way.",
                "parameters": [
                    query_int("limit", 1, matching.MAX_PAGE, matching.DEFAULT_PAGE, "Page size."),
                    CURSOR,
                    query_int(
                        "max_distance_km",
                        1,
                        matching.MAX_DISTANCE_KM,
                        DEFAULT_MAX_DISTANCE_KM,
                        "Radius of the distance-ordered part.",
                    ),
                ],
                "responses": {
                    "200": json_response("A page of candidates.", ref("DiscoverPage")),
                    **errors_for(400, 401, 404, 503, e400="`invalid_cursor` or a parameter out of range."),
                },
            }
        },
        "/api/likes/": {
            "post": {
                "tags": ["matching"],
                "operationId": "like",
                "summary": "Like someone; a mutual like makes a match and its conversation",
                "requestBody": json_body(UserRef),
                "responses": {
                    "201": json_response("Liked.", ref("LikeAnswer")),
                    "200": json_response("Already liked: the same answer, nothing changed.", ref("LikeAnswer")),
                    **errors_for(
                        400,
                        401,
                        404,
                        413,
                        429,
                        503,
                        e400="`self_target` or invalid fields.",
                        e404="`user_not_found` (also for a block either way).",
                        e429="`like_quota_exceeded`: the daily like quota is used up.",
                    ),
                },
            }
        },
        "/api/likes/received/": {
            "get": {
                "tags": ["matching"],
                "operationId": "likesReceived",
                "summary": "Who liked me and is not matched, passed or blocked",
                "parameters": [query_int("limit", 1, matching.MAX_PAGE, matching.DEFAULT_PAGE, "Page size."), CURSOR],
                "responses": {
                    "200": json_response("Newest first.", ref("ReceivedLikesPage")),
                    **errors_for(400, 401, 503),
                },
            }
        },
        "/api/passes/": {
            "post": {
                "tags": ["matching"],
                "operationId": "pass",
                "summary": "Pass on someone (hidden from discover and likes received)",
                "requestBody": json_body(UserRef),
                "responses": {
                    "201": json_response("Passed.", ref("PassAnswer")),
                    "200": json_response("Already passed.", ref("PassAnswer")),
                    **errors_for(400, 401, 404, 413, 503, e404="`user_not_found`."),
                },
            }
        },
        "/api/matches/": {
            "get": {
                "tags": ["matching"],
                "operationId": "listMatches",
                "summary": "Active matches, newest first",
                "parameters": [query_int("limit", 1, matching.MAX_LIST, matching.DEFAULT_LIST, "Most to return.")],
                "responses": {
                    "200": json_response("Matches.", {"type": "array", "items": ref("Match")}),
                    **errors_for(400, 401, 503),
                },
            }
        },
        "/api/matches/{match_id}/": {
            "delete": {
                "tags": ["matching"],
                "operationId": "unmatch",
                "summary": "Unmatch: the conversation closes (its sockets get 4001)",
                "parameters": [path_id("match_id", "The match's id.")],
                "responses": {
                    "204": {"description": "Unmatched (also when it already was)."},
                    **errors_for(401, 404, 503, e404="`match_not_found`."),
                },
            }
        },
        "/api/blocks/": {
            "get": {
                "tags": ["matching"],
                "operationId": "listBlocks",
                "summary": "Users I blocked, newest first",
                "parameters": [query_int("limit", 1, matching.MAX_LIST, matching.DEFAULT_LIST, "Most to return.")],
                "responses": {
                    "200": json_response("Blocks.", {"type": "array", "items": ref("BlockEntry")}),
                    **errors_for(400, 401, 503),
                },
            },
            "post": {
                "tags": ["matching"],
                "operationId": "block",
                "summary": "Block someone (also unmatches)",
                "requestBody": json_body(UserRef),
                "responses": {
                    "201": json_response("Blocked.", ref("BlockAnswer")),
                    "200": json_response("Already blocked.", ref("BlockAnswer")),
                    **errors_for(400, 401, 404, 413, 503, e400="`self_target` or invalid fields."),
                },
            },
        },
        "/api/blocks/{user_id}/": {
            "delete": {
                "tags": ["matching"],
                "operationId": "unblock",
                "summary": "Unblock (a match it ended stays ended)",
                "parameters": [path_id("user_id", "The blocked user's id.")],
                "responses": {"204": {"description": "Not blocked any more."}, **errors_for(401, 503)},
            }
        },
        "/api/conversations/": {
            "get": {
                "tags": ["conversations"],
                "operationId": "listConversations",
                "summary": "Open conversations, newest activity first",
                "parameters": [query_int("limit", 1, conversations.MAX_PAGE, 50, "Most to return.")],
                "responses": {
                    "200": json_response("Conversations.", {"type": "array", "items": ref("Conversation")}),
                    **errors_for(400, 401, 503),
                },
            }
        },
        "/api/conversations/{conversation_id}/": {
            "get": {
                "tags": ["conversations"],
                "operationId": "getConversation",
                "summary": "One conversation (open or closed)",
                "parameters": [path_id("conversation_id", "The conversation's id.")],
                "responses": {
                    "200": json_response("The conversation.", ref("Conversation")),
                    **errors_for(401, 404, 503, e404="`conversation_not_found`, also when not a participant."),
                },
            }
        },
        "/api/conversations/{conversation_id}/messages/": {
            "get": {
                "tags": ["conversations"],
                "operationId": "listMessages",
                "summary": "History, by cursor",
                "description": "Without a cursor: the newest page. `before` pages back, `after` forward (as a "
                "socket's `?after=` resume); not both at once (400).",
                "parameters": [
                    path_id("conversation_id", "The conversation's id."),
                    query_int("before", 1, conversations.MAX_MESSAGE_ID, None, "Messages with smaller ids."),
                    query_int("after", 0, conversations.MAX_MESSAGE_ID, None, "Messages with larger ids."),
                    message_page,
                ],
                "responses": {
                    "200": json_response("A page of messages, oldest first.", ref("MessagePage")),
                    **errors_for(400, 401, 404, 503, e404="`conversation_not_found`."),
                },
            },
            "post": {
                "tags": ["conversations"],
                "operationId": "sendMessage",
                "summary": "Send a message (broadcast exactly as a socket send)",
                "parameters": [path_id("conversation_id", "The conversation's id.")],
                "requestBody": json_body(SendMessageBody),
                "responses": {
                    "201": json_response("Stored and broadcast.", ref("Message")),
                    "200": json_response("A retry of a stored `client_id`: the stored message.", ref("Message")),
                    **errors_for(
                        400,
                        401,
                        403,
                        404,
                        413,
                        429,
                        503,
                        e400="`empty_message`, `message_too_long` or invalid fields.",
                        e403="`conversation_closed`: closed while the message was being stored.",
                        e404="`conversation_not_found` (also closed ones) or `attachment_not_found`.",
                        e429="`rate_limited`: messages per user, shared with the sockets.",
                        e503="`unavailable` or `store_failed`: not stored; retry with the same `client_id`.",
                    ),
                },
            },
        },
        "/api/conversations/{conversation_id}/read/": {
            "post": {
                "tags": ["conversations"],
                "operationId": "markRead",
                "summary": "Mark read up to a message; broadcasts a read receipt",
                "parameters": [path_id("conversation_id", "The conversation's id.")],
                "requestBody": json_body(ReadBody),
                "responses": {
                    "200": json_response("Where the read pointer is.", ref("ReadAnswer")),
                    **errors_for(400, 401, 404, 413, 503, e404="`conversation_not_found` or `message_not_found`."),
                },
            }
        },
        "/api/conversations/{conversation_id}/attachments/": {
            "post": {
                "tags": ["conversations"],
                "operationId": "uploadAttachment",
                "summary": "Upload a file to send with a message (`attachment_id`)",
                "parameters": [path_id("conversation_id", "The conversation's id.")],
                "requestBody": binary_body(
                    list(ATTACHMENT_TYPES),
                    f"The file's raw bytes, at most {upload_mib}. The type is read from the bytes; plain "
                    "text is accepted only when declared `text/plain` and valid UTF-8.",
                ),
                "responses": {
                    "201": json_response("Stored.", ref("Attachment")),
                    **errors_for(
                        400,
                        401,
                        404,
                        413,
                        503,
                        e400="`empty_file` or `unsupported_media_type`.",
                        e404="`conversation_not_found` (also closed ones).",
                    ),
                },
            }
        },
        "/api/devices/": {
            "get": {
                "tags": ["push"],
                "operationId": "listDevices",
                "summary": "My push devices",
                "responses": {
                    "200": json_response("Oldest first.", {"type": "array", "items": ref("Device")}),
                    **errors_for(401, 503),
                },
            },
            "post": {
                "tags": ["push"],
                "operationId": "registerDevice",
                "summary": "Register a push target: a browser's Web Push subscription or a webhook",
                "description": "Pushes go to a user's devices while the user has no WebSocket open: one per "
                "conversation per coalescing window, `{type, conversation_id, count}`, no message text by "
                "default (docs/push.md). Registering an endpoint again is idempotent; an endpoint registered "
                f"by another account moves to this one. At most {settings.push_max_devices} devices per user.",
                "requestBody": json_body(DeviceBody),
                "responses": {
                    "201": json_response("Registered.", ref("Device")),
                    "200": json_response("Already registered to you: the same device.", ref("Device")),
                    **errors_for(
                        400,
                        401,
                        409,
                        413,
                        503,
                        e400="`validation_error`, `invalid_subscription` (endpoint or keys), `webhook_not_allowed` "
                        "or `webpush_disabled`.",
                        e409="`too_many_devices`.",
                    ),
                },
            },
        },
        "/api/devices/{device_id}/": {
            "delete": {
                "tags": ["push"],
                "operationId": "deleteDevice",
                "summary": "Remove a push device",
                "parameters": [path_id("device_id", "The device's id.")],
                "responses": {
                    "204": {"description": "Removed."},
                    **errors_for(401, 404, 503, e404="`device_not_found` (also someone else's)."),
                },
            }
        },
        "/api/push/vapid-public-key/": {
            "get": {
                "tags": ["push"],
                "operationId": "vapidPublicKey",
                "summary": "The server's VAPID public key (RFC 8292), for PushManager.subscribe()",
                "security": PUBLIC,
                "responses": {
                    "200": json_response("The key.", ref("VapidPublicKey")),
                    **errors_for(404, 503, e404="`webpush_disabled`: no VAPID key configured (production)."),
                },
            }
        },
        "/livez": {
            "get": {
                "tags": ["operations"],
                "operationId": "liveness",
                "summary": "Liveness: the process answers",
                "security": PUBLIC,
                "responses": {"200": json_response("Alive.", ref("Liveness"))},
            }
        },
        "/readyz": {
            "get": {
                "tags": ["operations"],
                "operationId": "readiness",
                "summary": "Readiness: stores reachable and not shutting down",
                "security": PUBLIC,
                "responses": {
                    "200": json_response("Ready.", ref("Readiness")),
                    "503": json_response("Not ready; `checks` says what failed.", ref("Readiness")),
                },
            }
        },
        "/metrics": {
            "get": {
                "tags": ["operations"],
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format)",
                "security": PUBLIC,
                "responses": {
                    "200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "tags": ["documentation"],
                "operationId": "openapi",
                "summary": "This document",
                "security": PUBLIC,
                "responses": {"200": json_response("OpenAPI 3.1 document.", {"type": "object"})},
            }
        },
        "/api/docs/": {
            "get": {
                "tags": ["documentation"],
                "operationId": "docs",
                "summary": "This document in Swagger UI",
                "security": PUBLIC,
                "responses": {
                    "200": {"description": "HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
    }


# -- WebSockets ----------------------------------------------------------------------------------------

CLOSE_CODES = {
    CLOSE_NORMAL: "normal closure",
    CLOSE_GOING_AWAY: "server shutting down: reconnect (another node answers)",
    CLOSE_POLICY: "policy: foreign Origin, too many sockets, repeated rate limiting, slow consumer",
    CLOSE_TOO_LARGE: "frame too large",
    CLOSE_SERVER_ERROR: "unexpected server error",
    CLOSE_NO_TOKEN: "no token",
    CLOSE_FORBIDDEN: "not a participant, unknown conversation, or closed by an unmatch or a block",
    CLOSE_BAD_TOKEN: "token invalid or expired (or a refresh token)",
    CLOSE_BAD_FRAME: "invalid frame: not JSON, not an object, unknown type, wrong field type, binary",
}


def websockets(settings: Settings) -> dict[str, Any]:
    """The two sockets, briefly: README.md's "WebSocket protocol" section has every frame in full."""
    ping = {"type": "ping"}
    error = {"type": "error", "code": "...", "message": "...", "retry_after_ms?": 800}
    codes = {str(code): text for code, text in CLOSE_CODES.items()}
    return {
        "/ws/conversations/{conversation_id}/": {
            "summary": "Live messages, typing, read receipts and presence of one conversation.",
            "query": {
                "token": "access token (required)",
                "after": "message id: first receive every message stored after it, then live traffic",
            },
            "clientFrames": [
                {"type": "message", "content": "...", "client_id?": "...", "attachment_id?": 7},
                {"type": "typing", "is_typing": True},
                {"type": "read_receipt", "message_id": 123},
                ping,
            ],
            "serverFrames": [
                {"type": "message", "message": ref("Message")},
                {"type": "typing", "user_id": 1, "username": "...", "is_typing": True},
                {"type": "read_receipt", "message_id": 1, "user_id": 1, "username": "...", "timestamp": "..."},
                {"type": "status", "user_id": 1, "username": "...", "status": "online|offline", "timestamp": "..."},
                {"type": "pong"},
                error,
            ],
            "closeCodes": codes,
            "maxFrameBytes": settings.max_frame_bytes,
        },
        "/ws/notifications/": {
            "summary": "Notifications of one user: new_message, new_match, new_like.",
            "query": {"token": "access token (required)"},
            "clientFrames": [ping],
            "serverFrames": [
                {"type": "notification", "notification": {"type": "new_message|new_match|new_like", "...": "..."}},
                {"type": "pong"},
                error,
            ],
            "closeCodes": codes,
            "maxFrameBytes": settings.max_frame_bytes,
        },
    }


DESCRIPTION = """\
The REST side of the Chat & Matching API: accounts, profiles, matching and conversations.

JSON in and out. Authenticated operations take `Authorization: Bearer <access token>` (from
`POST /api/token/`). Ids are integers; timestamps are ISO 8601 UTC ending in `Z`. Every error is
`{"error": {"code", "message", "fields"?}}`; 429 answers carry `Retry-After`. Every answer carries an
`X-Request-Id` (a proxy's is kept) to quote in support requests.

Two WebSockets carry the live traffic, authenticated with `?token=<access token>`:
`/ws/conversations/{conversation_id}/` (messages, typing, read receipts, presence; `?after=<message id>`
resumes without loss) and `/ws/notifications/` (new messages, matches and likes). Their frames and
close codes are summarised in this document's `x-websockets` extension and described in full in the
README's "WebSocket protocol" section.
"""


def build_document(settings: Settings) -> dict[str, Any]:
    requests = request_schemas(settings)
    responses = response_schemas()
    clash = set(requests) & set(responses)
    # A response schema reuses the request's Location on purpose; any other shared name is a mistake.
    if clash - {"Location"}:
        raise RuntimeError(f"schema names used twice: {sorted(clash)}")
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Chat & Matching API",
            "version": _version(),
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "accounts", "description": "Registration and tokens"},
            {"name": "profiles", "description": "Own profile, picture, other people's public profiles"},
            {"name": "matching", "description": "Discover, likes, passes, matches and blocks"},
            {"name": "conversations", "description": "Conversations, history, sending, read pointers, attachments"},
            {"name": "push", "description": "Push devices for offline notifications (Web Push, webhooks)"},
            {"name": "operations", "description": "Probes and metrics"},
            {"name": "documentation", "description": "This document"},
        ],
        "security": [{"bearerAuth": []}],
        "paths": operations(settings),
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The `access` token of `POST /api/token/` (refresh tokens are refused).",
                }
            },
            "schemas": {**requests, **responses},
            "responses": error_responses(),
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
        },
        "x-websockets": websockets(settings),
    }


@lru_cache(maxsize=4)
def document_bytes(settings: Settings) -> bytes:
    """The serialized document, built on first use for a deployment's settings and kept."""
    return orjson.dumps(build_document(settings))


# -- handlers ------------------------------------------------------------------------------------------


class OpenAPIHandler(BaseHandler):
    def get(self) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.finish(document_bytes(self.services.settings))


class _DocsFiles(FileHandler):
    """Static files of the docs page. The route table hands every handler the services; these do not
    need them, so `initialize` takes whatever it is given and serves `folder`."""

    folder: Path | None = None

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(path=str(self.folder or DOCS_ROOT), default_filename="index.html")

    def prepare(self) -> None:
        if self.folder is None:
            raise tornado.web.HTTPError(404, "swagger-ui-py is not installed")

    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", DOCS_CSP)
        self.set_header("Cache-Control", "no-cache")


class DocsPageHandler(_DocsFiles):
    """Our page and its init script (handlers/openapi_assets/)."""

    folder = DOCS_ROOT


class SwaggerAssetHandler(_DocsFiles):
    """Swagger UI's own files, from the installed package."""

    folder = swagger_ui_static()


if SwaggerAssetHandler.folder is None:
    log.warning("swagger-ui-py is not installed: /api/docs/ will not render")

_ASSET_NAMES = "|".join(name.replace(".", r"\.") for name in SWAGGER_UI_FILES)

routes: list[tuple[str, Any]] = [
    (r"/api/openapi.json", OpenAPIHandler),
    (r"/api/docs/()", DocsPageHandler),
    (r"/api/docs/(init\.js)", DocsPageHandler),
    (rf"/api/docs/assets/({_ASSET_NAMES})", SwaggerAssetHandler),
]
