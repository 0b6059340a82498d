"""The REST contract of a handler method, declared on the method itself: what it takes, what it answers.

    class LikesHandler(MatchingHandler):
        @operation("like", body=UserRef, responses={201: Reply("Liked.", LikeAnswer)}, errors=(503,))
        async def post(self) -> None:
            '''Like someone; a mutual like makes a match and its conversation.'''

The API document (handlers/openapi.py) walks the route table and reads these contracts: the path comes
from the route's pattern, the tag from the handler module's `API_TAG`, the summary from the first
paragraph of the method's docstring (without its final period) and the description from the rest.
Descriptions may name deployment limits as `{max_upload}` or `{push_max_devices}`.

Some error statuses follow from the contract and are added here rather than listed by hand: 401 for an
operation that needs a token, 400 and 413 for one that takes a body (unreadable JSON, invalid fields, too
many bytes), 400 for query parameters (out of range), 404 for path ids (an id the route does not match is
an unknown path). `errors` names the others; `notes` says which codes an operation answers with a
status, and implies that status.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_args, get_origin

import pydantic

from handlers.errors import DEFAULT_CODES, STATUS_BY_ERROR, phrase
from handlers.responses import Error
from services.core.errors import RateLimited

JSON = "application/json"
REF_TEMPLATE = "#/components/schemas/{model}"
ERROR_STATUSES = frozenset(STATUS_BY_ERROR.values())
RATE_LIMITED = STATUS_BY_ERROR[RateLimited]
# What each shared error answer means; an operation's `notes` may say which codes it answers with.
ERROR_MEANINGS = {
    400: "Invalid input: `invalid_json`, `validation_error` (see `fields`), or another code.",
    401: "`not_authenticated` (no bearer token), `token_invalid` or `token_expired`.",
    403: "Refused for this user.",
    404: "Not found, or not yours: existence is never revealed.",
    409: "Conflicts with the current state.",
    413: "Body or file too large: `body_too_large`, `file_too_large`.",
    429: "Rate limited; retry after `Retry-After` seconds.",
    503: "A backing store is unreachable or the server is shutting down; retry later.",
}
_ATTRIBUTE = "__api_operation__"
# A route's id group, `([0-9]{1,15})`: what it matches (0 too, found nowhere) is its parameter's range.
_ID_GROUP = re.compile(r"\(\[0-9\]\{1,([0-9]+)\}\)")
_GROUP = re.compile(r"\((?:[^()\\]|\\.)*\)")

Method = TypeVar("Method", bound=Callable[..., Any])


@dataclass(frozen=True)
class Tag:
    """The group a handler module's operations are listed under."""

    name: str
    description: str


@dataclass(frozen=True)
class Reply:
    """One documented answer. `body` is a response model (handlers/responses.py), `list[Model]`, `str`,
    `bytes` (a file) or `dict` (any object); None for an answer without a body."""

    description: str
    body: Any = None
    media_type: str = JSON


@dataclass(frozen=True)
class Upload:
    """A request body of a file's raw bytes, in one of `media_types`."""

    media_types: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class Query:
    """An optional query parameter; the handlers read an empty value as an absent one."""

    name: str
    description: str
    schema: Mapping[str, Any]


def int_query(name: str, low: int, high: int, default: int | None, description: str) -> Query:
    """An integer query parameter, read by `BaseHandler.int_argument` with these bounds."""
    schema: dict[str, Any] = {"type": "integer", "minimum": low, "maximum": high}
    if default is not None:
        schema["default"] = default
    return Query(name, description, schema)


@dataclass(frozen=True)
class Operation:
    operation_id: str
    summary: str
    description: str | None
    responses: Mapping[int, Reply]
    # Every error status the operation may answer, with what it means here ("" when the shared text says it).
    errors: Mapping[int, str]
    auth: bool = True
    body: type[pydantic.BaseModel] | Upload | None = None
    path: Mapping[str, str] = field(default_factory=dict)
    query: tuple[Query, ...] = ()


def operation(
    operation_id: str,
    *,
    responses: Mapping[int, Reply],
    auth: bool = True,
    body: type[pydantic.BaseModel] | Upload | None = None,
    path: Mapping[str, str] | None = None,
    query: Sequence[Query] = (),
    errors: Iterable[int] = (),
    notes: Mapping[int, str] | None = None,
) -> Callable[[Method], Method]:
    """Declare the decorated handler method's contract.

    `responses` are the successful answers by status; `path` names the route's id groups in order, each
    with a description; `errors` are the error statuses the contract does not imply (see the module's
    docstring), `notes` what an error status means for this operation (which also lists that status)."""
    notes = dict(notes or {})
    statuses = {*errors, *notes, *_implied_errors(auth, body, path, query)}
    if statuses - ERROR_STATUSES:
        raise ValueError(f"{operation_id}: {sorted(statuses - ERROR_STATUSES)} are not statuses of handlers/errors.py")

    def declare(method: Method) -> Method:
        summary, description = _docstring(method)
        contract = Operation(
            operation_id,
            summary,
            description,
            dict(responses),
            {status: notes.get(status, "") for status in sorted(statuses - set(responses))},
            auth,
            body,
            dict(path or {}),
            tuple(query),
        )
        setattr(method, _ATTRIBUTE, contract)
        return method

    return declare


