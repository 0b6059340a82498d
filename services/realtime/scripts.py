"""Lua scripts sent to Redis in bulk: one pipeline of EVALSHA calls, one round trip."""

from __future__ import annotations

from typing import Any

import redis.exceptions


async def evalsha_pipeline(client: Any, script: Any, calls: list[tuple[str, list[Any]]]) -> list[Any]:
    """Run `script` (as `client.register_script` made it) once per (key, args) in `calls`, as one pipeline.

    When Redis no longer has the script (it restarted, or SCRIPT FLUSH) the calls all fail with NOSCRIPT and
    ran nothing: the script is loaded and the pipeline sent once more. What one call raises comes back in its
    place in the list; what the connection raises is raised."""
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        for key, args in calls:
            pipe.evalsha(script.sha, 1, key, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        if attempt == 1 and any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
            await client.script_load(script.script)
            continue
        return results
    raise AssertionError("unreachable: the second attempt returns")
