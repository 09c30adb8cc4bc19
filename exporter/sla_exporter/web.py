"""HTTP endpoints: /metrics, health, reload and a landing page; optional TLS and basic auth."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import html
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

import bcrypt
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from prometheus_client.exposition import choose_encoder, gzip_accepted

from . import __version__
from .exporter import Exporter
from .probes.base import ProbeResult
from .store import RECENT_FAILURES
from .support_web import EVENTS_PATH, events_handler
from .webconfig import WebConfig, WebConfigFile

EXPORTER_KEY = web.AppKey("exporter", Exporter)
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


def _web_config(current: Callable[[], WebConfig]) -> Middleware:
    """Take the web config as it is now, once per request (reading the file is the work of
    `current`), and check HTTP basic auth against its bcrypt hashes (no users: no check),
    remembering verified pairs.

    bcrypt costs tens of milliseconds by design; Prometheus scrapes every 15 s with the same
    credentials, so like the Prometheus exporter-toolkit we cache successful checks (keyed by a
    hash of the pair and the stored hash, never the password itself: a changed hash is checked
    anew).
    """
    verified: set[bytes] = set()
    salt = secrets.token_bytes(16)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        config = request[_WEB_CONFIG] = current()
        users = config.basic_auth_users
        if request.path == EVENTS_PATH or not users:
            # The helpdesk authenticates with the support token in the same Authorization
            # header, which cannot also carry basic auth; the handler checks that token.
            return await handler(request)
        login, password = _credentials(request.headers.get(hdrs.AUTHORIZATION, ""))
        if login in users:
            stored = users[login].get_secret_value()
            key = hashlib.sha256(salt + f"{login}\0{password}\0{stored}".encode()).digest()
            if key in verified or bcrypt.checkpw(password.encode(), stored.encode()):
                verified.add(key)
                return await handler(request)
        return web.Response(
            status=401,
            text="Unauthorized\n",
            headers={hdrs.WWW_AUTHENTICATE: 'Basic realm="sla-exporter"'},
        )

    return middleware


def make_app(
    exporter: Exporter, web_config: WebConfig | WebConfigFile | None = None
) -> web.Application:
    """The aiohttp application; there is deliberately no endpoint that probes a given target.

    `web_config` is a fixed configuration, or the file, read again as it changes.
    """
    middlewares: list[Middleware] = []
    if isinstance(web_config, WebConfigFile):
        middlewares.append(_web_config(web_config.current))
    elif web_config is not None:
        fixed = web_config
        middlewares.append(_web_config(lambda: fixed))
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
    return app


GZIP_LEVEL = 1  # on-the-fly compression: ten times smaller, at a fraction of level 6's CPU


async def metrics(request: web.Request) -> web.Response:
    """The registry's metrics (the exporter's own, support), then every service's series.

    At tens of thousands of services that is a large text: it is written a few hundred services
    at a time with the event loop given back in between (a thread would not help: it would hold
    the interpreter lock the loop needs), and compressed in a thread (zlib lets go of the lock).
    """
    exporter = request.app[EXPORTER_KEY]
    encoder, content_type = choose_encoder(",".join(request.headers.getall(hdrs.ACCEPT, [])))
    names = set(request.query.getall("name[]", []))
    registry = exporter.registry.restricted_registry(names) if names else exporter.registry
    openmetrics = content_type.startswith("application/openmetrics-text")
    eof = b"# EOF\n"
    head = encoder(registry).removesuffix(eof) if openmetrics else encoder(registry)
    services = await exporter.services.render(openmetrics, names or None)
    body = b"".join((head, services, eof if openmetrics else b""))
    headers = {hdrs.CONTENT_TYPE: content_type}
    if gzip_accepted(request.headers.get(hdrs.ACCEPT_ENCODING, "")):
        body = await asyncio.to_thread(gzip.compress, body, GZIP_LEVEL, mtime=0)
        headers[hdrs.CONTENT_ENCODING] = "gzip"
    return web.Response(body=body, headers=headers)


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[EXPORTER_KEY].config is None:
        return web.Response(status=503, text="Not ready: no configuration loaded.\n")
    return web.Response(text="Ready.\n")


async def reload(request: web.Request) -> web.Response:
    error = await request.app[EXPORTER_KEY].reload()
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
STATUS_PATH = "/status"  # a status page for customers: a later issue adds it; linked once it exists

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;line-height:1.35}
h1{font-size:1.5rem;margin:0 0 .3rem}nav{margin-bottom:1rem}nav a{margin-right:1rem}
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
    links = [("/metrics", "Metrics"), ("/-/healthy", "Health"), ("/-/ready", "Readiness")]
    if any(r.canonical == STATUS_PATH for r in request.app.router.resources()):
        links.insert(0, (STATUS_PATH, "Status page"))
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
