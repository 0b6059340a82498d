"""Property-based fuzzing of both sockets with hypothesis.

Every client frame type, random JSON, wrong types, numbers beyond 64-bit integers and doubles (2**64,
1e400, NaN, Infinity as raw text), deep nesting, giant strings, binary frames and invalid UTF-8. For each
frame an oracle written from the contract (README "WebSocket protocol", not from handlers/protocol.py)
says what must happen:

- larger than MAX_FRAME_BYTES: close 1009;
- binary, not JSON, not an object, unknown `type`, a field of the wrong type: close 4003;
- `auth` with a string that is not the user's access token (no fuzzed string is one): close 4002;
- invalid UTF-8 in a text frame: the connection is failed (RFC 6455 8.1; no close code reaches us);
- otherwise the socket stays open, and the only answers are the frame's own (a pong, the message echo,
  a read receipt) or an `error` frame with one of the documented codes.

Never 1011, never a hang, the node keeps serving, and the test process (the server runs in it) does not
grow by more than RSS_BOUND over the module.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import socket
import time
from typing import Any

import pytest
import tornado.websocket
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from handlers.tornado_internals import LINGER_S
from tests.fuzz_node import FuzzNode, assert_rss_grew_less_than, node_fixture, rss_bytes
from tests.support import TestUser, make_conversation, ws_connect

MAX_FRAME = 16 * 1024
MAX_CONTENT = 500
RSS_BOUND = 96 * 1024 * 1024
ERROR_CODES = {"empty_message", "message_too_long", "message_not_found", "attachment_not_found"}
FIELDS = {
    "message": {"content": "str", "client_id": "str?", "attachment_id": "id?"},
    "typing": {"is_typing": "bool"},
    "read_receipt": {"message_id": "id"},
    "ping": {},
    "auth": {"token": "str"},
}
# Accepted on the notifications socket.
NOTIFICATION_FIELDS = {"ping": {}, "auth": {"token": "str"}}
MAX_TOKEN = 4096
MAX_ID = 2**53
ORJSON_DEPTH = 1024  # deeper documents are refused as invalid JSON

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, mongo_url: str) -> Any:
    # Rate and socket limits are lifted: hypothesis sends faster than any client may, and what is under
    # test here is how each frame is judged, not the limits (tests/test_ws_errors.py covers those).
    yield from node_fixture(
        tmp_path_factory.mktemp("fuzz-frames"),
        mongo_url,
        max_frame_bytes=MAX_FRAME,
        max_content_chars=MAX_CONTENT,
        message_rate=1e6,
        message_burst=10**6,
        frame_rate=1e6,
        frame_burst=10**6,
        max_sockets_per_user=10_000,
        max_conversation_sockets_per_user=10_000,
    )


@pytest.fixture(scope="module")
def chat(node: FuzzNode) -> dict[str, Any]:
    async def setup() -> dict[str, Any]:
        a: TestUser = await node.api.user("fuzz_a")
        b: TestUser = await node.api.user("fuzz_b")
        cid = await make_conversation(node.services, a.id, b.id)
        return {"a": a, "b": b, "cid": cid, "rss": rss_bytes()}

    return node.run(setup())


@pytest.fixture(autouse=True)
def memory_stays_bounded(chat: dict[str, Any]) -> Any:
    yield
    assert_rss_grew_less_than(RSS_BOUND, chat["rss"])


# -- the oracle -------------------------------------------------------------------------------------------


class Refused(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise Refused(name)  # NaN, Infinity, -Infinity: not JSON (RFC 8259)


def _parse_int(text: str) -> int | float:
    # Integers that 64 bits cannot hold are read as floats (so they are not ids), and those a double
    # cannot hold either make the document invalid.
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(value)


def _check(value: Any, depth: int = 1) -> None:
    if depth > ORJSON_DEPTH:
        raise Refused("too deep")
    if isinstance(value, float) and not math.isfinite(value):
        raise Refused("a number beyond a double")
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # a lone surrogate escape ("\ud800") has no UTF-8 form
        except UnicodeEncodeError:
            raise Refused("not UTF-8") from None
    if isinstance(value, dict):
        for key, item in value.items():
            _check(key, depth)
            _check(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check(item, depth + 1)


def _field_ok(kind: str, present: bool, value: Any) -> bool:
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if not present or value is None:
        return optional and (not present or value is None)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID


def expected(payload: str | bytes, binary: bool, accepted: dict[str, dict[str, str]]) -> str:
    """'1009', '4003', '4002', 'drop' or 'open', from the contract."""
    size = len(payload if isinstance(payload, bytes) else payload.encode("utf-8", "surrogatepass"))
    if size > MAX_FRAME:
        return "1009"
    if binary:
        return "4003"
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            return "drop"
    try:
        frame = json.loads(payload, parse_constant=_reject_constant, parse_int=_parse_int)
        _check(frame)
    except (Refused, ValueError, OverflowError, RecursionError):
        return "4003"
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str) or frame["type"] not in accepted:
        return "4003"
    for name, kind in accepted[frame["type"]].items():
        if not _field_ok(kind, name in frame, frame.get(name)):
            return "4003"
    if frame["type"] == "message" and isinstance(frame.get("client_id"), str) and len(frame["client_id"]) > 64:
        return "4003"
    if frame["type"] == "auth":
        return "4003" if len(frame["token"]) > MAX_TOKEN else "4002"
    return "open"


# -- the exchange -----------------------------------------------------------------------------------------


async def exchange(node: FuzzNode, path: str, payload: str | bytes, binary: bool, greeting: bool) -> tuple[Any, ...]:
    """Send one frame, then a ping; ('closed', code) or ('open', frames answered before the pong)."""
    ws = await ws_connect(node.api, path)
    try:
        if greeting:
            first = await ws.recv()
            assert first is not None and first["type"] == "status", first
        try:
            await ws.conn.write_message(payload, binary=binary)
            await ws.conn.write_message('{"type": "ping"}')
        except tornado.websocket.WebSocketClosedError:
            pass
        frames: list[dict[str, Any]] = []
        while True:
            raw = await asyncio.wait_for(ws.conn.read_message(), 10)
            if raw is None:
                return ("closed", ws.conn.close_code)
            frame = json.loads(raw)
            if frame == {"type": "pong"}:
                return ("open", frames)
            frames.append(frame)
    finally:
        ws.close()


def check(node: FuzzNode, chat: dict[str, Any], payload: str | bytes, *, binary: bool = False, notif: bool = False):
    accepted = NOTIFICATION_FIELDS if notif else FIELDS
    path = (
        f"/ws/notifications/?token={chat['a'].access}"
        if notif
        else f"/ws/conversations/{chat['cid']}/?token={chat['a'].access}"
    )
    want = expected(payload, binary, accepted)
    if currently_in_test_context():
        event(f"expected {want}")  # shown by --hypothesis-show-statistics: every outcome is exercised
    got = node.run(exchange(node, path, payload, binary, greeting=not notif))
    shown = payload[:200] if isinstance(payload, str | bytes) else payload
    if want in ("1009", "4003", "4002"):
        assert got == ("closed", int(want)), (shown, got)
    elif want == "drop":
        assert got[0] == "closed" and got[1] in (None, 1002, 1006, 1007), (shown, got)
    else:
        assert got[0] == "open", (shown, got)
        for frame in got[1]:
            assert frame.get("type") in ("message", "read_receipt", "error", "typing", "status"), (shown, frame)
            if frame["type"] == "error":
                assert frame["code"] in ERROR_CODES and isinstance(frame["message"], str), (shown, frame)


# -- strategies -------------------------------------------------------------------------------------------

huge_ints = st.sampled_from([2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**100, -1, 0, -(2**63), -(2**64)])
numbers = st.integers() | huge_ints | st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | numbers | st.text(max_size=40)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
field_values = {
    "content": st.text(max_size=80) | st.text(min_size=MAX_CONTENT - 5, max_size=MAX_CONTENT + 20) | json_values,
    "client_id": st.text(max_size=70) | st.none() | json_values,
    "attachment_id": st.integers(min_value=-3, max_value=10) | huge_ints | st.none() | json_values,
    "is_typing": st.booleans() | json_values,
    "message_id": st.integers(min_value=-3, max_value=10) | huge_ints | json_values,
    "token": st.text(max_size=80) | json_values,
}
frame_types = st.sampled_from(
    ["message", "typing", "read_receipt", "ping", "auth", "notification", "status", "Message", ""]
)


valid_values = {
    "content": st.text(max_size=80) | st.text(min_size=MAX_CONTENT - 5, max_size=MAX_CONTENT + 20),
    "client_id": st.none() | st.text(max_size=64),
    "attachment_id": st.none() | st.integers(min_value=1, max_value=10) | st.just(MAX_ID),
    "is_typing": st.booleans(),
    "message_id": st.integers(min_value=1, max_value=10) | st.just(MAX_ID),
    "token": st.text(max_size=80),
}


@st.composite
def frames(draw: Any) -> dict[str, Any]:
    """Mostly a known type with well-typed fields, each of which may be dropped or replaced by anything."""
    frame: dict[str, Any] = {}
    known = draw(st.integers(0, 3)) > 0
    kind = draw(st.sampled_from(sorted(FIELDS))) if known else draw(frame_types | json_values)
    if draw(st.integers(0, 9)) > 0:  # mostly with a type, sometimes without
        frame["type"] = kind
    for name in FIELDS.get(kind, {}) if isinstance(kind, str) else ():
        roll = draw(st.integers(0, 9))
        if roll < 7:
            frame[name] = draw(valid_values[name])
        elif roll < 9:
            frame[name] = draw(field_values[name])
    for name in draw(st.sets(st.sampled_from(sorted(field_values)), max_size=2)):
        frame.setdefault(name, draw(field_values[name]))
    if draw(st.integers(0, 4)) == 0:
        frame.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)))
    return frame


def dumps(value: Any) -> str:
    # The stdlib, not orjson: it writes integers of any size, which is the point of some examples.
    return json.dumps(value, ensure_ascii=False)


# -- the properties ---------------------------------------------------------------------------------------


@FUZZ
@given(frame=frames())
def test_conversation_socket_judges_every_object_frame_by_the_contract(node, chat, frame):
    check(node, chat, dumps(frame))


@FUZZ
@given(frame=frames())
def test_notification_socket_accepts_only_ping_and_auth(node, chat, frame):
    check(node, chat, dumps(frame), notif=True)


@FUZZ
@given(value=json_values)
def test_any_json_value_is_judged_by_the_contract(node, chat, value):
    check(node, chat, dumps(value))
    check(node, chat, dumps(value), notif=True)


RAW_TEXTS = [
    '{"type": "read_receipt", "message_id": NaN}',
    '{"type": "read_receipt", "message_id": Infinity}',
    '{"type": "read_receipt", "message_id": -Infinity}',
    '{"type": "read_receipt", "message_id": 1e400}',
    '{"type": "read_receipt", "message_id": 18446744073709551616}',
    '{"type": "read_receipt", "message_id": 1.0}',
    '{"type": "read_receipt", "message_id": 1e0}',
    '{"type": "message", "content": "x", "attachment_id": 18446744073709551616}',
    '{"type": "typing", "is_typing": true, "junk": 18446744073709551616}',
    '{"type": "ping"} {"type": "ping"}',
    '{"type": "ping", "type": "message"}',
    '{"type": "ping",}',
    '{"type": "ping"}\x00',
    "\ufeff" + '{"type": "ping"}',
    '{"type": "message", "content": "\\ud800"}',
    '{"type": "message", "content": "\\u0000"}',
    "",
    " ",
    "[" * 2000 + "]" * 2000,
    '{"type": "ping", "x": ' + "[" * 3000 + "]" * 3000 + "}",
    '{"type": "ping", "x": ' + "[" * 50 + "]" * 50 + "}",
    '{"type": "message", "content": "' + "x" * (MAX_FRAME - 30) + '"}',
    '{"type": "message", "content": "' + "x" * MAX_FRAME + '"}',
    '{"type": "message", "content": "' + "é" * (MAX_FRAME // 2) + '"}',
]


@pytest.mark.parametrize("raw", RAW_TEXTS, ids=range(len(RAW_TEXTS)))
def test_raw_texts_that_json_encoders_would_not_write(node, chat, raw):
    check(node, chat, raw)
    check(node, chat, raw, notif=True)


@FUZZ
@given(data=st.binary(max_size=256) | st.sampled_from([b'{"type": "ping"}', b"\xff\xfe", b"\x00" * (MAX_FRAME + 1)]))
def test_binary_frames_close_4003_or_1009(node, chat, data):
    check(node, chat, data, binary=True)
    check(node, chat, data, binary=True, notif=True)


@FUZZ
@given(
    prefix=st.text(max_size=20),
    bad=st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xc0\xaf"]),
)
def test_invalid_utf8_in_text_frames_fails_the_connection(node, chat, prefix, bad):
    payload = b'{"type": "message", "content": "' + prefix.encode() + bad + b'"}'
    check(node, chat, payload)
    check(node, chat, payload, notif=True)


@FUZZ
@given(content=st.text(min_size=1, max_size=MAX_CONTENT + 50))
def test_giant_and_unicode_contents_are_stored_or_refused_with_an_error_frame(node, chat, content):
    check(node, chat, dumps({"type": "message", "content": content}))


def close_code_allowed(code: int) -> bool:
    """RFC 6455 7.4: the codes a peer may put in a close frame (1012-1014 registered later with IANA)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


