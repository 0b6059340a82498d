"""schemathesis against the served OpenAPI document, on a real server process.

Every operation of /api/openapi.json is called with inputs generated from its schema (examples,
boundary values, random fuzzing, and stateful sequences that follow the document's links), as a signed-in
user who has a match and a conversation, and each answer must pass:

- not_a_server_error: never a 5xx;
- status_code_conformance: the status is one the document lists for the operation;
- content_type_conformance: the Content-Type is one the document lists;
- response_schema_conformance: the body validates against the documented schema.

Nothing is excluded: the business rules the schema cannot express (an adult birthdate, age_min <= age_max,
`before` and `after` together, liking oneself) are answered with a documented 400 and its envelope, which
all four checks accept. The run is bounded by --max-time, so it fits the suite's budget whatever the
machine's speed; a failure prints schemathesis's report, with the seed and a curl line to replay it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from tests.processes import ServerProcess, node_env
from tests.support import PASSWORD

pytestmark = pytest.mark.slow

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
MAX_TIME_S = 50


def schemathesis_cli() -> str:
    beside = Path(sys.executable).parent / "st"
    found = str(beside) if beside.exists() else shutil.which("st")
    if found is None:
        pytest.fail("schemathesis is not installed (make install installs the test extras)")
    return found


def call(base: str, path: str, body: dict[str, Any], token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - a local test server
        return json.loads(response.read())


def test_the_api_conforms_to_its_openapi_document(tmp_path, mongo_url):
    # Sends are judged on their content here, not refused for speed (limits have their own tests).
    env = node_env(mongo_url, MESSAGE_RATE="1000", MESSAGE_BURST="1000")
    database = env["MONGODB_DATABASE"]
    server = ServerProcess(tmp_path / "node", env).start()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(server.base + "/livez", timeout=2):  # noqa: S310
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        # A user with a match, a conversation and a message, so operations on them can succeed.
        users = []
        for name in ("st_alice", "st_bob"):
            users.append(
                call(server.base, "/api/register/", {"username": name, "password": PASSWORD, "birthdate": "1990-05-01"})
            )
        tokens = [call(server.base, "/api/token/", {"username": u["username"], "password": PASSWORD}) for u in users]
        call(server.base, "/api/likes/", {"user_id": users[1]["id"]}, tokens[0]["access"])
        match = call(server.base, "/api/likes/", {"user_id": users[0]["id"]}, tokens[1]["access"])["match"]
        call(
            server.base,
            f"/api/conversations/{match['conversation_id']}/messages/",
            {"content": "hi"},
            tokens[0]["access"],
        )

        run = subprocess.run(
            [
                schemathesis_cli(),
                "run",
                f"{server.base}/api/openapi.json",
                "--header",
                f"Authorization: Bearer {tokens[0]['access']}",
                "--checks",
                CHECKS,
                "--max-examples",
                "25",
                "--max-time",
                str(MAX_TIME_S),
                "--request-timeout",
                "10",
                "--workers",
                "1",
                "--no-color",
                "--warnings",
                "off",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=MAX_TIME_S + 40,
        )
        report = run.stdout[-6000:] + run.stderr[-2000:]
        assert run.returncode == 0, report
        assert "passed" in run.stdout, report
    finally:
        server.stop()
        MongoClient(mongo_url).drop_database(database)
    log = server.log()
    assert "Traceback" not in log, log[-4000:]
