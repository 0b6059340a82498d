"""The services of one node, built once at start-up and handed to every handler."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo.errors

from services.accounts.auth import PasswordHasher, TokenService
from services.accounts.deletion import AccountDeletion, DeletionWorker
from services.accounts.export import AccountExport
from services.accounts.revocation import Revocations
from services.accounts.throttle import LoginThrottle
from services.accounts.users import UserService
from services.chat.notifications import NotificationFeed
from services.chat.presence import PresenceAnnouncer, PresenceService
from services.chat.service import ChatService
from services.core import errors
from services.core.background import BackgroundTask
from services.core.config import Settings
from services.core.limits import RateLimiter
from services.core.metrics import Metrics
from services.matching.location import LocationPrivacy
from services.matching.service import MatchingService
from services.media.migrate import copy_left_on_disk, left_on_disk
from services.media.store import MediaStore
from services.moderation.service import ModerationService
from services.push.delivery import load_vapid_keys
from services.push.service import PushService
from services.realtime.admission import JoinGate
from services.realtime.backends import build_backends
from services.realtime.bus import Bus
from services.realtime.close_codes import CLOSE_BAD_TOKEN
from services.realtime.counters import RateCounters, SharedBudget
from services.realtime.events import Publisher
from services.realtime.hub import Connections, Peer
from services.realtime.typing_indicators import TypingTracker
from services.storage.store import STORE_DOWN_ERRORS, Store

log = logging.getLogger("chat.services")
# How often a node checks that MongoDB and Redis answer, for `chat_backend_up`.
BACKEND_PROBE_INTERVAL_S = 5.0
# A shutdown step that takes this long is logged with its duration.
SLOW_SHUTDOWN_STEP_S = 0.5


def public_base(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = settings.host
    if host in ("", "0.0.0.0", "::", "127.0.0.1", "::1"):  # noqa: S104 - names, not a bind
        host = "localhost"
    return f"http://{host}:{settings.port}"


def jwt_secret(settings: Settings) -> str:
    """The configured secret, or in development one generated once and kept in the data dir."""
    if settings.jwt_secret:
        return settings.jwt_secret
    path = Path(settings.data_dir) / "jwt_secret"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    path.write_text(secret)
    path.chmod(0o600)
    log.warning("JWT_SECRET not set: generated a development secret in %s (set JWT_SECRET in production)", path)
    return secret


@dataclass
class Services:
    settings: Settings
    store: Store
    hasher: PasswordHasher
    tokens: TokenService
    media: MediaStore
    users: UserService
    bus: Bus
    events: Publisher
    matching: MatchingService
    chat: ChatService
    typing: TypingTracker
    presence: PresenceService
    connections: Connections
    message_limiter: RateLimiter
    # With Redis: the same budget across every node (services/realtime/counters.py SharedBudget).
    message_budget: SharedBudget | None
    metrics: Metrics
    push: PushService
    rates: RateCounters
    moderation: ModerationService
    revocations: Revocations
    deletion: AccountDeletion
    deletion_worker: DeletionWorker
    exports: AccountExport
    notification_feed: NotificationFeed
    # Bounds the sockets opening at once, so that a reconnect storm queues instead of swamping the store.
    joins: JoinGate
    shutting_down: bool = False
    # Whether the store's indexes were ensured: a node started while MongoDB was away serves (503s, 1011s)
    # and retries until it can, and is not ready before (see `prepare_store`).
    store_prepared: asyncio.Event = field(default_factory=asyncio.Event)
    catch_ups: set[asyncio.Task[None]] = field(default_factory=set)
    _store_preparation: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _backend_probe: BackgroundTask | None = field(default=None, init=False, repr=False)
    _media_copy: BackgroundTask | None = field(default=None, init=False, repr=False)

    def check_message_rate(self, user_id: int) -> None:
        """Messages per user, shared by socket and REST sends, and by every node when Redis is configured."""
        # A debt to the cluster-wide budget first: it must not cost a token of this node's bucket too.
        wait_s = self.message_budget.refused_for(user_id) if self.message_budget is not None else 0.0
        if wait_s <= 0:
            wait_s = self.message_limiter.take(user_id)
            if wait_s <= 0 and self.message_budget is not None:
                self.message_budget.spent(user_id)
        if wait_s > 0:
            self.metrics.rate_limited.labels(scope="messages").inc()
            raise errors.RateLimited("Too many messages; slow down", retry_after_s=wait_s)

    async def readiness(self) -> dict[str, bool]:
        """What a readiness probe reports, within the time a load balancer waits for it."""
        checks: dict[str, bool] = {"accepting": not self.shutting_down}
        reachable = await self.probe_backends()
        checks["mongodb"] = reachable["mongodb"] and self.store_prepared.is_set()
        if "redis" in reachable:
            checks["redis"] = reachable["redis"]
        return checks

    async def probe_backends(self) -> dict[str, bool]:
        """Whether MongoDB, and Redis when configured, answer now; `chat_backend_up` reports the same."""
        reachable: dict[str, bool] = {}
        try:
            await self.store.ping(timeout_s=max(0.1, self.settings.mongodb_timeout_ms / 1000))
            reachable["mongodb"] = True
        except pymongo.errors.PyMongoError as exc:
            log.warning("MongoDB did not answer a probe: %s", exc)
            self.metrics.backend_errors.labels(backend="mongodb").inc()
            reachable["mongodb"] = False
        if self.settings.redis_url:
            reachable["redis"] = self.bus.healthy
        for backend, up in reachable.items():
            self.metrics.backend_up.labels(backend=backend).set(1 if up else 0)
        return reachable

    async def _probe_backends_forever(self) -> None:
        # Between scrapes too: a gauge that is only set when someone asks /readyz would go stale.
        while not self.shutting_down:
            await self.probe_backends()
            await asyncio.sleep(BACKEND_PROBE_INTERVAL_S)

    async def _copy_media_left_on_disk(self) -> None:
        """Copy into the database the uploads an older version kept under DATA_DIR/media, once the store
        answers; retried while it does not. Files are served from the database only, so until this is done
        (seconds for thousands of files) such a file answers 404 on every node."""
        data_dir = Path(self.settings.data_dir)
        if not await asyncio.to_thread(left_on_disk, data_dir):
            return
        await self.store_prepared.wait()
        delay_s = 1.0
        while not self.shutting_down:
            try:
                report = await copy_left_on_disk(self.store, data_dir)
            except STORE_DOWN_ERRORS as exc:
                log.warning("copying %s/media into the database failed (%s); again in %.0f s", data_dir, exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 60.0)
                continue
            log.info("uploads left under %s/media copied into the database: %s", data_dir, report.summary())
            return

    async def fill_gaps(self, conversation_id: int, peers: list[Peer]) -> None:
        """Deliver, from MongoDB, the messages that peers are missing before the ones they parked."""
        for peer in peers:
            while peer.parked and peer.last_message_id is not None and not peer.closing:
                missing_until = min(peer.parked) - 1
                count = missing_until - peer.last_message_id
                if count <= 0:
                    break
                page, _ = await self.chat.backlog(conversation_id, peer.last_message_id, min(count, 100))
                if not page:
                    break
                peer.receive_page(page)

    async def replay_notifications(self, peer: Peer, after: int) -> None:
        """Send a notifications socket what the log kept after id `after` (with `notifications_truncated`
        first when some of it is gone), then the live notifications held back since its replay began."""
        last: int | None = None
        try:
            replay = await self.notification_feed.replay(peer.user_id, after)
            if replay.truncated:
                peer.push_json({"type": "notifications_truncated"})
            for seq, frame in replay.frames:
                peer.push(frame)
                last = seq
            if last is None and replay.head is not None:
                # Nothing kept after `after`: live ones follow the newest id issued (an `after` beyond it, a
                # client's bug, must not hold every later notification back).
                last = replay.head
        finally:
            peer.end_notification_replay(last)

    async def fill_notifications(self, peer: Peer) -> None:
        """The hub saw a notifications socket's ids jump: send it what it missed from the log."""
        if peer.last_notification_id is None:
            peer.end_notification_replay(None)
            return
        await self.replay_notifications(peer, peer.last_notification_id)

    def catch_up_notifications(self) -> None:
        """After Redis was away, notifications published meanwhile may have missed this node's sockets: each
        notifications socket that has a place in its user's log is sent what the log kept after it."""
        for peers in list(self.connections.notifications_by_user.values()):
            for peer in list(peers):
                if peer.last_notification_id is not None and peer.notification_buffer is None:
                    peer.begin_notification_replay()
                    self.connections.request_notification_fill(peer)

    def catch_up_all(self) -> None:
        """After the bus lost events (Redis away, or a node died before publishing what it stored), send every
        conversation socket what it missed, from the store."""
        for conversation_id, peers in list(self.connections.by_conversation.items()):
            waiting = [p for p in peers if p.last_message_id is not None]
            if waiting:
                self.background(self.catch_up(conversation_id, waiting))

    async def catch_up(self, conversation_id: int, peers: list[Peer]) -> None:
        try:
            for peer in peers:
                while peer.last_message_id is not None and not peer.closing:
                    page, has_more = await self.chat.backlog(conversation_id, peer.last_message_id, 100)
                    peer.receive_page(page)
                    if not has_more:
                        break
        except STORE_DOWN_ERRORS:
            log.warning("catch-up of conversation %d failed: store unavailable", conversation_id)

    def recheck_tokens(self) -> None:
        """After the bus lost events (Redis away), a revocation published meanwhile may have missed this
        node: forget every account it cached, and check each local socket's token against the store again."""
        self.users.liveness.forget()
        self.background(self._recheck_tokens())

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task of its own, held until it is done (the loop keeps only weak references)."""
        task = asyncio.get_running_loop().create_task(work)
        self.catch_ups.add(task)
        task.add_done_callback(self.catch_ups.discard)

    async def _recheck_tokens(self) -> None:
        try:
            for user_id, peers in list(self.connections.by_user.items()):
                for peer in list(peers):
                    # One read per user: the answer is cached for that user's other sockets.
                    if not peer.closing and not await self.users.accepts(user_id, peer.token_generation):
                        peer.shut(CLOSE_BAD_TOKEN, "token revoked")
        except STORE_DOWN_ERRORS:
            log.warning("token recheck after a bus reconnect failed: store unavailable")

    async def prepare_store(self) -> None:
        """Ensure the store's indexes, now if MongoDB answers, else in the background until it does: a
        node must not exit because the store was down when it started (it would be restarted in a loop
        by its supervisor, and serve nothing even once the store is back)."""
        try:
            await self.store.ensure_indexes()
        except STORE_DOWN_ERRORS as exc:
            log.warning("MongoDB unavailable at start (%s); serving 503 and retrying", exc)
            self._store_preparation = asyncio.get_running_loop().create_task(self._prepare_store_later())
            return
        self.store_prepared.set()

    async def _prepare_store_later(self) -> None:
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            try:
                await self.store.ensure_indexes()
            except STORE_DOWN_ERRORS as exc:
                log.warning("MongoDB still unavailable (%s); retrying in %.1fs", exc, delay)
                continue
            self.store_prepared.set()
            log.info("MongoDB reachable: indexes ensured, the node is ready")
            return

    async def start(self) -> None:
        await self.prepare_store()
        await self.bus.start()
        await self.presence.start()
        self.chat.start()
        self.typing.start()
        await self.connections.start(self.settings.ping_interval_s)
        self.metrics.start()
        self.push.start()
        # Upload limits, quotas and the sweep of unsent attachments (services/media/store.py).
        self.media.connect(self.settings, self.store, self.rates)
        self.media.start()
        # Account deletions a node left unfinished when it died (services/accounts/deletion.py).
        self.deletion_worker.start()
        # Uploads an older version of the server kept on this node's disk (services/media/migrate.py).
        self._media_copy = BackgroundTask(self._copy_media_left_on_disk, "media-copy")
        self._media_copy.start()
        self._backend_probe = BackgroundTask(self._probe_backends_forever, "backend-probe")
        self._backend_probe.start()

    async def close(self, *, process_ends: bool = False) -> None:
        """Close sockets with 1001, finish queued writes, then release the clients. `process_ends`: the
        process exits right after, and its exit closes the connections (Connections.close_all)."""
        self.shutting_down = True
        if self._store_preparation is not None:
            self._store_preparation.cancel()
            await asyncio.gather(self._store_preparation, return_exceptions=True)
        if self._backend_probe is not None:
            await self._backend_probe.close()
        if self._media_copy is not None:
            await self._media_copy.close()
        self.presence.store.hand_over_at_close()
        self.joins.close()
        # Steps in order; the steps of one stage run at once. Closing the sockets (a close frame each, then
        # up to 2 s for the clients' answers, or only for the frames to leave) and handing presence over
        # (the users withdrawn from Redis, then their offline announcements, which wait on the store)
        # share nothing: run one after the other they took 3 to 8 s of a 3,000-socket node's stop, and
        # clients whose retry came before the node was back waited for their next backoff step
        # (BENCHMARKS.md).
        stages: list[list[tuple[str, Callable[[], Awaitable[None]]]]] = [
            [
                (
                    "closing the sockets",
                    lambda: self.connections.close_all(1001, "server shutting down", process_ends=process_ends),
                ),
                ("handing presence over", self.presence.close),
            ],
            [("storing queued messages", self.chat.close)],
            [("logging queued notifications", self.events.notifications.close)],
            [("push deliveries", self.push.close)],
            [("media", self.media.close)],
            [("the deletion worker", self.deletion_worker.close)],
            [("typing indicators", self.typing.close)],
        ]
        if self.message_budget is not None:
            stages.append([("the shared message budget", self.message_budget.close)])
        stages += [
            [("the bus", self.bus.close)],
            [("the store client", self.store.close)],
            [("metrics", self.metrics.close)],
        ]
        for stage in stages:
            # Every step of a stage ends before the first failure goes on up (as a failed step always did).
            outcomes = await asyncio.gather(
                *(_timed_shutdown_step(name, step) for name, step in stage), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        self.hasher.close()


async def _timed_shutdown_step(name: str, step: Callable[[], Awaitable[None]]) -> None:
    """Run one step of a node's stop, saying how long it took when that was long: what holds a node past
    its SIGTERM is what an operator asks first."""
    started = time.monotonic()
    try:
        await step()
    except asyncio.CancelledError:
        log.warning("shutdown: %s still ran after %.1fs", name, time.monotonic() - started)
        raise
    took = time.monotonic() - started
    if took >= SLOW_SHUTDOWN_STEP_S:
        log.info("shutdown: %s took %.1fs", name, took)


async def build_services(settings: Settings, mongodb_url: str) -> Services:
    store = Store(
        mongodb_url,
        settings.mongodb_database,
        timeout_ms=settings.mongodb_timeout_ms,
        id_block_size=settings.id_block_size,
        embedded=not settings.mongodb_url,
    )
    hasher = PasswordHasher(settings.hash_concurrency)
    tokens = TokenService(
        store,
        jwt_secret(settings),
        access_ttl_s=settings.access_token_ttl_s,
        refresh_ttl_s=settings.refresh_token_ttl_s,
        reuse_grace_s=settings.refresh_reuse_grace_s,
    )
    media = MediaStore(store, public_base(settings), settings.max_upload_bytes)
    users = UserService(store, hasher, tokens, media, min_age=settings.min_age)
    users.locations = LocationPrivacy.from_settings(settings)
    backends = await build_backends(settings)
    bus = backends.bus
    users.login_throttle = LoginThrottle(
        settings.login_failures_per_account,
        settings.login_failures_per_ip,
        settings.login_window_s,
        redis=backends.shared_counters,
        prefix=settings.redis_prefix,
    )
    events = Publisher(bus, backends.notifications)
    revocations = Revocations(store, events, users.liveness)
    users.revocations = revocations
    # A token below its account's generation is refused by whatever this node knows of the account, and a
    # reused refresh token closes the account's sockets.
    tokens.is_revoked = users.liveness.refuses
    tokens.on_family_revoked = revocations.end_sockets
    chat = ChatService(
        store,
        users,
        events,
        media,
        max_content_chars=settings.max_content_chars,
        hole_timeout_s=settings.hole_timeout_s,
        metadata_interval_s=settings.metadata_interval_s,
    )
    typing = TypingTracker(events, users, settings.typing_timeout_s)
    chat.on_message_stored.append(typing.stop_soon)
    connections = Connections(
        bus,
        max_sockets=settings.max_sockets_per_node,
        max_per_user=settings.max_sockets_per_user,
        max_conversation_per_user=settings.max_conversation_sockets_per_user,
    )
    connections.on_conversation_closed.append(chat.forget_conversation)
    connections.on_message_seen.append(chat.observe_seq)
    connections.on_user_revoked.append(users.liveness.forget)
    metrics = Metrics()
    connections.metrics = metrics
    chat.on_message_stored.append(lambda _conversation, _sender: metrics.messages_stored.inc())
    announcer = PresenceAnnouncer(
        backends.presence, store, chat, events, users, last_seen_delay_s=settings.last_seen_delay_s
    )
    backends.presence.listener = announcer
    announcer.connections = connections
    connections.on_presence_gone.append(announcer.deliver_gone)
    users.presence_view = announcer.profile_view
    presence = PresenceService(backends.presence, announcer)
    push = PushService(store, settings, backends.presence, load_vapid_keys(settings, public_base(settings)), metrics)
    events.on_notify.append(push.on_notify)
    matching = MatchingService(store, users, events, settings, seal_conversation=chat.seal)
    moderation = ModerationService(
        store, users, matching, chat, media, events, backends.rates, settings, revoke_user=revocations.revoke_user
    )
    deletion = AccountDeletion(store, users, revocations, matching, media)
    services = Services(
        settings=settings,
        store=store,
        hasher=hasher,
        tokens=tokens,
        media=media,
        users=users,
        bus=bus,
        events=events,
        matching=matching,
        chat=chat,
        typing=typing,
        presence=presence,
        connections=connections,
        message_limiter=RateLimiter(settings.message_rate, settings.message_burst),
        message_budget=backends.message_budget,
        metrics=metrics,
        push=push,
        rates=backends.rates,
        moderation=moderation,
        revocations=revocations,
        deletion=deletion,
        deletion_worker=DeletionWorker(deletion.finish_abandoned, settings.deletion_sweep_interval_s),
        exports=AccountExport(store, users, media),
        notification_feed=NotificationFeed(backends.notifications, store, users),
        joins=JoinGate(settings.join_concurrency, settings.join_queue, settings.max_sockets_per_user),
    )
    metrics.joins.labels(state="running").set_function(lambda: services.joins.running)
    metrics.joins.labels(state="waiting").set_function(lambda: services.joins.waiting)
    connections.gap_filler = services.fill_gaps
    connections.notification_filler = services.fill_notifications
    backends.on_reconnect.append(services.catch_up_all)
    backends.on_reconnect.append(services.catch_up_notifications)
    # A node that died may have stored messages whose events never reached the bus: when its presence is
    # swept, every node sends its sockets what they are missing, instead of waiting for a next message.
    backends.presence.on_node_swept = events.node_lost
    connections.on_node_lost.append(services.catch_up_all)
    backends.on_reconnect.append(services.recheck_tokens)
    # This node's publishes failed for a while (a shard's failover): other nodes' sockets may miss what it
    # stored meanwhile, so every node is asked to catch its sockets up, as after a node's death.
    backends.on_publish_restored.append(lambda: services.background(events.node_lost("publishing restored")))
    backends.on_error.append(lambda: metrics.backend_errors.labels(backend="redis").inc())
    await services.start()
    return services
