"""What the operating system allows one process: the socket budget the open-file limit leaves."""

from __future__ import annotations

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
