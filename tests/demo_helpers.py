"""What the demo page's browser tests share: `server.py` as a subprocess, Chromium through Playwright,
the page steps a person takes (sign up, sign in, write), test images, and screenshots for docs/.

Debian's Chromium (`/usr/bin/chromium`, installed by `make test`) is driven by Playwright's sync API.
Screenshots go to docs/ only when missing there or with UPDATE_SCREENSHOTS=1, so that a test run leaves
the work tree as it was.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo

from services.storage.embedded import free_port
from tests.processes import unavailable
from tests.support import TEST_SECRET

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"
# No sandbox (root in CI), no GPU, nothing phoning home; and Chromium's Local Network Access checks
# would otherwise block the page's WebSockets to the loopback server.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=LocalNetworkAccessChecks",
]
PASSWORD = "correct horse battery"
TIMEOUT_MS = 15_000
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def require_playwright() -> Any:
    """Playwright's sync API, or skip (fail under CI) when it or Chromium is missing."""
    missing = None
    if importlib.util.find_spec("playwright") is None:
        missing = "the playwright package is not installed (pip install -e '.[test]')"
    elif not os.path.exists(CHROMIUM):
        missing = f"{CHROMIUM} is not installed (make test installs it)"
    if missing:
        unavailable(missing)
    from playwright import sync_api

    return sync_api


