"""TLS client contexts shared by every probe, reporting each handshake to the probe it serves.

Building a context costs milliseconds (the system CA store alone is ~20 ms) and a context holds
no per-connection state, so there is one per TLS setting for the whole process, rebuilt when its
CA file changes on disk. Each probe still does a full handshake with full verification on a fresh
connection: nothing that a context shares (no session cache is used) can hide a bad certificate.

A shared context cannot carry a probe's callbacks, so probes announce themselves through a
context variable: the TLS object of a connection is built (`wrap_bio`) in the task that opened
it, and the object keeps the observer it found there until its handshake is done.
"""

from __future__ import annotations

import contextlib
import functools
import os
import ssl
from collections.abc import Iterator
from contextvars import ContextVar, Token
from typing import Protocol

from ..values import TLS
from .base import ProbeFailed, Reason


class HandshakeObserver(Protocol):
    """What a probe learns of its TLS connections."""

    def tls_started(self, tls: ssl.SSLObject) -> None:
        """TCP is connected and the handshake begins (asyncio has built the TLS object)."""

    def tls_done(self, tls: ssl.SSLObject) -> None:
        """The handshake completed and the peer's certificate (if verified) passed."""


_observer: ContextVar[HandshakeObserver | None] = ContextVar("tls_observer", default=None)


class _ObservedObject(ssl.SSLObject):
    """An SSLObject that tells its observer when the handshake completes, whoever drives it."""

    _observer: HandshakeObserver | None = None

    def do_handshake(self) -> None:
        super().do_handshake()  # raises SSLWantReadError until the handshake is done
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.tls_done(self)


class _ObservedContext(ssl.SSLContext):
    """A client context whose connections report to the observer of the task opening them.

    asyncio's and uvloop's TLS transports call wrap_bio once TCP is connected (HTTPS through
    aiohttp, implicit TLS and STARTTLS through aiosmtplib alike), in a callback that runs in the
    context of the task that opened the connection, so the call also marks the end of TCP
    connect and the start of the handshake: the split aiohttp's tracing signals do not give.
    """

    sslobject_class = _ObservedObject

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        tls = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        observer = _observer.get()
        if observer is not None and isinstance(tls, _ObservedObject):
            tls._observer = observer
            observer.tls_started(tls)
        return tls


@contextlib.contextmanager
def observing(observer: HandshakeObserver) -> Iterator[None]:
    """Report the handshakes of connections opened in this block to `observer`."""
    token = start_observing(observer)
    try:
        yield
    finally:
        stop_observing(token)


def start_observing(observer: HandshakeObserver) -> Token[HandshakeObserver | None]:
    """Report the handshakes of connections opened from now on in this context to `observer`,
    until `stop_observing` (what `observing` does, without a generator per probe)."""
    return _observer.set(observer)


def stop_observing(token: Token[HandshakeObserver | None]) -> None:
    _observer.reset(token)


@functools.lru_cache(maxsize=32)
def _context(verify: bool, ca_file: str | None, _stamp: object) -> _ObservedContext:
    context = _ObservedContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_file is not None:
        # Like blackbox_exporter's ca_file: it replaces the system roots, it does not add to them.
        context.load_verify_locations(cafile=ca_file)
    else:
        context.load_default_certs()  # what ssl.create_default_context() does
    return context


def client_context(tls: TLS) -> ssl.SSLContext:
    """The shared client context for `tls`; a CA file is read again when it changes on disk."""
    stamp = None
    if tls.verify and tls.ca_file is not None:
        try:
            stat = os.stat(tls.ca_file)
        except OSError as err:
            raise ProbeFailed(Reason.TLS, f"cannot read tls.ca_file: {err.strerror}") from err
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    try:
        return _context(tls.verify, tls.ca_file if tls.verify else None, stamp)
    except (OSError, ssl.SSLError) as err:
        detail = err.strerror or str(err)
        raise ProbeFailed(Reason.TLS, f"cannot load tls.ca_file: {detail}") from None
