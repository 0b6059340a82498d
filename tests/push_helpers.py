"""A real push service and a real webhook gateway on loopback, and the helpers the push tests share
(tests/test_push.py, tests/test_mute_and_preferences.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import http_ece
import jwt
import pytest
import tornado.httpserver
import tornado.testing
import tornado.web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.core.container import Services
from tests.support import ApiClient, TestUser, make_conversation

WEBHOOK_SECRET = "webhook-secret-" + "w" * 32
PUSH_SETTINGS: dict[str, Any] = {
    "push_grace_s": 0.2,
    "push_window_s": 1.0,
    "push_poll_interval_s": 0.05,
    "push_retry_base_s": 0.2,
    "push_retry_max_s": 2.0,
    "push_max_attempts": 3,
    "push_timeout_s": 2.0,
    "push_lease_s": 4.0,
    "push_max_devices": 3,
    "push_allow_insecure": True,
    "push_webhook_secret": WEBHOOK_SECRET,
}
QUIET_S = 0.6  # longer than the grace delay plus a few polls: what has not come by then is not coming


# -- a push service and a webhook gateway ----------------------------------------------------------------


@dataclass
class Browser:
    """The receiving end of one subscription: its private key and auth secret (RFC 8291)."""

    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    def keys(self) -> dict[str, str]:
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {"p256dh": b64(point), "auth": b64(self.auth)}


@dataclass
class Push:
    name: str
    payload: dict[str, Any]
    headers: dict[str, str]
    at: float


@dataclass
class Receiver:
    port: int
    browsers: dict[str, Browser] = field(default_factory=dict)
    # Statuses to answer, in order, per endpoint name; then 201.
    scripts: dict[str, list[int]] = field(default_factory=dict)
    attempts: dict[str, list[float]] = field(default_factory=dict)
    pushes: list[Push] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    vapid_keys: set[str] = field(default_factory=set)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def subscription(self, name: str) -> dict[str, Any]:
        """What PushManager.subscribe() would give, as the page posts it."""
        browser = Browser(ec.generate_private_key(ec.SECP256R1()), os.urandom(16))
        self.browsers[name] = browser
        return {
            "kind": "webpush",
            "endpoint": f"{self.origin}/push/{name}",
            "expirationTime": None,
            "keys": browser.keys(),
        }

    def webhook(self, name: str) -> dict[str, Any]:
        return {"kind": "webhook", "url": f"{self.origin}/hook/{name}"}

    def to(self, name: str) -> list[Push]:
        return [p for p in self.pushes if p.name == name]

    async def wait(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; pushes: {self.pushes}, problems: {self.problems}")
            await asyncio.sleep(0.02)
        assert not self.problems, self.problems


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Endpoint(tornado.web.RequestHandler):
    def initialize(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def scripted(self, name: str) -> bool:
        """Record the attempt; answer a scripted error status if there is one."""
        self.receiver.attempts.setdefault(name, []).append(time.monotonic())
        script = self.receiver.scripts.get(name)
        if script:
            self.set_status(script.pop(0))
            self.finish()
            return True
        return False

    def refuse(self, problem: str) -> None:
        self.receiver.problems.append(problem)
        self.set_status(400)
        self.finish()


class PushServiceEndpoint(_Endpoint):
    """A push service (RFC 8030) that checks VAPID, handing the ciphertext to the 'browser'."""

    def post(self, name: str) -> None:
        if self.scripted(name):
            return
        headers = self.request.headers
        if headers.get("Content-Encoding") != "aes128gcm" or not headers.get("TTL", "").isdigit():
            return self.refuse(f"bad headers {dict(headers)}")
        scheme, _, params = headers.get("Authorization", "").partition(" ")
        parts = dict(p.split("=", 1) for p in params.split(","))
        if scheme != "vapid" or set(parts) != {"t", "k"}:
            return self.refuse(f"bad Authorization {headers.get('Authorization')}")
        server_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64(parts["k"]))
        try:
            claims = jwt.decode(parts["t"], key=server_key, algorithms=["ES256"], audience=self.receiver.origin)
        except jwt.PyJWTError as exc:
            return self.refuse(f"VAPID token rejected: {exc}")
        if not claims.get("sub") or not time.time() < claims["exp"] <= time.time() + 24 * 3600:
            return self.refuse(f"bad VAPID claims {claims}")
        self.receiver.vapid_keys.add(parts["k"])
        browser = self.receiver.browsers[name]
        plain = http_ece.decrypt(
            self.request.body, private_key=browser.private_key, auth_secret=browser.auth, version="aes128gcm"
        )
        self.receiver.pushes.append(Push(name, json.loads(plain), dict(headers), time.monotonic()))
        self.set_status(201)
        self.finish()


class WebhookEndpoint(_Endpoint):
    """An FCM/APNs gateway: accepts only bodies signed with the shared secret, recently."""

    def post(self, name: str) -> None:
        if self.scripted(name):
            return
        signature = self.request.headers.get("X-Chat-Signature", "")
        parts = dict(p.split("=", 1) for p in signature.split(",") if "=" in p)
        expected = hmac.new(
            WEBHOOK_SECRET.encode(), parts.get("t", "").encode() + b"." + self.request.body, hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, parts.get("v1", "")) or abs(time.time() - int(parts["t"])) > 300:
            return self.refuse(f"bad signature {signature}")
        body = json.loads(self.request.body)
        self.receiver.pushes.append(Push(name, body, dict(self.request.headers), time.monotonic()))
        self.set_status(200)
        self.finish()


@pytest.fixture
def push_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """More settings for one test: parametrize it with `indirect=True`."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def receiver(io_loop: Any) -> Iterator[Receiver]:
    sock, port = tornado.testing.bind_unused_port()
    receiver = Receiver(port)
    app = tornado.web.Application(
        [
            (r"/push/([a-z0-9-]+)", PushServiceEndpoint, {"receiver": receiver}),
            (r"/hook/([a-z0-9-]+)", WebhookEndpoint, {"receiver": receiver}),
        ]
    )
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    yield receiver
    server.stop()


async def register(api: ApiClient, user: TestUser, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    answer = await api.post("/api/devices/", body, token=user.access)
    assert answer.status == status, answer.body
    return dict(answer.body)


async def send(api: ApiClient, user: TestUser, conversation_id: int, content: str) -> dict[str, Any]:
    answer = await api.post(f"/api/conversations/{conversation_id}/messages/", {"content": content}, token=user.access)
    assert answer.status == 201, answer.body
    return dict(answer.body)


async def pair(api: ApiClient, services: Services) -> tuple[TestUser, TestUser, int]:
    a, b = await api.user("sender"), await api.user("recipient")
    return a, b, await make_conversation(services, a.id, b.id)


def skipped(services: Services, reason: str) -> float:
    return float(services.push.skipped.labels(reason=reason)._value.get())
