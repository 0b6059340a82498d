"""Discovery, likes, passes, matches, unmatch and blocks.

The rules a client sees are in docs/matching.md. This module is about how they hold up under load and
under races.

Exactly one match per pair. Whichever like request finds the reciprocal like inserts the match; with two
nodes both requests may find it at the same instant, and the unique index on `matches.pair` lets exactly
one insert win. The winner's document names the conversation id it reserved, and the conversation is an
upsert on that id, so anyone who later reads the match (the race's loser, the match list, a repeated
like) recreates it if the winner died in between. Only the winner publishes `new_match`.

Bounded discovery. A query on the embedded store walks its whole index range whatever its limit, and a
real MongoDB with a million users would do the same for a query that filters out most of what it reads.
So discovery never asks for "the next N candidates": it reads one bounded window of users through an
index (a run of account ids, or a band of distance buckets around the viewer), filters the viewer's
preferences in the same query, then checks the survivors against likes, passes, blocks and matches with
`$in` lookups on just those ids. A request reads at most a fixed number of windows; a page may therefore
come back short, with a cursor to go on. Nothing here reads the viewer's whole history.

Locations. Every distance here is between stored points, which are coarse (location.py), and what a
client sees of it is a bucket: `distance_km`, the filter radius, the order (bucket, then newest first)
and the cursor (a bucket index and an account id) all say nothing finer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pymongo.errors
from bson import ObjectId
from pymongo import DESCENDING
from pymongo.asynchronous.collection import AsyncCollection

from services.accounts.users import UserService, age_on, has_exact_location, point_of
from services.core import errors
from services.core.clock import iso
from services.core.config import Settings
from services.matching.location import (
    BUCKET_BOUNDS_KM,
    EARTH_RADIUS_M,
    bucket_ceiling_m,
    bucket_floor_m,
    bucket_km,
    bucket_of,
    distance_m,
    radius_bucket,
)
from services.realtime.events import (
    Publisher,
    match_ended_notification,
    new_like_notification,
    new_match_notification,
)
from services.storage.documents import conversation_document
from services.storage.store import Doc, Store

log = logging.getLogger("chat.matching")

DEFAULT_MAX_DISTANCE_KM = 100
# Newest-first windows: runs of this many account ids, at most MAX_WINDOWS per request. The embedded store
# costs about 0.13 ms per id of a window up to ~64 ids and more per id beyond; small windows also read
# fewer ids past the end of a page. On MongoDB a window costs little more than its round trip.
WINDOW_IDS = 32
MAX_WINDOWS = 20
# Nearest-first bands: a band query (some distance buckets, or a run of account ids in one bucket)
# returns at most GEO_CAP candidates; a fuller band is narrowed and asked again, because only a complete
# band can be put in order (see `_nearest`).
GEO_CAP = 200
MAX_GEO_QUERIES = 3
# Our distance and the server's may differ in the last bits; band edges overlap by this much and our own
# distance decides which bucket a candidate is in.
EDGE_M = 0.5
RECEIVED_WINDOW = 100
MAX_RECEIVED_WINDOWS = 5
MAX_CURSOR_CHARS = 256

CANDIDATE_FIELDS = {
    "username": 1,
    "picture": 1,
    "photos": 1,
    "display_name": 1,
    "bio": 1,
    "birthdate": 1,
    "gender": 1,
    "location": 1,
    "location_secret": 1,  # to tell a coarse stored point from an exact one written before coarsening
}


def pair_key(a: int, b: int) -> str:
    low, high = sorted((a, b))
    return f"{low}:{high}"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(value: dt.datetime) -> str:
    text = iso(value)
    assert text is not None
    return text


def _as_date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    return value if isinstance(value, dt.date) else None


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def years_before(day: dt.date, years: int) -> dt.date:
    """The same calendar day `years` earlier; 29 February becomes the 28th in a common year."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)


def preference_filter(viewer: Doc, today: dt.date) -> Doc:
    """The MongoDB filter for candidates whose profile suits the viewer and whose preferences the viewer
    suits. An empty `interested_in` means "anyone"; someone who states no gender (or no birth date)
    cannot satisfy a stated gender (or age) preference. Deleted and banned accounts are nobody's."""
    flt: Doc = {"deleted": {"$ne": True}, "banned": {"$ne": True}}
    wanted = viewer.get("interested_in") or []
    if wanted:
        flt["gender"] = {"$in": list(wanted)}
    gender = viewer.get("gender")
    flt["interested_in"] = {"$in": [gender, [], None] if gender else [[], None]}
    birthdate = _as_date(viewer.get("birthdate"))
    if birthdate is not None:
        age = age_on(birthdate, today)
        flt["age_min"] = {"$not": {"$gt": age}}
        flt["age_max"] = {"$not": {"$lt": age}}
    else:
        flt["age_min"] = None
        flt["age_max"] = None
    born: Doc = {}
    if viewer.get("age_min") is not None:
        born["$lte"] = _midnight(years_before(today, int(viewer["age_min"])))
    if viewer.get("age_max") is not None:
        born["$gt"] = _midnight(years_before(today, int(viewer["age_max"]) + 1))
    if born:
        flt["birthdate"] = born
    return flt


