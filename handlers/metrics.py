"""Prometheus scrape endpoint."""

from __future__ import annotations

from handlers.base import BaseHandler


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        metrics = self.services.metrics
        self.set_header("Content-Type", metrics.content_type)
        self.finish(metrics.render())


routes = [(r"/metrics", MetricsHandler)]
