"""Where a user is said to be: the coarse position that is stored, the distance buckets discover speaks
in, and the budgets that bound how fast anyone can probe them.

The threat (docs/security.md, "Location privacy"): an account that moves its own location and reads a
candidate's distance many times can find where the distance changes value and trilaterate the
candidate. Whatever is computed from an exact position leaks it, so the exact position is never kept:
what is stored is the position moved by a secret offset, drawn once per user, and snapped to a global
grid. Every distance, filter and order is computed from stored positions, so the most anyone can learn,
with any number of queries and accounts, is that stored point, which is always between
`offset_min - grid/sqrt(2)` and `offset_max + grid/sqrt(2)` from the truth. The offset never changes:
a new offset per move would let an observer average the published points of a place back to the place.
"""

from __future__ import annotations

import bisect
import functools
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

from services.core.config import Settings
from services.realtime.counters import Rate, RateCounters, check_rate

EARTH_RADIUS_M = 6_378_100.0  # the sphere MongoDB measures spherical distances on
METRES_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180
# Within this of a pole, a grid row has no east-west extent worth the name: every longitude is one point.
POLAR_COS = 1e-9
COORDINATE_DECIMALS = 6  # about 0.1 m: plenty for a point that is kilometres from the truth

# What `distance_km` may say: the bound at or above the distance between two stored points ("within N
# km"). Coarser with distance, as a distance's precision matters less the larger it is; 20,050 km is
# beyond half the Earth's circumference, so every distance has a bucket.
BUCKET_BOUNDS_KM: tuple[int, ...] = (1, 2, 3, 5, 10, 15, 20, 30, 50, *range(75, 20_051, 25))
_BOUNDS_M = tuple(km * 1000.0 for km in BUCKET_BOUNDS_KM)

DAY_S = 86_400.0


def distance_m(a: list[float], b: list[float]) -> float:
    """Great-circle distance between two [lon, lat] points, on MongoDB's sphere."""
    lon1, lat1, lon2, lat2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


# -- distance buckets ------------------------------------------------------------------------------------


def bucket_of(distance: float) -> int:
    """The index of the bucket a distance in metres falls in: the first bound at or above it."""
    return min(bisect.bisect_left(_BOUNDS_M, distance), len(_BOUNDS_M) - 1)


def bucket_km(bucket: int) -> int:
    """What `distance_km` says for a bucket: its upper bound."""
    return BUCKET_BOUNDS_KM[bucket]


def bucket_floor_m(bucket: int) -> float:
    """The distance, in metres, above which a bucket starts (0 for the first)."""
    return _BOUNDS_M[bucket - 1] if bucket > 0 else 0.0


def bucket_ceiling_m(bucket: int) -> float:
    return _BOUNDS_M[bucket]


def radius_bucket(max_distance_km: int) -> int:
    """The last bucket a `max_distance_km` admits: the largest bound at or below it (at least the first),
    so a filter tells no more than the labels do, and no one shown is labelled beyond the radius."""
    return max(0, bisect.bisect_right(BUCKET_BOUNDS_KM, max_distance_km) - 1)


# -- coarse positions --------------------------------------------------------------------------------------


def new_secret(offset_min_m: float, offset_max_m: float) -> dict[str, float]:
    """A user's secret offset: a random direction and a length between the two bounds, in metres east and
    north. Drawn once per account and kept server-side; it is never returned by any endpoint."""
    rng = secrets.SystemRandom()
    angle = rng.uniform(0.0, 2 * math.pi)
    length = rng.uniform(offset_min_m, offset_max_m)
    return {"east_m": length * math.cos(angle), "north_m": length * math.sin(angle)}


def is_secret(value: Any) -> TypeGuard[dict[str, float]]:
    """Whether a stored value is a secret offset (documents from before coarsening have none)."""
    return (
        isinstance(value, dict)
        and all(isinstance(value.get(k), int | float) for k in ("east_m", "north_m"))
        and all(math.isfinite(value[k]) for k in ("east_m", "north_m"))
    )


