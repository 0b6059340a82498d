"""Registration and tokens."""

from __future__ import annotations

from handlers.base import BaseHandler
from handlers.schemas import RefreshBody, RegisterBody, TokenBody
from services import errors


class RegisterHandler(BaseHandler):
    async def post(self) -> None:
        body = self.json_body(RegisterBody)
        self._check_password_length(body.password)
        profile = body.model_dump(exclude={"username", "password"}, exclude_unset=True)
        doc = await self.services.users.register(body.username, body.password, profile)
        self.send_json(self.services.users.own_profile(doc), status=201)

    def _check_password_length(self, password: str) -> None:
        limit = self.services.settings.max_password_chars
        if len(password) > limit:
            raise errors.Invalid("Password too long", fields={"password": f"at most {limit} characters"})


class TokenHandler(BaseHandler):
    async def post(self) -> None:
        body = self.json_body(TokenBody)
        if len(body.password) > self.services.settings.max_password_chars:
            # No account has such a password; refuse before spending a hash on it.
            raise errors.Unauthorized("Invalid username or password", code="invalid_credentials")
        pair = await self.services.users.login(body.username, body.password)
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
