"""HTTP endpoints: /metrics, health, reload and a landing page; optional TLS and basic auth."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import html
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import bcrypt
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from prometheus_client.exposition import choose_encoder, gzip_accepted

from . import __version__
from .exporter import Exporter
from .pool import MONTHS_PATH, months_document
from .report import month_document
from .support_web import EVENTS_PATH, events_handler
from .webconfig import WebConfig, WebConfigFile

EXPORTER_KEY = web.AppKey("exporter", Exporter)
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
    app.router.add_get(MONTHS_PATH, months)
    app.router.add_get("/api/v1/report", month_report)
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


async def months(request: web.Request) -> web.Response:
    """This location's spans of every service's kept months, for the other locations' pooled
    month (pool.py). Behind the same basic auth and TLS as /metrics."""
    exporter = request.app[EXPORTER_KEY]
    if exporter.ledger is None:
        return web.Response(status=503, text="Not ready: no month ledger yet.\n")
    document = months_document(exporter.ledger, exporter.location or "")
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
    return web.json_response(month_document(ledger, exporter.location or "", key, services))


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    problems = request.app[EXPORTER_KEY].readiness()
    if problems:
        return web.Response(status=503, text="Not ready: " + "; ".join(problems) + ".\n")
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


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def landing(request: web.Request) -> web.Response:
    """One row per service with its last result; names and messages are escaped, never URLs."""
    exporter = request.app[EXPORTER_KEY]
    config = exporter.config
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
        failures = "".join(
            f"<li>{_utc(f.timestamp)} <b>{e(str(f.reason))}</b>: {e(f.message)}</li>"
            for f in reversed(state.recent_failures)
        )
        rows.append(
            f'<tr class="{status}"><td>{e(name)}</td><td>{e(state.service.kind)}</td>'
            f"<td>{e(state.service.description)}</td><td>{status}</td><td>{when}</td>"
            f"<td>{detail}</td><td>{state.probes}</td><td>{state.failures}</td>"
            f"<td><ul>{failures}</ul></td></tr>"
        )
    title = e(config.sla.name) if config else "no configuration"
    reload_note = ""
    if exporter.last_reload_error:
        reload_note = (
            "<p class=down>The last reload failed; the previous configuration is still running:"
            f"<pre>{e(exporter.last_reload_error)}</pre></p>"
        )
    body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>SLA exporter: {title}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}.up td:nth-child(4){{color:#080}}
.down td:nth-child(4),p.down{{color:#b00}}ul{{margin:0;padding-left:1em}}</style></head>
<body><h1>SLA exporter: {title}</h1>
<p>Version {e(__version__)}. <a href="/metrics">Metrics</a> &middot;
<a href="/-/healthy">Health</a> &middot; <a href="/-/ready">Readiness</a></p>{reload_note}
<table><tr><th>Service</th><th>Kind</th><th>Description</th><th>Status</th><th>Last probe</th>
<th>Result</th><th>Probes</th><th>Failures</th><th>Recent failures</th></tr>
{"".join(rows)}
</table></body></html>
"""
    return web.Response(text=body, content_type="text/html")