async def close_with(node: FuzzNode, path: str, payload: bytes) -> int | None:
    """Send a raw close frame (any code, any reason bytes) and return the code of the server's answer."""
    ws = await ws_connect(node.api, path)
    assert isinstance(ws.conn.protocol, tornado.websocket.WebSocketProtocol13)
    ws.conn.protocol._write_frame(True, 0x8, payload)  # the public close() refuses malformed payloads
    while await asyncio.wait_for(ws.conn.read_message(), 10) is not None:
        pass
    return ws.conn.close_code


@FUZZ
@given(
    code=st.integers(0, 65535) | st.sampled_from([999, 1004, 1005, 1006, 1015, 1016, 2999, 3000, 4999, 5000]),
    reason=st.binary(max_size=20) | st.text(max_size=20).map(str.encode),
)
def test_close_frames_are_echoed_when_valid_and_answered_1002_otherwise(node, chat, code, reason):
    payload = code.to_bytes(2, "big") + reason
    try:
        reason.decode("utf-8")
        valid = close_code_allowed(code)
    except UnicodeDecodeError:
        valid = False
    path = f"/ws/notifications/?token={chat['a'].access}"
    assert node.run(close_with(node, path, payload)) == (code if valid else 1002), (code, reason)


def test_a_one_byte_close_payload_is_a_protocol_error_and_an_empty_one_is_fine(node, chat):
    path = f"/ws/notifications/?token={chat['a'].access}"
    assert node.run(close_with(node, path, b"\x03")) == 1002
    assert node.run(close_with(node, path, b"")) is None  # echoed empty: no code either way


