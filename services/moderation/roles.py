"""The moderator role: who holds it, and how it is granted.

An account is a moderator when its document says `role: "moderator"`. Only the operator grants or revokes
it, with `python server.py grant-moderator USERNAME` / `revoke-moderator USERNAME` (server.py), which
writes the document and an audit entry; no endpoint can. Access tokens issued after a grant carry the
claim `role: "moderator"` (services/accounts/auth.py), and every moderator request also reads the
account afresh (`ModeratorCheck`), so a revoked role stops working at once, whatever its tokens say.
"""

from __future__ import annotations

from services.core import errors
from services.moderation.audit import MODERATOR_GRANTED, MODERATOR_REVOKED, Actor, AuditLog
from services.storage.documents import MODERATOR_ROLE
from services.storage.store import Doc, Store


async def set_moderator(store: Store, audit: AuditLog, username: str, granted: bool, actor: Actor) -> Doc | None:
    """Grant (or revoke) the role of the account named `username`; its document, or None if no account
    (not deleted) has that name. Repeating it changes nothing but is recorded again."""
    doc = await store.users.find_one({"username_key": username.lower(), "deleted": {"$ne": True}}, {"username": 1})
    if doc is None:
        return None
    change = {"$set": {"role": MODERATOR_ROLE}} if granted else {"$unset": {"role": ""}}
    await store.users.update_one({"_id": doc["_id"]}, change)
    user_id = int(doc["_id"])
    action = MODERATOR_GRANTED if granted else MODERATOR_REVOKED
    await audit.record(action, actor, target_type="user", target_id=user_id, user_id=user_id)
    return doc


class ModeratorCheck:
    """Whether the caller of a moderator endpoint is one: the token's claim, then the account itself."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def require(self, user_id: int, claimed_role: object) -> Actor:
        """The moderator as an audit actor, or Forbidden `not_a_moderator`.

        The claim alone would keep a revoked moderator in until their access token expires, so the account
        is read on every call: moderator requests are few, and a revocation (or a ban) takes effect at
        the next one."""
        if claimed_role != MODERATOR_ROLE:
            raise _not_a_moderator()
        doc = await self._store.users.find_one(
            {"_id": user_id, "role": MODERATOR_ROLE, "deleted": {"$ne": True}, "banned": {"$ne": True}},
            {"username": 1},
        )
        if doc is None:
            raise _not_a_moderator()
        return Actor(user_id, str(doc["username"]))


def _not_a_moderator() -> errors.Forbidden:
    return errors.Forbidden("Moderators only", code="not_a_moderator")
