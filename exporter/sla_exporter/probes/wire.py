"""TCP and TLS connections for probes, driven straight from the event loop's reader callbacks.

asyncio's transports stack a transport, an SSL protocol and the application protocol, and hand
data between them with scheduled callbacks. A probe opens one connection, says a few lines and
closes it, and in an exporter its probes are spread over the interval, so each one pays for its
own loop wake-ups: every scheduled hand-over is one more. Here the socket is non-blocking, the
loop calls `_readable` when data is there, TLS runs through an `ssl.SSLObject` on memory buffers
(what asyncio's SSL protocol does inside), and decrypted data goes straight to the probe's
`Receiver` in the same callback.

CPU per probe relative to blackbox_exporter's (bench/ at 100 probes/s, runs of 3-5 alternating
pairs minutes apart on one machine, 2026-11-22): HTTP 0.58 with this module, 0.81 with asyncio's
transports, 0.75 with uvloop's; SMTP with STARTTLS 0.76, 1.13 and 0.94. (HTTPS: 0.96, 1.0 and
0.88; its cost is mostly OpenSSL's handshake, see bench/RESULTS.md.) The receiver also sees
each byte when the loop does, so phases are timed where they happen. The figures above are on
asyncio's event loop; the exporter runs on uvloop's by default, which lowers all three (cli.py).

Everything runs on the event loop thread; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any, Protocol

import aiohappyeyeballs

from .base import ProbeFailed, Reason, Trace

HAPPY_EYEBALLS_DELAY = 0.25  # seconds before trying the next address (RFC 8305, as aiohttp)
READ_SIZE = 256 * 1024  # bytes per recv, as asyncio's transports


class Receiver(Protocol):
    """What a probe does with a connection's incoming data (on the event loop thread)."""

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> None:
        """The peer finished sending (FIN, or TLS close_notify)."""

    def connection_lost(self, exc: BaseException) -> None:
        """The connection failed: reset, TLS error. Nothing more will arrive."""


async def connect(
    host: str, port: int, trace: Trace, opened: Callable[[Connection], None] | None = None
) -> Connection:
    """A connected socket to `host`, resolving it unless it is an IP address (phase `dns`), and
    trying its addresses Happy Eyeballs fashion when it has several (phase `connect`).

    `opened` is called with the connection as soon as it is up, from the callback that sees it
    (so the probe's first bytes leave then, not a loop iteration later).
    """
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
    if len(infos) > 1:
        sock = await aiohappyeyeballs.start_connection(
            infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1
        )
        try:
            sock.setblocking(False)
            connection = Connection(loop, sock)
            if opened is not None:
                opened(connection)
        except BaseException:
            sock.close()
            raise
        return connection
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        connection = Connection(loop, sock)
        await _connect(loop, connection, address, opened)
    except BaseException:
        sock.close()
        raise
    return connection


async def _connect(
    loop: asyncio.AbstractEventLoop,
    connection: Connection,
    address: Any,
    opened: Callable[[Connection], None] | None,
) -> None:
    """loop.sock_connect, minus a second poll and callback asyncio spends on every connect."""
    sock = connection.socket
    try:
        sock.connect(address)
    except (BlockingIOError, InterruptedError):
        pass
    else:
        if opened is not None:
            opened(connection)
        return
    fd = sock.fileno()
    done: asyncio.Future[None] = loop.create_future()

    def writable() -> None:
        loop.remove_writer(fd)
        if done.done():
            return
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:  # OSError(errno, ...) is the matching subclass: ConnectionRefusedError ...
            done.set_exception(OSError(error, f"{os.strerror(error)}: {address}"))
            return
        try:
            if opened is not None:
                opened(connection)
        except Exception as exc:  # the probe's coroutine raises it, as if connect had
            done.set_exception(exc)
            return
        done.set_result(None)

    loop.add_writer(fd, writable)
    try:
        await done
    finally:
        if not done.done():
            loop.remove_writer(fd)


