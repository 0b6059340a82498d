"""Headers every answer carries or leaves out, and request heads the server refuses.

- `Referrer-Policy: no-referrer` on every answer (REST, files, errors, the node's own raw answers): a page
  of ours never tells another site where it was, and a media URL (its own capability) never leaks in a
  Referer.
- No `Server` header: the version of the web framework is nobody's business.
- A request head over MAX_HEADER_BYTES is answered 431 with the error envelope (Tornado alone closes the
  connection without a word).
- WebSocket Origins from localhost pass in development only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import tornado.testing

from handlers.http_server import make_http_server
from tests.support import ApiClient, ws_connect
from tests.ws_helpers import PNG, conv_path, pair


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(getattr(request, "param", {}))


def assert_house_headers(headers: Any, context: Any) -> None:
    assert headers.get("Referrer-Policy") == "no-referrer", (context, dict(headers.get_all()))
    assert "Server" not in headers, (context, headers.get("Server"))


async def test_every_kind_of_answer_has_a_referrer_policy_and_no_server_header(api, services):
    user = await api.user("headers")
    picture = await api.put("/api/users/me/picture/", body=PNG, token=user.access)
    media_path = "/media/" + picture.body["profile_picture"].split("/media/", 1)[1]
    answers = {
        "REST 200": await api.get("/api/users/me/", token=user.access),
        "REST 401": await api.get("/api/users/me/"),
        "REST 400": await api.post("/api/register/", body=b"not json"),
        "REST 413": await api.post("/api/register/", body=b"{" + b" " * (services.settings.max_body_bytes + 1)),
        "REST 405": await api.request("DELETE", "/api/register/"),
        "unknown path": await api.get("/nowhere/"),
        "API document": await api.get("/api/openapi.json"),
        "API docs page": await api.get("/api/docs/"),
        "demo page": await api.get("/"),
        "demo file": await api.get("/static/app.js"),
        "missing demo file": await api.get("/static/missing.js"),
        "media file": await api.get(media_path),
        "missing media file": await api.get("/media/profile_pictures/missing.png"),
        "health": await api.get("/livez"),
    }
    etag = answers["demo page"].headers["Etag"]
    answers["304"] = await api.get("/", headers={"If-None-Match": etag})
    assert answers["304"].status == 304
    for context, answer in answers.items():
        assert_house_headers(answer.headers, (context, answer.status))


# -- the node's own HTTP server ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def node_server(app: Any, services: Any) -> AsyncIterator[int]:
    """The node's own HTTP server (the one server.py runs), which answers some requests before any
    handler; yields its port."""
    sock, port = tornado.testing.bind_unused_port()
    http = make_http_server(app, services.settings, file_limit=1024)
    http.add_sockets([sock])
    try:
        yield port
    finally:
        http.stop()
        await http.close_all_connections()


async def exchange(port: int, head: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send a raw request head; (status line, headers, body) of the answer, then wait for the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status, *lines = answer.decode("latin-1").rstrip("\r\n").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
        return status, headers, body
    finally:
        writer.close()


def request_head(header_bytes: int, *, path: str = "/livez") -> bytes:
    """A GET whose head (request line, headers and the blank line) is `header_bytes` long."""
    start = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Pad: ".encode()
    return start + b"a" * (header_bytes - len(start) - 4) + b"\r\n\r\n"


async def test_a_request_head_over_the_limit_gets_the_431_envelope(app, services):
    limit = services.settings.max_header_bytes
    assert limit == 64 * 1024
    async with node_server(app, services) as port:
        status, headers, _ = await exchange(port, request_head(limit - 1024))
        assert status == "HTTP/1.1 200 OK"
        for size in (limit + 1024, 4 * limit, 1024 * 1024):
            status, headers, body = await exchange(port, request_head(size))
            assert status == "HTTP/1.1 431 Request Header Fields Too Large", size
            assert headers["content-type"].startswith("application/json")
            assert headers["connection"] == "close"
            assert headers["referrer-policy"] == "no-referrer" and "server" not in headers
            error = orjson.loads(body)["error"]
            assert error["code"] == "headers_too_large" and str(limit) in error["message"], error
        # The node carries on.
        status, _, _ = await exchange(port, request_head(200))
        assert status == "HTTP/1.1 200 OK"


async def test_the_nodes_own_413_answer_has_the_house_headers_too(app, services):
    declared = max(services.settings.max_upload_bytes, services.settings.max_body_bytes) + 1
    head = f"POST /api/register/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: {declared}\r\n\r\n".encode()
    async with node_server(app, services) as port:
        status, headers, _ = await exchange(port, head)
    assert status.startswith("HTTP/1.1 413")
    assert headers["referrer-policy"] == "no-referrer" and "server" not in headers


# -- WebSocket origins --------------------------------------------------------------------------------------


async def origin_passes(api: ApiClient, path: str, origin: str) -> bool:
    ws = await ws_connect(api, path, headers={"Origin": origin})
    first = await ws.recv()
    ws.close()
    return first is not None and ws.close_code != 1008


@pytest.mark.parametrize("settings_overrides", [{"environment": "production"}], indirect=True)
async def test_in_production_localhost_origins_are_foreign(api, services):
    p = await pair(api, services)
    path = conv_path(p.cid, p.a)
    for origin in ("http://localhost:3000", "http://localhost", "http://[::1]:8080"):
        assert not await origin_passes(api, path, origin), origin
    # The server's own host still passes (the test reaches it as 127.0.0.1).
    assert await origin_passes(api, path, f"http://127.0.0.1:{api.port}")


async def test_in_development_localhost_origins_pass(api, services):
    p = await pair(api, services)
    for origin in ("http://localhost:3000", "http://[::1]:8080"):
        assert await origin_passes(api, conv_path(p.cid, p.a), origin), origin
