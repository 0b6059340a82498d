"""The store-query audit: every query the server sends to MongoDB during the tests is recorded (PyMongo
command monitoring, registered before any client exists), as its collection and filter shape (field names
and operators, never values), and checked at the end of the run against docs/mongodb.md: on a large
collection a query must be served by a documented index (one of its fields starts an index, or is `_id`),
must have no top-level `$or`, `$and` or other operator (the embedded store then reads the whole
collection, whatever the indexes), and, where the collection has a shard key, must name the key's first
field so a sharded deployment routes it to one shard. Offending shapes fail the run with a report.

Only queries the server issues count: a command whose nearest caller outside the driver is test code
(fixtures seeding or reading the store) is not recorded. With pytest-xdist each worker writes what it saw to
a file in a directory the controller chose, and the controller checks the union once the workers finish.
`CHAT_STORE_AUDIT=0` turns the audit off.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import monitoring

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "mongodb.md"
_SERVER_CODE = tuple(str(ROOT / part) for part in ("services", "handlers", "server.py"))
_TEST_CODE = str(ROOT / "tests")
ENV_DIR = "CHAT_STORE_AUDIT_DIR"

# The filter of each command, by command name (`update` and `delete` carry one per statement).
_FILTER_KEY = {"find": "filter", "count": "query", "distinct": "query", "findAndModify": "query"}
_ID_IN_PATH = re.compile(r"\.\d+(?=\.|$)")
_STATEMENTS = {"update": ("updates", "q"), "delete": ("deletes", "q")}

# Deliberate exceptions, (collection, caller path, shape or "*"): each with its reason. Keep it short.
ALLOWED: dict[tuple[str, str, str], str] = {
    # docs/mongodb.md, Sharding: the conversation list by participant asks every shard, one page per
    # request, each served by `by_participant`.
    ("conversations", "services/chat/service.py:list_conversations", "*"): "one page per request",
    # A user's open conversations, read once when their socket opens, from `by_participant` on each shard.
    ("conversations", "services/chat/presence.py:_read_open_conversations", "*"): "once per socket",
    # A profile's presence shows only to a user who shares an open conversation with it: asked by the
    # pair of participants (`by_participant`), on every shard.
    ("conversations", "services/chat/presence.py:profile_view", "*"): "one profile per request",
    # docs/mongodb.md, Sharding: "liked you" (`received`, by `to_id`) asks every shard.
    ("likes", "services/matching/service.py:_received_window", "*"): "one page per request",
    # Deleting an account walks everything that names the user, once: by `to_id` (served by `received`,
    # `blocked_by`, `passed_by`) and by participant, on every shard.
    ("likes", "services/accounts/deletion.py:finish", "{to_id}"): "account deletion",
    ("passes", "services/accounts/deletion.py:finish", "{to_id}"): "account deletion",
    ("blocks", "services/accounts/deletion.py:finish", "{to_id}"): "account deletion",
    ("conversations", "services/accounts/deletion.py:_erase_messages", "{participants}"): "account deletion",
    # An account export (services/accounts/export.py) reads the user's conversations by participant, once.
    ("conversations", "services/accounts/export.py:_account", "*"): "account export",
    ("conversations", "services/accounts/export.py:entries", "{participants}"): "account export",
    # The one-time copy of uploads kept on disk by an older version into the database walks every
    # attachment and user (services/media/migrate.py), once per data directory.
    ("attachments", "services/media/migrate.py:owners", "{}"): "one-time migration",
    ("users", "services/media/migrate.py:owners", "{}"): "one-time migration",
    # GridFS asks whether the bucket is empty (one document, `limit: 1`) before a process's first upload,
    # to create its indexes then.
    ("media.files", "services/media/blobs.py:put", "{}"): "GridFS's first-upload probe",
    ("media.chunks", "services/media/blobs.py:put", "{}"): "GridFS's first-upload probe",
}


def shape_of(value: Any) -> Any:
    """The filter without its values: field names and operators, in a stable order."""
    if isinstance(value, dict):
        # A path that holds an id (`mutes.42`) is one shape whatever the id.
        return {_ID_IN_PATH.sub(".N", key): shape_of(sub) for key, sub in sorted(value.items())}
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        return [shape_of(item) for item in value if isinstance(item, dict)]  # `$or`, `$and` clauses
    return None  # a value, or a list of values (`$in`)


def render(shape: Any) -> str:
    """A shape as short text: `{_id: {$in}, conversation_id}`."""
    if isinstance(shape, dict):
        parts = [key if sub is None else f"{key}: {render(sub)}" for key, sub in shape.items()]
        return "{" + ", ".join(parts) + "}"
    if isinstance(shape, list):
        return "[" + ", ".join(render(item) for item in shape) + "]"
    return "?"


def branches(shape: dict[str, Any]) -> list[set[str]]:
    """The top-level fields a filter constrains, once per `$or` branch (`$and` is merged)."""
    fields = {key for key in shape if not key.startswith("$")}
    alternatives = [fields]
    for clause in shape.get("$and") or []:
        alternatives = [own | more for own in alternatives for more in branches(clause)]
    ors = shape.get("$or")
    if ors:
        alternatives = [own | more for own in alternatives for branch in ors for more in branches(branch)]
    return alternatives


@dataclass(frozen=True)
class Rules:
    indexes: dict[str, list[str]]  # collection -> the first field of each documented index
    shard_keys: dict[str, str]  # collection -> the first field of its shard key
    large: set[str]


def documented_rules(text: str | None = None) -> Rules:
    """The index table, the shard-key table and the list of large collections of docs/mongodb.md."""
    text = DOC.read_text() if text is None else text
    indexes: dict[str, list[str]] = {}
    for collection, keys in re.findall(r"^\| ([\w.]+) \| `\w+` \| ([^|]+) \|", text, re.MULTILINE):
        first = re.findall(r"`([\w.]+)`", keys)
        if first:
            indexes.setdefault(collection, []).append(first[0])
    shard_keys: dict[str, str] = {}
    for collections, key in re.findall(r"^\| ([\w., ]+) \| `\{(\w+):[^`]*\}` \|", text, re.MULTILINE):
        for collection in collections.split(","):
            shard_keys[collection.strip()] = key
    found = re.search(r"^Large collections: (.+)$", text, re.MULTILINE)
    assert found, "docs/mongodb.md lists no large collections"
    large = set(re.findall(r"`([\w.]+)`", found.group(1)))
    return Rules(indexes, shard_keys, large)


def violations(records: list[dict[str, Any]], rules: Rules) -> list[str]:
    """What the audit refuses: one line per (collection, shape, caller), with what is missing."""
    problems: set[str] = set()
    for record in records:
        collection, shape = record["collection"], record["shape"]
        if collection not in rules.large:
            continue
        text = render(shape)
        if (collection, record["caller"], text) in ALLOWED or (collection, record["caller"], "*") in ALLOWED:
            continue
        indexed = {"_id", *rules.indexes.get(collection, [])}
        key = rules.shard_keys.get(collection)
        operators = sorted(field for field in shape if field.startswith("$"))
        if operators:
            # Whatever else the filter names: the embedded store plans no index for it and reads everything.
            problems.add(
                f"{collection} {record['command']} {text} from {record['caller']}: a top-level "
                f"{', '.join(operators)}, which the embedded store answers by reading the whole collection"
            )
        for fields in branches(shape):
            missing = []
            if not fields & indexed:
                missing.append("no documented index starts with one of its fields")
            if key is not None and key not in fields:
                missing.append(f"does not name the shard key's `{key}`")
            if missing:
                problems.add(f"{collection} {record['command']} {text} from {record['caller']}: " + "; ".join(missing))
    return sorted(problems)


class Recorder(monitoring.CommandListener):
    """Records the shape of every query the server issues; cheap enough to stay on for the whole run."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _caller() -> str | None:
        """The nearest project file on the stack: server code, or None for test code (or none at all)."""
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(_SERVER_CODE):
                return f"{os.path.relpath(name, ROOT)}:{frame.f_code.co_name}"
            if name.startswith(_TEST_CODE):
                return None
            frame = frame.f_back  # type: ignore[assignment]
        return None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        command = event.command
        if name in _FILTER_KEY:
            filters = [command.get(_FILTER_KEY[name]) or {}]
        elif name in _STATEMENTS:
            many, key = _STATEMENTS[name]
            filters = [statement.get(key) or {} for statement in command.get(many) or []]
        elif name == "aggregate":
            stages = command.get("pipeline") or [{}]
            first = stages[0]
            filters = [first.get("$match") or ({"$geoNear": {}} if "$geoNear" in first else {})]
        else:
            return
        collection = command.get(name)
        if not isinstance(collection, str):
            return
        caller = self._caller()
        if caller is None:
            return
        for query in filters:
            shape = shape_of(query)
            record = {"collection": collection, "command": name, "shape": shape, "caller": caller}
            with self._lock:
                self.seen.setdefault((collection, name, render(shape), caller), record)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


