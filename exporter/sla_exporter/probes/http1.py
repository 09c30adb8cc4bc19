"""HTTP/1.1 on the wire for probes: one request on one fresh connection, read as it arrives.

A probe needs a small part of what a general HTTP client does (no pool, no keep-alive, no
proxies, no streaming uploads), and a general client spends most of a probe's CPU on the rest:
with aiohttp's client, a plain HTTP probe cost 0.90x the CPU of blackbox_exporter's, against
0.48x now, and the request and response objects, signals and connector machinery were most of
it (bench/RESULTS.md).
So the probe drives its own connection (wire.py) and leaves HTTP itself to h11, the sans-I/O
HTTP/1.1 implementation of the python-hyper project: it writes the request and parses the
response, its framing (Content-Length, chunked, the end of the connection) and interim 1xx
answers, and says precisely what is wrong with a response that breaks the protocol. What is
ours is what a probe wants on top: the phases, timed in the callbacks that see the bytes arrive;
gzip/deflate decoding; and reading that stops one byte past the body limit.

Protocol errors end the exchange as ProbeFailed with the phase they happened in; socket and TLS
errors are raised as they are, for the probe's classifier.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import h11
from multidict import CIMultiDict, CIMultiDictProxy

from .base import ProbeFailed, Reason, Trace, bounded
from .wire import Connection, connect

MAX_HEAD = 64 * 1024  # bytes of status line and headers before the response counts as garbage
_QUOTED = re.compile(r"bytearray\((b'.*?'|b\".*?\")\)")


@dataclass(frozen=True)
class Response:
    """A response with its body read up to max_body_bytes."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    charset: str | None
    too_large: int | None = None  # bytes known to exist when the body exceeded the limit

    def text(self) -> str:
        try:
            return self.body.decode(self.charset or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            return self.body.decode("utf-8", errors="replace")


def _detail(err: h11.RemoteProtocolError) -> str:
    """h11's message, with the bytes it quotes shown as text and kept short."""
    return bounded(_QUOTED.sub(lambda m: m[1][1:], str(err)), 120)


def _charset(content_type: str) -> str | None:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or None
    return None


class _Exchange:
    """Reads one response from a connection (a wire.Receiver); `done` gets it, or the error."""

    def __init__(self, trace: Trace, limit: int) -> None:
        self.trace = trace
        self.limit = limit
        self.done: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.connection: Connection | None = None  # set once connected
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._first = True
        self._head = False  # a HEAD: headers describe a body that does not come
        self._response: h11.Response | None = None
        self._headers: CIMultiDictProxy[str] | None = None
        self._decoder: zlib._Decompress | None = None
        self._body = bytearray()

    def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> bytes:
        """The request as h11 writes it (and so frames the response by: a HEAD has no body).
        A header h11 refuses (a line break in it) is a ValueError."""
        self._head = method == "HEAD"
        encoded = [(name.encode("ascii"), value.encode()) for name, value in headers]
        try:
            data = self._h11.send(h11.Request(method=method, target=target, headers=encoded))
            if body:
                data += self._h11.send(h11.Data(data=body))
            data += self._h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as err:
            raise ValueError(f"cannot write the HTTP request: {err}") from None
        return data

    # wire.Receiver

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        if self._first:
            self._first = False
            if not data.startswith(b"HTTP/"[: len(data)]):  # fail now, not at a blank line
                line = data.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
                self._fail(self._invalid(f"not an HTTP status line: {bounded(line, 60)!r}"))
                return
        self._h11.receive_data(data)
        self._events()

    def eof_received(self) -> None:
        if self.done.done():
            return
        if self._response is None:
            self._fail(
                ProbeFailed(
                    Reason.PROTOCOL, f"server closed the connection during {self.trace.phase}"
                )
            )
            return
        self._h11.receive_data(b"")
        self._events()

    def connection_lost(self, exc: BaseException) -> None:
        self._fail(exc)  # reset, broken pipe, TLS error: the classifier names it

    # The response

    def _events(self) -> None:
        try:
            while not self.done.done():
                event = self._h11.next_event()
                if isinstance(event, h11.Data):
                    self._decoded(event.data)
                elif isinstance(event, h11.Response):
                    self._start_body(event)
                elif isinstance(event, h11.EndOfMessage):
                    self._decoded(b"", final=True)
                    self._finish()
                elif event is h11.NEED_DATA:
                    return
                # InformationalResponse (100 Continue, 103 Early Hints): the real one follows.
        except h11.RemoteProtocolError as err:
            if self._response is None:
                self._fail(self._invalid(_detail(err)))
            else:
                self._fail(self._broken(_detail(err)))
        except ProbeFailed as failure:
            self._fail(failure)

    def _invalid(self, detail: str) -> ProbeFailed:
        return ProbeFailed(Reason.PROTOCOL, f"invalid HTTP response: {detail}")

    def _broken(self, detail: str) -> ProbeFailed:
        return ProbeFailed(
            Reason.PROTOCOL, f"broken response body ({detail}) during {self.trace.phase}"
        )

    def _fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)
        if self.connection is not None:
            self.connection.abort()

    def _finish(self, too_large: int | None = None) -> None:
        if self.done.done():
            return
        self.trace.settle()  # the last byte that counts arrived: the probe's clock stops here
        assert self._response is not None and self._headers is not None
        body = b"" if too_large is not None else bytes(self._body)
        charset = _charset(self._headers.get("Content-Type", ""))
        self.done.set_result(
            Response(self._response.status_code, self._headers, body, charset, too_large)
        )

    def _start_body(self, response: h11.Response) -> None:
        self._response = response
        headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("ascii"), value.decode("utf-8", "replace"))
            for name, value in response.headers.raw_items()
        )
        self._headers = CIMultiDictProxy(headers)
        self.trace.status_code = response.status_code
        self.trace.enter("transfer")
        coding = headers.get("Content-Encoding", "").strip().lower()
        if coding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS)
        length = headers.get("Content-Length")  # h11 checked it is one number
        bodiless = self._head or response.status_code in (204, 304)
        if (
            length is not None
            and not bodiless
            and self._decoder is None
            and int(length) > self.limit
        ):
            self._finish(too_large=int(length))  # refused before reading any of it

    def _decoded(self, data: bytes, final: bool = False) -> None:
        """Add body bytes (decoded if the server compressed them) and stop past the limit."""
        room = self.limit + 1 - len(self._body)
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data, room)
                if final and room > len(data):
                    data += self._decoder.flush()
            except zlib.error as err:
                raise self._broken(f"cannot decode it: {err}") from None
        self._body += data[:room]
        if len(self._body) > self.limit:
            self._finish(too_large=len(self._body))


