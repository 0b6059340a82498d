"""A real nginx in front of two real `server.py` nodes that share MongoDB and Redis.

The nginx configuration written here only adds what a test machine needs (a free loopback port, plain
HTTP, paths inside a temporary directory, the two nodes' ports) around deploy/nginx-chat-http.conf and
deploy/nginx-chat-locations.conf, the files the production deploy/nginx.conf includes: the headers,
timeouts, body limit and log format under test are the production ones.

Production balances with least_conn; here `?node=N` sends a request to node N (a test-only map onto
single-node upstream groups), so that the two participants of a conversation are put on two different
nodes and every frame between them has to cross the Redis bus, through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import tornado.httpclient
import tornado.websocket
from pymongo import MongoClient
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from services.core.config import Settings
from services.storage.embedded import free_port, wait_for_port
from tests.processes import RedisProcess, ServerProcess, node_env, unavailable
from tests.support import PASSWORD, ApiClient, PortClient, ws_connect
from tests.ws_helpers import PNG

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SPOOFED_IP = "203.0.113.7"  # TEST-NET-3: documentation only, never a real peer
MIB = 1024 * 1024


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    unavailable("nginx is not installed (make test installs the Debian package)")


def nginx_conf(workdir: Path, port: int, node_ports: list[int], dead_port: int, spare_port: int) -> str:
    # A root master would run its workers as `nobody`, who cannot enter a private temporary directory.
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    balanced = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in node_ports)
    singles = "\n".join(
        f"    upstream chat_node_{i} {{ server 127.0.0.1:{p}; keepalive 4; }}" for i, p in enumerate(node_ports, 1)
    )
    steering = "\n".join(f"        {i} chat_node_{i};" for i in range(1, len(node_ports) + 1))
    # `?node=down`: a node that is not running, for what clients get when no node answers.
    singles += f"\n    upstream chat_node_down {{ server 127.0.0.1:{dead_port}; }}"
    steering += "\n        down chat_node_down;"
    # `?node=spare`: a port that tests start a node of their own on (one they kill, or one with other
    # settings), outside the balanced group.
    singles += f"\n    upstream chat_node_spare {{ server 127.0.0.1:{spare_port}; }}"
    steering += "\n        spare chat_node_spare;"
    return f"""
daemon off;
master_process on;
worker_processes 1;
{user}
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;

events {{
    worker_connections 512;
}}

