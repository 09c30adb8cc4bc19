"""Real servers on loopback for the HTTP-based probe tests: aiohttp apps and raw-socket scripts."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serve(app: web.Application, ssl: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 port 0 and yield its base URL (no trailing slash)."""
    server = TestServer(app)
    # A short shutdown: a handler left hanging by a test must not hold up the next one.
    await server.start_server(ssl=ssl, shutdown_timeout=0.2)
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@dataclass
class RawServer:
    """A TCP server running a scripted handler per connection; counts what it saw."""

    url: str = ""
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


@asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[RawServer]:
    """Serve `handler` on 127.0.0.1 port 0; handlers still running at the end are cancelled."""
    state = RawServer()
    tasks: set[asyncio.Task[None]] = set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield state
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """The request line and headers (the probes under test send no body to raw servers)."""
    return await reader.readuntil(b"\r\n\r\n")


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Proxy:
    """A forward proxy on loopback: what it was asked (request lines), and the credentials."""

    url: str = ""
    requests: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@asynccontextmanager
async def forward_proxy(credentials: str | None = None) -> AsyncIterator[Proxy]:
    """An HTTP proxy as clients use one (RFC 9110 9.3.6, RFC 9112 3.2.2): CONNECT host:port
    opens a tunnel, an absolute URL is forwarded to its origin. With `credentials`
    ("user:password"), a request without them in Proxy-Authorization gets 407."""
    state = Proxy()
    expected = None
    if credentials is not None:
        expected = "Basic " + base64.b64encode(credentials.encode()).decode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        line, *fields = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        state.requests.append(line)
        state.authorizations.append(headers.get("proxy-authorization"))
        if expected is not None and headers.get("proxy-authorization") != expected:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        method, target, _ = line.split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream_reader, upstream = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            first = b""
        else:
            origin = URL(target)
            upstream_reader, upstream = await asyncio.open_connection(origin.host, origin.port)
            path = origin.raw_path_qs
            kept = [f for f in fields if f and not f.lower().startswith("proxy-")]
            first = "\r\n".join([f"{method} {path} HTTP/1.1", *kept, "", ""]).encode("latin-1")
        upstream.write(first)
        await asyncio.gather(_pipe(reader, upstream), _pipe(upstream_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()
