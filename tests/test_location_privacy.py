"""Location privacy: moving one's own location and reading distances finds nobody closer than the grid
and the secret offset allow.

The attack, as published against dating apps (Check Point Research 2024 on Bumble, Hinge and Grindr;
earlier Tinder and Bumble reports): an account sets its own position, reads a candidate's distance,
and walks along a line until the distance changes value; where it changes the true distance is known
exactly (k + 0.5 km when the exact distance is rounded). Four such boundary points and a least-squares
fit locate the candidate. `Attacker` below does exactly that, against any oracle:

- against the distances this server gave before (exact positions, rounded), it locates anyone to a
  few metres: the attack code works;
- against the server, with the attacker's own day of budget, and against a simulation of the server
  with unlimited queries and accounts, the best it finds is the candidate's stored point, which the
  design keeps kilometres from the truth (docs/security.md, "Location privacy").
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.accounts.users import point_of
from services.matching.location import (
    BUCKET_BOUNDS_KM,
    METRES_PER_DEGREE,
    LocationPrivacy,
    bucket_km,
    bucket_of,
    distance_m,
    snap,
)
from tests.support import ApiClient, TestUser, seed_user

ME = "/api/users/me/"
RULES = LocationPrivacy()  # the defaults, which the server under test uses
Point = tuple[float, float]  # metres east and north of the attacker's reference point


# -- geometry on a small patch of the Earth -----------------------------------------------------------------


@dataclass(frozen=True)
class Plane:
    """Metres east and north of a reference point, as an attacker maps a neighbourhood."""

    lon0: float
    lat0: float

    def to_lonlat(self, p: Point) -> list[float]:
        east, north = p
        lat = self.lat0 + north / METRES_PER_DEGREE
        lon = self.lon0 + east / (METRES_PER_DEGREE * math.cos(math.radians(self.lat0)))
        return [lon, lat]

    def from_lonlat(self, where: list[float]) -> Point:
        lon, lat = where
        east = (lon - self.lon0) * METRES_PER_DEGREE * math.cos(math.radians(self.lat0))
        return (east, (lat - self.lat0) * METRES_PER_DEGREE)


def gap(a: Point, b: Point) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def toward(a: Point, angle: float, metres: float) -> Point:
    return (a[0] + metres * math.cos(angle), a[1] + metres * math.sin(angle))


# -- what a distance label says -------------------------------------------------------------------------------


def rounded_interval(label_km: int) -> tuple[float, float]:
    """What `max(1, round(km))`, the distance this server used to show, says about the exact distance."""
    if label_km <= 1:
        return 0.0, 1500.0
    return (label_km - 0.5) * 1000, (label_km + 0.5) * 1000


def bucket_interval(label_km: int) -> tuple[float, float]:
    """What a bucket label says about the distance between two stored points."""
    index = BUCKET_BOUNDS_KM.index(label_km)
    return (BUCKET_BOUNDS_KM[index - 1] * 1000.0 if index else 0.0), label_km * 1000.0


# -- the attacker ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    origin: Point  # where the server measured from, as far as the attacker knows it
    label: int
    low_m: float
    high_m: float


# Move to a position and read the victim's distance label; None once the server refuses the move.
Observe = Callable[[Point], Awaitable[Reading | None]]


def violation(reading: Reading, p: Point) -> float:
    d = gap(reading.origin, p)
    return max(0.0, reading.low_m - d, d - reading.high_m)


def cost(readings: list[Reading], p: Point) -> float:
    return sum(violation(r, p) ** 2 for r in readings)


def trilaterate(readings: list[Reading], around: Point, half_side_m: float) -> Point:
    """Least squares on the intervals: the centre of the points that best fit every reading, found on a
    grid that zooms in for as long as that set is small compared to its spacing."""
    centre, half = around, half_side_m
    while True:
        steps = 40
        spacing = 2 * half / steps
        points = [
            (centre[0] - half + i * spacing, centre[1] - half + j * spacing)
            for i in range(steps + 1)
            for j in range(steps + 1)
        ]
        costs = [cost(readings, p) for p in points]
        best = min(costs)
        near = [p for p, c in zip(points, costs, strict=True) if c <= best + (spacing / 4) ** 2]
        centre = (statistics.fmean(p[0] for p in near), statistics.fmean(p[1] for p in near))
        spread = max(gap(p, centre) for p in near)
        if spread > 4 * spacing or spacing < 0.05:
            return centre
        half = max(spread, spacing) * 2


@dataclass(frozen=True)
class Grid:
    """What the attacker knows of how positions are published (the code is public): a global grid."""

    plane: Plane
    grid_m: float

    def nodes_around(self, centre: Point, reach_m: float) -> list[list[float]]:
        """The grid nodes within a square of half-side `reach_m` around a point, as [lon, lat]."""
        lon, lat = self.plane.to_lonlat(centre)
        row_deg = self.grid_m / METRES_PER_DEGREE
        reach = math.ceil(reach_m / self.grid_m)
        nodes = set()
        for dy in range(-reach, reach + 1):
            row_lat = lat + dy * row_deg
            step_deg = row_deg / math.cos(math.radians(row_lat))
            nodes |= {tuple(snap(lon + dx * step_deg, row_lat, self.grid_m)) for dx in range(-reach, reach + 1)}
        return [list(n) for n in sorted(nodes)]

    def fits(self, readings: list[Reading], node: list[float]) -> bool:
        """Whether every reading allows this node, measured as the server measures (great circle)."""
        for r in readings:
            d = distance_m(self.plane.to_lonlat(r.origin), node)
            if d > r.high_m or (d <= r.low_m and r.low_m > 0):
                return False
        return True


@dataclass
class Attacker:
    """Boundary walking plus trilateration, against whatever `observe` answers.

    From a start near the victim, walk along a few rays, doubling the step, until the label changes,
    then bisect between the last two positions down to `resolution_m`: each label change pins the
    distance between two readings. Every reading is kept as an interval constraint; the estimate is
    their least-squares fit.

    Knowing the grid positions are published on, the attacker does better: it spends half its `moves`
    walking, then keeps the grid nodes every reading allows and moves where the next label splits them
    best, until one is left or the moves are spent. Its answer is then a node: the published point.
    """

    observe: Observe
    resolution_m: float
    first_step_m: float = 400.0
    rays: int = 4
    moves: int | None = None  # the attacker's budget of moves, when it knows one
    grid: Grid | None = None
    readings: list[Reading] = field(default_factory=list)
    walk_limit: int | None = None
    last_move: tuple[Point, Point] | None = None  # (asked for, measured from)

    async def read(self, at: Point) -> Reading | None:
        if self.walk_limit is not None and len(self.readings) >= self.walk_limit:
            return None
        reading = await self.observe(at)
        if reading is not None:
            self.readings.append(reading)
            self.last_move = (at, reading.origin)
        return reading

    async def locate(self, start: Point, *, turn: float = 0.0) -> Point | None:
        if self.grid is not None and self.moves is not None:
            self.walk_limit = max(1, self.moves // 2)
        first = await self.read(start)
        if first is None:
            return None
        for ray in range(self.rays):
            if not await self.walk(start, first.label, turn + ray * 2 * math.pi / self.rays):
                break
        self.walk_limit = None
        estimate = trilaterate(self.readings, first.origin, first.high_m + 1000)
        if self.grid is None:
            return estimate
        return await self.narrow(self.grid, estimate)

    async def walk(self, start: Point, label: int, angle: float) -> bool:
        """One ray; False once the budget is spent."""
        inner, outer, step = start, None, self.first_step_m
        while outer is None and step < 60_000:
            at = toward(start, angle, step)
            reading = await self.read(at)
            if reading is None:
                return False
            if reading.label != label:
                outer = at
            else:
                inner, step = at, step * 2
        while outer is not None and gap(inner, outer) > self.resolution_m:
            middle = ((inner[0] + outer[0]) / 2, (inner[1] + outer[1]) / 2)
            reading = await self.read(middle)
            if reading is None:
                return False
            if reading.label == label:
                inner = middle
            else:
                outer = middle
        return True

    async def narrow(self, grid: Grid, estimate: Point) -> Point:
        """The nodes every reading allows; then moves that split them, while moves remain."""
        reach = max(r.high_m for r in self.readings) + 2 * grid.grid_m
        candidates = [n for n in grid.nodes_around(estimate, reach) if grid.fits(self.readings, n)]
        while len(candidates) > 1 and (self.moves is None or len(self.readings) < self.moves):
            target = best_split(grid, candidates)
            assert self.last_move is not None
            asked, measured = self.last_move
            # One's own stored point follows the asked position at a fixed offset: aim through it.
            reading = await self.read((target[0] + asked[0] - measured[0], target[1] + asked[1] - measured[1]))
            if reading is None:
                break
            candidates = [n for n in candidates if grid.fits([reading], n)]
        if not candidates:
            return estimate
        middle = centre_of([grid.plane.from_lonlat(n) for n in candidates])
        return min((grid.plane.from_lonlat(n) for n in candidates), key=lambda p: gap(p, middle))


def centre_of(points: list[Point]) -> Point:
    return (statistics.fmean(p[0] for p in points), statistics.fmean(p[1] for p in points))


def best_split(grid: Grid, candidates: list[list[float]]) -> Point:
    """The node to measure from whose label leaves the fewest candidates to expect."""
    centre = centre_of([grid.plane.from_lonlat(n) for n in candidates])
    spread = max(gap(grid.plane.from_lonlat(n), centre) for n in candidates)
    scored = []
    for origin in grid.nodes_around(centre, spread + 2 * grid.grid_m):
        groups: dict[int, int] = {}
        for n in candidates:
            label = bucket_of(distance_m(origin, n))
            groups[label] = groups.get(label, 0) + 1
        point = grid.plane.from_lonlat(origin)
        scored.append((sum(size * size for size in groups.values()), gap(point, centre), point))
    return min(scored)[2]


def summary(errors_m: list[float]) -> str:
    return f"median {statistics.median(errors_m) / 1000:.3f} km, best {min(errors_m) / 1000:.3f} km"


# -- the attack works: exact distances, as this server gave them before -------------------------------------


async def test_the_attack_locates_anyone_from_rounded_exact_distances():
    rng = random.Random(1)
    errors_m, spent = [], []
    for _ in range(5):
        victim = (rng.uniform(-5000, 5000), rng.uniform(-5000, 5000))
        moves = 0

        async def observe(at: Point, victim: Point = victim) -> Reading:
            nonlocal moves
            moves += 1
            label = max(1, round(gap(at, victim) / 1000))
            return Reading(at, label, *rounded_interval(label))

        attacker = Attacker(observe, resolution_m=0.5)
        start = (victim[0] + rng.uniform(-3000, 3000), victim[1] + rng.uniform(-3000, 3000))
        estimate = await attacker.locate(start, turn=rng.uniform(0, math.pi))
        assert estimate is not None
        errors_m.append(gap(estimate, victim))
        spent.append(moves)
    print(f"\nexact distances, rounded: error {summary(errors_m)}, worst {max(errors_m):.2f} m; moves {spent}")
    assert max(spent) <= 300
    assert max(errors_m) < 10


# -- the same attack against stored points ------------------------------------------------------------------


async def test_with_any_number_of_queries_the_attack_finds_the_stored_point_and_no_more():
    """The server's own rules (coarsening, buckets) in memory, and no budget at all, as with any number
    of accounts: the attacker recovers the stored point, always kilometres from the truth."""
    rng = random.Random(2)
    to_truth, to_stored = [], []
    for _ in range(20):
        plane = Plane(rng.uniform(-180, 180), rng.uniform(-60, 60))
        victim = (rng.uniform(-5000, 5000), rng.uniform(-5000, 5000))
        stored = plane.from_lonlat(RULES.coarsen(plane.to_lonlat(victim), RULES.new_secret()))
        own_secret = RULES.new_secret()

        async def observe(at: Point, plane: Plane = plane, stored: Point = stored, own: Any = own_secret) -> Reading:
            origin = RULES.coarsen(plane.to_lonlat(at), own)
            label = bucket_km(bucket_of(distance_m(origin, plane.to_lonlat(stored))))
            return Reading(plane.from_lonlat(origin), label, *bucket_interval(label))

        attacker = Attacker(observe, resolution_m=RULES.grid_m / 4, rays=12, grid=Grid(plane, RULES.grid_m))
        start = (victim[0] + rng.uniform(-3000, 3000), victim[1] + rng.uniform(-3000, 3000))
        estimate = await attacker.locate(start, turn=rng.uniform(0, math.pi))
        assert estimate is not None
        to_truth.append(gap(estimate, victim))
        to_stored.append(gap(estimate, stored))
    print(f"\nunlimited queries: error {summary(to_truth)}; from the stored point {summary(to_stored)}")
    assert statistics.median(to_stored) < 100  # the attack works: it finds what is published
    assert min(to_truth) > RULES.nearest_to_truth_m - 50 > 700  # and what is published is far from the truth


# -- the attack against the server, within one account's day of budget --------------------------------------

VICTIMS = 6
ANYWHERE = "/api/discover/?limit=50&max_distance_km=20000"


def as_location(where: list[float]) -> dict[str, float]:
    return {"lon": where[0], "lat": where[1]}


@dataclass
class Account:
    """An account driven through the API, counting the discover calls the server answered."""

    api: ApiClient
    user: TestUser
    discovered: int = 0
    changes: int = 0  # of the stored point: what the location budget counts
    stored: dict[str, float] | None = None

    async def move(self, where: list[float]) -> Any:
        moved = await self.api.patch(ME, {"location": as_location(where)}, token=self.user.access)
        if moved.status == 200:
            self.changes += moved.body["location"] != self.stored
            self.stored = moved.body["location"]
        return moved

    async def discover(self, query: str = ANYWHERE) -> Any:
        page = await self.api.get(query, token=self.user.access)
        self.discovered += page.status == 200
        return page


def server_oracle(account: Account, victim_id: int, plane: Plane) -> Observe:
    """A move is a PATCH of one's own location (its answer shows one's stored point, which the attacker
    then measures from); a reading is the victim's `distance_km` in discover."""

    async def observe(at: Point) -> Reading | None:
        moved = await account.move(plane.to_lonlat(at))
        if moved.status == 429:
            return None
        assert moved.status == 200, moved.body
        origin = [moved.body["location"]["lon"], moved.body["location"]["lat"]]
        page = await account.discover()
        if page.status == 429:
            return None
        assert page.status == 200, page.body
        label = next(p["distance_km"] for p in page.body["results"] if p["id"] == victim_id)
        return Reading(plane.from_lonlat(origin), label, *bucket_interval(label))

    return observe


