"""Every error answer of the server has the JSON envelope, files included, and nothing a client sends
produces a 500 or a traceback (handlers/errors.py is the one map from an exception to the answer; the
sockets' 1011 is in tests/test_ws_errors.py)."""

from __future__ import annotations

import pytest

from tests.support import assert_error


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/static/no-such-file.js", 404),
        ("/static/%00", 404),
        ("/static/app.js%00.png", 404),
        ("/media/%00", 404),
        ("/media/profile_pictures/none.jpg", 404),
        ("/static/..%2f..%2fsetup.cfg", 403),
        ("/api/docs/assets/swagger-ui.css%00", 404),
        ("/no/such/endpoint/", 404),
    ],
)
async def test_file_and_unknown_paths_answer_the_envelope(api, path, status):
    r = await api.get(path)
    assert r.status == status, (path, r.status, r.body)
    assert_error(r, status)
    assert "Traceback" not in str(r.body)


async def test_a_file_that_exists_is_still_served_as_a_file(api):
    r = await api.get("/static/app.js")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith(("application/javascript", "text/javascript"))


async def test_an_unexpected_failure_is_a_500_envelope_without_details(api, services, monkeypatch):
    user = await api.user("unlucky")

    async def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(services.chat, "list_conversations", broken)
    r = await api.get("/api/conversations/", token=user.access)
    assert_error(r, 500, "internal_error")
    assert "secret" not in r.body["error"]["message"]
