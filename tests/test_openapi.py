"""The OpenAPI document: valid 3.1, complete (every route of the app, nothing more), request schemas that
are the pydantic models', response and frame schemas that real answers and frames satisfy; and the offline
Swagger UI page."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import sys
import types
from html.parser import HTMLParser
from typing import Any

import orjson
import pydantic
import pytest
import tornado.routing
import tornado.web
import tornado.websocket
from openapi_spec_validator import OpenAPIV31SpecValidator

import handlers
from handlers import contract, openapi, schemas
from handlers.base import BaseHandler
from handlers.errors import ErrorReport
from handlers.media import MediaHandler
from handlers.protocol import REGISTRY
from handlers.responses import Error
from handlers.schemas import RegisterBody
from handlers.server_frames import ErrorEvent
from services.core.config import Settings
from services.realtime.close_codes import CLOSE_CODES
from tests.processes import unavailable
from tests.support import PASSWORD, conforms, make_conversation, schema_validator, ws_connect
from tests.ws_helpers import PNG, conv_path, join, notifications, pair

MESSAGE_BURST = 3
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture
def settings_overrides():
    # A burst small enough that one test reaches the message rate limit (429 with Retry-After).
    return {"message_burst": MESSAGE_BURST, "message_rate": 0.01, "max_upload_bytes": 4096}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi.build_document(Settings())


# -- the document itself -------------------------------------------------------------------------------


def test_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1.")
    OpenAPIV31SpecValidator(document).validate()


def test_every_operation_has_an_id_a_tag_and_documented_errors(document):
    ids = []
    tags = {t["name"] for t in document["tags"]}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            ids.append(operation["operationId"])
            assert set(operation["tags"]) <= tags, (method, path)
            statuses = set(operation["responses"])
            authenticated = operation.get("security", document["security"]) != []
            if authenticated:
                assert "401" in statuses, (method, path)
            if path.startswith("/api/") and path not in ("/api/openapi.json", "/api/docs/"):
                assert "503" in statuses, (method, path)
            if "requestBody" in operation and "application/json" in operation["requestBody"]["content"]:
                assert {"400", "413"} <= statuses, (method, path)
            for status, response in operation["responses"].items():
                if status == "429":
                    assert response["$ref"] == "#/components/responses/RateLimited"
    assert len(ids) == len(set(ids))
    rate_limited = document["components"]["responses"]["RateLimited"]
    assert rate_limited["headers"]["Retry-After"] == {"$ref": "#/components/headers/RetryAfter"}


def test_served_document_is_the_one_built_for_the_settings(document):
    # Limits of the deployment show in the document: another password limit, another maxLength.
    other = openapi.build_document(Settings(max_password_chars=64, max_content_chars=10))
    register = other["components"]["schemas"]["RegisterBody"]["properties"]
    assert register["password"]["maxLength"] == 64
    assert other["components"]["schemas"]["SendMessageBody"]["properties"]["content"]["maxLength"] == 10
    assert openapi.document_bytes(Settings()) == orjson.dumps(document)


async def test_openapi_json_is_served(api, services):
    response = await api.get("/api/openapi.json")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.body["openapi"] == "3.1.0"
    assert response.body == orjson.loads(openapi.document_bytes(services.settings))


# -- routes and operations stay in step ----------------------------------------------------------------


def _rules(app: tornado.web.Application) -> list[tuple[str, Any]]:
    rules = []
    for rule in app.wildcard_router.rules:
        assert isinstance(rule.matcher, tornado.routing.PathMatches)
        rules.append((rule.matcher.regex.pattern.removesuffix("$"), rule.target))
    return rules


def _template(pattern: str) -> str:
    """`/api/conversations/([0-9]{1,15})/` -> `/api/conversations/{}/`."""
    return re.sub(r"\((?:[^()\\]|\\.)*\)", "{}", pattern).replace("\\", "")


def _normalized(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def _methods(handler: type[tornado.web.RequestHandler]) -> set[str]:
    return {
        m
        for m in HTTP_METHODS
        if getattr(handler, m, None) is not getattr(tornado.web.RequestHandler, m)
        and m.upper() in handler.SUPPORTED_METHODS
    }


async def test_every_route_of_the_app_is_documented(app, document):
    documented = {(_normalized(path), method) for path, item in document["paths"].items() for method in item}
    sockets = {_normalized(path) for path in document["x-websockets"]}
    missing = []
    for pattern, handler in _rules(app):
        if issubclass(handler, tornado.websocket.WebSocketHandler):
            assert _template(pattern) in sockets, f"WebSocket {pattern} is not in x-websockets"
        elif issubclass(handler, tornado.web.StaticFileHandler | MediaHandler):
            continue  # serves files (media, the demo page, the docs' own assets), not the API
        else:
            missing += [
                (method, pattern) for method in _methods(handler) if (_template(pattern), method) not in documented
            ]
    assert not missing, f"routes without a contract (handlers/contract.py): {missing}"


async def test_every_documented_operation_exists(app, document):
    rules = _rules(app)
    for path, item in document["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        handlers = [h for pattern, h in rules if re.fullmatch(pattern, concrete)]
        assert handlers, f"{path} is documented but no route serves it"
        handler = handlers[0]
        served = {"get"} if issubclass(handler, tornado.web.StaticFileHandler) else _methods(handler)
        assert set(item) <= served, (path, set(item) - served)
        if issubclass(handler, tornado.web.StaticFileHandler):
            continue  # the docs page: its route captures the (empty) file name
        groups = re.compile(next(p for p, h in rules if h is handler and re.fullmatch(p, concrete))).groups
        path_params = {p["name"] for op in item.values() for p in op.get("parameters", ()) if p["in"] == "path"}
        assert len(path_params) == groups == path.count("{"), path
    for path in document["x-websockets"]:
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        assert any(re.fullmatch(p, concrete) and issubclass(h, tornado.websocket.WebSocketHandler) for p, h in rules), (
            path
        )


def test_a_rest_method_without_a_contract_fails_the_build(monkeypatch):
    class Undeclared(BaseHandler):
        async def get(self) -> None:
            self.send_json({})

    module = types.ModuleType("undeclared")
    module.routes = [(r"/api/undeclared/", Undeclared)]  # type: ignore[attr-defined]
    monkeypatch.setattr(handlers, "ROUTE_MODULES", [*handlers.ROUTE_MODULES, module])
    with pytest.raises(RuntimeError, match=r"Undeclared\.get declares no contract"):
        openapi.build_document(Settings())


def test_contracts_are_checked_where_they_are_declared():
    with pytest.raises(ValueError, match="418"):
        contract.operation("teapot", responses={200: contract.Reply("Tea.")}, errors=(418,))
    with pytest.raises(TypeError, match="docstring"):
        contract.operation("silent", responses={200: contract.Reply("Nothing.")})(lambda self: None)
    assert contract.route_path(r"/api/a/([0-9]{1,3})/b/", {"a_id": "An a."})[0] == "/api/a/{a_id}/b/"
    with pytest.raises(ValueError, match="fewer ids"):
        contract.route_path(r"/api/a/", {"a_id": "An a."})
    with pytest.raises(ValueError, match="not an id"):
        contract.route_path(r"/api/a/([a-z]+)/", {"a_id": "An a."})


def test_websockets_are_described(document):
    sockets = document["x-websockets"]
    assert set(sockets) == {"/ws/conversations/{conversation_id}/", "/ws/notifications/"}
    for socket in sockets.values():
        assert {"1000", "1001", "1008", "1009", "1011", "4000", "4001", "4002", "4003"} <= set(socket["closeCodes"])
        assert set(socket["closeCodes"]) == {str(code) for code in CLOSE_CODES}
        assert "token" in socket["query"]
        for frame in socket["clientFrames"] + socket["serverFrames"]:
            assert frame["schema"]["$ref"].rsplit("/", 1)[1] in document["components"]["schemas"], frame
    conversation = sockets["/ws/conversations/{conversation_id}/"]
    client_frames = {"message", "typing", "read_receipt", "ping", "edit", "unsend", "auth"}
    assert {f["type"] for f in conversation["clientFrames"]} == client_frames
    assert {f["type"] for f in conversation["serverFrames"]} == {
        "message",
        "typing",
        "read_receipt",
        "status",
        "pong",
        "error",
        "message_edited",
        "message_deleted",
    }
    assert {f["type"] for f in sockets["/ws/notifications/"]["clientFrames"]} == set(REGISTRY.accepted("notifications"))
    assert all(f["summary"] for f in conversation["clientFrames"])
    assert "after" in conversation["query"]
    assert "x-websockets" in document["info"]["description"]


# -- request schemas come from the models --------------------------------------------------------------


def _json_request_models(document: dict[str, Any]) -> set[str]:
    names = set()
    for item in document["paths"].values():
        for operation in item.values():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                names.add(content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1])
    return names


def test_request_schemas_follow_the_pydantic_models(document):
    schemas = document["components"]["schemas"]
    models = openapi.request_models()
    assert _json_request_models(document) == {m.__name__ for m in models}
    for model in models:
        schema = schemas[model.__name__]
        fields = model.model_fields
        assert set(schema["properties"]) == set(fields), model.__name__
        assert set(schema.get("required", ())) == {n for n, f in fields.items() if f.is_required()}, model.__name__
        assert schema["additionalProperties"] is False
        # Added limits only ever narrow what the model accepts.
        source = model.model_json_schema()["properties"]
        for name, prop in schema["properties"].items():
            for low, high in (("minLength", "maxLength"), ("minimum", "maximum")):
                for mine, theirs in ((_branch(prop), _branch(source[name])),):
                    if high in theirs:
                        assert mine[high] <= theirs[high], (model.__name__, name)
                    if low in theirs:
                        assert mine[low] >= theirs[low], (model.__name__, name)
    register = schemas["RegisterBody"]
    assert set(register["required"]) == {"username", "password"}
    assert register["properties"]["username"]["pattern"] == "^[A-Za-z0-9_.-]{3,30}$"


def _branch(prop: dict[str, Any]) -> dict[str, Any]:
    return next((b for b in prop.get("anyOf", ()) if b.get("type") != "null"), prop)


@pytest.mark.parametrize(
    "body",
    [
        {"username": "alice", "password": "long enough"},
        {"username": "alice"},
        {"username": "alice", "password": "long enough", "admin": True},
        {"username": "alice", "password": 12345678},
        {"username": "alice", "password": "long enough", "location": {"lat": 48.8, "lon": 2.35}},
        {"username": "alice", "password": "long enough", "location": {"lat": 100, "lon": 2}},
        {"username": "alice", "password": "long enough", "location": {"lat": 10, "lon": -181.5}},
        {"username": "alice", "password": "long enough", "gender": "robot"},
        {"username": "alice", "password": "long enough", "interested_in": ["man", "woman", "nonbinary", "man"]},
        {"username": "alice", "password": "short"},
        {"username": "alice", "password": "long enough", "birthdate": "1990-01-01"},
    ],
)
def test_register_schema_and_model_agree(document, body):
    accepted_by_model = True
    try:
        RegisterBody.model_validate(body)
    except pydantic.ValidationError:
        accepted_by_model = False
    assert schema_validator(document, "#/components/schemas/RegisterBody").is_valid(body) == accepted_by_model, body


def test_not_blank_pattern_is_pythons_idea_of_whitespace():
    pattern = re.compile(schemas.NOT_BLANK)
    for point in range(sys.maxunicode + 1):
        if 0xD800 <= point <= 0xDFFF:
            continue
        char = chr(point)
        assert (pattern.search(char) is None) == char.isspace(), hex(point)


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"content": "hello"}, True),
        ({"content": " \n\t"}, False),
        ({"content": "\x1c"}, False),
        ({}, False),
        ({"attachment_id": 3}, True),
        ({"content": "", "attachment_id": 3}, True),
        ({"content": "", "attachment_id": None}, False),
        ({"content": "x" * 4001}, False),
    ],
)
def test_send_message_schema_says_what_the_service_refuses(document, body, valid):
    assert schema_validator(document, "#/components/schemas/SendMessageBody").is_valid(body) == valid


# -- real answers satisfy the documented responses -----------------------------------------------------


async def test_account_answers_match_the_document(api, document):
    username = "doc_alice"
    created = await api.post("/api/register/", {"username": username, "password": PASSWORD, "birthdate": "1990-02-03"})
    conforms(document, "post", "/api/register/", created)
    assert created.status == 201
    conforms(
        document,
        "post",
        "/api/register/",
        await api.post("/api/register/", {"username": username, "password": PASSWORD}),
    )
    invalid = await api.post("/api/register/", {"username": "x", "password": 5})
    conforms(document, "post", "/api/register/", invalid)
    assert invalid.status == 400 and invalid.body["error"]["fields"]
    conforms(document, "post", "/api/register/", await api.post("/api/register/", body=b"not json"))

    tokens = await api.post("/api/token/", {"username": username, "password": PASSWORD})
    conforms(document, "post", "/api/token/", tokens)
    assert tokens.status == 200
    wrong = await api.post("/api/token/", {"username": username, "password": "wrong password"})
    conforms(document, "post", "/api/token/", wrong)
    assert wrong.status == 401
    refreshed = await api.post("/api/token/refresh/", {"refresh": tokens.body["refresh"]})
    conforms(document, "post", "/api/token/refresh/", refreshed)
    # Within REFRESH_REUSE_GRACE the first reuse is a retry (200); the next one is a theft (401).
    retried = await api.post("/api/token/refresh/", {"refresh": tokens.body["refresh"]})
    conforms(document, "post", "/api/token/refresh/", retried)
    assert retried.status == 200
    reused = await api.post("/api/token/refresh/", {"refresh": tokens.body["refresh"]})
    conforms(document, "post", "/api/token/refresh/", reused)
    assert reused.status == 401
    access = refreshed.body["access"]

    me = await api.get("/api/users/me/", token=access)
    conforms(document, "get", "/api/users/me/", me)
    assert me.status == 200
    conforms(document, "get", "/api/users/me/", await api.get("/api/users/me/"))
    conforms(document, "get", "/api/users/me/", await api.get("/api/users/me/", token=tokens.body["refresh"]))
    patched = await api.patch(
        "/api/users/me/",
        {"display_name": "Alice", "location": {"lat": 48.85, "lon": 2.35}, "interested_in": ["man"], "age_min": 25},
        token=access,
    )
    conforms(document, "patch", "/api/users/me/", patched)
    # The stored point is coarse (docs/security.md, "Location privacy"): never the one sent.
    assert patched.status == 200 and patched.body["location"] not in (None, {"lat": 48.85, "lon": 2.35})
    too_young = await api.patch("/api/users/me/", {"age_min": 3}, token=access)
    conforms(document, "patch", "/api/users/me/", too_young)
    too_big = await api.patch("/api/users/me/", body=b'{"bio": "' + b"x" * 70_000 + b'"}', token=access)
    conforms(document, "patch", "/api/users/me/", too_big)
    assert too_big.status == 413

    picture = await api.put("/api/users/me/picture/", body=PNG, token=access, headers={"Content-Type": "image/png"})
    conforms(document, "put", "/api/users/me/picture/", picture)
    assert picture.status == 200
    not_image = await api.put("/api/users/me/picture/", body=b"<svg/>", token=access)
    conforms(document, "put", "/api/users/me/picture/", not_image)
    assert not_image.status == 400

    bob = await api.user("doc_bob", gender="man")  # a man of her age range: a discover candidate
    seen = await api.get(f"/api/users/{bob.id}/", token=access)
    conforms(document, "get", "/api/users/{user_id}/", seen)
    assert seen.status == 200
    conforms(document, "get", "/api/users/{user_id}/", await api.get("/api/users/999999/", token=access))
    conforms(document, "get", "/api/users/{user_id}/", await api.get(f"/api/users/{me.body['id']}/", token=access))


async def test_matching_answers_match_the_document(api, document):
    alice = await api.user("doc_alice")
    bob = await api.user("doc_bob")
    carol = await api.user("doc_carol")

    page = await api.get("/api/discover/?limit=5", token=alice.access)
    conforms(document, "get", "/api/discover/", page)
    assert page.status == 200 and page.body["results"]
    conforms(document, "get", "/api/discover/", await api.get("/api/discover/?limit=0", token=alice.access))
    conforms(document, "get", "/api/discover/", await api.get("/api/discover/?cursor=nope", token=alice.access))

    liked = await api.post("/api/likes/", {"user_id": bob.id}, token=alice.access)
    conforms(document, "post", "/api/likes/", liked)
    assert liked.status == 201 and liked.body["match"] is None
    conforms(document, "post", "/api/likes/", await api.post("/api/likes/", {"user_id": bob.id}, token=alice.access))
    conforms(document, "post", "/api/likes/", await api.post("/api/likes/", {"user_id": alice.id}, token=alice.access))
    conforms(document, "post", "/api/likes/", await api.post("/api/likes/", {"user_id": 10**9}, token=alice.access))
    received = await api.get("/api/likes/received/", token=bob.access)
    conforms(document, "get", "/api/likes/received/", received)
    assert received.body["results"]
    matched = await api.post("/api/likes/", {"user_id": alice.id}, token=bob.access)
    conforms(document, "post", "/api/likes/", matched)
    assert matched.body["match"] is not None

    matches = await api.get("/api/matches/", token=alice.access)
    conforms(document, "get", "/api/matches/", matches)
    assert len(matches.body) == 1
    conforms(
        document, "post", "/api/passes/", await api.post("/api/passes/", {"user_id": carol.id}, token=alice.access)
    )
    blocked = await api.post("/api/blocks/", {"user_id": carol.id}, token=bob.access)
    conforms(document, "post", "/api/blocks/", blocked)
    assert blocked.status == 201
    conforms(document, "get", "/api/blocks/", await api.get("/api/blocks/", token=bob.access))
    conforms(
        document, "delete", "/api/blocks/{user_id}/", await api.delete(f"/api/blocks/{carol.id}/", token=bob.access)
    )
    unmatched = await api.delete(f"/api/matches/{matches.body[0]['id']}/", token=alice.access)
    conforms(document, "delete", "/api/matches/{match_id}/", unmatched)
    assert unmatched.status == 204
    conforms(
        document, "delete", "/api/matches/{match_id}/", await api.delete("/api/matches/99999/", token=alice.access)
    )


async def test_conversation_answers_match_the_document(api, services, document):
    alice = await api.user("doc_alice")
    bob = await api.user("doc_bob")
    cid = await make_conversation(services, alice.id, bob.id)
    base = "/api/conversations/{conversation_id}/"

    sent = await api.post(
        f"/api/conversations/{cid}/messages/", {"content": "hello", "client_id": "c-1"}, token=alice.access
    )
    conforms(document, "post", base + "messages/", sent)
    assert sent.status == 201 and sent.body["client_id"] == "c-1"
    replay = await api.post(
        f"/api/conversations/{cid}/messages/", {"content": "hello", "client_id": "c-1"}, token=alice.access
    )
    conforms(document, "post", base + "messages/", replay)
    assert replay.status == 200
    blank = await api.post(f"/api/conversations/{cid}/messages/", {"content": "   "}, token=alice.access)
    conforms(document, "post", base + "messages/", blank)
    assert blank.status == 400

    uploaded = await api.post(
        f"/api/conversations/{cid}/attachments/", body=PNG, token=bob.access, headers={"Content-Type": "image/png"}
    )
    conforms(document, "post", base + "attachments/", uploaded)
    assert uploaded.status == 201
    too_large = await api.post(f"/api/conversations/{cid}/attachments/", body=b"%PDF-" + b"x" * 5000, token=bob.access)
    conforms(document, "post", base + "attachments/", too_large)
    assert too_large.status == 413
    with_file = await api.post(
        f"/api/conversations/{cid}/messages/", {"attachment_id": uploaded.body["id"]}, token=bob.access
    )
    conforms(document, "post", base + "messages/", with_file)
    assert with_file.body["attachment"]["id"] == uploaded.body["id"]

    read = await api.post(f"/api/conversations/{cid}/read/", {"message_id": with_file.body["id"]}, token=alice.access)
    conforms(document, "post", base + "read/", read)
    assert read.body["read_receipt"] is not None
    again = await api.post(f"/api/conversations/{cid}/read/", {"message_id": with_file.body["id"]}, token=alice.access)
    conforms(document, "post", base + "read/", again)
    assert again.body["read_receipt"] is None
    conforms(
        document,
        "post",
        base + "read/",
        await api.post(f"/api/conversations/{cid}/read/", {"message_id": 99}, token=alice.access),
    )

    history = await api.get(f"/api/conversations/{cid}/messages/?limit=1", token=alice.access)
    conforms(document, "get", base + "messages/", history)
    assert history.body["has_more"] is True
    both = await api.get(f"/api/conversations/{cid}/messages/?before=2&after=1", token=alice.access)
    conforms(document, "get", base + "messages/", both)
    assert both.status == 400
    listed = await api.get("/api/conversations/", token=bob.access)
    conforms(document, "get", "/api/conversations/", listed)
    assert listed.body[0]["last_message"]["attachment"] is not None
    conforms(document, "get", base, await api.get(f"/api/conversations/{cid}/", token=alice.access))
    stranger = await api.user("doc_eve")
    hidden = await api.get(f"/api/conversations/{cid}/", token=stranger.access)
    conforms(document, "get", base, hidden)
    assert hidden.status == 404

    # Three sends so far in this burst: the next is rate limited, with Retry-After.
    limited = None
    for n in range(MESSAGE_BURST + 1):
        limited = await api.post(f"/api/conversations/{cid}/messages/", {"content": f"m{n}"}, token=alice.access)
        conforms(document, "post", base + "messages/", limited)
        if limited.status == 429:
            break
    assert limited is not None and limited.status == 429


async def test_probes_and_unknown_paths_match_the_document(api, document):
    conforms(document, "get", "/livez", await api.get("/livez"))
    conforms(document, "get", "/readyz", await api.get("/readyz"))
    conforms(document, "get", "/metrics", await api.get("/metrics"))
    unknown = await api.get("/api/nothing-here/")
    assert unknown.status == 404
    assert schema_validator(document, "#/components/schemas/Error").is_valid(unknown.body)


def test_error_models_describe_what_the_error_map_renders(document):
    report = ErrorReport(429, "rate_limited", "Slow down", fields={"content": "too fast"}, retry_after_s=0.8)
    Error.model_validate(report.envelope())
    ErrorEvent.model_validate(report.frame(client_id="c-1"))
    assert schema_validator(document, "#/components/schemas/Error").is_valid(report.envelope())
    assert schema_validator(document, "#/components/schemas/ErrorEvent").is_valid(report.frame())
    assert not schema_validator(document, "#/components/schemas/ErrorEvent").is_valid({**report.frame(), "extra": 1})


# -- real frames satisfy the documented server frames --------------------------------------------------


def _frame_conforms(document: dict[str, Any], socket_path: str, frame: dict[str, Any]) -> None:
    documented = {f["type"]: f["schema"]["$ref"] for f in document["x-websockets"][socket_path]["serverFrames"]}
    assert frame["type"] in documented, f"{socket_path} sent an undocumented frame: {frame}"
    pointer = "#" + documented[frame["type"]].removeprefix("#")
    errors = sorted(schema_validator(document, pointer).iter_errors(frame), key=str)
    assert not errors, f"{frame['type']} frame: {[e.message for e in errors]}\n{frame}"


async def test_conversation_frames_match_the_document(api, services, document):
    p = await pair(api, services)
    conversation = "/ws/conversations/{conversation_id}/"
    ws_a = await ws_connect(api, conv_path(p.cid, p.a))
    greeting = await ws_a.recv()
    ws_b = await join(api, p.cid, p.b)
    notes_b = await notifications(api, p.b)
    arrived = await ws_a.recv_type("status")
    await ws_a.send({"type": "message", "content": "hello", "client_id": "c-1"})
    message = await ws_a.recv_type("message")
    await ws_b.send({"type": "typing", "is_typing": True})
    typing = await ws_a.recv_type("typing")
    await ws_b.send({"type": "read_receipt", "message_id": message["message"]["id"]})
    receipt = await ws_a.recv_type("read_receipt")
    await ws_a.send({"type": "ping"})
    pong = await ws_a.recv_type("pong")
    await ws_a.send({"type": "message", "content": "   ", "client_id": "c-2"})
    refused = await ws_a.recv_type("error")
    assert refused["client_id"] == "c-2"
    frames = [greeting, arrived, message, typing, receipt, pong, refused]
    assert [f["type"] for f in frames] == ["status", "status", "message", "typing", "read_receipt", "pong", "error"]
    for frame in frames:
        _frame_conforms(document, conversation, frame)
    _frame_conforms(document, "/ws/notifications/", await notes_b.recv_type("notification"))
    await notes_b.send({"type": "ping"})
    _frame_conforms(document, "/ws/notifications/", await notes_b.recv_type("pong"))


# -- the docs page -------------------------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if any(name.startswith("on") for name in values) or tag == "style" or "style" in values:
            self.inline.append(tag)
        for name in ("src", "href"):
            if values.get(name):
                self.urls.append(values[name] or "")
        self._in_script = tag == "script"
        if tag == "script" and not values.get("src"):
            self.inline.append("script")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("script")


EXPECTED_TYPES = {
    ".js": ("application/javascript", "text/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".json": ("application/json",),
}


async def test_docs_page_is_offline_and_loads_its_assets(api):
    page = await api.get("/api/docs/")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "unsafe" not in csp and "http" not in csp
    html = page.body.decode() if isinstance(page.body, bytes) else page.body
    assert not re.search(r"https?://", html)
    parser = _Page()
    parser.feed(html)
    assert not parser.inline, "inline script or style would be refused by the page's CSP"
    assert "init.js" in parser.urls and "assets/swagger-ui-bundle.js" in parser.urls
    for url in parser.urls:
        assert not re.match(r"^([a-z]+:|//)", url), url
        path = os.path.normpath("/api/docs/" + url)
        asset = await api.get(path)
        assert asset.status == 200, path
        content_type = asset.headers["Content-Type"].split(";")[0]
        assert content_type in EXPECTED_TYPES[os.path.splitext(path)[1]], (path, content_type)
        assert asset.headers["X-Content-Type-Options"] == "nosniff"

    init = await api.get("/api/docs/init.js")
    script = init.body.decode() if isinstance(init.body, bytes) else init.body
    assert not re.search(r"https?://", script)
    assert '"../openapi.json"' in script and "validatorUrl: null" in script


async def test_docs_serve_only_the_swagger_ui_files_they_use(api):
    for path in ("/api/docs/assets/swagger-editor-bundle.js", "/api/docs/assets/../../openapi.py", "/api/docs/x.js"):
        response = await api.get(path)
        assert response.status == 404, path
        assert response.body["error"]["code"] == "not_found"


# -- the page in a browser -----------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
async def test_swagger_ui_renders_the_document_under_its_csp(api):
    """Swagger UI runs under the page's CSP (no inline script or style, nothing but our origin)."""
    if importlib.util.find_spec("playwright") is None or not os.path.exists(CHROMIUM):
        unavailable("Playwright and Chromium are needed (make test installs them)")
    from playwright.sync_api import sync_playwright

    url = api.url("/api/docs/")

    def render() -> tuple[list[str], list[str], int]:
        problems: list[str] = []
        foreign: list[str] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page()
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.on(
                    "request", lambda r: foreign.append(r.url) if not r.url.startswith(url.split("/api/")[0]) else None
                )
                page.goto(url)
                page.wait_for_selector("#operations-accounts-register", timeout=15_000)
                count = page.locator(".opblock").count()
            finally:
                browser.close()
        return problems, foreign, count

    problems, foreign, count = await asyncio.get_running_loop().run_in_executor(None, render)
    assert not problems, problems
    assert not foreign, foreign
    assert count == sum(len(item) for item in openapi.build_document(Settings())["paths"].values())
