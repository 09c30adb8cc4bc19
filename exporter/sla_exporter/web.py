"""HTTP endpoints: /metrics, health, reload and a landing page; optional TLS and basic auth."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import html
import itertools
import logging
import math
import re
import secrets
import ssl
import time
import zlib
from asyncio import sslproto
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import cast
from zoneinfo import ZoneInfo

import bcrypt
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from prometheus_client.exposition import choose_encoder, gzip_accepted

from . import __version__, pausing, status
from .exporter import Exporter
from .pool import MONTHS_PATH, months_document
from .probes.base import ProbeResult
from .report import month_document
from .store import RECENT_FAILURES
from .support.desk import misses as support_misses
from .support.web import EVENTS_PATH, events_handler
from .webconfig import WebConfig, WebConfigFile

log = logging.getLogger(__name__)

EXPORTER_KEY = web.AppKey("exporter", Exporter)
STATUS_PATH = "/status"
MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _credentials(header: str) -> tuple[str, str]:
    """User and password of a `Basic` Authorization header (RFC 7617); empty if there is none."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return "", ""
    login, _, password = decoded.partition(":")
    return login, password


_WEB_CONFIG = web.RequestKey("web_config", WebConfig)  # the request's, for its response headers

# bcrypt runs on its own few threads: off the event loop (a check costs tens of milliseconds:
# 32 clients guessing passwords delayed every probe by 50-250 ms), and not on the loop's
# default executor either, where the probes resolve host names.
BCRYPT_THREADS = 2
BCRYPT_QUEUE = 16  # checks waiting for a thread at most; more are answered 429 unchecked
# Failed logins per client address within FAILURE_WINDOW seconds before its next attempts are
# answered 429 without a check, until the window has passed.
MAX_FAILURES = 10
FAILURE_WINDOW = 60.0


