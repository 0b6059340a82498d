"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from handlers.base import BaseHandler


class LiveHandler(BaseHandler):
    def get(self) -> None:
        self.send_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    async def get(self) -> None:
        checks = await self.services.readiness()
        ready = all(checks.values())
        self.send_json({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


routes = [
    (r"/livez", LiveHandler),
    (r"/readyz", ReadyHandler),
]
