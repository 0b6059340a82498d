"""The OpenAPI 3.1 document of the API at /api/openapi.json, generated from the code; and an offline
Swagger UI at /api/docs/.

Nothing in the document is written twice. Paths come from the route table (`handlers.ROUTE_MODULES`),
each operation from the contract declared on its handler method (handlers/contract.py), request bodies
from the pydantic models that validate them (handlers/schemas.py, tightened by the limits the services
enforce on top), answers from the response models (handlers/responses.py), errors from the error map
(handlers/errors.py), and the WebSocket section from the frame registry (handlers/protocol.py), the
server's frame models (handlers/server_frames.py) and the close code table. A REST handler method
without a contract fails the build.

The docs page is Swagger UI 5 from the `swagger-ui-py` package's static files, served by us: no CDN, and a
Content-Security-Policy that lets the page load nothing but its own origin.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, get_args

import orjson
import pydantic
import tornado.web
import tornado.websocket
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

import handlers
from handlers import devices
from handlers.base import BaseHandler
from handlers.contract import (
    REF_TEMPLATE,
    Operation,
    Reply,
    Tag,
    contract_of,
    openapi_operation,
    operation,
    route_path,
    schema_ref,
    shared_error_responses,
)
from handlers.files import FileHandler
from handlers.protocol import REGISTRY, frame_type_of
from handlers.responses import AnswerSchema, Error
from handlers.schemas import request_schemas
from handlers.server_frames import SOCKETS
from services.core.config import Settings
from services.realtime.close_codes import CLOSE_CODES

log = logging.getLogger("chat.openapi")

OPENAPI_VERSION = "3.1.0"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")
DOCS_ROOT = Path(__file__).resolve().parent / "openapi_assets"
# The only files of the package the page uses; the package also ships Swagger Editor bundles we do not
# want to publish.
SWAGGER_UI_FILES = ("swagger-ui.css", "index.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png")
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
API_TAG = Tag("documentation", "This document")


def swagger_ui_static() -> Path | None:
    """The `static/` folder of the installed swagger-ui-py package, found without importing it (its
    __init__ pulls in web framework adapters we do not use)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if folder.is_dir() else None


def _version() -> str:
    try:
        return importlib.metadata.version("chat-matching-server")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+checkout"


# -- the route table -----------------------------------------------------------------------------------


def _routes() -> Iterator[tuple[ModuleType, str, Any]]:
    # The package imports this module: its table is read when a document is built, not at import.
    for module in handlers.ROUTE_MODULES:
        for pattern, handler in module.routes:
            yield module, pattern, handler


def contracts() -> Iterator[tuple[ModuleType, str, str, Operation]]:
    """(module, route pattern, method, contract) of every REST operation of the route table."""
    for module, pattern, handler in _routes():
        if issubclass(handler, tornado.websocket.WebSocketHandler):
            continue
        for method in HTTP_METHODS:
            found = contract_of(getattr(handler, method))
            if found is not None:
                yield module, pattern, method, found
            elif issubclass(handler, BaseHandler) and _implements(handler, method):
                raise RuntimeError(f"{handler.__name__}.{method} declares no contract (handlers/contract.py)")


def _implements(handler: type[tornado.web.RequestHandler], method: str) -> bool:
    return getattr(handler, method) is not getattr(tornado.web.RequestHandler, method)


# -- schemas ---------------------------------------------------------------------------------------------


def component_schemas(
    models: Iterable[type[pydantic.BaseModel]], generator: type[GenerateJsonSchema] = GenerateJsonSchema
) -> dict[str, Any]:
    """The models' JSON Schemas and those of the models they use, by name, referring to each other."""
    models = list(dict.fromkeys(models))
    _, top = models_json_schema(
        [(m, "validation") for m in models], ref_template=REF_TEMPLATE, schema_generator=generator
    )
    schemas: dict[str, Any] = top.get("$defs", {})
    unnamed = [m.__name__ for m in models if m.__name__ not in schemas]
    if unnamed:
        raise RuntimeError(f"two different models are named {unnamed}")
    _standard_bounds(schemas)
    return schemas