class _Guesses:
    """Failed logins per client address, in a sliding window, with a bounded table."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, size: int = 4096) -> None:
        self._clock = clock
        self._size = size
        self._failures: dict[str, list[float]] = {}

    def blocked(self, address: str) -> float:
        """Seconds until `address` may try again; 0 when it may now."""
        times = self._recent(address)
        if len(times) < MAX_FAILURES:
            return 0.0
        return max(0.0, times[0] + FAILURE_WINDOW - self._clock())

    def failed(self, address: str) -> None:
        if address not in self._failures and len(self._failures) >= self._size:
            # A table full of addresses: forget the oldest entry (insertion order).
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(address, []).append(self._clock())
        del self._failures[address][:-MAX_FAILURES]

    def _recent(self, address: str) -> list[float]:
        since = self._clock() - FAILURE_WINDOW
        times = [t for t in self._failures.get(address, []) if t > since]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times


def _cost(stored: str) -> int:
    """The cost factor of a bcrypt hash ($2b$12$...), for a decoy of the same cost."""
    parts = stored.split("$")
    return int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else 12


def _web_config(
    current: Callable[[], WebConfig], public: frozenset[str] = frozenset()
) -> Middleware:
    """Take the web config as it is now, once per request (reading the file is the work of
    `current`), and check HTTP basic auth against its bcrypt hashes (no users: no check).

    bcrypt costs tens of milliseconds by design; Prometheus scrapes every 15 s with the same
    credentials, so like the Prometheus exporter-toolkit we cache successful checks (keyed by a
    hash of the pair and the stored hash, never the password itself: a changed hash is checked
    anew). An unknown user costs a check against a decoy hash of the same cost, so the time
    of an answer does not tell which users exist. Checks run on BCRYPT_THREADS threads, and an
    address that failed MAX_FAILURES times in FAILURE_WINDOW seconds is answered 429 unchecked.
    """
    verified: set[bytes] = set()
    salt = secrets.token_bytes(16)
    decoys: dict[int, bytes] = {}  # a hash of a random password, per cost factor
    guesses = _Guesses()
    pool = concurrent.futures.ThreadPoolExecutor(BCRYPT_THREADS, thread_name_prefix="bcrypt")
    waiting = 0

    def refused(status: int = 401, retry_after: float = 0) -> web.Response:
        if status == 429:
            return web.Response(
                status=429,
                text="Too many failed logins; try again later.\n",
                headers={hdrs.RETRY_AFTER: str(math.ceil(retry_after))},
            )
        return web.Response(
            status=401,
            text="Unauthorized\n",
            headers={hdrs.WWW_AUTHENTICATE: 'Basic realm="sla-exporter"'},
        )

    async def check(password: str, stored: bytes) -> bool:
        nonlocal waiting
        waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(pool, bcrypt.checkpw, password.encode(), stored)
        finally:
            waiting -= 1

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        config = request[_WEB_CONFIG] = current()
        users = config.basic_auth_users
        if request.path == EVENTS_PATH or request.path in public or not users:
            # The helpdesk authenticates with the support token in the same Authorization
            # header, which cannot also carry basic auth; the handler checks that token. The
            # status page may be public (--web.status-public): it shows nothing secret.
            return await handler(request)
        login, password = _credentials(request.headers.get(hdrs.AUTHORIZATION, ""))
        if login in users:
            stored = users[login].get_secret_value()
            key = hashlib.sha256(salt + f"{login}\0{password}\0{stored}".encode()).digest()
            if key in verified:
                return await handler(request)
        address = request.remote or ""
        wait = guesses.blocked(address)
        if wait > 0:
            return refused(429, wait)
        if waiting >= BCRYPT_QUEUE:
            return refused(429, 1)
        if login in users:
            if await check(password, stored.encode()):
                verified.add(key)
                return await handler(request)
        elif login or password:
            # The same work as for a known user, so the answer's time does not tell them apart.
            cost = _cost(next(iter(users.values())).get_secret_value())
            if cost not in decoys:
                decoys[cost] = await asyncio.get_running_loop().run_in_executor(
                    pool, bcrypt.hashpw, secrets.token_bytes(16), bcrypt.gensalt(cost)
                )
            await check(password, decoys[cost])
        if login or password:
            guesses.failed(address)
        return refused()

    return middleware


def make_app(
    exporter: Exporter, web_config: WebConfig | WebConfigFile | None = None
) -> web.Application:
    """The aiohttp application; there is deliberately no endpoint that probes a given target.

    `web_config` is a fixed configuration, or the file, read again as it changes.
    """
    middlewares: list[Middleware] = []
    public = frozenset({STATUS_PATH}) if exporter.status_public else frozenset()
    if isinstance(web_config, WebConfigFile):
        middlewares.append(_web_config(web_config.current, public))
    elif web_config is not None:
        fixed = web_config
        middlewares.append(_web_config(lambda: fixed, public))
    app = web.Application(middlewares=middlewares)
    app[EXPORTER_KEY] = exporter

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        config: WebConfig | None = request.get(_WEB_CONFIG)
        if config is not None:
            response.headers.update(config.http_server_config.headers)

    app.on_response_prepare.append(on_prepare)
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_put("/-/reload", reload)
    app.router.add_post(EVENTS_PATH, events_handler(exporter.support))
    app.router.add_get(MONTHS_PATH, months)
    app.router.add_get("/api/v1/report", month_report)
    app.router.add_get(STATUS_PATH, status_page)
    return app


GZIP_LEVEL = 1  # on-the-fly compression: ten times smaller, at a fraction of level 6's CPU
GZIP_WBITS = 16 + zlib.MAX_WBITS  # the gzip format (header and trailer), as gzip.compress
GZIP_IN_THREAD = 1 << 18  # bytes: a family this large is compressed in a thread (~1 ms or more)


async def metrics(request: web.Request) -> web.StreamResponse:
    """The registry's metrics (the exporter's own, support), then every service's series.

    At tens of thousands of services that is a large text: it is written a few hundred services
    at a time with the event loop given back in between (a thread would not help: it would hold
    the interpreter lock the loop needs), then sent family by family as it is joined and
    compressed (large families in a thread: zlib lets go of the lock), so that the text is held
    once, as it was written, never joined whole nor beside its compressed copy. The services
    are all written before the first byte goes out: a failure there is still a 500, and the
    answer is one moment's series.
    """
    exporter = request.app[EXPORTER_KEY]
    encoder, content_type = choose_encoder(",".join(request.headers.getall(hdrs.ACCEPT, [])))
    names = set(request.query.getall("name[]", []))
    registry = exporter.registry.restricted_registry(names) if names else exporter.registry
    openmetrics = content_type.startswith("application/openmetrics-text")
    eof = b"# EOF\n"
    head = encoder(registry).removesuffix(eof) if openmetrics else encoder(registry)
    with exporter.aside.running():  # the ledger's flush waits meanwhile
        services = await pausing.run(exporter.services.writing())
    chunks = itertools.chain(
        [head],
        services.chunks(openmetrics, names or None) if services is not None else [],
        [eof] if openmetrics else [],
    )
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: content_type})
    gzipped = gzip_accepted(request.headers.get(hdrs.ACCEPT_ENCODING, ""))
    if gzipped:
        response.headers[hdrs.CONTENT_ENCODING] = "gzip"
    await response.prepare(request)
    if request.method == hdrs.METH_HEAD:
        return response  # the headers alone
    try:
        if not gzipped:
            for chunk in chunks:
                await response.write(chunk)
            return response
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_WBITS)
        for chunk in chunks:
            if len(chunk) >= GZIP_IN_THREAD:
                data = await asyncio.to_thread(compressor.compress, chunk)
            else:
                data = compressor.compress(chunk)
            if data:
                await response.write(data)
        await response.write(compressor.flush())
    except ConnectionResetError:
        pass  # the client went away: nothing to answer, and nothing wrong here
    return response


async def months(request: web.Request) -> web.Response:
    """This location's spans of every service's kept months, for the other locations' pooled
    month (pool.py). Behind the same basic auth and TLS as /metrics."""
    exporter = request.app[EXPORTER_KEY]
    if exporter.ledger is None:
        return web.Response(status=503, text="Not ready: no month ledger yet.\n")
    instance = exporter.replicas.instance if exporter.replicas is not None else ""
    document = months_document(exporter.ledger, exporter.location or "", instance)
    return web.json_response(document)


async def month_report(request: web.Request) -> web.Response:
    """One month of every service span by span, for `sla-report`'s incident list."""
    exporter = request.app[EXPORTER_KEY]
    config, ledger = exporter.config, exporter.ledger
    key = request.query.get("month", "")
    if config is None or ledger is None:
        return web.Response(status=503, text="Not ready: no month ledger yet.\n")
    if not MONTH.match(key):
        return web.Response(status=400, text="month must be YYYY-MM.\n")
    services = {
        name: (service.interval, exporter.windows(name), config.objective(name), config.sla.unknown)
        for name, service in config.services.items()
    }
    misses = support_misses(exporter.support, key) if exporter.support.enabled else []
    document = month_document(
        ledger, exporter.location or "", key, services, misses, exporter.clock.time()
    )
    return web.json_response(document)


