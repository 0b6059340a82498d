"""Request bodies of the REST API, as pydantic models.

They reject what a client should not send (unknown fields, strings where numbers go, oversized text)
with per-field messages, and they are the source of the request schemas in the OpenAPI document.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

Gender = Literal["man", "woman", "nonbinary"]
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


class RefreshBody(Strict):
    refresh: Annotated[StrictStr, Field(min_length=1, max_length=4096)]


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

    kind: Literal["webpush", "webhook"]
    endpoint: Annotated[StrictStr, Field(min_length=1, max_length=2048)] | None = None
    keys: PushKeys | None = None
    # PushSubscription.toJSON() names it so; milliseconds since the epoch, usually null.
    expirationTime: Annotated[StrictInt | StrictFloat, Field(ge=0, le=2**53)] | None = None
    url: Annotated[StrictStr, Field(min_length=1, max_length=2048)] | None = None
