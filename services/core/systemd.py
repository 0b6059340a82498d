"""systemd's readiness protocol (`Type=notify`), spoken without a library: one datagram per message.

With `NOTIFY_SOCKET` set (systemd sets it for a Type=notify unit), the node sends `READY=1` once it
listens and its store is prepared, `STOPPING=1` when a shutdown begins, and, with `WATCHDOG_USEC` set
(WatchdogSec= in the unit), `WATCHDOG=1` at half that interval from the event loop itself: a loop stuck
on a blocking call stops the pings, and systemd restarts the node. Without `NOTIFY_SOCKET` every call
does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("chat.systemd")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An address starting with "@" is in Linux's abstract namespace: a leading NUL byte.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        wanted = watchdog_usec.isdigit() and (not watchdog_pid or watchdog_pid == str(os.getpid()))
        self.watchdog_s = int(watchdog_usec) / 1_000_000 if wanted and int(watchdog_usec) > 0 else None
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, message: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode())
        except OSError as exc:
            log.warning("could not notify systemd (%s): %s", message.split("=")[0], exc)

    async def ready_when(self, prepared: asyncio.Event) -> None:
        """Send READY=1 once `prepared` is set (the store answered), with a STATUS line meanwhile."""
        if not self.enabled:
            return
        if not prepared.is_set():
            self.send("STATUS=waiting for MongoDB")
            await prepared.wait()
        self.send("READY=1\nSTATUS=serving")

    def start_watchdog(self) -> None:
        if self.enabled and self.watchdog_s is not None and self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._ping(self.watchdog_s / 2))

    async def _ping(self, every_s: float) -> None:
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(every_s)

    async def stopping(self) -> None:
        self.send("STOPPING=1")
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
