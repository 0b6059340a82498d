"""Sending one push to one device, and the keys and address checks that go with it.

Two kinds of device:
- `webpush`: a browser's PushSubscription. The payload is encrypted for the browser alone (RFC 8291,
  `aes128gcm`, by pywebpush's `WebPusher.encode`) and the request is signed with this server's VAPID key
  (RFC 8292, `Authorization: vapid t=<JWT>,k=<public key>`, by py_vapid, which pywebpush is built on).
  The push service (Google's, Mozilla's, Apple's...) sees only ciphertext.
- `webhook`: an operator's gateway (a relay to FCM or APNs for the mobile apps). The JSON body is signed
  with `X-Chat-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">` under PUSH_WEBHOOK_SECRET.

Both go out through Tornado's non-blocking HTTP client with a timeout and without following redirects,
so a push never holds the IOLoop and an endpoint cannot bounce the server to another address.
Only the encryption and the VAPID signature run on the loop: a few hundred microseconds of CPU.

Users choose the URLs the server will call, so they are checked when a device is registered: Web Push
endpoints must be https on a known push service (PUSH_WEBPUSH_ALLOWED_HOSTS) at its port 443 (or one of
PUSH_WEBPUSH_ALLOWED_PORTS), webhooks must start with a prefix the operator allowed
(PUSH_WEBHOOK_ALLOWED_PREFIXES). Anything else would let a user make the server POST to internal
addresses (SSRF).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import enum
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, unquote, urlsplit

import tornado.httpclient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

if TYPE_CHECKING:
    from services.core.config import Settings

log = logging.getLogger("chat.push")

VAPID_KEY_FILE = "vapid_private_key"
# RFC 8292 allows a token to live 24 hours; ours live 12 and are reused until an hour before they expire
# (one signature per push service origin, not one per push).
VAPID_TOKEN_TTL_S = 12 * 3600
VAPID_TOKEN_RENEW_S = 3600
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
HTTPS_PORT = 443
MAX_URL_CHARS = 2048
# Push services answer with a few bytes; a larger answer is not read.
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "chat-matching-server push"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Base64url with or without padding (browsers send it without)."""
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- keys -----------------------------------------------------------------------------------------------


