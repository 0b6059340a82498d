"""Discovery, likes, passes, matches, unmatch and blocks."""

from __future__ import annotations

from services.config import Settings
from services.events import Publisher
from services.store import Store
from services.users import UserService


class MatchingService:
    def __init__(self, store: Store, users: UserService, events: Publisher, settings: Settings) -> None:
        self._store = store
        self._users = users
        self._events = events
        self._settings = settings
