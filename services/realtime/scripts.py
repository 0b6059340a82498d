"""Lua scripts sent to Redis in bulk: one pipeline of EVALSHA calls, one round trip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.exceptions


async def evalsha_pipeline(client: Any, script: Any, calls: Sequence[tuple[str | list[str], list[Any]]]) -> list[Any]:
    """Run `script` (as `client.register_script` made it) once per (key or keys, args) in `calls`, as one
    pipeline. On a Redis Cluster the client splits the pipeline by shard (every call's keys must then share
    one slot) and sends each part to its master at once.

    A call that fails with NOSCRIPT ran nothing (Redis restarted, a replica took over, or SCRIPT FLUSH): the
    script is loaded and those calls, and only those, are sent once more. What one call raises comes back
    in its place in the list; what the connection raises is raised."""
    results = await _send(client, script, calls)
    again = [i for i, result in enumerate(results) if isinstance(result, redis.exceptions.NoScriptError)]
    if again:
        await client.script_load(script.script)
        for i, result in zip(again, await _send(client, script, [calls[i] for i in again]), strict=True):
            results[i] = result
    return results


async def _send(client: Any, script: Any, calls: Sequence[tuple[str | list[str], list[Any]]]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for key, args in calls:
        keys = [key] if isinstance(key, str) else key
        # The raw command: a cluster pipeline refuses `evalsha`, though it routes EVALSHA by its keys.
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    results: list[Any] = await pipe.execute(raise_on_error=False)
    return results
