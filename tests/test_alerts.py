"""The Prometheus alert rules and the Grafana dashboard under deploy/ ask only for what nodes export:
`promtool check rules` accepts the rules, and every metric named in a rule or a panel is one a node's
/metrics shows (scraped after some traffic, plus the families declared with no sample yet)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import unavailable
from tests.ws_helpers import join, pair

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "chat.json"
# Names that are not metrics inside a PromQL expression.
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "le", "instance", "job", "endpoint", "backend",
    "status", "code", "scope", "outcome", "without", "on", "ignoring", "avg", "max", "min",
}  # fmt: skip
# Prometheus's own series for every scrape target.
SCRAPE_SERIES = {"up"}


def rule_expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def metric_names(expression: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', "", expression)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"e\d*", w)}


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool (Debian package prometheus) is not installed: make services installs it")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


async def test_every_metric_the_rules_and_the_dashboard_name_is_exported(api, services) -> None:
    p = await pair(api, services)
    ws = await join(api, p.cid, p.a)
    await ws.send({"type": "message", "content": "hi"})
    await ws.recv_type("message")
    scraped = await api.get("/metrics")
    assert scraped.status == 200
    text = scraped.body.decode() if isinstance(scraped.body, bytes) else str(scraped.body)
    exported = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    for family in services.metrics.registry.collect():  # declared, maybe without a sample yet
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        exported |= {family.name + suffix for suffix in suffixes}
    assert "process_resident_memory_bytes" in exported and "chat_http_requests_total" in exported
    named = set().union(*(metric_names(e) for e in rule_expressions() + dashboard_expressions()))
    assert named - exported - SCRAPE_SERIES == set()
    assert {"chat_event_loop_lag_seconds_bucket", "chat_backend_errors_total", "process_open_fds"} <= named
