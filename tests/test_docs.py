"""The docs describe what exists: the README's settings table is generated from Settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts.config_table import README, readme_with_table
from services.core.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_readme_config_table_matches_settings():
    text = README.read_text()
    assert readme_with_table(text) == text, "run: .venv/bin/python scripts/config_table.py --write"


def test_help_lists_every_setting():
    out = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    for env, _default, _text in Settings.describe():
        assert env in out