_PYDANTIC_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _standard_bounds(node: Any) -> None:
    """pydantic writes a bound on a union (`StrictFloat | StrictInt` with `ge=`) as the non-standard
    `ge`/`le` keywords, which every validator ignores; the models enforce them, so say them in JSON Schema."""
    if isinstance(node, dict):
        for short, keyword in _PYDANTIC_BOUNDS.items():
            if short in node and isinstance(node[short], int | float) and keyword not in node:
                node[keyword] = node.pop(short)
        for value in node.values():
            _standard_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _standard_bounds(value)


def _merged(*groups: dict[str, Any]) -> dict[str, Any]:
    """One components table; a model used by two groups (requests and answers share Location) must
    come out the same in both."""
    out: dict[str, Any] = {}
    for group in groups:
        for name, schema in group.items():
            if out.setdefault(name, schema) != schema:
                raise RuntimeError(f"two different schemas are named {name}")
    return out


def _models_of(body: Any) -> Iterator[type[pydantic.BaseModel]]:
    if isinstance(body, type) and issubclass(body, pydantic.BaseModel):
        yield body
    for argument in get_args(body):
        yield from _models_of(argument)


def request_models() -> list[type[pydantic.BaseModel]]:
    """The JSON request bodies of the operations, in route order."""
    found = [c.body for *_, c in contracts() if isinstance(c.body, type)]
    return list(dict.fromkeys(found))


def schemas(settings: Settings) -> dict[str, Any]:
    answers = [m for *_, c in contracts() for reply in c.responses.values() for m in _models_of(reply.body)]
    server_frames = [m for socket in SOCKETS.values() for m in socket.frames]
    device_fields = {kind: (fields, devices.OPTIONAL_FIELDS[kind]) for kind, fields in devices.KIND_FIELDS.items()}
    return _merged(
        request_schemas(component_schemas(request_models()), settings, device_fields),
        component_schemas(spec.model for spec in REGISTRY.specs()),
        component_schemas([Error, *answers, *server_frames], AnswerSchema),
    )


# -- operations ------------------------------------------------------------------------------------------


def deployment_values(settings: Settings) -> dict[str, object]:
    """The limits the operations' descriptions may name as `{max_upload}` or `{push_max_devices}`."""
    return {"max_upload": f"{settings.max_upload_bytes / 2**20:g} MiB", "push_max_devices": settings.push_max_devices}


def operations(settings: Settings) -> dict[str, dict[str, dict[str, Any]]]:
    """path -> method -> operation, for every REST route of the application."""
    paths: dict[str, dict[str, dict[str, Any]]] = {}
    deployment = deployment_values(settings)
    for module, pattern, method, contract in contracts():
        path, item = openapi_operation(contract, module.API_TAG.name, pattern, deployment)
        paths.setdefault(path, {})[method] = item
    return paths


def tags() -> list[dict[str, str]]:
    """The handler modules' tags, in route table order."""
    found = {module.API_TAG.name: module.API_TAG for module, *_ in contracts()}
    return [{"name": tag.name, "description": tag.description} for tag in found.values()]


# -- WebSockets ------------------------------------------------------------------------------------------


def websockets(settings: Settings) -> dict[str, Any]:
    """Each socket route: its query, the frames a client may send, those the server sends, close codes."""
    close_codes = {str(c.code): {"meaning": c.meaning, "retry": c.retry} for c in CLOSE_CODES.values()}
    out: dict[str, Any] = {}
    for _, pattern, handler in _routes():
        if not issubclass(handler, tornado.websocket.WebSocketHandler):
            continue
        socket = SOCKETS[handler.endpoint]
        path, _ = route_path(pattern, socket.path)
        accepted = REGISTRY.accepted(handler.endpoint)
        out[path] = {
            "summary": socket.summary,
            "query": dict(socket.query),
            "clientFrames": [
                {"type": k, "summary": s.summary, "schema": schema_ref(s.model.__name__)} for k, s in accepted.items()
            ],
            "serverFrames": [{"type": frame_type_of(m), "schema": schema_ref(m.__name__)} for m in socket.frames],
            "closeCodes": close_codes,
            "maxFrameBytes": settings.max_frame_bytes,
        }
    return out


