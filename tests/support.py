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
    id: int
    username: str
    access: str
    refresh: str


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
        username = f"{prefix}{next(_counter)}"
        payload = {"username": username, "password": PASSWORD, "birthdate": "1995-06-15", **profile}
        created = await self.post("/api/register/", payload)
        assert created.status == 201, created.body
        tokens = await self.post("/api/token/", {"username": username, "password": PASSWORD})
        assert tokens.status == 200, tokens.body
        return TestUser(created.body["id"], username, tokens.body["access"], tokens.body["refresh"])
