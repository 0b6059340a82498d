"""Prometheus scrape endpoint, on the main port and, with METRICS_PORT, on a listener of its own."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

import tornado.web

from handlers import health
from handlers.base import BaseHandler, NotFoundHandler
from handlers.contract import Reply, operation
from services.core import errors

if TYPE_CHECKING:
    from services.core.container import Services

API_TAG = health.API_TAG  # probes and metrics are listed together


class MetricsHandler(BaseHandler):
    @operation(
        "metrics",
        auth=False,
        responses={200: Reply("Metrics.", str, media_type="text/plain")},
        notes={401: "METRICS_TOKEN is set and the request does not carry it as a bearer token"},
    )
    def get(self) -> None:
        """Prometheus metrics (text exposition format)."""
        expected = self.services.settings.metrics_token
        if expected:
            given = self.request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
                raise errors.Unauthorized("A metrics token is required", code="not_authenticated")
        metrics = self.services.metrics
        self.set_header("Content-Type", metrics.content_type)
        self.finish(metrics.render())


routes = [(r"/metrics", MetricsHandler)]


def make_metrics_app(services: Services, **tornado_settings: Any) -> tornado.web.Application:
    """The METRICS_PORT listener's application: /metrics and nothing else (JSON 404 for the rest)."""
    return tornado.web.Application(
        [(pattern, handler, {"services": services}) for pattern, handler in routes],
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services},
        **tornado_settings,
    )