RECORDER = Recorder()


def enabled() -> bool:
    return os.environ.get("CHAT_STORE_AUDIT", "1") != "0"


def configure(config: pytest.Config) -> None:
    """Register the listener before any client exists; on the controller, choose where workers write."""
    if not enabled():
        return
    monitoring.register(RECORDER)
    if not hasattr(config, "workerinput"):
        # A directory of this run's own (workers inherit it): never one an enclosing run chose.
        os.environ[ENV_DIR] = tempfile.mkdtemp(prefix="store-audit-")


def finish(session: pytest.Session) -> None:
    """Workers write what they saw; the controller (or a run without workers) checks everything."""
    if not enabled():
        return
    directory = Path(os.environ[ENV_DIR])
    records = list(RECORDER.seen.values())
    workerinput = getattr(session.config, "workerinput", None)
    if workerinput is not None:
        (directory / f"{workerinput['workerid']}.json").write_text(json.dumps(records))
        return
    for path in sorted(directory.glob("*.json")):
        records.extend(json.loads(path.read_text()))
    shutil.rmtree(directory, ignore_errors=True)
    problems = violations(records, documented_rules())
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if problems:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_sep("=", "store query audit: queries not served by an index or not targeted", red=True)
            for line in problems:
                reporter.write_line(line)
            reporter.write_line("See docs/mongodb.md, 'The query audit'.")
    elif reporter is not None and records:
        reporter.write_line(f"store query audit: {len(records)} query shapes, all indexed and targeted")
