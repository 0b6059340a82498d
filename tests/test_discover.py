"""GET /api/discover/: exclusions, preferences, distance buckets, order, cursor paging, and the query plans.

Distances are between stored (coarse) points and said in buckets; tests/test_location_privacy.py holds
what that protects against and the budgets, which this module lifts to page freely."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest

from services.accounts.users import point_of
from services.matching import service as matching
from services.matching.location import (
    BUCKET_BOUNDS_KM,
    EARTH_RADIUS_M,
    LocationPrivacy,
    bucket_km,
    bucket_of,
    distance_m,
    radius_bucket,
)
from services.matching.service import years_before
from services.storage.documents import UNUSABLE_HASH, match_document, user_document
from tests.support import ApiClient, TestUser, seed_user

PARIS = {"lat": 48.8566, "lon": 2.3522}
RULES = LocationPrivacy()
# How much two stored points may add to or take from the distance between two true positions.
SLACK_KM = 2 * (RULES.offset_max_m + RULES.grid_m / math.sqrt(2)) / 1000


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"discover_per_10_min": 0, "discover_per_day": 0}


def offset(point: dict[str, float], km_north: float) -> dict[str, float]:
    return {"lat": point["lat"] + km_north / 111.2, "lon": point["lon"]}


async def discover(api: ApiClient, user: TestUser, query: str = "") -> dict[str, Any]:
    r = await api.get(f"/api/discover/{query}", token=user.access)
    assert r.status == 200, r.body
    page: dict[str, Any] = r.body
    return page


async def ids(api: ApiClient, user: TestUser, query: str = "") -> list[int]:
    return [p["id"] for p in (await discover(api, user, query))["results"]]


async def all_pages(api: ApiClient, user: TestUser, limit: int, extra: str = "") -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(200):
        query = f"?limit={limit}{extra}" + (f"&cursor={cursor}" if cursor else "")
        page = await discover(api, user, query)
        assert len(page["results"]) <= limit
        seen += page["results"]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("the cursor never ended")


async def test_every_exclusion_rule(api, services):
    viewer = await seed_user(services, "viewer")
    liked, passed, blocked, blocker, matched, past, deleted = [await seed_user(services) for _ in range(7)]
    fresh_old = await seed_user(services, "fresh")
    fresh_new = await seed_user(services, "fresh")
    m = services.matching
    await m.like(viewer.id, liked.id)
    await m.pass_user(viewer.id, passed.id)
    await m.block(viewer.id, blocked.id)
    await m.block(blocker.id, viewer.id)
    await m.like(viewer.id, matched.id)
    await m.like(matched.id, viewer.id)
    # A past match with no like left behind it: the match alone must hide the pair.
    past_match = match_document(
        await services.store.next_id("matches"),
        viewer.id,
        past.id,
        await services.store.next_id("conversations"),
        created_at=dt.datetime.now(dt.UTC),
        status="ended",
    )
    await services.store.matches.insert_one(past_match)
    await services.store.users.update_one({"_id": deleted.id}, {"$set": {"deleted": True}})

    page = await discover(api, viewer)
    assert [p["id"] for p in page["results"]] == [fresh_new.id, fresh_old.id]  # newest first, nobody else
    assert page["next_cursor"] is None
    profile = page["results"][0]
    assert set(profile) == {"id", "username", "profile_picture", "display_name", "bio", "age", "gender", "photos"}
    assert profile["username"] == fresh_new.username and isinstance(profile["age"], int)
    # Those who liked the viewer (without a like back) still appear: liking is not an exclusion.
    assert (await m.like(fresh_old.id, viewer.id))[1]
    assert await ids(api, viewer) == [fresh_new.id, fresh_old.id]
    # And from the other side: the blocked, the blocker and the liked do not see the viewer either
    # (the liked one still may: only their own likes and passes hide people from them).
    assert viewer.id not in await ids(api, blocked)
    assert viewer.id not in await ids(api, blocker)
    assert viewer.id in await ids(api, liked)
    assert viewer.id not in await ids(api, matched)
    assert viewer.id not in await ids(api, past)


async def test_gender_preferences_both_ways(api, services):
    viewer = await seed_user(services, gender="woman", interested_in=["man", "nonbinary"])
    man_for_women = await seed_user(services, gender="man", interested_in=["woman"])
    man_for_anyone = await seed_user(services, gender="man", interested_in=[])
    nb_for_women = await seed_user(services, gender="nonbinary", interested_in=["woman", "man"])
    await seed_user(services, gender="man", interested_in=["man"])  # not into women
    await seed_user(services, gender="woman", interested_in=["woman"])  # not what the viewer wants
    await seed_user(services, gender=None, interested_in=[])  # states no gender: not a man nor nonbinary
    shown = set(await ids(api, viewer))
    assert shown == {man_for_women.id, man_for_anyone.id, nb_for_women.id}

    # A viewer open to anyone and stating no gender: only people open to anyone.
    open_viewer = await seed_user(services, interested_in=[])
    shown = set(await ids(api, open_viewer))
    assert man_for_anyone.id in shown and man_for_women.id not in shown and nb_for_women.id not in shown


async def test_age_ranges_both_ways(api, services):
    today = dt.datetime.now(dt.UTC).date()

    def born(age: int) -> dt.date:
        return years_before(today, age)

    viewer = await seed_user(services, birthdate=born(30), age_min=25, age_max=35)
    exactly_25 = await seed_user(services, birthdate=born(25))
    exactly_35 = await seed_user(services, birthdate=born(35))
    turns_36_today = await seed_user(services, birthdate=born(36))
    almost_25 = await seed_user(services, birthdate=born(25) + dt.timedelta(days=1))
    await seed_user(services, birthdate=None)  # age unknown: cannot satisfy an age range
    wants_older = await seed_user(services, birthdate=born(28), age_min=31)
    wants_younger = await seed_user(services, birthdate=born(28), age_max=29)
    wants_viewer = await seed_user(services, birthdate=born(28), age_min=30, age_max=30)
    shown = set(await ids(api, viewer))
    assert shown == {exactly_25.id, exactly_35.id, wants_viewer.id}
    assert turns_36_today.id not in shown and almost_25.id not in shown
    assert wants_older.id not in shown and wants_younger.id not in shown

    # A viewer with no birth date is shown only to people without an age range.
    ageless = await seed_user(services, birthdate=None)
    shown = set(await ids(api, ageless))
    assert wants_viewer.id not in shown and viewer.id not in shown and exactly_25.id in shown


async def stored_point(services: Any, user_id: int) -> list[float]:
    """Where the store says a user is: their coarse point (a user seeded with an exact one is coarsened
    by this first read, as any read does)."""
    point = point_of(await services.users.get(user_id))
    assert point is not None
    return point


async def bucket_between(services: Any, a: int, b: int) -> int:
    return bucket_of(distance_m(await stored_point(services, a), await stored_point(services, b)))


def test_buckets_and_radii():
    assert [bucket_km(bucket_of(km * 1000)) for km in (0, 0.2, 1, 1.01, 2.5, 3, 4, 7, 12, 49, 51, 76, 20_037)] == [
        1, 1, 1, 2, 3, 3, 5, 10, 15, 50, 75, 100, 20_050
    ]  # fmt: skip
    # A radius admits the buckets up to the largest bound at or below it.
    assert [BUCKET_BOUNDS_KM[radius_bucket(km)] for km in (1, 2, 4, 9, 10, 99, 100, 101, 20_000)] == [
        1, 2, 3, 5, 10, 75, 100, 100, 20_000
    ]  # fmt: skip


async def test_distance_order_and_filter(api, services):
    viewer = await seed_user(services, location=PARIS)
    far = await seed_user(services, location=offset(PARIS, 500))
    mid = await seed_user(services, location=offset(PARIS, 50))
    near = await seed_user(services, location=offset(PARIS, 1))
    nowhere_old = await seed_user(services)
    nowhere_new = await seed_user(services)
    page = await discover(api, viewer)
    # Nearest first within 100 km, then people without a location, newest first.
    assert [p["id"] for p in page["results"]] == [near.id, mid.id, nowhere_new.id, nowhere_old.id]
    labels = [p.get("distance_km") for p in page["results"]]
    # Each label is the bucket of the distance between the two stored points: within the slack two
    # coarse points add to the true distance, and never more precise than the bucket.
    assert labels == [bucket_km(await bucket_between(services, viewer.id, u.id)) for u in (near, mid)] + [None, None]
    assert labels[0] <= 1 + SLACK_KM and 50 - SLACK_KM <= labels[1] <= 75
    assert page["next_cursor"] is None
    wider = await ids(api, viewer, "?max_distance_km=1000")
    assert wider == [near.id, mid.id, far.id, nowhere_new.id, nowhere_old.id]
    assert await ids(api, viewer, "?max_distance_km=10") == [near.id, nowhere_new.id, nowhere_old.id]
    # A radius between two bounds is the lower bound: nobody is labelled beyond what was asked for.
    near_label = page["results"][0]["distance_km"]
    for radius in range(1, 12):
        shown = await discover(api, viewer, f"?max_distance_km={radius}")
        assert [p["id"] for p in shown["results"]][:1] == ([near.id] if near_label <= radius else [nowhere_new.id])
        assert all(p.get("distance_km", 0) <= radius for p in shown["results"])
    # Without a location of one's own, nobody is excluded for distance: newest first.
    placeless = await seed_user(services)
    assert await ids(api, placeless) == [nowhere_new.id, nowhere_old.id, near.id, mid.id, far.id, viewer.id]


async def test_paging_newest_first(api, services):
    viewer = await seed_user(services)
    users = [await seed_user(services) for _ in range(25)]
    seen = await all_pages(api, viewer, 10)
    assert [p["id"] for p in seen] == [u.id for u in reversed(users)]
    first = await discover(api, viewer, "?limit=10")
    assert len(first["results"]) == 10 and isinstance(first["next_cursor"], str)


async def test_paging_nearest_first_with_ties(api, services, monkeypatch):
    # A tiny band capacity forces the overflow paths (fewer buckets per band, then runs of ids within one
    # bucket) many times over; ten people at one spot share one stored point, more than a band holds.
    monkeypatch.setattr(matching, "GEO_CAP", 3)
    viewer = await seed_user(services, location=PARIS)
    placed = []
    for km in [0.0, 0.5, 3, 3, 3, 7, 12, 12.5, 20, 33, 41, 42, 55, 60, 61, 70, 75, 80, 85, 90, 95, 99, 150, 300]:
        placed.append(await seed_user(services, location=offset(PARIS, km)))
    spot = await seed_user(services, location=offset(PARIS, 30))
    same_spot = [await seed_user(services, location_secret={"east_m": 0.0, "north_m": 0.0}) for _ in range(10)]
    spot_point = await stored_point(services, spot.id)
    for user in same_spot:
        await services.store.users.update_one({"_id": user.id}, {"$set": {"location": spot_point}})
    unplaced = [await seed_user(services) for _ in range(3)]
    keyed = [(await bucket_between(services, viewer.id, u.id), u.id) for u in [*placed, spot, *same_spot]]
    seen = await all_pages(api, viewer, 4)
    got = [p["id"] for p in seen]
    assert len(got) == len(set(got))
    # By bucket, newest first within a bucket, up to the radius's last bucket; then the unplaced.
    expected = [uid for bucket, uid in sorted(keyed, key=lambda k: (k[0], -k[1])) if bucket <= radius_bucket(100)]
    assert got == expected + [u.id for u in reversed(unplaced)]
    assert {spot.id, *(u.id for u in same_spot)} <= set(got)


@pytest.mark.parametrize("latitude", [0.0, 48.8566, 69.65])
async def test_someone_due_east_at_the_edge_of_the_radius_is_found(api, services, latitude):
    # The embedded store's 2d index pre-selects `$nearSphere` candidates with a flat disc of degrees, in
    # which a kilometre east is 1/cos(latitude) times a kilometre north: without compensation, someone
    # 2.9 km due east of a viewer in Paris fell outside a 3 km band's disc and was never listed.
    viewer = await seed_user(services, location={"lat": latitude, "lon": 10.0})
    here = await stored_point(services, viewer.id)
    east, north = [await seed_user(services, location_secret={"east_m": 0.0, "north_m": 0.0}) for _ in range(2)]
    degrees_east = math.degrees(2_900.0 / (EARTH_RADIUS_M * math.cos(math.radians(here[1]))))
    await services.store.users.update_one({"_id": east.id}, {"$set": {"location": [here[0] + degrees_east, here[1]]}})
    # Beyond the radius: the wider disc the store is asked for must not let them in.
    degrees_north = math.degrees(3_100.0 / EARTH_RADIUS_M)
    await services.store.users.update_one({"_id": north.id}, {"$set": {"location": [here[0], here[1] + degrees_north]}})
    found = {p["id"]: p["distance_km"] for p in await all_pages(api, viewer, 1, "&max_distance_km=3")}
    assert found == {east.id: 3}


async def test_windows_bound_the_work_and_the_cursor_goes_on(api, services):
    viewer = await seed_user(services, gender="woman", interested_in=["man"])
    wanted = await seed_user(services, gender="man", interested_in=["woman"])
    # More unsuitable accounts than one request reads: the page comes back empty with a cursor.
    per_request = matching.WINDOW_IDS * matching.MAX_WINDOWS
    start = await services.store.next_id("users")
    count = per_request + 100
    now = dt.datetime.now(dt.UTC)
    await services.store.users.insert_many(
        [
            user_document(start + i, f"bulk{start + i}", password_hash=UNUSABLE_HASH, created_at=now, gender="woman")
            for i in range(count)
        ]
    )
    await services.store.counters.update_one({"_id": "users"}, {"$max": {"value": start + count}})
    first = await discover(api, viewer)
    assert first["results"] == [] and first["next_cursor"]
    second = await discover(api, viewer, f"?cursor={first['next_cursor']}")
    assert [p["id"] for p in second["results"]] == [wanted.id]


async def test_bad_cursors(api, services):
    viewer = await seed_user(services)
    received_cursor = matching.encode_cursor({"m": "r", "t": 1, "o": "0" * 24})
    for cursor in (
        "garbage",
        "e30",  # {}
        matching.encode_cursor({"m": "n", "b": "5"}),
        matching.encode_cursor({"m": "n", "b": -5}),
        matching.encode_cursor({"m": "n", "b": 2**60}),
        matching.encode_cursor({"m": "g", "d": 1.0, "i": 1, "w": 0}),
        matching.encode_cursor({"m": "b", "k": len(BUCKET_BOUNDS_KM), "b": 5, "n": 1, "w": 0}),
        matching.encode_cursor({"m": "b", "k": 0, "b": 5, "n": 0, "w": 0}),
        matching.encode_cursor({"m": "b", "k": 0, "b": 5, "n": 1}),
        matching.encode_cursor({"m": "b", "k": 0, "b": 5, "n": 1, "w": 1.5}),
        matching.encode_cursor([1, 2]),  # type: ignore[arg-type]
        received_cursor,
        "x" * 300,
    ):
        r = await api.get(f"/api/discover/?cursor={cursor}", token=viewer.access)
        assert r.status == 400 and r.error_code == "invalid_cursor", (cursor, r.body)


async def test_a_cursor_survives_a_change_of_location(api, services):
    viewer = await seed_user(services)
    for _ in range(3):
        await seed_user(services, location=PARIS)
    first = await discover(api, viewer, "?limit=1")
    await services.store.users.update_one({"_id": viewer.id}, {"$set": {"location": [PARIS["lon"], PARIS["lat"]]}})
    # The newest-first cursor no longer applies to a located viewer: the listing starts again by distance.
    again = await discover(api, viewer, f"?limit=5&cursor={first['next_cursor']}")
    assert len(again["results"]) == 3 and all(p["distance_km"] <= SLACK_KM for p in again["results"])
    # A distance-ordered cursor of an earlier version (exact distances) starts the listing again too.
    legacy = matching.encode_cursor({"m": "g", "d": 1234.5, "i": 3, "w": 100_000.0})
    assert await ids(api, viewer, f"?limit=5&cursor={legacy}") == [p["id"] for p in again["results"]]


def plan_stages(plan: Any) -> list[str]:
    """Every `stage` named anywhere in an explain document (find or aggregate, embedded or MongoDB)."""
    found: list[str] = []
    if isinstance(plan, dict):
        for key, value in plan.items():
            if key == "stage" and isinstance(value, str):
                found.append(value)
            elif key not in ("command", "parsedQuery", "filter"):
                found += plan_stages(value)
    elif isinstance(plan, list):
        for item in plan:
            found += plan_stages(item)
    return found


@pytest.mark.parametrize("located", [False, True])
async def test_discover_queries_are_index_scans(api, services, located):
    location = PARIS if located else None
    viewer = await seed_user(services, location=location, gender="woman", interested_in=["man"], age_min=20)
    others = [await seed_user(services, location=offset(PARIS, i), gender="man") for i in range(20)]
    for other in others[:5]:
        await services.matching.like(viewer.id, other.id)
    await services.matching.pass_user(viewer.id, others[5].id)
    await services.matching.block(viewer.id, others[6].id)
    await services.matching.block(others[7].id, viewer.id)
    plans = await services.matching.discover_query_plans(viewer.id)
    located_plans = {"nearest", "nearest_run"} if located else set()
    expected = {"window", "liked", "passed", "blocked", "blocked_by", "matched"} | located_plans
    assert set(plans) == expected
    for name, plan in plans.items():
        stages = plan_stages(plan.get("queryPlanner", plan))
        assert stages, (name, plan)
        assert "COLLSCAN" not in stages, (name, stages)
        assert not {"SORT", "SORT_KEY_GENERATOR"} & set(stages), (name, stages)
        assert {"IXSCAN", "GEO_NEAR_2D", "IDHACK", "EXPRESS_IXSCAN"} & set(stages), (name, stages)
    for name in located_plans:
        nearest = plan_stages(plans[name]["queryPlanner"])
        assert "GEO_NEAR_2D" in nearest or "location_2d" in str(plans[name]["queryPlanner"]), name


async def test_our_distance_agrees_with_the_servers(services):
    # Bands are cut by the server's $near distance and ordered by ours; they must agree well within EDGE_M.
    center = [PARIS["lon"], PARIS["lat"]]
    assert abs(distance_m([0.0, 10.0], [0.0, 11.0]) - 6_378_100.0 * math.radians(1)) < 1e-6
    for km_east, km_north in ((0.3, 0.1), (12.0, -7.0), (70.0, 60.0)):
        where = {"lat": PARIS["lat"] + km_north / 111.2, "lon": PARIS["lon"] + km_east / 73.0}
        user = await seed_user(services, location=where)
        ours = distance_m(center, [where["lon"], where["lat"]])
        radius = 6_378_100.0
        tight = {"$nearSphere": center, "$minDistance": (ours - 0.01) / radius, "$maxDistance": (ours + 0.01) / radius}
        found = await services.store.users.find({"_id": user.id, "location": tight}).to_list(None)
        assert [d["_id"] for d in found] == [user.id], (km_east, km_north, ours)
