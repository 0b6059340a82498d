"""Push notifications for offline users, against a real push service and a real webhook gateway on loopback.

The push service here does what Google's or Mozilla's would: it checks the VAPID signature (RFC 8292) with
the key in the request and the audience of the endpoint's origin, and the test's "browser" decrypts the
payload (RFC 8291, aes128gcm) with the subscription's private key, which only it holds. The webhook
gateway checks the HMAC signature. Each can be told to answer with errors (410, 5xx) to see what the
server does with them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import orjson
import pymongo.errors
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pymongo import AsyncMongoClient

from services.core.config import Settings
from services.core.container import build_services
from services.push.delivery import (
    VAPID_KEY_FILE,
    endpoint_problem,
    private_key_text,
    public_key_text,
    webhook_problem,
)
from tests.push_helpers import (
    PUSH_SETTINGS,
    QUIET_S,
    WEBHOOK_SECRET,
    Browser,
    Receiver,
    pair,
    register,
    send,
    skipped,
    unb64,
)
from tests.support import conforms, make_conversation, make_settings, ws_connect


@pytest.fixture
def settings_overrides(receiver: Receiver, push_overrides: dict[str, Any]) -> dict[str, Any]:
    return {**PUSH_SETTINGS, "push_webhook_allowed_prefixes": f"{receiver.origin}/hook/", **push_overrides}


async def test_vapid_public_key_is_generated_once_and_served(api, services, settings):
    answer = await api.get("/api/push/vapid-public-key/")
    assert answer.status == 200
    key = answer.body["public_key"]
    point = unb64(key)
    assert len(point) == 65 and point[0] == 4
    path = Path(settings.data_dir) / VAPID_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert services.push.vapid_public_key == key


@pytest.mark.parametrize("push_overrides", [{"push_grace_s": 1.0}], indirect=True)  # room for a slow machine
async def test_offline_recipient_gets_one_push_per_window(api, services, receiver):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.subscription("bob"))
    for i in range(5):
        await send(api, a, cid, f"secret words {i}")
    await receiver.wait(lambda: len(receiver.pushes) == 1)
    first = receiver.pushes[0]
    # Only what a client needs: no text, no names.
    assert first.payload == {"type": "new_message", "conversation_id": cid, "count": 5}
    assert first.headers["Urgency"] == "high" and first.headers["Topic"] == f"c{cid}"
    served = (await api.get("/api/push/vapid-public-key/")).body["public_key"]
    assert receiver.vapid_keys == {served}

    # Messages in the same conversation within the window wait for its end, then make one push.
    for i in range(2):
        await send(api, a, cid, f"more {i}")
    await receiver.wait(lambda: len(receiver.pushes) == 2)
    second = receiver.pushes[1]
    assert second.payload == {"type": "new_message", "conversation_id": cid, "count": 7}
    assert second.at - first.at >= 1.0 - 0.05
    await asyncio.sleep(QUIET_S)
    assert len(receiver.pushes) == 2 and len(receiver.attempts["bob"]) == 2


async def test_online_recipient_gets_no_push(api, services, receiver):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.subscription("bob"))
    socket = await ws_connect(api, f"/ws/notifications/?token={b.access}")
    try:
        for _ in range(50):
            if await services.push._presence.is_online(b.id):
                break
            await asyncio.sleep(0.02)
        await send(api, a, cid, "hello")
        frame = await socket.recv_type("notification")
        assert frame["notification"]["type"] == "new_message"
        await asyncio.sleep(QUIET_S)
        assert receiver.pushes == [] and receiver.attempts == {}
        # Not even queued: an online user's notifications never reach the outbox.
        assert await services.store.push_outbox.count_documents({}) == 0
    finally:
        socket.close()


@pytest.mark.parametrize("push_overrides", [{"push_grace_s": 1.0}], indirect=True)  # room for a slow machine
async def test_no_push_when_the_recipient_comes_online_during_the_grace_delay(api, services, receiver):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.subscription("bob"))
    await send(api, a, cid, "hello")
    socket = await ws_connect(api, f"/ws/notifications/?token={b.access}")
    try:
        await receiver.wait(lambda: skipped(services, "online") == 1)
        assert receiver.attempts == {}
    finally:
        socket.close()


@pytest.mark.parametrize("push_overrides", [{"push_grace_s": 1.0}], indirect=True)  # room for a slow machine
async def test_message_read_during_grace_delay_sends_nothing(api, services, receiver):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.subscription("bob"))
    message = await send(api, a, cid, "hello")
    read = await api.post(f"/api/conversations/{cid}/read/", {"message_id": message["id"]}, token=b.access)
    assert read.status == 200
    await receiver.wait(lambda: skipped(services, "read") == 1)
    assert receiver.attempts == {}
    # The entry is idle again: a later message is pushed as usual.
    await send(api, a, cid, "again")
    await receiver.wait(lambda: len(receiver.pushes) == 1)
    assert receiver.pushes[0].payload["count"] == 1


async def test_gone_device_is_removed(api, services, receiver):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.subscription("gone"))
    receiver.scripts["gone"] = [410]
    await send(api, a, cid, "hello")
    await receiver.wait(lambda: len(receiver.attempts.get("gone", [])) == 1)
    for _ in range(100):
        if not (await api.get("/api/devices/", token=b.access)).body:
            break
        await asyncio.sleep(0.02)
    assert (await api.get("/api/devices/", token=b.access)).body == []
    await asyncio.sleep(QUIET_S)
    assert len(receiver.attempts["gone"]) == 1


async def test_server_errors_are_retried_with_backoff_only_where_they_failed(api, services, receiver):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.subscription("flaky"))
    await register(api, b, receiver.subscription("steady"))
    receiver.scripts["flaky"] = [503, 500]
    await send(api, a, cid, "hello")
    await receiver.wait(lambda: len(receiver.to("flaky")) == 1)
    tries = receiver.attempts["flaky"]
    assert len(tries) == 3
    # Backoff: 0.2 s then 0.4 s (each +-20%), so the second wait is clearly the longer one.
    assert tries[1] - tries[0] >= 0.15 and tries[2] - tries[1] > (tries[1] - tries[0]) * 1.2
    await asyncio.sleep(QUIET_S)
    # The device that answered the first time was not sent the push again.
    assert len(receiver.to("steady")) == 1 and len(receiver.attempts["steady"]) == 1
    assert receiver.to("flaky")[0].payload == {"type": "new_message", "conversation_id": cid, "count": 1}


async def test_retries_are_bounded(api, services, receiver):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.subscription("down"))
    receiver.scripts["down"] = [503] * 10
    await send(api, a, cid, "hello")
    await receiver.wait(lambda: len(receiver.attempts.get("down", [])) == PUSH_SETTINGS["push_max_attempts"])
    await asyncio.sleep(1.0)
    assert len(receiver.attempts["down"]) == PUSH_SETTINGS["push_max_attempts"]
    # A server error is no reason to forget the device.
    assert len((await api.get("/api/devices/", token=b.access)).body) == 1
    assert await services.store.push_outbox.count_documents({"count": {"$gt": 0}}) == 0


async def test_webhook_gets_signed_likes_and_matches(api, services, receiver):
    a, b = await api.user("liker"), await api.user("liked")
    device = await register(api, b, receiver.webhook("phone"))
    assert (await api.post("/api/likes/", {"user_id": b.id}, token=a.access)).status == 201
    await receiver.wait(lambda: len(receiver.pushes) == 1)
    like = receiver.pushes[0].payload
    assert like["notification"] == {"type": "new_like", "count": 1}
    assert like["device_id"] == device["id"] and like["user_id"] == b.id and like["id"]
    assert receiver.pushes[0].headers["Content-Type"] == "application/json"

    answer = await api.post("/api/likes/", {"user_id": a.id}, token=b.access)
    assert answer.body["match"] is not None
    await receiver.wait(lambda: len(receiver.pushes) == 2)
    match = receiver.pushes[1].payload["notification"]
    assert match == {"type": "new_match", "conversation_id": answer.body["match"]["conversation_id"]}


@pytest.mark.parametrize("push_overrides", [{"push_preview_chars": 5, "push_grace_s": 1.0}], indirect=True)
async def test_previews_only_when_the_operator_enables_them(api, services, receiver):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.subscription("bob"))
    await send(api, a, cid, "Salut, ça va ?")
    await send(api, a, cid, "$name, tu es là ?")  # stored as text, not read as a field path
    await receiver.wait(lambda: len(receiver.pushes) == 1)
    payload = receiver.pushes[0].payload
    assert payload["text"] == "$name" and payload["sender"] == a.username and payload["count"] == 2
    # Sent: the preview is no longer stored.
    for _ in range(100):
        entry = await services.store.push_outbox.find_one({})
        if entry is not None and entry["count"] == 0:
            break
        await asyncio.sleep(0.02)
    assert entry is not None and entry["count"] == 0 and "preview" not in entry


# -- durability and several nodes ----------------------------------------------------------------------


async def test_restart_mid_queue_loses_nothing(api, services, receiver, settings, tmp_path, mongo_url):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.subscription("bob"))
    await services.push.close()  # this test's own nodes do the sending

    def node_settings() -> Settings:
        # Same database and data dir (so the same development VAPID key) as the node above.
        return make_settings(
            tmp_path, settings.port, mongodb_database=settings.mongodb_database, **settings_overrides_of(settings)
        )

    first = await build_services(replace(node_settings(), push_grace_s=30.0), mongo_url)
    await first.chat.send_message(cid, a.id, "queued, then the node stops")
    await first.close()
    entry = await services.store.push_outbox.find_one({})
    assert entry is not None and entry["count"] == 1
    assert receiver.attempts == {}
    # Time passes while no node runs: the entry is due when the next one starts.
    await services.store.push_outbox.update_one({}, {"$set": {"due_at": dt.datetime.now(dt.UTC)}})

    second = await build_services(node_settings(), mongo_url)
    try:
        await receiver.wait(lambda: len(receiver.pushes) == 1, timeout=5)
        assert receiver.pushes[0].payload == {"type": "new_message", "conversation_id": cid, "count": 1}
        await asyncio.sleep(QUIET_S)
        assert len(receiver.attempts["bob"]) == 1
    finally:
        await second.close()


@pytest.mark.parametrize("push_overrides", [{"push_grace_s": 1.0}], indirect=True)  # room for a slow machine
async def test_a_stale_lease_is_taken_over(api, services, receiver):
    a, b, cid = await pair(api, services)
    await register(api, b, receiver.subscription("bob"))
    await send(api, a, cid, "hello")
    # As if a node claimed the entry and died: nobody else may touch it until its lease runs out.
    now = dt.datetime.now(dt.UTC)
    changed = await services.store.push_outbox.update_one(
        {}, {"$set": {"due_at": now, "lease_until": now + dt.timedelta(seconds=1.0), "lease_token": "dead-node"}}
    )
    assert changed.modified_count == 1
    await asyncio.sleep(0.6)
    assert receiver.attempts == {}
    await receiver.wait(lambda: len(receiver.pushes) == 1, timeout=3)
    await asyncio.sleep(QUIET_S)
    assert len(receiver.pushes) == 1


async def test_two_nodes_never_send_the_same_entry_twice(cluster_factory, receiver):
    shared_key = private_key_text(ec.generate_private_key(ec.SECP256R1()))
    nodes = await cluster_factory(
        2,
        **{**PUSH_SETTINGS, "push_grace_s": 60.0},  # nothing is due until the test says so
        push_webhook_allowed_prefixes=f"{receiver.origin}/hook/",
        vapid_private_key=shared_key,
    )
    api = nodes[0].api
    b = await api.user("recipient")
    await register(api, b, receiver.subscription("bob"))
    senders = [await api.user("sender") for _ in range(6)]
    conversations = [await make_conversation(nodes[0].services, s.id, b.id) for s in senders]
    for round_ in range(3):
        for i, (sender, cid) in enumerate(zip(senders, conversations, strict=True)):
            node = nodes[(i + round_) % 2]
            await send(node.api, sender, cid, f"round {round_}")
    # Every entry due at once: both workers (polling every 50 ms) race for all of them.
    due = await nodes[0].services.store.push_outbox.update_many({}, {"$set": {"due_at": dt.datetime.now(dt.UTC)}})
    assert due.modified_count == len(conversations)
    await receiver.wait(lambda: len(receiver.pushes) == len(conversations), timeout=8)
    await asyncio.sleep(QUIET_S)
    by_conversation = sorted(p.payload["conversation_id"] for p in receiver.pushes)
    assert by_conversation == sorted(conversations)
    assert all(p.payload["count"] == 3 for p in receiver.pushes)
    assert len(receiver.attempts["bob"]) == len(conversations)
    assert receiver.vapid_keys == {public_key_text(_key(shared_key))}
    sent = [node.services.push.sent.labels(kind="webpush", outcome="delivered")._value.get() for node in nodes]
    assert sum(sent) == len(conversations)


def _key(text: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(unb64(text), "big"), ec.SECP256R1())


def settings_overrides_of(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in (*PUSH_SETTINGS, "push_webhook_allowed_prefixes")}


def replace(settings: Settings, **changes: Any) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, **changes)


# -- the devices API -----------------------------------------------------------------------------------


async def test_devices_are_listed_deleted_and_registered_idempotently(api, services, receiver):
    from handlers import openapi

    document = openapi.build_document(services.settings)
    a, b = await api.user(), await api.user()
    subscription = receiver.subscription("bob")
    created = await api.post("/api/devices/", subscription, token=b.access)
    conforms(document, "post", "/api/devices/", created)
    assert created.status == 201 and created.body["endpoint"] == subscription["endpoint"]
    again = await api.post("/api/devices/", subscription, token=b.access)
    conforms(document, "post", "/api/devices/", again)
    assert again.status == 200 and again.body["id"] == created.body["id"]
    hook = await register(api, b, receiver.webhook("phone"))
    listed = await api.get("/api/devices/", token=b.access)
    conforms(document, "get", "/api/devices/", listed)
    assert [d["id"] for d in listed.body] == [created.body["id"], hook["id"]]
    assert "keys" not in listed.body[0]

    # Someone else's device is not found, for them.
    other = await api.delete(f"/api/devices/{created.body['id']}/", token=a.access)
    conforms(document, "delete", "/api/devices/{device_id}/", other)
    assert other.status == 404 and other.error_code == "device_not_found"
    deleted = await api.delete(f"/api/devices/{created.body['id']}/", token=b.access)
    conforms(document, "delete", "/api/devices/{device_id}/", deleted)
    assert deleted.status == 204
    assert [d["id"] for d in (await api.get("/api/devices/", token=b.access)).body] == [hook["id"]]
    assert (await api.delete(f"/api/devices/{created.body['id']}/", token=b.access)).status == 404
    conforms(document, "get", "/api/push/vapid-public-key/", await api.get("/api/push/vapid-public-key/"))


async def test_a_browser_subscription_follows_whoever_registers_it_last(api, services, receiver):
    a, b = await api.user(), await api.user()
    subscription = receiver.subscription("shared-browser")
    await register(api, a, subscription)
    moved = await register(api, b, subscription, status=201)
    assert (await api.get("/api/devices/", token=a.access)).body == []
    assert [d["id"] for d in (await api.get("/api/devices/", token=b.access)).body] == [moved["id"]]


async def test_too_many_devices(api, services, receiver):
    b = await api.user()
    subscriptions = [receiver.subscription(f"dev{i}") for i in range(PUSH_SETTINGS["push_max_devices"])]
    for subscription in subscriptions:
        await register(api, b, subscription)
    refused = await api.post("/api/devices/", receiver.subscription("one-more"), token=b.access)
    assert refused.status == 409 and refused.error_code == "too_many_devices"
    # Registering one it already has is still fine.
    await register(api, b, subscriptions[0], status=200)


def _good_keys() -> dict[str, str]:
    return Browser(ec.generate_private_key(ec.SECP256R1()), os.urandom(16)).keys()


BAD_BODIES: list[tuple[Any, str | None, str | None]] = [
    (b"{not json", "invalid_json", None),
    (b"[]", "invalid_json", None),
    ({}, "validation_error", "kind"),
    ({"kind": "apns", "url": "https://x"}, "validation_error", "kind"),
    ({"kind": "webpush"}, "validation_error", "endpoint"),
    ({"kind": "webpush", "endpoint": "https://fcm.googleapis.com/fcm/send/x"}, "validation_error", "keys"),
    ({"kind": "webhook"}, "validation_error", "url"),
    ({"kind": "webhook", "url": "{origin}/hook/x", "keys": "KEYS"}, "validation_error", "keys"),
    ({"kind": "webpush", "endpoint": "https://fcm.googleapis.com/x", "keys": "KEYS", "url": "u"}, None, "url"),
    ({"kind": "webpush", "endpoint": "https://fcm.googleapis.com/x", "keys": "KEYS", "admin": 1}, None, "admin"),
    ({"kind": "webpush", "endpoint": 12, "keys": "KEYS"}, "validation_error", "endpoint"),
    # Not https, on a host that is not loopback.
    (
        {"kind": "webpush", "endpoint": "http://fcm.googleapis.com/x", "keys": "KEYS"},
        "invalid_subscription",
        "endpoint",
    ),
    # Not a push service: the server would be POSTing wherever a user says.
    ({"kind": "webpush", "endpoint": "https://10.0.0.1/admin", "keys": "KEYS"}, "invalid_subscription", "endpoint"),
    ({"kind": "webpush", "endpoint": "https://fcm.googleapis.com.evil.example/x", "keys": "KEYS"}, None, "endpoint"),
    (
        {"kind": "webpush", "endpoint": "https://fcm.googleapis.com/x", "keys": {"p256dh": "A" * 87, "auth": "B" * 22}},
        "invalid_subscription",
        "keys.p256dh",
    ),
    (
        {"kind": "webpush", "endpoint": "https://fcm.googleapis.com/x", "keys": {"p256dh": "A" * 10, "auth": "B" * 22}},
        "validation_error",
        "keys.p256dh",
    ),
    (
        {"kind": "webpush", "endpoint": "https://fcm.googleapis.com/x", "keys": {"p256dh": "P256", "auth": "short"}},
        "validation_error",
        "keys.auth",
    ),
    ({"kind": "webhook", "url": "https://evil.example/hook/x"}, "webhook_not_allowed", "url"),
    ({"kind": "webhook", "url": "{origin}/admin"}, "webhook_not_allowed", "url"),
    ({"kind": "webhook", "url": "{origin}/hook/../admin"}, "webhook_not_allowed", "url"),
]


@pytest.mark.parametrize(("body", "code", "field_name"), BAD_BODIES)
async def test_bad_device_registrations_are_400(api, services, receiver, body, code, field_name):
    from handlers import openapi

    b = await api.user()
    if isinstance(body, dict):
        text = json.dumps(body).replace("{origin}", receiver.origin)
        good = _good_keys()
        text = text.replace('"KEYS"', json.dumps(good)).replace('"P256"', json.dumps(good["p256dh"]))
        answer = await api.post("/api/devices/", body=text.encode(), token=b.access)
    else:
        answer = await api.post("/api/devices/", body=body, token=b.access)
    assert answer.status == 400, answer.body
    if code:
        assert answer.error_code == code, answer.body
    if field_name:
        assert field_name in answer.body["error"].get("fields", {}), answer.body
    conforms(openapi.build_document(services.settings), "post", "/api/devices/", answer)
    assert (await api.get("/api/devices/", token=b.access)).body == []


async def test_devices_need_a_token(api, services, receiver):
    assert (await api.get("/api/devices/")).status == 401
    assert (await api.post("/api/devices/", receiver.subscription("x"))).status == 401
    assert (await api.delete("/api/devices/1/")).status == 401
    assert (await api.get("/api/devices/", token="not-a-token")).status == 401


async def test_service_worker_is_served_for_the_whole_page(api):
    answer = await api.get("/sw.js")
    assert answer.status == 200
    assert "javascript" in answer.headers["Content-Type"]
    assert answer.headers["Cache-Control"] == "no-cache"
    assert b"showNotification" in answer.body


# -- address checks and settings -----------------------------------------------------------------------


def test_webhook_prefixes_match_origin_and_path_not_text():
    settings = Settings(
        push_webhook_allowed_prefixes="https://gw.example.com/push/,http://relay.internal:8080/fcm",
        push_webhook_secret=WEBHOOK_SECRET,
    )
    allowed = [
        "https://gw.example.com/push/abc",
        "https://GW.example.com:443/push/abc?token=1",
        "http://relay.internal:8080/fcm",
        "http://relay.internal:8080/fcm/abc",
    ]
    refused = [
        "https://gw.example.com.evil.example/push/abc",
        "https://gw.example.com@evil.example/push/abc",
        "https://evil.example/?https://gw.example.com/push/",
        "http://gw.example.com/push/abc",
        "https://gw.example.com:8443/push/abc",
        "https://gw.example.com/pushy",
        "https://gw.example.com/push/../admin",
        "https://gw.example.com/push/%2e%2e/admin",
        "http://relay.internal:8080/fcmx",
        "http://relay.internal/fcm",
        "https://gw.example.com/push/a b",
        "https://gw.example.com/push/abc#frag",
        "ftp://gw.example.com/push/",
    ]
    for url in allowed:
        assert webhook_problem(url, settings) is None, url
    for url in refused:
        assert webhook_problem(url, settings) is not None, url
    assert webhook_problem("https://gw.example.com/push/abc", Settings()) is not None


def test_push_endpoints_must_be_https_on_a_push_service():
    strict = Settings()
    assert endpoint_problem("https://fcm.googleapis.com/fcm/send/abc", strict) is None
    assert endpoint_problem("https://updates.push.services.mozilla.com/wpush/v2/abc", strict) is None
    assert endpoint_problem("https://web.push.apple.com/abc", strict) is None
    assert endpoint_problem("https://wns2-par02p.notify.windows.com/w/?token=abc", strict) is None
    for endpoint in (
        "http://fcm.googleapis.com/fcm/send/abc",
        "https://127.0.0.1:8443/push",
        "http://localhost:9000/push",
        "https://metadata.google.internal/computeMetadata/",
        "https://evilfcm.googleapis.com.example/x",
    ):
        assert endpoint_problem(endpoint, strict) is not None, endpoint
    dev = Settings(push_allow_insecure=True)
    assert endpoint_problem("http://localhost:9000/push", dev) is None
    assert endpoint_problem("http://127.0.0.1:9000/push", dev) is None
    assert endpoint_problem("http://10.0.0.1:9000/push", dev) is not None


def test_push_endpoints_name_the_default_https_port_or_an_allowed_one():
    # An allowed push service host on any port would let a user aim the server at another service there.
    strict = Settings()
    assert endpoint_problem("https://fcm.googleapis.com:443/fcm/send/abc", strict) is None
    for port in (1, 22, 80, 6379, 8443):
        assert endpoint_problem(f"https://fcm.googleapis.com:{port}/fcm/send/abc", strict) is not None, port
    extra = Settings(push_webpush_allowed_ports="8443, 9443")
    assert endpoint_problem("https://fcm.googleapis.com:8443/fcm/send/abc", extra) is None
    assert endpoint_problem("https://fcm.googleapis.com:9443/fcm/send/abc", extra) is None
    assert endpoint_problem("https://fcm.googleapis.com:22/fcm/send/abc", extra) is not None
    for bad in ("https", "0", "65536", "443;22"):
        with pytest.raises(ValueError, match="PUSH_WEBPUSH_ALLOWED_PORTS"):
            Settings.from_env({"PUSH_WEBPUSH_ALLOWED_PORTS": bad})


def test_push_settings_that_cannot_work_are_refused():
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    good = Settings.from_env({"VAPID_PRIVATE_KEY": private_key_text(key), "VAPID_PUBLIC_KEY": public_key_text(key)})
    assert good.vapid_public_key == public_key_text(key)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    Settings.from_env({"VAPID_PRIVATE_KEY": pem.decode(), "VAPID_SUBJECT": "mailto:ops@example.com"})
    cases = [
        ({"VAPID_PRIVATE_KEY": "not a key"}, "VAPID_PRIVATE_KEY"),
        ({"VAPID_PRIVATE_KEY": private_key_text(key), "VAPID_PUBLIC_KEY": public_key_text(other)}, "VAPID_PUBLIC_KEY"),
        ({"VAPID_PUBLIC_KEY": public_key_text(key)}, "VAPID_PUBLIC_KEY"),
        ({"VAPID_SUBJECT": "ops@example.com"}, "VAPID_SUBJECT"),
        ({"PUSH_WEBHOOK_ALLOWED_PREFIXES": "https://gw.example.com/"}, "PUSH_WEBHOOK_SECRET"),
        ({"PUSH_WEBHOOK_ALLOWED_PREFIXES": "gw.example.com", "PUSH_WEBHOOK_SECRET": WEBHOOK_SECRET}, "PREFIXES"),
        ({"PUSH_LEASE": "5", "PUSH_TIMEOUT": "10"}, "PUSH_LEASE"),
    ]
    for env, message in cases:
        with pytest.raises(ValueError, match=message):
            Settings.from_env(env)


async def test_production_without_a_vapid_key_disables_web_push_only(tmp_path, mongo_url, receiver):
    settings = make_settings(
        tmp_path,
        1,
        environment="production",
        push_webhook_allowed_prefixes=f"{receiver.origin}/hook/",
        push_webhook_secret=WEBHOOK_SECRET,
    )
    node = await build_services(settings, mongo_url)
    try:
        assert node.push.vapid_public_key is None
        assert not (Path(settings.data_dir) / VAPID_KEY_FILE).exists()
        with pytest.raises(Exception, match="not enabled"):
            keys = _good_keys()
            await node.push.register_webpush(1, "https://fcm.googleapis.com/x", keys["p256dh"], keys["auth"])
        device, created = await node.push.register_webhook(1, f"{receiver.origin}/hook/x")
        assert created and device["kind"] == "webhook"
    finally:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_url)
        await client.drop_database(settings.mongodb_database)
        await client.close()
        await node.close()


def test_webhook_signature_is_over_timestamp_and_body():
    from services.push.delivery import sign_webhook

    body = orjson.dumps({"a": 1})
    header = sign_webhook(WEBHOOK_SECRET, body, 1700000000)
    expected = hmac.new(WEBHOOK_SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


async def test_offline_recipients_of_one_moment_are_looked_up_for_devices_in_one_query(api, services, receiver):
    """Every notification to an offline user asks whether they have a device: a reader reconnecting while
    messages keep coming, or a node's worth of readers during a restart, asked the store once each."""
    pairs = [await pair(api, services) for _ in range(4)]
    with_device = [b for _, b, _ in pairs[:2]]
    for user in with_device:
        await register(api, user, receiver.subscription(user.username))
    owners = services.push._device_owners
    before = owners.queries

    def new_message(cid: int, sender: Any) -> dict[str, Any]:
        message = {"id": 1, "conversation_id": cid, "content": "hi", "sender": {"username": sender.username}}
        return {"type": "new_message", "message": message}

    await asyncio.gather(*(services.push.on_notify(b.id, new_message(cid, a)) for a, b, cid in pairs))
    assert owners.queries - before == 1
    queued = {d["user_id"] async for d in services.store.push_outbox.find({}, {"user_id": 1})}
    assert queued == {user.id for user in with_device}


