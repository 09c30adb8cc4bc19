"""Replicas of one location: exporters that probe the same services from the same place and merge
each other's months, so that any one of them alone keeps the month exact.

An exporter that stops (a crash, an upgrade, a lost machine) leaves its slots unknown, and
unknown time counts against the service under the default policy: the monitor's outage would
be billed as the customer's. So a location may run two or more exporters on the same SLA file
(`--replica.peer URL` on each, naming the others). Each one probes every slot as usual, and
every `--replica.refresh-interval` reads the others' months (`GET /api/v1/months`, the document
the other locations read for the pooled month) and joins them into its own ledger, moment by
moment (Month.merge):

    up        if any replica saw the moment up
    down      if the replicas that probed it all saw it down (the reasons of each kept)
    unknown   if none did

That is the live rules' view of one location with several exporters (`max` of
sla_probe_success, `min` of the consecutive failures: one success is enough), and it is a
join: it does not depend on who reads whom first or how often, so the replicas converge on the
same month and each one persists all of it in its own ledger. A replica that was down fills its
gap from the others at start, before it serves anything; a replica whose disk is lost starts
empty and takes every kept month from the others. Each replica still exposes the location's
month as its own: Prometheus must read one copy per location (max over the replicas of each
state), never their sum (docs/OPERATIONS.md, "Replicas").

Why merge rather than elect one replica: an election needs a lease, and during the seconds a
lease takes to move either nobody counts (unknown time) or two do (double counting); merging
needs no coordination, loses no slot while one replica is alive, and survives a partition
between the replicas (each keeps probing; they converge once they see each other again).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

from .config import Config
from .ledger import Ledger, MonthDocument, Policy, State, Term
from .pool import MONTHS_PATH

log = logging.getLogger(__name__)

INTERVAL = 15.0  # seconds between two reads of the other replicas' months
START_TIMEOUT = 10.0  # seconds the first read, before the exporter serves, may take at most
BATCH = 500  # services merged between two turns of the event loop


# --------------------------------------------------------------------------------------------
# The document, validated: a replica's answer must not corrupt this one's ledger


class _Lax(BaseModel):
    model_config = ConfigDict(extra="ignore")  # newer replicas may send more


class _Detail(_Lax):
    reasons: list[list[str]] = []
    maintenance: list[tuple[int, int]] = []
    terms: list[tuple[int, float, Policy]] = []
    carried: dict[State, int] = {}
    carried_until: int = 0


class _Service(_Lax):
    since: int | None = None
    months: dict[str, list[tuple[int, int, bool]]] = {}
    detail: dict[str, _Detail] = {}


class _Document(_Lax):
    instance: str = ""
    timezone: str
    services: dict[str, _Service]


def month_documents(entry: _Service) -> dict[str, MonthDocument]:
    """One service's months as Ledger.merge takes them."""
    months = {}
    for key, runs in entry.months.items():
        detail = entry.detail.get(key) or _Detail()
        reasons = detail.reasons
        months[key] = MonthDocument(
            runs=[
                (a, b, up, tuple(reasons[i]) if i < len(reasons) else ())
                for i, (a, b, up) in enumerate(runs)
                if a < b
            ],
            maintenance=[(a, b) for a, b in detail.maintenance if a < b],
            terms=[Term(start, objective, unknown) for start, objective, unknown in detail.terms],
            carried={str(state): value for state, value in detail.carried.items() if value >= 0},
            carried_until=detail.carried_until,
        )
    return months


# --------------------------------------------------------------------------------------------
# Reading the others


@dataclass
class Peer:
    """Another replica, as given to --replica.peer: every address its name resolves to is read
    (a name that resolves to all replicas, e.g. a Kubernetes headless Service or a compose
    network alias, names them all; this process knows itself among them, by a local address on
    its own port or by the token its answer carries, and skips it)."""

    url: str
    errors: dict[str, str] = field(default_factory=dict)  # address -> the last error, if any
    read_at: dict[str, float] = field(default_factory=dict)  # address -> last good read

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def target(self, address: str) -> str:
        """The months URL at one of the peer's addresses."""
        parts = urlsplit(self.url)
        host = f"[{address}]" if ":" in address else address
        base = parts._replace(netloc=f"{host}:{self.port}", path=parts.path.rstrip("/"))
        return base.geturl() + MONTHS_PATH


