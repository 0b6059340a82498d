"""What request lines put in the log: credentials in query strings masked, the rest kept as it was."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from server import log_request
from services.core.logs import FoldedWarning, redact
from tests.support import ws_connect
from tests.ws_helpers import join, pair, wait_for


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


async def test_a_websocket_is_one_line_at_its_end_saying_who_where_how_and_how_long(api, services, caplog):
    """A reconnect storm logged two lines per socket (the handshake, then the close); one line at the end,
    without the token, says all of it. A socket refused before it joined says why."""
    p = await pair(api, services)
    with caplog.at_level(logging.INFO):
        ws = await join(api, p.cid, p.a)
        ws.close()
        await wait_for(lambda: any(r.name == "chat.ws" for r in caplog.records))
        forged = await ws_connect(api, f"/ws/notifications/?token={p.b.access}x")
        assert (await forged.closed())[0] == 4002
        await wait_for(lambda: len([r for r in caplog.records if r.name == "chat.ws"]) == 2)
    closed, refused = [r for r in caplog.records if r.name == "chat.ws"]
    assert closed.levelno == logging.INFO
    assert closed.getMessage().startswith(
        f"socket closed: /ws/conversations/{p.cid}/?token=[redacted] user {p.a.id}, 1000"
    )
    assert (closed.user_id, closed.close_code, closed.endpoint, closed.joined) == (p.a.id, 1000, "conversation", True)
    assert closed.open_s >= 0 and closed.remote_ip
    assert refused.getMessage().startswith("socket closed before joining: /ws/notifications/?token=[redacted] user -,")
    assert (refused.close_code, refused.close_reason, refused.joined) == (4002, "invalid token", False)
    assert not any(p.a.access in r.getMessage() or p.b.access in r.getMessage() for r in (closed, refused))


@pytest.mark.parametrize(
    ("status", "path", "level"),
    [
        (101, "/ws/notifications/", logging.DEBUG),
        (200, "/api/users/me/", logging.INFO),
        (503, "/readyz", logging.WARNING),
        (200, "/livez", logging.DEBUG),
    ],
)
def test_the_access_line_of_a_websocket_handshake_is_at_debug(status, path, level, caplog):
    request = SimpleNamespace(
        path=path, uri=path + "?token=abc", method="GET", remote_ip="10.0.0.1", request_time=lambda: 0.001
    )
    handler = SimpleNamespace(get_status=lambda: status, request=request)
    with caplog.at_level(logging.DEBUG, logger="tornado.access"):
        log_request(handler)  # type: ignore[arg-type]
    (line,) = caplog.records
    assert line.levelno == level and "abc" not in line.getMessage()
