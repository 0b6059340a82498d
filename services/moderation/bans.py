"""Banning an account, and lifting a ban.

A ban marks the account (`banned: true` and `ban: {reason, by, at}` in its document) and then:
- revokes its tokens and closes its sockets on every node with 4002 (the account revocation the container
  hands in as `revoke_user`), and refuses it new ones: sign-in and refresh answer 401 `account_banned`
  (services/accounts/auth.py);
- ends each of its active matches as an unmatch does (services/matching/service.py): the conversation is
  closed and sealed, and the other participant's sockets on it are closed with 4001;
- hides it from discover and from others' likes received (the `banned` filters of matching); its matches
  are ended, so it is in nobody's match list.
Every step runs again when the ban is repeated, so a ban cut short (the store went away) is completed by
its retry.

An unban lifts the mark: the account can sign in again (tokens issued before the ban stay revoked), shows
in discover, and its likes count again. Ended matches and closed conversations stay as they are.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from services.core import errors
from services.core.clock import iso_of
from services.matching.service import MatchingService
from services.moderation.audit import USER_BANNED, USER_UNBANNED, Actor, AuditLog
from services.storage.documents import ban_record
from services.storage.store import Doc, Store

# Revokes every token of a user and closes their sockets everywhere: (user id, reason).
RevokeUser = Callable[[int, str], Awaitable[Any]]


class Bans:
    def __init__(
        self, store: Store, matching: MatchingService, audit: AuditLog, revoke_user: RevokeUser | None
    ) -> None:
        self._store = store
        self._matching = matching
        self._audit = audit
        self._revoke_user = revoke_user

    async def ban(self, user_id: int, reason: str, moderator: Actor) -> dict[str, Any]:
        """Ban the account (see the module's docstring); repeating it answers the ban as it stands."""
        if user_id == moderator.id:
            raise errors.Invalid("You cannot ban yourself", code="self_target", fields={"user_id": "is you"})
        await self._require_account(user_id)
        record = ban_record(reason, by=moderator.id, banned_at=dt.datetime.now(dt.UTC))
        await self._store.users.update_one(
            {"_id": user_id, "banned": {"$ne": True}}, {"$set": {"banned": True, "ban": record}}
        )
        if self._revoke_user is not None:
            await self._revoke_user(user_id, f"banned: {reason}")
        active = self._store.matches.find({"users": user_id, "status": "active"}, {"_id": 1})
        for match in await active.to_list(None):
            await self._matching.unmatch(user_id, int(match["_id"]))
        await self._audit.record(
            USER_BANNED, moderator, target_type="user", target_id=user_id, user_id=user_id, note=reason
        )
        return await self.status(user_id)

    async def unban(self, user_id: int, reason: str, moderator: Actor) -> dict[str, Any]:
        """Lift the ban (also when there is none): new tokens work again, nothing ended comes back."""
        await self._require_account(user_id)
        await self._store.users.update_one({"_id": user_id}, {"$unset": {"banned": "", "ban": ""}})
        await self._audit.record(
            USER_UNBANNED, moderator, target_type="user", target_id=user_id, user_id=user_id, note=reason
        )
        return await self.status(user_id)

    async def status(self, user_id: int) -> dict[str, Any]:
        """`{user_id, banned, ban: {reason, banned_by, banned_at} | null}`."""
        doc = await self._require_account(user_id)
        ban = doc.get("ban") if doc.get("banned") else None
        return {
            "user_id": user_id,
            "banned": ban is not None,
            "ban": None
            if ban is None
            else {"reason": ban.get("reason"), "banned_by": ban.get("by"), "banned_at": iso_of(ban["at"])},
        }

    async def _require_account(self, user_id: int) -> Doc:
        doc = await self._store.users.find_one({"_id": user_id, "deleted": {"$ne": True}}, {"banned": 1, "ban": 1})
        if doc is None:
            raise errors.NotFound("User not found", code="user_not_found")
        return doc
