"""How fast anyone may create accounts and read other people's profiles.

Both are rate budgets (services/realtime/counters.py: per node, or shared by every node through Redis):
sign-ups per client address, so that one host cannot mint accounts by the hundred (an IPv6 host per /64,
as sign-in throttling counts it), and profile reads per reader, so that even the profiles one may read
cannot be harvested at the speed of a loop.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from services.accounts.throttle import address_key
from services.core.config import Settings
from services.realtime.counters import Rate, RateCounters, check_rate

MINUTE_S = 60.0


def signup_rate(settings: Settings) -> Rate:
    return Rate("signups", settings.signups_per_ip, settings.signup_window_s, "sign-ups from this address")


def profile_read_rate(settings: Settings) -> Rate:
    return Rate("profile_reads", settings.profile_reads_per_minute, MINUTE_S, "profile reads")


def signup_budget(rates: RateCounters, settings: Settings, client_ip: str | None) -> Callable[[], Awaitable[None]]:
    """What registration calls once a request would create an account (valid fields, a free name), and
    only then: raises RateLimited (429 with Retry-After) when the address has created its share."""
    return functools.partial(check_rate, rates, signup_rate(settings), address_key(client_ip))


async def spend_profile_read(rates: RateCounters, settings: Settings, reader_id: int) -> None:
    """One read of someone's profile by `reader_id`, whatever its answer, or RateLimited."""
    await check_rate(rates, profile_read_rate(settings), reader_id)