@contextlib.contextmanager
def launched_chromium(sync_api: Any) -> Iterator[Any]:
    """Chromium launched through Playwright (and `expect` given the tests' timeout); closed afterwards."""
    sync_api.expect.set_options(timeout=TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class DemoServer:
    """`python server.py` on a fixed port, restartable on the same port and database.

    `settings` are environment variables on top of the test defaults (e.g. a tiny rate limit)."""

    def __init__(self, data_dir: Path, mongo_url: str, settings: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.database = "demo_" + uuid.uuid4().hex[:12]
        self.base = f"http://127.0.0.1:{self.port}"
        # Who each token handed out by `token()` belongs to: the server's access tokens live 12 s, shorter
        # than a browser test, so a REST check made late in a test signs in again instead of failing.
        self.token_owners: dict[str, str] = {}
        self.env = {
            **os.environ,
            "MONGODB_URL": mongo_url,
            "MONGODB_DATABASE": self.database,
            "JWT_SECRET": TEST_SECRET,
            "MONGODB_TIMEOUT_MS": "3000",  # as tests/support.py make_settings: a loaded machine
            "PUBLIC_URL": self.base,
            # Access tokens shorter than the tests, so the pages' scheduled refresh has to work.
            "ACCESS_TOKEN_TTL": "12",
            # Tests post batches of messages at once.
            "MESSAGE_BURST": "100",
            **(settings or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "server.py", "--port", str(self.port), "--data-dir", str(self.data_dir)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.request("GET", "/livez", timeout=1)[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not answer /livez:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM: the server closes every WebSocket with 1001 and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        """The end of the server's log, for failure messages."""
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        timeout: float = 10,
        *,
        raw: bytes | None = None,
        content_type: str = "application/octet-stream",
    ) -> tuple[int, Any]:
        """One HTTP call: `body` as JSON, or `raw` bytes typed `content_type`; (status, JSON answer)."""
        headers: dict[str, str] = {}
        data: bytes | None = None
        if raw is not None:
            headers["Content-Type"] = content_type
            data = raw
        elif body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, data, headers)
            answer = connection.getresponse()
            text = answer.read()
        finally:
            connection.close()
        return answer.status, json.loads(text) if text else None

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """A REST call that must succeed; its JSON answer. A token of `token()` that expired is renewed."""
        status, data = self.request(method, path, body, token)
        if status == 401 and token in self.token_owners and data["error"]["code"] == "token_expired":
            status, data = self.request(method, path, body, self.token(self.token_owners[token]))
        assert status < 300, (method, path, status, data)
        return data

    def token(self, username: str) -> str:
        access = str(self.call("POST", "/api/token/", {"username": username, "password": PASSWORD})["access"])
        self.token_owners[access] = username
        return access

    def register(self, username: str, **profile: Any) -> str:
        """An account made over REST (the page is not what is tested); its access token."""
        self.call("POST", "/api/register/", {"username": username, "password": PASSWORD, **profile})
        return self.token(username)

    def match(self, token_a: str, token_b: str) -> int:
        """Two accounts like each other: the id of their conversation."""
        a = self.call("GET", "/api/users/me/", token=token_a)["id"]
        b = self.call("GET", "/api/users/me/", token=token_b)["id"]
        self.call("POST", "/api/likes/", {"user_id": b}, token_a)
        liked = self.call("POST", "/api/likes/", {"user_id": a}, token_b)
        return int(liked["match"]["conversation_id"])


@contextlib.contextmanager
def running_server(data_dir: Path, mongo_url: str, settings: dict[str, str] | None = None) -> Iterator[DemoServer]:
    """A started DemoServer; stopped, and its database dropped, afterwards."""
    node = DemoServer(data_dir, mongo_url, settings)
    node.start()
    try:
        yield node
    finally:
        node.stop()
        with pymongo.MongoClient[dict[str, Any]](mongo_url) as client:
            client.drop_database(node.database)


# -- images -----------------------------------------------------------------------------------------------

# Background gradients of the test portraits: (top-left RGB, bottom-right RGB).
PALETTES = {
    "rose": ((190, 60, 120), (240, 120, 160)),
    "teal": ((20, 110, 120), (90, 190, 170)),
    "amber": ((200, 110, 20), (250, 190, 80)),
    "violet": ((80, 50, 160), (160, 120, 230)),
}


def portrait_png(size: int = 96, palette: str = "rose") -> bytes:
    """A valid PNG: a gradient background with a lighter head and shoulders, to upload as a photo."""
    (r0, g0, b0), (r1, g1, b1) = PALETTES[palette]
    rows = []
    for y in range(size):
        row = bytearray([0])
        for x in range(size):
            inside = (x - size / 2) ** 2 + (y - size * 0.42) ** 2 < (size * 0.22) ** 2
            shoulders = (x - size / 2) ** 2 / 2.2 + (y - size * 1.05) ** 2 < (size * 0.4) ** 2
            if inside or shoulders:
                row += bytes((253, 226, 214))
            else:
                t = (x + y) / (2 * size)
                row += bytes((int(r0 + (r1 - r0) * t), int(g0 + (g1 - g0) * t), int(b0 + (b1 - b0) * t)))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def upload_file(name: str, data: bytes, mime: str = "image/png") -> dict[str, Any]:
    """A file for Playwright's `set_input_files`."""
    return {"name": name, "mimeType": mime, "buffer": data}


# -- page steps ----------------------------------------------------------------------------------------


def watch(page: Any, problems: list[str], refreshes: list[int] | None = None) -> None:
    """Record script errors, CSP refusals and failed requests (while the server is down or the browser
    offline, failed connections are expected and ignored), and the statuses of token refreshes.

    Answers the test provokes on purpose (a 4xx of a refused upload, a 429) are logged by Chromium as
    failed resources too: `expected_statuses` of `problems_of` lets those through."""
    page.on("pageerror", lambda error: problems.append(f"pageerror: {error}"))
    if refreshes is not None:
        page.on("response", lambda r: refreshes.append(r.status) if r.url.endswith("/api/token/refresh/") else None)

    def console(message: Any) -> None:
        text = message.text
        expected = "WebSocket connection to" in text or "Failed to load resource: net::" in text
        if message.type == "error" and not expected:
            problems.append(f"console: {text}")
        if "Content Security Policy" in text or "Refused to" in text:
            problems.append(f"csp: {text}")

    page.on("console", console)


def unexpected(problems: list[str], *statuses: int) -> list[str]:
    """`problems` without Chromium's "Failed to load resource" lines for the given HTTP statuses."""
    allowed = tuple(f"status of {status} " for status in statuses)
    return [p for p in problems if not ("Failed to load resource" in p and any(a in p for a in allowed))]


def register(
    page: Any, username: str, name: str, gender: str, wants: str, birthdate: str, bio: str, location: str = ""
) -> None:
    """Sign up through the page's form; an empty `birthdate` is left out, `location` is a choice of its
    Location field ("here" or a city's name)."""
    page.get_by_role("tab", name="Create account").click()
    form = page.locator("#register-form")
    form.get_by_label("Username").fill(username)
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_label("Display name").fill(name)
    if birthdate:
        form.get_by_label("Birth date").fill(birthdate)
    form.get_by_label("I am").select_option(gender)
    for box in form.locator("input[name=interested_in]").all():
        box.set_checked(box.get_attribute("value") == wants)
    if location:
        form.get_by_label("Location").select_option(location)
    form.get_by_label("About you").fill(bio)
    form.get_by_role("button", name="Create account").click()


def sign_in(page: Any, username: str) -> None:
    form = page.locator("#signin-form")
    form.get_by_label("Username").fill(username)
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_role("button", name="Sign in").click()


def say(page: Any, text: str) -> None:
    box = page.locator("#composer-input")
    box.press_sequentially(text, delay=4)  # real key presses: the page sends `typing` frames
    box.press("Enter")


def dismiss_toasts(page: Any) -> None:
    """Close every toast, including any that arrive meanwhile (they would cover part of a screenshot)."""
    deadline = time.monotonic() + 10
    while page.locator(".toast").count() and time.monotonic() < deadline:
        for close in page.get_by_role("button", name="Dismiss").all():
            with contextlib.suppress(Exception):  # one may leave by itself meanwhile
                close.click(timeout=1000)
        page.wait_for_timeout(300)  # a toast leaves in 200 ms
    assert page.locator(".toast").count() == 0, "toasts kept coming"


# -- screenshots ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def viewport(page: Any, size: dict[str, int]) -> Iterator[None]:
    """The page at another window size for a while (a phone-sized screenshot), then back."""
    before = page.viewport_size
    page.set_viewport_size(size)
    try:
        yield
    finally:
        page.set_viewport_size(before)


def screenshot(page: Any, name: str, scratch: Path) -> Path:
    """Take `name`.png of the page; copy it into docs/ when missing there or with UPDATE_SCREENSHOTS=1."""
    page.mouse.move(0, 0)  # no hover effect in the picture
    shot = scratch / f"{name}.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 5_000, name
    target = DOCS / f"{name}.png"
    if os.environ.get("UPDATE_SCREENSHOTS") or not target.exists():
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(shot, target)
    return shot
