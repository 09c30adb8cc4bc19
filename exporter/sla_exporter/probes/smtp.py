"""The smtp probe kind: banner, EHLO, STARTTLS or implicit TLS, AUTH, a test message, QUIT."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPRecipientRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from ..config import TLS, SMTPProbe
from ..secrets import reveal
from .base import ProbeFailed, Reason, Trace, bounded, certificate_expiry, network_failure

# aiosmtplib's own per-command deadline, a backstop only: the runner's timeout (at most the
# service interval) is the authority and normally fires first, naming the phase it cut.
COMMAND_TIMEOUT = 120.0
SERVER_TEXT = 120  # characters of a server reply quoted in a failure message

# The commands each phase sends, to name them in failure messages.
_COMMANDS = {
    "banner": "banner",
    "ehlo": "EHLO",
    "starttls": "STARTTLS",
    "auth": "AUTH",
    "send": "MAIL",
    "quit": "QUIT",
}


async def probe(config: SMTPProbe, trace: Trace) -> str:
    """Walk one SMTP dialogue over a fresh connection; return what was checked."""
    starttls = config.effective_starttls  # always "off" with implicit_tls (config checks)
    server_name = config.tls.server_name or config.host
    context = None
    if config.implicit_tls or starttls != "off":
        context = await asyncio.to_thread(_tls_context, config.tls, _on_handshake(trace))

    # local_hostname is explicit so aiosmtplib never calls the blocking socket.getfqdn(), and
    # start_tls=False so it never upgrades (or skips upgrading) behind our back.
    smtp = aiosmtplib.SMTP(
        hostname=server_name,  # with `sock`, used only as the TLS server name
        local_hostname=config.ehlo_name,
        timeout=COMMAND_TIMEOUT,
        use_tls=config.implicit_tls,
        start_tls=False,
        tls_context=context,
    )
    sock = await _open_socket(config.host, config.effective_port, trace)
    steps: list[str] = []
    encrypted = config.implicit_tls
    try:
        # With implicit TLS the handshake hook moves the phase on to "banner" once TLS is up.
        trace.enter("tls" if config.implicit_tls else "banner")
        # timeout=None: on Python 3.11, wait_for with a timeout runs the connect in a new task,
        # and a cancel landing before that task starts would leak `sock`; the runner bounds it.
        banner = await smtp.connect(sock=sock, timeout=None)
        trace.status_code = banner.code
        if config.implicit_tls:
            steps.append("TLS")

        trace.enter("ehlo")
        _saw(trace, await smtp.ehlo())

        if starttls != "off":
            if smtp.supports_extension("starttls"):
                trace.enter("starttls")
                _saw(trace, await smtp.starttls(server_hostname=server_name))
                trace.enter("ehlo")  # RFC 3207 4.2: forget what was said before TLS, ask again
                _saw(trace, await smtp.ehlo())
                steps.append("STARTTLS")
                encrypted = True
            elif starttls == "required":
                raise ProbeFailed(Reason.STARTTLS, "server does not offer STARTTLS")
            else:
                steps.append("STARTTLS not offered")

        if config.auth is not None:
            trace.enter("auth")
            steps.append(await _login(smtp, config, encrypted, trace))

        if config.send is not None:
            trace.enter("send")
            await _send(smtp, config, trace)
            count = len(config.send.to)
            steps.append(f"message accepted for {count} recipient{'s' if count != 1 else ''}")

        trace.enter("quit")
        _saw(trace, await smtp.quit())
        steps.append("QUIT")
    finally:
        smtp.close()
    return f"SMTP dialogue ok: {', '.join(steps)}"


def classify(exc: BaseException, trace: Trace) -> ProbeFailed | None:
    """Map aiosmtplib's exceptions to failure reasons; socket errors go to network_failure."""
    if isinstance(exc, SMTPTimeoutError):
        return ProbeFailed(Reason.TIMEOUT, f"SMTP client timed out during {trace.phase}")
    connecting = isinstance(exc, SMTPConnectError) and not isinstance(exc, SMTPResponseException)
    if connecting and exc.__cause__ is not None:
        # aiosmtplib wraps what it met while connecting (a TLS error, an early close): unwrap it.
        exc = exc.__cause__
    if isinstance(exc, SMTPResponseException):
        text = bounded(exc.message, SERVER_TEXT)
        if exc.code < 0:  # aiosmtplib's code for a reply it could not parse
            text = text.removeprefix("Malformed SMTP response line: ")
            return ProbeFailed(Reason.PROTOCOL, f"not an SMTP reply during {trace.phase}: {text}")
        trace.status_code = exc.code  # the runner keeps status_code only from ProbeFailed
        return ProbeFailed(Reason.SMTP_REPLY, _refusal(exc, trace.phase), status_code=exc.code)
    if isinstance(exc, SMTPServerDisconnected):
        if exc.__cause__ is not None and (known := network_failure(exc.__cause__, trace)):
            return known
        return ProbeFailed(Reason.PROTOCOL, f"server closed the connection during {trace.phase}")
    if isinstance(exc, SMTPException):
        text = bounded(exc.message, SERVER_TEXT)
        return ProbeFailed(Reason.PROTOCOL, f"{text} (during {trace.phase})")
    return network_failure(exc, trace)


