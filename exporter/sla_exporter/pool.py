"""One month figure per service across locations, under the quorum the live alerts use.

Each location's exporter keeps its own month (ledger.py). An SLA has one figure per service, so
with a `locations:` section in the SLA file every exporter also reads the other locations'
months (`GET /api/v1/months`: which spans of time were up and which down, per service) and pools
them moment by moment. The slots of a service lie on the same grid in every location, so the
spans line up exactly:

    maintenance   declared in the SLA file (the same calendar everywhere)
    down          more than half of the locations that know the moment saw it down
    up            otherwise, when at least one location knows it
    unknown       no location's result covers it (an unreachable or stopped location is unknown,
                  never down: the quorum is taken among the locations that know)
    unmonitored   before the first slot any location probed

The quorum is the live rules' (sla:location_quorum:ratio in prometheus/rules/recording.yml:
more than half); tests/test_pool.py holds the two equal. A location that cannot be reached keeps
the spans it last sent; the time after them is unknown there until it answers again, and then
its whole months are read anew, so every exporter converges on the same figure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .config import Config, Location
from .ledger import Figures, Ledger, Month, Run, ServiceBook
from .probes.tls import client_context

log = logging.getLogger(__name__)

QUORUM = 0.5  # down when MORE than this fraction of the locations that know a moment saw it down
INTERVAL = 60.0  # seconds between two reads of the other locations' months
MONTHS_PATH = "/api/v1/months"


@dataclass(frozen=True)
class Timeline:
    """One location's spans of one service's month."""

    since: int | None
    runs: tuple[tuple[int, int, bool], ...]


def pool(timelines: Iterable[Timeline], quorum: float = QUORUM) -> Timeline:
    """The spans pooled across `timelines`: down where more than `quorum` of the locations that
    cover a moment saw it down, up where others cover it, nothing where none does."""
    timelines = list(timelines)
    edges: list[tuple[int, int, int]] = []  # (time, +1/-1, up or down)
    for timeline in timelines:
        for start, end, up in timeline.runs:
            edges.append((start, 1, int(up)))
            edges.append((end, -1, int(up)))
    edges.sort()
    counts = {True: 0, False: 0}
    runs: list[tuple[int, int, bool]] = []
    i = 0
    while i < len(edges):
        at = edges[i][0]
        while i < len(edges) and edges[i][0] == at:
            _, step, state = edges[i]
            counts[bool(state)] += step
            i += 1
        if i == len(edges):
            break
        known = counts[True] + counts[False]
        if known:
            down = counts[False] > quorum * known
            following = edges[i][0]
            if runs and runs[-1][1] == at and runs[-1][2] == (not down):
                runs[-1] = (runs[-1][0], following, not down)
            else:
                runs.append((at, following, not down))
    sinces = [t.since for t in timelines if t.since is not None]
    return Timeline(min(sinces) if sinces else None, tuple(runs))


def own_timeline(ledger: Ledger, service: str, key: str) -> Timeline:
    book = ledger.books.get(service)
    if book is None:
        return Timeline(None, ())
    month = book.months.get(key)
    runs = tuple((r.start, r.end, r.up) for r in month.runs) if month is not None else ()
    return Timeline(book.since, runs)


def months_document(ledger: Ledger, location: str, instance: str = "") -> dict[str, Any]:
    """What `GET /api/v1/months` serves: this location's spans of every service's kept months.

    `months` is what the other locations pool; `detail` (the reasons of each run, declared
    maintenance, terms and recovered totals) and `instance` (a token of this process) are for
    the replicas of this location, which merge each other's months into their own
    (replicas.py)."""
    return {
        "location": location,
        "instance": instance,
        "timezone": ledger.zone.key,
        "services": {
            name: {
                "since": book.since,
                "months": {
                    key: [[r.start, r.end, r.up] for r in month.runs]
                    for key, month in book.months.items()
                },
                "detail": {
                    key: {
                        "reasons": [sorted(r.reasons) for r in month.runs],
                        "maintenance": [list(span) for span in month.maintenance],
                        "terms": [[t.start, t.objective, t.unknown] for t in month.terms],
                        "carried": month.carried,
                        "carried_until": month.carried_until,
                    }
                    for key, month in book.months.items()
                },
            }
            for name, book in ledger.books.items()
        },
    }


@dataclass
class Peer:
    """Another location: what it last sent, and when."""

    name: str
    location: Location
    services: dict[str, Any] = field(default_factory=dict)
    read_at: float | None = None
    error: str = ""

    def timeline(self, service: str, key: str) -> Timeline:
        entry = self.services.get(service)
        if entry is None:
            return Timeline(None, ())
        runs = tuple((a, b, bool(up)) for a, b, up in entry["months"].get(key, []))
        return Timeline(entry["since"], runs)


class Pool:
    """Reads the other locations' months and keeps each service's pooled month figures."""

    def __init__(self, location: str, ledger: Callable[[], Ledger | None]) -> None:
        self.location = location
        self.ledger = ledger
        self.peers: dict[str, Peer] = {}
        self.figures: dict[str, dict[str, Figures]] = {}  # service -> month -> pooled figures

    def configure(self, config: Config) -> None:
        """Follow the SLA file's locations (the exporter checked that this one is among them)."""
        self.peers = {
            name: self.peers.get(name) or Peer(name, location)
            for name, location in config.locations.items()
            if name != self.location
        }
        for name, peer in self.peers.items():
            peer.location = config.locations[name]

    async def read(self, session: aiohttp.ClientSession, peer: Peer) -> None:
        location = peer.location
        headers = {}
        if location.basic_auth is not None:
            password = location.basic_auth.password.get_secret_value()
            headers["Authorization"] = aiohttp.encode_basic_auth(
                location.basic_auth.username, password
            )
        url = location.url.rstrip("/") + MONTHS_PATH
        ssl = client_context(location.tls) if url.startswith("https:") else None
        try:
            async with session.get(url, headers=headers, ssl=ssl or True) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                body = await response.json()
            services = body["services"]
            if not isinstance(services, dict):
                raise ValueError("no services in the answer")
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as err:
            error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            if error != peer.error:
                log.warning("cannot read the months of location %s (%s): %s", peer.name, url, error)
            peer.error = error
            return
        if peer.error:
            log.info("reading the months of location %s again", peer.name)
        peer.services, peer.read_at, peer.error = services, time.time(), ""

    async def refresh(self, config: Config, clock: float) -> None:
        """Read every other location, then pool every service's kept months."""
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self.read(session, peer) for peer in self.peers.values()))
        self.compute(config, clock)

    def compute(self, config: Config, clock: float) -> None:
        ledger = self.ledger()
        if ledger is None:
            return
        windows = config.maintenance_by_service()
        figures: dict[str, dict[str, Figures]] = {}
        for name, service in config.services.items():
            own = ledger.books.get(name) or ServiceBook()
            months: dict[str, Figures] = {}
            for key in ledger.months(name, clock):
                pooled = pool(
                    [own_timeline(ledger, name, key)]
                    + [peer.timeline(name, key) for peer in self.peers.values()]
                )
                mine = own.months.get(key) or Month()
                book = ServiceBook(
                    since=pooled.since,
                    committed=own.committed,
                    months={
                        key: Month(
                            runs=[Run(a, b, up) for a, b, up in pooled.runs],
                            maintenance=mine.maintenance,
                            terms=mine.terms,
                        )
                    },
                )
                months[key] = ledger.exposed(
                    name,
                    key,
                    clock,
                    service.interval,
                    windows.get(name, ()),
                    config.objective(name),
                    config.sla.unknown,
                    book=book,
                )
            figures[name] = months
        self.figures = figures
