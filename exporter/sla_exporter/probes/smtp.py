"""The smtp probe kind: banner, EHLO, STARTTLS or implicit TLS, AUTH, a test message, QUIT.

The dialogue is spoken directly over a probe connection (wire.py): a probe sends a handful of
commands and checks each reply's code, which is less than an SMTP client library does for every
command it sends, and costs a fraction of its CPU time (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import re
import socket
import ssl
import time
from collections import deque
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from typing import Annotated, Any, Literal

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
from .base import Kind, ProbeFailed, Reason, Trace, bounded, certificate_expiry
from .tls import client_context, observing
from .wire import Connection, connect

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
MAX_LINE = 8192  # bytes of one reply line before the reply counts as garbage
# Bytes of one whole reply, every line of it: a server streaming "250-..." lines for the whole
# timeout took the exporter from 65 MB to 1.17 GB in one probe. The longest real replies (EHLO
# listing every extension) are well under 1 KiB.
MAX_REPLY = 64 * 1024
AUTH_MECHANISMS = ("cram-md5", "plain", "login")  # in order of preference, as aiosmtplib's
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?")


class Refused(ProbeFailed):
    """A reply with a code other than the one the dialogue needs."""

    def __init__(self, command: str, code: int, text: str) -> None:
        super().__init__(
            Reason.SMTP_REPLY, f"{command} refused: {code} {bounded(text, SERVER_TEXT)}", code
        )
        self.code = code
        self.text = text


class _Replies:
    """Reads SMTP replies off a connection (a wire.Receiver) as they arrive."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self._buffer = bytearray()
        self._lines: list[str] = []  # the lines of the reply being read
        self._size = 0  # bytes of the reply being read so far
        self._ready: deque[tuple[int, str, float] | BaseException] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._broken = False  # the dialogue failed: whatever else comes is dropped unread
        # Every form of a secret the probe sent (the password, base64 tokens): a server that
        # echoes a command back must not put them in a message, a log or the landing page.
        self.secrets: list[str] = []

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        self._buffer += data
        while not self._broken and (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            self._line(line)
        if not self._broken and len(self._buffer) > MAX_LINE:
            self._put(self._garbage(bytes(self._buffer[:200])))
        if self._broken:
            self._buffer.clear()
            self._lines.clear()

    def _line(self, line: bytes) -> None:
        match = _REPLY_LINE.fullmatch(line)
        if match is None:
            self._put(self._garbage(line))
            return
        self._size += len(line) + 2
        if self._size > MAX_REPLY:
            self._put(
                ProbeFailed(
                    Reason.PROTOCOL,
                    f"reply longer than {MAX_REPLY} bytes during {self.trace.phase} "
                    f"({len(self._lines) + 1} lines, code {match[1].decode()})",
                )
            )
            return
        self._lines.append((match[3] or b"").decode("utf-8", "replace"))
        if match[2] != b"-":  # "250 text" or "250" ends the reply; "250-text" goes on
            text, self._lines, self._size = self.mask("\n".join(self._lines)), [], 0
            self._put((int(match[1]), text, time.perf_counter()))

    def mask(self, text: str) -> str:
        """`text` with every secret form the probe sent replaced by ***, longest first."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _garbage(self, line: bytes) -> ProbeFailed:
        text = bounded(self.mask(line.decode("utf-8", "replace")), SERVER_TEXT)
        return ProbeFailed(Reason.PROTOCOL, f"not an SMTP reply during {self.trace.phase}: {text}")

    def eof_received(self) -> None:
        phase = self.trace.phase
        self._put(ProbeFailed(Reason.PROTOCOL, f"server closed the connection during {phase}"))

    def connection_lost(self, exc: BaseException) -> None:
        self._put(exc)

    def _put(self, item: tuple[int, str, float] | BaseException) -> None:
        if isinstance(item, BaseException):
            self._broken = True
        self._ready.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def reply(self) -> tuple[int, str, float]:
        """The next reply: code, text (lines joined by newlines) and when it arrived."""
        while not self._ready:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        item = self._ready.popleft()
        if isinstance(item, BaseException):
            self._ready.appendleft(item)  # every later read fails the same way
            raise item
        self.trace.status_code = item[0]
        return item


class _Session:
    """One dialogue: commands out, replies in, extensions as the last EHLO listed them."""

    def __init__(self, connection: Connection, trace: Trace) -> None:
        self.connection = connection
        self.trace = trace
        self.replies = _Replies(trace)
        self.extensions: dict[str, str] = {}
        self.last = 0.0  # when the last reply the dialogue accepted arrived
        connection.receive(self.replies)

    async def command(self, line: str, expect: tuple[int, ...], name: str) -> tuple[int, str]:
        """Send `line` (without CRLF) and read the reply, which must have a code in `expect`."""
        self.connection.write(line.encode() + b"\r\n")
        return await self.expect(expect, name)

    async def expect(self, codes: tuple[int, ...], name: str) -> tuple[int, str]:
        code, text, arrived = await self.replies.reply()
        if code not in codes:
            raise Refused(name, code, text)
        self.last = arrived
        return code, text

    async def ehlo(self, name: str, sent: bool = False) -> None:
        """EHLO (unless it was `sent` already) and the extensions its reply lists."""
        if not sent:
            self.connection.write(f"EHLO {name}\r\n".encode())
        _, text = await self.expect((250,), "EHLO")
        self.extensions = {}
        for line in text.split("\n")[1:]:  # the first line is the server's greeting
            keyword, _, params = line.strip().partition(" ")
            keyword = keyword.lower()
            if keyword.startswith("auth="):  # the obsolete form some servers still send
                keyword, params = "auth", f"{keyword[5:]} {params}"
            self.extensions[keyword] = f"{self.extensions.get(keyword, '')} {params}".strip()

    @property
    def auth_methods(self) -> list[str]:
        return self.extensions.get("auth", "").lower().split()


async def probe(config: SMTPProbe, trace: Trace) -> str:
    """Walk one SMTP dialogue over a fresh connection; return what was checked."""
    starttls = config.effective_starttls  # always "off" with implicit_tls (config checks)
    server_name = config.tls.server_name or config.host
    context = None
    if config.implicit_tls or starttls != "off":
        context = client_context(config.tls)
    trace.enter("connect")
    connection = await connect(config.host, config.effective_port, trace)
    steps: list[str] = []
    encrypted = config.implicit_tls
    with observing(_Handshakes(trace)):
        try:
            session = _Session(connection, trace)
            if config.implicit_tls:
                assert context is not None
                # The handshake hook moves the phase on to "banner" once TLS is up.
                trace.enter("tls")
                await connection.tls(context, server_name)
                steps.append("TLS")
            else:
                trace.enter("banner")
            code, text, _ = await session.replies.reply()
            if code != 220:
                raise ProbeFailed(
                    Reason.SMTP_REPLY,
                    f"server greeted with {code} instead of 220: {bounded(text, SERVER_TEXT)}",
                    code,
                )

            trace.enter("ehlo")
            await session.ehlo(config.ehlo_name)

            if starttls != "off":
                if "starttls" in session.extensions:
                    assert context is not None
                    trace.enter("starttls")
                    await session.command("STARTTLS", (220,), "STARTTLS")
                    # RFC 3207 4.2: forget what was said before TLS and ask again, at once.
                    ehlo = f"EHLO {config.ehlo_name}\r\n".encode()
                    await connection.tls(context, server_name, then=ehlo)
                    trace.enter("ehlo")
                    await session.ehlo(config.ehlo_name, sent=True)
                    steps.append("STARTTLS")
                    encrypted = True
                elif starttls == "required":
                    raise ProbeFailed(Reason.STARTTLS, "server does not offer STARTTLS")
                else:
                    steps.append("STARTTLS not offered")

            if config.auth is not None:
                trace.enter("auth")
                steps.append(await _login(session, config, encrypted))

            if config.send is not None:
                trace.enter("send")
                await _send(session, config)
                count = len(config.send.to)
                plural = "s" if count != 1 else ""
                steps.append(f"message accepted for {count} recipient{plural}")

            trace.enter("quit")
            await session.command("QUIT", (221,), "QUIT")
            trace.settle(session.last)  # the clock stops when the last reply came in
            steps.append("QUIT")
        finally:
            connection.close()
    return f"SMTP dialogue ok: {', '.join(steps)}"


async def _login(session: _Session, config: SMTPProbe, encrypted: bool) -> str:
    """AUTH once with the preferred mechanism; never spray a refused password across others."""
    assert config.auth is not None
    if "auth" not in session.extensions:
        where = "" if encrypted else " without TLS"
        raise ProbeFailed(Reason.AUTH, f"server does not offer AUTH{where}")
    if not encrypted:
        # An AUTH PLAIN or LOGIN line on a plain connection is the password in clear text.
        raise ProbeFailed(Reason.AUTH, "refusing to send credentials without TLS")
    offered = session.auth_methods
    usable = [m for m in AUTH_MECHANISMS if m in offered]
    if not usable:
        shown = bounded(" ".join(offered) or "none", 60)
        raise ProbeFailed(Reason.AUTH, f"no supported AUTH mechanism offered (offered: {shown})")
    mechanism = usable[0]
    user = config.auth.username
    password = reveal(config.auth.password) or ""
    secrets = session.replies.secrets
    # Masked from every reply from now on, before it is cut to length (so no prefix of a
    # secret survives either): the password, and the base64 forms that carry it.
    secrets += [s for s in (password, _b64(password)) if s]
    try:
        if mechanism == "plain":
            token = _b64(f"\0{user}\0{password}")
            secrets.append(token)
            await session.command(f"AUTH PLAIN {token}", (235,), "AUTH")
        elif mechanism == "login":
            await session.command(f"AUTH LOGIN {_b64(user)}", (334,), "AUTH")
            await session.command(_b64(password), (235,), "AUTH")
        else:
            _, challenge = await session.command("AUTH CRAM-MD5", (334,), "AUTH")
            digest = hmac.new(
                password.encode(), base64.b64decode(challenge.strip()), hashlib.md5
            ).hexdigest()
            response = _b64(f"{user} {digest}")
            secrets += [digest, response]  # replayable while the server reuses its challenge
            await session.command(response, (235,), "AUTH")
    except Refused as refused:
        raise ProbeFailed(
            Reason.AUTH,
            f"login refused: {refused.code} {bounded(refused.text, SERVER_TEXT)}",
            status_code=refused.code,
        ) from None
    except ValueError:  # a CRAM-MD5 challenge that is not base64
        raise ProbeFailed(Reason.PROTOCOL, "not an SMTP reply during auth: bad challenge") from None
    return f"AUTH {mechanism.upper()}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


async def _send(session: _Session, config: SMTPProbe) -> None:
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
    await session.command(f"MAIL FROM:<{send.from_}>", (250,), "MAIL FROM")
    for recipient in send.to:
        await session.command(
            f"RCPT TO:<{recipient}>", (250, 251), f"RCPT TO {bounded(recipient, 60)}"
        )
    await session.command("DATA", (354,), "DATA")
    content = message.as_bytes(policy=SMTP_POLICY)
    # RFC 5321 4.5.2: a line starting with a dot gets another one; the lone dot ends the data.
    stuffed = re.sub(rb"(?m)^\.", b"..", content)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    session.connection.write(stuffed + b".\r\n")
    await session.expect((250,), "DATA")


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
