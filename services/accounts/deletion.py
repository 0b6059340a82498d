"""Deleting an account at its owner's request (`DELETE /api/users/me/`).

Order, so that a node dying midway never leaves an account half alive:
1. The password is proved as a sign-in proves it (throttled with sign-ins, hashed off the loop).
2. One write marks the account `deleted: true` with a pending `deletion` record and revokes its tokens
   (services/accounts/revocation.py): from then on every token is refused on every node, every socket of
   the account closes with 4002, sign-in answers 401, and everything that honours `deleted` (discover,
   likes, profiles, liveness) treats it as gone.
3. `finish` then erases, each step idempotent:
   - every active match ends as an unmatch ends it (services/matching/service.py): the conversation is
     closed and sealed, the other person's sockets on it close with 4001, and both are told the match
     ended, as for any other end;
   - messages the user sent are erased as an unsend erases them: text gone, a tombstone keeps the id, so
     the other person's history keeps its order and its count; files uploaded (photos, attachments) are
     removed with their documents (services/media/cleanup.py);
   - likes, passes and blocks given or received, devices and push subscriptions, pending pushes,
     notification preferences and refresh tokens are deleted;
   - the account document is replaced by a stub: its id, `deleted`, the dates, the token generation (so
     old tokens stay refused) and a ban if there was one; username, password hash, profile, photos and
     location go. The username is freed: it is personal data, and a new account that takes it gets a new
     id, so nothing of the old account (matches, conversations, messages are keyed by id) reaches it.
   Then the record is marked done.
4. A node that died between 2 and the end leaves the record pending: `DeletionWorker`, started with every
   node, finishes accounts whose deletion has been pending for more than GRACE_S.

Kept: reports about the user with the evidence copied into them, until REPORT_RETENTION_DAYS after their
resolution (services/moderation/reports.py), and the audit log: both exist so that moderation can act on
abuse, which a deletion must not wipe out. Matches and conversations stay as ended and closed documents
holding ids only, for the other person's history.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import re
from collections.abc import Awaitable, Callable

import pymongo.errors

from services.accounts.revocation import Revocations
from services.accounts.users import UserService
from services.chat.ids import MAX_SEQ, message_key
from services.core.background import BackgroundTask
from services.matching.service import MatchingService
from services.media.cleanup import remove_user_files
from services.media.store import MediaStore
from services.storage.store import Doc, Store

log = logging.getLogger("chat.accounts")

# A deletion pending longer than this is taken to be abandoned by a node that died, and finished.
GRACE_S = 60.0
# What the stub of a deleted account shows where a summary of it is still read (a closed conversation's
# history): no username, which registration would accept, so nobody can pose as the deleted person.
DELETED_NAME = "Deleted account"
# Fields of the account document that outlive the deletion; everything else is erased.
KEPT_FIELDS = ("_id", "created_at", "token_generation", "tokens_revoked", "banned", "ban", "deletion")


def deleted_username_key(user_id: int) -> str:
    """A unique key no registration can produce ('#' is not allowed in usernames): the name is free."""
    return f"#deleted:{user_id}"


class AccountDeletion:
    def __init__(
        self,
        store: Store,
        users: UserService,
        revocations: Revocations,
        matching: MatchingService,
        media: MediaStore,
    ) -> None:
        self._store = store
        self._users = users
        self._revocations = revocations
        self._matching = matching
        self._media = media

    async def delete(self, user_id: int, password: str | None, *, client_ip: str | None = None) -> None:
        """Prove the password, mark and revoke, then erase (see the module docstring)."""
        await self._users.prove_password(user_id, password, "password", client_ip=client_ip)
        now = dt.datetime.now(dt.UTC)
        record = {"requested_at": now, "pending": True}
        await self._revocations.revoke_user(user_id, "account deleted", changes={"deleted": True, "deletion": record})
        log.info("account deletion requested", extra={"user_id": user_id})
        await self.finish(user_id)

    async def finish(self, user_id: int) -> None:
        """Erase what the account left (every step may run again: a retry completes what a crash cut)."""
        store = self._store
        active = await store.matches.find({"users": user_id, "status": "active"}, {"_id": 1}).to_list(None)
        for match in active:
            await self._matching.unmatch(user_id, int(match["_id"]))
        await self._erase_messages(user_id)
        await remove_user_files(store, self._media, user_id)
        for collection in (store.likes, store.passes, store.blocks):
            await collection.delete_many({"from_id": user_id})
            await collection.delete_many({"to_id": user_id})
        await store.push_devices.delete_many({"user_id": user_id})
        # Outbox entries are keyed "<user id>:<what>" (services/push/service.py): a prefix on `_id`.
        await store.push_outbox.delete_many({"_id": {"$regex": f"^{re.escape(str(user_id))}:"}})
        await store.notification_preferences.delete_one({"_id": user_id})
        await store.refresh_tokens.delete_many({"user_id": user_id})
        await self._replace_with_stub(user_id)
        self._users.forget_summary(user_id)
        log.info("account deleted", extra={"user_id": user_id})

    async def _erase_messages(self, user_id: int) -> None:
        now = dt.datetime.now(dt.UTC)
        async for conversation in self._store.conversations.find({"participants": user_id}, {"_id": 1}):
            cid = int(conversation["_id"])
            await self._store.messages.update_many(
                {
                    # The conversation's id range: served by `_id`, whatever the deployment's indexes.
                    "_id": {"$gte": message_key(cid, 0), "$lte": message_key(cid, MAX_SEQ)},
                    "conversation_id": cid,  # and one shard of a sharded deployment (docs/mongodb.md)
                    "sender_id": user_id,
                    "hole": {"$ne": True},
                    "deleted_at": None,
                },
                {"$set": {"content": "", "deleted_at": now}, "$unset": {"edited_at": "", "attachment_id": ""}},
            )

    async def _replace_with_stub(self, user_id: int) -> None:
        doc = await self._store.users.find_one({"_id": user_id})
        if doc is None:
            return
        stub: Doc = {key: doc[key] for key in KEPT_FIELDS if key in doc}
        deletion = dict(stub.get("deletion") or {})
        deletion.pop("pending", None)
        deletion["completed_at"] = dt.datetime.now(dt.UTC)
        stub.update(
            {
                "deleted": True,
                "deletion": deletion,
                "username": DELETED_NAME,
                "username_key": deleted_username_key(user_id),
                "picture": None,
                "photos": [],
            }
        )
        await self._store.users.replace_one({"_id": user_id, "deleted": True}, stub)

    async def finish_abandoned(self, now: dt.datetime | None = None) -> int:
        """Finish every deletion pending for more than GRACE_S; how many were finished."""
        cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=GRACE_S)
        pending = self._store.users.find(
            {"deleted": True, "deletion.pending": True, "deletion.requested_at": {"$lt": cutoff}}, {"_id": 1}
        )
        finished = 0
        for doc in await pending.to_list(None):
            await self.finish(int(doc["_id"]))
            finished += 1
        return finished


class DeletionWorker:
    """Every node looks for abandoned deletions at start and then every `interval_s` (with jitter)."""

    def __init__(self, finish_abandoned: Callable[[], Awaitable[int]], interval_s: float) -> None:
        self._finish_abandoned = finish_abandoned
        self.interval_s = interval_s
        self._background = BackgroundTask(self._run, "deletion-worker")

    def start(self) -> None:
        self._background.start()

    async def close(self) -> None:
        await self._background.close()

    async def _run(self) -> None:
        delay = 0.0
        while True:
            await asyncio.sleep(delay)
            delay = self.interval_s * random.uniform(0.5, 1.5)
            try:
                finished = await self._finish_abandoned()
            except (pymongo.errors.PyMongoError, OSError) as exc:
                log.warning("finishing abandoned account deletions failed, next try later: %s", exc)
                continue
            if finished:
                log.info("abandoned account deletions finished", extra={"count": finished})
