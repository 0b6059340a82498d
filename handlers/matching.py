"""Discovery, likes, passes, matches and blocks over REST."""

from __future__ import annotations

from typing import Any

from handlers.base import BaseHandler
from handlers.contract import Query, Reply, Tag, int_query, operation
from handlers.responses import (
    BlockAnswer,
    BlockEntry,
    DiscoverPage,
    LikeAnswer,
    Match,
    PassAnswer,
    ReceivedLikesPage,
)
from handlers.schemas import UserRef
from services.core import errors
from services.matching.location import spend_discover_budget
from services.matching.service import DEFAULT_MAX_DISTANCE_KM, MAX_CURSOR_CHARS

DEFAULT_PAGE = 20
MAX_PAGE = 50
MAX_DISTANCE_KM = 20_000  # half the Earth's circumference: beyond it the filter filters nothing
DEFAULT_LIST = 100
MAX_LIST = 500

API_TAG = Tag("matching", "Discover, likes, passes, matches and blocks")
PAGE = int_query("limit", 1, MAX_PAGE, DEFAULT_PAGE, "Page size.")
LIST = int_query("limit", 1, MAX_LIST, DEFAULT_LIST, "Most to return.")
CURSOR = Query(
    "cursor",
    "`next_cursor` of the previous page (opaque); absent for the first page.",
    {"type": "string", "maxLength": MAX_CURSOR_CHARS, "pattern": "^[A-Za-z0-9_-]*$"},
)


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
    @operation(
        "discover",
        query=(
            PAGE,
            CURSOR,
            int_query(
                "max_distance_km", 1, MAX_DISTANCE_KM, DEFAULT_MAX_DISTANCE_KM, "Radius of the distance-ordered part."
            ),
        ),
        responses={200: Reply("A page of candidates.", DiscoverPage)},
        errors=(404, 503),
        notes={
            400: "`invalid_cursor` or a parameter out of range.",
            429: "`rate_limited`: the discover budget (DISCOVER_PER_10_MIN, DISCOVER_PER_DAY) is spent.",
        },
    )
    async def get(self) -> None:
        """Candidates to like or pass.

        Nearest first within `max_distance_km` when the viewer has a location, then newest accounts; never
        oneself, anyone liked, passed, matched or blocked either way.
        """
        viewer_id = self.require_user()
        limit = self.page_limit(DEFAULT_PAGE, MAX_PAGE)
        max_km = self.int_argument("max_distance_km", DEFAULT_MAX_DISTANCE_KM, low=1, high=MAX_DISTANCE_KM)
        assert max_km is not None
        await spend_discover_budget(self.services.rates, self.services.settings, viewer_id)
        page = await self.services.matching.discover(
            viewer_id, limit=limit, cursor=self.cursor_argument(), max_distance_km=max_km
        )
        self.send_json(page)


class LikesHandler(MatchingHandler):
    @operation(
        "like",
        body=UserRef,
        responses={
            201: Reply("Liked.", LikeAnswer),
            200: Reply("Already liked: the same answer, nothing changed.", LikeAnswer),
        },
        errors=(503,),
        notes={
            400: "`self_target` or invalid fields.",
            404: "`user_not_found` (also for a block either way).",
            429: "`like_quota_exceeded`: the daily like quota is used up.",
        },
    )
    async def post(self) -> None:
        """Like someone; a mutual like makes a match and its conversation."""
        viewer_id = self.require_user()
        body = self.json_body(UserRef)
        self.send_created(*await self.services.matching.like(viewer_id, body.user_id))


class LikesReceivedHandler(MatchingHandler):
    @operation(
        "likesReceived", query=(PAGE, CURSOR), responses={200: Reply("Newest first.", ReceivedLikesPage)}, errors=(503,)
    )
    async def get(self) -> None:
        """Who liked me and is not matched, passed or blocked."""
        viewer_id = self.require_user()
        limit = self.page_limit(DEFAULT_PAGE, MAX_PAGE)
        self.send_json(
            await self.services.matching.likes_received(viewer_id, limit=limit, cursor=self.cursor_argument())
        )


class PassesHandler(MatchingHandler):
    @operation(
        "pass",
        body=UserRef,
        responses={201: Reply("Passed.", PassAnswer), 200: Reply("Already passed.", PassAnswer)},
        errors=(503,),
        notes={404: "`user_not_found`."},
    )
    async def post(self) -> None:
        """Pass on someone (hidden from discover and likes received)."""
        viewer_id = self.require_user()
        body = self.json_body(UserRef)
        self.send_created(*await self.services.matching.pass_user(viewer_id, body.user_id))


class MatchesHandler(MatchingHandler):
    @operation("listMatches", query=(LIST,), responses={200: Reply("Matches.", list[Match])}, errors=(503,))
    async def get(self) -> None:
        """Active matches, newest first."""
        viewer_id = self.require_user()
        limit = self.page_limit(DEFAULT_LIST, MAX_LIST)
        self.send_json(await self.services.matching.matches(viewer_id, limit=limit))


class MatchHandler(MatchingHandler):
    @operation(
        "unmatch",
        path={"match_id": "The match's id."},
        responses={204: Reply("Unmatched (also when it already was).")},
        errors=(503,),
        notes={404: "`match_not_found`."},
    )
    async def delete(self, match_id: str) -> None:
        """Unmatch: the conversation closes (its sockets get 4001)."""
        viewer_id = self.require_user()
        await self.services.matching.unmatch(viewer_id, int(match_id))
        self.set_status(204)
        self.finish()


class BlocksHandler(MatchingHandler):
    @operation("listBlocks", query=(LIST,), responses={200: Reply("Blocks.", list[BlockEntry])}, errors=(503,))
    async def get(self) -> None:
        """Users I blocked, newest first."""
        viewer_id = self.require_user()
        limit = self.page_limit(DEFAULT_LIST, MAX_LIST)
        self.send_json(await self.services.matching.blocks(viewer_id, limit=limit))

    @operation(
        "block",
        body=UserRef,
        responses={201: Reply("Blocked.", BlockAnswer), 200: Reply("Already blocked.", BlockAnswer)},
        errors=(404, 503),
        notes={400: "`self_target` or invalid fields."},
    )
    async def post(self) -> None:
        """Block someone (also unmatches)."""
        viewer_id = self.require_user()
        body = self.json_body(UserRef)
        self.send_created(*await self.services.matching.block(viewer_id, body.user_id))


class BlockHandler(MatchingHandler):
    @operation(
        "unblock",
        path={"user_id": "The blocked user's id."},
        responses={204: Reply("Not blocked any more.")},
        errors=(503,),
    )
    async def delete(self, user_id: str) -> None:
        """Unblock (a match it ended stays ended)."""
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
