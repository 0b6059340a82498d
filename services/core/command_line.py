"""`python server.py`'s command line, and the listening ports it holds before the server is imported.

Importing the server takes 0.6 s on an idle machine, and 2.5 to 3.4 s on one busy taking a restarted node's
13,000 sockets back (BENCHMARKS.md). A port bound only after that refuses every client that reconnects
meanwhile, and each refusal sends a client to its next backoff step (2 s, then 4 s). Held from the
process's first moments, the port lets those clients wait in the listen backlog until the node serves.
So server.py calls `hold_ports_early` before its other imports, and this module imports nothing of the
server but its settings.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import socket
from dataclasses import dataclass

from services.core.config import Settings

# Operator commands besides serving: whether each grants (True) or revokes (False) the moderator role.
ROLE_COMMANDS = {"grant-moderator": True, "revoke-moderator": False}
MIGRATE_MEDIA = "migrate-media"
COMMANDS_HELP = """commands:
  (none)                      serve
  grant-moderator USERNAME    give the account the moderator role (its next sign-in or refresh carries it)
  revoke-moderator USERNAME   take it back (refused at the account's next moderator request)
  migrate-media               copy the uploaded files under DATA_DIR/media into the database (GridFS);
                              skips what is there already, so it can run again
  Run them with the node's settings and --data-dir; they work while a node runs, on the embedded store too.
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    knobs = "\n".join(f"  {env:<22} default {default:<12} {text}" for env, default, text in Settings.describe())
    parser = argparse.ArgumentParser(
        description="Chat & Matching API server (REST + WebSockets).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=COMMANDS_HELP + "\nEnvironment variables (flags win over them):\n" + knobs,
    )
    parser.add_argument(
        "command", nargs="?", choices=sorted([*ROLE_COMMANDS, MIGRATE_MEDIA]), help="an operator command (below)"
    )
    parser.add_argument("username", nargs="?", help="the account the command is about")
    parser.add_argument("--host", help="interface to listen on (HOST)")
    parser.add_argument("--port", type=int, help="TCP port (PORT)")
    parser.add_argument("--data-dir", help="data directory (DATA_DIR)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(LOG_LEVEL)")
    parser.add_argument("--log-format", choices=["json", "text"], help="(LOG_FORMAT)")
    args = parser.parse_intermixed_args(argv)
    if args.command in ROLE_COMMANDS and not args.username:
        parser.error(f"{args.command} needs a USERNAME")
    if args.command == MIGRATE_MEDIA and args.username is not None:
        parser.error(f"{args.command} takes no USERNAME")
    if args.command is None and args.username is not None:
        parser.error(f"unknown command {args.username!r}")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings: the environment, and the flags over it. Raises ValueError on a bad one."""
    return Settings.from_env(
        host=args.host, port=args.port, data_dir=args.data_dir, log_level=args.log_level, log_format=args.log_format
    )


@dataclass
class HeldPorts:
    """The listening sockets of a node's API and, if it has one, of its metrics listener."""

    api: list[socket.socket]
    metrics: list[socket.socket]
    # What they were bound for: settings read again later must still ask for exactly these.
    bound_for: tuple[str, int, str, int, int]

    def close(self) -> None:
        for sock in (*self.api, *self.metrics):
            sock.close()


def _binding(settings: Settings) -> tuple[str, int, str, int, int]:
    return (settings.host, settings.port, settings.metrics_host, settings.metrics_port, settings.listen_backlog)


def hold_ports(settings: Settings) -> HeldPorts:
    """Bind and listen on the node's ports (connections wait in the backlog until the node serves)."""
    api = listening_sockets(settings.host, settings.port, settings.listen_backlog)
    try:
        metrics = (
            listening_sockets(settings.metrics_host, settings.metrics_port, settings.listen_backlog)
            if settings.metrics_port
            else []
        )
    except OSError:
        for sock in api:
            sock.close()
        raise
    return HeldPorts(api, metrics, _binding(settings))


def listening_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Non-blocking listening sockets on every address `host` resolves to (every interface when empty),
    made as Tornado's `bind_sockets` makes them (which this module cannot import, being imported before
    the server): address reuse, IPv6 sockets that take IPv6 only, one port for all when `port` is 0."""
    family = socket.AF_UNSPEC if socket.has_ipv6 else socket.AF_INET
    found = socket.getaddrinfo(host or None, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    bound_port: int | None = None
    try:
        for af, kind, proto, _, address in sorted(set(found), key=lambda info: info[0]):
            try:
                sock = socket.socket(af, kind, proto)
            except OSError as exc:
                if exc.errno == errno.EAFNOSUPPORT:
                    continue  # an address family this kernel does not have
                raise
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and bound_port is not None:
                address = (address[0], bound_port, *address[2:])
            sock.setblocking(False)
            sock.bind(address)
            bound_port = sock.getsockname()[1]
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


_held_early: HeldPorts | None = None


def hold_ports_early(argv: list[str]) -> None:
    """Hold the ports of the node this command line serves, if it serves one. Quietly does nothing when the
    command line or the settings are wrong, or a port is taken: the server then reports it as usual."""
    global _held_early
    try:
        # Silent: `main` parses the same command line again, and says what is wrong with it (or prints the
        # help) once.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = parse_args(argv)
        if args.command is not None:
            return  # an operator command serves nothing
        _held_early = hold_ports(settings_from(args))
    except (SystemExit, ValueError, OSError):
        return


def take_held_ports(settings: Settings) -> HeldPorts | None:
    """The ports `hold_ports_early` holds, if they are the ones these settings ask for (then nobody else
    takes them); None otherwise."""
    global _held_early
    held, _held_early = _held_early, None
    if held is not None and held.bound_for != _binding(settings):
        held.close()
        return None
    return held
