"""Settings: every knob of the server, read once from the environment at start-up.

Each field carries its environment variable name and a one-line description in its metadata, so that
`python server.py --help` and the README table are generated from one place and cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class SettingError(ValueError):
    """A refused setting, naming its environment variable (for the log line that stops the node)."""

    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


def _knob(default: Any, env: str, help: str) -> Any:
    return field(default=default, metadata={"env": env, "help": help})


MAX_NOTIFICATIONS_KEPT = 10_000


@dataclass(frozen=True)
class Settings:
    host: str = _knob("127.0.0.1", "HOST", "Interface to listen on")
    port: int = _knob(8888, "PORT", "TCP port to listen on")
    listen_backlog: int = _knob(
        4096,
        "LISTEN_BACKLOG",
        "Connections the kernel queues before the node accepts them (a restarted node's reconnect storm; "
        "capped by net.core.somaxconn)",
    )
    data_dir: str = _knob(
        "./data", "DATA_DIR", "Directory for the embedded database and dev secrets (media are in MongoDB)"
    )
    metrics_port: int = _knob(
        0, "METRICS_PORT", "Port of a second listener that serves only /metrics (0: none; /metrics is on PORT too)"
    )
    metrics_host: str = _knob(
        "127.0.0.1",
        "METRICS_HOST",
        "Interface of the METRICS_PORT listener: a private address lets a central Prometheus scrape "
        "(in production, anything but loopback requires METRICS_TOKEN)",
    )
    metrics_token: str = _knob(
        "", "METRICS_TOKEN", "When set, /metrics answers only requests with `Authorization: Bearer <token>`"
    )
    environment: str = _knob(
        "development",
        "ENVIRONMENT",
        "`development` or `production` (production refuses to start without JWT_SECRET, and without "
        "MONGODB_URL or REDIS_URL unless SINGLE_NODE)",
    )
    mongodb_url: str = _knob("", "MONGODB_URL", "MongoDB URL; empty starts the embedded MongoDB-compatible server")
    mongodb_database: str = _knob("chat", "MONGODB_DATABASE", "Database name")
    mongodb_timeout_ms: int = _knob(
        2000,
        "MONGODB_TIMEOUT_MS",
        "Longest one MongoDB call may take, server selection, connecting and retries included: past it the "
        "request fails with 503 `unavailable` (a frame with an `unavailable` error)",
    )
    redis_url: str = _knob(
        "",
        "REDIS_URL",
        "Redis URL (a Redis, or any node of a Redis Cluster); empty runs a single node with an in-process bus",
    )
    single_node: bool = _knob(
        False,
        "SINGLE_NODE",
        "`true` lets a production node run alone: with an empty MONGODB_URL (embedded) or REDIS_URL (in-process)",
    )
    redis_prefix: str = _knob("chat:", "REDIS_PREFIX", "Prefix of every Redis key and channel (to share a Redis)")
    presence_ttl_s: float = _knob(30.0, "PRESENCE_TTL", "Seconds a node's presence entries live without a heartbeat")
    heartbeat_interval_s: float = _knob(
        10.0, "HEARTBEAT_INTERVAL", "Seconds between a node's presence heartbeats and dead-node sweeps"
    )
    presence_hand_over_grace_s: float = _knob(
        15.0,
        "PRESENCE_HAND_OVER_GRACE",
        "Seconds a stopping node's users stay online for their clients to reconnect (0: offline at once; "
        "at most PRESENCE_TTL - HEARTBEAT_INTERVAL)",
    )
    node_id: str = _knob("", "NODE_ID", "Name of this node in presence keys and logs; empty picks host:port:pid")
    jwt_secret: str = _knob(
        "", "JWT_SECRET", "HMAC key for tokens; empty in development generates one kept in DATA_DIR/jwt_secret"
    )
    access_token_ttl_s: int = _knob(15 * 60, "ACCESS_TOKEN_TTL", "Access token lifetime, seconds")
    refresh_token_ttl_s: int = _knob(7 * 24 * 3600, "REFRESH_TOKEN_TTL", "Refresh token lifetime, seconds")
    refresh_reuse_grace_s: float = _knob(
        10.0,
        "REFRESH_REUSE_GRACE",
        "Seconds after its rotation a refresh token may be used once more as a lost answer's retry (a page "
        "reloaded mid-refresh) instead of revoking its session; 0: any reuse revokes",
    )
    socket_token_grace_s: float = _knob(
        30.0,
        "SOCKET_TOKEN_GRACE",
        "Seconds a socket stays open after its access token expired, for an `auth` frame to renew it (then 4004)",
    )
    public_url: str = _knob(
        "",
        "PUBLIC_URL",
        "Base of absolute media URLs (https://chat.example.com); empty: http://HOST:PORT, localhost for loopback",
    )
    log_format: str = _knob("json", "LOG_FORMAT", "`json` (one object per line) or `text`")
    log_level: str = _knob("INFO", "LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR")
    shutdown_timeout_s: float = _knob(
        10.0, "SHUTDOWN_TIMEOUT", "Seconds a SIGTERM'd node takes at most to close sockets and finish writes"
    )
    max_body_bytes: int = _knob(64 * 1024, "MAX_BODY_BYTES", "Largest JSON request body")
    max_header_bytes: int = _knob(
        64 * 1024, "MAX_HEADER_BYTES", "Largest request head (request line and headers); larger: 431, then close"
    )
    max_frame_bytes: int = _knob(64 * 1024, "MAX_FRAME_BYTES", "Largest WebSocket frame accepted (larger: close 1009)")
    max_content_chars: int = _knob(4000, "MAX_CONTENT_CHARS", "Longest message text, in characters")
    message_rate: float = _knob(
        5.0,
        "MESSAGE_RATE",
        "Messages per second per user, sustained (socket and REST sends; with Redis, across all nodes)",
    )
    message_burst: int = _knob(20, "MESSAGE_BURST", "Messages a user may send at once before MESSAGE_RATE applies")
    message_budget_shared: bool = _knob(
        True,
        "MESSAGE_BUDGET_SHARED",
        "With Redis, one MESSAGE_RATE budget per user across all nodes; `false`: each node limits alone",
    )
    message_edit_window_s: float = _knob(
        900.0, "MESSAGE_EDIT_WINDOW", "Seconds a sender may edit a message after sending it (unsend has no time limit)"
    )
    frame_rate: float = _knob(20.0, "FRAME_RATE", "Frames per second per socket, sustained")
    frame_burst: int = _knob(60, "FRAME_BURST", "Frames a socket may send at once before FRAME_RATE applies")
    rate_strikes_to_close: int = _knob(
        20, "RATE_STRIKES_TO_CLOSE", "Rate-limited frames on one socket within a minute before it is closed 1008"
    )
    max_sockets_per_user: int = _knob(
        20, "MAX_SOCKETS_PER_USER", "WebSockets one user may hold (or have opening) on one node"
    )
    max_conversation_sockets_per_user: int = _knob(
        10, "MAX_CONVERSATION_SOCKETS_PER_USER", "Conversation sockets one user may hold on one node"
    )
    join_concurrency: int = _knob(
        1024, "JOIN_CONCURRENCY", "Sockets a node opens at once (each waits on the store); more wait in JOIN_QUEUE"
    )
    join_queue: int = _knob(
        20_000,
        "JOIN_QUEUE",
        "Sockets waiting to open past JOIN_CONCURRENCY; one more is closed 1013 at once (a reconnect storm)",
    )
    max_sockets_per_node: int = _knob(
        50_000, "MAX_SOCKETS_PER_NODE", "WebSockets this node accepts in all (lowered at start to fit the file limit)"
    )
    outbound_buffer_bytes: int = _knob(
        1024 * 1024, "OUTBOUND_BUFFER_BYTES", "Unsent bytes a socket may owe before it is closed as a slow consumer"
    )
    notification_retention_s: float = _knob(
        86400.0,
        "NOTIFICATION_RETENTION",
        "Seconds a notification is kept for notifications sockets that resume with `?after=` (older: truncated)",
    )
    notification_max_per_user: int = _knob(
        200, "NOTIFICATION_MAX_PER_USER", "Notifications kept per user for resuming sockets (the newest ones)"
    )
    typing_timeout_s: float = _knob(8.0, "TYPING_TIMEOUT", "Seconds of silence before a typist is reported stopped")
    ping_interval_s: float = _knob(25.0, "PING_INTERVAL", "Seconds between WebSocket pings (one loop per node)")
    hole_timeout_s: float = _knob(
        3.0, "HOLE_TIMEOUT", "Seconds a missing message id may stay missing before readers skip it as a hole"
    )
    last_seen_delay_s: float = _knob(
        2.0,
        "LAST_SEEN_DELAY",
        "Seconds before an offline user's last_seen is written; one back online by then needs none (a reconnect)",
    )
    metadata_interval_s: float = _knob(
        1.0,
        "METADATA_INTERVAL",
        "Seconds between writes of conversations' last id, order and senders' read pointers while messages keep coming",
    )
    allowed_origins: str = _knob(
        "",
        "ALLOWED_ORIGINS",
        "Comma-separated WebSocket Origins allowed besides the own host (and localhost in development); `*` allows any",
    )
    max_upload_bytes: int = _knob(5 * 1024 * 1024, "MAX_UPLOAD_BYTES", "Largest picture or attachment upload")
    image_max_side: int = _knob(
        2048, "IMAGE_MAX_SIDE", "Longest side of a stored image, pixels (larger ones are scaled down)"
    )
    image_thumbnail_sides: str = _knob(
        "128,512", "IMAGE_THUMBNAIL_SIDES", "Comma-separated longest sides of the thumbnails made of every image"
    )
    image_max_pixels: int = _knob(
        25_000_000, "IMAGE_MAX_PIXELS", "Most pixels (width x height) an uploaded image may declare; more: 400"
    )
    image_concurrency: int = _knob(2, "IMAGE_CONCURRENCY", "Images a node decodes and re-encodes at once (threads)")
    max_profile_photos: int = _knob(6, "MAX_PROFILE_PHOTOS", "Photos one profile may hold")
    media_quota_bytes: int = _knob(
        100 * 1024 * 1024, "MEDIA_QUOTA_BYTES", "Bytes of photos and attachments one user may keep stored; 0: no limit"
    )
    uploads_per_hour: int = _knob(
        30, "UPLOADS_PER_HOUR", "Photo and attachment uploads per user per hour (a burst, then 429); 0: no limit"
    )
    unsent_attachment_ttl_s: float = _knob(
        86400.0, "UNSENT_ATTACHMENT_TTL", "Seconds an attachment never sent in a message is kept before it is removed"
    )
    deletion_sweep_interval_s: float = _knob(
        300.0,
        "DELETION_SWEEP_INTERVAL",
        "Seconds between a node's checks for account deletions left unfinished (pending over a minute)",
    )
    exports_per_day: int = _knob(3, "EXPORTS_PER_DAY", "Data exports (GET /api/users/me/export/) per user per day")
    media_sweep_interval_s: float = _knob(
        600.0, "MEDIA_SWEEP_INTERVAL", "Seconds between a node's sweeps for attachments past UNSENT_ATTACHMENT_TTL"
    )
    max_password_chars: int = _knob(128, "MAX_PASSWORD_CHARS", "Longest password accepted (checked before hashing)")
    hash_concurrency: int = _knob(2, "HASH_CONCURRENCY", "Password hashes computed at once (each takes 19 MiB)")
    login_failures_per_account: int = _knob(
        10, "LOGIN_FAILURES_PER_ACCOUNT", "Failed sign-ins for one username per LOGIN_WINDOW, then 429; 0: no limit"
    )
    login_failures_per_ip: int = _knob(
        50,
        "LOGIN_FAILURES_PER_IP",
        "Failed sign-ins (and sign-ups of taken names) from one IP (IPv6: one /64) per LOGIN_WINDOW, then 429",
    )
    login_window_s: float = _knob(
        900.0, "LOGIN_WINDOW", "Seconds over which failed sign-ins are counted (in Redis when set, else per node)"
    )
    signups_per_ip: int = _knob(
        10,
        "SIGNUPS_PER_IP",
        "Accounts one IP (IPv6: one /64) may create per SIGNUP_WINDOW (a burst, then 429); 0: no limit",
    )
    signup_window_s: float = _knob(3600.0, "SIGNUP_WINDOW", "Seconds over which SIGNUPS_PER_IP applies")
    profile_reads_per_minute: int = _knob(
        300, "PROFILE_READS_PER_MINUTE", "Other people's profiles one user may read per minute (then 429); 0: no limit"
    )
    id_block_size: int = _knob(50, "ID_BLOCK_SIZE", "Integer ids reserved per database round trip")
    min_age: int = _knob(18, "MIN_AGE", "Youngest age allowed on a profile")
    trusted_proxies: str = _knob(
        "", "TRUSTED_PROXIES", "Comma-separated proxy IPs whose X-Forwarded-For / X-Real-IP is believed"
    )
    like_quota_per_day: int = _knob(
        1000, "LIKE_QUOTA_PER_DAY", "New likes one user may send per UTC day (then 429); 0 means no limit"
    )
    location_grid_m: float = _knob(
        1000.0,
        "LOCATION_GRID_M",
        "Side of the grid cells stored locations are snapped to, metres (see docs/security.md)",
    )
    location_offset_min_m: float = _knob(
        1500.0,
        "LOCATION_OFFSET_MIN_M",
        "Shortest secret per-user offset applied before snapping, metres (above LOCATION_GRID_M x 0.71)",
    )
    location_offset_max_m: float = _knob(
        1800.0, "LOCATION_OFFSET_MAX_M", "Longest secret per-user offset applied before snapping, metres"
    )
    location_changes_per_day: int = _knob(
        10, "LOCATION_CHANGES_PER_DAY", "Changes of one's stored location per 24 h (a burst, then 429); 0: no limit"
    )
    discover_per_10_min: int = _knob(
        60, "DISCOVER_PER_10_MIN", "Discover requests per user per 10 minutes (then 429); 0: no limit"
    )
    discover_per_day: int = _knob(
        600, "DISCOVER_PER_DAY", "Discover requests per user per 24 h (then 429); 0: no limit"
    )
    reports_per_day: int = _knob(
        20, "REPORTS_PER_DAY", "Reports one user may file per 24 h (a burst, then 429); 0: no limit"
    )
    report_retention_days: int = _knob(
        180,
        "REPORT_RETENTION_DAYS",
        "Days a resolved report, with the messages copied into it, is kept after its resolution",
    )
    push_grace_s: float = _knob(
        5.0, "PUSH_GRACE_DELAY", "Seconds a push waits; none is sent if the user came online or read meanwhile"
    )
    push_window_s: float = _knob(
        60.0, "PUSH_COALESCE_WINDOW", "Seconds between two pushes of one conversation (or of likes) to one user"
    )
    push_preview_chars: int = _knob(
        0, "PUSH_PREVIEW_CHARS", "Characters of message text (and the sender's name) in a push; 0: no text"
    )
    push_max_devices: int = _knob(10, "PUSH_MAX_DEVICES", "Push targets (browsers, phones) one user may register")
    push_max_attempts: int = _knob(5, "PUSH_MAX_ATTEMPTS", "Tries of one push to one device before it is dropped")
    push_retry_base_s: float = _knob(
        5.0, "PUSH_RETRY_BASE", "Seconds before the first retry of a failed push; doubled at each retry"
    )
    push_retry_max_s: float = _knob(600.0, "PUSH_RETRY_MAX", "Longest wait between two retries of a push, seconds")
    push_timeout_s: float = _knob(10.0, "PUSH_TIMEOUT", "Seconds a push service or webhook has to answer one push")
    push_lease_s: float = _knob(
        60.0, "PUSH_LEASE", "Seconds a node owns a push it claimed; then another node may retry it (> PUSH_TIMEOUT)"
    )
    push_poll_interval_s: float = _knob(
        5.0, "PUSH_POLL_INTERVAL", "Seconds between a node's looks for pushes queued by other or restarted nodes"
    )
    push_concurrency: int = _knob(16, "PUSH_CONCURRENCY", "Pushes one node sends at once")
    push_ttl_s: int = _knob(86400, "PUSH_TTL", "Seconds a push service keeps a push for a device that is offline")
    push_webpush_allowed_hosts: str = _knob(
        "fcm.googleapis.com,push.services.mozilla.com,notify.windows.com,push.apple.com",
        "PUSH_WEBPUSH_ALLOWED_HOSTS",
        "Comma-separated push service hosts (and their subdomains) Web Push endpoints may name; `*` allows any",
    )
    push_webpush_allowed_ports: str = _knob(
        "", "PUSH_WEBPUSH_ALLOWED_PORTS", "Comma-separated ports Web Push endpoints may name besides 443 (https's own)"
    )
    push_allow_insecure: bool = _knob(
        False, "PUSH_ALLOW_INSECURE", "Accept http:// push endpoints on 127.0.0.1/localhost (tests, development)"
    )
    push_webhook_allowed_prefixes: str = _knob(
        "",
        "PUSH_WEBHOOK_ALLOWED_PREFIXES",
        "Comma-separated URL prefixes webhook devices may use (your FCM/APNs gateway); empty: no webhooks",
    )
    push_webhook_secret: str = _knob(
        "", "PUSH_WEBHOOK_SECRET", "HMAC-SHA256 key of webhooks' X-Chat-Signature (32+ characters; needed for webhooks)"
    )
    vapid_private_key: str = _knob(
        "",
        "VAPID_PRIVATE_KEY",
        "Web Push signing key (base64url P-256 scalar or PEM); empty in development: generated in DATA_DIR",
    )
    vapid_public_key: str = _knob(
        "", "VAPID_PUBLIC_KEY", "Its public key (base64url); optional, checked against VAPID_PRIVATE_KEY when set"
    )
    vapid_subject: str = _knob(
        "", "VAPID_SUBJECT", "Contact for push services: mailto: or https: URL; empty: PUBLIC_URL if https"
    )
    enable_echo_route: bool = _knob(
        False,
        "ENABLE_ECHO_ROUTE",
        "Serve the unauthenticated /ws/echo/ socket for protocol conformance runs; never in production",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from `env` (default: os.environ), then apply keyword overrides (CLI flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.environment not in ("development", "production"):
            raise ValueError("ENVIRONMENT must be `development` or `production`")
        if self.environment == "production" and not self.jwt_secret:
            raise ValueError("JWT_SECRET is required when ENVIRONMENT=production")
        if self.log_format not in ("json", "text"):
            raise ValueError("LOG_FORMAT must be `json` or `text`")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
        if self.jwt_secret and len(self.jwt_secret) < 32:
            raise ValueError("JWT_SECRET must be at least 32 characters")
        self._require_shared_backends()
        self._protect_metrics()
        if self.environment == "production" and self.enable_echo_route:
            raise ValueError("ENABLE_ECHO_ROUTE is for conformance runs and is refused when ENVIRONMENT=production")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int, "float", float) and value < 0:
                raise ValueError(f"{f.metadata['env']} must not be negative")
        self._validate_relations()
        self._validate_push()

    def _validate_relations(self) -> None:
        for name in ("join_concurrency", "listen_backlog"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.upper()} must be at least 1")
        if self.location_offset_min_m <= self.location_grid_m / math.sqrt(2):
            raise ValueError("LOCATION_OFFSET_MIN_M must exceed half the diagonal of a LOCATION_GRID_M cell")
        if self.location_offset_max_m < self.location_offset_min_m:
            raise ValueError("LOCATION_OFFSET_MAX_M must not be below LOCATION_OFFSET_MIN_M")
        if not 1 <= self.notification_max_per_user <= MAX_NOTIFICATIONS_KEPT:
            # A resuming socket is sent all of them at once: the bound keeps that one answer bounded.
            raise ValueError(f"NOTIFICATION_MAX_PER_USER must be between 1 and {MAX_NOTIFICATIONS_KEPT}")

    def _require_shared_backends(self) -> None:
        """A production node shares its store and its bus: an empty URL (a typo, a missing env file line)
        would give it a database of its own, or make it an island, without a word."""
        if self.environment != "production" or self.single_node:
            return
        for name in ("MONGODB_URL", "REDIS_URL"):
            if not getattr(self, name.lower()):
                raise SettingError(
                    f"{name} is required when ENVIRONMENT=production; set SINGLE_NODE=true to run one node alone "
                    "(embedded MongoDB when MONGODB_URL is empty, in-process bus and presence when REDIS_URL is)",
                    setting=name,
                )

    def _protect_metrics(self) -> None:
        """Metrics tell who is connected and how the node fares: a listener anyone on the network can read
        must ask for a token."""
        loopback = self.metrics_host in ("127.0.0.1", "::1", "localhost")
        if self.environment == "production" and self.metrics_port and not loopback and not self.metrics_token:
            raise SettingError(
                "METRICS_TOKEN is required when METRICS_HOST is not a loopback address in production",
                setting="METRICS_TOKEN",
            )

    def _validate_push(self) -> None:
        from services.push.delivery import check_push_settings

        check_push_settings(self)

    @property
    def allowed_origin_set(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/").lower() for o in self.allowed_origins.split(",") if o.strip())

    @property
    def trusted_proxy_set(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.trusted_proxies.split(",") if p.strip())

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(env var, default, description) for every knob: the source of --help and the README table."""
        return [(f.metadata["env"], repr(f.default), f.metadata["help"]) for f in dataclasses.fields(cls)]


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return raw.strip().lower() in ("1", "true", "yes", "on")
    except ValueError:
        raise ValueError(f"{f.metadata['env']} must be a {kind}, got {raw!r}") from None
    return raw
