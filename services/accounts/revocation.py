"""Revoking an account's sessions: its tokens are refused and its open sockets closed, on every node.

The API other features call (`services.revocations`):

    await services.revocations.revoke_user(user_id, "account deleted")

Call it after the account's own change is stored (`deleted: true`, a ban), or pass that change as
`changes` to store both in one write (a password change stores its new hash so). Then:
- every access and refresh token of the user issued before the call is refused on every node: REST 401
  `token_invalid`, socket handshakes 4002, refreshes 401. Tokens issued afterwards work (the account's own
  rules permitting: a banned or deleted account gets none);
- every open socket of the user, on every node and on both endpoints, is closed with 4002 within
  5 seconds (in practice the bus's latency, milliseconds).
It is idempotent in effect and cheap (one write, one bus event): call it again when in doubt.

How. The user document holds `token_generation` (absent means 0) and every token carries the generation
it was issued in (services/accounts/auth.py). Revoking increments the generation in the store, so every
node that reads the account afterwards refuses the older tokens, then publishes one event on the bus's
`revocations` channel. Every node subscribes to that one channel from its start (services/realtime/
hub.py): revocations are rare (deletions, bans, password changes, a leaked refresh token), so each node
receiving all of them costs nothing, whereas per-user channels would need every node holding any socket of
a user (conversation sockets included, which follow `conv:` channels) to subscribe to `user:<id>` and keep
that subscription confirmed before the socket counts as open. On the event each node drops the user from
its account liveness cache (services/accounts/liveness.py: the next request reads the new generation, and
checking it costs no read of its own) and closes the user's local sockets opened with a token of an older
generation.

What is not covered. The bus does not store events: a node that was cut off from Redis when a revocation
was published misses the event. It then drops its whole liveness cache and checks each of its sockets'
tokens against the store when its bus reconnects (`Services.recheck_tokens`); if instead the revoking
node's publish failed, other nodes refuse the old tokens on REST within ACCOUNT_CACHE_TTL_S (30 s) and
close their sockets when those tokens expire (ACCESS_TOKEN_TTL plus SOCKET_TOKEN_GRACE).

A reused refresh token (services/accounts/auth.py revokes its family) calls `end_sockets`: the family's
refresh tokens are already refused, and the account's other sign-ins (other devices) must keep working, so
the generation stays. Sockets do not say which sign-in opened them (an access token names no family), so
every socket of the user is closed, with 4004: a client reconnects with a fresh access token, which a
legitimate device gets by refreshing its own family and the leaked family cannot. An access token already
issued to the leaked family stays valid until it expires (ACCESS_TOKEN_TTL).
"""

from __future__ import annotations

import datetime as dt
import logging

from pymongo import ReturnDocument

from services.accounts.liveness import AccountLiveness
from services.realtime.close_codes import CLOSE_BAD_TOKEN, CLOSE_TOKEN_EXPIRED
from services.realtime.events import Publisher
from services.storage.store import Doc, Store

log = logging.getLogger("chat.revocations")


class Revocations:
    def __init__(self, store: Store, events: Publisher, liveness: AccountLiveness) -> None:
        self._store = store
        self._events = events
        self._liveness = liveness

    async def revoke_user(self, user_id: int, reason: str, *, changes: Doc | None = None) -> int | None:
        """Refuse every token of the user issued until now and close every socket of theirs with 4002, on
        every node (see the module docstring). `reason` is kept on the account (`tokens_revoked`) and
        logged; `changes` are fields to set in the same write. Returns the account's new token
        generation, or None when no such account is stored (its sockets are closed all the same)."""
        now = dt.datetime.now(dt.UTC)
        doc = await self._store.users.find_one_and_update(
            {"_id": user_id},
            {
                "$inc": {"token_generation": 1},
                "$set": {"tokens_revoked": {"at": now, "reason": reason}, **(changes or {})},
            },
            projection={"token_generation": 1},
            return_document=ReturnDocument.AFTER,
        )
        generation = None if doc is None else int(doc["token_generation"])
        # This node needs no bus to know: the next request of the user reads the new generation.
        self._liveness.forget(user_id)
        await self._events.revoke_sockets(user_id, CLOSE_BAD_TOKEN, generation)
        log.info("sessions revoked", extra={"user_id": user_id, "reason": reason, "token_generation": generation})
        return generation

    async def end_sockets(self, user_id: int, reason: str = "refresh token reused") -> None:
        """Close every socket of the user with 4004, on every node, and revoke no token (a reused refresh
        token: see the module docstring)."""
        await self._events.revoke_sockets(user_id, CLOSE_TOKEN_EXPIRED)
        log.info("sockets closed for a fresh sign-in", extra={"user_id": user_id, "reason": reason})