def _wrap_longitude(lon: float) -> float:
    """Into [-180, 180), the range of the 2d index."""
    return (lon + 180.0) % 360.0 - 180.0


def snap(lon: float, lat: float, grid_m: float) -> list[float]:
    """The node of the global grid nearest to a point: rows every `grid_m` metres of latitude, and along
    each row a node every `grid_m` metres, so cells are about `grid_m` square at any latitude."""
    if grid_m <= 0:
        return [round(_wrap_longitude(lon), COORDINATE_DECIMALS), round(lat, COORDINATE_DECIMALS)]
    row_deg = grid_m / METRES_PER_DEGREE
    row = round(lat / row_deg)
    while abs(row * row_deg) > 90.0:
        row -= 1 if row > 0 else -1
    snapped_lat = row * row_deg
    cos_row = math.cos(math.radians(snapped_lat))
    if cos_row < POLAR_COS:
        snapped_lon = 0.0
    else:
        step_deg = row_deg / cos_row
        snapped_lon = _wrap_longitude(round(_wrap_longitude(lon) / step_deg) * step_deg)
    return [round(snapped_lon, COORDINATE_DECIMALS), round(snapped_lat, COORDINATE_DECIMALS)]


@dataclass(frozen=True)
class LocationPrivacy:
    """How an exact position becomes the stored one."""

    grid_m: float = 1000.0
    offset_min_m: float = 1500.0
    offset_max_m: float = 1800.0

    @classmethod
    def from_settings(cls, settings: Settings) -> LocationPrivacy:
        return cls(settings.location_grid_m, settings.location_offset_min_m, settings.location_offset_max_m)

    def new_secret(self) -> dict[str, float]:
        return new_secret(self.offset_min_m, self.offset_max_m)

    def coarsen(self, exact: list[float], secret: dict[str, float]) -> list[float]:
        """The stored [lon, lat] for an exact [lon, lat]: moved by the user's secret offset, then snapped
        to the grid. The same place always gives the same point, so re-sending it changes nothing."""
        lon, lat = float(exact[0]), float(exact[1])
        moved_lat = max(-90.0, min(90.0, lat + secret["north_m"] / METRES_PER_DEGREE))
        cos_lat = max(math.cos(math.radians(lat)), POLAR_COS)
        moved_lon = lon + secret["east_m"] / (METRES_PER_DEGREE * cos_lat)
        return snap(moved_lon, moved_lat, self.grid_m)

    @property
    def nearest_to_truth_m(self) -> float:
        """The least distance between a stored point and the true one (the snap moves a point by at most
        half a cell's diagonal)."""
        return self.offset_min_m - self.grid_m / math.sqrt(2)


# -- budgets -------------------------------------------------------------------------------------------------


def discover_rates(settings: Settings) -> tuple[Rate, ...]:
    """The short budget first: a request it refuses spends nothing of the daily one."""
    return (
        Rate("discover_10min", settings.discover_per_10_min, 600.0, "discover requests"),
        Rate("discover_day", settings.discover_per_day, DAY_S, "discover requests"),
    )


def location_changes_rate(settings: Settings) -> Rate:
    return Rate("location_changes", settings.location_changes_per_day, DAY_S, "location changes")


async def spend_discover_budget(rates: RateCounters, settings: Settings, user_id: int) -> None:
    """One discover request of `user_id`, or RateLimited (429 with Retry-After)."""
    for rate in discover_rates(settings):
        await check_rate(rates, rate, user_id)


def location_change_budget(rates: RateCounters, settings: Settings, user_id: int) -> Callable[[], Awaitable[None]]:
    """What a profile update calls before it stores a new location (and only then: re-sending the same
    place, or clearing it, costs nothing); raises RateLimited when the budget is spent."""
    return functools.partial(check_rate, rates, location_changes_rate(settings), user_id)
