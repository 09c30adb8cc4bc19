"""Simulated SLA services on loopback (website, app, API, SMTP, SMS gateway) with outage toggles.

`sla-exporter-demo` serves them so a newcomer sees probes, rules and pages without a real target.
Open http://127.0.0.1:9401/-/demo to take a service down and bring it back. Not for production.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import logging
import secrets
import signal
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from aiohttp import web

log = logging.getLogger("sla_exporter.demo")

SERVICES = ("website", "app", "api", "smtp", "sms")
API_TOKEN = "demo-api-token"  # the demo config reads these from the environment, as you would
SMS_TOKEN = "demo-sms-token"
SMTP_USER, SMTP_PASSWORD = "probe@demo.invalid", "demo-smtp-password"
DOWN: web.AppKey[set[str]] = web.AppKey("down")


def _down(request: web.Request, service: str) -> bool:
    return service in request.app[DOWN]


async def website(request: web.Request) -> web.Response:
    if _down(request, "website"):
        return web.Response(status=503, text="Service Unavailable")
    return web.Response(
        text="<html><title>Mailpro demo</title><body>Mailpro demo: powerful marketing software."
        "</body></html>",
        content_type="text/html",
    )


async def login(request: web.Request) -> web.Response:
    if _down(request, "app"):
        return web.Response(status=502, text="Bad Gateway")
    form = await request.post()
    if form.get("user") != "demo" or form.get("password") != "demo":
        return web.Response(status=401, text="wrong credentials")
    response = web.HTTPFound("/app/dashboard")
    response.set_cookie("session", secrets.token_hex(8))
    raise response


async def dashboard(request: web.Request) -> web.Response:
    if _down(request, "app"):
        return web.Response(status=502, text="Bad Gateway")
    if "session" not in request.cookies:
        raise web.HTTPFound("/app/login")
    return web.Response(text="<h1>Dashboard</h1><p>Campaigns: 3</p>", content_type="text/html")


async def api_ping(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != f"Bearer {API_TOKEN}":
        return web.json_response({"status": "unauthorized"}, status=401)
    if _down(request, "api"):
        return web.json_response({"status": "degraded"}, status=200)
    return web.json_response({"status": "ok"})


async def sms_status(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != f"Bearer {SMS_TOKEN}":
        return web.json_response({"error": "invalid token"}, status=401)
    if _down(request, "sms"):
        # Gateways report trouble in the payload with HTTP 200: the probe must notice.
        return web.json_response({"status": "error", "error": "carrier link down"})
    return web.json_response({"status": "ok", "balance": 1000})


async def control_page(request: web.Request) -> web.Response:
    down = request.app[DOWN]
    rows = "".join(
        f"<tr><td>{name}</td><td>{'DOWN' if name in down else 'up'}</td><td>"
        f'<form method="post" action="/-/demo/{"up" if name in down else "down"}/{name}">'
        f"<button>{'bring up' if name in down else 'take down'}</button></form></td></tr>"
        for name in SERVICES
    )
    return web.Response(
        text=f"<html><body><h1>Demo services</h1><table>{rows}</table></body></html>",
        content_type="text/html",
    )


async def toggle(request: web.Request) -> web.Response:
    service = request.match_info["service"]
    if service not in SERVICES:
        raise web.HTTPNotFound(text=f"no demo service {html.escape(service)}")
    down = request.app[DOWN]
    if request.match_info["state"] == "down":
        down.add(service)
    else:
        down.discard(service)
    log.info("demo service %s is now %s", service, request.match_info["state"])
    if "json" in request.headers.get("Accept", ""):
        return web.json_response({"down": sorted(down)})
    raise web.HTTPSeeOther("/-/demo")


PAGES: web.AppKey[list[dict[str, Any]]] = web.AppKey("pages")


async def receive_alerts(request: web.Request) -> web.Response:
    """Alertmanager's webhook: keep each notification and print it as on-call would read it."""
    payload = await request.json()
    route = request.match_info["route"]
    for alert in payload.get("alerts", []):
        labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
        status = alert.get("status", "?")
        request.app[PAGES].append(
            {"route": route, "status": status, "labels": labels, "annotations": annotations}
        )
        log.warning(
            "[%s] %s %s %s: %s",
            route,
            status.upper(),
            labels.get("alertname"),
            labels.get("sla_service", ""),
            annotations.get("summary", ""),
        )
    return web.Response(text="ok")


