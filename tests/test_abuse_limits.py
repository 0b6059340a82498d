"""Abuse by volume and by curiosity: sign-ups per address, and who may read whose profile, how often.

Sign-ups are budgeted per client address (SIGNUPS_PER_IP per SIGNUP_WINDOW; an IPv6 client per /64), the
address being the forwarded one only from TRUSTED_PROXIES, and shared by the nodes through Redis. A
profile is readable by the people who could meet its owner (discover candidates, likes either way,
matches current or former) and by nobody else, who gets the very answer for a missing user; and profile
reads are budgeted per reader (PROFILE_READS_PER_MINUTE).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import tornado.testing

from handlers.http_server import make_http_server
from handlers.matching import MAX_DISTANCE_KM
from services.core.config import Settings
from tests.support import PASSWORD, ApiClient, PortClient, Response, TestUser, assert_error, seed_user


def with_settings(**overrides: Any) -> Any:
    return pytest.mark.parametrize("settings_overrides", [overrides], indirect=True)


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(getattr(request, "param", {}))


async def sign_up(api: ApiClient, address: str | None = None, username: str | None = None, **extra: Any) -> Response:
    body = {"username": username or "u_" + uuid.uuid4().hex[:12], "password": PASSWORD, **extra}
    headers = {"X-Forwarded-For": address} if address else None
    return await api.post("/api/register/", body, headers=headers)


def assert_throttled(r: Response) -> None:
    assert_error(r, 429, "rate_limited")
    assert int(r.headers["Retry-After"]) >= 1


@contextlib.asynccontextmanager
async def behind_proxy(app: Any, services: Any) -> AsyncIterator[ApiClient]:
    """A client of the node's own HTTP server (the one server.py runs), which reads forwarded addresses
    from TRUSTED_PROXIES only."""
    sock, port = tornado.testing.bind_unused_port()
    http = make_http_server(app, services.settings, file_limit=1024)
    http.add_sockets([sock])
    try:
        yield ApiClient(PortClient(port))
    finally:
        http.stop()
        await http.close_all_connections()


# -- sign-ups per address ---------------------------------------------------------------------------------


def test_sign_ups_are_limited_by_default():
    defaults = Settings()
    assert defaults.signups_per_ip > 0 and defaults.signup_window_s >= 3600


async def test_one_address_cannot_create_accounts_at_will(api, services):
    """120 accounts from one address took 2.7 s; past the budget the address now waits."""
    budget = services.settings.signups_per_ip
    for _ in range(budget):
        assert (await sign_up(api)).status == 201
    refused = await sign_up(api)
    assert_throttled(refused)
    # The wait is the time the window takes to give one sign-up back, not a fixed penalty.
    interval = services.settings.signup_window_s / budget
    assert int(refused.headers["Retry-After"]) <= interval + 1
    assert await services.store.users.count_documents({}) == budget


@with_settings(signups_per_ip=2, trusted_proxies="127.0.0.1")
async def test_sign_ups_are_counted_per_forwarded_address_and_per_ipv6_64(app, services):
    async with behind_proxy(app, services) as api:
        await sign_ups_by_forwarded_address(api)


async def sign_ups_by_forwarded_address(api: ApiClient) -> None:
    # Refused sign-ups (invalid fields, a taken name) create nothing and spend nothing of this budget.
    assert (await sign_up(api, "203.0.113.5", username="x")).status == 400
    taken = await sign_up(api, "198.51.100.1")
    assert taken.status == 201
    assert_error(await sign_up(api, "203.0.113.5", username=taken.body["username"]), 409, "username_taken")
    for _ in range(2):
        assert (await sign_up(api, "203.0.113.5")).status == 201
    assert_throttled(await sign_up(api, "203.0.113.5"))
    # Another address has its own budget; signing in is not a sign-up.
    assert (await sign_up(api, "203.0.113.6")).status == 201
    signin = await api.post("/api/token/", {"username": taken.body["username"], "password": PASSWORD})
    assert signin.status == 200
    # One IPv6 host holds a whole /64: its addresses share one budget, the next /64 has its own.
    assert (await sign_up(api, "2001:db8:1:1::1")).status == 201
    assert (await sign_up(api, "2001:db8:1:1::ffff:2")).status == 201
    assert_throttled(await sign_up(api, "2001:db8:1:1:abcd::3"))
    assert (await sign_up(api, "2001:db8:1:2::1")).status == 201


@with_settings(signups_per_ip=2)
async def test_a_forwarded_address_from_an_untrusted_peer_is_not_believed(app, services):
    async with behind_proxy(app, services) as api:
        for n in range(2):
            assert (await sign_up(api, f"203.0.113.{n}")).status == 201
        # Without TRUSTED_PROXIES, both came from this test's own address: its budget is spent.
        assert_throttled(await sign_up(api, "203.0.113.99"))


async def test_nodes_share_the_sign_up_budget_through_redis(cluster_factory):
    one, two = await cluster_factory(2, signups_per_ip=3)
    assert (await sign_up(one.api)).status == 201
    assert (await sign_up(two.api)).status == 201
    assert (await sign_up(one.api)).status == 201
    assert_throttled(await sign_up(two.api))
    assert_throttled(await sign_up(one.api))


# -- who may read a profile --------------------------------------------------------------------------------


async def profile(api: ApiClient, reader: TestUser, owner_id: int) -> Response:
    return await api.get(f"/api/users/{owner_id}/", token=reader.access)


async def assert_hidden(api: ApiClient, reader: TestUser, owner_id: int, context: Any) -> None:
    """404, byte for byte the answer for an id nobody has."""
    seen = await profile(api, reader, owner_id)
    missing = await profile(api, reader, 987_654_321)
    assert_error(seen, 404, "not_found")
    assert (seen.status, seen.body) == (missing.status, missing.body), context


async def like(api: ApiClient, who: TestUser, whom: TestUser) -> Response:
    answer = await api.post("/api/likes/", {"user_id": whom.id}, token=who.access)
    assert answer.status in (200, 201), answer.body
    return answer


async def test_a_stranger_cannot_read_profiles_by_counting_ids(api, services):
    # She is into men of 25 to 40; he is into women.
    owner = await seed_user(services, "owner", gender="woman", interested_in=["man"], age_min=25, age_max=40)
    scraper = await seed_user(services, "scraper", gender="woman", interested_in=["woman"])
    others = [await seed_user(services, "other", gender="man", interested_in=["man"]) for _ in range(5)]
    for user_id in [owner.id, *(o.id for o in others), 0, 10**9]:
        await assert_hidden(api, scraper, user_id, user_id)
    # Nothing of theirs reached the scraper's discover either: the same rule.
    found = await api.get("/api/discover/", token=scraper.access)
    assert found.status == 200 and found.body["results"] == []


async def test_profiles_are_readable_by_whom_discover_would_show_them(api, services):
    owner = await seed_user(
        services, "owner", gender="woman", interested_in=["man"], age_min=25, age_max=40, location={"lon": 0, "lat": 0}
    )
    readers: dict[str, tuple[bool, dict[str, Any]]] = {
        "a man of her age range who likes women": (True, {"gender": "man", "interested_in": ["woman"]}),
        "a man who states no preference": (True, {"gender": "man"}),
        "a man without a location": (True, {"gender": "man", "location": None}),
        "a woman": (False, {"gender": "woman", "interested_in": ["woman"]}),
        "a man into men only": (False, {"gender": "man", "interested_in": ["man"]}),
        "a man too old for her": (False, {"gender": "man", "birthdate": dt.date(1950, 1, 1)}),
        "a man too young for her taste": (False, {"gender": "man", "age_min": 50}),
        "someone who states no gender": (False, {}),
        "a man far away, within the widest radius": (True, {"gender": "man", "location": {"lon": 170, "lat": 0}}),
    }
    for name, (readable, fields) in readers.items():
        fields.setdefault("location", {"lon": 2.35, "lat": 48.85})
        reader = await seed_user(services, "reader", **fields)
        widest = await api.get("/api/discover/?limit=50&max_distance_km=20000", token=reader.access)
        listed = owner.id in [u["id"] for u in widest.body["results"]]
        assert listed == readable, (name, "discover")
        if readable:
            seen = await profile(api, reader, owner.id)
            assert seen.status == 200 and seen.body["id"] == owner.id, (name, seen.body)
        else:
            await assert_hidden(api, reader, owner.id, name)


async def test_distance_hides_no_profile_as_discover_reaches_half_the_earth(api, services):
    """The rule leaves distance out (services/accounts/visibility.py): a reader may ask discover for half
    the Earth's circumference. Should that radius shrink, this fails, and the rule must follow it."""
    assert MAX_DISTANCE_KM >= 20_000
    owner = await seed_user(services, "owner", gender="woman", location={"lon": 0, "lat": 0})
    antipodes = await seed_user(services, "far", gender="man", location={"lon": 179.99, "lat": 0})
    assert (await profile(api, antipodes, owner.id)).status == 200


