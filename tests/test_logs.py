"""What request lines put in the log: credentials in query strings masked, the rest kept as it was."""

from __future__ import annotations

import pytest

from services.core.logs import redact


@pytest.mark.parametrize(
    ("uri", "logged"),
    [
        ("/ws/conversations/5/?token=aaa.bbb.ccc&after=3", "/ws/conversations/5/?token=[redacted]&after=3"),
        ("/ws/notifications/?after=9&TOKEN=x", "/ws/notifications/?after=9&TOKEN=[redacted]"),
        ("/x/?access=a&refresh=b&password=c", "/x/?access=[redacted]&refresh=[redacted]&password=[redacted]"),
        ("/x/?token=", "/x/?token=[redacted]"),
        ("/x/?tokens=a&mytoken=b", "/x/?tokens=a&mytoken=b"),
        ("/api/users/me/", "/api/users/me/"),
        ("/x/?a=b=token=c", "/x/?a=b=token=c"),
    ],
)
def test_credentials_in_query_strings_are_masked_and_nothing_else(uri, logged):
    assert redact(uri) == logged