DESCRIPTION = """\
The REST side of the Chat & Matching API: accounts, profiles, matching and conversations.

JSON in and out. Authenticated operations take `Authorization: Bearer <access token>` (from
`POST /api/token/`). Ids are integers; timestamps are ISO 8601 UTC ending in `Z`. Every error is
`{"error": {"code", "message", "fields"?}}`; 429 answers carry `Retry-After`. Every answer carries an
`X-Request-Id` (a proxy's is kept) to quote in support requests.

Two WebSockets carry the live traffic, authenticated with `?token=<access token>`:
`/ws/conversations/{conversation_id}/` (messages, typing, read receipts, presence; `?after=<message id>`
resumes without loss) and `/ws/notifications/` (new messages, matches and likes). This document's
`x-websockets` extension lists, for each, the frames a client may send and those the server sends (their
schemas are among the components) and the close codes; the README's "WebSocket protocol" section
describes them in full.
"""


def build_document(settings: Settings) -> dict[str, Any]:
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Chat & Matching API",
            "version": _version(),
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": tags(),
        "security": [{"bearerAuth": []}],
        "paths": operations(settings),
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The `access` token of `POST /api/token/` (refresh tokens are refused).",
                }
            },
            "schemas": schemas(settings),
            "responses": shared_error_responses(),
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
        },
        "x-websockets": websockets(settings),
    }


@lru_cache(maxsize=4)
def document_bytes(settings: Settings) -> bytes:
    """The serialized document, built on first use for a deployment's settings and kept."""
    return orjson.dumps(build_document(settings))


# -- handlers ------------------------------------------------------------------------------------------


class OpenAPIHandler(BaseHandler):
    @operation("openapi", auth=False, responses={200: Reply("OpenAPI 3.1 document.", dict)})
    def get(self) -> None:
        """This document."""
        self.set_header("Cache-Control", "no-cache")
        self.finish(document_bytes(self.services.settings))


class _DocsFiles(FileHandler):
    """Static files of the docs page. The route table hands every handler the services; these do not
    need them, so `initialize` takes whatever it is given and serves `folder`."""

    folder: Path | None = None

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(path=str(self.folder or DOCS_ROOT), default_filename="index.html")

    def prepare(self) -> None:
        if self.folder is None:
            raise tornado.web.HTTPError(404, "swagger-ui-py is not installed")

    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", DOCS_CSP)
        self.set_header("Cache-Control", "no-cache")


class DocsPageHandler(_DocsFiles):
    """Our page's files (handlers/openapi_assets/)."""

    folder = DOCS_ROOT


class DocsIndexHandler(DocsPageHandler):
    """The page itself, the one of its files that is an operation of the API."""

    @operation("docs", auth=False, responses={200: Reply("HTML page.", str, media_type="text/html")})
    async def get(self, path: str, include_body: bool = True) -> None:
        """This document in Swagger UI."""
        await super().get(path, include_body)


class SwaggerAssetHandler(_DocsFiles):
    """Swagger UI's own files, from the installed package."""

    folder = swagger_ui_static()


if SwaggerAssetHandler.folder is None:
    log.warning("swagger-ui-py is not installed: /api/docs/ will not render")

_ASSET_NAMES = "|".join(name.replace(".", r"\.") for name in SWAGGER_UI_FILES)

routes: list[tuple[str, Any]] = [
    (r"/api/openapi.json", OpenAPIHandler),
    (r"/api/docs/()", DocsIndexHandler),
    (r"/api/docs/(init\.js)", DocsPageHandler),
    (rf"/api/docs/assets/({_ASSET_NAMES})", SwaggerAssetHandler),
]
