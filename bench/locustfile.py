"""Chat pairs for locust (BENCHMARKS.md, "Load testers' own tools").

Each locust user is one matched pair: it signs two people up and in over REST, matches them (each likes
the other), opens both conversation sockets, and then plays rounds: A sends "ping N", B answers
"pong N", and the time until A sees the answer is the "WS ping-pong" entry. Every `--drop-every`
rounds A leaves, B sends `--missed` messages, and A comes back with `?after=<last id seen>`: those
messages must arrive, in order, once ("WS resume"). A socket the server closes with a code the seed's
client retries (1001 on a restart, 1011, 1013, 4004 after a token refresh) reconnects the same way
("WS reconnect") and resends what was never echoed, with its `client_id`, which the server stores once.
Both sockets check what the server promises: ids count up from 1 in a conversation, none missing, none
twice; a gap, a repeat, an `error` frame or a final close is a "WS protocol" failure.

    .venv/bin/locust -f bench/locustfile.py --host http://127.0.0.1:8888 --headless -u 50 -r 5 -t 1m

The server must let one address sign up many users: start it with SIGNUPS_PER_IP=0.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import websocket
from gevent.event import AsyncResult
from locust import HttpUser, events, task
from locust.argument_parser import LocustArgumentParser
from locust.exception import StopUser
from locust.runners import STATE_CLEANUP, STATE_STOPPED, STATE_STOPPING

Message = dict[str, Any]

PASSWORD = "load-test-password"
# Close codes after which a client reconnects and resumes (README, "Close codes"); 4004 wants a fresh
# token first. Anything else ends the pair with a failure.
RESUMABLE = {1001, 1006, 1011, 1012, 1013, 4004}
RECONNECT_TRIES = 8


@events.init_command_line_parser.add_listener
def _options(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("chat pairs")
    group.add_argument(
        "--pace", type=float, default=0.4, help="Seconds between two rounds (keep both users under MESSAGE_RATE)"
    )
    group.add_argument("--drop-every", type=int, default=10, help="Rounds between two leave-and-resume rounds")
    group.add_argument("--missed", type=int, default=3, help="Messages B sends while A is away")
    group.add_argument("--ws-timeout", type=float, default=10.0, help="Seconds to wait for an expected message")


@dataclass
class Account:
    id: int
    username: str
    access: str
    refresh: str


def has_content(content: str, message: Message) -> bool:
    return bool(message["content"] == content)


class ProtocolFailure(Exception):
    """The server broke a promise (or a wait timed out): the pair stops."""


class ChatSocket:
    """One participant's conversation socket: the ids it saw, its sends not yet echoed back, the waits on
    messages to come, and a reader greenlet that resumes after a retryable close."""

    def __init__(self, pair: ChatPair, name: str, account: Account, conversation_id: int) -> None:
        self.pair = pair
        self.name = name
        self.account = account
        self.conversation_id = conversation_id
        self.last_id = 0  # the conversation is new: its first message is 1
        self.unacked: dict[str, str] = {}
        self.waiters: list[tuple[Callable[[Message], bool], AsyncResult]] = []
        self.on_message: Callable[[Message], None] | None = None
        self.ws: websocket.WebSocket | None = None
        self.closing = False
        self.failure: ProtocolFailure | None = None
        self.resuming: gevent.Greenlet | None = None

    def url(self, after: int) -> str:
        base = str(self.pair.host).replace("http", "ws", 1).rstrip("/")
        query = f"token={self.account.access}" + (f"&after={after}" if after else "")
        return f"{base}/ws/conversations/{self.conversation_id}/?{query}"

    def open(self, after: int, report_failure: bool = True) -> None:
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(self.url(after), timeout=self.pair.options.ws_timeout)
        except Exception as exc:
            if report_failure:
                self.pair.report("connect", started, exc)
            raise
        self.pair.report("connect", started)
        ws.settimeout(None)  # the reader waits for frames as long as the socket lives
        self.ws = ws
        self.closing = False
        gevent.spawn(self._read, ws)

    def _read(self, ws: websocket.WebSocket) -> None:
        code = 1006  # the connection dropped without a close frame
        try:
            while True:
                opcode, data = ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                    break
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.receive(data.decode())
        except (websocket.WebSocketException, OSError):
            pass
        self.closed(ws, code)

    def fail(self, reason: str) -> ProtocolFailure:
        """The first failure is reported and ends every wait; later ones add nothing."""
        if self.failure is None:
            self.failure = ProtocolFailure(f"{self.name}: {reason}")
            self.pair.report("protocol", time.perf_counter(), self.failure)
            for _, result in self.waiters:
                result.set_exception(self.failure)
            self.waiters.clear()
        return self.failure

    def receive(self, text: str) -> None:
        frame = json.loads(text)
        if frame.get("type") == "error":
            self.fail(f"error frame {text[:200]}")
            return
        if frame.get("type") != "message":
            return
        message: Message = frame["message"]
        if message["id"] <= self.last_id:
            # A resent client_id answered with the message this socket already showed is not a repeat.
            if self.unacked.pop(message.get("client_id") or "", None) is None:
                self.fail(f"message {message['id']} again after {self.last_id}")
            return
        if message["id"] != self.last_id + 1:
            self.fail(f"message {message['id']} after {self.last_id}")
            return
        self.last_id = message["id"]
        if message["sender_id"] == self.account.id:
            self.unacked.pop(message.get("client_id") or "", None)
        if self.on_message is not None:
            self.on_message(message)
        met = [(test, result) for test, result in self.waiters if test(message)]
        self.waiters = [waiter for waiter in self.waiters if waiter not in met]
        for _, result in met:
            result.set(message)

    def send(self, content: str, client_id: str) -> None:
        frame = json.dumps({"type": "message", "content": content, "client_id": client_id})
        self.unacked[client_id] = frame
        if self.ws is not None and self.ws.connected:
            # On a failed send the reader sees the close, and the resume resends the frame.
            with contextlib.suppress(websocket.WebSocketException, OSError):
                self.ws.send(frame)

    def expect(self, test: Callable[[Message], bool]) -> AsyncResult:
        """A result set by the first message that passes `test` (register it before the send it answers)."""
        result = AsyncResult()
        if self.failure is not None:
            result.set_exception(self.failure)
        else:
            self.waiters.append((test, result))
        return result

    def wait(self, result: AsyncResult, what: str) -> Message:
        try:
            message: Message = result.get(timeout=self.pair.options.ws_timeout)
        except gevent.Timeout:
            raise self.fail(f"no {what} within {self.pair.options.ws_timeout} s") from None
        return message

    def closed(self, ws: websocket.WebSocket, code: int) -> None:
        if ws is not self.ws or self.closing:
            return
        if code not in RESUMABLE:
            self.fail(f"closed {code}")
            return
        self.resuming = gevent.spawn(self._resume_after_close, code == 4004)

    def _resume_after_close(self, refresh: bool) -> None:
        since = time.perf_counter()
        try:
            self.reconnect(refresh=refresh, backoff=True)
        except ProtocolFailure:
            return
        self.pair.report("reconnect", since)

    def reconnect(self, refresh: bool = False, backoff: bool = False) -> None:
        """Open again with ?after= the last id seen, RECONNECT_TRIES times with growing waits (the first
        at once unless `backoff`: a server that closed the socket wants a pause), then resend what was
        never echoed."""
        self.closing = False
        for attempt in range(RECONNECT_TRIES):
            if attempt > 0 or backoff:
                gevent.sleep(min(5.0, 0.2 * 2**attempt) * random.uniform(0.5, 1.5))
            try:
                if refresh:
                    self.pair.refresh(self.account)
                    refresh = False
                # A refused try is no failure yet (a restarting node refuses for a while): giving up is.
                self.open(self.last_id, report_failure=False)
            except Exception:  # noqa: S112 - the next try may work
                continue
            assert self.ws is not None
            for frame in list(self.unacked.values()):
                self.ws.send(frame)
            return
        raise self.fail(f"no reconnect in {RECONNECT_TRIES} tries")

    def leave(self) -> None:
        self.closing = True
        if self.ws is not None and self.ws.connected:
            self.ws.close()


class ChatPair(HttpUser):
    """Two matched people and their conversation sockets."""

    def wait_time(self) -> float:
        return float(self.options.pace)

    @property
    def options(self) -> Any:
        return self.environment.parsed_options

    def report(self, name: str, started: float, exception: Exception | None = None) -> None:
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=exception,
            context={},
        )

    def call(self, path: str, body: dict[str, Any], account: Account | None = None) -> Any:
        headers = {"Authorization": f"Bearer {account.access}"} if account else {}
        with self.client.post(path, json=body, headers=headers, catch_response=True) as answer:
            if answer.status_code >= 300:
                answer.failure(f"{answer.status_code} {answer.text[:200]}")
                raise StopUser()
            return answer.json()

    def sign_up(self, prefix: str) -> Account:
        username = f"{prefix}_{secrets.token_hex(6)}"
        user = self.call("/api/register/", {"username": username, "password": PASSWORD})
        tokens = self.call("/api/token/", {"username": username, "password": PASSWORD})
        return Account(user["id"], username, tokens["access"], tokens["refresh"])

    def refresh(self, account: Account) -> None:
        tokens = self.call("/api/token/refresh/", {"refresh": account.refresh})
        account.access, account.refresh = tokens["access"], tokens["refresh"]

    def on_start(self) -> None:
        a, b = self.sign_up("loc_a"), self.sign_up("loc_b")
        self.call("/api/likes/", {"user_id": b.id}, a)
        liked = self.call("/api/likes/", {"user_id": a.id}, b)
        if liked["match"] is None:
            self.report("protocol", time.perf_counter(), ProtocolFailure("mutual likes made no match"))
            raise StopUser()
        conversation_id = liked["match"]["conversation_id"]
        self.a = ChatSocket(self, "A", a, conversation_id)
        self.b = ChatSocket(self, "B", b, conversation_id)
        self.b.on_message = self.answer
        self.rounds = 0
        self.b.open(0)
        self.a.open(0)

    def answer(self, message: Message) -> None:
        """B's side: "ping N" from A is answered "pong N"."""
        content = str(message["content"])
        if message["sender_id"] == self.a.account.id and content.startswith("ping "):
            n = content.removeprefix("ping ")
            self.b.send(f"pong {n}", f"pong-{n}")

    @task
    def play(self) -> None:
        runner = self.environment.runner
        if runner is not None and runner.state in (STATE_STOPPING, STATE_STOPPED, STATE_CLEANUP):
            # The run is over: a pair whose stop did not reach it (seen once: one pair played on for two
            # minutes past --run-time and the tool never exited) ends at its next round.
            raise StopUser()
        self.rounds += 1
        try:
            if self.rounds % self.options.drop_every == 0:
                self.drop_and_resume()
            else:
                self.ping_pong()
        except ProtocolFailure:
            raise StopUser() from None

    def ping_pong(self) -> None:
        n = self.rounds
        started = time.perf_counter()
        pong = self.a.expect(lambda m: m["sender_id"] == self.b.account.id and m["content"] == f"pong {n}")
        self.a.send(f"ping {n}", f"ping-{n}")
        self.a.wait(pong, f"pong {n}")
        self.report("ping-pong", started)

    def drop_and_resume(self) -> None:
        """A leaves; B sends while A is away; A comes back with ?after= and must see exactly those."""
        self.a.leave()
        for i in range(1, self.options.missed + 1):
            content = f"while away {self.rounds}.{i}"
            echo = self.b.expect(functools.partial(has_content, content))
            self.b.send(content, f"away-{self.rounds}-{i}")
            self.b.wait(echo, f"echo of {content}")
        last = self.b.last_id
        started = time.perf_counter()
        replayed = self.a.expect(lambda m: m["id"] == last)
        self.a.reconnect()
        self.a.wait(replayed, f"replay up to {last}")
        self.report("resume", started)

    def on_stop(self) -> None:
        for side in ("a", "b"):
            socket: ChatSocket | None = getattr(self, side, None)
            if socket is not None:
                if socket.resuming is not None:
                    # Bounded: a stopping run must not wait a whole --ws-timeout per socket.
                    socket.resuming.join(timeout=min(self.options.ws_timeout, 5.0))
                socket.leave()
