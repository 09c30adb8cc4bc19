"""Command line: Prometheus-style dotted flags, logging set-up, and the serve loop."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from . import __version__, webconfig
from . import config as config_mod
from .durations import parse_duration
from .eventloop import library, uvloop_factory
from .exporter import Exporter, Shard
from .loader import ConfigInvalid
from .replicas import basic_auth_file, ca_context
from .web import LINKS_KEY, ConnectionCap, make_app
from .webconfig import WebConfigFile

log = logging.getLogger("sla_exporter")


# uvloop (libuv under asyncio's API) runs the probes' callbacks and timers for less CPU than
# asyncio's own loop: 7-17% less per probe, all of it the loop's (bench/RESULTS.md). asyncio's
# loop stays the fallback where uvloop is not installed (Windows) and the choice for debugging.
EVENT_LOOPS = ("uvloop", "asyncio")
DEFAULT_EVENT_LOOP = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class _DefaultsFormatter(argparse.HelpFormatter):
    """--help with each flag's default, as Prometheus prints it; none for switches and unset."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)".lstrip()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sla-exporter",
        description="Probe the services an SLA promises and expose exact counters for Prometheus.",
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("--config.file", dest="config_file", default="sla.yml", help="SLA file")
    parser.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the config file (and web config), print every error, exit 0 or 1",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen",
        default=":9141",
        help="address to serve on, host:port; an empty host means every interface",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        help="TLS and basic auth for the endpoints, in the Prometheus web config format",
    )
    parser.add_argument(
        "--web.max-connections",
        dest="web_max_connections",
        type=int,
        default=0,
        help="connections the web listener keeps open at most; more are reset at once. "
        "Default 0: what the open-file limit leaves after the probes' share (SECURITY.md)",
    )
    parser.add_argument(
        "--web.idle-timeout",
        dest="web_idle_timeout",
        type=float,
        default=10.0,
        help="seconds a connection may stay idle, or take to send a request's headers or its "
        "TLS handshake, before it is closed (default: %(default)s)",
    )
    parser.add_argument(
        "--web.link",
        dest="links",
        type=_link,
        action="append",
        default=[],
        metavar="NAME=URL",
        help="a link for the landing page, e.g. Prometheus=http://127.0.0.1:9090/; repeatable",
    )
    parser.add_argument(
        "--storage.path",
        dest="storage_path",
        default="data/sla-ledger.json",
        help="the month ledger, kept across restarts; empty keeps it in memory only"
        " (relative to the working directory)",
    )
    parser.add_argument(
        "--storage.recover-from",
        dest="recover_from",
        default=None,
        metavar="URL",
        help="Prometheus to resume lost or missing months from (its sla_month_* series), at start",
    )
    parser.add_argument(
        "--storage.recover-match",
        dest="recover_match",
        default='{job="sla"}',
        metavar="SELECTOR",
        help='this exporter\'s series in that Prometheus, e.g. \'{job="sla",location="zrh"}\'',
    )
    parser.add_argument(
        "--web.status-public",
        dest="status_public",
        action="store_true",
        help="serve /status without the web config's basic auth (it shows nothing secret)",
    )
    parser.add_argument(
        "--location",
        dest="location",
        default=None,
        metavar="NAME",
        help="the location this exporter probes from, one of the SLA file's `locations:`",
    )
    parser.add_argument(
        "--locations.refresh-interval",
        dest="pool_interval",
        type=_duration,
        default="1m",
        metavar="DURATION",
        help="how often the other locations' months are read for the pooled month figure",
    )
    parser.add_argument(
        "--replica.peer",
        dest="replica_peers",
        action="append",
        default=[],
        metavar="URL",
        help="another exporter of this location (same SLA file, same --shard) whose months this"
        " one merges into its own, e.g. http://sla-b:9141; every address the name resolves to is"
        " read; repeatable (docs/OPERATIONS.md)",
    )
    parser.add_argument(
        "--replica.refresh-interval",
        dest="replica_interval",
        type=_duration,
        default="15s",
        metavar="DURATION",
        help="how often the other replicas' months are read and merged",
    )
    parser.add_argument(
        "--replica.basic-auth-file",
        dest="replica_auth_file",
        default=None,
        metavar="FILE",
        help="username:password for the other replicas' --web.config.file basic auth",
    )
    parser.add_argument(
        "--replica.ca-file",
        dest="replica_ca_file",
        default=None,
        metavar="FILE",
        help="the CA that signed the other replicas' certificates (https peers; default: the"
        " system's)",
    )
    parser.add_argument(
        "--probes.max-concurrency",
        dest="max_concurrency",
        type=int,
        default=128,
        help="probes running at once at most, across all services",
    )
    parser.add_argument(
        "--shard",
        dest="shard",
        type=_shard,
        default=Shard(),
        metavar="K/N",
        help="probe only shard K of N: the services whose name hashes to it (docs/SCALING.md)",
    )
    parser.add_argument(
        "--event-loop",
        dest="event_loop",
        default=DEFAULT_EVENT_LOOP,
        choices=EVENT_LOOPS,
        help="the event loop the probes run on (default: %(default)s where installed)",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warn", "error"],
        help="log this level and above",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=["logfmt", "json"],
        help="log line format",
    )
    parser.add_argument("--version", action="version", version=f"sla-exporter {__version__}")
    return parser.parse_args(argv)


