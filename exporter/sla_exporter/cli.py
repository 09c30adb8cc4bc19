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
from .config import ConfigInvalid
from .exporter import Exporter, Shard
from .web import LINKS_KEY, make_app
from .webconfig import WebConfigFile

log = logging.getLogger("sla_exporter")


# uvloop (libuv under asyncio's API) runs the probes' callbacks and timers for less CPU than
# asyncio's own loop: 7-17% less per probe, all of it the loop's (bench/RESULTS.md). asyncio's
# loop stays the fallback where uvloop is not installed (Windows) and the choice for debugging.
EVENT_LOOPS = ("uvloop", "asyncio")
DEFAULT_EVENT_LOOP = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


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
        help="file keeping calendar-month tallies across restarts; empty keeps them in memory only"
        " (default: %(default)s, relative to the working directory)",
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
            import uvloop
        except ImportError:
            main.close()
            raise RuntimeError("--event-loop=uvloop: uvloop is not installed") from None
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
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
    )
    await exporter.start()
    application = app(exporter, web_config)
    application[LINKS_KEY] = args.links
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner, host, port, ssl_context=web_config.listening_context() if web_config else None
    )
    try:
        await site.start()
    except OSError as err:
        await exporter.stop()
        await runner.cleanup()
        print(f"cannot listen on {args.listen}: {err.strerror}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    log.info(
        "listening on %s (version %s, event loop %s)",
        args.listen,
        __version__,
        type(loop).__module__.partition(".")[0],
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
