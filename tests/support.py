"""Test helpers: a small JSON client for the REST API and shortcuts to create users."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import orjson
import tornado.httpclient

_counter = itertools.count(1)

PASSWORD = "correct horse battery"


@dataclass
class Response:
    status: int
    body: Any
    headers: Any

    @property
    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return self.body["error"].get("code")
        return None


@dataclass
class TestUser:
    __test__ = False  # a helper, not a test class, wherever it is imported
    id: int
    username: str
    access: str
    refresh: str


class PortClient:
    """The part of pytest-tornasync's client that ApiClient uses, for any server on a given port."""

    def __init__(self, port: int) -> None:
        from tornado.simple_httpclient import SimpleAsyncHTTPClient

        self.port = port
        self.http = SimpleAsyncHTTPClient(force_instance=True)

    def get_http_port(self) -> int:
        return self.port

    def get_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fetch(self, path: str, **kwargs: Any) -> Any:
        return self.http.fetch(self.get_url(path), **kwargs)


class ApiClient:
    def __init__(self, client: Any) -> None:
        self.client = client

    @property
    def port(self) -> int:
        return int(self.client.get_http_port())

    def url(self, path: str) -> str:
        return str(self.client.get_url(path))

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        token: str | None = None,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if json is not None:
            body = orjson.dumps(json)
            all_headers.setdefault("Content-Type", "application/json")
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        response = await self.client.fetch(
            path, method=method, body=body, headers=all_headers, raise_error=False, request_timeout=60
        )
        if response.code == 599:
            raise tornado.httpclient.HTTPClientError(599, message=str(response.error))
        text = response.body or b""
        try:
            parsed = orjson.loads(text) if text else None
        except orjson.JSONDecodeError:
            parsed = text
        return Response(response.code, parsed, response.headers)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, json, **kw)

    async def patch(self, path: str, json: Any = None, **kw: Any) -> Response:
        return await self.request("PATCH", path, json, **kw)

    async def put(self, path: str, **kw: Any) -> Response:
        return await self.request("PUT", path, **kw)

    async def delete(self, path: str, **kw: Any) -> Response:
        return await self.request("DELETE", path, **kw)

    async def user(self, prefix: str = "user", **profile: Any) -> TestUser:
        """Register a user (adult by default) and sign in."""
        username = f"{prefix}_{next(_counter)}"
        payload = {"username": username, "password": PASSWORD, "birthdate": "1995-06-15", **profile}
        created = await self.post("/api/register/", payload)
        assert created.status == 201, created.body
        tokens = await self.post("/api/token/", {"username": username, "password": PASSWORD})
        assert tokens.status == 200, tokens.body
        return TestUser(created.body["id"], username, tokens.body["access"], tokens.body["refresh"])


# -- WebSockets ---------------------------------------------------------------------------------------

import asyncio  # noqa: E402
import datetime as dt  # noqa: E402

import tornado.websocket  # noqa: E402


class WsClient:
    """A real WebSocket client (Tornado's) with JSON helpers for tests."""

    def __init__(self, conn: tornado.websocket.WebSocketClientConnection) -> None:
        self.conn = conn

    async def send(self, frame: Any) -> None:
        await self.conn.write_message(frame if isinstance(frame, (str, bytes)) else orjson.dumps(frame).decode())

    async def recv(self, timeout: float = 5.0) -> Any:
        """The next frame as JSON; None when the connection closed."""
        raw = await asyncio.wait_for(self.conn.read_message(), timeout)
        return None if raw is None else orjson.loads(raw)

    async def recv_type(self, kind: str, timeout: float = 5.0) -> Any:
        """The next frame of this type, skipping others (e.g. status frames)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if frame is None:
                raise AssertionError(f"closed ({self.close_code}) while waiting for {kind}")
            if frame.get("type") == kind:
                return frame

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str | None]:
        """Wait for the server to close; (code, reason). Frames received meanwhile are dropped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            raw = await asyncio.wait_for(self.conn.read_message(), max(0.01, deadline - loop.time()))
            if raw is None:
                return self.conn.close_code, self.conn.close_reason

    async def silent(self, seconds: float = 0.3) -> list[Any]:
        """Frames that arrive within `seconds` (for checking that nothing, or only X, came)."""
        frames = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                raw = await asyncio.wait_for(self.conn.read_message(), left)
            except TimeoutError:
                break
            if raw is None:
                break
            frames.append(orjson.loads(raw))
        return frames

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    def close(self, code: int = 1000) -> None:
        self.conn.close(code)


async def ws_connect(api: ApiClient, path: str, headers: dict[str, str] | None = None) -> WsClient:
    request = tornado.httpclient.HTTPRequest(f"ws://127.0.0.1:{api.port}{path}", headers=headers or {})
    conn = await tornado.websocket.websocket_connect(request, max_message_size=16 * 1024 * 1024)
    return WsClient(conn)


async def make_conversation(services: Any, a: int, b: int) -> int:
    """A match and its open conversation between two users, written straight to the store (a fixture
    shortcut for chat tests; tests of matching go through the likes API)."""
    store = services.store
    low, high = sorted((a, b))
    now = dt.datetime.now(dt.UTC)
    match_id = await store.next_id("matches")
    conversation_id = await store.next_id("conversations")
    await store.matches.insert_one(
        {
            "_id": match_id,
            "pair": f"{low}:{high}",
            "users": [low, high],
            "conversation_id": conversation_id,
            "status": "active",
            "created_at": now,
        }
    )
    await store.conversations.insert_one(
        {
            "_id": conversation_id,
            "participants": [low, high],
            "match_id": match_id,
            "status": "open",
            "created_at": now,
            "updated_at": now,
            "last_seq": 0,
        }
    )
    return conversation_id
