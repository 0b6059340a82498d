"""The seed's client frames: parsing, validation, and the type -> handler registry.

A frame that is not JSON, not an object, of an unknown `type` or with a field of the wrong type is a
protocol violation: the socket is closed with 4003. A well-formed frame the server refuses (empty text,
rate limited, a message id of another conversation) is answered with an `error` frame and the socket
stays open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from services.core import errors

MAX_CLIENT_ID_CHARS = 64
MAX_ID = 2**53
KIND_NAMES = {"str": "a string", "bool": "a boolean", "id": "a positive integer"}


class BadFrame(Exception):
    """A protocol violation (close 4003)."""


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # "str" | "bool" | "id"
    required: bool = True


def _check(field: Field, value: Any) -> Any:
    if field.kind == "str":
        ok = isinstance(value, str)
    elif field.kind == "bool":
        ok = isinstance(value, bool)
    else:  # a positive integer id; JSON true/false are not numbers
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID
    if not ok:
        raise BadFrame(f"`{field.name}` must be {KIND_NAMES[field.kind]}")
    return value


@dataclass(frozen=True)
class FrameType:
    name: str
    fields: tuple[Field, ...]

    def validate(self, frame: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field in self.fields:
            if field.name not in frame or (frame[field.name] is None and not field.required):
                if field.required:
                    raise BadFrame(f"`{field.name}` is required")
                values[field.name] = None
                continue
            values[field.name] = _check(field, frame[field.name])
        return values


MESSAGE = FrameType(
    "message",
    (Field("content", "str"), Field("client_id", "str", required=False), Field("attachment_id", "id", required=False)),
)
TYPING = FrameType("typing", (Field("is_typing", "bool"),))
READ_RECEIPT = FrameType("read_receipt", (Field("message_id", "id"),))
PING = FrameType("ping", ())

CONVERSATION_FRAMES = {f.name: f for f in (MESSAGE, TYPING, READ_RECEIPT, PING)}
NOTIFICATION_FRAMES = {f.name: f for f in (PING,)}


def parse(raw: str | bytes, accepted: dict[str, FrameType]) -> tuple[str, dict[str, Any]]:
    """(type, validated fields) of a client frame, or BadFrame."""
    if isinstance(raw, bytes):
        raise BadFrame("binary frames are not accepted")
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadFrame("frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise BadFrame("frame must be a JSON object")
    kind = frame.get("type")
    if not isinstance(kind, str) or kind not in accepted:
        raise BadFrame("unknown frame type")
    values = accepted[kind].validate(frame)
    if kind == "message" and values["client_id"] is not None and len(values["client_id"]) > MAX_CLIENT_ID_CHARS:
        raise BadFrame(f"`client_id` longer than {MAX_CLIENT_ID_CHARS} characters")
    return kind, values


def error_frame(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, **extra}


def error_frame_for(exc: errors.DomainError, **extra: Any) -> dict[str, Any]:
    frame = error_frame(exc.code, exc.message, **extra)
    if isinstance(exc, errors.RateLimited):
        frame["retry_after_ms"] = max(1, int(exc.retry_after_s * 1000))
    return frame