def window_pipeline(ids: list[int], prefs: Doc) -> list[Doc]:
    # The id window comes first and alone so every planner (the embedded one included) serves it from
    # the _id index; the preferences then filter the fetched window.
    return [{"$match": {"_id": {"$in": ids}}}, {"$match": prefs}, {"$project": CANDIDATE_FIELDS}]


def planar_reach_m(point: list[float], high_m: float) -> float:
    """The `$maxDistance` that makes a server whose 2d index pre-selects `$nearSphere` candidates with a
    flat disc of `$maxDistance` degrees (the embedded store does) still find everyone within `high_m`.

    Such a disc misses people east or west of the viewer: a degree of longitude is cos(latitude) of a
    degree of latitude, so someone `high_m` due east is 1/cos(latitude) of the disc's radius away in
    degrees. A disc that much wider holds everyone within `high_m` (at the band's highest latitude); the
    server then also returns people beyond `high_m`, which `_in_band` leaves to their own band."""
    reach_deg = math.degrees(high_m / EARTH_RADIUS_M)
    highest = math.radians(min(89.0, abs(point[1]) + reach_deg))
    return high_m / math.cos(highest)


def nearest_filter(
    prefs: Doc, point: list[float], low_m: float, high_m: float, ids: Doc | None = None, *, planar: bool = False
) -> Doc:
    # `$nearSphere` on the 2d index measures great-circle distances in radians (see users.point_of).
    reach_m = planar_reach_m(point, high_m) if planar else high_m
    near = {"$nearSphere": point, "$minDistance": low_m / EARTH_RADIUS_M, "$maxDistance": reach_m / EARTH_RADIUS_M}
    flt = {**prefs, "location": near}
    if ids is not None:
        flt["_id"] = ids
    return flt


def first_band(max_distance_km: int) -> Doc:
    """The state of a distance-ordered listing's first page: every bucket of the radius in one band."""
    return {"m": "b", "k": 0, "b": 2**53, "n": radius_bucket(max_distance_km) + 1, "w": 0}


