"""A production node refuses to start without a shared store and bus unless told it runs alone.

An empty MONGODB_URL starts an embedded database, and an empty REDIS_URL an in-process bus: right for
one node, silently wrong for one of several (each its own database, or an island). With
ENVIRONMENT=production either empty URL stops `server.py` with exit code 2 and a JSON log line naming
the setting, unless SINGLE_NODE=true says the node runs alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from services.core.config import SettingError, Settings
from services.storage.embedded import free_port
from tests.processes import RedisProcess
from tests.support import TEST_SECRET

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def production_env(**settings: str) -> dict[str, str]:
    """This environment without any server setting, then a production node's, then `settings`."""
    knobs = {env for env, _, _ in Settings.describe()}
    base = {k: v for k, v in os.environ.items() if k not in knobs}
    return {**base, "ENVIRONMENT": "production", "JWT_SECRET": TEST_SECRET, **settings}


def refusal(tmp_path: Path, **settings: str) -> tuple[dict[str, Any], Path]:
    """Run a node that must refuse to start: its one error line (JSON), and its data directory."""
    data_dir = tmp_path / "data"
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--port", str(free_port()), "--data-dir", str(data_dir)],
        cwd=ROOT,
        env=production_env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert time.monotonic() - began < 30
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]  # JSON, every one
    errors = [line for line in lines if line["level"] == "error"]
    assert len(errors) == 1, lines
    return errors[0], data_dir


def test_an_empty_mongodb_url_is_refused_in_production(tmp_path, redis_url):
    line, data_dir = refusal(tmp_path, REDIS_URL=redis_url)
    assert line["setting"] == "MONGODB_URL"
    assert "MONGODB_URL" in line["msg"] and "SINGLE_NODE" in line["msg"]
    # Refused before anything started: no embedded database was created.
    assert not (data_dir / "mongo").exists()


def test_an_empty_redis_url_is_refused_in_production(tmp_path, mongo_url):
    line, _ = refusal(tmp_path, MONGODB_URL=mongo_url)
    assert line["setting"] == "REDIS_URL"
    assert "REDIS_URL" in line["msg"] and "SINGLE_NODE" in line["msg"]


def test_a_refusal_is_a_text_line_when_text_logs_are_asked_for(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--data-dir", str(tmp_path), "--log-format", "text"],
        cwd=ROOT,
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ERROR" in result.stderr and "MONGODB_URL" in result.stderr
    assert not result.stderr.lstrip().startswith("{")


def test_settings_name_the_missing_url():
    with pytest.raises(SettingError) as refused:
        Settings.from_env({"ENVIRONMENT": "production", "JWT_SECRET": TEST_SECRET, "MONGODB_URL": "mongodb://m/"})
    assert refused.value.setting == "REDIS_URL"
    # Development keeps its zero-configuration start, and production accepts both URLs.
    assert Settings.from_env({}).single_node is False
    both = {
        "ENVIRONMENT": "production",
        "JWT_SECRET": TEST_SECRET,
        "MONGODB_URL": "mongodb://m/",
        "REDIS_URL": "redis://r",
    }
    assert Settings.from_env(both).environment == "production"


def get(port: int, path: str) -> int:
    try:
        with _opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("with_redis", [False, True])
def test_single_node_runs_alone_in_production(tmp_path, with_redis):
    redis = RedisProcess(tmp_path / "redis")
    if with_redis:
        redis.start()
    port = free_port()
    settings = {"SINGLE_NODE": "true", **({"REDIS_URL": redis.url} if with_redis else {})}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "server.py"), "--port", str(port), "--data-dir", str(tmp_path / "data")],
            cwd=ROOT,
            env=production_env(**settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if get(port, "/readyz") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        assert (tmp_path / "data" / "mongo").is_dir()  # the embedded store, as asked
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        redis.stop()
