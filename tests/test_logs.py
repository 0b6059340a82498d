"""What request lines put in the log: credentials in query strings masked, the rest kept as it was."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.core.logs import FoldedWarning, redact


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


async def test_a_warning_raised_for_many_subjects_at_once_is_one_line_and_a_count(caplog):
    log = logging.getLogger("chat.test-folded")
    folded = FoldedWarning(log, "could not do it for user %s: store unavailable", window_s=0.2)
    with caplog.at_level(logging.WARNING, logger="chat.test-folded"):
        for user_id in range(500):
            folded.warn(user_id)
        assert [r.getMessage() for r in caplog.records] == ["could not do it for user 0: store unavailable"]
        await asyncio.sleep(0.3)  # the window ends: its count is logged without waiting for another
        assert caplog.records[-1].getMessage() == "could not do it for user ...: store unavailable: 499 more like it"
        folded.warn(500)  # a new window starts with a line of its own
        assert caplog.records[-1].getMessage() == "could not do it for user 500: store unavailable"
        await asyncio.sleep(0.3)
    assert len(caplog.records) == 3  # nothing folded in the second window: no count line