def narrower(point: list[float], docs: list[Doc], first: int, last: int, before: int, run: int) -> tuple[int, int]:
    """(buckets per band, ids per band) for a band that overflowed: about a quarter of what came back, as
    the old one held it. From a server that sorts by distance, fewer buckets; from one that returns any
    GEO_CAP of the band, still a sample of it. A single bucket is cut by ids instead."""
    if last > first:
        buckets = sorted(bucket_of(distance_m(point, p)) for d in docs if (p := point_of(d)) is not None)
        quarter = buckets[len(buckets) // 4] if buckets else first
        return max(1, min(quarter, last - 1) - first + 1), run
    newest_first = sorted((int(d["_id"]) for d in docs), reverse=True)
    quarter = newest_first[len(newest_first) // 4]
    return 1, max(1, min(before - quarter, (run or before) // 2))


# -- cursors --------------------------------------------------------------------------------------------


def encode_cursor(state: Doc) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(state)).rstrip(b"=").decode()


def _bad_cursor() -> errors.Invalid:
    return errors.Invalid("Invalid cursor", code="invalid_cursor", fields={"cursor": "not a cursor from this endpoint"})


def decode_cursor(text: str, modes: tuple[str, ...]) -> Doc:
    if len(text) > MAX_CURSOR_CHARS:
        raise _bad_cursor()
    try:
        state = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        raise _bad_cursor() from None
    if not isinstance(state, dict) or state.get("m") not in modes:
        raise _bad_cursor()
    shape: dict[str, dict[str, type]] = {
        "n": {"b": int},
        "x": {"b": int},
        "b": {"k": int, "b": int, "n": int, "w": int},
        "g": {"d": float, "i": int, "w": float},  # distance-ordered cursors of earlier versions
        "r": {"t": int, "o": str},
    }
    for key, kind in shape[state["m"]].items():
        value = state.get(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = state[key] = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _bad_cursor()
        if isinstance(value, int | float) and (not math.isfinite(value) or not 0 <= value <= 2**53):
            raise _bad_cursor()
    if state["m"] == "g" and state["w"] <= 0:
        raise _bad_cursor()
    if state["m"] == "b" and (state["k"] >= len(BUCKET_BOUNDS_KM) or state["n"] < 1):
        raise _bad_cursor()
    if state["m"] == "r" and not ObjectId.is_valid(state["o"]):
        raise _bad_cursor()
    return state


class MatchingService:
    def __init__(
        self,
        store: Store,
        users: UserService,
        events: Publisher,
        settings: Settings,
        *,
        seal_conversation: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._users = users
        self._events = events
        self._settings = settings
        # Stores the closing tombstone after which no message can be stored (ChatService.seal).
        self._seal_conversation = seal_conversation

    # -- discovery ------------------------------------------------------------------------------------

    async def discover(
        self,
        viewer_id: int,
        *,
        limit: int,
        cursor: str | None = None,
        max_distance_km: int = DEFAULT_MAX_DISTANCE_KM,
    ) -> Doc:
        """One page of candidates: `{results: [profile...], next_cursor}`; see docs/matching.md."""
        viewer = await self._users.get(viewer_id)
        prefs = preference_filter(viewer, _utcnow().date())
        point = point_of(viewer)
        state = decode_cursor(cursor, ("n", "b", "g", "x")) if cursor else None
        if state is not None and state["m"] == "g":
            state = None  # ordered by exact distance, by an earlier version: the listing starts again
        # A cursor continues the listing it came from; if the viewer gained or lost a location since,
        # the listing starts again in the mode that now applies.
        if state is None or (state["m"] in ("b", "x")) != (point is not None):
            state = first_band(max_distance_km) if point else None
        results: list[Doc] = []
        next_state: Doc | None
        if point is not None and state is not None and state["m"] == "b":
            last_bucket = radius_bucket(max_distance_km)
            next_state = await self._nearest(viewer_id, point, prefs, state, limit, last_bucket, results)
            if next_state is not None and next_state["m"] == "x" and len(results) < limit:
                next_state = await self._newest(viewer_id, prefs, next_state, limit, results)
        else:
            if state is None:
                state = {"m": "n", "b": await self._top_user_id() + 1}
            next_state = await self._newest(viewer_id, prefs, state, limit, results)
        return {"results": results, "next_cursor": encode_cursor(next_state) if next_state else None}

    async def _top_user_id(self) -> int:
        """Every account id is at most the end of the last block reserved for the `users` sequence."""
        counter = await self._store.counters.find_one({"_id": "users"})
        if counter is not None:
            return int(counter["value"])
        newest = await self._store.users.find_one({}, {"_id": 1}, sort=[("_id", DESCENDING)])
        return int(newest["_id"]) if newest else 0

    async def _newest(self, viewer_id: int, prefs: Doc, state: Doc, limit: int, results: list[Doc]) -> Doc | None:
        """Newest accounts first (ids grow with registration), read WINDOW_IDS ids at a time."""
        mode = state["m"]
        # A forged cursor far above every id would only yield empty pages.
        before = min(int(state["b"]), await self._top_user_id() + 1)
        if mode == "x":
            # After the distance-ordered part: people who share no location, whom no distance excludes.
            prefs = {**prefs, "location": None}
        windows = 0
        while before > 1 and windows < MAX_WINDOWS and len(results) < limit:
            # Collect a page's worth of suitable candidates (and a margin for the excluded) before asking
            # about exclusions once for all of them: those lookups cost the same for 5 ids as for 50.
            wanted = (limit - len(results)) * 5 // 4 + 2
            pending: list[Doc] = []
            while before > 1 and windows < MAX_WINDOWS and len(pending) < wanted:
                windows += 1
                low = max(1, before - WINDOW_IDS)
                ids = list(range(before - 1, low - 1, -1))
                cursor = await self._store.users.aggregate(window_pipeline(ids, prefs))
                docs = sorted(await cursor.to_list(None), key=lambda d: -int(d["_id"]))
                pending += [d for d in docs if d["_id"] != viewer_id]
                before = low
            excluded = await self._excluded(viewer_id, [int(d["_id"]) for d in pending])
            for doc in pending:
                if int(doc["_id"]) in excluded:
                    continue
                results.append(self._users.public_profile(doc))
                if len(results) == limit:
                    # The rest of `pending` was not shown: the next page starts right below this one.
                    before = int(doc["_id"])
                    break
        return {"m": mode, "b": before} if before > 1 else None

    async def _nearest(
        self,
        viewer_id: int,
        point: list[float],
        prefs: Doc,
        state: Doc,
        limit: int,
        last_bucket: int,
        results: list[Doc],
    ) -> Doc | None:
        """Nearest first up to `last_bucket`: bucket by bucket, newest account first within a bucket,
        through the 2d index (`$nearSphere`).

        A band is a run of buckets (every id in them) or a run of ids within one bucket. Only a complete
        band can be put in order: a server that honours `$nearSphere`'s order would let us keep the first
        GEO_CAP of a fuller band, but one that does not (the embedded store) returns any GEO_CAP of them,
        and the order wanted here is not the server's anyway. So a band that overflows is narrowed and
        asked again (fewer buckets, then fewer ids), and each complete band widens the next. The state:
        bucket `k`, whose ids below `b` are still to show; `n` buckets per band; `w` ids per band within
        one bucket (0: all of them). More people than GEO_CAP in one place are listed, a run of ids at a
        time.
        """
        top = await self._top_user_id() + 1
        bucket, before = int(state["k"]), min(int(state["b"]), top)
        per_band, run = int(state["n"]), int(state["w"])
        queries = 0
        while len(results) < limit and queries < MAX_GEO_QUERIES:
            if bucket > last_bucket:
                return {"m": "x", "b": top}
            last = min(last_bucket, bucket + per_band - 1)
            ids: Doc | None = None
            if last == bucket:  # one bucket: only the ids not shown yet, a run of them once it overflowed
                ids = {"$lt": before, "$gte": max(0, before - run)} if run else {"$lt": before}
            low_m, high_m = max(0.0, bucket_floor_m(bucket) - EDGE_M), bucket_ceiling_m(last) + EDGE_M
            queries += 1
            near = nearest_filter(prefs, point, low_m, high_m, ids, planar=await self._planar_geo_prefilter())
            docs = await self._store.users.find(near, CANDIDATE_FIELDS, limit=GEO_CAP + 1).to_list(None)
            if len(docs) > GEO_CAP:
                per_band, run = narrower(point, docs, bucket, last, before, run)
                continue
            band = await self._in_band(viewer_id, point, docs, bucket, last, before)
            excluded = await self._excluded(viewer_id, [uid for _, uid, _ in band])
            for where, uid, doc in band:
                bucket, before = where, uid  # from here on, this bucket's ids from `uid` up were shown
                if uid in excluded:
                    continue
                profile = self._users.public_profile(doc)
                profile["distance_km"] = bucket_km(where)
                results.append(profile)
                if len(results) == limit:
                    return {"m": "b", "k": bucket, "b": before, "n": per_band, "w": run}
            if ids is not None and ids.get("$gte", 0) > 0:
                before, run = ids["$gte"], min(run * 2, top)  # the same bucket goes on below these ids
            else:
                bucket, before, run = last + 1, top, 0
                per_band = min(per_band * 2, len(BUCKET_BOUNDS_KM))
        return {"m": "b", "k": bucket, "b": before, "n": per_band, "w": run}

    async def _planar_geo_prefilter(self) -> bool:
        """Whether the store is the embedded one, whose 2d index pre-selects `$nearSphere` candidates
        with a flat disc (see `planar_reach_m`); MongoDB's is spherical."""
        return await self._store.is_secantus()

    async def _in_band(
        self, viewer_id: int, point: list[float], docs: list[Doc], first: int, last: int, before: int
    ) -> list[tuple[int, int, Doc]]:
        """A complete band's candidates as (bucket, id, document) in the listing's order: bucket, then
        newest first. Our distance decides the bucket (the server's only decided what came back): one
        outside the band belongs to another band, one of the first bucket at or above `before` was shown.
        A location written before locations were coarsened is coarsened here, before it is measured."""
        placed: list[tuple[int, int, Doc]] = []
        for doc in docs:
            uid = int(doc["_id"])
            if uid == viewer_id:
                continue
            if has_exact_location(doc):
                try:
                    doc = await self._users.coarsen_stored_location(doc)
                except errors.NotFound:
                    continue
            where = point_of(doc)
            if where is None:
                continue
            bucket = bucket_of(distance_m(point, where))
            if first <= bucket <= last and not (bucket == first and uid >= before):
                placed.append((bucket, uid, doc))
        placed.sort(key=lambda p: (p[0], -p[1]))
        return placed

    def _exclusion_queries(self, viewer_id: int, ids: list[int]) -> dict[str, tuple[AsyncCollection[Doc], Doc, Doc]]:
        """Everything that hides a candidate, asked for just these candidate ids, each served by an index."""
        s = self._store
        return {
            "liked": (s.likes, {"from_id": viewer_id, "to_id": {"$in": ids}}, {"_id": 0, "to_id": 1}),
            "passed": (s.passes, {"from_id": viewer_id, "to_id": {"$in": ids}}, {"_id": 0, "to_id": 1}),
            "blocked": (s.blocks, {"from_id": viewer_id, "to_id": {"$in": ids}}, {"_id": 0, "to_id": 1}),
            "blocked_by": (s.blocks, {"to_id": viewer_id, "from_id": {"$in": ids}}, {"_id": 0, "from_id": 1}),
            "matched": (s.matches, {"pair": {"$in": [pair_key(viewer_id, i) for i in ids]}}, {"_id": 0, "users": 1}),
        }

    async def _excluded(self, viewer_id: int, ids: list[int]) -> set[int]:
        if not ids:
            return set()
        queries = self._exclusion_queries(viewer_id, ids)
        found = await asyncio.gather(
            *(collection.find(flt, projection).to_list(None) for collection, flt, projection in queries.values())
        )
        excluded: set[int] = set()
        for docs in found:
            for doc in docs:
                for key in ("to_id", "from_id"):
                    if key in doc:
                        excluded.add(int(doc[key]))
                excluded.update(int(u) for u in doc.get("users", ()) if u != viewer_id)
        return excluded

    async def discover_query_plans(self, viewer_id: int, max_distance_km: int = DEFAULT_MAX_DISTANCE_KM) -> Doc:
        """`explain` (queryPlanner) of every query the first discover page of this viewer runs."""
        viewer = await self._users.get(viewer_id)
        prefs = preference_filter(viewer, _utcnow().date())
        top = await self._top_user_id()
        ids = list(range(top, max(0, top - WINDOW_IDS), -1))
        db = self._store.db
        plans: Doc = {
            "window": await db.command(
                {
                    "explain": {"aggregate": "users", "pipeline": window_pipeline(ids, prefs), "cursor": {}},
                    "verbosity": "queryPlanner",
                }
            )
        }
        point = point_of(viewer)
        if point is not None:
            # The first band (every bucket of the radius), and a run of ids within one bucket.
            reach = bucket_ceiling_m(radius_bucket(max_distance_km)) + EDGE_M
            run = {"$lt": top + 1, "$gte": max(0, top + 1 - WINDOW_IDS)}
            bands = {
                "nearest": nearest_filter(prefs, point, 0.0, reach),
                "nearest_run": nearest_filter(prefs, point, 0.0, bucket_ceiling_m(0) + EDGE_M, run),
            }
            for name, near in bands.items():
                plans[name] = await db.command(
                    {
                        "explain": {
                            "find": "users",
                            "filter": near,
                            "projection": CANDIDATE_FIELDS,
                            "limit": GEO_CAP + 1,
                        },
                        "verbosity": "queryPlanner",
                    }
                )
        for name, (collection, flt, projection) in self._exclusion_queries(viewer_id, ids).items():
            plans[name] = await db.command(
                {
                    "explain": {"find": collection.name, "filter": flt, "projection": projection},
                    "verbosity": "queryPlanner",
                }
            )
        return plans

    # -- likes and passes -----------------------------------------------------------------------------

    async def like(self, viewer_id: int, target_id: int) -> tuple[Doc, bool]:
        """`({like, match}, created)`. Repeating a like answers the same, with created False."""
        await self._check_target(viewer_id, target_id)
        likes = self._store.likes
        existing = await likes.find_one({"from_id": viewer_id, "to_id": target_id})
        if existing is not None:
            return await self._like_answer(viewer_id, existing), False
        await self._check_quota(viewer_id)
        doc: Doc = {"_id": ObjectId(), "from_id": viewer_id, "to_id": target_id, "created_at": _utcnow()}
        try:
            await likes.insert_one(doc)
        except pymongo.errors.DuplicateKeyError:
            existing = await likes.find_one({"from_id": viewer_id, "to_id": target_id})
            assert existing is not None
            return await self._like_answer(viewer_id, existing), False
        # Our like is stored before we look for theirs: of two concurrent likes, at least the later look
        # sees the other like, so a mutual pair never goes unnoticed.
        reciprocal = await likes.find_one({"from_id": target_id, "to_id": viewer_id}, {"_id": 1})
        match: Doc | None = None
        won = False
        if reciprocal is not None:
            match, won = await self._create_match(viewer_id, target_id)
        # A block that raced this request wins: no match survives it and no notification crosses it.
        if await self._blocked_either_way(viewer_id, target_id):
            if match is not None and match["status"] == "active":
                await self._end_match(match, ended_by=target_id)
            return {"like": self._like_view(doc), "match": None}, True
        summaries = await self._summaries([viewer_id, target_id], include_deleted=True)
        view = None
        if match is not None and match["status"] == "active":
            view = self._match_view(match, viewer_id, summaries)
            if won:
                created = _iso(match["created_at"])
                cid = int(match["conversation_id"])
                for user, other in ((viewer_id, target_id), (target_id, viewer_id)):
                    note = new_match_notification(int(match["_id"]), summaries[other], created, conversation_id=cid)
                    await self._notify(user, note)
        elif match is None:
            await self._notify(target_id, new_like_notification(summaries[viewer_id]))
        return {"like": self._like_view(doc), "match": view}, True

    async def _like_answer(self, viewer_id: int, like: Doc) -> Doc:
        target_id = int(like["to_id"])
        match = await self._store.matches.find_one({"pair": pair_key(viewer_id, target_id)})
        view = None
        if match is not None and match["status"] == "active":
            await self._ensure_conversation(match)
            view = self._match_view(match, viewer_id, await self._summaries([target_id], include_deleted=True))
        return {"like": self._like_view(like), "match": view}

    @staticmethod
    def _like_view(like: Doc) -> Doc:
        return {"user_id": int(like["to_id"]), "created_at": _iso(like["created_at"])}

    async def pass_user(self, viewer_id: int, target_id: int) -> tuple[Doc, bool]:
        """`({pass}, created)`; a pass hides the user from discover and from the likes received."""
        await self._check_target(viewer_id, target_id)
        doc, created = await self._insert_pair(self._store.passes, viewer_id, target_id)
        return {"pass": {"user_id": target_id, "created_at": _iso(doc["created_at"])}}, created

    async def _insert_pair(self, collection: AsyncCollection[Doc], from_id: int, to_id: int) -> tuple[Doc, bool]:
        doc: Doc = {"_id": ObjectId(), "from_id": from_id, "to_id": to_id, "created_at": _utcnow()}
        try:
            await collection.insert_one(doc)
            return doc, True
        except pymongo.errors.DuplicateKeyError:
            existing = await collection.find_one({"from_id": from_id, "to_id": to_id})
            assert existing is not None
            return existing, False

    async def _check_target(self, viewer_id: int, target_id: int) -> None:
        if viewer_id == target_id:
            raise errors.Invalid("You cannot do that to yourself", code="self_target", fields={"user_id": "is you"})
        # A banned account cannot be liked or passed (a like could match it): it answers as an unknown one.
        await self._require_user(target_id, banned_too=True)
        # Someone blocked either way is answered exactly as an unknown user, so a block is never revealed.
        if await self._blocked_either_way(viewer_id, target_id):
            raise errors.NotFound("User not found", code="user_not_found")

    async def _require_user(self, user_id: int, *, banned_too: bool = False) -> None:
        flt: Doc = {"_id": user_id, "deleted": {"$ne": True}}
        if banned_too:
            flt["banned"] = {"$ne": True}
        if await self._store.users.find_one(flt, {"_id": 1}) is None:
            raise errors.NotFound("User not found", code="user_not_found")

    async def _blocked_either_way(self, a: int, b: int) -> bool:
        # Two point reads on the unique pair index rather than one `$or`, which the embedded store
        # answers with a collection scan.
        blocks = self._store.blocks
        found = await asyncio.gather(
            blocks.find_one({"from_id": a, "to_id": b}, {"_id": 1}),
            blocks.find_one({"from_id": b, "to_id": a}, {"_id": 1}),
        )
        return any(f is not None for f in found)

    async def _check_quota(self, viewer_id: int) -> None:
        quota = self._settings.like_quota_per_day
        if quota <= 0:
            return
        now = _utcnow()
        day_start = _midnight(now.date())
        used = await self._store.likes.count_documents(
            {"from_id": viewer_id, "created_at": {"$gte": day_start}}, limit=quota
        )
        if used >= quota:
            retry = (day_start + dt.timedelta(days=1) - now).total_seconds()
            raise errors.RateLimited(
                f"Daily like quota of {quota} reached", retry_after_s=retry, code="like_quota_exceeded"
            )

    async def _received_window(
        self, viewer_id: int, after: tuple[dt.datetime, ObjectId] | None
    ) -> tuple[list[Doc], bool]:
        """The next likes the viewer received, newest first, strictly before `after`; and whether none
        older remain."""
        flt: Doc = {"to_id": viewer_id}
        if after is not None:
            flt["created_at"] = {"$lte": after[0]}
        window = await (
            self._store.likes.find(flt, {"from_id": 1, "created_at": 1})
            .sort("created_at", DESCENDING)
            .limit(RECEIVED_WINDOW)
            .to_list(None)
        )
        exhausted = len(window) < RECEIVED_WINDOW
        window.sort(key=lambda d: (d["created_at"], d["_id"]), reverse=True)
        if not exhausted and window[0]["created_at"] != window[-1]["created_at"]:
            # The limit may have cut the oldest millisecond in two: leave all of it to the next window.
            oldest = window[-1]["created_at"]
            window = [d for d in window if d["created_at"] != oldest]
        return [d for d in window if after is None or (d["created_at"], d["_id"]) < after], exhausted

    async def likes_received(self, viewer_id: int, *, limit: int, cursor: str | None = None) -> Doc:
        """Who liked the viewer, newest first, minus anyone matched, passed, liked back or blocked."""
        state = decode_cursor(cursor, ("r",)) if cursor else None
        after: tuple[dt.datetime, ObjectId] | None = None
        if state is not None:
            after = (dt.datetime.fromtimestamp(state["t"] / 1000, dt.UTC), ObjectId(state["o"]))
        results: list[Doc] = []
        exhausted = False
        for _ in range(MAX_RECEIVED_WINDOWS):
            fresh, exhausted = await self._received_window(viewer_id, after)
            if not fresh:
                if exhausted or after is None:
                    break
                # A whole window inside the cursor's millisecond: step past that millisecond.
                after = (after[0] - dt.timedelta(milliseconds=1), ObjectId("f" * 24))
                continue
            senders = [int(d["from_id"]) for d in fresh]
            excluded = await self._excluded(viewer_id, senders)
            summaries = await self._summaries([s for s in senders if s not in excluded])
            for like in fresh:
                after = (like["created_at"], like["_id"])
                sender = int(like["from_id"])
                if sender in excluded or sender not in summaries:
                    continue
                results.append({"user": summaries[sender], "liked_at": _iso(like["created_at"])})
                if len(results) == limit:
                    break
            if len(results) == limit:
                exhausted = exhausted and after == (fresh[-1]["created_at"], fresh[-1]["_id"])
                break
            if exhausted:
                break
        next_cursor = None
        if not exhausted and after is not None:
            millis = int(after[0].timestamp() * 1000)
            next_cursor = encode_cursor({"m": "r", "t": millis, "o": str(after[1])})
        return {"results": results, "next_cursor": next_cursor}

    # -- matches --------------------------------------------------------------------------------------

    async def _create_match(self, a: int, b: int) -> tuple[Doc, bool]:
        """The pair's match and whether this call created it; the unique pair index decides."""
        store = self._store
        doc: Doc = {
            "_id": await store.next_id("matches"),
            "pair": pair_key(a, b),
            "users": sorted((a, b)),
            "conversation_id": await store.next_id("conversations"),
            "status": "active",
            "created_at": _utcnow(),
        }
        won = True
        try:
            await store.matches.insert_one(doc)
        except pymongo.errors.DuplicateKeyError:
            won = False
            existing = await store.matches.find_one({"pair": doc["pair"]})
            assert existing is not None
            doc = existing
        await self._ensure_conversation(doc)
        return doc, won

    async def _ensure_conversation(self, match: Doc) -> None:
        """Create the match's conversation if it is missing; a no-op when it exists."""
        closed_at = None if match["status"] == "active" else (match.get("ended_at") or _utcnow())
        fields = conversation_document(
            int(match["conversation_id"]),
            match["users"],
            int(match["_id"]),
            created_at=match["created_at"],
            closed_at=closed_at,
        )
        conversation_id = fields.pop("_id")  # the upsert's filter gives the new document its id
        # A concurrent upsert of the same id may win the insert; then the conversation exists, as wanted.
        with contextlib.suppress(pymongo.errors.DuplicateKeyError):
            await self._store.conversations.update_one({"_id": conversation_id}, {"$setOnInsert": fields}, upsert=True)

    async def matches(self, viewer_id: int, *, limit: int) -> list[Doc]:
        """Active matches, newest first."""
        docs = await (
            self._store.matches.find({"users": viewer_id, "status": "active"})
            .sort("created_at", DESCENDING)
            .limit(limit)
            .to_list(None)
        )
        await self._repair_conversations(docs)
        others = [next(u for u in d["users"] if u != viewer_id) for d in docs]
        summaries = await self._summaries(others, include_deleted=True)
        return [self._match_view(d, viewer_id, summaries) for d in docs if self._other(d, viewer_id) in summaries]

    async def _repair_conversations(self, matches: list[Doc]) -> None:
        if not matches:
            return
        cids = [int(m["conversation_id"]) for m in matches]
        present = await self._store.conversations.find({"_id": {"$in": cids}}, {"_id": 1}).to_list(None)
        have = {int(c["_id"]) for c in present}
        for match in matches:
            if int(match["conversation_id"]) not in have:
                await self._ensure_conversation(match)

    @staticmethod
    def _other(match: Doc, viewer_id: int) -> int:
        return int(next(u for u in match["users"] if u != viewer_id))

    def _match_view(self, match: Doc, viewer_id: int, summaries: dict[int, Doc]) -> Doc:
        return {
            "id": int(match["_id"]),
            "user": summaries[self._other(match, viewer_id)],
            "conversation_id": int(match["conversation_id"]),
            "created_at": _iso(match["created_at"]),
        }

    async def unmatch(self, viewer_id: int, match_id: int) -> None:
        match = await self._store.matches.find_one({"_id": match_id})
        if match is None or viewer_id not in match["users"]:
            raise errors.NotFound("Match not found", code="match_not_found")
        await self._end_match(match, ended_by=viewer_id)

    async def _end_match(self, match: Doc, *, ended_by: int) -> None:
        """End the match and close its conversation; repeating it only repeats the close. Whoever ends it
        (an unmatch, a block, a report, a ban, an account deletion: all come here) tells both people with
        the same `match_ended`, so nobody learns from it that they were blocked or reported."""
        now = _utcnow()
        ended_here = False
        if match["status"] == "active":
            result = await self._store.matches.update_one(
                {"_id": match["_id"], "status": "active"},
                {"$set": {"status": "ended", "ended_at": now, "ended_by": ended_by}},
            )
            ended_here = result.modified_count == 1
            match = {**match, "status": "ended", "ended_at": now, "ended_by": ended_by}
        cid = int(match["conversation_id"])
        await self._ensure_conversation(match)
        await self._store.conversations.update_one(
            {"_id": cid, "status": {"$ne": "closed"}}, {"$set": {"status": "closed", "closed_at": now}}
        )
        if self._seal_conversation is not None:
            await self._seal_conversation(cid)
        # Published even when it was already closed: a socket opened during the first close still goes.
        try:
            await self._events.close_conversation(cid)
        except Exception:
            log.exception("could not publish the close of conversation %s", cid)
        if ended_here:
            # Once, by the request whose update ended it; after the close, so a client that reopens the
            # conversation on this news finds it closed.
            a, b = (int(u) for u in match["users"])
            for user, other in ((a, b), (b, a)):
                await self._notify(user, match_ended_notification(int(match["_id"]), cid, other))

    # -- blocks ---------------------------------------------------------------------------------------

    async def block(self, viewer_id: int, target_id: int) -> tuple[Doc, bool]:
        """`({block}, created)`. Also ends the pair's match, if any, and closes its conversation."""
        if viewer_id == target_id:
            raise errors.Invalid("You cannot block yourself", code="self_target", fields={"user_id": "is you"})
        await self._require_user(target_id)
        doc, created = await self._insert_pair(self._store.blocks, viewer_id, target_id)
        # Done after the block is stored, and also on a repeat, so a match created concurrently with
        # the first attempt cannot outlive the block (the like path checks blocks after matching).
        match = await self._store.matches.find_one({"pair": pair_key(viewer_id, target_id), "status": "active"})
        if match is not None:
            await self._end_match(match, ended_by=viewer_id)
        return {"block": {"user_id": target_id, "created_at": _iso(doc["created_at"])}}, created

    async def unblock(self, viewer_id: int, target_id: int) -> None:
        await self._store.blocks.delete_one({"from_id": viewer_id, "to_id": target_id})

    async def blocks(self, viewer_id: int, *, limit: int) -> list[Doc]:
        docs = await (
            self._store.blocks.find({"from_id": viewer_id}).sort("created_at", DESCENDING).limit(limit).to_list(None)
        )
        summaries = await self._summaries([int(d["to_id"]) for d in docs], include_deleted=True)
        return [
            {"user": summaries[int(d["to_id"])], "created_at": _iso(d["created_at"])}
            for d in docs
            if int(d["to_id"]) in summaries
        ]

    # -- shared ---------------------------------------------------------------------------------------

    async def _summaries(self, user_ids: list[int], *, include_deleted: bool = False) -> dict[int, Doc]:
        """Summaries by id; without `include_deleted`, deleted and banned accounts are left out."""
        if not user_ids:
            return {}
        flt: Doc = {"_id": {"$in": list(dict.fromkeys(user_ids))}}
        projection = {"username": 1, "picture": 1, "deleted": 1, "banned": 1}
        docs = await self._store.users.find(flt, projection).to_list(None)
        return {
            int(d["_id"]): self._users.summary_of(d)
            for d in docs
            if include_deleted or not (d.get("deleted") or d.get("banned"))
        }

    async def _notify(self, user_id: int, notification: Doc) -> None:
        # What is stored is the truth; a notification that cannot be published is logged, not failed.
        try:
            await self._events.notify(user_id, notification)
        except Exception:
            log.exception("could not publish a %s notification to user %s", notification.get("type"), user_id)
