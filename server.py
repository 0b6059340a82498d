"""Entry point: read settings, start what is embedded, build the services, serve, shut down cleanly."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

from handlers import make_app
from handlers.base import PROBE_PATHS
from handlers.http_server import make_http_server
from handlers.metrics import make_metrics_app
from services.core import errors, logs
from services.core.config import SettingError, Settings
from services.core.container import Services, build_services
from services.core.logs import redact
from services.core.system import open_file_limit, settle_garbage_collector, socket_budget
from services.core.systemd import Notifier
from services.media.migrate import migrate_media
from services.moderation.audit import AuditLog, command_line_actor
from services.moderation.roles import set_moderator
from services.realtime.backends import node_name
from services.storage.embedded import EmbeddedMongo
from services.storage.store import Store

log = logging.getLogger("chat.server")


def log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    if status == 101:
        # A WebSocket's handshake: the socket's own line at its end (handlers/sockets.py) says where it
        # went, who held it, how it ended and for how long.
        level = logging.DEBUG
    elif request.path in PROBE_PATHS:
        # Every few seconds from every checker: at INFO they would drown the log.
        # A 503 of /readyz is the node saying it is not ready, not a failure of the request.
        level = logging.DEBUG if status < 500 else logging.WARNING
    access = logging.getLogger("tornado.access")
    if not access.isEnabledFor(level):
        return  # a storm of connects builds no line (redaction, timing, extras) that nobody writes
    path = redact(request.uri or "")
    duration_ms = round(1000.0 * request.request_time(), 2)
    access.log(
        level,
        "%d %s %s %.1fms",
        status,
        request.method,
        path,
        duration_ms,
        extra={
            "status": status,
            "method": request.method,
            "path": path,
            "remote_ip": request.remote_ip,
            "duration_ms": duration_ms,
            "request_id": getattr(handler, "request_id", None),
            "user_id": getattr(handler, "user_id_for_log", None),
        },
    )


def limit_sockets_to_descriptors(settings: Settings) -> tuple[Settings, int]:
    """Settings whose MAX_SOCKETS_PER_NODE fits the open-file limit, and that limit."""
    file_limit = open_file_limit()
    budget = socket_budget(settings.max_sockets_per_node, file_limit)
    if budget < settings.max_sockets_per_node:
        log.warning(
            "MAX_SOCKETS_PER_NODE lowered from %d to %d: the open-file limit is %d and each socket takes "
            "a descriptor (raise LimitNOFILE / ulimit -n to hold more)",
            settings.max_sockets_per_node,
            budget,
            file_limit,
        )
        settings = dataclasses.replace(settings, max_sockets_per_node=budget)
    else:
        log.info("open-file limit %d: up to %d WebSockets on this node", file_limit, budget)
    return settings, file_limit


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


def embedded_store_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / "mongo"


class Node:
    """One running server process: its embedded store (if any), services, and HTTP listener."""

    def __init__(self, settings: Settings, *, process_ends_at_stop: bool = False) -> None:
        self.settings = settings
        # The process exits once this node has stopped: its sockets need not be waited for (Services.close).
        self.process_ends_at_stop = process_ends_at_stop
        self.embedded: EmbeddedMongo | None = None
        self.services: Services | None = None
        self.http: tornado.httpserver.HTTPServer | None = None
        self.metrics_http: tornado.httpserver.HTTPServer | None = None
        self.stopping = asyncio.Event()
        self.systemd = Notifier()
        self._readiness: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.settings, file_limit = limit_sockets_to_descriptors(self.settings)
        settings = self.settings
        # The ports are held before the embedded store asks the kernel for a free one, which could
        # otherwise be ours; connections that arrive meanwhile wait in the backlog until the services are
        # up, instead of being refused.
        listeners = tornado.netutil.bind_sockets(settings.port, settings.host, backlog=settings.listen_backlog)
        metrics_listeners = (
            tornado.netutil.bind_sockets(settings.metrics_port, settings.metrics_host, backlog=settings.listen_backlog)
            if settings.metrics_port
            else []
        )
        mongodb_url = settings.mongodb_url
        if not mongodb_url:
            self.embedded = EmbeddedMongo(embedded_store_path(settings))
            await asyncio.get_running_loop().run_in_executor(None, self.embedded.start)
            mongodb_url = self.embedded.url
        self.services = await build_services(settings, mongodb_url)
        app = make_app(self.services, log_function=log_request)
        self.http = make_http_server(app, settings, file_limit)
        self.http.add_sockets(listeners)
        log.info("listening on http://%s:%d", settings.host, settings.port)
        if metrics_listeners:
            self.metrics_http = tornado.httpserver.HTTPServer(make_metrics_app(self.services, log_function=log_request))
            self.metrics_http.add_sockets(metrics_listeners)
            log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
        self._readiness = asyncio.get_running_loop().create_task(self.systemd.ready_when(self.services.store_prepared))
        self.systemd.start_watchdog()
        settle_garbage_collector(asyncio.get_running_loop().call_soon)

    async def stop(self) -> None:
        """Graceful stop: not ready, no new connections, sockets closed with 1001 (clients reconnect to
        another node), presence handed over, queued writes stored; bounded by SHUTDOWN_TIMEOUT."""
        if self._readiness is not None:
            self._readiness.cancel()
        await self.systemd.stopping()
        try:
            await asyncio.wait_for(self._drain(), self.settings.shutdown_timeout_s)
        except TimeoutError:
            log.error("shutdown took longer than %.0fs; exiting anyway", self.settings.shutdown_timeout_s)
        if self.embedded is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.embedded.stop)

    async def _drain(self) -> None:
        if self.services is not None:
            self.services.shutting_down = True
        if self.http is not None:
            self.http.stop()
        if self.services is not None:
            await self.services.close(process_ends=self.process_ends_at_stop)
        if self.http is not None:
            await self.http.close_all_connections()
        if self.metrics_http is not None:
            # Last: a scrape can still see the drain.
            self.metrics_http.stop()
            await self.metrics_http.close_all_connections()


def serve(settings: Settings) -> None:
    """Run a node until SIGTERM or SIGINT, then end the process as soon as the node has stopped.

    Not `asyncio.run`: its teardown cancels every task still pending, and each socket the stop released
    unread (Connections.close_all) has one, whose cancellation would run the per-socket close the stop
    skipped; the interpreter's own teardown would then free the objects of every socket one by one. The
    exit closes the connections instead, once the logs are flushed. A failure still raises (main says
    why)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(run(settings))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def run(settings: Settings) -> None:
    node = Node(settings, process_ends_at_stop=True)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, node.stopping.set)
    try:
        await node.start()
        await node.stopping.wait()
        log.info("shutting down")
    finally:
        await node.stop()