def run(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    """Run `main` to completion on a new event loop of the kind `event_loop` names."""
    if event_loop == "uvloop":
        try:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop_factory()
        except ImportError:
            main.close()
            raise RuntimeError("--event-loop=uvloop: uvloop is not installed") from None
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def _link(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url.startswith(("http://", "https://", "/")):
        raise argparse.ArgumentTypeError(f"must be NAME=URL with an http(s) URL, got {text!r}")
    return name, url


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--shard ")) from None


def _warn(logger: Any, method: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    """level=warn, as the flag and Prometheus' own logs spell it, not Python's "warning"."""
    if event.get("level") == "warning":
        event["level"] = "warn"
    return event


def setup_logging(level: str, fmt: str) -> None:
    """Route stdlib logging through structlog's logfmt or JSON renderer on stderr."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.processors.LogfmtRenderer(key_order=["ts", "level", "logger", "msg"])
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.stdlib.add_log_level,
            _warn,
            structlog.stdlib.add_logger_name,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("msg"),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level, level.upper()))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def split_address(address: str) -> tuple[str | None, int]:
    """Split "host:port", "[::1]:port" or ":port" (every interface)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address must be host:port, got {address!r}")
    host = host.strip("[]")
    return host or None, int(port)


def check(args: argparse.Namespace) -> int:
    """--config.check: print every error of every file, or a one-line summary."""
    status = 0
    try:
        config = config_mod.load(args.config_file)
        support = config.support
        extra = (
            f", support: {len(support.calendars)} calendars, {len(support.policies)} policies"
            if support is not None
            else ""
        )
        shard: Shard = args.shard
        if shard.count > 1:
            extra += f", {len(shard.select(config).services)} in shard {shard}"
        print(f"{args.config_file}: OK, {len(config.services)} services{extra}")
    except ConfigInvalid as err:
        print(err)
        status = 1
    if args.web_config_file:
        try:
            webconfig.load(args.web_config_file)
            print(f"{args.web_config_file}: OK")
        except ConfigInvalid as err:
            print(err)
            status = 1
    return status


# Descriptors the web listener leaves for the rest of the process: two per probe running at
# once (Happy Eyeballs may try a second address before the first gives up) and a margin for
# the interpreter, the ledger, the ticket database, logs and the resolver's threads.
FDS_PER_PROBE = 2
FDS_RESERVED = 64
MAX_WEB_CONNECTIONS = 1024  # the automatic limit's ceiling: a few scrapers need a handful
MIN_WEB_CONNECTIONS = 8  # Prometheus, an operator and a helpdesk, whatever the file limit
SHUTDOWN_GRACE = 5.0  # seconds requests in flight get to finish on SIGTERM


def raise_file_limit() -> int | None:
    """Raise the soft limit on open files to the hard one, as far as allowed; return it.

    The common soft limit of 1024 is a default for interactive shells, not a budget for a
    server; the hard limit is what the administrator allows. None where there is no such limit
    (Windows).
    """
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return None if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as err:
        log.warning("cannot raise the open file limit from %d to %d: %s", soft, wanted, err)
        return soft
    return wanted


def web_connection_limit(asked: int, file_limit: int | None, max_concurrency: int) -> int:
    """The web listener's connection limit: what was `asked`, or by default what the open file
    limit leaves after the probes' share; never so much that the probes could run short."""
    if file_limit is None:
        return asked or MAX_WEB_CONNECTIONS
    room = file_limit - FDS_PER_PROBE * max_concurrency - FDS_RESERVED
    if room < MIN_WEB_CONNECTIONS:
        # Still served (a scrape needs one connection), but the probes may run short.
        log.warning(
            "the open file limit (%d) leaves too little room for the web listener next to %d "
            "probes at once; serving at most %d connections. Raise `ulimit -n` or lower "
            "--probes.max-concurrency",
            file_limit,
            max_concurrency,
            MIN_WEB_CONNECTIONS,
        )
        return MIN_WEB_CONNECTIONS
    if asked > room:
        log.warning(
            "--web.max-connections=%d lowered to %d: the open file limit (%d) must leave room "
            "for %d probes at once",
            asked,
            room,
            file_limit,
            max_concurrency,
        )
        return room
    return asked or min(room, MAX_WEB_CONNECTIONS)


async def serve(
    args: argparse.Namespace,
    app: Callable[[Exporter, WebConfigFile | None], web.Application] = make_app,
) -> int:
    host, port = split_address(args.listen)
    web_config = WebConfigFile(args.web_config_file) if args.web_config_file else None
    exporter = Exporter(
        args.config_file,
        storage_path=Path(args.storage_path) if args.storage_path else None,
        max_concurrency=args.max_concurrency,
        freeze_gc=True,  # this process is the exporter's alone
        shard=args.shard,
        load_elsewhere=True,  # parse the SLA file in a child process (see exporter.py)
        recover_from=(args.recover_from, args.recover_match) if args.recover_from else None,
        location=args.location,
        pool_interval=args.pool_interval,
        replica_peers=args.replica_peers,
        replica_interval=args.replica_interval,
        replica_auth=basic_auth_file(args.replica_auth_file) if args.replica_auth_file else None,
        replica_tls=ca_context(args.replica_ca_file) if args.replica_ca_file else None,
        port=port,
    )
    file_limit = raise_file_limit()
    max_connections = web_connection_limit(
        args.web_max_connections, file_limit, args.max_concurrency
    )
    exporter.status_public = args.status_public
    await exporter.start()
    application = app(exporter, web_config)
    application[LINKS_KEY] = args.links
    runner = web.AppRunner(
        application,
        access_log=None,
        # Idle connections and requests whose headers have not all arrived are closed after
        # this long (aiohttp's default is an hour: a slow-loris holds a descriptor that long).
        keepalive_timeout=args.web_idle_timeout,
        shutdown_timeout=SHUTDOWN_GRACE,
    )
    await runner.setup()
    assert runner.server is not None
    cap = ConnectionCap(
        runner.server,
        max_connections,
        tls=web_config.listening_context() if web_config else None,
        handshake_timeout=args.web_idle_timeout,
    )
    loop = asyncio.get_running_loop()
    try:
        listener = await loop.create_server(cap, host, port, reuse_address=True)
    except OSError as err:
        await exporter.stop()
        await runner.cleanup()
        print(f"cannot listen on {args.listen}: {err.strerror}", file=sys.stderr)
        return 1
    log.info(
        "listening on %s (at most %d connections, open file limit %s; version %s, event loop %s)",
        args.listen,
        max_connections,
        file_limit,
        __version__,
        library(loop),
    )
    stop = asyncio.Event()
    reloads: set[asyncio.Task[object]] = set()

    def on_hup() -> None:
        task = loop.create_task(exporter.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    log.info("shutting down")
    listener.close()
    # Reloads first: a request waiting for one would otherwise hold the shutdown for as long
    # as the reloads queued before it take (60 s after a reload storm). Then requests in
    # flight get SHUTDOWN_GRACE seconds.
    for task in reloads:
        task.cancel()
    exporter.cancel_reloads()
    await runner.cleanup()
    await exporter.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.config_check:
        return check(args)
    setup_logging(args.log_level, args.log_format)
    try:
        return run(serve(args), args.event_loop)
    except ConfigInvalid as err:
        print(err, file=sys.stderr)
        return 1
    except (ValueError, RuntimeError) as err:
        print(f"sla-exporter: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
