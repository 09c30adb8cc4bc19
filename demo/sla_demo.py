"""Simulated SLA services on loopback (website, app, API, SMTP with a mailbox behind it read over
IMAP, the sending domain's DNS, SMS gateway) with outage toggles.

`sla-exporter-demo` serves them so a newcomer sees probes, rules and pages without a real target.
Open http://127.0.0.1:9401/-/demo to take a service down and bring it back. Not for production.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import logging
import re
import secrets
import signal
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import yaml
from aiohttp import web

log = logging.getLogger("sla_demo")

SERVICES = ("website", "app", "api", "smtp", "delivery", "sender", "sms")
API_TOKEN = "demo-api-token"  # the demo config reads these from the environment, as you would
SMS_TOKEN = "demo-sms-token"
SMTP_USER, SMTP_PASSWORD = "probe@demo.invalid", "demo-smtp-password"
# The mailbox the delivery probe reads: its address, and its IMAP login (the SMTP password, so
# that the demo needs no other secret file).
INBOX = "inbox@demo.invalid"
DOMAIN = "demo.invalid"
SENDING_HOST = "192.0.2.25"  # the outgoing server the demo domain's SPF record authorises
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


# What "take down" does to each service, and what the probe of examples/demo.yml then sees.
OUTAGES = {
    "website": ("Website and FAQ", "answers 503 Service Unavailable"),
    "app": ("Online application", "login and dashboard answer 502 Bad Gateway"),
    "api": ("API", 'answers 200 with {"status": "degraded"}: the probe checks the JSON'),
    "smtp": ("SMTP relay", "accepts connections and hangs up with 554"),
    "delivery": (
        "SMTP delivery",
        "accepts mail but holds it: nothing reaches the mailbox (a page once two probes miss "
        "it); brought back, the held messages arrive late and are counted as such",
    ),
    "sender": (
        "Sending domain",
        "its DNS publishes no DKIM key and DMARC p=none: a ticket after 15 minutes, no page",
    ),
    "sms": ("SMS gateway", 'answers 200 with {"status": "error"}: carrier link down'),
}
PAGES_FILE: web.AppKey[str] = web.AppKey("pages_file")

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;
color:#222;line-height:1.4}
h1{font-size:1.6rem}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:.5rem;text-align:left;vertical-align:middle}
.up .state{color:#080;font-weight:bold}.down .state{color:#b00;font-weight:bold}
button{font-size:1rem;padding:.3rem .8rem;cursor:pointer}
.down button{background:#080;color:#fff;border:0;border-radius:4px}
.up button{background:#b00;color:#fff;border:0;border-radius:4px}
.note{background:#f4f4f4;padding:.6rem 1rem;border-radius:4px}
code{background:#eee;padding:0 .2rem}
@media (max-width:40rem){td,th{padding:.4rem .3rem}.what{font-size:.9rem}}
"""


async def control_page(request: web.Request) -> web.Response:
    """The demo's switches: take a simulated service down, bring it back, see what it does."""
    down = request.app[DOWN]
    e = html.escape
    rows = "".join(
        f'<tr class="{"down" if name in down else "up"}"><td><b>{e(name)}</b><br>'
        f"<small>{e(OUTAGES[name][0])}</small></td>"
        f'<td class="state">{"DOWN" if name in down else "up"}</td>'
        f'<td class="what">{e(OUTAGES[name][1])}</td><td>'
        f'<form method="post" action="/-/demo/{"up" if name in down else "down"}/{name}">'
        f"<button>{'bring up' if name in down else 'take down'}</button></form></td></tr>"
        for name in SERVICES
    )
    pages = request.app[PAGES_FILE]
    where = f"in <code>{e(pages)}</code>" if pages else "in the demo's log"
    text = f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Demo services</title><style>{_STYLE}</style></head>
