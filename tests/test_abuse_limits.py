"""Abuse by volume and by curiosity: sign-ups per address, and who may read whose profile, how often.

Sign-ups are budgeted per client address (SIGNUPS_PER_IP per SIGNUP_WINDOW; an IPv6 client per /64), the
address being the forwarded one only from TRUSTED_PROXIES, and shared by the nodes through Redis. A
profile is readable by the people who could meet its owner (discover candidates, likes either way,
matches current or former) and by nobody else, who gets the very answer for a missing user; and profile
reads are budgeted per reader (PROFILE_READS_PER_MINUTE).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import tornado.testing

from handlers.http_server import make_http_server
from services.core.config import Settings
from tests.support import PASSWORD, ApiClient, PortClient, Response, assert_error


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
