"""The project as a user installs it: an sdist built from the working tree, turned into a wheel and
installed (not editable) into a fresh virtualenv, then started from a folder outside the checkout. It
must serve the demo page, its scripts and the API docs page from the installed copy alone.

Nothing is downloaded: the third-party dependencies are the dev venv's, seen through a `.pth` file that
names a mirror of its site-packages without this project's own files. The dev venv's editable install is
a `.pth` hook that puts the checkout on the import path; it lives only in the dev site-packages, whose
`.pth` files the fresh interpreter never runs (a folder named in a `.pth` file is added to sys.path,
its own `.pth` files are not read), and the mirror leaves it out as well.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from services.core.config import Settings
from services.storage.embedded import free_port, wait_for_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DIST_NAME = "chat-matching-server"
# What the project puts in site-packages (setup.cfg): kept out of the dependency mirror.
PROJECT_TOP_LEVEL = {"handlers", "services", "static", "server.py"}
# bdist_wheel ships inside setuptools from this version on; older ones need the `wheel` package.
MIN_SETUPTOOLS = (70, 1)

# Straight to 127.0.0.1: a proxy configured in the environment must not sit between test and server.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Installed:
    python: Path
    site_packages: Path


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes


def run(cmd: list[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(part) for part in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return str(result.stdout)


def is_inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def working_tree_copy(destination: Path) -> Path:
    """The files a clean checkout would have, as they are now (uncommitted edits and new files
    included, ignored ones such as build/, *.egg-info and .venv left out): the build writes its
    egg-info and build folders here, never in the checkout."""
    listing = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT)
    for name in filter(None, listing.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is listed too
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def dependency_mirror(destination: Path) -> Path:
    """Symlinks to everything in the dev venv's site-packages except this project: its editable hook
    and finder, its dist-info and any top-level name it installs."""
    destination.mkdir()
    dist_prefix = DIST_NAME.replace("-", "_") + "-"
    folders = {Path(sysconfig.get_path("purelib")), Path(sysconfig.get_path("platlib"))}
    for folder in folders:
        for entry in folder.iterdir():
            name = entry.name
            if (
                name.startswith("__editable__")
                or name.startswith(dist_prefix)
                or name.endswith(".pth")
                or name in PROJECT_TOP_LEVEL
                or name == "__pycache__"
                or (destination / name).exists()
            ):
                continue
            (destination / name).symlink_to(entry)
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    setuptools_version = tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    assert setuptools_version >= MIN_SETUPTOOLS, (
        f"setuptools {importlib.metadata.version('setuptools')} in the dev venv cannot build a wheel; "
        "`make install` brings the one setup.cfg's test extra asks for"
    )
    work = tmp_path_factory.mktemp("packaging")
    source = working_tree_copy(work / "source")
    dist = work / "dist"
    # The sdist first, as a release would be made: a file missing from it is missing from the wheel too.
    run(
        [sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"],
        cwd=source,
    )
    (sdist,) = dist.glob("*.tar.gz")

    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site_packages = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip())
    (site_packages / "dev-venv-dependencies.pth").write_text(f"{dependency_mirror(work / 'dependencies')}\n")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            "--target",
            site_packages,
            sdist,
        ],
        cwd=work,
    )
    return Installed(python, site_packages)


def child_env() -> dict[str, str]:
    """This environment minus anything that would reach into the checkout or configure the server."""
    knobs = {env for env, _, _ in Settings.describe()}
    dropped = knobs | {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
    return {**{k: v for k, v in os.environ.items() if k not in dropped}, "PYTHONNOUSERSITE": "1"}


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory outside the checkout, so nothing is imported from it by accident."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    assert not is_inside(folder, ROOT)
    return folder


@pytest.fixture
def server_port(installed: Installed, elsewhere: Path, tmp_path: Path) -> Iterator[int]:
    """`python -m server` of the installed copy, with its embedded MongoDB, on a free port."""
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [installed.python, "-m", "server", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            cwd=elsewhere,
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        try:
            wait_for_port(port, timeout_s=60, process=process)
        except RuntimeError as exc:
            pytest.fail(f"installed server did not start: {exc}\n{log_path.read_text(errors='replace')}")
        yield port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def get(port: int, path: str) -> Reply:
    try:
        with _opener.open(f"http://127.0.0.1:{port}{path}", timeout=15) as response:
            return Reply(response.status, response.headers.get("Content-Type", ""), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers.get("Content-Type", ""), exc.read())


class ScriptSources(HTMLParser):
    """The `src` of every <script> of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        src = dict(attrs).get("src")
        if tag == "script" and src:
            self.sources.append(src)


def scripts_of(page: bytes, page_path: str) -> list[str]:
    parser = ScriptSources()
    parser.feed(page.decode())
    base = page_path.rsplit("/", 1)[0] + "/"
    return [src if src.startswith("/") else base + src for src in parser.sources]


def title_of(page: bytes) -> str:
    match = re.search(rb"<title>(.*?)</title>", page, re.S)
    assert match, "page has no <title>"
    return match.group(1).decode()


def test_imports_come_from_the_installed_copy(installed: Installed, elsewhere: Path) -> None:
    probe = (
        "import json, sys, importlib.metadata, handlers, handlers.static, server, swagger_ui\n"
        "print(json.dumps({\n"
        "    'handlers': handlers.__file__, 'server': server.__file__,\n"
        "    'static_root': str(handlers.static.STATIC_ROOT),\n"
        "    'dist': str(importlib.metadata.distribution('chat-matching-server').locate_file('')),\n"
        "    'finders': [type(f).__module__ or '' for f in sys.meta_path],\n"
        "}))\n"
    )
    found = json.loads(run([installed.python, "-c", probe], cwd=elsewhere, env=child_env()))
    for key in ("handlers", "server", "static_root", "dist"):
        assert is_inside(Path(found[key]), installed.site_packages), (key, found[key])
        assert not is_inside(Path(found[key]), ROOT), (key, found[key])
    assert not [module for module in found["finders"] if "__editable__" in module]
    assert (Path(found["static_root"]) / "index.html").is_file()


def test_installed_server_serves_demo_page_and_api_docs(server_port: int) -> None:
    demo = get(server_port, "/")
    assert demo.status == 200
    assert demo.content_type.startswith("text/html")
    assert title_of(demo.body) == title_of((ROOT / "static" / "index.html").read_bytes())
    demo_scripts = scripts_of(demo.body, "/")
    assert demo_scripts and all(src.startswith("/static/") for src in demo_scripts)

    docs = get(server_port, "/api/docs/")
    assert docs.status == 200
    assert docs.content_type.startswith("text/html")
    assert "API" in title_of(docs.body)
    docs_scripts = scripts_of(docs.body, "/api/docs/")
    assert docs_scripts

    # The service worker lives in static/ too, served from the root so that it controls the page.
    for path in [*demo_scripts, *docs_scripts, "/sw.js"]:
        reply = get(server_port, path)
        assert reply.status == 200, path
        assert "javascript" in reply.content_type, (path, reply.content_type)
        assert reply.body, path
    # Byte for byte the file of the working tree the wheel was built from.
    assert get(server_port, demo_scripts[0]).body == (ROOT / demo_scripts[0].lstrip("/")).read_bytes()
