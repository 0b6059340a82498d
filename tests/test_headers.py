"""WebSocket Origins from localhost pass in development only."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import ApiClient, ws_connect
from tests.ws_helpers import conv_path, pair


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(getattr(request, "param", {}))


# -- WebSocket origins --------------------------------------------------------------------------------------


async def origin_passes(api: ApiClient, path: str, origin: str) -> bool:
    ws = await ws_connect(api, path, headers={"Origin": origin})
    first = await ws.recv()
    ws.close()
    return first is not None and ws.close_code != 1008


@pytest.mark.parametrize("settings_overrides", [{"environment": "production"}], indirect=True)
async def test_in_production_localhost_origins_are_foreign(api, services):
    p = await pair(api, services)
    path = conv_path(p.cid, p.a)
    for origin in ("http://localhost:3000", "http://localhost", "http://[::1]:8080"):
        assert not await origin_passes(api, path, origin), origin
    # The server's own host still passes (the test reaches it as 127.0.0.1).
    assert await origin_passes(api, path, f"http://127.0.0.1:{api.port}")


async def test_in_development_localhost_origins_pass(api, services):
    p = await pair(api, services)
    for origin in ("http://localhost:3000", "http://[::1]:8080"):
        assert await origin_passes(api, conv_path(p.cid, p.a), origin), origin