def parse_private_key(text: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key written as base64url of its 32-byte scalar (what `web-push
    generate-vapid-keys` and `vapid --gen` print), as PEM, or as base64 DER."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key: Any = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            raw = b64url_decode(text)
            if len(raw) == 32:
                key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
            else:
                key = serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"VAPID_PRIVATE_KEY is not a P-256 private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("VAPID_PRIVATE_KEY must be a P-256 (prime256v1) key")
    return key


def public_key_text(key: ec.EllipticCurvePrivateKey) -> str:
    """The applicationServerKey browsers take: base64url of the uncompressed point (65 bytes)."""
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return b64url(point)


def private_key_text(key: ec.EllipticCurvePrivateKey) -> str:
    return b64url(key.private_numbers().private_value.to_bytes(32, "big"))


def subscription_key_problem(p256dh: str, auth: str) -> dict[str, str]:
    """Field errors of a subscription's keys: p256dh must be a P-256 point, auth 16 bytes (RFC 8291)."""
    problems: dict[str, str] = {}
    try:
        point = b64url_decode(p256dh)
        if len(point) != 65 or point[0] != 4:
            raise ValueError
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        problems["keys.p256dh"] = "must be base64url of an uncompressed P-256 public key (65 bytes)"
    try:
        if len(b64url_decode(auth)) != 16:
            raise ValueError
    except ValueError:
        problems["keys.auth"] = "must be base64url of a 16-byte secret"
    return problems


class VapidKeys:
    """This server's VAPID identity: signs the `Authorization` header, per push service origin."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, subject: str) -> None:
        # Subjects are checked by check_push_settings; py_vapid's own pattern refuses an https subject
        # with a port or a path, which RFC 8292 allows.
        self._vapid = Vapid02(private_key=private_key, conf={"no-strict": True})
        self.subject = subject
        self.public_key = public_key_text(private_key)
        self._tokens: dict[str, tuple[float, str]] = {}

    def authorization(self, audience: str) -> str:
        now = time.time()
        cached = self._tokens.get(audience)
        if cached is not None and cached[0] - now > VAPID_TOKEN_RENEW_S:
            return cached[1]
        expires = int(now) + VAPID_TOKEN_TTL_S
        header = str(self._vapid.sign({"sub": self.subject, "aud": audience, "exp": expires})["Authorization"])
        if len(self._tokens) > 1000:
            self._tokens.clear()
        self._tokens[audience] = (expires, header)
        return header


def load_vapid_keys(settings: Settings, public_base: str) -> VapidKeys | None:
    """The configured key; in development one generated once and kept in the data dir (like the JWT
    secret); in production without a key, None: Web Push is off (webhooks still work)."""
    if settings.vapid_private_key:
        key = parse_private_key(settings.vapid_private_key)
    elif settings.environment == "production":
        log.warning("VAPID_PRIVATE_KEY not set: Web Push is disabled (browsers cannot subscribe)")
        return None
    else:
        path = Path(settings.data_dir) / VAPID_KEY_FILE
        if path.exists():
            key = parse_private_key(path.read_text())
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(private_key_text(key))
            path.chmod(0o600)
            log.warning(
                "VAPID_PRIVATE_KEY not set: generated a development key in %s (configure one in production: "
                "every node must sign with the key browsers subscribed with)",
                path,
            )
    subject = settings.vapid_subject or (public_base if public_base.startswith("https://") else "")
    return VapidKeys(key, subject or "mailto:push@localhost")


# -- addresses ------------------------------------------------------------------------------------------


def _split(url: str) -> SplitResult | None:
    """The parts of an absolute http(s) URL with a host and nothing odd in it; None otherwise."""
    if not url or len(url) > MAX_URL_CHARS or any(not " " < c <= "~" for c in url):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None or parts.fragment:
        return None
    return parts


def _host_listed(host: str, allowed: str) -> bool:
    names = [h.strip().lower().lstrip(".") for h in allowed.split(",") if h.strip()]
    return "*" in names or any(host == name or host.endswith("." + name) for name in names)


def endpoint_problem(endpoint: str, settings: Settings) -> str | None:
    """Why a Web Push endpoint is refused, or None."""
    parts = _split(endpoint)
    if parts is None:
        return "must be an absolute https URL without credentials or fragment"
    host = (parts.hostname or "").lower()
    if settings.push_allow_insecure and host in LOOPBACK_HOSTS:
        return None
    if parts.scheme != "https":
        return "must be an https URL"
    if not _host_listed(host, settings.push_webpush_allowed_hosts):
        return "is not on a push service this server sends to"
    if (parts.port or HTTPS_PORT) not in webpush_ports(settings):
        return "must use the push service's https port"
    return None


def webpush_ports(settings: Settings) -> frozenset[int]:
    """The ports a Web Push endpoint may name: https's own, and those of PUSH_WEBPUSH_ALLOWED_PORTS.

    Push services listen on 443. A host that is allowed may run other services on other ports (an admin
    console, a database), which a user naming that port in a subscription would make the server call."""
    ports = {HTTPS_PORT}
    for text in (p.strip() for p in settings.push_webpush_allowed_ports.split(",")):
        if not text:
            continue
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise ValueError(f"PUSH_WEBPUSH_ALLOWED_PORTS: {text!r} is not a TCP port")
        ports.add(int(text))
    return frozenset(ports)


def _origin(parts: SplitResult) -> tuple[str, str, int]:
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def webhook_prefixes(settings: Settings) -> list[SplitResult]:
    out = []
    for prefix in (p.strip() for p in settings.push_webhook_allowed_prefixes.split(",")):
        if not prefix:
            continue
        parts = _split(prefix)
        if parts is None or parts.query:
            raise ValueError(f"PUSH_WEBHOOK_ALLOWED_PREFIXES: {prefix!r} is not an http(s) URL prefix")
        out.append(parts)
    return out


def _within(path: str, prefix: str) -> bool:
    if prefix in ("", "/"):
        return True
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


def webhook_problem(url: str, settings: Settings) -> str | None:
    """Why a webhook URL is refused, or None: it must lie under a prefix the operator allowed, on the
    same scheme, host and port, and its path must not climb out of the prefix with dot segments."""
    prefixes = webhook_prefixes(settings)
    if not prefixes:
        return "webhook devices are not enabled on this server"
    parts = _split(url)
    if parts is None:
        return "must be an absolute http(s) URL without credentials or fragment"
    segments = unquote(parts.path).replace("\\", "/").split("/")
    if any(segment in (".", "..") for segment in segments):
        return "must not contain dot segments"
    for prefix in prefixes:
        if _origin(parts) == _origin(prefix) and _within(parts.path, prefix.path):
            return None
    return "is not under an allowed webhook prefix"


def check_push_settings(settings: Settings) -> None:
    """Refuse to start with push settings that cannot work (called by Settings.validate)."""
    if settings.vapid_private_key:
        key = parse_private_key(settings.vapid_private_key)
        if settings.vapid_public_key and settings.vapid_public_key.strip().rstrip("=") != public_key_text(key):
            raise ValueError("VAPID_PUBLIC_KEY does not belong to VAPID_PRIVATE_KEY")
    elif settings.vapid_public_key:
        raise ValueError("VAPID_PUBLIC_KEY is set without VAPID_PRIVATE_KEY")
    subject = settings.vapid_subject
    if subject and not ((subject.startswith("mailto:") and "@" in subject) or subject.startswith("https://")):
        raise ValueError("VAPID_SUBJECT must be a mailto: address or an https:// URL")
    webpush_ports(settings)  # raises on a port that is not one
    if webhook_prefixes(settings) and len(settings.push_webhook_secret) < 32:
        raise ValueError("PUSH_WEBHOOK_SECRET of at least 32 characters is required with PUSH_WEBHOOK_ALLOWED_PREFIXES")
    if settings.push_lease_s <= settings.push_timeout_s:
        raise ValueError("PUSH_LEASE must be longer than PUSH_TIMEOUT (a slow send would be taken over and repeated)")
    if settings.push_max_attempts < 1:
        raise ValueError("PUSH_MAX_ATTEMPTS must be at least 1")


# -- sending --------------------------------------------------------------------------------------------


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    GONE = "gone"  # 404/410: the subscription or token no longer exists; the device is removed
    RETRY = "retry"  # 429, 5xx, timeout, connection error: try again later
    FAILED = "failed"  # any other refusal: trying again would not help


@dataclass
class Result:
    outcome: Outcome
    status: int
    retry_after_s: float | None = None


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def sign_webhook(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _load_web_pusher() -> Any:
    from pywebpush import WebPusher

    return WebPusher


class Sender:
    def __init__(self, settings: Settings, vapid: VapidKeys | None, *, max_clients: int) -> None:
        from tornado.simple_httpclient import SimpleAsyncHTTPClient

        self.settings = settings
        self.vapid = vapid
        self._http = SimpleAsyncHTTPClient(
            force_instance=True, max_clients=max(1, max_clients), max_body_size=MAX_RESPONSE_BYTES
        )
        self._web_pusher: asyncio.Future[Any] | None = None

    def warm_up(self) -> None:
        """Import pywebpush on a thread: it pulls in aiohttp and requests (a second of imports), which
        would delay every start and, imported at the first push, hold the IOLoop."""
        if self._web_pusher is None and self.vapid is not None:
            self._web_pusher = asyncio.get_running_loop().run_in_executor(None, _load_web_pusher)

    def close(self) -> None:
        self._http.close()

    async def webpush(
        self, endpoint: str, p256dh: str, auth: str, payload: bytes, *, urgency: str, topic: str | None
    ) -> Result:
        if self.vapid is None:
            return Result(Outcome.FAILED, 0)
        parts = urlsplit(endpoint)
        self.warm_up()
        assert self._web_pusher is not None
        web_pusher = await self._web_pusher
        try:
            pusher = web_pusher({"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}})
            body = pusher.encode(payload, "aes128gcm")["body"]
            authorization = self.vapid.authorization(f"{parts.scheme}://{parts.netloc}")
        except Exception:
            log.exception("could not encrypt or sign a push for %s", parts.hostname)
            return Result(Outcome.FAILED, 0)
        headers = {
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(self.settings.push_ttl_s),
            "Urgency": urgency,
            "Authorization": authorization,
        }
        if topic:
            headers["Topic"] = topic
        return await self._post(endpoint, body, headers)

    async def webhook(self, url: str, body: bytes) -> Result:
        headers = {
            "Content-Type": "application/json",
            "X-Chat-Signature": sign_webhook(self.settings.push_webhook_secret, body, int(time.time())),
        }
        return await self._post(url, body, headers)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Result:
        timeout = self.settings.push_timeout_s
        request = tornado.httpclient.HTTPRequest(
            url,
            method="POST",
            body=body,
            headers=headers,
            connect_timeout=timeout,
            request_timeout=timeout,
            follow_redirects=False,
            user_agent=USER_AGENT,
        )
        try:
            response = await self._http.fetch(request, raise_error=False)
        except Exception as exc:  # timeouts, refused connections, TLS and DNS failures
            log.info("push to %s failed: %s", _host_of(url), exc)
            return Result(Outcome.RETRY, 599)
        code = response.code
        if 200 <= code < 300:
            return Result(Outcome.DELIVERED, code)
        if code in (404, 410):
            return Result(Outcome.GONE, code)
        if code == 429 or code >= 500:
            return Result(Outcome.RETRY, code, retry_after(response.headers.get("Retry-After")))
        log.warning("push to %s refused with %d: %r", _host_of(url), code, (response.body or b"")[:200])
        return Result(Outcome.FAILED, code)


def _host_of(url: str) -> str:
    """For logs: the host only, since a push URL's path is a bearer capability."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"
