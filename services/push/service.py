"""Push notifications for users who are offline: devices, a durable outbox, and a worker on every node.

The seed: WebSockets for active users, push notifications for inactive ones. So a `new_message`,
`new_match` or `new_like` notification (services/realtime/events.py calls `on_notify` for each) is queued for a
push only when its user has no socket anywhere in the cluster (services/realtime/presence.py) and has at least one
registered device.

**The outbox.** Pushes wait in MongoDB (`push_outbox`), so a node that crashes or restarts loses none.
One entry per (user, conversation) for messages, per user for likes, per match for matches; a
notification for an entry that is already waiting only increments its `count`, so a burst of messages
becomes one push. An entry is due `PUSH_GRACE_DELAY` after its first notification and never sooner than
`PUSH_COALESCE_WINDOW` after the previous push of the same entry: at most one push per conversation per
window, carrying the unread count.

**Claiming.** Every node runs a worker that takes due entries one by one with `find_one_and_update`,
setting a lease (`lease_until`, `lease_token`): no other node can take the entry until the lease runs
out, so two nodes never send the same push, and an entry whose node died mid-send is taken over once
its lease (`PUSH_LEASE`) expires. Every later write of the worker is conditioned on its lease token, so a
node that lost its lease cannot overwrite the new owner's state.

**Before sending**, the worker looks again: nothing is sent if the user came online, read the
conversation up to its last message, muted the conversation, turned pushes of that kind off (their
preferences, services/push/preferences.py), or the conversation or match was closed meanwhile. Muting
and preferences are read here, when sending, so they apply to pushes already queued; a muted
conversation's messages are not even queued (ChatService publishes no notification of them).

**Sending** goes to each of the user's devices (services/push/delivery.py). A 404/410 removes the device;
429, 5xx and network errors are retried, only for the devices that failed, after an exponential backoff
(`PUSH_RETRY_BASE` doubling up to `PUSH_RETRY_MAX`, at least the service's Retry-After), at most
`PUSH_MAX_ATTEMPTS` times; other refusals are dropped.

**Payloads** carry no more than a client needs to show "3 new messages" and open the right screen:
`{"type": "new_message", "conversation_id", "count"}`, `{"type": "new_match", "conversation_id"}`,
`{"type": "new_like", "count"}`. No text, names or pictures, unless the operator opts in with
PUSH_PREVIEW_CHARS (a preview then waits in the outbox only until its push is sent) and the user did not
turn message previews off.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import logging
import math
import random
import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson
import pymongo.errors
from pymongo import ReturnDocument

from services.core import background, errors
from services.core.clock import iso
from services.core.logs import FoldedWarning
from services.push.delivery import (
    Outcome,
    Result,
    Sender,
    VapidKeys,
    endpoint_problem,
    subscription_key_problem,
    webhook_problem,
)
from services.push.preferences import NotificationPreferences, mute_of
from services.storage.batch import Coalescer
from services.storage.store import STORE_DOWN_ERRORS, Doc, Store

if TYPE_CHECKING:
    from services.core.config import Settings
    from services.core.metrics import Metrics
    from services.realtime.presence import Presence

log = logging.getLogger("chat.push")

KINDS = frozenset({"new_message", "new_match", "new_like"})
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# An entry with nothing left to send is kept this long after its window (the window needs its
# `not_before`), then MongoDB's TTL monitor removes it.
IDLE_KEEP = dt.timedelta(hours=1)
# RFC 8030 urgency per kind: push services may hold back `normal` pushes for a phone saving battery.
URGENCY = {"new_message": "high", "new_match": "high", "new_like": "normal"}
CLOSE_WAIT_S = 3.0
# Local due times remembered for waking up (beyond them, the poll finds entries anyway).
MAX_WAKES = 10_000


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _literal(value: Any) -> Doc:
    """A constant inside an update pipeline (where a string starting with `$` would name a field)."""
    return {"$literal": value}


class PushService:
    def __init__(
        self, store: Store, settings: Settings, presence: Presence, vapid: VapidKeys | None, metrics: Metrics
    ) -> None:
        from prometheus_client import Counter

        self._store = store
        self.settings = settings
        self._presence = presence
        self.vapid = vapid
        self.sender = Sender(settings, vapid, max_clients=settings.push_concurrency * 2)
        self.preferences = NotificationPreferences(store, settings)
        registry = metrics.registry
        self.queued = Counter("chat_push_queued", "Notifications queued for a push (user offline)", registry=registry)
        self.skipped = Counter(
            "chat_push_skipped",
            "Queued pushes not sent: user came online, read, conversation closed, muted, turned off, no device",
            ["reason"],
            registry=registry,
        )
        self.sent = Counter(
            "chat_push_requests",
            "Requests to push services and webhooks, by outcome",
            ["kind", "outcome"],
            registry=registry,
        )
        # Whether each recipient has a device, asked for every notification to a user who is offline: the
        # recipients of one moment (a conversation's messages while its reader reconnects, a node's worth
        # of readers during a restart) share one query.
        self._device_owners: Coalescer[int, bool] = Coalescer(
            self._users_with_devices, keys_per_query=store.keys_per_query
        )
        self._queue_failures = FoldedWarning(log, "could not queue a push (%s): store unavailable")
        self._slots = asyncio.Semaphore(max(1, settings.push_concurrency))
        self._wakeup = asyncio.Event()
        self._wakes: list[float] = []  # a heap of due times of entries this node queued or rescheduled
        self._runner: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def vapid_public_key(self) -> str | None:
        return self.vapid.public_key if self.vapid is not None else None

    # -- devices -----------------------------------------------------------------------------------

    async def register_webpush(
        self, user_id: int, endpoint: str, p256dh: str, auth: str, expiration_ms: float | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Register a browser's PushSubscription; (device, created?)."""
        if self.vapid is None:
            raise errors.Invalid("Web Push is not enabled on this server", code="webpush_disabled")
        problems = subscription_key_problem(p256dh, auth)
        problem = endpoint_problem(endpoint, self.settings)
        if problem:
            problems["endpoint"] = problem
        if problems:
            raise errors.Invalid("Invalid push subscription", code="invalid_subscription", fields=problems)
        fields: Doc = {"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}
        if expiration_ms is not None:
            fields["expires_at"] = dt.datetime.fromtimestamp(expiration_ms / 1000, dt.UTC)
        return await self._register(user_id, "webpush", endpoint, fields)

    async def register_webhook(self, user_id: int, url: str) -> tuple[dict[str, Any], bool]:
        """Register a webhook target (a gateway URL naming one phone); (device, created?)."""
        problem = webhook_problem(url, self.settings)
        if problem:
            raise errors.Invalid("Webhook URL not allowed", code="webhook_not_allowed", fields={"url": problem})
        return await self._register(user_id, "webhook", url, {"url": url})

    async def _register(self, user_id: int, kind: str, target: str, fields: Doc) -> tuple[dict[str, Any], bool]:
        """Registering the same target again is idempotent. A target registered by someone else passes to
        this user: a subscription belongs to a browser profile, and whoever signed in there last should
        get its pushes, not whoever signed in before."""
        devices = self._store.push_devices
        for _ in range(3):
            now = utcnow()
            existing = await devices.find_one({"target": target})
            if existing is not None and existing["user_id"] == user_id:
                await devices.update_one({"_id": existing["_id"]}, {"$set": {**fields, "updated_at": now}})
                return self.device_view({**existing, **fields}), False
            if await devices.count_documents({"user_id": user_id}) >= self.settings.push_max_devices:
                raise errors.Conflict(
                    f"At most {self.settings.push_max_devices} devices; remove one first", code="too_many_devices"
                )
            if existing is not None:
                moved = await devices.find_one_and_update(
                    {"_id": existing["_id"], "user_id": existing["user_id"]},
                    {"$set": {**fields, "user_id": user_id, "created_at": now, "updated_at": now}},
                    return_document=ReturnDocument.AFTER,
                )
                if moved is not None:
                    return self.device_view(moved), True
                continue
            doc: Doc = {
                "_id": await self._store.next_id("push_devices"),
                "user_id": user_id,
                "kind": kind,
                "target": target,
                **fields,
                "created_at": now,
                "updated_at": now,
            }
            try:
                await devices.insert_one(doc)
            except pymongo.errors.DuplicateKeyError:
                continue  # registered at the same moment by another request: look again
            return self.device_view(doc), True
        raise errors.Conflict("Device registration raced; retry", code="conflict")

    async def list_devices(self, user_id: int) -> list[dict[str, Any]]:
        docs = await self._store.push_devices.find({"user_id": user_id}, sort=[("_id", 1)]).to_list(None)
        return [self.device_view(d) for d in docs]

    async def delete_device(self, user_id: int, device_id: int) -> None:
        result = await self._store.push_devices.delete_one({"_id": device_id, "user_id": user_id})
        if result.deleted_count == 0:
            raise errors.NotFound("Device not found", code="device_not_found")

    @staticmethod
    def device_view(doc: Doc) -> dict[str, Any]:
        view: dict[str, Any] = {"id": int(doc["_id"]), "kind": doc["kind"]}
        if doc["kind"] == "webpush":
            view["endpoint"] = doc["endpoint"]
        else:
            view["url"] = doc["url"]
        view["created_at"] = iso(doc["created_at"])
        return view

    # -- queueing ----------------------------------------------------------------------------------

    async def _users_with_devices(self, user_ids: list[int]) -> dict[int, bool]:
        owners = await self._store.push_devices.distinct("user_id", {"user_id": {"$in": user_ids}})
        return {int(owner): True for owner in owners}

    async def on_notify(self, user_id: int, notification: dict[str, Any]) -> None:
        """Publisher hook: queue a push when the user is offline everywhere and has a device."""
        kind = notification.get("type")
        if kind not in KINDS:
            return
        if await self._presence.reachable(user_id):
            return
        try:
            if not await self._device_owners.get(user_id):
                return
            await self._enqueue(user_id, str(kind), notification)
        except STORE_DOWN_ERRORS:
            self._queue_failures.warn(f"{kind} for user {user_id}")

    async def _enqueue(self, user_id: int, kind: str, notification: dict[str, Any]) -> None:
        """One atomic upsert (an update pipeline, so that the due time can depend on the entry's state):
        a new notification for an entry already waiting only counts; otherwise the entry becomes due after
        the grace delay, or at the end of the window of its previous push if that is later."""
        now = utcnow()
        waiting = {"$gt": [{"$ifNull": ["$count", 0]}, 0]}
        starts = {"$max": [now + dt.timedelta(seconds=self.settings.push_grace_s), {"$ifNull": ["$not_before", EPOCH]}]}
        fields: Doc = {
            "user_id": _literal(user_id),
            "type": _literal(kind),
            "count": {"$add": [{"$ifNull": ["$count", 0]}, 1]},
            "due_at": {"$cond": [waiting, "$due_at", starts]},
            "not_before": {"$ifNull": ["$not_before", EPOCH]},
            "lease_until": {"$ifNull": ["$lease_until", EPOCH]},
            "attempts": {"$ifNull": ["$attempts", 0]},
            "cycle": {"$ifNull": ["$cycle", 0]},
            "created_at": {"$ifNull": ["$created_at", now]},
            "updated_at": now,
        }
        if kind == "new_message":
            message = notification["message"]
            conversation_id = int(message["conversation_id"])
            key = f"{user_id}:c{conversation_id}"
            fields["conversation_id"] = _literal(conversation_id)
            fields["last_seq"] = {"$max": [{"$ifNull": ["$last_seq", 0]}, int(message["id"])]}
            chars = self.settings.push_preview_chars
            if chars > 0:
                sender = message.get("sender") or {}
                preview = {"sender": str(sender.get("username", "")), "text": str(message.get("content") or "")[:chars]}
                fields["preview"] = _literal(preview)
        elif kind == "new_match":
            match = notification["match"]
            key = f"{user_id}:m{int(match['id'])}"
            fields["match_id"] = _literal(int(match["id"]))
            if match.get("conversation_id") is not None:
                fields["conversation_id"] = _literal(int(match["conversation_id"]))
        else:
            key = f"{user_id}:likes"
        pipeline: list[Doc] = [{"$set": fields}, {"$unset": ["expires_at"]}]
        for attempt in range(2):
            try:
                entry = await self._store.push_outbox.find_one_and_update(
                    {"_id": key}, pipeline, upsert=True, projection={"due_at": 1}, return_document=ReturnDocument.AFTER
                )
                break
            except pymongo.errors.DuplicateKeyError:
                if attempt:
                    raise  # two upserts of one new key collide once at most: the retry finds it
        self.queued.inc()
        if entry is not None and entry.get("due_at") is not None:
            self._wake_at(entry["due_at"])

    # -- the worker --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._runner is None:
            self._closing = False
            self.sender.warm_up()
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="push-worker")

    async def close(self) -> None:
        """Stop claiming, let sends in flight finish (bounded), release the HTTP client. Entries not yet
        claimed stay queued for the next node; one cut short is taken over when its lease expires."""
        self._closing = True
        self._wakeup.set()
        if self._runner is not None:
            await background.stop(self._runner, "push worker")
            self._runner = None
        if self._inflight:
            # A short wait: the node's whole shutdown is bounded by SHUTDOWN_TIMEOUT, and what is cut
            # short here is sent again by another node once its lease expires.
            wait_s = min(self.settings.push_timeout_s + 1, CLOSE_WAIT_S)
            _, pending = await asyncio.wait(set(self._inflight), timeout=wait_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        self.sender.close()

    def _wake_at(self, when: dt.datetime) -> None:
        if len(self._wakes) >= MAX_WAKES:
            return
        at = when.timestamp() + 0.005  # MongoDB keeps milliseconds: be just past the stored time
        earliest = self._wakes[0] if self._wakes else math.inf
        heapq.heappush(self._wakes, at)
        if at < earliest:
            self._wakeup.set()

    async def _idle(self) -> None:
        """Wait for the next local due time or the poll interval, whichever comes first."""
        while not self._closing:
            now = time.time()
            if self._wakes and self._wakes[0] <= now:
                while self._wakes and self._wakes[0] <= now:
                    heapq.heappop(self._wakes)
                return
            next_wake = self._wakes[0] if self._wakes else math.inf
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), min(self.settings.push_poll_interval_s, next_wake - now))
            except TimeoutError:
                if not self._wakes or self._wakes[0] > time.time():
                    return  # the poll interval

    async def _run(self) -> None:
        while not self._closing:
            await self._slots.acquire()
            try:
                entry = await self._claim()
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except Exception as exc:
                self._slots.release()
                if isinstance(exc, STORE_DOWN_ERRORS):
                    log.warning("push worker: store unavailable: %s", exc)
                else:
                    log.exception("push worker: claiming failed")
                await asyncio.sleep(max(0.05, self.settings.push_poll_interval_s))
                continue
            if entry is None:
                self._slots.release()
                await self._idle()
                continue
            task = asyncio.get_running_loop().create_task(self._process(entry), name="push-send")
            self._inflight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()

    async def _claim(self) -> Doc | None:
        now = utcnow()
        token = secrets.token_hex(12)
        return await self._store.push_outbox.find_one_and_update(
            {"due_at": {"$lte": now}, "lease_until": {"$lte": now}, "count": {"$gt": 0}},
            {"$set": {"lease_until": now + dt.timedelta(seconds=self.settings.push_lease_s), "lease_token": token}},
            sort=[("due_at", 1)],
            return_document=ReturnDocument.AFTER,
        )

    async def _process(self, entry: Doc) -> None:
        try:
            payload, reason = await self._payload(entry)
            if payload is None:
                self.skipped.labels(reason=reason).inc()
                await self._finish(entry, pushed=False)
                return
            devices = await self._devices(entry)
            if not devices:
                self.skipped.labels(reason="no_device").inc()
                await self._finish(entry, pushed=bool(entry.get("delivered")))
                return
            results = await asyncio.gather(*(self._send(device, entry, payload) for device in devices))
            await self._settle(entry, devices, results)
        except STORE_DOWN_ERRORS as exc:
            log.warning("push %s: store unavailable (%s); retried once its lease expires", entry["_id"], exc)
        except Exception:
            log.exception("push %s failed", entry["_id"])
            with contextlib.suppress(Exception):
                await self._retry_or_drop(entry, None, None, delivered=bool(entry.get("delivered")))

    async def _payload(self, entry: Doc) -> tuple[dict[str, Any] | None, str]:
        """What the push says, or (None, why it is not sent)."""
        user_id = int(entry["user_id"])
        if await self._presence.reachable(user_id):
            return None, "online"
        kind = entry["type"]
        choices = await self.preferences.choices(user_id)
        if not choices.pushes(kind):
            return None, "preference"
        if kind == "new_message":
            conversation_id = int(entry["conversation_id"])
            conv = await self._store.conversations.find_one(
                {"_id": conversation_id},
                {"participants": 1, "status": 1, "last_seq": 1, "read_seq": 1, f"mutes.{user_id}": 1},
            )
            if conv is None or conv.get("status") != "open" or user_id not in conv.get("participants", ()):
                return None, "closed"
            if mute_of(conv, user_id) is not None:
                return None, "muted"
            read = int((conv.get("read_seq") or {}).get(str(user_id), 0))
            # The conversation's own last_seq is written behind the messages: the entry's may be newer.
            unread = max(int(conv.get("last_seq", 0)), int(entry.get("last_seq", 0))) - read
            if unread <= 0 or read >= int(entry.get("last_seq", 0)):
                return None, "read"
            payload: dict[str, Any] = {"type": kind, "conversation_id": conversation_id, "count": unread}
            preview = entry.get("preview")
            if preview and self.settings.push_preview_chars > 0 and choices.message_previews:
                payload["sender"] = preview["sender"]
                payload["text"] = preview["text"]
            return payload, ""
        if kind == "new_match":
            match = await self._store.matches.find_one({"_id": entry["match_id"]}, {"status": 1})
            if match is None or match.get("status") != "active":
                return None, "closed"
            return {"type": kind, "conversation_id": entry.get("conversation_id")}, ""
        return {"type": kind, "count": int(entry["count"])}, ""

    async def _devices(self, entry: Doc) -> list[Doc]:
        query: Doc = {"user_id": entry["user_id"]}
        if entry.get("retry_devices"):
            query["_id"] = {"$in": entry["retry_devices"]}
        devices = await self._store.push_devices.find(query).to_list(None)
        now = utcnow()
        expired = [d["_id"] for d in devices if d.get("expires_at") is not None and d["expires_at"] <= now]
        if expired:
            await self._store.push_devices.delete_many({"_id": {"$in": expired}})
        return [d for d in devices if d["_id"] not in expired]

    async def _send(self, device: Doc, entry: Doc, payload: dict[str, Any]) -> Result:
        kind = entry["type"]
        if device["kind"] == "webpush":
            topic = f"c{entry['conversation_id']}" if kind == "new_message" else kind.replace("_", "")
            result = await self.sender.webpush(
                device["endpoint"],
                device["keys"]["p256dh"],
                device["keys"]["auth"],
                orjson.dumps(payload),
                urgency=URGENCY[kind],
                topic=topic,
            )
        else:
            body = {
                # The same id on every retry of one push: a gateway can drop a repeat it already relayed.
                "id": f"{entry['_id']}:{entry.get('cycle', 0)}",
                "device_id": int(device["_id"]),
                "user_id": int(entry["user_id"]),
                "urgency": URGENCY[kind],
                "notification": payload,
            }
            result = await self.sender.webhook(device["url"], orjson.dumps(body))
        self.sent.labels(kind=device["kind"], outcome=result.outcome.value).inc()
        return result

    async def _settle(self, entry: Doc, devices: list[Doc], results: list[Result]) -> None:
        gone = [d["_id"] for d, r in zip(devices, results, strict=True) if r.outcome is Outcome.GONE]
        if gone:
            # Conditioned on the endpoint too: the same browser may have re-registered meanwhile.
            for device, result in zip(devices, results, strict=True):
                if result.outcome is Outcome.GONE:
                    await self._store.push_devices.delete_one({"_id": device["_id"], "target": device["target"]})
            log.info("push %s: removed %d expired devices", entry["_id"], len(gone))
        delivered = bool(entry.get("delivered")) or any(r.outcome is Outcome.DELIVERED for r in results)
        failed = [(d, r) for d, r in zip(devices, results, strict=True) if r.outcome is Outcome.RETRY]
        if failed:
            await self._retry_or_drop(
                entry,
                [d["_id"] for d, _ in failed],
                max((r.retry_after_s or 0.0) for _, r in failed),
                delivered=delivered,
            )
        else:
            await self._finish(entry, pushed=delivered)

    async def _retry_or_drop(
        self, entry: Doc, device_ids: list[int] | None, retry_after_s: float | None, *, delivered: bool
    ) -> None:
        attempts = int(entry.get("attempts", 0)) + 1
        if attempts >= self.settings.push_max_attempts:
            log.warning("push %s: dropped after %d attempts", entry["_id"], attempts)
            await self._finish(entry, pushed=delivered)
            return
        delay = min(self.settings.push_retry_max_s, self.settings.push_retry_base_s * 2 ** (attempts - 1))
        delay = max(delay * random.uniform(0.8, 1.2), min(retry_after_s or 0.0, self.settings.push_retry_max_s))
        due = utcnow() + dt.timedelta(seconds=delay)
        changes: Doc = {"due_at": due, "lease_until": EPOCH, "attempts": attempts, "delivered": delivered}
        if device_ids is not None:
            changes["retry_devices"] = device_ids
        result = await self._store.push_outbox.update_one(
            {"_id": entry["_id"], "lease_token": entry["lease_token"]},
            {"$set": changes, "$unset": {"lease_token": ""}},
        )
        if result.matched_count:
            self._wake_at(due)

    async def _finish(self, entry: Doc, *, pushed: bool) -> None:
        """Close this round: subtract what it covered; notifications that arrived while it was being sent
        stay pending, due after the window (when something was pushed) and their own grace delay."""
        now = utcnow()
        not_before = now + dt.timedelta(seconds=self.settings.push_window_s) if pushed else now
        done: Doc = {"lease_until": EPOCH, "attempts": 0, "not_before": not_before, "updated_at": now}
        clear = {"lease_token": "", "retry_devices": "", "delivered": ""}
        outbox = self._store.push_outbox
        covered = int(entry["count"])
        # Nothing arrived meanwhile (the usual case): the entry goes idle and will expire.
        result = await outbox.update_one(
            {"_id": entry["_id"], "lease_token": entry["lease_token"], "count": covered},
            {
                "$set": {**done, "count": 0, "expires_at": not_before + IDLE_KEEP},
                "$unset": {**clear, "due_at": "", "preview": ""},
                "$inc": {"cycle": 1},
            },
        )
        if result.matched_count:
            return
        due = max(not_before, now + dt.timedelta(seconds=self.settings.push_grace_s))
        result = await outbox.update_one(
            {"_id": entry["_id"], "lease_token": entry["lease_token"]},
            {"$set": {**done, "due_at": due}, "$unset": clear, "$inc": {"count": -covered, "cycle": 1}},
        )
        if result.matched_count:
            self._wake_at(due)
        else:
            log.warning("push %s: lease expired before the send finished (PUSH_LEASE too short?)", entry["_id"])
