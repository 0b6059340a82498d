"""Shortcuts for the WebSocket tests: two users in a conversation, sockets for each, frame filters."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import jwt

from tests.support import TEST_SECRET, ApiClient, Response, TestUser, WsClient, make_conversation, ws_connect

# A valid 1x1 PNG: uploads are checked by their bytes, not by the declared type.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
MESSAGE_KEYS = {
    "id",
    "sender_id",
    "sender_username",
    "sender_profile_picture",
    "content",
    "created_at",
    "is_read",
    "attachment",
}
# The seed's message object plus the contract's optional extensions.
OPTIONAL_MESSAGE_KEYS = {"conversation_id", "client_id", "edited_at", "deleted", "deleted_at"}


@dataclass
class Pair:
    a: TestUser
    b: TestUser
    cid: int


async def pair(api: ApiClient, services: Any) -> Pair:
    a = await api.user("alice")
    b = await api.user("bob")
    return Pair(a, b, await make_conversation(services, a.id, b.id))


def conv_path(cid: int, user: TestUser | str | None, after: int | None = None) -> str:
    token = user.access if isinstance(user, TestUser) else user
    path = f"/ws/conversations/{cid}/"
    query = []
    if token is not None:
        query.append(f"token={token}")
    if after is not None:
        query.append(f"after={after}")
    return path + ("?" + "&".join(query) if query else "")


async def join(api: ApiClient, cid: int, user: TestUser, after: int | None = None, *, statuses: int = 1) -> WsClient:
    """A conversation socket, past the `status` frames that greet every join (one per other participant)."""
    ws = await ws_connect(api, conv_path(cid, user, after))
    for _ in range(statuses):
        frame = await ws.recv()
        assert frame is not None and frame["type"] == "status", frame
    return ws


async def notifications(api: ApiClient, user: TestUser) -> WsClient:
    return await ws_connect(api, f"/ws/notifications/?token={user.access}")


async def messages(ws: WsClient, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next `count` message objects on a conversation socket (other frame types skipped)."""
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(out) < count:
        frame = await ws.recv_type("message", max(0.01, deadline - loop.time()))
        out.append(frame["message"])
    return out


async def history(api: ApiClient, cid: int, user: TestUser, query: str = "") -> Response:
    return await api.get(f"/api/conversations/{cid}/messages/{query}", token=user.access)


async def history_ids(api: ApiClient, cid: int, user: TestUser) -> list[int]:
    got = await history(api, cid, user, "?limit=100")
    assert got.status == 200, got.body
    return [m["id"] for m in got.body["results"]]


async def send_rest(api: ApiClient, cid: int, user: TestUser, content: str, **extra: Any) -> Response:
    return await api.post(f"/api/conversations/{cid}/messages/", {"content": content, **extra}, token=user.access)


async def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


def check_message_object(message: dict[str, Any]) -> None:
    """The seed's message object, field for field, with the contract's types."""
    assert MESSAGE_KEYS <= set(message) <= MESSAGE_KEYS | OPTIONAL_MESSAGE_KEYS, set(message)
    assert isinstance(message["id"], int) and not isinstance(message["id"], bool) and message["id"] > 0
    assert isinstance(message["sender_id"], int)
    assert isinstance(message["sender_username"], str)
    assert message["sender_profile_picture"] is None or message["sender_profile_picture"].startswith("http")
    assert isinstance(message["content"], str)
    assert ISO_Z.match(message["created_at"]), message["created_at"]
    assert isinstance(message["is_read"], bool)


def token(user_id: int, *, kind: str = "access", ttl_s: int = 600, secret: str = TEST_SECRET, **kw: Any) -> str:
    """A token signed like the server's (or not, with another secret/algorithm) for the refusal tests."""
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims = {"user_id": user_id, "token_type": kind, "iat": now, "exp": now + ttl_s, "jti": "t" * 32}
    algorithm = kw.pop("algorithm", "HS256")
    # PyJWT's "none" algorithm takes no key; its annotations do not say so.
    key: Any = None if algorithm == "none" else secret
    return jwt.encode(claims, key, algorithm=algorithm)


async def allocate_hole(services: Any, cid: int) -> int:
    """Make the node's next message skip an id, which then is never stored: what a writer of the earlier
    design (ids reserved before the insert) left behind when it died between the two. Returns the id."""
    skipped: int = max(services.chat._last_seq.get(cid, 0), await services.chat.last_stored_seq(cid)) + 1
    services.chat._last_seq[cid] = skipped
    return skipped


def abort(ws: WsClient) -> None:
    """Drop the TCP connection without a close frame, as a lost network does."""
    stream = ws.conn.protocol.stream if ws.conn.protocol is not None else None
    if stream is not None:
        stream.close()