http {{
    client_body_temp_path {workdir}/temp/client_body;
    proxy_temp_path {workdir}/temp/proxy;
    fastcgi_temp_path {workdir}/temp/fastcgi;
    uwsgi_temp_path {workdir}/temp/uwsgi;
    scgi_temp_path {workdir}/temp/scgi;

    include {DEPLOY}/nginx-chat-http.conf;
    access_log {workdir}/access.log chat_redacted;

    upstream chat_nodes {{
        zone chat_nodes 64k;
        least_conn;
{balanced}
        keepalive 8;
    }}
{singles}

    map $arg_node $chat_upstream {{
        default chat_nodes;
{steering}
    }}

    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        include {DEPLOY}/nginx-chat-locations.conf;
    }}
}}
"""


@dataclass
class ProxiedCluster:
    workdir: Path
    port: int
    nodes: list[ServerProcess]
    # The nodes' environment, and the port `?node=spare` proxies to (no node runs there until a test
    # starts one).
    env: dict[str, str]
    spare_port: int

    def spare_node(self, **settings: str) -> ServerProcess:
        """A node on the spare port, with the cluster's settings plus `settings`; the caller starts it."""
        env = {**self.env, "NODE_ID": "spare", **settings}
        return ServerProcess(self.workdir / "spare", env, port=self.spare_port)

    def api(self) -> ApiClient:
        return ApiClient(PortClient(self.port))

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, mongo_url: str, redis_server: RedisProcess
) -> Iterator[ProxiedCluster]:
    binary = nginx_binary()
    workdir = tmp_path_factory.mktemp("nginx")
    port = free_port()
    env = node_env(
        mongo_url,
        REDIS_URL=redis_server.url,
        REDIS_PREFIX="t" + uuid.uuid4().hex[:8] + ":",
        TRUSTED_PROXIES="127.0.0.1",
        # Media URLs name the proxy, as in production; one data directory for both nodes, as on one
        # machine in production, so a file uploaded through one node is served by the other.
        PUBLIC_URL=f"http://127.0.0.1:{port}",
        # The client address is a field of the JSON access log line.
        LOG_FORMAT="json",
        # Low, so that a test can lock an address out of signing in with a few failures.
        LOGIN_FAILURES_PER_IP="3",
    )
    database = env["MONGODB_DATABASE"]
    data_dir = workdir / "data"
    nodes = [ServerProcess(data_dir, {**env, "NODE_ID": f"node{i}"}) for i in (1, 2)]
    nginx: subprocess.Popen[bytes] | None = None
    try:
        # One after the other: the first node creates the fresh database's indexes.
        for node in nodes:
            node.start()
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (workdir / "temp" / name).mkdir(parents=True, exist_ok=True)
        conf = workdir / "nginx.conf"
        spare_port = free_port()
        conf.write_text(nginx_conf(workdir, port, [n.port for n in nodes], free_port(), spare_port))
        with open(workdir / "nginx.out", "wb") as out:
            nginx = subprocess.Popen(
                [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            wait_for_port(port, timeout_s=10, process=nginx)
        except RuntimeError as exc:
            output = (workdir / "nginx.out").read_text(errors="replace")
            errors = (workdir / "error.log").read_text(errors="replace") if (workdir / "error.log").exists() else ""
            raise RuntimeError(f"nginx did not start: {exc}\n{output}\n{errors}") from None
        yield ProxiedCluster(workdir, port, nodes, env, spare_port)
    finally:
        # nginx first: nodes stopping under a live proxy would only add upstream errors to its log.
        if nginx is not None and nginx.poll() is None:
            nginx.terminate()
            nginx.wait(10)
        for node in nodes:
            node.stop()
        client: MongoClient[dict[str, object]] = MongoClient(mongo_url)
        client.drop_database(database)
        client.close()


def loopback_source(address: str) -> str:
    """`address` if this machine can send from it (Linux routes all of 127/8 to lo), else skip."""
    try:
        with socket.socket() as probe:
            probe.bind((address, 0))
    except OSError:
        pytest.skip(f"cannot send from {address} on this machine")
    return address


async def fetch_from(source: str, url: str, headers: dict[str, str]) -> tornado.httpclient.HTTPResponse:
    """A GET sent from a chosen source address: a client other than the proxy's 127.0.0.1."""
    client = SimpleAsyncHTTPClient(force_instance=True)
    try:
        return await client.fetch(url, headers=headers, network_interface=source, raise_error=False)
    finally:
        client.close()


async def wait_for_lines(path: Path, needle: str, count: int = 1, timeout_s: float = 5.0) -> list[str]:
    """The first `count` lines of a log file that contain `needle` (written asynchronously by others)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        lines = [line for line in text.splitlines() if needle in line]
        if len(lines) >= count or loop.time() > deadline:
            assert len(lines) >= count, f"{count} line(s) with {needle!r} expected in {path.name}:\n{text[-3000:]}"
            return lines[:count]
        await asyncio.sleep(0.05)


async def post_from(source: str, url: str, body: Mapping[str, object]) -> tornado.httpclient.HTTPResponse:
    """A JSON POST sent from a chosen source address."""
    client = SimpleAsyncHTTPClient(force_instance=True)
    try:
        return await client.fetch(
            url,
            method="POST",
            body=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
            network_interface=source,
            raise_error=False,
        )
    finally:
        client.close()


def count_lines(path: Path, needle: str) -> int:
    text = path.read_text(errors="replace") if path.exists() else ""
    return sum(needle in line for line in text.splitlines())


# -- the files themselves --------------------------------------------------------------------------------


def location_block(text: str, prefix: str) -> str:
    start = text.index(f"location {prefix} {{")
    return text[start : text.index("\n}", start)]


def seconds(block: str, directive: str) -> float:
    match = re.search(rf"^\s*{directive}\s+(\d+)s;", block, re.MULTILINE)
    assert match, f"{directive} missing"
    return float(match.group(1))


def test_socket_timeouts_outlast_the_server_heartbeat() -> None:
    # The server closes a socket silent for 2 x PING_INTERVAL + 1 s with 1001; nginx must not cut
    # sockets earlier (with a bare TCP close) than that.
    block = location_block((DEPLOY / "nginx-chat-locations.conf").read_text(), "/ws/")
    limit = 2 * Settings().ping_interval_s + 1
    assert seconds(block, "proxy_read_timeout") > limit
    assert seconds(block, "proxy_send_timeout") > limit
    assert re.search(r"^\s*proxy_buffering off;", block, re.MULTILINE)


def test_body_limit_equals_the_upload_limit() -> None:
    text = (DEPLOY / "nginx-chat-locations.conf").read_text()
    match = re.search(r"^client_max_body_size (\d+)m;", text, re.MULTILINE)
    assert match and int(match.group(1)) * MIB == Settings().max_upload_bytes


def test_env_sample_names_every_setting() -> None:
    text = (DEPLOY / "chat.env.sample").read_text()
    named = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))
    missing = [env for env, _default, _help in Settings.describe() if env not in named]
    assert not missing, f"deploy/chat.env.sample lacks {missing}"


def moved_config(main: str, destination: Path, paths: dict[str, str]) -> Path:
    """deploy/`main` and every deploy/nginx-chat-*.conf, copied side by side into `destination`/conf with
    each machine path of `paths` replaced by its value: the very same files, only their paths moved."""
    conf_dir = destination / "conf"
    conf_dir.mkdir()
    for source in [DEPLOY / main, *sorted(DEPLOY.glob("nginx-chat-*.conf"))]:
        text = source.read_text()
        for machine_path, moved in paths.items():
            text = text.replace(machine_path, moved)
        (conf_dir / source.name).write_text(text)
    return conf_dir / main


def nginx_test(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` of a configuration; its warnings, less the one about `user` that any non-root run gets."""
    result = subprocess.run(
        [nginx_binary(), "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    # Without root, nginx says the `user` directive is ignored; any other warning is the file's fault.
    warnings = [line for line in result.stderr.splitlines() if "[warn]" in line and '"user" directive' not in line]
    assert not warnings, result.stderr
    return result


def test_production_config_passes_nginx_t(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (needed for a throwaway certificate)")
    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-days", "1", "-subj", "/CN=chat.example.com"),
            *("-keyout", str(certs / "privkey.pem"), "-out", str(certs / "fullchain.pem")),
        ],
        check=True,
        capture_output=True,
    )
    conf = moved_config(
        "nginx.conf",
        tmp_path,
        {"/etc/ssl/chat/": f"{certs}/", "/var/log/nginx/": f"{tmp_path}/", "/run/nginx.pid": f"{tmp_path}/nginx.pid"},
    )
    moved = sum(path.read_text().count(str(tmp_path)) for path in conf.parent.iterdir())
    assert moved >= 5, "a machine path was not found where the test expects it"
    nginx_test(conf, tmp_path)


# -- through the proxy -----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_rest_media_and_origin_through_nginx(cluster: ProxiedCluster) -> None:
    api = cluster.api()
    # Registration and sign-in through the balancer: whichever nodes answer, they share the accounts.
    carol = await api.user("carol")
    me = await api.get("/api/users/me/", token=carol.access)
    assert me.status == 200 and me.body["username"] == carol.username
    patched = await api.patch("/api/users/me/", {"bio": "behind nginx"}, token=carol.access)
    assert patched.status == 200 and patched.body["bio"] == "behind nginx"
    refreshed = await api.post("/api/token/refresh/", {"refresh": carol.refresh})
    assert refreshed.status == 200 and refreshed.body["access"]

    # A picture uploaded through node 1 is served by node 2, at a URL that names the proxy.
    uploaded = await api.put(
        "/api/users/me/picture/?node=1",
        body=PNG + b"\0" * 64,
        token=carol.access,
        headers={"Content-Type": "image/png"},
    )
    assert uploaded.status == 200, uploaded.body
    url = uploaded.body["profile_picture"]
    assert url.startswith(f"http://127.0.0.1:{cluster.port}/media/")
    served = await api.get(url.removeprefix(f"http://127.0.0.1:{cluster.port}") + "?node=2")
    assert served.status == 200 and served.headers["Content-Type"].startswith("image/")
    assert served.headers["X-Content-Type-Options"] == "nosniff"

    # Per-node metrics are scraped on each node's own port, not published through the proxy.
    hidden = await api.get("/metrics")
    assert (hidden.status, hidden.error_code) == (404, "not_found")
    # No node answering: the API's own 503 envelope, not an HTML 502 page.
    down = await api.get("/api/users/me/?node=down", token=carol.access)
    assert (down.status, down.error_code) == (503, "unavailable")
    assert down.headers["Content-Type"].startswith("application/json")

    # The Origin check compares the browser's Origin with the Host the node sees: nginx must forward
    # the client's Host, or every browser socket would be refused.
    def origin_request(origin: str) -> tornado.httpclient.HTTPRequest:
        return tornado.httpclient.HTTPRequest(
            f"ws://127.0.0.1:{cluster.port}/ws/notifications/?token={carol.access}",
            headers={"Host": "chat.test", "Origin": origin},
        )

    accepted = await tornado.websocket.websocket_connect(origin_request("https://chat.test"))
    await accepted.write_message('{"type": "ping"}')
    assert await asyncio.wait_for(accepted.read_message(), 5) == '{"type":"pong"}'
    accepted.close()
    refused = await tornado.websocket.websocket_connect(origin_request("https://evil.test"))
    assert await asyncio.wait_for(refused.read_message(), 5) is None
    assert refused.close_code == 1008


@pytest.mark.slow
async def test_body_limit_is_the_servers(cluster: ProxiedCluster) -> None:
    api = cluster.api()
    dave = await api.user("dave")
    headers = {"Content-Type": "image/png"}
    limit = Settings().max_upload_bytes
    # The largest upload the server accepts passes the proxy...
    # A real image (they are decoded now), padded to the limit: the decoder ignores bytes after its end.
    at_limit = PNG + b"\0" * (limit - len(PNG))
    accepted = await api.put("/api/users/me/picture/", body=at_limit, token=dave.access, headers=headers)
    assert accepted.status == 200, accepted.body
    # ...and one byte more is refused by nginx itself, before any node reads it, with the 413 and the
    # error envelope a node would have answered.
    refused = await api.put("/api/users/me/picture/", body=at_limit + b"\0", token=dave.access, headers=headers)
    assert (refused.status, refused.error_code) == (413, "body_too_large")
    [line] = await wait_for_lines(cluster.access_log, " 413 ")
    assert "upstream=- " in line, line


@pytest.mark.slow
async def test_conversation_across_two_nodes_through_nginx(cluster: ProxiedCluster) -> None:
    api = cluster.api()
    notes_before = count_lines(cluster.access_log, "/ws/notifications/ ")
    alice = await api.user("alice")
    bob = await api.user("bob")
    # Each user's sockets on one node: alice on node 1, bob on node 2.
    alice_notes = await ws_connect(api, f"/ws/notifications/?token={alice.access}&node=1")
    bob_notes = await ws_connect(api, f"/ws/notifications/?token={bob.access}&node=2")

    # The match, through the likes API; each like is sent to the node that does not hold the other's
    # socket, so the notifications cross nodes.
    liked = await api.post("/api/likes/?node=1", {"user_id": bob.id}, token=alice.access)
    assert liked.status == 201, liked.body
    assert (await bob_notes.recv_type("notification"))["notification"]["type"] == "new_like"
    back = await api.post("/api/likes/?node=2", {"user_id": alice.id}, token=bob.access)
    assert back.status == 201, back.body
    cid = back.body["match"]["conversation_id"]
    for notes, other in ((alice_notes, bob), (bob_notes, alice)):
        new_match = (await notes.recv_type("notification"))["notification"]
        assert new_match["type"] == "new_match" and new_match["match"]["user"]["id"] == other.id

    ws_a = await ws_connect(api, f"/ws/conversations/{cid}/?token={alice.access}&node=1")
    # Bob is online (his notifications socket on node 2): presence is read across nodes.
    joined = await ws_a.recv_type("status")
    assert (joined["user_id"], joined["status"]) == (bob.id, "online")
    ws_b = await ws_connect(api, f"/ws/conversations/{cid}/?token={bob.access}&node=2")
    assert (await ws_b.recv_type("status"))["status"] == "online"

    # A message from node 1 reaches bob's conversation and notifications sockets on node 2.
    await ws_a.send({"type": "message", "content": "hello from node 1"})
    echo = await ws_a.recv_type("message")
    delivered = await ws_b.recv_type("message")
    assert delivered["message"]["id"] == echo["message"]["id"]
    assert delivered["message"]["content"] == "hello from node 1"
    note = (await bob_notes.recv_type("notification"))["notification"]
    assert note["type"] == "new_message" and note["message"]["conversation_id"] == cid

    # Typing, a reply and a read receipt, from node 2 to node 1 and back.
    await ws_b.send({"type": "typing", "is_typing": True})
    typing = await ws_a.recv_type("typing")
    assert (typing["user_id"], typing["is_typing"]) == (bob.id, True)
    await ws_b.send({"type": "message", "content": "hi from node 2"})
    reply = await ws_a.recv_type("message")
    assert reply["message"]["content"] == "hi from node 2" and reply["message"]["sender_id"] == bob.id
    assert (await alice_notes.recv_type("notification"))["notification"]["type"] == "new_message"
    await ws_a.send({"type": "read_receipt", "message_id": reply["message"]["id"]})
    receipt = await ws_b.recv_type("read_receipt")
    assert (receipt["user_id"], receipt["message_id"]) == (alice.id, reply["message"]["id"])

    # Bob leaves node 2 entirely: alice, on node 1, sees him go offline.
    ws_b.close()
    bob_notes.close()
    gone = await ws_a.recv_type("status", timeout=10)
    assert (gone["user_id"], gone["status"]) == (bob.id, "offline")
    ws_a.close()
    alice_notes.close()

    # nginx writes a socket's line when it closes: the two conversation sockets were upgraded (101)
    # through the proxy, one on each node...
    lines = await wait_for_lines(cluster.access_log, f"/ws/conversations/{cid}/ ", count=2)
    assert all(" 101 " in line for line in lines), lines
    upstreams = {found for line in lines for found in re.findall(r"upstream=(\S+)", line)}
    assert upstreams == {f"127.0.0.1:{node.port}" for node in cluster.nodes}, lines
    # ...and no line holds a token, though every socket carried one in its query string.
    await wait_for_lines(cluster.access_log, "/ws/notifications/ ", count=notes_before + 2)
    logged = cluster.access_log.read_text()
    for token in (alice.access, bob.access):
        assert token not in logged
    assert "token=" not in logged


@pytest.mark.slow
async def test_client_address_comes_from_the_trusted_proxy(cluster: ProxiedCluster) -> None:
    # A client at 127.0.0.3 claims another address; nginx replaces the claim with the address it saw,
    # and the node (which trusts 127.0.0.1, nginx) logs that address, not nginx's, not the claim.
    source = loopback_source("127.0.0.3")
    marker = uuid.uuid4().hex
    response = await fetch_from(
        source,
        f"http://127.0.0.1:{cluster.port}/api/probe-{marker}/?node=1",
        {"X-Forwarded-For": SPOOFED_IP, "X-Real-IP": SPOOFED_IP},
    )
    assert response.code == 404
    [line] = await wait_for_lines(cluster.nodes[0].log_path, marker)
    assert source in line and SPOOFED_IP not in line, line
    [proxy_line] = await wait_for_lines(cluster.access_log, marker)
    assert proxy_line.startswith(source + " "), proxy_line


@pytest.mark.slow
async def test_forwarding_headers_from_an_untrusted_peer_are_ignored(cluster: ProxiedCluster) -> None:
    # Straight to a node from 127.0.0.2, which is not in TRUSTED_PROXIES: the claim must not be believed.
    source = loopback_source("127.0.0.2")
    marker = uuid.uuid4().hex
    node = cluster.nodes[0]
    response = await fetch_from(
        source, f"{node.base}/api/probe-{marker}/", {"X-Forwarded-For": SPOOFED_IP, "X-Real-IP": SPOOFED_IP}
    )
    assert response.code == 404
    [line] = await wait_for_lines(node.log_path, marker)
    assert source in line and SPOOFED_IP not in line, line


@pytest.mark.slow
async def test_no_token_in_any_nginx_log_when_a_node_fails(cluster: ProxiedCluster) -> None:
    # A node holding a socket dies, and the client's next handshake finds its port closed: nginx logs
    # both failures. The socket's token was in its URL; no nginx log may keep it.
    api = cluster.api()
    grace = await api.user("grace")
    path = f"/ws/notifications/?token={grace.access}&node=spare"
    spare = cluster.spare_node().start()
    try:
        socket_ = await ws_connect(api, path)
        await socket_.send({"type": "ping"})
        assert (await socket_.recv_type("pong"))["type"] == "pong"
        spare.kill()
        # Frames into the dead connection: nginx's writes to the node fail, and the client is let go.
        for _ in range(3):
            with contextlib.suppress(tornado.websocket.WebSocketClosedError):
                await socket_.send({"type": "ping"})
        assert (await socket_.closed(timeout=10))[0] != 1000
    finally:
        spare.stop()
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await ws_connect(api, path)
    assert refused.value.code == 503

    # The failures stay visible without the URL: the access log names the node and its 502.
    spare_address = f"upstream=127.0.0.1:{cluster.spare_port} upstream_status=502"
    [line] = await wait_for_lines(cluster.access_log, spare_address)
    assert '"GET /ws/notifications/ HTTP/1.1" 503 ' in line, line
    nginx_files = [cluster.workdir / name for name in ("error.log", "access.log", "nginx.out")]
    for logged in nginx_files:
        text = logged.read_text(errors="replace") if logged.exists() else ""
        assert grace.access not in text, f"{logged.name} holds the token:\n{text[-3000:]}"
        assert "token=" not in text, f"{logged.name} holds a query string:\n{text[-3000:]}"


@pytest.mark.slow
async def test_one_request_id_in_nginx_and_node_logs(cluster: ProxiedCluster) -> None:
    # nginx makes the id and replaces the client's: the node logs and echoes nginx's, and nginx's access
    # line carries the same one, so the two lines of one request can be joined.
    api = cluster.api()
    marker = uuid.uuid4().hex
    response = await api.get(f"/api/probe-{marker}/?node=1", headers={"X-Request-Id": "client-chosen"})
    assert response.status == 404
    request_id = response.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id
    [proxy_line] = await wait_for_lines(cluster.access_log, marker)
    assert f" request_id={request_id} " in proxy_line, proxy_line
    [node_line] = await wait_for_lines(cluster.nodes[0].log_path, marker)
    assert orjson.loads(node_line)["request_id"] == request_id, node_line


async def lock_out(source: str, url: str, attempts: int) -> None:
    """Failed sign-ins from `source`, each for a name that does not exist (so no account is throttled)."""
    for _ in range(attempts):
        failed = await post_from(source, url, {"username": f"nobody_{uuid.uuid4().hex[:12]}", "password": "wrong"})
        assert failed.code == 401, failed.body


@pytest.mark.slow
async def test_sign_in_throttle_counts_each_client_behind_nginx(cluster: ProxiedCluster) -> None:
    # With TRUSTED_PROXIES naming nginx, the nodes count failed sign-ins per client address (shared by
    # both nodes through Redis): one address that used its budget is refused, another signs in.
    api = cluster.api()
    henry = await api.user("henry")
    sign_in = {"username": henry.username, "password": PASSWORD}
    url = f"http://127.0.0.1:{cluster.port}/api/token/"
    attacker, neighbour = loopback_source("127.0.0.4"), loopback_source("127.0.0.5")
    await lock_out(attacker, url, int(cluster.env["LOGIN_FAILURES_PER_IP"]))
    refused = await post_from(attacker, url, sign_in)
    assert refused.code == 429 and orjson.loads(refused.body)["error"]["code"] == "too_many_attempts"
    accepted = await post_from(neighbour, url, sign_in)
    assert accepted.code == 200, accepted.body

    # The same through a node that does not trust nginx (TRUSTED_PROXIES empty, its own Redis keys):
    # every client is nginx's 127.0.0.1 to it, so one address's failures lock everyone out.
    untrusting = cluster.spare_node(TRUSTED_PROXIES="", REDIS_PREFIX="u" + uuid.uuid4().hex[:8] + ":").start()
    try:
        url = f"http://127.0.0.1:{cluster.port}/api/token/?node=spare"
        await lock_out(attacker, url, int(cluster.env["LOGIN_FAILURES_PER_IP"]))
        locked_out = await post_from(neighbour, url, sign_in)
        assert locked_out.code == 429, locked_out.body
    finally:
        untrusting.stop()