@contextlib.asynccontextmanager
async def operator_store(settings: Settings) -> AsyncIterator[Store]:
    """The store a node with these settings uses, for a one-off command: MONGODB_URL; else the embedded
    store that a node running on DATA_DIR serves (found by its port file); else, when no node runs, an
    embedded store started for the command and stopped after it."""
    loop = asyncio.get_running_loop()
    started: EmbeddedMongo | None = None
    url = settings.mongodb_url
    if not url:
        running = EmbeddedMongo.running(embedded_store_path(settings))
        if running is None:
            started = EmbeddedMongo(embedded_store_path(settings))
            await loop.run_in_executor(None, started.start)
            running = started
        url = running.url
    store = Store(
        url, settings.mongodb_database, timeout_ms=settings.mongodb_timeout_ms, embedded=not settings.mongodb_url
    )
    try:
        yield store
    finally:
        await store.close()
        if started is not None:
            await loop.run_in_executor(None, started.stop)


async def change_moderator(settings: Settings, username: str, granted: bool) -> int:
    """`grant-moderator` / `revoke-moderator`: the role is never granted through the API, only here."""
    async with operator_store(settings) as store:
        found = await set_moderator(store, AuditLog(store), username, granted, command_line_actor())
    if found is None:
        print(f"no account named {username!r}", file=sys.stderr)
        return 1
    if granted:
        print(f"{found['username']} is a moderator; their next sign-in or token refresh carries the role")
    else:
        print(f"{found['username']} is no longer a moderator, from their next moderator request on")
    return 0


async def migrate_media_command(settings: Settings) -> int:
    """`migrate-media`: the files a node kept under DATA_DIR/media, copied into the database."""
    root = Path(settings.data_dir) / "media"
    async with operator_store(settings) as store:
        report = await migrate_media(store, root)
    for path in report.skipped:
        print(f"skipped {path}: not a name the server gives an upload", file=sys.stderr)
    print(f"{root}: {report.summary()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env(
            host=args.host, port=args.port, data_dir=args.data_dir, log_level=args.log_level, log_format=args.log_format
        )
    except ValueError as exc:
        # Logged as the node would log (a JSON line unless text was asked for), so that a log shipper
        # and `journalctl -o json` see why the node refused to start.
        wanted = args.log_format or os.environ.get("LOG_FORMAT", "")
        logs.configure("text" if wanted == "text" else "json", "INFO")
        setting = {"setting": exc.setting} if isinstance(exc, SettingError) else {}
        log.error("configuration error: %s", exc, extra=setting)
        return 2
    logs.configure(settings.log_format, settings.log_level.upper(), node_name(settings))
    try:
        if args.command in ROLE_COMMANDS:
            return asyncio.run(change_moderator(settings, args.username, ROLE_COMMANDS[args.command]))
        if args.command == MIGRATE_MEDIA:
            return asyncio.run(migrate_media_command(settings))
        serve(settings)
    except Exception as exc:
        if not errors.backend_unavailable(exc):
            raise
        where = settings.mongodb_url.rpartition("@")[2] or "the embedded MongoDB"  # never print credentials
        log.error("cannot reach MongoDB (%s): %s", where, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
