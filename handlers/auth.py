"""Registration and tokens."""

from __future__ import annotations

from handlers.base import BaseHandler
from handlers.contract import Reply, Tag, operation
from handlers.responses import OwnProfile, TokenPair
from handlers.schemas import RefreshBody, RegisterBody, TokenBody
from services.accounts.budgets import signup_budget
from services.core import errors

API_TAG = Tag("accounts", "Registration and tokens")


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


class TokenHandler(BaseHandler):
    @operation(
        "obtainTokens",
        auth=False,
        body=TokenBody,
        responses={200: Reply("The token pair.", TokenPair)},
        errors=(503,),
        notes={
            401: "`invalid_credentials`.",
            429: "`too_many_attempts`: too many failed sign-ins for this username or from this address.",
        },
    )
    async def post(self) -> None:
        """Sign in: an access and a refresh token."""
        body = self.json_body(TokenBody)
        # No account has a password over the limit: it is refused without spending a hash on it, but
        # like any wrong password (throttling included), so its answer tells nothing more.
        password = body.password if len(body.password) <= self.services.settings.max_password_chars else None
        pair = await self.services.users.login(body.username, password, client_ip=self.request.remote_ip)
        self.send_json({"access": pair.access, "refresh": pair.refresh})


class TokenRefreshHandler(BaseHandler):
    @operation(
        "refreshTokens",
        auth=False,
        body=RefreshBody,
        responses={200: Reply("A new token pair.", TokenPair)},
        errors=(503,),
        notes={401: "`token_invalid`, `token_expired` or `token_revoked`."},
    )
    async def post(self) -> None:
        """Rotate a refresh token.

        The old refresh token stops working; reusing it revokes its whole family. The refresh token of a
        deleted account is refused like an invalid one.
        """
        body = self.json_body(RefreshBody)
        pair = await self.services.users.refresh(body.refresh)
        self.send_json({"access": pair.access, "refresh": pair.refresh})


routes = [
    (r"/api/register/", RegisterHandler),
    (r"/api/token/", TokenHandler),
    (r"/api/token/refresh/", TokenRefreshHandler),
]