class Replicas:
    """The other replicas of this exporter's location, read and merged into its ledger."""

    def __init__(
        self,
        urls: list[str],
        ledger: Callable[[], Ledger | None],
        auth: tuple[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        on_read: Callable[[str, str, bool], None] = lambda url, address, ok: None,
        port: int | None = None,
    ) -> None:
        self.peers = [Peer(url) for url in urls]
        self.port = port  # the port this exporter listens on, to know itself among the peers
        self.ledger = ledger
        self.auth = auth
        self.tls = tls
        self.on_read = on_read
        self.instance = secrets.token_hex(8)  # tells this process apart in a peer list
        self.selves: set[str] = set()  # addresses found to be this process
        self.synced = 0  # reads merged so far, for tests and the curious

    async def addresses(self, peer: Peer) -> list[str]:
        host = peer.host
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, peer.port, type=socket.SOCK_STREAM
        )
        found = [str(info[4][0]) for info in infos]
        return list(dict.fromkeys(found))  # in the resolver's order, once each

    async def read(self, session: aiohttp.ClientSession, peer: Peer) -> list[_Document]:
        """The months of every address of `peer` that answers (but this process's own)."""
        try:
            addresses = await self.addresses(peer)
        except OSError as err:
            self._failed(peer, peer.host, f"cannot resolve {peer.host}: {err}")
            return []
        for address in addresses:
            if peer.port == self.port and address not in self.selves and _local(address):
                self.selves.add(address)  # known before it answers: at start it does not yet
        documents = await asyncio.gather(
            *(self._read_one(session, peer, a) for a in addresses if a not in self.selves)
        )
        return [document for document in documents if document is not None]

    async def _read_one(
        self, session: aiohttp.ClientSession, peer: Peer, address: str
    ) -> _Document | None:
        target = peer.target(address)
        headers = {"Host": urlsplit(peer.url).netloc.rpartition("@")[2]}
        if self.auth is not None:
            headers["Authorization"] = aiohttp.encode_basic_auth(*self.auth)
        https = target.startswith("https:")
        try:
            async with session.get(
                target,
                headers=headers,
                ssl=(self.tls or True) if https else True,
                server_hostname=peer.host if https else None,
            ) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                document = _Document.model_validate(await response.json())
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            self._failed(peer, address, f"not a months document: {where}: {first['msg']}")
            return None
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            self._failed(peer, address, error)
            return None
        if document.instance and document.instance == self.instance:
            self.selves.add(address)
            log.debug("replica %s at %s is this exporter itself; skipped", peer.url, address)
            return None
        if peer.errors.pop(address, None):
            log.info("reading the months of replica %s at %s again", peer.url, address)
        peer.read_at[address] = time.time()
        self.on_read(peer.url, address, True)
        return document

    def _failed(self, peer: Peer, address: str, error: str) -> None:
        if peer.errors.get(address) != error:
            log.warning("cannot read the months of replica %s (%s): %s", peer.url, address, error)
        peer.errors[address] = error
        self.on_read(peer.url, address, False)

    async def sync(self, config: Config, timeout: float = 20.0) -> int:
        """Read every other replica and merge its months of this exporter's services; return
        the milliseconds of this ledger that changed."""
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            found = await asyncio.gather(*(self.read(session, peer) for peer in self.peers))
        changed = 0
        for document in (document for documents in found for document in documents):
            changed += await self.merge(config, document)
        return changed

    async def merge(self, config: Config, document: _Document) -> int:
        ledger = self.ledger()
        if ledger is None:
            return 0
        if document.timezone != ledger.zone.key:
            log.error(
                "a replica counts its months in %s, this exporter in %s: not merged (replicas "
                "must read the same SLA file)",
                document.timezone,
                ledger.zone.key,
            )
            return 0
        changed = 0
        names = [name for name in config.services if name in document.services]
        for i in range(0, len(names), BATCH):
            for name in names[i : i + BATCH]:
                entry = document.services[name]
                changed += ledger.merge(name, entry.since, month_documents(entry))
            await asyncio.sleep(0)  # probes due meanwhile start on time
        self.synced += 1
        return changed


def _local(address: str) -> bool:
    """Whether `address` is one of this machine's (it can be bound to)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def basic_auth_file(path: str) -> tuple[str, str]:
    """`username:password` from the first line of `path` (--replica.basic-auth-file)."""
    try:
        with open(path, encoding="utf-8") as file:
            line = file.readline().rstrip("\r\n")
    except OSError as err:
        raise ValueError(f"--replica.basic-auth-file {path}: {err.strerror}") from err
    username, colon, password = line.partition(":")
    if not colon or not username or not password:
        raise ValueError(
            f"--replica.basic-auth-file {path}: the first line must be username:password"
        )
    return username, password


def ca_context(path: str) -> ssl.SSLContext:
    """A client context that trusts the CA in `path` (--replica.ca-file)."""
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as err:
        raise ValueError(f"--replica.ca-file {path}: {err}") from err
