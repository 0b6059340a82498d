"""Cursors of the moderators' lists (the report queue, the audit log): both are ordered by integer id,
so a cursor is the last id shown and the way it was read. It is opaque to clients all the same, so that
its content can change without breaking them."""

from __future__ import annotations

import base64
import binascii

import orjson

from services.core import errors

MAX_CURSOR_CHARS = 128
MAX_ID = 2**53


def encode_cursor(last_id: int, oldest_first: bool) -> str:
    state = {"i": last_id, "o": oldest_first}
    return base64.urlsafe_b64encode(orjson.dumps(state)).rstrip(b"=").decode()


def decode_cursor(text: str, oldest_first: bool) -> int:
    """The last id of the previous page. A cursor of the other order, or not made here, is 400."""
    state = None
    if len(text) <= MAX_CURSOR_CHARS:
        try:
            state = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError):
            state = None
    if not isinstance(state, dict) or state.get("o") is not oldest_first:
        raise _bad_cursor()
    last_id = state.get("i")
    if not isinstance(last_id, int) or isinstance(last_id, bool) or not 0 <= last_id <= MAX_ID:
        raise _bad_cursor()
    return last_id


def _bad_cursor() -> errors.Invalid:
    return errors.Invalid("Invalid cursor", code="invalid_cursor", fields={"cursor": "not a cursor from this list"})
