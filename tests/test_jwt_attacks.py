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


SECRET = "s" * 40


def variants(secret: str) -> dict[str, str]:
    """Tokens signed with the real secret, each off from what the server issues in one way (or not at all)."""
    key = secret.encode()
    now = int(time.time())
    ours = {"alg": "HS256", "typ": "JWT"}
    good = jwt.encode(claims(7), secret, algorithm="HS256")
    head, body, signature = good.split(".")
    return {
        "as issued": good,
        "as issued, with a role and a generation": jwt.encode(
            claims(7, role="admin", gen=3), secret, algorithm="HS256"
        ),
        "header keys in another order": hmac_token(claims(7), key, {"typ": "JWT", "alg": "HS256"}),
        "header with a kid": hmac_token(claims(7), key, {**ours, "kid": "k"}),
        "header with crit": hmac_token(claims(7), key, {**ours, "crit": ["exp"]}),
        "not before in the future": hmac_token(claims(7, nbf=now + 3600), key),
        "not before in the past": hmac_token(claims(7, nbf=now - 10), key),
        "an audience": hmac_token(claims(7, aud="other"), key),
        "a subject that is not a string": hmac_token(claims(7, sub=5), key),
        "an issuer": hmac_token(claims(7, iss="elsewhere"), key),
        "exp a float": hmac_token(claims(7, exp=now + 600.5), key),
        "exp a string": hmac_token(claims(7, exp=str(now + 600)), key),
        "exp true": hmac_token(claims(7, exp=True), key),
        "exp null": hmac_token(claims(7, exp=None), key),
        "exp just inside the leeway": hmac_token(claims(7, exp=now - LEEWAY_S + 2), key),
        "exp past the leeway": hmac_token(claims(7, exp=now - LEEWAY_S - 2), key),
        "iat in the future": hmac_token(claims(7, iat=now + LEEWAY_S + 30), key),
        "iat a string": hmac_token(claims(7, iat=str(now)), key),
        "no jti": hmac_token({k: v for k, v in claims(7).items() if k != "jti"}, key),
        "jti a number": hmac_token(claims(7, jti=5), key),
        "user_id true": hmac_token({**claims(7), "user_id": True}, key),
        "user_id a string": hmac_token({**claims(7), "user_id": "7"}, key),
        "a refresh token": hmac_token(claims(7, token_type="refresh"), key),
        "payload a list": signed(head, b"[1]", key),
        "payload not json": signed(head, b"{", key),
        "signature changed": f"{head}.{body}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BA'}",
        "signature padded": f"{good}==",
        "signature empty": f"{head}.{body}.",
        "body padded": f"{head}.{body}=.{signature}",
        "body with a character outside base64url": f"{head}.{body[:-1]}+.{signature}",
        "a fourth segment": f"{good}.x",
        "two segments": f"{head}.{body}",
    }


def signed(head: str, payload: bytes, key: bytes) -> str:
    body = b64(payload)
    return f"{head}.{body}.{b64(hmac.new(key, f'{head}.{body}'.encode(), hashlib.sha256).digest())}"


def outcome(tokens: Any, token: str) -> Any:
    from services.accounts.auth import TokenError

    try:
        return tokens.decode(token, "access")["user_id"]
    except TokenError as exc:
        return type(exc).__name__, exc.code


@pytest.mark.parametrize("name", list(variants(SECRET)))
def test_tokens_shaped_as_issued_are_decided_as_pyjwt_decides_them(name):
    """A token shaped exactly as the server issues them skips PyJWT's generic parsing; every token is
    accepted or refused, with the same code, as when PyJWT decodes it in full."""
    from services.accounts.auth import TokenService

    token = variants(SECRET)[name]
    tokens = TokenService(None, SECRET, access_ttl_s=600, refresh_ttl_s=600)  # type: ignore[arg-type]
    fast = outcome(tokens, token)
    tokens._issued_header = "never"  # every token through PyJWT
    assert fast == outcome(tokens, token)


def test_a_token_as_issued_is_decoded_without_pyjwt(monkeypatch):
    from services.accounts.auth import TokenService

    tokens = TokenService(None, SECRET, access_ttl_s=600, refresh_ttl_s=600)  # type: ignore[arg-type]
    token = jwt.encode(claims(7, gen=2), SECRET, algorithm="HS256")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise jwt.InvalidTokenError("PyJWT was asked")

    monkeypatch.setattr(jwt, "decode", refuse)
    grant = tokens.verify_access(token)
    assert (grant.user_id, grant.generation) == (7, 2)
    with pytest.raises(Exception, match="Token invalid"):
        tokens.verify_access(jwt.encode(claims(7, nbf=int(time.time()) - 5), SECRET, algorithm="HS256"))
