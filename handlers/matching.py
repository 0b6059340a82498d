"""Discovery, likes, passes, matches and blocks over REST."""

from __future__ import annotations

from typing import Any

routes: list[tuple[str, Any]] = []