async def status_page(request: web.Request) -> web.Response:
    """Each service now, this month and its last 90 days (status.py)."""
    exporter = request.app[EXPORTER_KEY]
    config, ledger = exporter.config, exporter.ledger
    if config is None or ledger is None:
        return web.Response(status=503, text="Not ready: no configuration loaded.\n")
    clock = exporter.clock.time()
    page = status.document(config, ledger, exporter.store, exporter.windows, clock)
    return web.Response(text=status.render(page), content_type="text/html")


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    problems = request.app[EXPORTER_KEY].readiness()
    if problems:
        return web.Response(status=503, text="Not ready: " + "; ".join(problems) + ".\n")
    return web.Response(text="Ready.\n")


def _connected(request: web.Request) -> Callable[[], bool]:
    """Whether the client of `request` is still there to read an answer."""
    return lambda: request.transport is not None and not request.transport.is_closing()


async def reload(request: web.Request) -> web.Response:
    # Coalesced with every other reload asked for meanwhile, and dropped if all of their
    # clients have gone (a burst of fire-and-forget POSTs), see Exporter.reload.
    error = await request.app[EXPORTER_KEY].reload(wanted=_connected(request))
    if error is not None:
        return web.Response(
            status=400, text=f"Reload failed; the running config is kept.\n{error}\n"
        )
    return web.Response(text="Reloaded.\n")


def _ago(timestamp: float, now: float) -> str:
    seconds = max(0, int(now - timestamp))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _local(timestamp: float, zone: ZoneInfo) -> str:
    """A time in the SLA's zone with its offset then, as the dashboards and alerts show it."""
    return datetime.fromtimestamp(int(timestamp), zone).isoformat(sep=" ")


