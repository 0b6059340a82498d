"""A service's one long-running task: started once, cancelled and awaited when the service closes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("chat.services")

# How long `close` waits for a cancelled task: a cancellation swallowed somewhere below (a driver that
# retries on any exception) must not hold a node's shutdown, or a test's teardown, for ever.
CLOSE_WAIT_S = 5.0
# How long a cancelled task gets before it is cancelled again.
CANCEL_AGAIN_S = 0.25


class BackgroundTask:
    def __init__(self, run: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self._run = run
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the task unless it runs already (a second start is a no-op)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop(task, self._name)


async def stop(task: asyncio.Task[Any], name: str) -> None:
    """Cancel a task and wait until it ended, cancelling it again while it runs on: Python 3.11's
    asyncio.wait_for, which redis-py awaits its commands with, swallows a cancellation that arrives as the
    command completes, and a loop then goes on as if never cancelled. Gives up after CLOSE_WAIT_S, with a
    warning: a node's shutdown, or a test's teardown, must not wait for ever."""
    for _ in range(int(CLOSE_WAIT_S / CANCEL_AGAIN_S)):
        task.cancel()
        done, _pending = await asyncio.wait({task}, timeout=CANCEL_AGAIN_S)
        if done:
            if not task.cancelled():
                task.exception()  # retrieved, so that asyncio does not warn it never was
            return
    log.warning("background task %s did not stop when cancelled; left behind", name)