class Connection:
    """One connected socket, optionally upgraded to TLS, delivering data to a Receiver."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._receiver: Receiver | None = None
        self._pending = bytearray()  # written but not yet accepted by the socket
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._handshake: Callable[[BaseException | None], None] | None = None
        self._eof = False
        self.closed = False

    # Reading

    def receive(self, receiver: Receiver) -> None:
        """Deliver incoming data to `receiver` from now on (replacing any earlier one)."""
        if self._receiver is None and not self.closed:
            self._loop.add_reader(self._fd, self._readable)
        self._receiver = receiver

    def _readable(self) -> None:
        try:
            data = self._sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if self._tls is None:
            if data:
                self._deliver(data)
            else:
                self._ended()
            return
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        if self._handshake is not None:
            self._shake()
            if self._handshake is not None or self.closed:
                return
        self._decrypt()
        if not data and not self.closed:
            self._ended()

    def _decrypt(self) -> None:
        assert self._tls is not None
        while not self.closed and not self._eof:
            try:
                data = self._tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # close_notify, or a TCP close without it ("ragged EOF", common with HTTPS
                # servers): either way the peer is done sending.
                self._ended()
                break
            except ssl.SSLError as exc:
                self._lost(exc)
                break
            if not data:
                self._ended()
                break
            self._deliver(data)
        self._flush()  # TLS 1.3 may answer (key updates)

    def _deliver(self, data: bytes) -> None:
        if self._receiver is not None:
            self._receiver.data_received(data)

    def _ended(self) -> None:
        if not self._eof:
            self._eof = True
            self._loop.remove_reader(self._fd)
            if self._receiver is not None:
                self._receiver.eof_received()

    def _lost(self, exc: BaseException) -> None:
        receiver, handshake = self._receiver, self._handshake
        self.abort()
        if handshake is not None:
            handshake(exc)
        elif receiver is not None:
            receiver.connection_lost(exc)

    # Writing

    def write(self, data: bytes) -> None:
        """Send `data` (encrypted once TLS is up); what the socket cannot take now follows."""
        if self.closed:
            return
        if self._tls is not None:
            self._tls.write(data)
            self._flush()
        else:
            self._send(data)

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self._send(data)

    def _send(self, data: bytes) -> None:
        if self.closed:
            return
        if self._pending:
            self._pending += data
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        if sent < len(data):
            self._pending += data[sent:]
            self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        try:
            sent = self._sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        del self._pending[:sent]
        if not self._pending:
            self._loop.remove_writer(self._fd)

    # TLS

    def start_tls(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        done: Callable[[BaseException | None], None],
    ) -> None:
        """Begin a TLS handshake; `done(None)` once it completed, `done(error)` if it failed.

        Incoming data is the handshake's until then: call `receive` first.
        """
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=server_hostname
        )
        self._handshake = done
        self._shake()

    async def tls(
        self, context: ssl.SSLContext, server_hostname: str | None, then: bytes = b""
    ) -> None:
        """`start_tls` for coroutines: returns once the handshake completed, raises if it failed.

        `then` is written as soon as the handshake completes, in the same packet as its last
        message, rather than a loop iteration later when the coroutine resumes.
        """
        finished: asyncio.Future[None] = self._loop.create_future()

        def done(error: BaseException | None) -> None:
            if finished.done():
                return
            if error is None:
                if then:
                    self.write(then)
                finished.set_result(None)
            else:
                finished.set_exception(error)

        if self._receiver is None:
            self._loop.add_reader(self._fd, self._readable)
        self.start_tls(context, server_hostname, done)
        await finished

    def _shake(self) -> None:
        assert self._tls is not None and self._handshake is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            if self._eof or self._incoming.eof:
                self._lost(ConnectionResetError("connection closed during the TLS handshake"))
            return
        except (ssl.SSLError, OSError) as exc:
            self._flush()  # the alert, so the server learns why
            self._lost(exc)
            return
        done, self._handshake = self._handshake, None
        done(None)  # a request written now leaves in one packet with the handshake's last one
        self._flush()
        if not self.closed and self._incoming.pending:
            self._decrypt()  # application data that came with the last handshake flight

    @property
    def socket(self) -> socket.socket:
        return self._sock

    # Closing

    def close(self) -> None:
        """Close politely: read what the peer already sent (closing with unread data would
        answer it with a reset), then TLS close_notify unless the peer has closed already."""
        if self.closed:
            return
        self._receiver = None  # whatever comes now is not for the probe
        with contextlib.suppress(OSError):
            for _ in range(4):  # what is there now, not a body that would go on and on
                if self._eof:
                    break
                data = self._sock.recv(READ_SIZE)
                if not data:
                    self._eof = True
                elif self._tls is not None:
                    self._incoming.write(data)
        if self._tls is not None and self._handshake is None:
            with contextlib.suppress(ssl.SSLError, OSError):
                while self._tls.read(READ_SIZE):
                    pass
            if not self._eof:  # a close_notify to a closed socket only provokes a reset
                with contextlib.suppress(ssl.SSLError, OSError):
                    self._tls.unwrap()
                with contextlib.suppress(ssl.SSLError, OSError):
                    self._flush()
        self.abort()

    def abort(self) -> None:
        """Close at once, unsent data and all."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._fd)
        if self._pending:
            self._loop.remove_writer(self._fd)
        self._sock.close()
        self._receiver = None
        self._handshake = None
