"""uvloop's event loop, without a thread-pool trip for every connect to an IP address.

aiohttp connects through aiohappyeyeballs, which hands each resolved address to
`loop.sock_connect`. uvloop 0.23's `sock_connect` resolves that address again, asking
`getaddrinfo` with the socket's family but no socket type; only a call with a type takes uvloop's
numeric fast path, so every connect sent an IP literal through libuv's thread pool: a wake-up of
a worker thread and one of the loop, about 45 µs of CPU a probe, 2-3% of an HTTPS probe
(bench/RESULTS.md). The loop here answers exactly that call, an IP literal of the family asked
with no type, protocol or flags, itself, with the entries the C library gives for it (one per
socket type); every other call is uvloop's own.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

# What the C library answers for an IP literal and no socket type: one entry per socket type.
_KINDS = (
    (socket.SOCK_STREAM, socket.IPPROTO_TCP),
    (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
    (socket.SOCK_RAW, 0),
)
_FAMILIES: dict[int, socket.AddressFamily] = {f: f for f in (socket.AF_INET, socket.AF_INET6)}


def uvloop_factory() -> type[asyncio.AbstractEventLoop]:
    """The event loop class: uvloop's, answering numeric lookups without its thread pool."""
    import uvloop

    class Loop(uvloop.Loop):
        async def getaddrinfo(
            self,
            host: Any,
            port: Any,
            *,
            family: int = 0,
            type: int = 0,
            proto: int = 0,
            flags: int = 0,
        ) -> list[tuple[Any, ...]]:
            if type == 0 and proto == 0 and flags == 0:
                found = numeric_addresses(host, port, family)
                if found is not None:
                    return found
            return await super().getaddrinfo(
                host, port, family=family, type=type, proto=proto, flags=flags
            )

    return Loop


def library(loop: asyncio.AbstractEventLoop) -> str:
    """Whose event loop `loop` is ("uvloop", "asyncio"), this module's subclass seen through."""
    own = next(c for c in type(loop).__mro__ if c.__module__ != __name__)
    return own.__module__.partition(".")[0]


def numeric_addresses(host: Any, port: Any, family: int) -> list[tuple[Any, ...]] | None:
    """getaddrinfo's answer for an IP literal `host` of `family` and a port number, with no
    type, protocol or flags: the address once per socket type. None for anything else."""
    kind = _FAMILIES.get(family)
    if kind is None or not isinstance(host, str) or type(port) is not int or not 0 <= port < 65536:
        return None
    try:
        text = socket.inet_ntop(kind, socket.inet_pton(kind, host))  # as the C library writes it
    except (OSError, ValueError):
        return None
    address = (text, port) if kind == socket.AF_INET else (text, port, 0, 0)
    return [(kind, socket_type, protocol, "", address) for socket_type, protocol in _KINDS]
