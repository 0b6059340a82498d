"""Every limit a client can run into, at its boundary: the largest accepted value passes, one more is
refused with the documented answer, and the server carries on.

Covered elsewhere and not repeated here: frame size 1009, per-user socket caps and socket rate limits
with their 1008 (test_ws_errors), upload size and type (test_profiles, test_conversations_api), the
outbound bound for slow readers (test_ws_slow, test_floods).
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import tornado.testing

from handlers.http_server import make_http_server
from services.accounts.throttle import LoginThrottle, address_key
from services.core.limits import RateLimiter
from services.core.system import socket_budget
from tests.processes import ServerProcess, node_env
from tests.support import PASSWORD, ApiClient, PortClient, Response, WsClient, assert_error, ws_connect
from tests.ws_helpers import join, messages, notifications, pair, send_rest, wait_for

BASE_OVERRIDES: dict[str, Any] = {"max_body_bytes": 1024, "max_upload_bytes": 4096, "max_content_chars": 50}


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {**BASE_OVERRIDES, **getattr(request, "param", {})}


def with_settings(**overrides: Any) -> Any:
    return pytest.mark.parametrize("settings_overrides", [overrides], indirect=True)


# -- request bodies -----------------------------------------------------------------------------------


def body_of_size(size: int) -> bytes:
    """A JSON object of exactly `size` bytes."""
    empty = len(orjson.dumps({"pad": ""}))
    body = orjson.dumps({"pad": "x" * (size - empty)})
    assert len(body) == size
    return body


async def test_every_json_endpoint_answers_413_over_max_body_bytes_and_reads_the_limit_itself(api, services):
    p = await pair(api, services)
    limit = services.settings.max_body_bytes
    endpoints = [
        ("POST", "/api/register/"),
        ("POST", "/api/token/"),
        ("POST", "/api/token/refresh/"),
        ("PATCH", "/api/users/me/"),
        ("POST", "/api/likes/"),
        ("POST", "/api/passes/"),
        ("POST", "/api/blocks/"),
        ("POST", f"/api/conversations/{p.cid}/messages/"),
        ("POST", f"/api/conversations/{p.cid}/read/"),
    ]
    for method, path in endpoints:
        over = await api.request(method, path, body=body_of_size(limit + 1), token=p.a.access)
        assert_error(over, 413, "body_too_large")
        at_limit = await api.request(method, path, body=body_of_size(limit), token=p.a.access)
        assert at_limit.status == 400 and at_limit.error_code == "validation_error", (path, at_limit.body)


async def raw_exchange(port: int, head: str, body: bytes = b"") -> bytes:
    """One request written as raw bytes (a body shorter than declared, if so), and the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode() + body)
    try:
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = next(
            int(line.split(b":")[1]) for line in answer.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        return answer + await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()


async def test_a_body_over_the_transport_limit_gets_the_413_envelope_not_a_bare_400(services, app):
    """Past max(MAX_UPLOAD_BYTES, MAX_BODY_BYTES) Tornado itself refuses the request before any
    handler runs; the node's HTTP server answers that with the envelope too, and before the body is
    sent when the client asks `Expect: 100-continue`."""
    sock, port = tornado.testing.bind_unused_port()
    http = make_http_server(app, services.settings, file_limit=1024)
    http.add_sockets([sock])
    limit = services.settings.max_upload_bytes
    try:
        for expect, sent in (("", b"x" * 8192), ("Expect: 100-continue\r\n", b"")):
            head = (
                "PUT /api/users/me/picture/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
                f"Content-Length: {limit * 100}\r\n{expect}\r\n"
            )
            raw = await raw_exchange(port, head, sent)
            head_bytes, _, body = raw.partition(b"\r\n\r\n")
            status_line, _, headers = head_bytes.partition(b"\r\n")
            assert status_line == b"HTTP/1.1 413 Payload Too Large", raw[:200]
            assert b"content-type: application/json" in headers.lower()
            assert orjson.loads(body)["error"]["code"] == "body_too_large"
        # Requests within the limit still reach their handlers.
        ok = await raw_exchange(port, "GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
    finally:
        http.stop()
        await http.close_all_connections()


# -- content length and page size ---------------------------------------------------------------------


async def test_message_length_counts_characters_not_bytes_on_rest_and_sockets(api, services):
    p = await pair(api, services)
    limit = services.settings.max_content_chars
    longest = "\U0001f600" * limit  # four UTF-8 bytes each
    assert (await send_rest(api, p.cid, p.a, longest)).status == 201
    assert_error(await send_rest(api, p.cid, p.a, longest + "x"), 400, "message_too_long")
    ws = await join(api, p.cid, p.a)
    await ws.send({"type": "message", "content": longest + "\U0001f600"})
    assert (await ws.recv_type("error"))["code"] == "message_too_long"
    await ws.send({"type": "message", "content": longest})
    assert (await messages(ws, 1))[0]["content"] == longest


async def test_every_paged_endpoint_takes_its_maximum_page_and_refuses_one_more(api, services):
    p = await pair(api, services)
    pages = {
        "/api/conversations/": 100,
        f"/api/conversations/{p.cid}/messages/": 100,
        "/api/discover/": 50,
        "/api/likes/received/": 50,
        "/api/matches/": 500,
    }
    for path, maximum in pages.items():
        assert (await api.get(f"{path}?limit={maximum}", token=p.a.access)).status == 200, path
        refused = assert_error(await api.get(f"{path}?limit={maximum + 1}", token=p.a.access), 400, "invalid")
        assert "limit" in refused["fields"], path


# -- rate limits: the advertised wait is the real one ---------------------------------------------------


@with_settings(message_rate=1.0, message_burst=2)
async def test_retry_after_and_retry_after_ms_are_waits_that_work(api, services):
    p = await pair(api, services)
    for i in range(2):
        assert (await send_rest(api, p.cid, p.a, f"burst {i}")).status == 201
    limited = await send_rest(api, p.cid, p.a, "too soon")
    assert_error(limited, 429, "rate_limited")
    retry_after = int(limited.headers["Retry-After"])
    assert retry_after == 1  # the bucket refills one message per second
    await asyncio.sleep(retry_after)
    assert (await send_rest(api, p.cid, p.a, "after waiting")).status == 201

    ws = await join(api, p.cid, p.a)
    await ws.send({"type": "message", "content": "too soon again"})
    error = await ws.recv_type("error")
    assert error["code"] == "rate_limited" and 0 < error["retry_after_ms"] <= 1000
    await asyncio.sleep(error["retry_after_ms"] / 1000)
    await ws.send({"type": "message", "content": "on time"})
    assert (await messages(ws, 1))[0]["content"] == "on time"


def test_the_message_limiter_forgets_users_who_went_quiet_and_keeps_the_budgets_being_spent():
    clock = [1000.0]
    limiter = RateLimiter(rate=1.0, burst=2, prune_interval_s=60, clock=lambda: clock[0])
    assert limiter.take("quiet") == 0.0
    clock[0] += 59.5
    assert limiter.take("busy") == limiter.take("busy") == 0.0
    assert limiter.take("busy") == 1.0  # its burst is spent
    clock[0] += 0.5  # a minute since the limiter was made: the next take prunes
    assert limiter.take("newcomer") == 0.0
    assert "quiet" not in limiter  # refilled long ago: a new bucket would be the same
    assert "busy" in limiter and limiter.take("busy") == 0.5  # half a token back, still counting
    assert limiter.take("quiet") == limiter.take("quiet") == 0.0  # a full burst, as before it was dropped


# -- sockets per node ---------------------------------------------------------------------------------


@with_settings(max_sockets_per_node=3)
async def test_sockets_past_the_node_limit_close_1013_server_full_and_room_comes_back(api, services):
    p = await pair(api, services)
    first = await join(api, p.cid, p.a)
    await notifications(api, p.a)
    await join(api, p.cid, p.b)
    for path in (f"/ws/notifications/?token={p.b.access}", f"/ws/conversations/{p.cid}/?token={p.b.access}"):
        refused = await ws_connect(api, path)
        assert await refused.closed() == (1013, "server full")
    first.close()
    await wait_for(lambda: len(services.connections.peers) < 3)
    again = await notifications(api, p.b)
    await again.send({"type": "ping"})
    assert await again.recv_type("pong")


# -- sign-in throttling -------------------------------------------------------------------------------


GUESS = "not the right one"


async def sign_in(api: ApiClient, username: str, password: str = GUESS) -> Response:
    return await api.post("/api/token/", {"username": username, "password": password})


def same_answer(a: Response, b: Response) -> None:
    """Two answers a client cannot tell apart (Retry-After may differ by the second it was read in)."""
    assert (a.status, a.body) == (b.status, b.body)
    assert abs(int(a.headers.get("Retry-After", 0)) - int(b.headers.get("Retry-After", 0))) <= 1


@with_settings(login_failures_per_account=3, login_failures_per_ip=100)
async def test_failed_sign_ins_per_account_end_in_429_and_unknown_names_answer_the_same(api, services):
    real = await api.user("victim")
    unknown = "nobody_" + uuid.uuid4().hex[:8]
    for _ in range(3):
        same_answer(await sign_in(api, real.username), await sign_in(api, unknown))
        assert (await sign_in(api, real.username + "x")).status == 401  # the budget is per name
    throttled, throttled_unknown = await sign_in(api, real.username), await sign_in(api, unknown)
    error = assert_error(throttled, 429, "too_many_attempts")
    assert "exist" not in error["message"] and real.username not in error["message"]
    same_answer(throttled, throttled_unknown)
    window = services.settings.login_window_s
    assert window - 5 <= int(throttled.headers["Retry-After"]) <= math.ceil(window)
    # Even the right password waits: a throttled guess is never checked. Other names are unaffected.
    assert_error(await sign_in(api, real.username.upper(), PASSWORD), 429, "too_many_attempts")
    other = await api.user("bystander")
    assert (await sign_in(api, other.username, PASSWORD)).status == 200


@with_settings(login_failures_per_account=3, login_failures_per_ip=100)
async def test_a_successful_sign_in_clears_the_account_failures(api, services):
    user = await api.user("forgetful")
    for _ in range(2):
        assert (await sign_in(api, user.username)).status == 401
    assert (await sign_in(api, user.username, PASSWORD)).status == 200
    for _ in range(3):
        assert (await sign_in(api, user.username)).status == 401
    assert_error(await sign_in(api, user.username), 429, "too_many_attempts")


@with_settings(login_failures_per_account=3, login_failures_per_ip=100)
async def test_concurrent_guesses_cannot_outrun_the_count(api, services):
    user = await api.user("target")
    answers = await asyncio.gather(*(sign_in(api, user.username) for _ in range(12)))
    assert sorted(r.status for r in answers) == [401] * 3 + [429] * 9


@with_settings(login_failures_per_account=100, login_failures_per_ip=5)
async def test_failures_from_one_address_across_names_end_in_429_sign_up_probes_included(api, services):
    user = await api.user("resident")
    for i in range(3):
        assert (await sign_in(api, f"spray_{i}_{uuid.uuid4().hex[:6]}")).status == 401
    # Probing names through sign-up spends the same budget (409 tells that an account exists).
    for _ in range(2):
        taken = await api.post("/api/register/", {"username": user.username, "password": PASSWORD})
        assert_error(taken, 409, "username_taken")
    assert_error(await sign_in(api, user.username, PASSWORD), 429, "too_many_attempts")
    sign_up = await api.post("/api/register/", {"username": "fresh_" + uuid.uuid4().hex[:6], "password": PASSWORD})
    assert_error(sign_up, 429, "too_many_attempts")


@with_settings(login_failures_per_account=2, login_failures_per_ip=100, login_window_s=1.0)
async def test_the_window_slides(api, services):
    user = await api.user("patient")
    for _ in range(2):
        assert (await sign_in(api, user.username)).status == 401
    throttled = assert_error(await sign_in(api, user.username, PASSWORD), 429, "too_many_attempts")
    assert throttled
    await asyncio.sleep(1.1)
    assert (await sign_in(api, user.username, PASSWORD)).status == 200


async def test_failures_are_shared_by_nodes_through_redis(cluster_factory):
    one, two = await cluster_factory(2, login_failures_per_account=3, login_failures_per_ip=100)
    user = await one.api.user("roamer")
    assert (await sign_in(one.api, user.username)).status == 401
    assert (await sign_in(two.api, user.username)).status == 401
    assert (await sign_in(one.api, user.username)).status == 401
    for node in (two, one):
        assert_error(await sign_in(node.api, user.username, PASSWORD), 429, "too_many_attempts")


async def test_without_redis_the_node_counts_alone_and_says_so_once(caplog):
    import redis.asyncio

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    client = redis.asyncio.from_url(f"redis://127.0.0.1:{dead_port}/0", socket_connect_timeout=0.5)
    throttle = LoginThrottle(2, 100, 60.0, redis=client)
    try:
        answers = [(await throttle.attempt("someone", "192.0.2.7"))[0] for _ in range(3)]
    finally:
        await client.aclose()
    assert answers[:2] == [0.0, 0.0] and 59 <= answers[2] <= 60
    assert sum("falls back to this node's memory" in r.getMessage() for r in caplog.records) == 1


def test_ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4():
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.1") == address_key("192.0.2.1") == "192.0.2.1"
    assert address_key(None) == address_key("not an address") == "unknown"


# -- running out of file descriptors ------------------------------------------------------------------

NOFILE = 320


def low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def pong(ws: WsClient) -> bool:
    await ws.send({"type": "ping"})
    return (await ws.recv_type("pong", timeout=10)) == {"type": "pong"}


def connect_raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setblocking(False)
    return s


def read_available(s: socket.socket) -> bytes:
    try:
        return s.recv(65536)
    except BlockingIOError:
        return b""
    except OSError:
        return b"<reset>"


@pytest.mark.slow
async def test_out_of_descriptors_refuses_clearly_keeps_serving_and_does_not_spin(tmp_path, mongo_url):
    env = node_env(mongo_url, MAX_SOCKETS_PER_USER="1000")
    node = ServerProcess(tmp_path / "node", env, preexec_fn=low_file_limit).start()
    raw: list[socket.socket] = []
    try:
        assert node.process is not None
        api = ApiClient(PortClient(node.port))
        user = await api.user("crowd")
        budget = socket_budget(50_000, NOFILE)
        assert f"MAX_SOCKETS_PER_NODE lowered from 50000 to {budget}" in node.log()

        # Up to the budget every socket is served; the next one is refused with a close code, not a crash.
        path = f"/ws/notifications/?token={user.access}"
        held = [await ws_connect(api, path) for _ in range(budget)]
        assert all(await asyncio.gather(*(pong(ws) for ws in held)))
        assert await (await ws_connect(api, path)).closed() == (1013, "server full")

        # Idle TCP connections (no request yet) use up every descriptor left; from then on each new
        # connection is answered 503 and closed at once, instead of hanging in the backlog.
        for _ in range(NOFILE):
            raw.append(connect_raw(node.port))
        await asyncio.sleep(0.5)
        answers = [read_available(s) for s in raw]
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        assert refused and answers.count(b"") >= 10, [a[:20] for a in answers[-5:]]
        head, _, body = refused[0].partition(b"\r\n\r\n")
        assert b"Retry-After: 1" in head and orjson.loads(body)["error"]["code"] == "unavailable"

        # While the process is out of descriptors, attempts keep coming: the accept loop must not spin.
        before, started = cpu_seconds(node.process.pid), time.monotonic()
        for _ in range(20):
            late = connect_raw(node.port)
            await asyncio.sleep(0.1)
            assert read_available(late).startswith(b"HTTP/1.1 503")
            late.close()
        used = (cpu_seconds(node.process.pid) - before) / (time.monotonic() - started)
        assert used < 0.3, f"the server used {used:.0%} of a core while out of descriptors"

        # Existing sockets are served throughout; a new REST client gets the 503 envelope, not silence.
        assert all(await asyncio.gather(*(pong(ws) for ws in held[:20])))
        live = await api.get("/livez")
        assert (live.status, live.error_code) == (503, "unavailable")

        # Descriptors come back: /livez answers, and a socket closed makes room for a new one.
        for s in raw:
            s.close()
        raw.clear()
        await wait_for_livez(api)
        held.pop().close()
        await asyncio.sleep(0.3)
        assert await pong(await ws_connect(api, path))
        assert node.process.poll() is None
        log = node.log()
        assert "out of file descriptors" in log and "Traceback" not in log, log[-3000:]
    finally:
        for s in raw:
            s.close()
        node.stop()


async def wait_for_livez(api: ApiClient, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (await api.get("/livez")).status != 200:
        assert time.monotonic() < deadline, "/livez did not come back"
        await asyncio.sleep(0.1)
