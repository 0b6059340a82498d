"""The services of one node, built once at start-up and handed to every handler."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.auth import PasswordHasher, TokenService
from services.bus import Bus, InProcessBus
from services.config import Settings
from services.events import Publisher
from services.matching import MatchingService
from services.media import MediaStore
from services.store import STORE_DOWN_ERRORS, Store
from services.users import UserService

log = logging.getLogger("chat.services")


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
    extras: dict[str, Any] = field(default_factory=dict)

    async def readiness(self) -> dict[str, bool]:
        checks: dict[str, bool] = {}
        try:
            await self.store.ping()
            checks["mongodb"] = True
        except STORE_DOWN_ERRORS:
            checks["mongodb"] = False
        return checks

    async def close(self) -> None:
        await self.bus.close()
        await self.store.close()
        self.hasher.close()


async def build_services(settings: Settings, mongodb_url: str) -> Services:
    store = Store(
        mongodb_url,
        settings.mongodb_database,
        timeout_ms=settings.mongodb_timeout_ms,
        id_block_size=settings.id_block_size,
    )
    await store.ensure_indexes()
    hasher = PasswordHasher(settings.hash_concurrency)
    tokens = TokenService(
        store,
        jwt_secret(settings),
        access_ttl_s=settings.access_token_ttl_s,
        refresh_ttl_s=settings.refresh_token_ttl_s,
    )
    media = MediaStore(Path(settings.data_dir) / "media", public_base(settings), settings.max_upload_bytes)
    users = UserService(store, hasher, tokens, media, min_age=settings.min_age)
    bus: Bus = InProcessBus()
    await bus.start()
    events = Publisher(bus)
    return Services(
        settings=settings,
        store=store,
        hasher=hasher,
        tokens=tokens,
        media=media,
        users=users,
        bus=bus,
        events=events,
        matching=MatchingService(store, users, events, settings),
    )