def test_1009_reaches_a_client_that_keeps_sending_its_oversized_message(node, chat):
    """After refusing a message with 1009 the server keeps reading (and drops) what the client still
    sends, then closes with a FIN. Closing at once would make the kernel answer the client's next bytes
    with a reset, which can destroy the 1009 before the client reads it."""
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as raw:
        key = base64.b64encode(os.urandom(16)).decode()
        raw.sendall(
            f"GET /ws/notifications/?token={chat['a'].access} HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += raw.recv(4096)
        assert response.startswith(b"HTTP/1.1 101"), response
        # A masked text frame announcing 1 MiB (mask of zeros: the payload goes as it is), and 1 KiB of it.
        raw.sendall(bytes([0x81, 0x80 | 127]) + (1024 * 1024).to_bytes(8, "big") + b"\0" * 4 + b"x" * 1024)
        header = raw.recv(2)
        assert header[0] == 0x88, header
        close = raw.recv(header[1] & 0x7F)
        assert int.from_bytes(close[:2], "big") == 1009, close
        # The client, busy uploading, goes on sending: no reset, then an orderly end of stream.
        for _ in range(50):
            raw.sendall(b"x" * 4096)
            time.sleep(0.002)
        raw.settimeout(LINGER_S + 3)
        assert raw.recv(4096) == b""


def test_the_node_still_serves_after_the_fuzzing(node, chat):
    async def roundtrip() -> None:
        health = await node.api.get("/livez")
        assert health.status == 200
        ws = await ws_connect(node.api, f"/ws/conversations/{chat['cid']}/?token={chat['b'].access}")
        assert (await ws.recv())["type"] == "status"
        await ws.send({"type": "message", "content": "still here"})
        assert (await ws.recv_type("message"))["message"]["content"] == "still here"
        ws.close()

    node.run(roundtrip())
    assert node.services.metrics.closes.child("1011").value == 0