def contract_of(method: object) -> Operation | None:
    """The contract declared on a handler method, if any."""
    found = getattr(method, _ATTRIBUTE, None)
    return found if isinstance(found, Operation) else None


def _implied_errors(auth: bool, body: object, path: Mapping[str, str] | None, query: Sequence[Query]) -> set[int]:
    implied = set()
    if auth:
        implied.add(401)
    if body is not None:
        implied |= {400, 413}
    if query:
        implied.add(400)
    if path:
        implied.add(404)
    return implied


def _docstring(method: Callable[..., Any]) -> tuple[str, str | None]:
    """(summary, description) from the method's docstring: its paragraphs, each on one line."""
    text = inspect.getdoc(method)
    if not text:
        raise TypeError(f"{method.__qualname__} needs a docstring: its first paragraph is the summary")
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    return paragraphs[0].removesuffix("."), "\n\n".join(paragraphs[1:]) or None


# -- how a contract reads in OpenAPI ---------------------------------------------------------------------


def schema_ref(name: str) -> dict[str, Any]:
    return {"$ref": REF_TEMPLATE.format(model=name)}


def error_response_name(status: int) -> str:
    """The shared error answer of a status, named after its default code: 429 `rate_limited`, RateLimited."""
    return "".join(word.title() for word in DEFAULT_CODES[status].split("_"))


def shared_error_responses() -> dict[str, Any]:
    """The shared error answers, one per status the error map gives, each with the `Error` envelope."""
    out: dict[str, Any] = {}
    for status in sorted(set(STATUS_BY_ERROR.values())):
        response: dict[str, Any] = {
            "description": ERROR_MEANINGS.get(status, phrase(status)),
            "content": {JSON: {"schema": schema_ref(Error.__name__)}},
        }
        if status == RATE_LIMITED:
            response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
        out[error_response_name(status)] = response
    return out


def route_path(pattern: str, names: Mapping[str, str]) -> tuple[str, list[dict[str, Any]]]:
    """A route's pattern as an OpenAPI path, and its path parameters, named (in order) by `names`."""
    described = list(names.items())
    parameters: list[dict[str, Any]] = []
    path = pattern
    for group in _GROUP.findall(pattern):
        if group == "()":  # captures nothing (the docs page's empty file name)
            path = path.replace(group, "", 1)
            continue
        digits = _ID_GROUP.fullmatch(group)
        if digits is None or len(parameters) == len(described):
            raise ValueError(f"route {pattern}: group {group} is not an id named by its contract")
        name, description = described[len(parameters)]
        schema = {"type": "integer", "minimum": 0, "maximum": 10 ** int(digits[1]) - 1}
        parameters.append({"name": name, "in": "path", "required": True, "description": description, "schema": schema})
        path = path.replace(group, "{" + name + "}", 1)
    if len(parameters) != len(described):
        raise ValueError(f"route {pattern} has fewer ids than its contract names")
    return path.replace("\\", ""), parameters


def openapi_operation(
    contract: Operation, tag: str, pattern: str, deployment: Mapping[str, object]
) -> tuple[str, dict[str, Any]]:
    """(path, Operation Object) of a contract on a route; `deployment` fills the descriptions' `{names}`."""
    path, parameters = route_path(pattern, contract.path)
    out: dict[str, Any] = {"tags": [tag], "operationId": contract.operation_id, "summary": contract.summary}
    if contract.description:
        out["description"] = _filled(contract.description, deployment)
    if not contract.auth:
        out["security"] = []  # no token needed
    parameters += [_query_parameter(q) for q in contract.query]
    if parameters:
        out["parameters"] = parameters
    if contract.body is not None:
        out["requestBody"] = _request_body(contract.body, deployment)
    responses = {str(s): _response(r) for s, r in contract.responses.items()}
    responses |= {str(s): _error_response(s, note) for s, note in contract.errors.items()}
    out["responses"] = dict(sorted(responses.items()))
    return path, out


def _filled(text: str, deployment: Mapping[str, object]) -> str:
    for name, value in deployment.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def _body_schema(body: Any) -> dict[str, Any]:
    if body is str:
        return {"type": "string"}
    if body is bytes:
        return {"type": "string", "format": "binary"}
    if body is dict:
        return {"type": "object"}
    if get_origin(body) is list:
        return {"type": "array", "items": _body_schema(get_args(body)[0])}
    return schema_ref(body.__name__)


def _response(reply: Reply) -> dict[str, Any]:
    if reply.body is None:
        return {"description": reply.description}
    return {"description": reply.description, "content": {reply.media_type: {"schema": _body_schema(reply.body)}}}


def _error_response(status: int, note: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{error_response_name(status)}", **({"description": note} if note else {})}


def _request_body(body: type[pydantic.BaseModel] | Upload, deployment: Mapping[str, object]) -> dict[str, Any]:
    if isinstance(body, Upload):
        raw = {"schema": {"type": "string", "format": "binary"}}
        description = _filled(body.description, deployment)
        return {"required": True, "description": description, "content": dict.fromkeys(body.media_types, raw)}
    return {"required": True, "content": {JSON: {"schema": schema_ref(body.__name__)}}}


def _query_parameter(query: Query) -> dict[str, Any]:
    return {
        "name": query.name,
        "in": "query",
        "required": False,
        "allowEmptyValue": True,  # `?limit=` reads as absent
        "description": query.description,
        "schema": dict(query.schema),
    }
