"""What the operating system allows one process: the socket budget the open-file limit leaves."""

from __future__ import annotations

import gc
import resource

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
# is freed by its reference count long before that, so a collection finds little to scan. The older
# generations keep their ratios (and CPython's rule that a full collection waits for a quarter of the
# long-lived objects to be new).
YOUNG_GENERATION_THRESHOLD = 20_000


def settle_garbage_collector() -> None:
    """Once the node is started: what start-up built (modules, settings, services, routes: about 120,000
    objects) lives as long as the process, so it is frozen out of the collector's reach, and young
    collections are made rarer. Measured during a storm of 2,000 connects, the collector took 14% of the
    node's CPU, most of it in full collections walking those objects (BENCHMARKS.md, "Connect cost")."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)
