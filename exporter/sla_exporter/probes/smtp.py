"""The smtp probe kind: banner, EHLO, STARTTLS or implicit TLS, AUTH, a test message, QUIT.

The dialogue is aiosmtplib's (reply parsing and its bounds, STARTTLS on the event loop's own TLS
transport, the AUTH encodings); the probe opens the connection itself, so that resolving,
connecting and the banner are timed apart, and turns what aiosmtplib raises into reasons.
`session()` is the part a submission needs (connect, greet, STARTTLS, AUTH), for other probes
that send mail through a server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from typing import Annotated, Any, Literal, Protocol

import aiohappyeyeballs
import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPRecipientRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from aiosmtplib.auth import auth_crammd5_verify, auth_plain_encode
from aiosmtplib.protocol import MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    StrictBool,
    ValidationInfo,
    field_validator,
)

from ..values import TLS, Model, Port, custom, reveal, show
from .base import Kind, ProbeFailed, Reason, Trace, bounded, certificate_expiry, network_failure
from .tls import client_context, observing

# --------------------------------------------------------------------------------------------
# Config: the `smtp:` section of a service


class SMTPAuth(Model):
    username: str = Field(min_length=1)
    password: SecretStr


class SMTPSend(Model):
    """A test message sent through the server after AUTH, to a mailbox you own."""

    from_: str = Field(alias="from", min_length=3)
    to: list[str] = Field(min_length=1)
    subject: str = "SLA probe"


def _starttls(value: Any) -> Any:
    # YAML 1.1 reads a bare `off` (and `no`, `false`) as false; the user meant the word.
    if value is False:
        return "off"
    if value is True:
        raise custom(
            "starttls",
            'must be "required", "opportunistic" or "off", got true '
            "(on, yes and true are ambiguous here)",
        )
    return value


def _host(value: str) -> str:
    if not value or "/" in value or any(c.isspace() for c in value):
        raise custom("host", f"must be a host name or IP address, got {show(value)}")
    if value.count(":") == 1:
        raise custom("host", f"must not include a port (use port), got {show(value)}")
    return value


@functools.cache
def _fqdn() -> str:
    # getfqdn() can wait on DNS; do it once per process, not on every reload.
    return socket.getfqdn()


StartTLS = Literal["required", "opportunistic", "off"]


class SMTPProbe(Model):
    host: Annotated[str, AfterValidator(_host)]
    port: Port | None = None
    implicit_tls: StrictBool = False
    starttls: Annotated[StartTLS | None, BeforeValidator(_starttls)] = None
    ehlo_name: str = Field(default_factory=_fqdn, min_length=1)
    tls: TLS = TLS()
    auth: SMTPAuth | None = None
    send: SMTPSend | None = None

    @field_validator("starttls")
    @classmethod
    def _tls_modes(cls, starttls: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("implicit_tls") and starttls in ("required", "opportunistic"):
            raise custom(
                "smtp_tls",
                f'must be "off" with implicit_tls (TLS is already up), got "{starttls}"',
            )
        return starttls

    @property
    def effective_port(self) -> int:
        """`port`, or 465 with implicit TLS and 25 without."""
        return self.port or (465 if self.implicit_tls else 25)

    @property
    def effective_starttls(self) -> StartTLS:
        """`starttls`, or "off" with implicit TLS and "required" without."""
        if self.starttls is not None:
            return self.starttls
        return "off" if self.implicit_tls else "required"


SERVER_TEXT = 120  # characters of a server reply quoted in a failure message
# Bytes of one whole reply, every line of it (aiosmtplib's bound, 8 KiB a line, 32 KiB in all):
# a server streaming "250-..." lines for the whole timeout took the exporter from 65 MB to
# 1.17 GB in one probe. The longest real replies (EHLO listing every extension) are well under
# 1 KiB.
MAX_REPLY = MAX_RESPONSE_LENGTH
AUTH_MECHANISMS = ("cram-md5", "plain", "login")  # in order of preference, as aiosmtplib's
HAPPY_EYEBALLS_DELAY = 0.25  # seconds before trying a name's next address (RFC 8305, as aiohttp)

# The command each phase sends, to name it in a refusal.
_COMMANDS = {"ehlo": "EHLO", "starttls": "STARTTLS", "auth": "AUTH", "quit": "QUIT"}


class Server(Protocol):
    """What opening a session needs to know of the server (an smtp probe's config has it)."""

    @property
    def host(self) -> str: ...
    @property
    def effective_port(self) -> int: ...
    @property
    def implicit_tls(self) -> bool: ...
    @property
    def effective_starttls(self) -> StartTLS: ...
    @property
    def ehlo_name(self) -> str: ...
    @property
    def tls(self) -> TLS: ...
    @property
    def auth(self) -> SMTPAuth | None: ...


@dataclass
class Session:
    """An SMTP session that `session()` opened: aiosmtplib's client, and what was done so far."""

    smtp: aiosmtplib.SMTP
    trace: Trace
    steps: list[str] = field(default_factory=list)  # "TLS", "STARTTLS", "AUTH PLAIN" ...
    encrypted: bool = False
    # Every form of a secret the session sent (the password, base64 tokens): a server that
    # echoes a command back must not put them in a message, a log or the landing page.
    secrets: list[str] = field(default_factory=list)

    def mask(self, text: str) -> str:
        """`text` with every secret form the session sent replaced by ***, longest first."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


@contextlib.asynccontextmanager
async def session(server: Server, trace: Trace) -> AsyncIterator[Session]:
    """A session ready for MAIL FROM: connected (phases dns, connect, tls), greeted (banner,
    ehlo), upgraded by STARTTLS as `server` asks (starttls, ehlo), logged in if it has `auth`.

    Inside the block and out of it, aiosmtplib's errors end as ProbeFailed with their reason and
    no secret in their message; the connection is closed on the way out.
    """
    starttls = server.effective_starttls  # always "off" with implicit_tls (config checks)
    server_name = server.tls.server_name or server.host
    context = None
    if server.implicit_tls or starttls != "off":
        context = client_context(server.tls)
    # local_hostname is explicit so aiosmtplib never calls the blocking socket.getfqdn();
    # start_tls=False so it never upgrades (or skips upgrading) behind the probe's back; no
    # timeout of its own: the runner's deadline is the only one, and it names the phase it cut.
    smtp = aiosmtplib.SMTP(
        hostname=server_name,  # with `sock`, used only as the TLS server name
        local_hostname=server.ehlo_name,
        timeout=None,
        use_tls=server.implicit_tls,
        start_tls=False,
        tls_context=context,
    )
    current = Session(smtp, trace, encrypted=server.implicit_tls)
    try:
        with _failures(current), observing(_Handshakes(trace)):
            sock = await _connect(server.host, server.effective_port, trace)
            # With implicit TLS the handshake hook moves the phase on to "banner" once TLS is up.
            trace.enter("tls" if server.implicit_tls else "banner")
            try:
                await smtp.connect(sock=sock)
            except BaseException:
                sock.close()  # a no-op once a transport owns it and closed it
                raise
            if server.implicit_tls:
                current.steps.append("TLS")

            trace.enter("ehlo")
            await smtp.ehlo()

            if starttls != "off":
                if smtp.supports_extension("starttls"):
                    assert context is not None
                    trace.enter("starttls")
                    await smtp.starttls(server_hostname=server_name, tls_context=context)
                    trace.enter("ehlo")  # RFC 3207 4.2: forget what was said before TLS, ask again
                    await smtp.ehlo()
                    current.steps.append("STARTTLS")
                    current.encrypted = True
                elif starttls == "required":
                    raise ProbeFailed(Reason.STARTTLS, "server does not offer STARTTLS")
                else:
                    current.steps.append("STARTTLS not offered")

            if server.auth is not None:
                trace.enter("auth")
                current.steps.append(await _login(current, server.auth))
            yield current
    finally:
        smtp.close()


async def probe(config: SMTPProbe, trace: Trace) -> str:
    """Walk one SMTP dialogue over a fresh connection; return what was checked."""
    async with session(config, trace) as current:
        if config.send is not None:
            trace.enter("send")
            await _send(current.smtp, config)
            count = len(config.send.to)
            plural = "s" if count != 1 else ""
            current.steps.append(f"message accepted for {count} recipient{plural}")

        trace.enter("quit")
        reply = await current.smtp.quit()
        trace.status_code = reply.code
        trace.settle()  # the clock stops when the last reply came in
        current.steps.append("QUIT")
    return f"SMTP dialogue ok: {', '.join(current.steps)}"


async def _connect(host: str, port: int, trace: Trace) -> socket.socket:
    """A socket connected to `host`, resolving it unless it is an IP address (phase dns), and
    trying its addresses Happy Eyeballs fashion when it has several (phase connect), with
    aiohappyeyeballs, as aiohttp connects."""
    trace.enter("connect")
    try:
        # An IP address needs no resolver, nor the trip through a thread that asking one costs.
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        trace.enter("dns")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise ProbeFailed(Reason.DNS, f"cannot resolve {host}: {err.strerror or err}") from err
        trace.enter("connect")
    return await aiohappyeyeballs.start_connection(
        infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1
    )


async def _login(current: Session, auth: SMTPAuth) -> str:
    """AUTH once with the preferred mechanism; never spray a refused password across others."""
    smtp = current.smtp
    if not smtp.supports_extension("auth"):
        where = "" if current.encrypted else " without TLS"
        raise ProbeFailed(Reason.AUTH, f"server does not offer AUTH{where}")
    if not current.encrypted:
        # An AUTH PLAIN or LOGIN line on a plain connection is the password in clear text.
        raise ProbeFailed(Reason.AUTH, "refusing to send credentials without TLS")
    offered = smtp.server_auth_methods
    usable = [m for m in AUTH_MECHANISMS if m in offered]
    if not usable:
        shown = bounded(" ".join(offered) or "none", 60)
        raise ProbeFailed(Reason.AUTH, f"no supported AUTH mechanism offered (offered: {shown})")
    mechanism = usable[0]
    user = auth.username
    password = reveal(auth.password) or ""
    # Masked from every reply from now on, before it is cut to length (so no prefix of a
    # secret survives either): the password, and the base64 forms that carry it.
    current.secrets += [s for s in (password, _b64(password)) if s]
    try:
        if mechanism == "plain":
            current.secrets.append(auth_plain_encode(user, password).decode("ascii"))
            await smtp.auth_plain(user, password)
        elif mechanism == "login":
            # The password's own base64 form, masked above, is its second line.
            await smtp.auth_login(user, password)
        else:
            await _cram_md5(current, user, password)
    except SMTPAuthenticationError as refused:
        raise ProbeFailed(
            Reason.AUTH,
            f"login refused: {refused.code} {bounded(current.mask(refused.message), SERVER_TEXT)}",
            status_code=refused.code,
        ) from None
    return f"AUTH {mechanism.upper()}"


async def _cram_md5(current: Session, user: str, password: str) -> None:
    """AUTH CRAM-MD5 as aiosmtplib's auth_crammd5 says it, step by step: the response to the
    server's challenge is replayable while the server reuses it, so it is masked too."""
    smtp = current.smtp
    challenge = await smtp.execute_command(b"AUTH", b"CRAM-MD5")
    if challenge.code != 334:
        raise SMTPAuthenticationError(challenge.code, challenge.message)
    try:
        response = auth_crammd5_verify(user, password, challenge.message)
    except SMTPAuthenticationError:  # a challenge that is not base64
        raise ProbeFailed(Reason.PROTOCOL, "not an SMTP reply during auth: bad challenge") from None
    digest = base64.b64decode(response).decode("ascii").rpartition(" ")[2]
    current.secrets += [digest, response.decode("ascii")]
    reply = await smtp.execute_command(response)
    if reply.code != 235:
        raise SMTPAuthenticationError(reply.code, reply.message)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


async def _send(smtp: aiosmtplib.SMTP, config: SMTPProbe) -> None:
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
    await smtp.mail(send.from_)
    for recipient in send.to:
        await smtp.rcpt(recipient)
    await smtp.data(message.as_bytes(policy=SMTP_POLICY))  # aiosmtplib dot-stuffs it


@contextlib.contextmanager
def _failures(current: Session) -> Iterator[None]:
    """Turn what aiosmtplib raises into ProbeFailed with its reason; mask the session's secrets
    out of every message, whoever raised it."""
    trace = current.trace
    try:
        yield
    except ProbeFailed as failure:
        raise ProbeFailed(
            failure.reason, current.mask(failure.message), failure.status_code
        ) from failure
    except SMTPException as exc:
        known = _reason(exc, trace, current)
        if known is None:
            raise
        if known.status_code is not None:
            trace.status_code = known.status_code
        raise ProbeFailed(known.reason, current.mask(known.message), known.status_code) from exc


def _reason(exc: SMTPException, trace: Trace, current: Session) -> ProbeFailed | None:
    """What an aiosmtplib error means for the probe; None for socket and TLS errors it wraps,
    left to network_failure."""
    phase = trace.phase
    if isinstance(exc, SMTPTimeoutError):  # none of its own timeouts is set: a backstop
        return ProbeFailed(Reason.TIMEOUT, f"SMTP client timed out during {phase}")
    if isinstance(exc, SMTPConnectError) and not isinstance(exc, SMTPResponseException):
        # What it met while connecting (a TLS error, an early close), wrapped: unwrap it.
        cause = exc.__cause__
        if isinstance(cause, SMTPServerDisconnected):
            return ProbeFailed(Reason.PROTOCOL, f"server closed the connection during {phase}")
        if isinstance(cause, OSError):
            return network_failure(cause, trace)
    if isinstance(exc, SMTPResponseException):
        text = exc.message
        if exc.code < 0:  # aiosmtplib's code for a reply it could not parse or bound
            if text == "Response too long":
                return ProbeFailed(
                    Reason.PROTOCOL,
                    f"reply longer than {MAX_REPLY} bytes during {phase} (or a line over "
                    f"{MAX_LINE_LENGTH})",
                )
            text = bounded(current.mask(text.removeprefix("Malformed SMTP response line: ")))
            return ProbeFailed(
                Reason.PROTOCOL, f"not an SMTP reply during {phase}: {bounded(text, SERVER_TEXT)}"
            )
        return ProbeFailed(Reason.SMTP_REPLY, _refusal(exc, phase, current), status_code=exc.code)
    if isinstance(exc, SMTPServerDisconnected):
        cause = exc.__cause__
        if isinstance(cause, OSError) and (known := network_failure(cause, trace)) is not None:
            return known
        return ProbeFailed(Reason.PROTOCOL, f"server closed the connection during {phase}")
    return ProbeFailed(Reason.PROTOCOL, f"{bounded(exc.message, SERVER_TEXT)} (during {phase})")


def _refusal(exc: SMTPResponseException, phase: str, current: Session) -> str:
    text = bounded(current.mask(exc.message), SERVER_TEXT)
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


class _Handshakes:
    """Records the certificate of each handshake; with implicit TLS, moves on to the banner."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    def tls_started(self, tls: ssl.SSLObject) -> None:
        pass  # the dialogue already entered "tls" or "starttls"

    def tls_done(self, tls: ssl.SSLObject) -> None:
        expiry = certificate_expiry(tls)
        if expiry is not None:
            self.trace.saw_certificate(expiry)
        if self.trace.phase == "tls":  # implicit TLS: the banner comes next
            self.trace.enter("banner")


KIND = Kind("smtp", SMTPProbe, probe)