async def test_pushes_that_cannot_be_queued_while_the_store_is_away_are_logged_as_one_line(
    api, services, monkeypatch, caplog
):
    """A store timeout fails every offline recipient of that moment the same way: the log says so once, with
    a count, instead of a line per recipient."""
    users = [(await pair(api, services))[1] for _ in range(3)]

    async def store_away(user_ids: list[int]) -> dict[int, bool]:
        raise pymongo.errors.ServerSelectionTimeoutError("store away")

    monkeypatch.setattr(services.push._device_owners, "_fetch", store_away)
    note = {"type": "new_like", "from_user": {"id": 1}}
    with caplog.at_level(logging.WARNING, logger="chat.push"):
        await asyncio.gather(*(services.push.on_notify(user.id, note) for user in users * 40))
    lines = [r.getMessage() for r in caplog.records if r.name == "chat.push"]
    assert len(lines) == 1 and lines[0].startswith("could not queue a push (new_like for user ")
    assert await services.store.push_outbox.count_documents({}) == 0


async def test_a_user_shown_online_only_by_a_stopped_nodes_grace_still_gets_pushes(cluster_factory, receiver):
    """A stopping node leaves its users shown online for PRESENCE_HAND_OVER_GRACE, for their clients to
    reconnect; one whose client does not (a phone asleep) must still get the push of a message sent
    meanwhile: the push asks whether they hold a socket, not whether they are shown online."""
    shared_key = private_key_text(ec.generate_private_key(ec.SECP256R1()))
    n1, n2 = await cluster_factory(
        2,
        **{**PUSH_SETTINGS, "push_grace_s": 0.2},
        push_webhook_allowed_prefixes=f"{receiver.origin}/hook/",
        vapid_private_key=shared_key,
    )
    alice, bob = await n1.api.user("alice"), await n1.api.user("bob")
    cid = await make_conversation(n1.services, alice.id, bob.id)
    await register(n1.api, bob, receiver.subscription("bob"))
    await ws_connect(n2.api, f"/ws/notifications/?token={bob.access}")
    presence = n1.services.presence.store
    for _ in range(100):
        if await presence.is_online(bob.id):
            break
        await asyncio.sleep(0.02)
    assert await presence.reachable(bob.id)

    n2.server.stop()
    await asyncio.wait_for(n2.services.close(), 10)
    assert await presence.is_online(bob.id) and not await presence.reachable(bob.id)
    await send(n1.api, alice, cid, "are you there?")
    await receiver.wait(lambda: len(receiver.pushes) == 1)
    assert receiver.pushes[0].payload == {"type": "new_message", "conversation_id": cid, "count": 1}
