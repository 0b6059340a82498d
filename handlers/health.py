"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from handlers.base import BaseHandler
from handlers.contract import Reply, Tag, operation
from handlers.responses import Liveness, Readiness

API_TAG = Tag("operations", "Probes and metrics")


class LiveHandler(BaseHandler):
    @operation("liveness", auth=False, responses={200: Reply("Alive.", Liveness)})
    def get(self) -> None:
        """Liveness: the process answers."""
        self.send_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    @operation(
        "readiness",
        auth=False,
        responses={
            200: Reply("Ready.", Readiness),
            503: Reply("Not ready; `checks` says what failed.", Readiness),
        },
    )
    async def get(self) -> None:
        """Readiness: stores reachable and not shutting down."""
        checks = await self.services.readiness()
        ready = all(checks.values())
        self.send_json({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


routes = [
    (r"/livez", LiveHandler),
    (r"/readyz", ReadyHandler),
]
