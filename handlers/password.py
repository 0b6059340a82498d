"""Changing one's password, which ends every session of the account (services/accounts/revocation.py)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictStr

from handlers import auth
from handlers.base import BaseHandler
from handlers.contract import Reply, operation
from handlers.responses import TokenPair
from handlers.schemas import Strict
from services.core import errors

API_TAG = auth.API_TAG


class PasswordChangeBody(Strict):
    """`new_password` follows registration's rules: at least 8 characters, at most MAX_PASSWORD_CHARS."""

    current_password: Annotated[StrictStr, Field(min_length=1, max_length=4096)]
    # The upper bound is checked against MAX_PASSWORD_CHARS by the handler before any hashing.
    new_password: Annotated[StrictStr, Field(min_length=8, max_length=4096)]


class PasswordHandler(BaseHandler):
    @operation(
        "changePassword",
        body=PasswordChangeBody,
        responses={200: Reply("A fresh token pair for the caller.", TokenPair)},
        errors=(503,),
        notes={
            400: "`wrong_password`: the current password is not the account's; `validation_error`: the new "
            "password is shorter than 8 or longer than MAX_PASSWORD_CHARS characters.",
            429: "`too_many_attempts`: too many failed sign-ins or password changes for this username or "
            "from this address (the sign-in throttle).",
        },
    )
    async def post(self) -> None:
        """Change the password and end every session.

        The current password is checked as a sign-in checks it, and throttled with sign-ins. Then every
        access and refresh token issued before, the one of this request included, is refused on every node
        (REST 401, sockets 4002), and every open socket of the account is closed with 4002. The answer is a
        new token pair for the caller.
        """
        user_id = self.require_user()
        body = self.json_body(PasswordChangeBody)
        limit = self.services.settings.max_password_chars
        if len(body.new_password) > limit:
            raise errors.Invalid(
                "Password too long", code="validation_error", fields={"new_password": f"at most {limit} characters"}
            )
        # No account has a password over the limit: it is refused as a wrong one, without hashing it.
        current = body.current_password if len(body.current_password) <= limit else None
        pair = await self.services.users.change_password(
            user_id, current, body.new_password, client_ip=self.request.remote_ip
        )
        self.send_json({"access": pair.access, "refresh": pair.refresh})


routes = [
    (r"/api/users/me/password/", PasswordHandler),
]
