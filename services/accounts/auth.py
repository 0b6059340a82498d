"""Passwords and tokens.

Passwords: Argon2id at OWASP's recommended parameters (19 MiB, t=2, p=1). argon2-cffi's defaults
(64 MiB, p=4) would let four concurrent logins take 256 MiB and both cores, so hashing runs in a small
thread pool with bounded concurrency, never on the IOLoop.

Tokens: HS256 JWTs (the algorithm is pinned when decoding, so `alg: none` and RS/HS confusion are
refused) with `user_id`, `token_type`, `exp`, `iat` and `jti`, all required. Refresh tokens rotate: each
is recorded in MongoDB under its `jti` with a `family`; using one marks it used and issues the next of
the family; presenting a used one again means it leaked, so the whole family is revoked (RFC 9700 4.14).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import argon2
import jwt
from pymongo import ReturnDocument

from services.core.errors import Unauthorized
from services.storage.store import Store

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["user_id", "token_type", "exp", "iat", "jti"]
# Tokens issued a little in the future (clock skew between nodes) are tolerated up to this many seconds.
LEEWAY_S = 5
MAX_ID = 2**53


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
    def __init__(self, store: Store, secret: str, *, access_ttl_s: int, refresh_ttl_s: int) -> None:
        self._store = store
        self._secret = secret
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s

    def _encode(
        self, user_id: int, token_type: str, ttl_s: int, jti: str, now: dt.datetime, role: str | None = None
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
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def decode(self, token: str | None, expected_type: str) -> dict[str, Any]:
        if not token:
            raise TokenError("Authentication token missing", code="token_missing")
        try:
            # The leeway covers clock skew between nodes: PyJWT applies it to `exp` and also refuses an
            # `iat` in the future, so without it a token minted on a node one second ahead is refused.
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
        return claims

    def user_id_from_access(self, token: str | None) -> int:
        return int(self.decode(token, "access")["user_id"])

    async def issue(self, user_id: int, family: str | None = None) -> TokenPair:
        # The account's `role` (a moderator's, granted by `server.py grant-moderator`) rides in the access
        # token; the moderator endpoints read the account as well, so a revoked role stops at once. A
        # banned account gets no tokens: this is every sign-in and every refresh.
        account = await self._store.users.find_one({"_id": user_id}, {"role": 1, "banned": 1})
        if account is not None and account.get("banned"):
            raise AccountBanned("This account is banned")
        role = account.get("role") if account is not None else None
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
            access=self._encode(user_id, "access", self.access_ttl_s, uuid.uuid4().hex, now, role),
            refresh=self._encode(user_id, "refresh", self.refresh_ttl_s, refresh_jti, now),
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
            known = await self._store.refresh_tokens.find_one({"_id": jti})
            if known is not None:
                # A rotated token came back: whoever holds the family now may be an attacker. End it.
                await self._store.refresh_tokens.update_many({"family": known["family"]}, {"$set": {"revoked": True}})
            raise TokenError("Refresh token already used or revoked", code="token_revoked")
        if record["user_id"] != claims["user_id"]:
            raise TokenError("Token invalid")
        return await self.issue(int(record["user_id"]), family=record["family"])
