"""Request bodies of the REST API, as pydantic models.

They reject what a client should not send (unknown fields, strings where numbers go, oversized text)
with per-field messages, and they are the source of the request schemas in the OpenAPI document.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from services.accounts.users import USERNAME_RE

if TYPE_CHECKING:
    from services.core.config import Settings

Gender = Literal["man", "woman", "nonbinary"]
# What a push device is (services/push/service.py): named once, for the request model and the answers.
DeviceKind = Literal["webpush", "webhook"]
PositiveId = Annotated[StrictInt, Field(gt=0, le=2**53)]

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _date_text(value: Any) -> Any:
    # pydantic's lax dates also take numbers (0 becomes 1970-01-01) and midnight datetimes; on the wire
    # a date is only ever "YYYY-MM-DD", and anything else is a client bug worth a 400.
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError("must be a date written YYYY-MM-DD")
    return value


IsoDate = Annotated[dt.date, BeforeValidator(_date_text)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Location(Strict):
    lat: Annotated[StrictFloat | StrictInt, Field(ge=-90, le=90)]
    lon: Annotated[StrictFloat | StrictInt, Field(ge=-180, le=180)]


class ProfileFields(Strict):
    email: Annotated[StrictStr, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = None
    display_name: Annotated[StrictStr, Field(min_length=1, max_length=50)] | None = None
    bio: Annotated[StrictStr, Field(max_length=500)] | None = None
    birthdate: IsoDate | None = None
    gender: Gender | None = None
    interested_in: Annotated[list[Gender], Field(max_length=3)] | None = None
    location: Location | None = None
    age_min: Annotated[StrictInt, Field(ge=0, le=120)] | None = None
    age_max: Annotated[StrictInt, Field(ge=0, le=120)] | None = None


class RegisterBody(ProfileFields):
    username: Annotated[StrictStr, Field(min_length=1, max_length=30)]
    # The upper bound is checked against MAX_PASSWORD_CHARS by the handler before any hashing.
    password: Annotated[StrictStr, Field(min_length=8, max_length=4096)]


class TokenBody(Strict):
    username: Annotated[StrictStr, Field(min_length=1, max_length=30)]
    password: Annotated[StrictStr, Field(min_length=1, max_length=4096)]


class ProfilePatch(ProfileFields):
    pass


class SendMessageBody(Strict):
    content: Annotated[StrictStr, Field(max_length=100_000)] = ""
    client_id: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None
    attachment_id: PositiveId | None = None


class ReadBody(Strict):
    message_id: PositiveId


class UserRef(Strict):
    """The body of a like, a pass or a block: whom it is about."""

    user_id: PositiveId


B64URL = r"^[A-Za-z0-9_-]+={0,2}$"


class PushKeys(Strict):
    """A PushSubscription's keys (RFC 8291): the browser's P-256 public key and its 16-byte auth secret."""

    p256dh: Annotated[StrictStr, Field(min_length=87, max_length=88, pattern=B64URL)]
    auth: Annotated[StrictStr, Field(min_length=22, max_length=24, pattern=B64URL)]


class DeviceBody(Strict):
    """A push target: a browser's `PushSubscription.toJSON()` with `kind: "webpush"`, or a webhook URL of
    the operator's push gateway with `kind: "webhook"`. Which fields a kind needs is checked by the handler."""

    kind: DeviceKind
    endpoint: Annotated[StrictStr, Field(min_length=1, max_length=2048)] | None = None
    keys: PushKeys | None = None
    # PushSubscription.toJSON() names it so; milliseconds since the epoch, usually null.
    expirationTime: Annotated[StrictInt | StrictFloat, Field(ge=0, le=2**53)] | None = None
    url: Annotated[StrictStr, Field(min_length=1, max_length=2048)] | None = None


# -- what the API document adds to the models' schemas --------------------------------------------------

# Python's str.isspace() set, which is what `content.strip()` removes, written as a class both Python's
# and ECMAScript's regex engines read alike (`\s` differs between them: \x1c-\x1f and \x85).
PY_WHITESPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = f"[^{PY_WHITESPACE}]"


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


def request_schemas(
    schemas: dict[str, Any], settings: Settings, device_fields: Mapping[str, tuple[Sequence[str], Sequence[str]]]
) -> dict[str, Any]:
    """The models' JSON Schemas (by name) with what the server enforces on top: a deployment's password
    and message lengths and minimum age, and the rules the handlers check by hand (`device_fields`: the
    fields each device kind requires and those it may have). A client or a fuzzer that follows them
    sends what the server accepts."""
    register = schemas["RegisterBody"]
    # The service matches the whole name; JSON Schema patterns match anywhere unless anchored.
    username = USERNAME_RE.pattern.removeprefix("^").removesuffix("$")
    _tighten(register, "username", pattern=f"^{username}$")
    password_limit = min(settings.max_password_chars, _value_schema(register, "password")["maxLength"])
    _tighten(register, "password", maxLength=password_limit)
    for name in ("RegisterBody", "ProfilePatch"):
        for field in ("age_min", "age_max"):
            _tighten(schemas[name], field, minimum=settings.min_age)
        birthdate = f"YYYY-MM-DD; the person must be {settings.min_age} to 120 years old."
        _tighten(schemas[name], "birthdate", description=birthdate)
        schemas[name]["description"] = "`age_min` must not exceed `age_max` (400 otherwise)."
    schemas["ProfilePatch"]["description"] += " A field set to null is cleared; an absent field is kept."
    _tighten_send_message(schemas["SendMessageBody"], settings)
    _tighten_device(schemas["DeviceBody"], device_fields)
    return schemas


def _tighten_send_message(send: dict[str, Any], settings: Settings) -> None:
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


def _tighten_device(device: dict[str, Any], device_fields: Mapping[str, tuple[Sequence[str], Sequence[str]]]) -> None:
    # Which fields each kind takes (the handler answers 400 `validation_error` otherwise).
    device["oneOf"] = [
        {
            "properties": {"kind": {"const": kind}},
            "required": list(required),
            "not": {
                "anyOf": [
                    {"required": [name]} for name in device["properties"] if name not in (*required, *optional, "kind")
                ]
            },
        }
        for kind, (required, optional) in device_fields.items()
    ]
    device["description"] = (
        "`webpush`: `PushSubscription.toJSON()` plus `kind`; the endpoint must be https on a known push service. "
        "`webhook`: a `url` under one of the operator's PUSH_WEBHOOK_ALLOWED_PREFIXES."
    )
