"""The backends of one node, chosen together from REDIS_URL.

With no REDIS_URL the node runs alone: an in-process bus, presence counted in this process, sign-in
failures counted in this process. A `redis://`, `rediss://` or `unix://` URL makes it one node of a
cluster: the bus, presence, rate budgets, the sign-in counters and the notifications log are shared through
that Redis. The URL may name a single Redis or any node of a Redis Cluster: the node asks Redis which it is
when it starts (services/realtime/redis_cluster.py) and builds its clients for that. This is the one
place that knows which backend is which; everyone else uses the interfaces.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from services.core.config import Settings
from services.realtime.bus import Bus, InProcessBus, RedisBus
from services.realtime.counters import LocalRateCounters, RateCounters, RedisRateCounters, SharedBudget
from services.realtime.notifications_log import LocalNotificationLog, NotificationLog, RedisNotificationLog
from services.realtime.presence import PresenceStore, RedisPresenceStore
from services.realtime.redis_cluster import DETECT_DEADLINE_S, ClusterBus, detect_cluster

log = logging.getLogger("chat.backends")

REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


@dataclass
class Backends:
    bus: Bus
    presence: PresenceStore
    # Rate budgets (sign-ups per address, discover calls per user...): per node, or shared through Redis.
    rates: RateCounters
    # Numbers and keeps each user's notifications for sockets that resume: in memory, or in Redis.
    notifications: NotificationLog
    # Messages per user, one budget for the whole cluster (None: each node's own limiter is the budget).
    message_budget: SharedBudget | None = None
    # A Redis client for counters every node shares (the sign-in throttle); None when this node counts alone.
    shared_counters: Any | None = None
    # Called when the bus lost events and is back (the node catches its sockets up from MongoDB), and on
    # every failed bus command (counted as backend errors). An in-process bus never calls them.
    on_reconnect: list[Callable[[], None]] = field(default_factory=list)
    on_error: list[Callable[[], None]] = field(default_factory=list)
    # Called when this node publishes again after publishes failed, on a Redis Cluster (where other nodes'
    # subscribers may have resubscribed before those publishes failed, and not caught them up).
    on_publish_restored: list[Callable[[], None]] = field(default_factory=list)


def node_name(settings: Settings) -> str:
    """This node's name in presence keys and logs."""
    return settings.node_id or f"{socket.gethostname()}:{settings.port}:{os.getpid()}"


def uses_redis(redis_url: str) -> bool:
    """False for an empty URL (a single node); True for a Redis URL; ValueError for anything else."""
    if not redis_url:
        return False
    scheme = urlsplit(redis_url).scheme
    if scheme not in REDIS_SCHEMES:
        # The URL itself is not repeated: it may hold a password.
        raise ValueError(f"REDIS_URL must start with redis://, rediss:// or unix://, not {scheme or 'no scheme'!r}")
    return True


async def build_backends(settings: Settings) -> Backends:
    if not uses_redis(settings.redis_url):
        bus: Bus = InProcessBus()
        notifications = LocalNotificationLog(bus, settings.notification_retention_s, settings.notification_max_per_user)
        return Backends(bus=bus, presence=PresenceStore(), rates=LocalRateCounters(), notifications=notifications)
    cluster = await detect_cluster(settings.redis_url)
    if cluster is None:
        log.error(
            "Redis did not answer within %.0f s: this node assumes a single Redis; restart it once Redis "
            "answers if REDIS_URL names a Redis Cluster",
            DETECT_DEADLINE_S,
        )
    if cluster:
        log.info("REDIS_URL names a Redis Cluster: sharded pub/sub, one subscriber connection per shard")
        cluster_bus = ClusterBus(settings.redis_url, settings.redis_prefix)
        bus = cluster_bus
        publish_restored = cluster_bus.on_publish_restored
    else:
        bus = RedisBus(settings.redis_url, settings.redis_prefix)
        publish_restored = []
    presence = RedisPresenceStore(
        bus.redis,
        node_id=node_name(settings),
        prefix=settings.redis_prefix,
        ttl_s=settings.presence_ttl_s,
        heartbeat_s=settings.heartbeat_interval_s,
        hand_over_grace_s=settings.presence_hand_over_grace_s,
    )
    return Backends(
        bus=bus,
        presence=presence,
        rates=RedisRateCounters(bus.redis, settings.redis_prefix),
        message_budget=SharedBudget(
            bus.redis, settings.redis_prefix, "messages", settings.message_rate, settings.message_burst
        )
        if settings.message_budget_shared
        else None,
        notifications=RedisNotificationLog(
            bus, bus.redis, settings.redis_prefix, settings.notification_retention_s, settings.notification_max_per_user
        ),
        shared_counters=bus.redis,
        on_reconnect=bus.on_reconnect,
        on_error=bus.on_error,
        on_publish_restored=publish_restored,
    )