async def list_alerts(request: web.Request) -> web.Response:
    return web.json_response(request.app[PAGES])


def make_receiver() -> web.Application:
    """A webhook receiver standing in for the pager and the ticket queue."""
    app = web.Application()
    app[PAGES] = []
    app.router.add_post("/{route:[a-z-]+}", receive_alerts)
    app.router.add_get("/", list_alerts)
    return app


def make_app(down: set[str]) -> web.Application:
    app = web.Application()
    app[DOWN] = down
    app.router.add_get("/", website)
    app.router.add_get("/faq", website)
    app.router.add_post("/app/login", login)
    app.router.add_get("/app/dashboard", dashboard)
    app.router.add_get("/api/v1/ping", api_ping)
    app.router.add_get("/sms/api/v1/status", sms_status)
    app.router.add_get("/-/demo", control_page)
    app.router.add_post("/-/demo/{state:up|down}/{service}", toggle)
    return app


class _Authenticator:
    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = (
            isinstance(auth, LoginPassword)
            and auth.login.decode() == SMTP_USER
            and auth.password.decode() == SMTP_PASSWORD
        )
        return AuthResult(success=ok)


class _Handler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 Message accepted for delivery"


async def _smtp_server(host: str, port: int, tls: ssl.SSLContext, down: set[str]) -> asyncio.Server:
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()

    def factory() -> asyncio.Protocol:
        if "smtp" in down:
            # aiosmtpd has no switch for a refusing banner; an outage here is a server that
            # accepts and hangs up, which the probe reports as a protocol failure.
            return _HangUp()
        return SMTP(
            _Handler(),
            hostname="smtp.demo.invalid",
            tls_context=tls,
            require_starttls=True,
            authenticator=_Authenticator(),
        )

    return await loop.create_server(factory, host, port)


class _HangUp(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"554 5.3.2 demo outage: service unavailable\r\n")
        transport.close()


async def run(host: str, http_port: int, smtp_port: int, receiver_port: int, ca_file: Path) -> None:
    import trustme

    ca = trustme.CA()
    ca_file.parent.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(ca_file))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", host).configure_cert(tls)

    down: set[str] = set()
    runner = web.AppRunner(make_app(down), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, http_port).start()
    receiver = web.AppRunner(make_receiver(), access_log=None)
    await receiver.setup()
    await web.TCPSite(receiver, host, receiver_port).start()
    smtp = await _smtp_server(host, smtp_port, tls, down)
    log.info(
        "demo services on http://%s:%d/ and smtp://%s:%d (CA in %s); toggle at /-/demo; "
        "alert webhooks received on port %d",
        host,
        http_port,
        host,
        smtp_port,
        ca_file,
        receiver_port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    smtp.close()
    await runner.cleanup()
    await receiver.cleanup()


def local_alertmanager_config(source: Path, receiver_port: int, fast: bool = False) -> str:
    """The shipped Alertmanager config made fit for loopback: webhooks to our receiver, no e-mail.

    The e-mail receivers name a relay on the internet, which a demo or a test must not reach.
    `fast` groups and repeats within seconds, for tests that wait for a notification.
    """
    config = yaml.safe_load(source.read_text())
    if fast:
        config["route"].update(group_wait="1s", group_interval="1s")
    config["templates"] = [str(source.parent.resolve() / t) for t in config.get("templates", [])]
    for receiver in config["receivers"]:
        receiver.pop("email_configs", None)
        for hook in receiver.get("webhook_configs", []):
            path = urlsplit(hook["url"]).path
            hook["url"] = f"http://127.0.0.1:{receiver_port}{path}"
    return str(yaml.safe_dump(config, sort_keys=False))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sla-exporter-demo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=9401)
    parser.add_argument("--smtp-port", type=int, default=9402)
    parser.add_argument("--receiver-port", type=int, default=9095, help="alert webhook sink")
    parser.add_argument("--ca-file", type=Path, default=Path("run/demo-ca.pem"))
    parser.add_argument(
        "--print-alertmanager-config",
        type=Path,
        metavar="FILE",
        help="print FILE made fit for the demo (webhooks to the receiver, no e-mail) and exit",
    )
    args = parser.parse_args(argv)
    if args.print_alertmanager_config:
        print(local_alertmanager_config(args.print_alertmanager_config, args.receiver_port), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(run(args.host, args.http_port, args.smtp_port, args.receiver_port, args.ca_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
