"""How many sockets a node lets open at once.

Opening a socket waits on the store (the account, the membership, the newest id, the backlog) and on
Redis (presence). When thousands of clients arrive together (a restarted node's users, all reconnecting
within a second or two), letting every one of them start at once queues thousands of reads on the store:
each then waits longer than its timeout, fails, and the client comes back to try again, so the node does
all the work and opens almost nothing. The gate lets JOIN_CONCURRENCY openings run at a time (the
store's reads of those are still shared per loop iteration, services/storage/batch.py) and makes up to
JOIN_QUEUE more wait their turn in arrival order. One arriving when that queue is full is refused at
once with 1013 (try again later), which costs the node nothing and which clients retry with backoff.

The places bound the node's throughput as well: an opening holds its place for its whole wait on the
store, so a node opens at most JOIN_CONCURRENCY sockets per wait. Under a rolling restart's load a wait
lasted about 350 ms, and 64 places opened about 200 sockets a second while the store still had room;
with 256 places, the reads of more openings share each round of queries and a restarted node of 3,000
sockets was back in 12 to 14 s instead of 17 to 22 (BENCHMARKS.md). There 1,024 gained nothing and
delayed messages behind the openings' reads (median delivery 1.8 s during the restart, against 0.3 s).
But a node of 13,333 sockets, whose clients queue by the thousand, was back in 40 to 53 s with 1,024
places against 60 to 98 s with 256, and none of its clients gave up waiting, against thousands: the
default is 1,024 (BENCHMARKS.md, "1,024 join places at 40,000 sockets").

The queue's default holds a whole node's reconnect storm. A refusal comes after the socket opened, so a
client that restarts its backoff on every open (the seed's does) is back within a second: with a queue of
1,000, a restarted node of 13,333 sockets answered 135,000 handshakes in 240 s and took back 960 sockets.
With a queue of 20,000 it answered 21,000 and took back all of them (BENCHMARKS.md). A client whose own
timeout runs out while it waits (30 s for a first frame, in the load tools) closes its socket and comes
back on a new connection while its old place is still in line: such an opening is dropped when its turn
comes, without reading anything (BaseSocket.gone_while_waiting).

A valid token is checked before its opening takes a place, but without a bound per user one account could
hold every place in the queue (each costs the node only a connection) and keep everyone else's openings
waiting. The places one user holds, running or waiting, count with the sockets the user already has on
the node against MAX_SOCKETS_PER_USER: one past it is refused 1008 "too many connections", as the same
cap refuses a socket that registers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque

from services.realtime.close_codes import CLOSE_GOING_AWAY, CLOSE_TRY_AGAIN_LATER
from services.realtime.hub import LimitExceeded


class JoinGate:
    """Admits at most `concurrency` socket openings at a time, with up to `queue` waiting, first come first
    served, and at most `per_user` places (with the user's open sockets) to one user."""

    def __init__(self, concurrency: int, queue: int, per_user: int) -> None:
        self.concurrency = max(1, concurrency)
        self.queue_limit = max(0, queue)
        self.per_user = max(1, per_user)
        self.running = 0
        self._turns: deque[asyncio.Future[None]] = deque()
        self._places_by_user: Counter[int] = Counter()
        self.closed = False

    @property
    def waiting(self) -> int:
        return len(self._turns)

    def places_of(self, user_id: int) -> int:
        """Openings of this user running or waiting."""
        return self._places_by_user[user_id]

    def admit(self, user_id: int, open_sockets: int) -> Admission:
        """A place for the duration of an `async with` block, for a user who has `open_sockets` on the node
        already; the block gets whether the opening had to wait for its turn. Entering raises
        LimitExceeded: 1008 when the user's places and sockets reach `per_user`, 1013 when the queue is
        full."""
        return Admission(self, user_id, open_sockets)

    def close(self) -> None:
        """The node stops: openings still waiting, and any arriving, are refused with 1001 (the client
        reconnects, to another node) instead of reaching a store client that is being closed."""
        self.closed = True
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_exception(_shutting_down())

    async def _enter(self) -> bool:
        """Take a place, waiting for a turn when none is free; whether it waited."""
        if self.closed:
            raise _shutting_down()
        if self.running < self.concurrency and not self._turns:
            self.running += 1
            return False
        if len(self._turns) >= self.queue_limit:
            raise LimitExceeded("server busy: too many sockets opening", CLOSE_TRY_AGAIN_LATER)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns.append(turn)
        try:
            await turn  # `_leave` hands its place over: `running` already counts this opening
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._leave()  # handed a place at the moment it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # `_leave` may have passed over it already
                    self._turns.remove(turn)
            raise
        return True

    def _leave(self) -> None:
        if self.closed:
            self.running -= 1
            return
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.running -= 1


class Admission:
    """One opening's place at the gate (`JoinGate.admit`). A class rather than a generator-based context
    manager: every socket opening enters one, and the generator's machinery cost more than the gate."""

    __slots__ = ("_entered", "_gate", "_open_sockets", "_user_id")

    def __init__(self, gate: JoinGate, user_id: int, open_sockets: int) -> None:
        self._gate = gate
        self._user_id = user_id
        self._open_sockets = open_sockets
        self._entered = False

    async def __aenter__(self) -> bool:
        gate, user_id = self._gate, self._user_id
        places = gate._places_by_user
        if places[user_id] + self._open_sockets >= gate.per_user:
            raise LimitExceeded("too many connections")
        places[user_id] += 1
        try:
            waited = await gate._enter()
        except BaseException:
            self._release_place()
            raise
        self._entered = True
        return waited

    async def __aexit__(self, *exc_info: object) -> None:
        if self._entered:
            self._entered = False
            self._gate._leave()
            self._release_place()

    def _release_place(self) -> None:
        places = self._gate._places_by_user
        places[self._user_id] -= 1
        if not places[self._user_id]:
            del places[self._user_id]


def _shutting_down() -> LimitExceeded:
    return LimitExceeded("server shutting down", CLOSE_GOING_AWAY)
