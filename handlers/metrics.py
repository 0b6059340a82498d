"""Prometheus scrape endpoint."""

from __future__ import annotations

from handlers import health
from handlers.base import BaseHandler
from handlers.contract import Reply, operation

API_TAG = health.API_TAG  # probes and metrics are listed together


class MetricsHandler(BaseHandler):
    @operation("metrics", auth=False, responses={200: Reply("Metrics.", str, media_type="text/plain")})
    def get(self) -> None:
        """Prometheus metrics (text exposition format)."""
        metrics = self.services.metrics
        self.set_header("Content-Type", metrics.content_type)
        self.finish(metrics.render())


routes = [(r"/metrics", MetricsHandler)]
