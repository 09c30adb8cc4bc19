"""The two exporters under test, and the load that Prometheus would put on each.

Our exporter probes on its own schedule; Prometheus only scrapes its /metrics (every 15 s).
blackbox_exporter probes when asked: Prometheus scrapes /probe?module=...&target=... once per
target per interval, each target at its own offset in the interval (a hash of the target, as
Prometheus spreads its scrape loops), with Prometheus' own request headers: it negotiates
OpenMetrics and gzip and announces the scrape timeout, from which blackbox derives its own.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .procs import Proc, free_port

# What Prometheus 2.42 (Debian bookworm) sends with every scrape.
PROMETHEUS_HEADERS = {
    "Accept": (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    ),
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.42.0",
}

_SUCCESS = re.compile(rb"^probe_success (\S+)", re.M)
_DURATION = re.compile(rb"^probe_duration_seconds (\S+)", re.M)


@dataclass
class Scrape:
    seconds: float  # request sent to last byte received
    wire_bytes: int  # as transferred (gzip)
    text_bytes: int  # uncompressed exposition
    month_series: int  # services' month series (sla_month_*{sla_service=...}), months x 9 each


class Ours:
    """Our exporter (`python -m bench.exporter_proc`, i.e. sla-exporter plus bench samples)."""

    def __init__(
        self,
        work: Path,
        config: Path,
        extra: list[str] | None = None,
        name: str = "ours",
        env: dict[str, str] | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ledger_path = self.ledger_for(work, name)
        argv = [
            sys.executable, "-m", "bench.exporter_proc",
            "--config.file", str(config),
            "--web.listen-address", f"127.0.0.1:{self.port}",
            "--storage.path", str(self.ledger_path),
            "--log.level", "warn",
            *(extra or []),
        ]  # fmt: skip
        self.proc = Proc(name, argv, work, env)

    @staticmethod
    def ledger_for(work: Path, name: str) -> Path:
        """Where the exporter called `name` keeps its months (there before it starts, it is
        read at start)."""
        return work / f"{name}-ledger.json"

    def wait_ready(self, timeout: float = 300.0) -> None:
        self.proc.wait_port(self.port, timeout)

    async def samples(self, session: aiohttp.ClientSession, names: bool = False) -> dict[str, Any]:
        """Lags, durations and failures since the previous call (the window starts afresh)."""
        query = "?names=1" if names else ""
        async with session.get(f"{self.url}/-/bench/samples{query}") as resp:
            resp.raise_for_status()
            data: dict[str, Any] = await resp.json()
            return data

    async def scrape(self, session: aiohttp.ClientSession) -> Scrape:
        """One scrape of /metrics as Prometheus does it."""
        started = time.perf_counter()
        async with session.get(
            f"{self.url}/metrics",
            headers={**PROMETHEUS_HEADERS, "X-Prometheus-Scrape-Timeout-Seconds": "10"},
            auto_decompress=False,
        ) as resp:
            resp.raise_for_status()
            wire = await resp.read()
        seconds = time.perf_counter() - started
        text = wire
        if resp.headers.get("Content-Encoding") == "gzip":
            text = gzip.decompress(wire)
        months = sum(
            1
            for line in text.splitlines()
            if line.startswith(b"sla_month_") and b"sla_service=" in line
        )
        return Scrape(seconds, len(wire), len(text), months)

    def stop(self) -> None:
        self.proc.stop(timeout=30)


class Blackbox:
    """prometheus-blackbox-exporter from Debian, on a free loopback port."""

    def __init__(self, work: Path, config: Path, binary: str, name: str = "blackbox"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            binary,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.proc = Proc(name, argv, work)

    def wait_ready(self) -> None:
        self.proc.wait_port(self.port)

    def stop(self) -> None:
        self.proc.stop()


@dataclass
class Tally:
    """Probes blackbox finished, as its /probe answers report them."""

    ok: int = 0
    failed: int = 0
    durations: list[float] = field(default_factory=list)

    @property
    def probes(self) -> int:
        return self.ok + self.failed


class BlackboxLoad:
    """Scrapes blackbox's /probe for each target once per `interval`, as Prometheus does: each
    target at its own offset in the interval, from a hash of the target (how Prometheus spreads
    its scrape loops), never two scrapes of one target at once."""

    def __init__(self, blackbox: Blackbox, targets: list[tuple[str, str]], interval: float):
        self.blackbox = blackbox
        self.targets = targets
        self.interval = interval
        self.tally = Tally()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # keep-alive, as Prometheus does
            timeout=aiohttp.ClientTimeout(total=30),
        )
        loop = asyncio.get_running_loop()
        now = loop.time()
        for module, target in self.targets:
            digest = hashlib.sha256(f"{module}|{target}|{len(self._tasks)}".encode()).digest()
            offset = int.from_bytes(digest[:8], "big") / 2**64 * self.interval
            self._tasks.append(asyncio.create_task(self._loop(module, target, now + offset)))

    async def _loop(self, module: str, target: str, first: float) -> None:
        loop = asyncio.get_running_loop()
        due = first
        while True:
            await asyncio.sleep(due - loop.time())
            await self._probe(module, target)
            due += self.interval
            while due < loop.time():  # behind: skip, as a Prometheus scrape loop does
                due += self.interval

    async def _probe(self, module: str, target: str) -> tuple[bool, float]:
        assert self._session is not None
        headers = {
            **PROMETHEUS_HEADERS,
            "X-Prometheus-Scrape-Timeout-Seconds": f"{self.interval:g}",
        }
        try:
            async with self._session.get(
                f"{self.blackbox.url}/probe",
                params={"module": module, "target": target},
                headers=headers,
            ) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            self.tally.failed += 1
            return False, 0.0
        success = _SUCCESS.search(body)
        duration = _DURATION.search(body)
        ok = success is not None and float(success.group(1)) == 1.0
        seconds = float(duration.group(1)) if duration else 0.0
        if ok:
            self.tally.ok += 1
        else:
            self.tally.failed += 1
        self.tally.durations.append(seconds)
        return ok, seconds

    def take(self) -> Tally:
        """What finished since the last call; the next window starts afresh."""
        tally, self.tally = self.tally, Tally()
        return tally

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


class RawLoad:
    """The floor: a bare asyncio socket client timing the delay target, no HTTP library.

    Timed from before connect to the end of the response, like a probe; what it measures
    beyond 200 ms is what the loopback network and this machine's wake-ups cost anyone.
    """

    def __init__(self, url: str, count: int, interval: float) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.count = count
        self.interval = interval
        self.durations: list[float] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for i in range(self.count):
            digest = hashlib.sha256(f"raw|{i}".encode()).digest()
            offset = int.from_bytes(digest[:8], "big") / 2**64 * self.interval
            self._tasks.append(asyncio.create_task(self._loop(now + offset)))

    async def _loop(self, first: float) -> None:
        loop = asyncio.get_running_loop()
        due = first
        request = f"GET / HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode()
        while True:
            await asyncio.sleep(due - loop.time())
            started = time.perf_counter()
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(request)
            await reader.read()  # to EOF: the target closes after its answer
            self.durations.append(time.perf_counter() - started)
            writer.close()
            due += self.interval

    def take(self) -> list[float]:
        durations, self.durations = self.durations, []
        return durations

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
