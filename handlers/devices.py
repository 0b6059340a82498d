"""Push devices over REST, the VAPID public key, and the demo page's service worker (services/push/service.py)."""

from __future__ import annotations

from typing import Any

from handlers.base import BaseHandler
from handlers.contract import Reply, Tag, operation
from handlers.responses import Device, VapidPublicKey
from handlers.schemas import DeviceBody
from handlers.static import STATIC_ROOT, DemoFileHandler
from services.core import errors

# Fields of the other kind are refused rather than ignored: a client that sends a webhook `url` with a
# subscription is confused about what it registers.
KIND_FIELDS = {"webpush": ("endpoint", "keys"), "webhook": ("url",)}
OPTIONAL_FIELDS = {"webpush": ("expirationTime",), "webhook": ()}

API_TAG = Tag("push", "Push devices for offline notifications (Web Push, webhooks)")


def kind_problems(body: DeviceBody) -> dict[str, str]:
    problems: dict[str, str] = {}
    for name in KIND_FIELDS[body.kind]:
        if getattr(body, name) is None:
            problems[name] = f"required for kind `{body.kind}`"
    allowed = KIND_FIELDS[body.kind] + OPTIONAL_FIELDS[body.kind] + ("kind",)
    for name in DeviceBody.model_fields:
        if name not in allowed and getattr(body, name) is not None:
            problems[name] = f"not allowed for kind `{body.kind}`"
    return problems


class DevicesHandler(BaseHandler):
    @operation("listDevices", responses={200: Reply("Oldest first.", list[Device])}, errors=(503,))
    async def get(self) -> None:
        """My push devices."""
        user_id = self.require_user()
        self.send_json(await self.services.push.list_devices(user_id))

    @operation(
        "registerDevice",
        body=DeviceBody,
        responses={
            201: Reply("Registered.", Device),
            200: Reply("Already registered to you: the same device.", Device),
        },
        errors=(503,),
        notes={
            400: "`validation_error`, `invalid_subscription` (endpoint or keys), `webhook_not_allowed` or "
            "`webpush_disabled`.",
            409: "`too_many_devices`.",
        },
    )
    async def post(self) -> None:
        """Register a push target: a browser's Web Push subscription or a webhook.

        Pushes go to a user's devices while the user has no WebSocket open: one per conversation per
        coalescing window, `{type, conversation_id, count}`, no message text by default (docs/push.md).
        Registering an endpoint again is idempotent; an endpoint registered by another account moves to this
        one. At most {push_max_devices} devices per user.
        """
        user_id = self.require_user()
        body = self.json_body(DeviceBody)
        problems = kind_problems(body)
        if problems:
            raise errors.Invalid("Invalid fields", code="validation_error", fields=problems)
        push = self.services.push
        if body.kind == "webpush":
            assert body.endpoint is not None and body.keys is not None
            device, created = await push.register_webpush(
                user_id, body.endpoint, body.keys.p256dh, body.keys.auth, body.expirationTime
            )
        else:
            assert body.url is not None
            device, created = await push.register_webhook(user_id, body.url)
        self.send_json(device, status=201 if created else 200)


class DeviceHandler(BaseHandler):
    @operation(
        "deleteDevice",
        path={"device_id": "The device's id."},
        responses={204: Reply("Removed.")},
        errors=(503,),
        notes={404: "`device_not_found` (also someone else's)."},
    )
    async def delete(self, device_id: str) -> None:
        """Remove a push device."""
        user_id = self.require_user()
        await self.services.push.delete_device(user_id, int(device_id))
        self.set_status(204)
        self.finish()


class VapidKeyHandler(BaseHandler):
    @operation(
        "vapidPublicKey",
        auth=False,
        responses={200: Reply("The key.", VapidPublicKey)},
        errors=(503,),
        notes={404: "`webpush_disabled`: no VAPID key configured (production)."},
    )
    def get(self) -> None:
        """The server's VAPID public key (RFC 8292), for PushManager.subscribe()."""
        key = self.services.push.vapid_public_key
        if key is None:
            raise errors.NotFound("Web Push is not enabled on this server", code="webpush_disabled")
        self.send_json({"public_key": key})


class ServiceWorkerHandler(DemoFileHandler):
    """static/sw.js served at /sw.js: a service worker controls only pages under its own path, and the
    demo page is /. (The route table hands every handler the services; this one does not need them.)"""

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(path=str(STATIC_ROOT))

    def set_extra_headers(self, path: str) -> None:
        super().set_extra_headers(path)
        # Browsers check for a new service worker at every navigation; never serve a stale one.
        self.set_header("Cache-Control", "no-cache")


routes: list[tuple[str, Any]] = [
    (r"/api/devices/", DevicesHandler),
    (r"/api/devices/([0-9]{1,15})/", DeviceHandler),
    (r"/api/push/vapid-public-key/", VapidKeyHandler),
    (r"/(sw\.js)", ServiceWorkerHandler),
]