async def exchange(
    trace: Trace,
    host: str,
    port: int,
    request: tuple[str, str, Sequence[tuple[str, str]], bytes],
    tls: ssl.SSLContext | None,
    server_hostname: str | None,
    limit: int,
) -> Response:
    """Send `request` (method, target, headers, body) on a new connection to `host`:`port`, with
    TLS when `tls` is given, and read the response."""
    exchange = _Exchange(trace, limit)
    data = exchange.request(*request)

    def send(error: BaseException | None = None) -> None:
        if error is not None:
            exchange.connection_lost(error)
            return
        trace.enter("first_byte")
        assert exchange.connection is not None
        exchange.connection.write(data)

    def opened(connection: Connection) -> None:
        exchange.connection = connection
        connection.receive(exchange)
        if tls is None:
            send()
        else:
            # The shared context's observer enters "tls" as the handshake starts; the request
            # goes out from the callback that sees it complete.
            connection.start_tls(tls, server_hostname or host, send)

    connection = await connect(host, port, trace, opened)
    try:
        return await exchange.done
    finally:
        # Nothing stays open past the exchange (no keep-alive); one cut short (timeout, body
        # too large, error) is aborted rather than closed politely.
        if exchange.done.done() and not exchange.done.cancelled() and not exchange.done.exception():
            connection.close()
        else:
            connection.abort()
