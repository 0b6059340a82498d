"""Registration and tokens."""

from __future__ import annotations

from handlers.base import BaseHandler
from handlers.schemas import RefreshBody, RegisterBody, TokenBody
from services.core import errors


class RegisterHandler(BaseHandler):
    async def post(self) -> None:
        body = self.json_body(RegisterBody)
        self._check_password_length(body.password)
        profile = body.model_dump(exclude={"username", "password"}, exclude_unset=True)
        doc = await self.services.users.register(
            body.username, body.password, profile, client_ip=self.request.remote_ip
        )
        self.send_json(self.services.users.own_profile(doc), status=201)

    def _check_password_length(self, password: str) -> None:
        limit = self.services.settings.max_password_chars
        if len(password) > limit:
            raise errors.Invalid("Password too long", fields={"password": f"at most {limit} characters"})


class TokenHandler(BaseHandler):
    async def post(self) -> None:
        body = self.json_body(TokenBody)
        # No account has a password over the limit: it is refused without spending a hash on it, but
        # like any wrong password (throttling included), so its answer tells nothing more.
        password = body.password if len(body.password) <= self.services.settings.max_password_chars else None
        pair = await self.services.users.login(body.username, password, client_ip=self.request.remote_ip)
        self.send_json({"access": pair.access, "refresh": pair.refresh})


class TokenRefreshHandler(BaseHandler):
    async def post(self) -> None:
        body = self.json_body(RefreshBody)
        pair = await self.services.tokens.rotate(body.refresh)
        self.send_json({"access": pair.access, "refresh": pair.refresh})


routes = [
    (r"/api/register/", RegisterHandler),
    (r"/api/token/", TokenHandler),
    (r"/api/token/refresh/", TokenRefreshHandler),
]
