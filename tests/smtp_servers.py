"""Loopback SMTP servers for the probe tests: aiosmtpd, and a script for broken dialogues."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

USER = "probe"
PASSWORD = "c0rrect-h0rse-battery"
SERVER_NAME = "mx.test"  # given to aiosmtpd so it never calls the slow socket.getfqdn()


@dataclass
class Mailbox:
    """An aiosmtpd handler that records what clients said and the messages they delivered."""

    ehlo_names: list[str] = field(default_factory=list)
    messages: list[Envelope] = field(default_factory=list)
    refuse_recipients: set[str] = field(default_factory=set)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.ehlo_names.append(hostname)
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.refuse_recipients:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(envelope)
        return "250 2.0.0 queued as probe-1"


class CramMD5Mailbox(Mailbox):
    """A Mailbox that also offers AUTH CRAM-MD5 (RFC 2195), which aiosmtpd leaves to handlers."""

    CHALLENGE = b"<1896.697170952@mx.test>"

    async def auth_CRAM__MD5(self, server: SMTP, args: list[str]) -> AuthResult:
        answer = await server.challenge_auth(self.CHALLENGE)
        if not isinstance(answer, bytes):
            return AuthResult(success=False)
        user, _, digest = answer.partition(b" ")
        expected = hmac.new(PASSWORD.encode(), self.CHALLENGE, hashlib.md5).hexdigest()
        valid = user == USER.encode() and hmac.compare_digest(digest, expected.encode())
        return AuthResult(success=valid, handled=False)


def _authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    valid = isinstance(auth_data, LoginPassword) and auth_data == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=valid, handled=False)


@asynccontextmanager
async def aiosmtpd_server(
    mailbox: Mailbox,
    *,
    starttls: ssl.SSLContext | None = None,
    implicit_tls: ssl.SSLContext | None = None,
    auth_exclude: tuple[str, ...] = (),
) -> AsyncIterator[int]:
    """Serve aiosmtpd on 127.0.0.1 and a free port: STARTTLS required when `starttls` is given,
    TLS from the first byte when `implicit_tls` is, without the AUTH mechanisms in
    `auth_exclude`; yields the port."""
    loop = asyncio.get_running_loop()

    def session() -> SMTP:
        return SMTP(
            mailbox,
            hostname=SERVER_NAME,
            tls_context=starttls,
            require_starttls=starttls is not None,
            authenticator=_authenticator,
            # aiosmtpd only knows about TLS it negotiated with STARTTLS itself.
            auth_require_tls=implicit_tls is None,
            auth_exclude_mechanism=auth_exclude,
            loop=loop,
        )

    server = await loop.create_server(session, "127.0.0.1", 0, ssl=implicit_tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------------------------
# A scripted server for dialogues no real server would hold


CLOSE = b""  # a reply that closes the connection instead of answering

DEFAULT_REPLIES = {
    "EHLO": b"250-" + SERVER_NAME.encode() + b" hello\r\n250 8BITMIME\r\n",
    "QUIT": b"221 2.0.0 bye\r\n",
}


# A reply made from the command it answers (to echo it back, as some servers do).
Echo = Callable[[str], bytes]
UNKNOWN = "*"  # the key in `replies` for any verb not listed


@dataclass
class Script:
    """What the scripted server says: a banner (None: say nothing at all), then one reply per
    command verb, and 502 for any verb not in `replies` (unless `replies` has UNKNOWN).
    A reply is bytes, or made from the command line by a function. `endless` names verbs
    answered with its line repeated until the client hangs up (a reply that never ends), at most
    `endless_limit` bytes. `received` records the client's lines; `sent` counts bytes written."""

    banner: bytes | None = b"220 " + SERVER_NAME.encode() + b" ESMTP scripted\r\n"
    replies: dict[str, bytes | Echo] = field(default_factory=dict)
    received: list[str] = field(default_factory=list)
    endless: dict[str, bytes] = field(default_factory=dict)
    endless_limit: int = 256 << 20
    sent: int = 0

    def reply(self, verb: str, command: str = "") -> bytes:
        replies = {**DEFAULT_REPLIES, **self.replies}
        default = replies.get(UNKNOWN, b"502 5.5.2 command not recognized\r\n")
        reply = replies.get(verb, default)
        return reply(command) if callable(reply) else reply


@asynccontextmanager
async def scripted_server(script: Script, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """Serve `script` on 127.0.0.1 and a free port (over TLS from the first byte when `tls` is
    given) with asyncio.start_server; yields the port."""
    sessions: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if script.banner is None:
                await reader.read()  # stay silent until the client gives up
                return
            writer.write(script.banner)
            while line := await reader.readline():
                command = line.decode("utf-8", "replace").rstrip("\r\n")
                script.received.append(command)
                verb = command.split(" ", 1)[0].upper()
                if verb in script.endless:
                    line = script.endless[verb]
                    while script.sent < script.endless_limit:
                        writer.write(line * 64)
                        script.sent += len(line) * 64
                        await writer.drain()
                    return
                reply = script.reply(verb, command)
                if reply == CLOSE:
                    return
                writer.write(reply)
                script.sent += len(reply)
                await writer.drain()
                if verb == "QUIT":
                    return
        except ConnectionError:
            pass  # the client hung up first
        finally:
            writer.close()

    def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(serve(reader, writer))
        sessions.add(task)
        task.add_done_callback(sessions.discard)

    server = await asyncio.start_server(track, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        if sessions:
            _, pending = await asyncio.wait(sessions, timeout=1)
            for task in pending:
                task.cancel()
