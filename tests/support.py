"""Test helpers: a JSON client for the REST API, a WebSocket client, settings for a test node, and
shortcuts that create users, matches and conversations (through the API, or straight in the store)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import orjson
import tornado.httpclient
import tornado.websocket
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from services.core.config import Settings
from services.core.container import Services
from services.storage.documents import UNUSABLE_HASH, conversation_document, match_document, user_document

_counter = itertools.count(1)

PASSWORD = "correct horse battery"
TEST_SECRET = "test-secret-" + "x" * 40


def make_settings(tmp_path: Path, port: int, **overrides: Any) -> Settings:
    """A node's settings for a test: its own data dir and database, the test secret, few hash threads."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(tmp_path / "data"),
        "mongodb_database": "t_" + uuid.uuid4().hex[:16],
        "jwt_secret": TEST_SECRET,
        "hash_concurrency": 2,
        # A loaded test machine may hold a store call for more than the production default; tests of
        # what a timeout does set their own.
        "mongodb_timeout_ms": 3000,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Response:
    status: int
    body: Any
    headers: Any

    @property
    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            code = self.body["error"].get("code")
            return code if isinstance(code, str) else None
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
            path,
            method=method,
            body=body,
            headers=all_headers,
            raise_error=False,
            request_timeout=60,
            # DELETE with a body: deleting an account takes the password, signing out a refresh token.
            allow_nonstandard_methods=body is not None,
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


# -- answers ------------------------------------------------------------------------------------------


def assert_error(r: Response, status: int, code: str | None = None, *fields: str) -> dict[str, Any]:
    """The response is the contract's envelope with this status (and code, and these field keys)."""
    assert r.status == status, (r.status, r.body)
    assert r.headers["Content-Type"].startswith("application/json"), r.headers["Content-Type"]
    assert isinstance(r.body, dict) and set(r.body) == {"error"}, r.body
    error: dict[str, Any] = r.body["error"]
    assert set(error) <= {"code", "message", "fields"}, error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    if code is not None:
        assert error["code"] == code, error
    for name in fields:
        assert name in error.get("fields", {}), error
    return error


def schema_validator(document: dict[str, Any], pointer: str) -> jsonschema.Draft202012Validator:
    """A validator for the schema at `pointer` ("#/components/schemas/X") of an OpenAPI document."""
    registry: Registry[Any] = Registry().with_resource("urn:api", DRAFT202012.create_resource(document))
    return jsonschema.Draft202012Validator(
        {"$ref": "urn:api" + pointer},
        registry=registry,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


def json_pointer(*parts: str) -> str:
    """The JSON pointer to the node under these keys (RFC 6901 escapes, then URL quoting)."""
    return "#/" + "/".join(quote(p.replace("~", "~0").replace("/", "~1"), safe="~") for p in parts)


def conforms(document: dict[str, Any], method: str, path: str, response: Response) -> None:
    """The answer's status is documented for the operation, and its body and headers are as documented."""
    operation = document["paths"][path][method]
    status = str(response.status)
    assert status in operation["responses"], f"{method} {path} answered undocumented {status}: {response.body}"
    documented = operation["responses"][status]
    pointer: tuple[str, ...] = ("paths", path, method, "responses", status)
    if "$ref" in documented:
        name = documented["$ref"].rsplit("/", 1)[1]
        pointer = ("components", "responses", name)
        documented = document["components"]["responses"][name]
    for header in documented.get("headers", {}):
        assert response.headers.get(header), f"{method} {path} {status}: no {header} header"
        assert int(response.headers[header]) >= 1
    content = documented.get("content")
    if content is None:
        assert not response.body, f"{method} {path} {status} has an undocumented body"
        return
    media_type = response.headers["Content-Type"].split(";")[0].strip()
    assert media_type in content, (method, path, status, media_type)
    body = response.body
    if media_type.startswith("text/"):
        body = body.decode() if isinstance(body, bytes) else body
    errors = sorted(
        schema_validator(document, json_pointer(*pointer, "content", media_type, "schema")).iter_errors(body), key=str
    )
    assert not errors, f"{method} {path} {status}: {[e.message for e in errors]}\n{response.body}"


# -- WebSockets ---------------------------------------------------------------------------------------


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

    async def recv_type(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame of this type, skipping others (e.g. status frames)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if frame is None:
                raise AssertionError(f"closed ({self.close_code}) while waiting for {kind}")
            assert isinstance(frame, dict), frame  # every frame the server sends is a JSON object
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


# -- fixtures written straight to the store ----------------------------------------------------------

_seeded_names = itertools.count(1)


async def seed_user(services: Services, prefix: str = "m", **fields: Any) -> TestUser:
    """A user written straight into the store (no password hash to pay for), with a valid access token.
    `birthdate` (a date; None for none) and `location` ({"lon", "lat"}) take the API's shapes."""
    user_id = await services.store.next_id("users")
    username = f"{prefix}{next(_seeded_names)}_{user_id}"
    birthdate = fields.pop("birthdate", dt.date(1995, 6, 15))
    location = fields.pop("location", None)
    if birthdate is not None:
        fields["birthdate"] = dt.datetime(birthdate.year, birthdate.month, birthdate.day, tzinfo=dt.UTC)
    if location is not None:
        fields["location"] = [float(location["lon"]), float(location["lat"])]
    doc = user_document(user_id, username, password_hash=UNUSABLE_HASH, created_at=dt.datetime.now(dt.UTC), **fields)
    await services.store.users.insert_one(doc)
    tokens = await services.tokens.issue(user_id)
    return TestUser(user_id, username, tokens.access, tokens.refresh)


async def make_conversation(services: Services, a: int, b: int) -> int:
    """A match and its open conversation between two users, written straight to the store (a fixture
    shortcut for chat tests; tests of matching go through the likes API)."""
    store = services.store
    now = dt.datetime.now(dt.UTC)
    match_id = await store.next_id("matches")
    conversation_id = await store.next_id("conversations")
    await store.matches.insert_one(match_document(match_id, a, b, conversation_id, created_at=now))
    await store.conversations.insert_one(conversation_document(conversation_id, (a, b), match_id, created_at=now))
    return conversation_id


async def stored_media(services: Services, folder: str = "") -> set[str]:
    """The paths of the uploaded files the database holds under `folder`: whole files and chunks left
    behind by one that was not removed completely."""
    store = services.store
    files = {str(doc["_id"]) for doc in await store.media_files.find({}, {"_id": 1}).to_list(None)}
    chunks = set(await store.media_chunks.distinct("files_id"))
    return {path for path in files | {str(p) for p in chunks} if path.startswith(folder)}
