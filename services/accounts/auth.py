"""Passwords and tokens.

Passwords: Argon2id at OWASP's recommended parameters (19 MiB, t=2, p=1). argon2-cffi's defaults
(64 MiB, p=4) would let four concurrent logins take 256 MiB and both cores, so hashing runs in a small
thread pool with bounded concurrency, never on the IOLoop.

Tokens: HS256 JWTs (the algorithm is pinned when decoding, so `alg: none` and RS/HS confusion are
refused) with `user_id`, `token_type`, `exp`, `iat` and `jti`, all required. Refresh tokens rotate: each
is recorded in MongoDB under its `jti` with a `family`; using one marks it used and issues the next of
the family; presenting a used one again means it leaked, so the whole family is revoked (RFC 9700 4.14)
and the account's sockets are closed (`on_family_revoked`, services/accounts/revocation.py).

Revocation: a token also carries `gen`, the account's token generation when it was issued (absent means
0, as in every token issued before the account's first revocation). Revoking an account's tokens raises
its generation (services/accounts/revocation.py), and a token below the account's generation is refused.
`decode` refuses it whenever this node knows the account's generation (`is_revoked`, the account liveness
cache): REST requests learn it in `BaseHandler.prepare`, whose account check reads the account, before the
handler decodes the token again; sockets and refreshes ask `AccountLiveness.accepts` themselves.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import argon2
import jwt
import orjson
from pymongo import ReturnDocument

from services.core.errors import Unauthorized
from services.storage.store import Store

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["user_id", "token_type", "exp", "iat", "jti"]
# The account's token generation when the token was issued; only written when above 0.
GENERATION_CLAIM = "gen"
# Tokens issued a little in the future (clock skew between nodes) are tolerated up to this many seconds.
LEEWAY_S = 5
MAX_ID = 2**53
# The claims this server writes (`_encode`): a token carrying any other is decoded by PyJWT alone.
REQUIRED_CLAIMS_SET = frozenset(REQUIRED_CLAIMS)
ISSUED_CLAIMS = REQUIRED_CLAIMS_SET | {"role", GENERATION_CLAIM}
BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class TokenError(Unauthorized):
    """A token that cannot be used: missing, malformed, forged, expired or of the wrong type."""

    code = "token_invalid"


class AccountBanned(Unauthorized):
    """A banned account asks for tokens (services/moderation/bans.py): it gets none until unbanned."""

    code = "account_banned"


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str


@dataclass(frozen=True)
class AccessGrant:
    """What a valid access token proves: whose it is, the token generation it was issued in (a revocation
    of the account refuses the ones below its own), and until when (its `exp`, seconds since the epoch)."""

    user_id: int
    generation: int
    expires_at: float


class PasswordHasher:
    def __init__(self, concurrency: int = 2) -> None:
        self._hasher = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
        self._executor = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="argon2")
        # A dummy hash to verify against when the user does not exist, so that "unknown user" and
        # "wrong password" take the same time and cannot be told apart.
        self._dummy_hash = self._hasher.hash(secrets.token_hex(16))

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._verify_sync, password_hash, password)

    def _verify_sync(self, password_hash: str | None, password: str) -> bool:
        try:
            return bool(self._hasher.verify(password_hash or self._dummy_hash, password)) and password_hash is not None
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class TokenService:
    def __init__(
        self, store: Store, secret: str, *, access_ttl_s: int, refresh_ttl_s: int, reuse_grace_s: float = 0.0
    ) -> None:
        # A refresh token used again within this many seconds of its rotation is taken, once, as a retry
        # whose answer was lost (a page reloaded while its refresh was in flight), not as a theft.
        self.reuse_grace_s = reuse_grace_s
        self._store = store
        self._secret = secret
        self._key = secret.encode()
        # The header segment of every token this server issues (PyJWT writes it the same way each time).
        self._issued_header = jwt.encode({}, secret, algorithm=ALGORITHM).partition(".")[0]
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        # Whether this node knows that (user id, token generation) is refused (the container sets
        # AccountLiveness.refuses); by default nothing is known, and only the accounts' reads refuse.
        self.is_revoked: Callable[[int, int], bool] = lambda _user_id, _generation: False
        # Awaited with the user id when a reused refresh token revoked its family (the container closes the
        # account's sockets: services/accounts/revocation.py).
        self.on_family_revoked: Callable[[int], Awaitable[Any]] | None = None

    def _encode(
        self,
        user_id: int,
        token_type: str,
        ttl_s: int,
        jti: str,
        now: dt.datetime,
        role: str | None = None,
        generation: int = 0,
    ) -> str:
        claims: dict[str, Any] = {
            "user_id": user_id,
            "token_type": token_type,
            "iat": int(now.timestamp()),
            "exp": int(now.timestamp()) + ttl_s,
            "jti": jti,
        }
        if role:
            claims["role"] = role
        if generation:
            claims[GENERATION_CLAIM] = generation
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def decode(self, token: str | None, expected_type: str) -> dict[str, Any]:
        if not token:
            raise TokenError("Authentication token missing", code="token_missing")
        try:
            # The leeway covers clock skew between nodes: PyJWT applies it to `exp` and also refuses an
            # `iat` in the future, so without it a token minted on a node one second ahead is refused.
            claims = self._issued_claims(token)
            if claims is None:
                claims = jwt.decode(
                    token,
                    self._secret,
                    algorithms=[ALGORITHM],
                    options={"require": REQUIRED_CLAIMS},
                    leeway=LEEWAY_S,
                )
        except jwt.ExpiredSignatureError:
            raise TokenError("Token expired", code="token_expired") from None
        except jwt.PyJWTError:
            raise TokenError("Token invalid") from None
        user_id = claims.get("user_id")
        # Bounded like every id on the wire: a larger integer cannot be encoded as a BSON int64 and
        # would surface as a 500 from the first query that uses it.
        if not isinstance(user_id, int) or isinstance(user_id, bool) or not 0 < user_id <= MAX_ID:
            raise TokenError("Token invalid")
        if claims.get("token_type") != expected_type:
            raise TokenError("Wrong token type")
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or iat > dt.datetime.now(dt.UTC).timestamp() + LEEWAY_S:
            raise TokenError("Token invalid")
        if not isinstance(claims.get("jti"), str):
            raise TokenError("Token invalid")
        if self.is_revoked(user_id, generation_of(claims)):
            raise TokenError("Token invalid")
        return claims

    def _issued_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a token shaped exactly as this server issues them (its header byte for byte, the
        claims `_encode` writes and no other, `exp` and `iat` integers) whose HS256 signature is right and
        which has not expired; None for anything else, which PyJWT then decodes (and refuses) in full.
        Whatever this accepts, PyJWT accepts too: the same signature over the same key, and every check
        PyJWT makes of these claims. It spares a socket handshake PyJWT's generic parsing, about a tenth
        of what a connect costs the node."""
        header, _, rest = token.partition(".")
        body, _, signature = rest.partition(".")
        if header != self._issued_header or not BASE64URL.fullmatch(body) or not BASE64URL.fullmatch(signature):
            return None
        expected = hmac.new(self._key, f"{header}.{body}".encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(expected, _unpad(signature)):
                return None
            claims = orjson.loads(_unpad(body))
        except (binascii.Error, ValueError):
            return None
        if not isinstance(claims, dict) or not REQUIRED_CLAIMS_SET <= claims.keys() <= ISSUED_CLAIMS:
            return None
        exp, iat = claims["exp"], claims["iat"]
        if type(exp) is not int or type(iat) is not int or any(claims[c] is None for c in REQUIRED_CLAIMS):
            return None
        if exp <= time.time() - LEEWAY_S:
            raise jwt.ExpiredSignatureError("Signature has expired")
        return claims

    def user_id_from_access(self, token: str | None) -> int:
        return int(self.decode(token, "access")["user_id"])

    def verify_access(self, token: str | None) -> AccessGrant:
        """What a valid access token grants; TokenError for any other token."""
        claims = self.decode(token, "access")
        return AccessGrant(int(claims["user_id"]), generation_of(claims), float(claims["exp"]))

    async def issue(self, user_id: int, family: str | None = None) -> TokenPair:
        # The account's `role` (a moderator's, granted by `server.py grant-moderator`) rides in the access
        # token; the moderator endpoints read the account as well, so a revoked role stops at once. A
        # banned account gets no tokens: this is every sign-in and every refresh.
        # The generation read here is the one the tokens are issued in: a revocation that raises it after
        # this read makes them refused at once, which errs on the safe side.
        account = await self._store.users.find_one({"_id": user_id}, {"role": 1, "banned": 1, "token_generation": 1})
        if account is not None and account.get("banned"):
            raise AccountBanned("This account is banned")
        role = account.get("role") if account is not None else None
        generation = int(account.get("token_generation") or 0) if account is not None else 0
        now = dt.datetime.now(dt.UTC)
        refresh_jti = uuid.uuid4().hex
        rotating = family is not None
        family = family or uuid.uuid4().hex
        await self._store.refresh_tokens.insert_one(
            {
                "_id": refresh_jti,
                "family": family,
                "user_id": user_id,
                "used": False,
                "revoked": False,
                "created_at": now,
                "expires_at": now + dt.timedelta(seconds=self.refresh_ttl_s),
            }
        )
        if rotating and await self._store.refresh_tokens.find_one({"family": family, "revoked": True}, {"_id": 1}):
            # The family was revoked (a reuse was detected) between our claim of the old token and the
            # insert above, so the revocation missed this new token: it must not be handed out.
            await self._store.refresh_tokens.update_one({"_id": refresh_jti}, {"$set": {"revoked": True}})
            raise TokenError("Refresh token already used or revoked", code="token_revoked")
        return TokenPair(
            access=self._encode(user_id, "access", self.access_ttl_s, uuid.uuid4().hex, now, role, generation),
            refresh=self._encode(user_id, "refresh", self.refresh_ttl_s, refresh_jti, now, generation=generation),
        )

    async def rotate(self, refresh_token: str | None) -> TokenPair:
        return await self.rotate_claims(self.decode(refresh_token, "refresh"))

    async def rotate_claims(self, claims: dict[str, Any]) -> TokenPair:
        """Rotate the refresh token whose claims `decode(token, "refresh")` returned."""
        jti = claims["jti"]
        record = await self._store.refresh_tokens.find_one_and_update(
            {"_id": jti, "used": False, "revoked": False},
            {"$set": {"used": True, "used_at": dt.datetime.now(dt.UTC)}},
            return_document=ReturnDocument.BEFORE,
        )
        if record is None:
            retried = await self._retry_within_grace(jti, claims)
            if retried is not None:
                return retried
            known = await self._store.refresh_tokens.find_one({"_id": jti})
            if known is not None:
                # A rotated token came back: whoever holds the family now may be an attacker. End it.
                await self._store.refresh_tokens.update_many({"family": known["family"]}, {"$set": {"revoked": True}})
                if self.on_family_revoked is not None:
                    await self.on_family_revoked(int(known["user_id"]))
            raise TokenError("Refresh token already used or revoked", code="token_revoked")
        if record["user_id"] != claims["user_id"]:
            raise TokenError("Token invalid")
        return await self.issue(int(record["user_id"]), family=record["family"])

    async def _retry_within_grace(self, jti: str, claims: dict[str, Any]) -> TokenPair | None:
        """A new pair of the same family for a token rotated less than `reuse_grace_s` ago whose family is
        intact, once per token; None otherwise (the caller then treats the reuse as a theft). The pair
        the lost answer carried stays valid too: the family has one more branch, for a few seconds' risk."""
        if self.reuse_grace_s <= 0:
            return None
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.reuse_grace_s)
        record = await self._store.refresh_tokens.find_one_and_update(
            {"_id": jti, "used": True, "revoked": False, "used_at": {"$gte": since}, "retried": {"$ne": True}},
            {"$set": {"retried": True}},
        )
        if record is None or record["user_id"] != claims["user_id"]:
            return None
        if await self._store.refresh_tokens.find_one({"family": record["family"], "revoked": True}, {"_id": 1}):
            return None
        return await self.issue(int(record["user_id"]), family=record["family"])

    async def end_session(self, refresh_token: str) -> None:
        """Sign out: refuse from now on every refresh token of the family `refresh_token` belongs to (one
        sign-in and its rotations). A token that is unusable already (expired, forged, revoked) ends
        nothing more. Unlike a reuse, this closes no socket: the caller is the session's holder, and the
        access tokens already out expire within ACCESS_TOKEN_TTL."""
        try:
            claims = self.decode(refresh_token, "refresh")
        except TokenError:
            return
        record = await self._store.refresh_tokens.find_one({"_id": claims["jti"]}, {"family": 1, "user_id": 1})
        if record is None or record["user_id"] != claims["user_id"]:
            return
        await self._store.refresh_tokens.update_many({"family": record["family"]}, {"$set": {"revoked": True}})


def generation_of(claims: dict[str, Any]) -> int:
    """The token generation a token was issued in (0 when it carries none)."""
    generation = claims.get(GENERATION_CLAIM, 0)
    if not isinstance(generation, int) or isinstance(generation, bool) or not 0 <= generation <= MAX_ID:
        raise TokenError("Token invalid")
    return generation


def _unpad(segment: str) -> bytes:
    """A base64url segment of a JWT (no padding) as bytes."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
