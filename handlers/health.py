"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

import logging

import pymongo
import pymongo.errors

from handlers.base import BaseHandler

log = logging.getLogger("chat.health")


class LiveHandler(BaseHandler):
    def get(self) -> None:
        self.send_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    async def get(self) -> None:
        # Server selection fails fast on its own, but a store that accepted the connection and then hung
        # (paused process, half-open socket) would hold the probe for the whole socket timeout; a probe
        # must answer within the time a load balancer waits for it.
        budget_s = max(0.1, self.services.settings.mongodb_timeout_ms / 1000)
        try:
            with pymongo.timeout(budget_s):
                checks = await self.services.readiness()
        except pymongo.errors.PyMongoError as exc:
            log.warning("readiness check failed: %s", exc)
            checks = {"accepting": not self.services.shutting_down, "mongodb": False}
        ready = all(checks.values())
        self.send_json({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


routes = [
    (r"/livez", LiveHandler),
    (r"/readyz", ReadyHandler),
]
