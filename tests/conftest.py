"""Fixtures shared by every test module: TLS material from a throw-away CA (trustme)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from sla_exporter.eventloop import uvloop_factory

try:
    import uvloop
except ImportError:  # Windows: the exporter runs on asyncio's loop only
    uvloop = None  # type: ignore[assignment]


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A certificate authority the probes are told to trust through `tls.ca_file`."""
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server-side SSL context presenting `cert`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@pytest.fixture(scope="session")
def localhost_cert(ca: trustme.CA) -> trustme.LeafCert:
    """A valid certificate for localhost and 127.0.0.1, valid for a year."""
    return ca.issue_cert("localhost", "127.0.0.1")


@pytest.fixture(scope="session")
def expired_cert(ca: trustme.CA) -> trustme.LeafCert:
    """A certificate for localhost that expired yesterday."""
    now = datetime.datetime.now(datetime.UTC)
    return ca.issue_cert(
        "localhost",
        "127.0.0.1",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )


@pytest.fixture(scope="session")
def wrong_host_cert(ca: trustme.CA) -> trustme.LeafCert:
    """A valid certificate, but for another host name."""
    return ca.issue_cert("not-this-host.example")


@pytest.fixture(scope="session")
def self_signed_cert() -> trustme.LeafCert:
    """A certificate from a CA the probes were never told to trust."""
    return trustme.CA().issue_cert("localhost", "127.0.0.1")


@pytest.fixture
def secret_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "secret"
    path.write_text("s3cr3t-value\n")
    yield path


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on both event loops the exporter can run on (`--event-loop`):
    uvloop (the exporter's, eventloop.py), its default, and asyncio's own, where uvloop is not
    installed."""
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    if uvloop is not None:
        loops["uvloop"] = uvloop_factory()
    return loops
