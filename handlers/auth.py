"""Registration and tokens, and the browser session cookie.

The seed's token API answers the pair in JSON and keeps nothing. A browser page may instead ask for its
refresh token as a cookie (`"cookie": true`): HttpOnly, so that no script of the page (nor one injected
into it later) can read it; SameSite=Strict, so that no other site's request carries it; Secure except
on http://localhost; and sent only to `/api/token/refresh/`, the one path that reads it. The answer then
holds the access token only. A refresh without `refresh` in its body reads the cookie and rotates it; a
DELETE of the same path ends the session and clears it.

A request that sets, reads or clears the cookie must come from the page's own origin when it says where
it comes from (`Origin`, which browsers send with every POST and DELETE): SameSite=Strict keeps other
sites' requests from carrying the cookie, and the Origin check also refuses a sibling subdomain (same
site, other origin) and a sign-in forced on a browser by another page (login CSRF).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, StrictBool
from pydantic.json_schema import SkipJsonSchema, WithJsonSchema

from handlers.base import BaseHandler
from handlers.contract import Reply, Tag, operation
from handlers.responses import ABSENT, Answer, OwnProfile
from handlers.schemas import RegisterBody, Strict, TokenBody
from services.accounts.auth import TokenPair
from services.accounts.budgets import signup_budget
from services.core import errors

API_TAG = Tag("accounts", "Registration and tokens")

REFRESH_PATH = "/api/token/refresh/"
SESSION_COOKIE = "refresh_token"
# A page served over plain http from the developer's own machine gets the cookie without `Secure`
# (browsers drop a Secure cookie set over http); anywhere else the cookie is Secure.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
COOKIE_NOTE = (
    "With `cookie: true` the refresh token is set as an HttpOnly, SameSite=Strict cookie scoped to "
    "`/api/token/refresh/` (Secure except on http://localhost) and left out of the answer."
)


class SignInBody(TokenBody):
    cookie: StrictBool = Field(
        default=False, description="Keep the refresh token in the session cookie instead of the answer."
    )


# Absent, a refresh token is the session cookie's; null is no token at all, refused as the seed refuses it.
MAX_REFRESH_TOKEN_CHARS = 4096
REFRESH_TOKEN_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_REFRESH_TOKEN_CHARS}


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # absent is not null: the field's type says what may be sent


def _refresh_token(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not 1 <= len(value) <= MAX_REFRESH_TOKEN_CHARS:
        raise ValueError(f"must have 1 to {MAX_REFRESH_TOKEN_CHARS} characters")
    return value


# Checked as a whole by `_refresh_token`, so that a refusal names the field alone (a union's would name
# each of its branches).
RefreshToken = Annotated[
    str | SkipJsonSchema[None], BeforeValidator(_refresh_token), WithJsonSchema(REFRESH_TOKEN_SCHEMA)
]


class RefreshRequest(Strict):
    refresh: RefreshToken = Field(
        default=None,
        description="The refresh token; without it, the session cookie's.",
        json_schema_extra=_no_default,
    )
    cookie: StrictBool = Field(
        default=False,
        description="Set the next refresh token as the session cookie instead of answering it (implied when "
        "the token came from the cookie).",
    )


class SignOutBody(Strict):
    refresh: RefreshToken = Field(
        default=None,
        description="The refresh token of the session to end; without it, the session cookie's.",
        json_schema_extra=_no_default,
    )


class Tokens(Answer):
    """A token pair, or the access token alone when the refresh token went into the session cookie."""

    access: str
    """JWT, for `Authorization: Bearer`"""
    refresh: str = ABSENT
    """Absent when the refresh token was set as the session cookie."""


class RegisterHandler(BaseHandler):
    @operation(
        "register",
        auth=False,
        body=RegisterBody,
        responses={201: Reply("The new account's own profile.", OwnProfile)},
        errors=(503,),
        notes={
            409: "`username_taken`.",
            429: "`too_many_attempts`: too many failed sign-ins or taken names from this address; "
            "`rate_limited`: SIGNUPS_PER_IP accounts were created from this address within SIGNUP_WINDOW.",
        },
    )
    async def post(self) -> None:
        """Create an account."""
        body = self.json_body(RegisterBody)
        self._check_password_length(body.password)
        profile = body.model_dump(exclude={"username", "password"}, exclude_unset=True)
        # The peer's address, or the forwarded one from TRUSTED_PROXIES (handlers/http_server.py).
        client_ip = self.request.remote_ip
        doc = await self.services.users.register(
            body.username,
            body.password,
            profile,
            client_ip=client_ip,
            spend_signup=signup_budget(self.services.rates, self.services.settings, client_ip),
        )
        self.send_json(self.services.users.own_profile(doc), status=201)

    def _check_password_length(self, password: str) -> None:
        limit = self.services.settings.max_password_chars
        if len(password) > limit:
            raise errors.Invalid("Password too long", fields={"password": f"at most {limit} characters"})


class SessionCookieHandler(BaseHandler):
    """What the token endpoints share: the session cookie and the Origin check that guards it."""

    def check_origin(self) -> None:
        """403 `origin_not_allowed` unless the request comes from this server's own origin (or one of
        ALLOWED_ORIGINS named explicitly: `*` is for sockets only) or says nothing of where it comes from
        (no `Origin`: not a browser, so no browser's cookie was sent for someone else)."""
        origin = self.request.headers.get("Origin")
        if origin is None:
            return
        origin = origin.strip().rstrip("/").lower()
        parts = urlsplit(origin)
        if parts.scheme in ("http", "https") and parts.netloc == self.request.host.lower():
            return
        public = urlsplit(self.services.settings.public_url.lower())
        if public.netloc and f"{public.scheme}://{public.netloc}" == origin:
            return
        if origin in self.services.settings.allowed_origin_set:
            return
        raise errors.Forbidden("Session cookies are for this server's own pages", code="origin_not_allowed")

    def set_session_cookie(self, refresh: str) -> None:
        self.set_cookie(
            SESSION_COOKIE,
            refresh,
            path=REFRESH_PATH,
            max_age=self.services.settings.refresh_token_ttl_s,
            httponly=True,
            secure=self._secure(),
            samesite="Strict",
        )

    def clear_session_cookie(self) -> None:
        self.clear_cookie(SESSION_COOKIE, path=REFRESH_PATH, httponly=True, secure=self._secure(), samesite="Strict")

    def _secure(self) -> bool:
        return not (self.request.protocol == "http" and self.request.host_name.lower() in LOOPBACK_HOSTS)

    def send_tokens(self, pair: TokenPair, *, cookie: bool) -> None:
        if cookie:
            self.set_session_cookie(pair.refresh)
            self.send_json({"access": pair.access})
        else:
            self.send_json({"access": pair.access, "refresh": pair.refresh})


class TokenHandler(SessionCookieHandler):
    @operation(
        "obtainTokens",
        auth=False,
        body=SignInBody,
        responses={200: Reply(f"The token pair. {COOKIE_NOTE}", Tokens)},
        errors=(503,),
        notes={
            401: "`invalid_credentials`.",
            403: "`origin_not_allowed`: `cookie: true` from a page of another origin.",
            429: "`too_many_attempts`: too many failed sign-ins for this username or from this address.",
        },
    )
    async def post(self) -> None:
        """Sign in: an access and a refresh token."""
        body = self.json_body(SignInBody)
        if body.cookie:
            self.check_origin()
        # No account has a password over the limit: it is refused without spending a hash on it, but
        # like any wrong password (throttling included), so its answer tells nothing more.
        password = body.password if len(body.password) <= self.services.settings.max_password_chars else None
        pair = await self.services.users.login(body.username, password, client_ip=self.request.remote_ip)
        self.send_tokens(pair, cookie=body.cookie)


class TokenRefreshHandler(SessionCookieHandler):
    @operation(
        "refreshTokens",
        auth=False,
        body=RefreshRequest,
        responses={200: Reply(f"A new token pair. {COOKIE_NOTE}", Tokens)},
        errors=(503,),
        notes={
            400: "`validation_error`: no `refresh` in the body and no session cookie either.",
            401: "`token_invalid`, `token_expired` or `token_revoked`; a refused session cookie is cleared.",
            403: "`origin_not_allowed`: the session cookie read or set from a page of another origin.",
        },
    )
    async def post(self) -> None:
        """Rotate a refresh token.

        The old refresh token stops working; reusing it revokes its whole family. The refresh token of a
        deleted account is refused like an invalid one. Without `refresh` in the body, the session cookie's
        token is rotated and the next one set as the cookie.
        """
        body = self.json_body(RefreshRequest)
        from_cookie = body.refresh is None
        cookie = body.cookie or from_cookie
        if cookie:
            self.check_origin()
        token = self.get_cookie(SESSION_COOKIE) if from_cookie else body.refresh
        if not token:
            # Without a cookie this is the seed's refresh, which needs its token.
            raise errors.Invalid("Invalid fields", code="validation_error", fields={"refresh": "Field required"})
        try:
            pair = await self.services.users.refresh(token)
        except errors.Unauthorized:
            # A spent or refused cookie would only be refused again: the browser forgets it.
            if from_cookie:
                self.clear_session_cookie()
            raise
        self.send_tokens(pair, cookie=cookie)

    @operation(
        "endSession",
        auth=False,
        body=SignOutBody,
        responses={204: Reply("The session ended (or was over already); the session cookie is cleared.")},
        errors=(503,),
        notes={403: "`origin_not_allowed`: the session cookie read from a page of another origin."},
    )
    async def delete(self) -> None:
        """Sign out: end a refresh token's session.

        The refresh token in the body, or else the session cookie's, and every token rotated from the
        same sign-in are refused from then on; the access tokens already issued live out their few
        minutes. The cookie is cleared. Signing out of a session that is over already is no error.
        """
        # A sign-out may come with no body at all: it has nothing to say but the cookie.
        body = self.json_body(SignOutBody) if self.request.body.strip() else SignOutBody()
        from_cookie = body.refresh is None
        if from_cookie:
            self.check_origin()
        token = self.get_cookie(SESSION_COOKIE) if from_cookie else body.refresh
        if token:
            await self.services.tokens.end_session(token)
        if from_cookie:
            self.clear_session_cookie()
        self.set_status(204)
        self.finish()


routes = [
    (r"/api/register/", RegisterHandler),
    (r"/api/token/", TokenHandler),
    (r"/api/token/refresh/", TokenRefreshHandler),
]
