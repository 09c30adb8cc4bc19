"""The exporter's uvloop event loop: IP addresses connected to without a thread-pool lookup."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from sla_exporter import eventloop
from sla_exporter.eventloop import numeric_addresses, uvloop_factory

uvloop = pytest.importorskip("uvloop")


@pytest.mark.parametrize(
    ("host", "family", "port"),
    [
        ("127.0.0.1", socket.AF_INET, 443),
        ("10.1.2.3", socket.AF_INET, 0),
        ("::1", socket.AF_INET6, 25),
        ("0:0::1", socket.AF_INET6, 65535),  # written out as the C library writes it: ::1
        ("::ffff:192.0.2.1", socket.AF_INET6, 80),
    ],
)
def test_an_ip_literal_is_answered_as_the_c_library_answers_it(
    host: str, family: socket.AddressFamily, port: int
) -> None:
    assert numeric_addresses(host, port, family) == socket.getaddrinfo(host, port, family)


@pytest.mark.parametrize(
    ("host", "port", "family"),
    [
        ("localhost", 80, socket.AF_INET),  # a name: resolved by uvloop as before
        ("127.0.0.1", "80", socket.AF_INET),  # a service given as text
        ("127.0.0.1", "http", socket.AF_INET),
        ("::1", 80, socket.AF_INET),  # not of the family asked
        ("127.0.0.1", 80, socket.AF_UNSPEC),
        ("fe80::1%lo", 80, socket.AF_INET6),  # a scope: the C library's to read
        ("127.1", 80, socket.AF_INET),  # inet_aton's shorthand, not a literal to uvloop
        ("127.0.0.1", 70000, socket.AF_INET),
        (b"127.0.0.1", 80, socket.AF_INET),
    ],
)
def test_anything_else_is_left_to_uvloop(host: Any, port: Any, family: int) -> None:
    assert numeric_addresses(host, port, family) is None


def _connects(
    loop: asyncio.AbstractEventLoop, host: str, family: socket.AddressFamily
) -> list[tuple[Any, ...]]:
    """Connect a socket to a loopback server with loop.sock_connect (as aiohappyeyeballs does,
    for aiohttp); the lookups answered here on the way."""
    answered: list[tuple[Any, ...]] = []

    def recording(host: Any, port: Any, family: int) -> list[tuple[Any, ...]] | None:
        found = numeric_addresses(host, port, family)
        if found is not None:
            answered.append((host, port, family))
        return found

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), host, 0)
        port = server.sockets[0].getsockname()[1]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, port))
            assert sock.getpeername()[:2] == (host, port)
        server.close()
        await server.wait_closed()

    patch = pytest.MonkeyPatch()
    patch.setattr(eventloop, "numeric_addresses", recording)
    try:
        loop.run_until_complete(main())
    finally:
        patch.undo()
        loop.close()
    return answered


@pytest.mark.parametrize(
    ("host", "family"), [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)]
)
def test_sock_connect_to_an_ip_address_is_answered_without_uvloops_lookup(
    host: str, family: socket.AddressFamily
) -> None:
    # uvloop 0.23's sock_connect looks the address up again with no socket type, which its own
    # fast path does not take (libuv's thread pool does); this loop answers that lookup itself.
    # When uvloop passes a type, the lookup no longer comes here and this test says so.
    try:
        socket.socket(family).close()
    except OSError:
        pytest.skip(f"no {family.name} on this machine")
    answered = _connects(uvloop_factory()(), host, family)
    assert [(h, f) for h, _, f in answered] == [(host, family)]


def test_a_name_is_still_resolved_by_uvloop() -> None:
    async def main() -> list[tuple[Any, ...]]:
        return await asyncio.get_running_loop().getaddrinfo(
            "localhost", 80, family=socket.AF_INET, type=socket.SOCK_STREAM
        )

    loop = uvloop_factory()()
    try:
        found = loop.run_until_complete(main())
    finally:
        loop.close()
    assert found and all(entry[4][0].startswith("127.") for entry in found)


def test_the_loop_is_named_by_its_library() -> None:
    for make, name in ((uvloop_factory(), "uvloop"), (asyncio.new_event_loop, "asyncio")):
        loop = make()
        try:
            assert eventloop.library(loop) == name
        finally:
            loop.close()
