"""The route table: every module's `routes`, each handler given the shared services."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tornado.web

from handlers import (
    auth,
    conversations,
    devices,
    echo,
    health,
    matching,
    media,
    metrics,
    moderation,
    notifications,
    openapi,
    password,
    photos,
    sockets,
    static,
    users,
)
from handlers.base import NotFoundHandler

if TYPE_CHECKING:
    from services.core.container import Services

# The WebSocket routes come first: Tornado tries the rules in order, and a storm of connects otherwise
# matched every REST pattern against each handshake's path before reaching them.
ROUTE_MODULES = [
    sockets,
    auth,
    users,
    password,
    photos,
    matching,
    conversations,
    notifications,
    devices,
    moderation,
    health,
    metrics,
    openapi,
]


def make_app(services: Services, **tornado_settings: Any) -> tornado.web.Application:
    settings = services.settings
    rules: list[Any] = []
    for module in ROUTE_MODULES:
        for pattern, handler in module.routes:
            rules.append((pattern, handler, {"services": services}))
    if settings.enable_echo_route:
        rules.extend((pattern, handler, {"services": services}) for pattern, handler in echo.routes)
    rules.extend(media.make_routes(services.media))
    rules.extend(static.make_routes())
    return tornado.web.Application(
        rules,
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services},
        xheaders=False,
        compress_response=False,
        websocket_max_message_size=settings.max_frame_bytes,
        **tornado_settings,
    )