async def stored_point(services: Any, user_id: int) -> list[float]:
    """What the store holds, without reading through the services (which would coarsen it)."""
    point = point_of(await services.store.users.find_one({"_id": user_id}))
    assert point is not None
    return point


def assert_refused(r: Any) -> float:
    assert r.status == 429 and r.error_code == "rate_limited", (r.status, r.body)
    retry_after = int(r.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


@pytest.mark.slow
@pytest.mark.parametrize("settings_overrides", [{"discover_per_10_min": 0}])
async def test_the_attack_against_the_server_within_a_days_budget(api, services, settings_overrides):
    """Each victim has an attacker account of its own (accounts are free) that spends its whole day: every
    location change on boundary walking and then on splitting what is left, a discover call after each
    move. The 10-minute discover budget is lifted, as if the attacker spread its calls over the day."""
    settings = services.settings
    rng = random.Random()
    to_truth, to_stored = [], []
    attackers: list[tuple[Account, Plane]] = []
    for _ in range(VICTIMS):
        plane = Plane(rng.uniform(-180, 180), rng.uniform(-60, 60))
        truth = (rng.uniform(-5000, 5000), rng.uniform(-5000, 5000))
        victim = await seed_user(services, "victim")
        assert (await Account(api, victim).move(plane.to_lonlat(truth))).status == 200
        attacker = Account(api, await seed_user(services, "attacker"))
        attackers.append((attacker, plane))
        walker = Attacker(
            server_oracle(attacker, victim.id, plane),
            resolution_m=RULES.grid_m / 2,
            first_step_m=RULES.grid_m,
            moves=settings.location_changes_per_day,
            grid=Grid(plane, RULES.grid_m),
        )
        start = (truth[0] + rng.uniform(-3000, 3000), truth[1] + rng.uniform(-3000, 3000))
        estimate = await walker.locate(start, turn=rng.uniform(0, math.pi))
        assert estimate is not None and 2 <= len(walker.readings) <= settings.location_changes_per_day
        stored = point_of(await services.store.users.find_one({"_id": victim.id}))
        assert stored is not None
        to_truth.append(gap(estimate, truth))
        to_stored.append(gap(estimate, plane.from_lonlat(stored)))
    print(f"\nthe server, a day of budget each: error {summary(to_truth)}; from the stored point {summary(to_stored)}")
    # What the attacker found is the stored point: the attack works as well as anything can...
    assert statistics.median(to_stored) < RULES.grid_m / 2
    # ... and the stored point is never within 700 m of the truth.
    assert min(to_truth) > 700

    # Spending what is left of the day's location changes runs into the refusal, after exactly the budget.
    attacker, plane = attackers[0]
    for step in range(settings.location_changes_per_day + 1):
        moved = await attacker.move(plane.to_lonlat((0.0, 9000.0 + 3000.0 * step)))
        if moved.status != 200:
            break
    assert attacker.changes == settings.location_changes_per_day
    assert assert_refused(moved) <= 86_400 / settings.location_changes_per_day + 1

    # The filter tells no more than the label: the nearest person is listed for radii at or above it only.
    nearest = (await attacker.discover()).body["results"][0]
    for radius in range(1, min(nearest["distance_km"], 60) + 6):
        shown = await attacker.discover(f"/api/discover/?limit=50&max_distance_km={radius}")
        assert (nearest["id"] in [p["id"] for p in shown.body["results"]]) == (nearest["distance_km"] <= radius)

    # And the rest of the day's discover budget, then the refusal, after exactly the budget.
    while (last := await attacker.discover()).status == 200:
        assert attacker.discovered <= settings.discover_per_day
    assert attacker.discovered == settings.discover_per_day
    assert_refused(last)


# -- the budgets -------------------------------------------------------------------------------------------


async def test_discover_has_a_budget_per_ten_minutes(api, services):
    user = Account(api, await seed_user(services))
    for _ in range(services.settings.discover_per_10_min):
        assert (await user.discover("/api/discover/")).status == 200
    waited = assert_refused(await user.discover("/api/discover/"))
    assert waited <= 600 / services.settings.discover_per_10_min + 1
    # Each user has their own budget.
    assert (await Account(api, await seed_user(services)).discover("/api/discover/")).status == 200


async def test_only_a_change_of_the_stored_point_spends_the_location_budget(api, services):
    user = await seed_user(services)
    home = {"lon": 2.3522, "lat": 48.8566}
    first = await api.patch(ME, {"location": home}, token=user.access)
    assert first.status == 200
    stored = first.body["location"]
    # The same place again: the same point, for free, however often.
    for _ in range(services.settings.location_changes_per_day + 2):
        again = await api.patch(ME, {"location": home}, token=user.access)
        assert again.status == 200 and again.body["location"] == stored
    # Clearing is free, and setting the place again gives the same point: the secret offset outlives it.
    assert (await api.patch(ME, {"location": None}, token=user.access)).body["location"] is None
    assert (await api.patch(ME, {"location": home}, token=user.access)).body["location"] == stored
    spent, far, last_sent = 2, 0, home
    while True:
        far += 1
        place = {"lon": 2.3522, "lat": 48.8566 + far * 0.05}
        moved = await api.patch(ME, {"location": place}, token=user.access)
        if moved.status != 200:
            break
        spent, last_sent = spent + 1, place
    assert spent == services.settings.location_changes_per_day
    assert assert_refused(moved) <= 86_400 / services.settings.location_changes_per_day + 1
    # A refused change changes nothing, not even the fields beside it; what costs nothing still works:
    # other fields, and the last place sent. (Sending back the point shown would be a move: it is not
    # where one is.)
    now = (await api.get(ME, token=user.access)).body
    assert_refused(await api.patch(ME, {"location": home, "bio": "not saved"}, token=user.access))
    assert_refused(await api.patch(ME, {"location": now["location"]}, token=user.access))
    assert (await api.get(ME, token=user.access)).body == now
    assert (await api.patch(ME, {"bio": "saved"}, token=user.access)).status == 200
    assert (await api.patch(ME, {"location": last_sent}, token=user.access)).body["location"] == now["location"]


async def test_the_stored_point_is_coarse_and_the_secret_never_shown(api, services):
    sent = {"lon": 151.2093, "lat": -33.8688}
    owner = await api.user("owner", location=sent)  # through sign-up
    mover = await seed_user(services)
    patched = await api.patch(ME, {"location": sent}, token=mover.access)  # through a profile change
    viewer = await seed_user(services, location={"lon": 151.25, "lat": -33.85})
    for user_id in (owner.id, mover.id):
        doc = await services.store.users.find_one({"_id": user_id})
        point = point_of(doc)
        assert point is not None and snap(point[0], point[1], RULES.grid_m) == point
        away = distance_m(point, [sent["lon"], sent["lat"]])
        assert RULES.nearest_to_truth_m - 1 <= away <= RULES.offset_max_m + RULES.grid_m / math.sqrt(2) + 1
        secret = doc["location_secret"]
        assert RULES.offset_min_m - 1e-6 <= math.hypot(secret["east_m"], secret["north_m"]) <= RULES.offset_max_m + 1e-6
    # Two people at the same place have different secrets, so (most likely) different points.
    docs = [await services.store.users.find_one({"_id": u}) for u in (owner.id, mover.id)]
    assert docs[0]["location_secret"] != docs[1]["location_secret"]
    answers = [
        patched.body,
        (await api.get(ME, token=mover.access)).body,
        (await api.get(f"/api/users/{mover.id}/", token=viewer.access)).body,
        (await api.get("/api/discover/", token=viewer.access)).body,
    ]
    for answer in answers:
        text = str(answer)
        assert "secret" not in text and "east_m" not in text and "north_m" not in text, answer
        assert str(sent["lat"]) not in text and str(sent["lon"]) not in text, answer
    label = bucket_km(
        bucket_of(distance_m(await stored_point(services, mover.id), await stored_point(services, viewer.id)))
    )
    assert next(p for p in answers[3]["results"] if p["id"] == mover.id)["distance_km"] == label


async def test_locations_stored_before_coarsening_are_coarsened_on_read(api, services):
    # Written as earlier versions did: the exact position, no secret.
    exact = {"lon": -0.1276, "lat": 51.5072}
    near = {"lon": -0.1, "lat": 51.5}
    owner = await seed_user(services, location=exact)
    candidate = await seed_user(services, location=exact)
    viewer = await seed_user(services, location=near)
    assert await stored_point(services, candidate.id) == [exact["lon"], exact["lat"]]
    # The owner's own profile is a read: it shows, and stores, the coarse point.
    shown = (await api.get(ME, token=owner.access)).body["location"]
    assert [shown["lon"], shown["lat"]] == await stored_point(services, owner.id) != [exact["lon"], exact["lat"]]
    # Discover meeting one as a candidate (or as the viewer) coarsens it before measuring.
    page = (await api.get("/api/discover/", token=viewer.access)).body["results"]
    for user_id, sent in ((owner.id, exact), (candidate.id, exact), (viewer.id, near)):
        doc = await services.store.users.find_one({"_id": user_id})
        assert "location_secret" in doc and point_of(doc) != [sent["lon"], sent["lat"]]
    coarse = distance_m(await stored_point(services, viewer.id), await stored_point(services, candidate.id))
    assert next(p["distance_km"] for p in page if p["id"] == candidate.id) == bucket_km(bucket_of(coarse))


# -- the coarsening rules ------------------------------------------------------------------------------------


def test_a_stored_point_is_a_grid_node_kilometres_from_the_truth_anywhere():
    rng = random.Random(3)
    low = RULES.nearest_to_truth_m
    high = RULES.offset_max_m + RULES.grid_m / math.sqrt(2)
    for _ in range(2000):
        exact = [rng.uniform(-180, 180), rng.uniform(-80, 80)]
        secret = RULES.new_secret()
        point = RULES.coarsen(exact, secret)
        assert point == RULES.coarsen(exact, secret) == snap(point[0], point[1], RULES.grid_m)
        assert -180 <= point[0] < 180 and -90 <= point[1] <= 90
        assert low - 5 <= distance_m(point, exact) <= high + 5, (exact, secret, point)
    # Wherever a position is, the stored point is a valid one.
    for exact in ([179.9999, 0.0], [-180.0, 10.0], [0.0, 90.0], [45.0, -90.0], [170.0, 89.995], [-10.0, -89.999]):
        for _ in range(50):
            point = RULES.coarsen(exact, RULES.new_secret())
            assert -180 <= point[0] < 180 and -90 <= point[1] <= 90, (exact, point)