async def test_likes_either_way_and_matches_current_or_former_open_a_profile(api, services):
    owner = await seed_user(services, "owner", gender="woman", interested_in=["man"])
    liker, liked, matched, former = [
        await seed_user(services, name, gender="woman", interested_in=["woman"])
        for name in ("liker", "liked", "matched", "former")
    ]
    for user in (liker, liked, matched, former):
        await assert_hidden(api, user, owner.id, user.username)

    # Who liked her may look at her again (discover no longer lists her for them).
    await like(api, liker, owner)
    assert (await profile(api, liker, owner.id)).status == 200
    # Whom she liked may look at her (her like is in their likes received).
    await like(api, owner, liked)
    assert (await profile(api, liked, owner.id)).status == 200
    # Matches see each other, and so do former matches: their closed conversation stays readable.
    await like(api, owner, matched)
    assert (await like(api, matched, owner)).body["match"] is not None
    await like(api, owner, former)
    match = (await like(api, former, owner)).body["match"]
    assert (await api.delete(f"/api/matches/{match['id']}/", token=owner.access)).status == 204
    for user in (matched, former):
        seen = await profile(api, user, owner.id)
        assert seen.status == 200 and seen.body["id"] == owner.id, user.username
        # And she sees them: every relation opens both ways.
        assert (await profile(api, owner, user.id)).status == 200, user.username
    # A block closes every door, whatever the relation.
    assert (await api.post("/api/blocks/", {"user_id": former.id}, token=owner.access)).status in (200, 201)
    await assert_hidden(api, former, owner.id, "blocked")
    await assert_hidden(api, owner, former.id, "blocker")


async def test_everyone_reads_their_own_profile(api, services):
    loner = await seed_user(services, "loner", gender="woman", interested_in=["nonbinary"], age_min=80)
    seen = await profile(api, loner, loner.id)
    assert seen.status == 200 and seen.body["id"] == loner.id


# -- how often --------------------------------------------------------------------------------------------


@with_settings(profile_reads_per_minute=5)
async def test_profile_reads_are_budgeted_per_reader(api, services):
    owner = await seed_user(services, "owner")
    reader = await seed_user(services, "reader")
    other = await seed_user(services, "other")
    # Reads of ids that answer 404 count too: counting ids is what the budget is for.
    for user_id in (owner.id, owner.id, 10**9, 10**9 + 1, other.id):
        assert (await profile(api, reader, user_id)).status in (200, 404)
    assert_throttled(await profile(api, reader, owner.id))
    # Reading one's own profile is not reading anyone's.
    assert (await profile(api, reader, reader.id)).status == 200
    # Another reader has a budget of their own.
    assert (await profile(api, other, owner.id)).status == 200