def _refusal(exc: SMTPResponseException, phase: str) -> str:
    text = bounded(exc.message, SERVER_TEXT)
    if isinstance(exc, SMTPConnectResponseError):
        return f"server greeted with {exc.code} instead of 220: {text}"
    if isinstance(exc, SMTPSenderRefused):
        command = "MAIL FROM"
    elif isinstance(exc, SMTPRecipientRefused):
        command = f"RCPT TO {bounded(exc.recipient, 60)}"
    elif isinstance(exc, SMTPDataError):
        command = "DATA"
    elif isinstance(exc, SMTPHeloError):
        command = "EHLO"
    else:
        command = _COMMANDS.get(phase, phase)
    return f"{command} refused: {exc.code} {text}"


def _saw(trace: Trace, reply: SMTPResponse) -> None:
    trace.status_code = reply.code


async def _open_socket(host: str, port: int, trace: Trace) -> socket.socket:
    """Resolve and connect ourselves, so that connect and banner are timed apart."""
    loop = asyncio.get_running_loop()
    trace.enter("dns")
    addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    trace.enter("connect")
    for i, (family, kind, proto, _, address) in enumerate(addresses):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError:
            sock.close()
            if i == len(addresses) - 1:
                raise
        except BaseException:
            sock.close()
            raise
        else:
            return sock
    raise OSError(f"no address for {host}")  # getaddrinfo raises rather than return nothing


async def _login(smtp: aiosmtplib.SMTP, config: SMTPProbe, encrypted: bool, trace: Trace) -> str:
    """AUTH once with the preferred mechanism; never spray a refused password across others."""
    assert config.auth is not None
    if not smtp.supports_extension("auth"):
        where = "" if encrypted else " without TLS"
        raise ProbeFailed(Reason.AUTH, f"server does not offer AUTH{where}")
    if not encrypted:
        # An AUTH PLAIN or LOGIN line on a plain connection is the password in clear text.
        raise ProbeFailed(Reason.AUTH, "refusing to send credentials without TLS")
    methods: dict[str, Callable[..., Awaitable[SMTPResponse]]] = {
        "cram-md5": smtp.auth_crammd5,
        "plain": smtp.auth_plain,
        "login": smtp.auth_login,
    }
    usable = smtp.supported_auth_methods  # aiosmtplib's preference order
    if not usable:
        offered = bounded(" ".join(smtp.server_auth_methods) or "none", 60)
        raise ProbeFailed(Reason.AUTH, f"no supported AUTH mechanism offered (offered: {offered})")
    mechanism = usable[0]
    password = reveal(config.auth.password) or ""
    try:
        reply = await methods[mechanism](config.auth.username, password)
    except SMTPAuthenticationError as err:
        text = err.message.replace(password, "***") if password else err.message
        raise ProbeFailed(
            Reason.AUTH,
            f"login refused: {err.code} {bounded(text, SERVER_TEXT)}",
            status_code=err.code,
        ) from None
    _saw(trace, reply)
    return f"AUTH {mechanism.upper()}"


async def _send(smtp: aiosmtplib.SMTP, config: SMTPProbe, trace: Trace) -> None:
    """MAIL FROM, RCPT TO for every recipient (any refusal fails), then DATA."""
    send = config.send
    assert send is not None
    message = EmailMessage()
    message["From"] = send.from_
    message["To"] = ", ".join(send.to)
    message["Subject"] = send.subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid("sla-probe", domain=config.ehlo_name)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: autoresponders must not answer
    message.set_content(
        f"Test message from the SLA exporter on {config.ehlo_name}; safe to delete.\n"
    )
    _saw(trace, await smtp.mail(send.from_))
    for recipient in send.to:
        _saw(trace, await smtp.rcpt(recipient))
    _saw(trace, await smtp.data(message.as_bytes(policy=SMTP_POLICY)))


# --------------------------------------------------------------------------------------------
# TLS


def _tls_context(tls: TLS, on_handshake: Callable[[ssl.SSLObject], None]) -> ssl.SSLContext:
    """A fresh client context; `ca_file` replaces the system roots, as in blackbox_exporter."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as err:
        detail = err.strerror or str(err)
        raise ProbeFailed(Reason.TLS, f"cannot load tls.ca_file: {detail}") from None
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

    class Observed(ssl.SSLObject):
        """Reports the moment the handshake completes, whoever drives it (connect or STARTTLS)."""

        def do_handshake(self) -> None:
            super().do_handshake()  # raises SSLWantReadError until the handshake is done
            on_handshake(self)

    # A documented hook: asyncio's TLS transport wraps every connection with sslobject_class.
    context.sslobject_class = Observed
    return context


def _on_handshake(trace: Trace) -> Callable[[ssl.SSLObject], None]:
    def done(tls: ssl.SSLObject) -> None:
        expiry = certificate_expiry(tls)
        if expiry is not None:
            trace.saw_certificate(expiry)
        if trace.phase == "tls":  # implicit TLS: aiosmtplib goes on to read the banner
            trace.enter("banner")

    return done
