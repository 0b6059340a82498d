"""JWT attacks beyond tests/test_accounts.py: algorithm confusion with an RSA key, wrong keys, header
injection, and expiry at the edges of the leeway, each on REST (401) and on both sockets (4002).

The server signs HS256 with one secret and pins the algorithm when decoding, so none of these can work;
these tests make sure a refactor (a key lookup by `kid`, a list of algorithms, a bigger leeway) cannot
quietly change that.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.accounts.auth import LEEWAY_S
from tests.support import ApiClient, TestUser, ws_connect
from tests.ws_helpers import conv_path, pair

ME = "/api/users/me/"

PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = PRIVATE_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(user_id: int, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"user_id": user_id, "token_type": "access", "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex}
    return {**base, **changes}


def hmac_token(payload: dict[str, Any], key: bytes, header: dict[str, Any] | None = None) -> str:
    """HS256 by hand: PyJWT itself refuses to use a PEM key as an HMAC secret, an attacker does not."""
    head = b64(orjson.dumps(header or {"alg": "HS256", "typ": "JWT"}))
    body = b64(orjson.dumps(payload))
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def forge(name: str, user_id: int, secret: str) -> str:
    now = int(time.time())
    if name == "hs256_with_public_key_as_secret":
        return hmac_token(claims(user_id), PUBLIC_PEM)
    if name == "hs256_with_public_key_der_as_secret":
        der = PRIVATE_KEY.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hmac_token(claims(user_id), der)
    if name == "rs256_signed_with_private_key":
        return jwt.encode(claims(user_id), PRIVATE_KEY, algorithm="RS256")
    if name == "rs256_header_with_hmac_of_real_secret":
        return hmac_token(claims(user_id), secret.encode(), {"alg": "RS256", "typ": "JWT"})
    if name == "embedded_jwk_header":
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(PRIVATE_KEY.public_key(), as_dict=True)
        return jwt.encode(claims(user_id), PRIVATE_KEY, algorithm="RS256", headers={"jwk": jwk})
    if name == "jku_header":
        return jwt.encode(
            claims(user_id), PRIVATE_KEY, algorithm="RS256", headers={"jku": "http://127.0.0.1:1/jwks.json"}
        )
    if name == "kid_path_traversal_with_empty_key":
        return hmac_token(claims(user_id), b"", {"alg": "HS256", "typ": "JWT", "kid": "../../../../dev/null"})
    if name == "empty_secret":
        return hmac_token(claims(user_id), b"")
    if name == "secret_with_trailing_newline":
        return hmac_token(claims(user_id), (secret + "\n").encode())
    if name == "secret_upper_case":
        return hmac_token(claims(user_id), secret.upper().encode())
    if name == "secret_truncated":
        return hmac_token(claims(user_id), secret[:-1].encode())
    if name == "expired_beyond_leeway":
        return jwt.encode(claims(user_id, iat=now - 3600, exp=now - LEEWAY_S - 2), secret, algorithm="HS256")
    if name == "expired_long_ago":
        return jwt.encode(claims(user_id, iat=now - 90 * 86400, exp=now - 89 * 86400), secret, algorithm="HS256")
    if name == "not_before_in_the_future":
        return jwt.encode(claims(user_id, nbf=now + 3600), secret, algorithm="HS256")
    if name == "iat_beyond_leeway":
        return jwt.encode(claims(user_id, iat=now + LEEWAY_S + 30), secret, algorithm="HS256")
    raise AssertionError(name)


ATTACKS = [
    "hs256_with_public_key_as_secret",
    "hs256_with_public_key_der_as_secret",
    "rs256_signed_with_private_key",
    "rs256_header_with_hmac_of_real_secret",
    "embedded_jwk_header",
    "jku_header",
    "kid_path_traversal_with_empty_key",
    "empty_secret",
    "secret_with_trailing_newline",
    "secret_upper_case",
    "secret_truncated",
    "expired_beyond_leeway",
    "expired_long_ago",
    "not_before_in_the_future",
    "iat_beyond_leeway",
]


async def refused_everywhere(api: ApiClient, token: str, cid: int, context: str) -> None:
    me = await api.get(ME, token=token)
    assert me.status == 401 and set(me.body) == {"error"}, (context, me.status, me.body)
    patched = await api.patch(ME, {"bio": "pwned"}, token=token)
    assert patched.status == 401, (context, patched.status)
    for path in (conv_path(cid, token), f"/ws/notifications/?token={token}"):
        ws = await ws_connect(api, path)
        assert (await ws.closed())[0] == 4002, (context, path)


async def accepted_everywhere(api: ApiClient, token: str, user: TestUser, cid: int, context: str) -> None:
    me = await api.get(ME, token=token)
    assert me.status == 200 and me.body["id"] == user.id, (context, me.body)
    ws = await ws_connect(api, conv_path(cid, token))
    assert (await ws.recv())["type"] == "status", context
    ws.close()


@pytest.mark.parametrize("attack", ATTACKS)
async def test_forged_and_stale_tokens_are_refused_on_rest_and_sockets(api, services, attack):
    p = await pair(api, services)
    await refused_everywhere(api, forge(attack, p.a.id, services.settings.jwt_secret), p.cid, attack)
    assert (await api.get(ME, token=p.a.access)).body["bio"] is None


async def test_expiry_leeway_is_exactly_the_documented_one(api, services):
    """Within LEEWAY_S of expiry a token still works (clock skew between nodes); past it, it does not."""
    p = await pair(api, services)
    secret = services.settings.jwt_secret
    now = int(time.time())
    just_expired = jwt.encode(claims(p.a.id, iat=now - 600, exp=now - 1), secret, algorithm="HS256")
    await accepted_everywhere(api, just_expired, p.a, p.cid, "expired 1 s ago, inside the leeway")
    slightly_future = jwt.encode(claims(p.a.id, iat=now + 2), secret, algorithm="HS256")
    await accepted_everywhere(api, slightly_future, p.a, p.cid, "issued 2 s ahead, inside the leeway")
    past = jwt.encode(claims(p.a.id, iat=now - 600, exp=now - LEEWAY_S - 2), secret, algorithm="HS256")
    await refused_everywhere(api, past, p.cid, "expired just past the leeway")
    assert (await api.get(ME, token=past)).body["error"]["code"] == "token_expired"


async def test_a_forged_refresh_token_cannot_mint_access(api, services):
    p = await pair(api, services)
    secret = services.settings.jwt_secret
    for name, forged in {
        "public key as secret": hmac_token(claims(p.a.id, token_type="refresh"), PUBLIC_PEM),
        "rs256": jwt.encode(claims(p.a.id, token_type="refresh"), PRIVATE_KEY, algorithm="RS256"),
        # Correctly signed but never issued: refresh tokens are also looked up by jti.
        "unknown jti": jwt.encode(claims(p.a.id, token_type="refresh"), secret, algorithm="HS256"),
    }.items():
        r = await api.post("/api/token/refresh/", {"refresh": forged})
        assert r.status == 401 and "access" not in r.body, (name, r.body)
