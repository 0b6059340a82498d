"""The container setup (deploy/Dockerfile, deploy/nginx.Dockerfile, deploy/compose.yaml,
deploy/nginx-compose.conf, .dockerignore) checked without a Docker engine, which this machine lacks:
every file they copy or mount exists and is sent to the build, the command is one server.py accepts,
the health check asks a route the server has, and compose's addresses, ports and trusted proxy agree
with the nginx configuration the image runs."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

import server
from handlers import health

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for word, rest in instructions(dockerfile):
        if word == "COPY" and not rest.startswith("--from"):
            sources += shlex.split(rest)[:-1]
    return sources


def sent_to_the_build(path: str) -> bool:
    """Whether .dockerignore (ignore everything, then re-include) lets `path` into the build context."""
    sent = True
    for rule in (ROOT / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negated = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") or pattern == "*":
            sent = negated
    return sent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "nginx.Dockerfile"])
def test_every_copied_file_exists_and_is_sent_to_the_build(dockerfile: str) -> None:
    sources = copy_sources(DEPLOY / dockerfile)
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert sent_to_the_build(source), f"{source} is excluded by .dockerignore"
    assert not sent_to_the_build(".venv") and not sent_to_the_build("tests")


def test_the_node_image_runs_server_py_with_flags_it_accepts_and_checks_a_real_route() -> None:
    steps = instructions(DEPLOY / "Dockerfile")
    command = json.loads(next(rest for word, rest in steps if word == "CMD"))
    assert command[:3] == ["python", "-m", "server"]
    assert "server" in (ROOT / "setup.cfg").read_text().split("py_modules =")[1].split("\n")[0]
    server.parse_args(command[3:])  # exits on a flag it does not know
    healthcheck = next(rest for word, rest in steps if word == "HEALTHCHECK")
    checked = re.search(r"'(/[a-z]+)'", healthcheck)
    assert checked is not None and checked.group(1) in {path for path, _ in health.routes}
    environment = " ".join(rest for word, rest in steps if word == "ENV")
    assert "ENVIRONMENT=production" in environment and "USER" in {word for word, _ in steps}


def test_compose_nodes_are_nginx_upstream_and_trust_only_nginx(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), name
    nodes = {name: s for name, s in services.items() if name.startswith("node")}
    assert len(nodes) == 3
    upstream = (DEPLOY / "nginx-compose.conf").read_text()
    servers = set(re.findall(r"^\s*server (\d+\.\d+\.\d+\.\d+):(\d+)", upstream, re.MULTILINE))
    addresses = {(node["networks"]["chat"]["ipv4_address"], node["environment"]["PORT"]) for node in nodes.values()}
    assert addresses == servers
    nginx_address = services["nginx"]["networks"]["chat"]["ipv4_address"]
    for node in nodes.values():
        environment = node["environment"]
        assert environment["TRUSTED_PROXIES"] == nginx_address
        assert environment["MONGODB_URL"].startswith("mongodb://mongo:") and environment["REDIS_URL"]
        assert environment["NODE_ID"] and environment["ENVIRONMENT"] == "production"
    assert services["nginx"]["ports"] and all("ports" not in node for node in nodes.values())
