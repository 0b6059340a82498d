"""Settings: parsing of the environment, the refusals that keep a misconfigured server from starting, and
`server.py --help` listing every knob."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.core.config import Settings
from services.core.container import jwt_secret

ROOT = Path(__file__).resolve().parent.parent
GOOD_SECRET = "s" * 32


def knob_env_names() -> list[str]:
    return [env for env, _, _ in Settings.describe()]


def a_float_knob() -> tuple[str, str]:
    """(field name, env var) of some float knob, whichever the settings have."""
    for f in dataclasses.fields(Settings):
        if f.type in ("float", float):
            return f.name, f.metadata["env"]
    pytest.skip("no float setting")


def clean_env() -> dict[str, str]:
    """The process environment without any of the server's knobs, so a developer's shell cannot leak in."""
    names = set(knob_env_names())
    return {k: v for k, v in os.environ.items() if k not in names}


def test_defaults_are_the_dataclass_defaults():
    settings = Settings.from_env({})
    for f in dataclasses.fields(Settings):
        assert getattr(settings, f.name) == f.default, f.name
    assert settings.environment == "development"
    assert settings.access_token_ttl_s == 15 * 60
    assert settings.refresh_token_ttl_s == 7 * 24 * 3600
    assert settings.mongodb_timeout_ms <= 5000


def test_ints_floats_and_strings_are_parsed_from_the_environment():
    float_field, float_env = a_float_knob()
    settings = Settings.from_env(
        {
            "PORT": "9001",
            "ACCESS_TOKEN_TTL": " 60 ",
            "MAX_UPLOAD_BYTES": "1048576",
            "MAX_PASSWORD_CHARS": "64",
            "MONGODB_TIMEOUT_MS": "750",
            float_env: "2.5",
            "MONGODB_URL": "mongodb://db.example:27017/?replicaSet=rs0",
            "PUBLIC_URL": "https://chat.example.com",
        }
    )
    assert settings.port == 9001 and isinstance(settings.port, int)
    assert settings.access_token_ttl_s == 60
    assert settings.max_upload_bytes == 1_048_576
    assert settings.max_password_chars == 64
    assert settings.mongodb_timeout_ms == 750
    assert getattr(settings, float_field) == 2.5
    assert settings.mongodb_url == "mongodb://db.example:27017/?replicaSet=rs0"
    assert settings.public_url == "https://chat.example.com"


def test_empty_values_mean_default_and_overrides_win():
    settings = Settings.from_env({"PORT": "", "HOST": "0.0.0.0"}, port=7000, host=None)  # noqa: S104
    assert settings.port == 7000
    assert settings.host == "0.0.0.0"  # noqa: S104 - a None override (flag not given) keeps the env value


@pytest.mark.parametrize(
    ("env", "value"),
    [("PORT", "abc"), ("PORT", "80.5"), ("ACCESS_TOKEN_TTL", "15m"), ("MAX_BODY_BYTES", "1e6"), ("float", "x")],
)
def test_bad_numbers_are_a_clear_value_error(env, value):
    if env == "float":
        env = a_float_knob()[1]
    with pytest.raises(ValueError) as info:
        Settings.from_env({env: value})
    message = str(info.value)
    assert env in message and repr(value) in message


@pytest.mark.parametrize("env", ["PORT", "MAX_UPLOAD_BYTES", "ACCESS_TOKEN_TTL", "float"])
def test_negative_numbers_are_refused(env):
    if env == "float":
        env = a_float_knob()[1]
    with pytest.raises(ValueError, match=env):
        Settings.from_env({env: "-1"})


def test_production_requires_a_jwt_secret():
    with pytest.raises(ValueError, match="JWT_SECRET"):
        Settings.from_env({"ENVIRONMENT": "production"})
    settings = Settings.from_env({"ENVIRONMENT": "production", "JWT_SECRET": GOOD_SECRET, "SINGLE_NODE": "true"})
    assert settings.jwt_secret == GOOD_SECRET


@pytest.mark.parametrize("environment", ["development", "production"])
def test_a_short_jwt_secret_is_refused(environment):
    with pytest.raises(ValueError, match="JWT_SECRET"):
        Settings.from_env({"ENVIRONMENT": environment, "JWT_SECRET": "s" * 31})


def test_an_unknown_environment_is_refused():
    with pytest.raises(ValueError, match="ENVIRONMENT"):
        Settings.from_env({"ENVIRONMENT": "staging"})


def test_describe_covers_every_field_once():
    names = knob_env_names()
    assert len(names) == len(dataclasses.fields(Settings)) == len(set(names))
    for env, default, text in Settings.describe():
        assert env.isupper() and text and default


def test_development_secret_is_generated_once_and_kept_private(tmp_path):
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"))
    first = jwt_secret(settings)
    path = tmp_path / "data" / "jwt_secret"
    assert path.read_text().strip() == first and len(first) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert jwt_secret(settings) == first
    configured = Settings.from_env({"JWT_SECRET": GOOD_SECRET}, data_dir=str(tmp_path / "data"))
    assert jwt_secret(configured) == GOOD_SECRET


def run_server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "server.py"), *args],
        cwd=ROOT,
        env={**clean_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_every_environment_variable():
    result = run_server("--help")
    assert result.returncode == 0, result.stderr
    for env in knob_env_names():
        assert env in result.stdout, env
    for flag in ("--host", "--port", "--data-dir"):
        assert flag in result.stdout


def test_a_bad_setting_stops_the_server_with_a_message(tmp_path):
    result = run_server("--data-dir", str(tmp_path), env={"PORT": "eighty"})
    assert result.returncode == 2
    assert "PORT" in result.stderr and "eighty" in result.stderr
    result = run_server("--data-dir", str(tmp_path), env={"ENVIRONMENT": "production"})
    assert result.returncode == 2
    assert "JWT_SECRET" in result.stderr
