"""What a central Prometheus needs from a node: a listener of its own (METRICS_PORT) that serves only
/metrics, a bearer token (METRICS_TOKEN) when it is reachable from the network, and a gauge saying whether
MongoDB and Redis answer (chat_backend_up)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from typing import Any

import pytest
import tornado.httpclient

from services.core.config import SettingError, Settings
from services.storage.embedded import EmbeddedMongo, free_port
from tests.processes import ServerProcess, node_env, pause_process
from tests.support import TEST_SECRET, ApiClient, PortClient, assert_error
from tests.ws_helpers import wait_for

TOKEN = "scrape-" + "x" * 32


def backend_up(text: str) -> dict[str, float]:
    return {b: float(v) for b, v in re.findall(r'^chat_backend_up\{backend="(\w+)"\} (\S+)$', text, re.M)}


async def test_backend_up_reports_mongodb_and_redis(cluster_factory):
    [node] = await cluster_factory(1)
    await wait_for(lambda: len(backend_up(node.services.metrics.render().decode())) == 2, timeout=10)
    scraped = await node.api.get("/metrics")
    assert scraped.status == 200
    assert backend_up(scraped.body.decode()) == {"mongodb": 1.0, "redis": 1.0}


@pytest.fixture
def mongo_url(own_store: EmbeddedMongo) -> str:
    return own_store.url


@pytest.mark.parametrize("settings_overrides", [{"mongodb_timeout_ms": 500}], indirect=True)
async def test_backend_up_drops_to_zero_while_mongodb_does_not_answer(api, services, own_store):
    await services.probe_backends()
    assert backend_up((await api.get("/metrics")).body.decode()) == {"mongodb": 1.0}  # no Redis configured: no series
    assert own_store.process is not None
    pause_process(own_store.process.pid)
    try:
        assert (await services.probe_backends())["mongodb"] is False
        assert backend_up((await api.get("/metrics")).body.decode()) == {"mongodb": 0.0}
    finally:
        os.kill(own_store.process.pid, signal.SIGCONT)
    await wait_for_async_true(services)


async def wait_for_async_true(services) -> None:
    """The store answers probes again once it is resumed (the driver reconnects)."""
    for _ in range(50):
        if (await services.probe_backends())["mongodb"]:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("MongoDB never answered a probe again")


@pytest.mark.parametrize("settings_overrides", [{"metrics_token": TOKEN}], indirect=True)
async def test_a_metrics_token_is_required_when_set(api, services):
    assert_error(await api.get("/metrics"), 401, "not_authenticated")
    assert_error(await api.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "not_authenticated")
    assert_error(await api.get("/metrics", headers={"Authorization": TOKEN}), 401, "not_authenticated")
    scraped = await api.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert scraped.status == 200 and "chat_websockets_open" in scraped.body.decode()


@pytest.mark.slow
async def test_the_metrics_port_serves_metrics_and_nothing_else(tmp_path, mongo_url):
    metrics_port = free_port()
    env = node_env(mongo_url, METRICS_PORT=str(metrics_port), METRICS_TOKEN=TOKEN)
    node = ServerProcess(tmp_path / "node", env).start()
    try:
        metrics = ApiClient(PortClient(metrics_port))
        await wait_for_port_answer(metrics)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        scraped = await metrics.get("/metrics", headers=bearer)
        assert scraped.status == 200 and "process_resident_memory_bytes" in scraped.body.decode()
        assert_error(await metrics.get("/metrics"), 401, "not_authenticated")
        for path in ("/api/users/me/", "/readyz", "/", "/static/app.js"):
            assert_error(await metrics.get(path, headers=bearer), 404, "not_found")
        # The main port keeps its /metrics, behind the same token.
        main = ApiClient(PortClient(node.port))
        assert (await main.get("/metrics", headers=bearer)).status == 200
        assert_error(await main.get("/metrics"), 401, "not_authenticated")
    finally:
        node.stop()


async def wait_for_port_answer(client: ApiClient) -> None:
    for _ in range(100):
        try:
            await client.get("/metrics")
            return
        except (OSError, tornado.httpclient.HTTPClientError):
            await asyncio.sleep(0.1)
    raise AssertionError("the metrics listener never answered")


def test_production_refuses_a_network_metrics_listener_without_a_token(tmp_path):
    base: dict[str, Any] = {
        "environment": "production",
        "jwt_secret": TEST_SECRET,
        "single_node": True,
        "data_dir": str(tmp_path),
        "metrics_port": 9100,
    }
    with pytest.raises(SettingError, match="METRICS_TOKEN") as refused:
        Settings(**base, metrics_host="10.0.0.5").validate()
    assert refused.value.setting == "METRICS_TOKEN"
    Settings(**base, metrics_host="10.0.0.5", metrics_token=TOKEN).validate()
    Settings(**base).validate()  # loopback: only this machine can scrape
