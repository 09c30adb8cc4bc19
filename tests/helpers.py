"""Small helpers every test module may use: free ports, waiting for a condition, tools on PATH."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import pytest

T = TypeVar("T")


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll `check` until it returns something truthy (an OSError, such as a refused
    connection, counts as not yet); fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            result = check()
            if result:
                return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.1)


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str = "condition", timeout: float = 10.0
) -> None:
    """`wait_for` inside the event loop: await `check()` until it is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)


def tool(name: str) -> str:
    """The path of a command-line tool, or a failed test that says how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not on PATH. Install Debian's `prometheus` (promtool) and "
            "`prometheus-alertmanager` (amtool, prometheus-alertmanager) packages "
            "(scripts/install.sh); these tests must not be skipped."
        )
    return path


def ts(text: str) -> float:
    """Unix time of an ISO 8601 date and time with its offset: `ts("2026-03-01T00:00:00+01:00")`."""
    return datetime.fromisoformat(text).timestamp()
