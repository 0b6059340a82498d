"""The WebSocket frame registry: each client frame type tied to its pydantic model and its handler.

A frame type is declared once, in handlers/frames.py, by decorating its handler:

    @REGISTRY.frame(TypingFrame, "conversation")
    def typing(socket: ConversationSocket, frame: TypingFrame) -> Awaitable[None] | None: ...

The model validates the frame and documents it (the API document's WebSocket section is generated from
this registry); the endpoints say which sockets accept it. A handler returns None when it finished
without waiting, or an awaitable for work that has to wait (a store write): the socket awaits only then.

Rates are checked when a frame arrives, before it waits behind anything: the socket's frame budget (unless
`free` says the frame changes nothing), then the type's own `admit` check (a message spends the sender's
message rate). Frames of one socket are handled in arrival order; while one waits for the store, those
that arrive meanwhile queue behind it (handlers/sockets.py), except the types registered `ordered=False`
(ping, auth, read receipts), which are handled at once.

A frame that is not JSON, not an object, of a type the endpoint does not accept or with a field of the
wrong type is a protocol violation, `BadFrame` (close 4003). A well-formed frame the server refuses
(empty text, rate limited, a message id of another conversation) raises a domain error, which the socket
answers with an `error` frame (handlers/errors.py), and the socket stays open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import pydantic

from handlers.errors import BadFrame

ENDPOINTS = ("conversation", "notifications")
MAX_REASON_CHARS = 100


class ClientFrame(pydantic.BaseModel):
    """A frame a client sends. Fields a type does not know are ignored, as the seed's clients expect."""

    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)


FrameHandler = Callable[[Any, Any], Awaitable[None] | None]
# Whether a frame would change nothing on this socket (a read receipt at or below what is already read):
# such a frame spends no frame budget, so that a client that repeats itself harmlessly is never cut off.
FreeCheck = Callable[[Any, Any], bool]
# A frame type's own checks on arrival (a message spends the sender's message rate): raises a domain error
# (RateLimited) to refuse the frame before it waits behind anything.
Admission = Callable[[Any, Any], None]
Handler = TypeVar("Handler", bound=FrameHandler)


@dataclass(frozen=True)
class FrameSpec:
    kind: str
    model: type[ClientFrame]
    endpoints: tuple[str, ...]
    handler: FrameHandler
    free: FreeCheck | None = None
    admit: Admission | None = None
    ordered: bool = True  # handled after the socket's earlier frames (False: at once)

    @property
    def summary(self) -> str:
        return (self.handler.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


class FrameRegistry:
    def __init__(self) -> None:
        self._by_endpoint: dict[str, dict[str, FrameSpec]] = {endpoint: {} for endpoint in ENDPOINTS}

    def frame(
        self,
        model: type[ClientFrame],
        *endpoints: str,
        free: FreeCheck | None = None,
        admit: Admission | None = None,
        ordered: bool = True,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of `model`'s frame type on `endpoints`; `free`,
        `admit` and `ordered` as the module docstring says."""
        kind = frame_type_of(model)

        def register(handler: Handler) -> Handler:
            spec = FrameSpec(kind, model, endpoints, handler, free, admit, ordered)
            for endpoint in endpoints:
                accepted = self._by_endpoint[endpoint]
                if kind in accepted:
                    raise ValueError(f"frame type {kind!r} registered twice on {endpoint}")
                accepted[kind] = spec
            return handler

        return register

    def accepted(self, endpoint: str) -> Mapping[str, FrameSpec]:
        return self._by_endpoint[endpoint]

    def specs(self) -> list[FrameSpec]:
        """Every frame type once, in registration order."""
        seen: dict[str, FrameSpec] = {}
        for accepted in self._by_endpoint.values():
            for kind, spec in accepted.items():
                seen.setdefault(kind, spec)
        return list(seen.values())

    def parse(self, raw: str | bytes, endpoint: str) -> tuple[FrameSpec, ClientFrame]:
        """The frame's spec and validated model, or BadFrame."""
        if isinstance(raw, bytes):
            raise BadFrame("binary frames are not accepted")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadFrame("frame is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadFrame("frame must be a JSON object")
        kind = data.get("type")
        spec = self._by_endpoint[endpoint].get(kind) if isinstance(kind, str) else None
        if spec is None:
            raise BadFrame("unknown frame type")
        try:
            return spec, spec.model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise BadFrame(first_problem(exc)) from None


def frame_type_of(model: type[pydantic.BaseModel]) -> str:
    """The `type` a frame model's frames carry (client or server frames): its `type` field is a one-value
    Literal."""
    annotation = model.model_fields["type"].annotation
    (kind,) = getattr(annotation, "__args__", (None,))
    if not isinstance(kind, str):
        raise TypeError(f"{model.__name__}.type must be a Literal of one string")
    return kind


def first_problem(exc: pydantic.ValidationError) -> str:
    """One line for the close reason (at most 123 bytes on the wire): the first field that is wrong."""
    error = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in error["loc"])
    text = "is required" if error["type"] == "missing" else error["msg"].lower()
    return f"`{field}` {text}"[:MAX_REASON_CHARS]


REGISTRY = FrameRegistry()
