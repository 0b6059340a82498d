"""Discovery, likes, passes, matches and blocks over REST."""

from __future__ import annotations

from typing import Any

from handlers.base import BaseHandler
from handlers.schemas import UserRef
from services.core import errors
from services.matching.service import DEFAULT_MAX_DISTANCE_KM, MAX_CURSOR_CHARS

DEFAULT_PAGE = 20
MAX_PAGE = 50
MAX_DISTANCE_KM = 20_000  # half the Earth's circumference: beyond it the filter filters nothing
DEFAULT_LIST = 100
MAX_LIST = 500


class MatchingHandler(BaseHandler):
    def cursor_argument(self) -> str | None:
        cursor = self.get_query_argument("cursor", None) or None
        if cursor is not None and len(cursor) > MAX_CURSOR_CHARS:
            raise errors.Invalid("Invalid cursor", code="invalid_cursor", fields={"cursor": "too long"})
        return cursor

    def page_limit(self, default: int, high: int) -> int:
        limit = self.int_argument("limit", default, low=1, high=high)
        assert limit is not None
        return limit

    def send_created(self, answer: Any, created: bool) -> None:
        self.send_json(answer, status=201 if created else 200)


class DiscoverHandler(MatchingHandler):
    async def get(self) -> None:
        viewer_id = self.require_user()
        limit = self.page_limit(DEFAULT_PAGE, MAX_PAGE)
        max_km = self.int_argument("max_distance_km", DEFAULT_MAX_DISTANCE_KM, low=1, high=MAX_DISTANCE_KM)
        assert max_km is not None
        page = await self.services.matching.discover(
            viewer_id, limit=limit, cursor=self.cursor_argument(), max_distance_km=max_km
        )
        self.send_json(page)


class LikesHandler(MatchingHandler):
    async def post(self) -> None:
        viewer_id = self.require_user()
        body = self.json_body(UserRef)
        self.send_created(*await self.services.matching.like(viewer_id, body.user_id))


class LikesReceivedHandler(MatchingHandler):
    async def get(self) -> None:
        viewer_id = self.require_user()
        limit = self.page_limit(DEFAULT_PAGE, MAX_PAGE)
        self.send_json(
            await self.services.matching.likes_received(viewer_id, limit=limit, cursor=self.cursor_argument())
        )


class PassesHandler(MatchingHandler):
    async def post(self) -> None:
        viewer_id = self.require_user()
        body = self.json_body(UserRef)
        self.send_created(*await self.services.matching.pass_user(viewer_id, body.user_id))


class MatchesHandler(MatchingHandler):
    async def get(self) -> None:
        viewer_id = self.require_user()
        limit = self.page_limit(DEFAULT_LIST, MAX_LIST)
        self.send_json(await self.services.matching.matches(viewer_id, limit=limit))


class MatchHandler(MatchingHandler):
    async def delete(self, match_id: str) -> None:
        viewer_id = self.require_user()
        await self.services.matching.unmatch(viewer_id, int(match_id))
        self.set_status(204)
        self.finish()


class BlocksHandler(MatchingHandler):
    async def get(self) -> None:
        viewer_id = self.require_user()
        limit = self.page_limit(DEFAULT_LIST, MAX_LIST)
        self.send_json(await self.services.matching.blocks(viewer_id, limit=limit))

    async def post(self) -> None:
        viewer_id = self.require_user()
        body = self.json_body(UserRef)
        self.send_created(*await self.services.matching.block(viewer_id, body.user_id))


class BlockHandler(MatchingHandler):
    async def delete(self, user_id: str) -> None:
        viewer_id = self.require_user()
        await self.services.matching.unblock(viewer_id, int(user_id))
        self.set_status(204)
        self.finish()


routes: list[tuple[str, Any]] = [
    (r"/api/discover/", DiscoverHandler),
    (r"/api/likes/", LikesHandler),
    (r"/api/likes/received/", LikesReceivedHandler),
    (r"/api/passes/", PassesHandler),
    (r"/api/matches/", MatchesHandler),
    (r"/api/matches/([0-9]{1,15})/", MatchHandler),
    (r"/api/blocks/", BlocksHandler),
    (r"/api/blocks/([0-9]{1,15})/", BlockHandler),
]
