"""Connections for probes: connected Happy Eyeballs fashion, carried by asyncio's transports.

A probe opens one connection, says a few things and closes it. The connection is asyncio's own
(`loop.create_connection` on a socket connected by aiohappyeyeballs, `loop.start_tls` for TLS,
implicit or STARTTLS); what this module adds is a protocol that hands incoming data to the
probe's `Receiver` from the transport's callbacks, so that a probe sees each byte when the loop
does and times its phases there, rather than whenever its task next runs.

Everything runs on the event loop thread; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Protocol

import aiohappyeyeballs

from .base import ProbeFailed, Reason, Trace

HAPPY_EYEBALLS_DELAY = 0.25  # seconds before trying the next address (RFC 8305, as aiohttp)
# A close_notify the peer never answers holds the socket this long after the probe is over.
TLS_SHUTDOWN_TIMEOUT = 5.0


class Receiver(Protocol):
    """What a probe does with a connection's incoming data (on the event loop thread)."""

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> None:
        """The peer finished sending (FIN, or TLS close_notify)."""

    def connection_lost(self, exc: BaseException) -> None:
        """The connection failed: reset, TLS error. Nothing more will arrive."""


async def connect(host: str, port: int, trace: Trace) -> Connection:
    """A connection to `host`, resolving it unless it is an IP address (phase `dns`), and
    trying its addresses Happy Eyeballs fashion when it has several (phase `connect`)."""
    loop = asyncio.get_running_loop()
    try:
        # An IP address needs no resolver, nor the trip through a thread that asking one costs.
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        trace.enter("dns")
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise ProbeFailed(Reason.DNS, f"cannot resolve {host}: {err.strerror or err}") from err
        trace.enter("connect")
    sock = await aiohappyeyeballs.start_connection(
        infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1
    )
    connection = Connection()
    try:
        await loop.create_connection(lambda: connection, sock=sock)
    except BaseException:
        sock.close()
        raise
    return connection


class Connection(asyncio.Protocol):
    """One connection, optionally upgraded to TLS, delivering what arrives to a Receiver.

    What arrives before a receiver is set (a banner, between connecting and the probe's next
    step) is kept and handed over by `receive`.
    """

    def __init__(self) -> None:
        self._transport: asyncio.BaseTransport | None = None
        self._receiver: Receiver | None = None
        self._early: list[bytes] = []
        self._ended = False  # the peer finished sending
        self._lost: BaseException | None = None
        self.closed = False

    def receive(self, receiver: Receiver) -> None:
        """Deliver incoming data to `receiver` from now on (replacing any earlier one)."""
        self._receiver = receiver
        early, self._early = self._early, []
        for data in early:
            receiver.data_received(data)
        if self._lost is not None:
            receiver.connection_lost(self._lost)
        elif self._ended:
            receiver.eof_received()

    async def tls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        """Upgrade to TLS (implicit TLS, STARTTLS); returns once the handshake completed.

        The context's observer (tls.py) learns when the handshake starts and completes.
        """
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            self._transport,  # type: ignore[arg-type]  # a socket transport, as start_tls wants
            self,
            context,
            server_hostname=server_hostname,
            ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
        )
        if transport is None:  # the transport closed during the handshake
            raise ConnectionResetError("connection closed during the TLS handshake")
        self._transport = transport

    def write(self, data: bytes) -> None:
        """Send `data` (encrypted once TLS is up); what the socket cannot take now follows."""
        transport = self._transport
        if not self.closed and isinstance(transport, asyncio.WriteTransport):
            transport.write(data)

    def close(self) -> None:
        """Close politely: what is written goes out, then TLS close_notify (if TLS is up)."""
        if not self.closed and self._transport is not None:
            self.closed = True
            self._receiver = None  # whatever comes now is not for the probe
            self._transport.close()

    def abort(self) -> None:
        """Close at once, unsent data and all."""
        if not self.closed and isinstance(self._transport, asyncio.WriteTransport):
            self.closed = True
            self._receiver = None
            self._transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._receiver is not None:
            self._receiver.data_received(data)
        elif not self.closed:
            self._early.append(data)

    def eof_received(self) -> bool:
        self._ended = True
        if self._receiver is not None:
            self._receiver.eof_received()
        return False  # the transport closes its side too

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if exc is None:
            if not self._ended:  # closed without a FIN first (TLS transports, aborts)
                self.eof_received()
            return
        self._lost = exc
        if self._receiver is not None:
            self._receiver.connection_lost(exc)