# Links the landing page shows beside its own (--web.link NAME=URL): Prometheus, the demo's
# switches, a team's wiki. The exporter cannot know where those are; whoever starts it does.
LINKS_KEY = web.AppKey("links", list[tuple[str, str]])

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;line-height:1.35}
h1{font-size:1.5rem;margin:0 0 .3rem}
nav{margin-bottom:1rem;display:flex;flex-wrap:wrap;gap:.3rem 1rem}nav a{white-space:nowrap}
.scroll{overflow-x:auto}table{border-collapse:collapse;min-width:100%}
td,th{border-bottom:1px solid #ddd;padding:.4rem .6rem;vertical-align:top;text-align:left}
.up .status{color:#080;font-weight:bold}.down .status{color:#b00;font-weight:bold}
p.down{color:#b00}ul{margin:0;padding-left:1rem}li{margin-bottom:.2rem}
.count{font-weight:bold}.muted{color:#777}td.failures{max-width:36rem}
@media (max-width:40rem){body{margin:.8rem}
td:nth-child(2),th:nth-child(2),td:nth-child(3),th:nth-child(3),
td:nth-child(7),th:nth-child(7),td:nth-child(8),th:nth-child(8){display:none}}
"""


def _failures(state_failures: Iterable[ProbeResult], zone: ZoneInfo, now: float) -> str:
    """Each distinct failure (reason and message) once, with how often and when last, newest
    first: ten timeouts in a row are one line "timeout x10", not ten lines."""
    distinct: dict[tuple[str, str], list[float]] = {}
    for result in state_failures:
        distinct.setdefault((str(result.reason), result.message), []).append(result.timestamp)
    e = html.escape
    items = sorted(distinct.items(), key=lambda item: max(item[1]), reverse=True)
    return "".join(
        f"<li><b>{e(reason)}</b>: {e(message)} "
        f'<span class="count">&times;{len(times)}</span> '
        f'<span class="muted">last {_ago(max(times), now)}, {_local(max(times), zone)}</span></li>'
        for (reason, message), times in items
    )


async def landing(request: web.Request) -> web.Response:
    """One row per service with its last result; names and messages are escaped, never URLs."""
    exporter = request.app[EXPORTER_KEY]
    config = exporter.config
    zone = ZoneInfo(config.sla.timezone if config else "UTC")
    now = time.time()
    e = html.escape
    rows = []
    for name, state in exporter.store.services.items():
        last = state.last
        if last is None:
            status, detail, when = "pending", "", "not probed yet"
        else:
            status = "up" if last.success else "down"
            detail = (
                e(last.message)
                if last.success
                else f"<b>{e(str(last.reason))}</b>: {e(last.message)}"
            )
            when = f"{_ago(last.timestamp, now)} ({last.duration * 1000:.0f} ms)"
        failures = _failures(state.recent_failures, zone, now)
        rows.append(
            f'<tr class="{status}"><td>{e(name)}</td><td>{e(state.service.kind)}</td>'
            f'<td>{e(state.service.description)}</td><td class="status">{status}</td>'
            f"<td>{when}</td><td>{detail}</td><td>{state.probes}</td><td>{state.failures}</td>"
            f'<td class="failures"><ul>{failures}</ul></td></tr>'
        )
    title = e(config.sla.name) if config else "no configuration"
    reload_note = ""
    if exporter.last_reload_error:
        reload_note = (
            "<p class=down>The last reload failed; the previous configuration is still running:"
            f"<pre>{e(exporter.last_reload_error)}</pre></p>"
        )
    links = [
        (STATUS_PATH, "Status page"),
        ("/metrics", "Metrics"),
        ("/-/healthy", "Health"),
        ("/-/ready", "Readiness"),
    ]
    links += [(url, name) for name, url in request.app.get(LINKS_KEY, [])]
    nav = "".join(f'<a href="{e(url)}">{e(name)}</a>' for url, name in links)
    body = f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>SLA exporter: {title}</title><style>{_STYLE}</style></head>
<body><h1>SLA exporter: {title}</h1>
<nav>{nav}</nav>
<p class="muted">Version {e(__version__)}. Times in {e(zone.key)}. Recent failures: the last
{RECENT_FAILURES} failed probes of each service, each distinct failure once.</p>{reload_note}
<div class="scroll"><table><tr><th>Service</th><th>Kind</th><th>Description</th><th>Status</th>
<th>Last probe</th><th>Result</th><th>Probes</th><th>Failures</th><th>Recent failures</th></tr>
{"".join(rows)}
</table></div></body></html>
"""
    return web.Response(text=body, content_type="text/html")


# --------------------------------------------------------------------------------------------
# The listener: file descriptors and time the web side may take from the probes


class ConnectionCap:
    """A protocol factory for the web listener that keeps at most `limit` connections open.

    Without it, anyone who could reach the port opened ~1,100 idle connections before any
    authentication, the process ran out of file descriptors, and the probes failed with
    "Too many open files": false downtime. Connections over the limit are reset as soon as
    they are accepted, so they hold a descriptor for no longer than that. Connections count
    from the TCP accept: with `tls`, the handshake is done here, after the count, so that
    connections in their handshake count too (a listening socket with `ssl=` would hand them
    over only once it is done), and it must end within `handshake_timeout`. The time a
    connection may then stay idle or take to send a request's headers is aiohttp's
    keepalive_timeout (its timer runs from the connection's start and from each answer until
    the next request's headers have arrived in full).

    `server` is the aiohttp low-level server (`AppRunner.server`), itself a protocol factory.
    """

    def __init__(
        self,
        server: Callable[[], asyncio.BaseProtocol],
        limit: int,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.limit = limit
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.open = 0  # connections holding a descriptor now
        self.refused = 0  # connections reset at once because `limit` were open
        self._clock = clock
        self._warned_at = -math.inf
        self._refused_since_warning = 0

    def __call__(self) -> asyncio.Protocol:
        return _Capped(self)

    def refuse(self, transport: asyncio.Transport) -> None:
        self.refused += 1
        self._refused_since_warning += 1
        transport.abort()
        now = self._clock()
        if now - self._warned_at >= 60:  # a flood must not flood the log too
            log.warning(
                "web: %d connections refused since the last warning: %d open, the limit "
                "(--web.max-connections)",
                self._refused_since_warning,
                self.open,
            )
            self._warned_at, self._refused_since_warning = now, 0


class _Capped(asyncio.Protocol):
    """One connection of a ConnectionCap: counted, made TLS, then handed to aiohttp."""

    def __init__(self, cap: ConnectionCap) -> None:
        self._cap = cap
        self._counted = False
        self._handshaking = False
        self._inner: asyncio.Protocol | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # a stream server's transports are
        if self._handshaking:  # called again by the TLS layer, the handshake done
            self._handshaking = False
            self._start(transport)
            return
        cap = self._cap
        if cap.open >= cap.limit:
            cap.refuse(transport)
            return
        cap.open += 1
        self._counted = True
        if cap.tls is None:
            self._start(transport)
            return
        # The TLS layer takes the connection over here, in connection_made: data read after it
        # goes to the handshake. (loop.start_tls swaps the protocol a loop iteration later, and
        # uvloop has read the ClientHello, into this protocol, by then.) It calls
        # connection_made again, with the TLS transport, once the handshake is done.
        loop = asyncio.get_running_loop()
        handshake: asyncio.Future[None] = loop.create_future()
        layer = sslproto.SSLProtocol(
            loop,
            self,
            cap.tls,
            handshake,
            server_side=True,
            ssl_handshake_timeout=math.ceil(cap.handshake_timeout),  # typeshed: whole seconds
        )
        self._handshaking = True
        handshake.add_done_callback(self._handshake_done)
        transport.set_protocol(layer)
        layer.connection_made(transport)

    def _handshake_done(self, handshake: asyncio.Future[None]) -> None:
        if handshake.cancelled() or handshake.exception() is not None:
            # The TLS layer closed the connection; this protocol never hears of it otherwise.
            self._handshaking = False
            self._release()

    def _start(self, transport: asyncio.Transport) -> None:
        inner = self._cap.server()
        assert isinstance(inner, asyncio.Protocol)
        self._inner = inner
        inner.connection_made(transport)

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self._cap.open -= 1

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(exc)