<body><h1>Demo services</h1>
<p>Simulated stand-ins for the services of the Mailpro SLA (SMTP with the mail it delivers and
the sending domain it publishes), probed by the exporter.
<b>Take down</b> makes a service fail the way the table says, until you bring it back:
nothing else changes, so what follows is what a real outage would cause.</p>
<table><tr><th>Service</th><th>Now</th><th class="what">When down, it</th><th></th></tr>
{rows}</table>
<p class="note">The exporter probes each service every 5 to 15 seconds. Three failed probes in a
row page on-call (<code>SLAServiceDown</code>, within a minute); bringing the service back
resolves the page. The pages arrive {where}, one block each.</p>
</body></html>
"""
    return web.Response(text=text, content_type="text/html")


async def toggle(request: web.Request) -> web.Response:
    service = request.match_info["service"]
    if service not in SERVICES:
        raise web.HTTPNotFound(text=f"no demo service {html.escape(service)}")
    down = request.app[DOWN]
    if request.match_info["state"] == "down":
        down.add(service)
    else:
        down.discard(service)
        if service == "delivery" and MAILBOX in request.app:
            request.app[MAILBOX].release()  # the held messages arrive, late
    log.info("demo service %s is now %s", service, request.match_info["state"])
    if "json" in request.headers.get("Accept", ""):
        return web.json_response({"down": sorted(down)})
    raise web.HTTPSeeOther("/-/demo")


PAGES: web.AppKey[list[dict[str, Any]]] = web.AppKey("pages")
PAGER: web.AppKey[Pager] = web.AppKey("pager")


def _parse_time(text: str) -> datetime | None:
    """Alertmanager's RFC 3339 time; None for its zero time (an alert with no end yet)."""
    if not text or text.startswith("0001-"):
        return None
    # Go writes up to 9 fractional digits; Python reads 6.
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _duration(seconds: float) -> str:
    """4 min, 1 h 5 min, 40 s: how long an alert lasted, as a person says it."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"


class Pager:
    """What an on-call person's pager shows: each page once, as a block, in the SLA's zone.

    Alertmanager sends a group's whole state with every notification of the group: an alert
    resolved earlier rides along again when another alert of its group fires, and a firing one
    comes back every repeat_interval. A pager keys on the alert and tells only what changed
    (PagerDuty's dedup_key does the same): a firing alert once, a repeat as a reminder, its
    resolution exactly once.
    """

    def __init__(self, path: Path | None, zone: str) -> None:
        self.path = path
        self.zone = ZoneInfo(zone)
        self.seen: set[tuple[str, str, str]] = set()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    def local(self, when: datetime) -> str:
        """A time in the SLA's zone with its offset at that time: 2026-12-04 05:50:42 +01:00."""
        return when.astimezone(self.zone).isoformat(sep=" ", timespec="seconds")

    def block(self, route: str, alert: dict[str, Any]) -> str | None:
        """The text of one page, or None if the pager has already shown this exact news."""
        labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
        status = alert.get("status", "?")
        starts, ends = _parse_time(alert.get("startsAt", "")), _parse_time(alert.get("endsAt", ""))
        key = (alert.get("fingerprint") or repr(sorted(labels.items())), str(starts), status)
        repeat = key in self.seen
        self.seen.add(key)
        if repeat and status == "resolved":
            return None
        name, service = labels.get("alertname", "?"), labels.get("sla_service", "")
        severity = labels.get("severity", "")
        now = self.local(datetime.now(UTC))
        head = f"{now}  {route}  {status.upper()}{' (reminder)' if repeat else ''}  {name}"
        head += f"{' ' + service if service else ''}{f' ({severity})' if severity else ''}"
        lines = [head]
        if status == "resolved" and starts is not None and ends is not None:
            lasted = _duration((ends - starts).total_seconds())
            if name == "SLAServiceDown" and service:
                lines.append(
                    f"  {service} was down for {lasted}, from {self.local(starts)}; "
                    f"back since {self.local(ends)}."
                )
            else:
                lines.append(
                    f"  Over: fired for {lasted}, from {self.local(starts)} "
                    f"to {self.local(ends)}. It had said: {annotations.get('summary', '')}"
                )
        else:
            lines.append(f"  {annotations.get('summary', '')}")
            if annotations.get("description"):
                lines.append(f"  {annotations['description']}")
            if starts is not None:
                lines.append(f"  Since:       {self.local(starts)}")
            if annotations.get("budget_left"):
                lines.append(f"  Budget left: {annotations['budget_left']}")
        if annotations.get("runbook_url"):
            lines.append(f"  Runbook:     {annotations['runbook_url']}")
        return "\n".join(lines) + "\n\n"

    def write(self, text: str) -> None:
        if self.path is not None:
            with self.path.open("a") as out:
                out.write(text)


async def receive_alerts(request: web.Request) -> web.Response:
    """Alertmanager's webhook: keep each alert it sent, and show each page once as a block."""
    payload = await request.json()
    route = request.match_info["route"]
    pager = request.app[PAGER]
    for alert in payload.get("alerts", []):
        labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
        status = alert.get("status", "?")
        request.app[PAGES].append(
            {
                "route": route,
                "status": status,
                "labels": labels,
                "annotations": annotations,
                "startsAt": alert.get("startsAt", ""),
                "endsAt": alert.get("endsAt", ""),
            }
        )
        text = pager.block(route, alert)
        if text is not None:
            pager.write(text)
            log.info("%s", text.rstrip())
    return web.Response(text="ok")


async def list_alerts(request: web.Request) -> web.Response:
    return web.json_response(request.app[PAGES])


def make_receiver(pages_file: Path | None = None, zone: str = "UTC") -> web.Application:
    """A webhook receiver standing in for the pager and the ticket queue.

    GET / lists every alert Alertmanager sent (JSON, for tests); `pages_file` gets each page
    once, as on-call would read it, with times in `zone`.
    """
    app = web.Application()
    app[PAGES] = []
    app[PAGER] = Pager(pages_file, zone)
    app.router.add_post("/{route:[a-z-]+}", receive_alerts)
    app.router.add_get("/", list_alerts)
    return app


def make_app(
    down: set[str], pages_file: str = "", mailbox: Mailbox | None = None
) -> web.Application:
    app = web.Application()
    app[DOWN] = down
    if mailbox is not None:
        app[MAILBOX] = mailbox
    app[PAGES_FILE] = pages_file
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
    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if INBOX in envelope.rcpt_tos:
            self.mailbox.accept(bytes(envelope.original_content or envelope.content))
        return "250 Message accepted for delivery"


class Mailbox:
    """The demo's one mailbox: messages by UID; held back while "delivery" is down. Each is
    DKIM-signed for demo.invalid as it arrives, as the platform's outgoing server would sign it."""

    def __init__(self, down: set[str], dkim_key: bytes | None = None) -> None:
        self.down = down
        self.dkim_key = dkim_key  # PEM private key of selector s1
        self.messages: dict[int, bytes] = {}
        self.held: list[bytes] = []
        self.next_uid = 1
        self.changed = asyncio.Event()  # set on every new message, for IDLE

    def accept(self, message: bytes) -> None:
        if self.dkim_key is not None:
            import dkim

            headers = [b"from", b"to", b"subject", b"date", b"message-id"]
            signature = dkim.sign(
                message, b"s1", DOMAIN.encode(), self.dkim_key, include_headers=headers
            )
            message = signature + message
        self.held.append(message)
        self.release()

    def release(self) -> None:
        """Deliver what is held, unless delivery is down."""
        if "delivery" in self.down:
            return
        for message in self.held:
            self.messages[self.next_uid] = message
            self.next_uid += 1
        if self.held:
            self.held.clear()
            self.changed.set()
            self.changed = asyncio.Event()


MAILBOX: web.AppKey[Mailbox] = web.AppKey("mailbox")


async def _smtp_server(
    host: str, port: int, tls: ssl.SSLContext, down: set[str], mailbox: Mailbox
) -> asyncio.Server:
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()

    def factory() -> asyncio.Protocol:
        if "smtp" in down:
            # aiosmtpd has no switch for a refusing banner; an outage here is a server that
            # accepts and hangs up, which the probe reports as a protocol failure.
            return _HangUp()
        return SMTP(
            _Handler(mailbox),
            hostname="smtp.demo.invalid",
            tls_context=tls,
            require_starttls=True,
            authenticator=_Authenticator(),
        )

    return await loop.create_server(factory, host, port)


# --------------------------------------------------------------------------------------------
# IMAP: the few commands a mail client (and the delivery probe) uses to find, read and delete
# messages, over implicit TLS: CAPABILITY, LOGIN, SELECT, UID SEARCH HEADER, UID FETCH (a
# header field or the whole message), UID STORE +FLAGS (\Deleted), UID EXPUNGE, IDLE, NOOP,
# LOGOUT. A stand-in for the demo, not a server for anything else.

_IMAP_COMMAND = re.compile(r"^(\S+) (?:UID )?(\w+)(?: (.*))?$", re.IGNORECASE)


def _uid_set(text: str, known: Sequence[int]) -> list[int]:
    uids: list[int] = []
    top = max(known, default=0)
    for part in text.split(","):
        low, _, high = part.partition(":")
        first = top if low == "*" else int(low)
        last = first if not high else (top if high == "*" else int(high))
        uids += [u for u in known if min(first, last) <= u <= max(first, last)]
    return uids


def _header(message: bytes, name: str) -> str:
    import email

    parsed = email.message_from_bytes(message)
    return str(parsed.get(name, ""))


async def _imap_session(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mailbox: Mailbox
) -> None:
    def send(line: str | bytes) -> None:
        writer.write((line.encode() if isinstance(line, str) else line) + b"\r\n")

    send("* OK [CAPABILITY IMAP4rev1 IDLE UIDPLUS] demo IMAP ready")
    selected = False
    while line := (await reader.readline()).decode(errors="replace").rstrip("\r\n"):
        match = _IMAP_COMMAND.match(line)
        if match is None:
            send("* BAD not understood")
            continue
        tag, command, args = match[1], match[2].upper(), match[3] or ""
        uid = " UID " in f" {line.upper()} "
        if command == "CAPABILITY":
            send("* CAPABILITY IMAP4rev1 IDLE UIDPLUS")
        elif command == "LOGIN":
            user, _, password = args.partition(" ")
            if user.strip('"') != INBOX or password.strip('"') != SMTP_PASSWORD:
                send(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.")
                continue
        elif command == "SELECT":
            selected = True
            send(f"* {len(mailbox.messages)} EXISTS")
            send(f"* OK [UIDNEXT {mailbox.next_uid}] next")
        elif command == "SEARCH" and selected:
            words = args.split()
            field, value = (words[1], words[2]) if len(words) >= 3 else ("", "")
            found = [u for u, m in mailbox.messages.items() if value in _header(m, field)]
            send("* SEARCH" + "".join(f" {u}" for u in found))
        elif command == "FETCH" and selected and uid:
            which, _, items = args.partition(" ")
            whole = "BODY.PEEK[]" in items.upper()
            for n, u in enumerate(_uid_set(which, list(mailbox.messages)), 1):
                message = mailbox.messages[u]
                if whole:
                    data, item = message, "BODY[]"
                else:
                    value = _header(message, "X-SLA-Probe")
                    data = f"X-SLA-Probe: {value}\r\n\r\n".encode() if value else b"\r\n"
                    item = "BODY[HEADER.FIELDS (X-SLA-PROBE)]"
                send(f"* {n} FETCH (UID {u} {item} {{{len(data)}}}".encode())
                writer.write(data)
                send(")")
        elif command == "STORE" and selected:
            pass  # flags are not kept: the expunge that follows names its UIDs
        elif command == "EXPUNGE" and selected and uid:
            for u in _uid_set(args, list(mailbox.messages)):
                del mailbox.messages[u]
        elif command == "IDLE":
            send("+ idling")
            changed = asyncio.ensure_future(mailbox.changed.wait())
            done = asyncio.ensure_future(reader.readline())
            await asyncio.wait({changed, done}, return_when=asyncio.FIRST_COMPLETED)
            if changed.done():
                send(f"* {len(mailbox.messages)} EXISTS")
                await writer.drain()
                await done
            changed.cancel()
        elif command == "LOGOUT":
            send("* BYE")
            send(f"{tag} OK LOGOUT completed")
            break
        elif command != "NOOP":
            send(f"{tag} BAD {command} not supported here")
            continue
        send(f"{tag} OK {command} completed")
        await writer.drain()
    writer.close()


async def _imap_server(
    host: str, port: int, tls: ssl.SSLContext, mailbox: Mailbox
) -> asyncio.Server:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _imap_session(reader, writer, mailbox)
        except (ConnectionError, ssl.SSLError, ValueError, KeyError):
            writer.close()

    return await asyncio.start_server(serve, host, port, ssl=tls)


# --------------------------------------------------------------------------------------------
# DNS: the sending domain's records, served by dnslib as an authoritative server would.


def _dns_zone(down: set[str], dkim_key: str) -> list[Any]:
    from dnslib import RR

    def txt(name: str, text: str) -> str:
        parts = " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))
        return f"{name}. 60 IN TXT {parts}\n"

    zone = f"{DOMAIN}. 60 IN MX 10 mx.{DOMAIN}.\nmx.{DOMAIN}. 60 IN A 127.0.0.1\n"
    zone += txt(DOMAIN, f"v=spf1 ip4:{SENDING_HOST} -all")
    if "sender" in down:
        zone += txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=none")
    else:
        zone += txt(f"s1._domainkey.{DOMAIN}", f"v=DKIM1; k=rsa; p={dkim_key}")
        zone += txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=reject")
    return list(RR.fromZone(zone))


def _dkim_keys() -> tuple[bytes, str]:
    """A new DKIM key pair for the demo domain: the private key (PEM) and the p= value."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, base64.b64encode(der).decode()


def _dns_servers(host: str, port: int, down: set[str], dkim_key: str) -> list[Any]:
    from dnslib import RCODE
    from dnslib.server import BaseResolver, DNSLogger, DNSServer

    class Resolver(BaseResolver):  # type: ignore[misc]  # dnslib is untyped
        def resolve(self, request: Any, handler: Any) -> Any:
            reply = request.reply()
            reply.header.aa = 1
            reply.header.ad = 0  # the zone is not signed: nothing to call validated
            records = _dns_zone(down, dkim_key)
            for rr in records:
                if rr.rname == request.q.qname and rr.rtype == request.q.qtype:
                    reply.add_answer(rr)
            if not reply.rr and not any(rr.rname == request.q.qname for rr in records):
                reply.header.rcode = RCODE.NXDOMAIN
            return reply

    quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data")
    servers = [
        DNSServer(Resolver(), host, port, logger=quiet),
        DNSServer(Resolver(), host, port, tcp=True, logger=quiet),
    ]
    for server in servers:
        server.start_thread()
    return servers


class _HangUp(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"554 5.3.2 demo outage: service unavailable\r\n")
        transport.close()


async def run(
    host: str,
    http_port: int,
    smtp_port: int,
    receiver_port: int,
    ca_file: Path,
    pages_file: Path | None = None,
    zone: str = "UTC",
    services: bool = True,
    imap_port: int = 9403,
    dns_port: int = 9404,
) -> None:
    """Serve the alert receiver, and unless `services` is False the demo services too."""
    runners = []
    receiver = web.AppRunner(make_receiver(pages_file, zone), access_log=None)
    await receiver.setup()
    await web.TCPSite(receiver, host, receiver_port).start()
    runners.append(receiver)
    servers: list[asyncio.Server] = []
    dns: list[Any] = []
    if services:
        import trustme

        ca = trustme.CA()
        ca_file.parent.mkdir(parents=True, exist_ok=True)
        ca.cert_pem.write_to_path(str(ca_file))
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost", host).configure_cert(tls)
        down: set[str] = set()
        private_key, public_key = _dkim_keys()
        mailbox = Mailbox(down, private_key)
        runner = web.AppRunner(make_app(down, str(pages_file or ""), mailbox), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, http_port).start()
        runners.append(runner)
        servers.append(await _smtp_server(host, smtp_port, tls, down, mailbox))
        servers.append(await _imap_server(host, imap_port, tls, mailbox))
        dns = _dns_servers(host, dns_port, down, public_key)
        log.info(
            "demo services on http://%s:%d/, smtp://%s:%d, imaps://%s:%d and DNS on %s:%d "
            "(CA in %s); toggle at /-/demo",
            host,
            http_port,
            host,
            smtp_port,
            host,
            imap_port,
            host,
            dns_port,
            ca_file,
        )
    log.info("alert webhooks received on port %d; pages in %s", receiver_port, pages_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
    for dns_server in dns:
        dns_server.stop()
    for runner in runners:
        await runner.cleanup()


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
    parser.add_argument("--imap-port", type=int, default=9403, help="the demo mailbox (IMAPS)")
    parser.add_argument("--dns-port", type=int, default=9404, help="the sending domain's DNS")
    parser.add_argument("--receiver-port", type=int, default=9095, help="alert webhook sink")
    parser.add_argument("--ca-file", type=Path, default=Path("run/demo-ca.pem"))
    parser.add_argument(
        "--print-alertmanager-config",
        type=Path,
        metavar="FILE",
        help="print FILE made fit for the demo (webhooks to the receiver, no e-mail) and exit",
    )
    parser.add_argument(
        "--pages-file",
        type=Path,
        default=None,
        help="write each page and ticket the receiver gets here, once, as a readable block",
    )
    parser.add_argument(
        "--timezone",
        default="UTC",
        help="IANA zone the pages show times in: the SLA's (default: %(default)s)",
    )
    parser.add_argument(
        "--receiver-only",
        action="store_true",
        help="serve only the alert receiver, no demo services (for your own SLA file)",
    )
    args = parser.parse_args(argv)
    if args.print_alertmanager_config:
        print(local_alertmanager_config(args.print_alertmanager_config, args.receiver_port), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # aiosmtpd logs every connection of every SMTP probe at INFO, and a deprecation of its own
    # API at WARNING with each login: hundreds of lines an hour that buried the demo's own.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    asyncio.run(
        run(
            args.host,
            args.http_port,
            args.smtp_port,
            args.receiver_port,
            args.ca_file,
            args.pages_file,
            args.timezone,
            services=not args.receiver_only,
            imap_port=args.imap_port,
            dns_port=args.dns_port,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
