"""Time as the server writes it: aware UTC datetimes, and ISO 8601 with a trailing Z on the wire."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 UTC with millisecond precision and a trailing Z, as every timestamp on the wire."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    text = value.astimezone(dt.UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def now_iso() -> str:
    """The current time as it goes on the wire."""
    return iso_of(utcnow())


def iso_of(value: dt.datetime) -> str:
    """`iso` of a value known not to be None."""
    text = iso(value)
    assert text is not None
    return text
