"""WebSocket close codes: the seed's, and the RFC 6455 ones this server sends.

One table, so that the sockets, the error map (handlers/errors.py) and the API document agree on what
each code means and whether a client should come back after it.
"""

from __future__ import annotations

from typing import NamedTuple

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008
CLOSE_TOO_LARGE = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_NO_TOKEN = 4000
CLOSE_FORBIDDEN = 4001
CLOSE_BAD_TOKEN = 4002
CLOSE_BAD_FRAME = 4003
CLOSE_TOKEN_EXPIRED = 4004


class CloseCode(NamedTuple):
    code: int
    meaning: str
    retry: bool  # whether a well-behaved client reconnects (and resumes) after it


CLOSE_CODES: dict[int, CloseCode] = {
    c.code: c
    for c in (
        CloseCode(CLOSE_NORMAL, "normal closure", False),
        CloseCode(CLOSE_GOING_AWAY, "server going away (shutdown); reconnect, to another node if need be", True),
        CloseCode(CLOSE_PROTOCOL_ERROR, "protocol error (an invalid close frame)", False),
        CloseCode(
            CLOSE_POLICY,
            "policy: origin not allowed, too many sockets of one user, or persistent abuse of the rate limits",
            False,
        ),
        CloseCode(CLOSE_TOO_LARGE, "frame larger than the limit", False),
        CloseCode(CLOSE_SERVER_ERROR, "unexpected server error", True),
        CloseCode(
            CLOSE_TRY_AGAIN_LATER,
            "try again later: a slow consumer (the socket owed its reader more than the output bound), the node "
            "is full, too many frames wait on a store that does not answer, or the store did not answer while the "
            "socket opened; reconnect with backoff and resume",
            True,
        ),
        CloseCode(CLOSE_NO_TOKEN, "no token in the URL", False),
        CloseCode(
            CLOSE_FORBIDDEN, "not a participant (or no such conversation, or closed by an unmatch or a block)", False
        ),
        CloseCode(
            CLOSE_BAD_TOKEN,
            "token invalid, expired or revoked (password changed, account deleted or banned), or a refresh token",
            False,
        ),
        CloseCode(CLOSE_BAD_FRAME, "invalid frame: not JSON, not an object, unknown type or wrong field types", False),
        CloseCode(
            CLOSE_TOKEN_EXPIRED,
            "access token expired on the open socket and not renewed by an `auth` frame within the grace, or one "
            "of the account's sign-ins was revoked (a refresh token reused); reconnect with a fresh access token",
            True,
        ),
    )
}


def close_label(code: int) -> str:
    """A close code as a metrics label: the codes of RFC 6455's range and this table's, and "other" for the
    ones a client chooses itself (3000 to 4999), which would make a series each."""
    return str(code) if code in CLOSE_CODES or 1000 <= code <= 1015 else "other"
