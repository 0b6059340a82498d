"""What the operating system gives one process: the socket budget the open-file limit leaves, and how the
garbage collector treats a process that holds tens of thousands of long-lived sockets."""

from __future__ import annotations

import contextlib
import gc
import resource
from collections.abc import Callable

# Descriptors a node needs besides its WebSockets: listening sockets, the MongoDB and Redis connection
# pools (PyMongo opens up to 100 per server), REST keep-alive connections, log and media files, the
# embedded store's pipes. A tenth of the limit on top covers bursts of REST connections.
FD_RESERVE = 128


def open_file_limit(*, raise_soft: bool = True) -> int:
    """The soft RLIMIT_NOFILE, first raised to the hard limit when that is allowed (the default soft
    limit of 1024 would cap a node at a few hundred sockets on hosts that allow far more)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if raise_soft and soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def socket_budget(max_sockets: int, file_limit: int) -> int:
    """WebSockets a node may hold: MAX_SOCKETS_PER_NODE, but never so many that the process runs out of
    descriptors for everything else (a refused socket gets 1008 "server full"; a process out of
    descriptors cannot even answer /livez)."""
    headroom = FD_RESERVE + file_limit // 10
    return max(0, min(max_sockets, file_limit - headroom))


# Young collections every 20,000 allocations instead of 700: most of what a frame or a connect allocates
# is freed by its reference count long before that, so a collection finds little to scan.
YOUNG_GENERATION_THRESHOLD = 20_000
# A full collection once the objects kept out of the collector's sight grew by this share since the last
# one (and as many young collections passed as CPython puts between two): CPython's own rule for its
# oldest generation.
FULL_COLLECTION_GROWTH = 0.25


class SurvivorFreezer:
    """The garbage collector's policy for a process of long-lived sockets.

    Each socket keeps about ninety tracked objects (Tornado's stream, its read-loop coroutines and
    futures, the handler) for as long as it is open. CPython scans each of them in a young collection,
    then again in a middle one on their way to the oldest generation, and in a storm of connects nearly
    nothing it scans is garbage: the middle collections took 0.46 to 0.61 s of the node's 9 to 12 s of
    CPU in storms of 10,000 connects (BENCHMARKS.md, "What is left"). Here what survives a collection
    is frozen out of the collector's sight at once (gc.freeze), so a young collection is the only scan
    it gets before the next full one.

    Reference counting still frees frozen objects; what freezing delays is cyclic garbage (a closed
    socket's handler and stream refer to each other). It waits for a full collection, as it does once
    it reached CPython's oldest generation: every frozen object is handed back and everything collected
    on the event loop once both of CPython's conditions for a full collection hold (as many young
    collections since the last one as its thresholds put between two, and a quarter more objects kept),
    so memory stays within that share of what is live.

    `schedule` runs a function soon on the event loop: a collection cannot start from a collector's
    callback."""

    def __init__(self, schedule: Callable[[Callable[[], None]], object], *, growth: float = FULL_COLLECTION_GROWTH):
        self._schedule = schedule
        self._growth = growth
        _, middle, old = gc.get_threshold()
        self.young_per_full = max(1, middle * old)
        self._young_since_full = 0
        self._base = gc.get_freeze_count()
        self._full_pending = False
        self._collecting_all = False
        self.full_collections = 0

    def install(self) -> None:
        gc.callbacks.append(self._after_collection)

    def uninstall(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._after_collection)

    def _after_collection(self, phase: str, info: dict[str, int]) -> None:
        if phase != "stop" or self._collecting_all:
            return
        gc.freeze()
        self._young_since_full += 1
        if (
            not self._full_pending
            and self._young_since_full >= self.young_per_full
            and gc.get_freeze_count() > self._base * (1 + self._growth)
        ):
            self._full_pending = True
            self._schedule(self.collect_all)

    def collect_all(self) -> None:
        """Hand every frozen object back, collect everything, and freeze what survived."""
        self._collecting_all = True
        try:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        finally:
            self._collecting_all = False
            self._full_pending = False
        self._base = gc.get_freeze_count()
        self._young_since_full = 0
        self.full_collections += 1


def settle_garbage_collector(schedule: Callable[[Callable[[], None]], object]) -> SurvivorFreezer:
    """Once the node is started: what start-up built (modules, settings, services, routes: about 120,000
    objects) lives as long as the process, so it is frozen out of the collector's reach; young
    collections are made rarer, and what survives one is frozen too (SurvivorFreezer). Measured during
    a storm of 2,000 connects before any of this, the collector took 14% of the node's CPU, most of it in
    full collections walking start-up's objects (BENCHMARKS.md, "What is left")."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)
    freezer = SurvivorFreezer(schedule)
    freezer.install()
    return freezer
