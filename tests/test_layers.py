"""The folders show the architecture, and imports keep to it: edge -> features -> real-time and storage.

Read from the source (every import statement, those inside functions included), so a shortcut across
layers fails here the day it is written. docs/architecture.md explains the layers.
"""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
FEATURES = ("chat", "matching", "accounts", "push", "media")


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(*folders: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for folder in folders:
        target = ROOT / folder
        paths = [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))
        for path in paths:
            found[module_name(path)] = imports_of(path)
    return found


def within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def violations(sources: dict[str, set[str]], forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module, names in sources.items()
        for name in names
        if within(name, *forbidden) and not within(name, *allowed)
    )


def test_the_edge_never_touches_storage_or_drivers():
    # server.py, the composition root, may start the embedded store; the request handlers may not.
    edge = modules("handlers")
    assert violations(edge, ("services.storage", "pymongo", "redis", "bson")) == []


def test_services_never_see_the_edge_or_the_web_framework():
    services = modules("services")
    # Push delivery sends HTTP requests with Tornado's non-blocking client: a client, not a request handler.
    http_client = ("tornado.httpclient", "tornado.simple_httpclient")
    assert violations(services, ("handlers", "server", "tornado"), allowed=http_client) == []


def test_storage_depends_on_no_feature_and_on_nothing_real_time():
    storage = modules("services/storage")
    assert (
        violations(storage, tuple(f"services.{p}" for p in (*FEATURES, "realtime", "core")), ("services.core.errors",))
        == []
    )


def test_the_real_time_layer_knows_no_feature():
    realtime = modules("services/realtime")
    assert violations(realtime, tuple(f"services.{f}" for f in FEATURES)) == []


def test_only_the_container_wires_features_together():
    core = {m: names for m, names in modules("services/core").items() if m != "services.core.container"}
    # Settings ask the push feature to check the push settings, so a bad key fails at start-up with
    # every other configuration error (a function call at validation time, not a dependency on state).
    push_check = ("services.push.delivery.check_push_settings", "services.push.delivery")
    assert violations(core, (*(f"services.{f}" for f in FEATURES), "services.realtime"), push_check) == []
    features = modules(*(f"services/{f}" for f in FEATURES if (ROOT / "services" / f).is_dir()))
    assert violations(features, ("services.core.container",)) == []


def test_every_module_the_docs_name_exists():
    documents = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {
        (doc.name, path)
        for doc in documents
        for path in re.findall(r"(?<![\w/.])(?:services|handlers|tests|bench|scripts)/[\w/]+\.py\b", doc.read_text())
    }
    assert sorted((doc, path) for doc, path in named if not (ROOT / path).is_file()) == []
