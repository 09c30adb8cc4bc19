"""The running exporter: config, scheduler, store, month ledger and metrics wired together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import pickle
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from . import config as config_mod
from . import pausing, recovery
from .collector import Health, ServiceCollector
from .config import Config, Service
from .ledger import Ledger
from .loader import ConfigError, ConfigInvalid
from .pool import INTERVAL as POOL_INTERVAL
from .pool import Pool
from .probes import ProbeResult
from .probes.base import EXPORTER_FAULTS
from .replicas import INTERVAL as REPLICA_INTERVAL
from .replicas import START_TIMEOUT as REPLICA_START_TIMEOUT
from .replicas import Replicas
from .scheduler import Clock, ProbeFn, Scheduler, SystemClock, probe_service
from .store import Store
from .support.collector import SupportCollector
from .support.desk import SupportDesk, SupportUnavailable
from .zone import ZoneCollector

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 10.0  # seconds of month accounting a crash may lose (that time becomes unknown)
ADVANCE_BATCH = 1000  # services whose month is brought up to date between two event loop turns
CRASH_NOT_READY = 600.0  # seconds /-/ready reports a service whose probe task failed unexpectedly


@dataclass(frozen=True)
class Shard:
    """This exporter's share of the SLA file: shard `index` of `count` (`--shard 2/4`).

    Every shard reads the same file and keeps the services whose name hashes to it, the way
    Prometheus' `hashmod` relabelling shards targets: the last 8 bytes of the MD5 of the name,
    big-endian, modulo `count`, is `index - 1`. So the selection is stable across restarts,
    reloads and machines (Python's own hash() is randomised per process), needs no coordinator,
    and a relabelling rule can tell which shard a service lives on. See docs/SCALING.md.
    """

    index: int = 1
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"--shard must be K/N with 1 <= K <= N, got {self}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`K/N` as given to --shard."""
        index, slash, count = text.partition("/")
        if not slash or not index.isdigit() or not count.isdigit():
            raise ValueError(f"--shard must be K/N with 1 <= K <= N, got {text!r}")
        return cls(int(index), int(count))

    def owns(self, service: str) -> bool:
        if self.count == 1:
            return True
        digest = hashlib.md5(service.encode(), usedforsecurity=False).digest()
        return int.from_bytes(digest[8:], "big") % self.count == self.index - 1

    def select(self, config: Config) -> Config:
        """`config` with only this shard's services; the support desk runs on shard 1 alone."""
        if self.count == 1:
            return config
        services = {name: s for name, s in config.services.items() if self.owns(name)}
        support = config.support if self.index == 1 else None
        return config.model_copy(update={"services": services, "support": support})

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def load(path: str, shard: Shard) -> tuple[Config, int]:
    """The shard's part of the SLA file at `path`, and how many services the whole file has."""
    config = config_mod.load(path)
    return shard.select(config), len(config.services)


def load_elsewhere(path: str, shard: Shard) -> tuple[Config, int]:
    """`load()` in a child process, which sends back only the result (pickled).

    Parsing the file builds far more than the config it yields (YAML nodes, a line for every
    path, validation state), and what is freed is spread between what is kept: with 10,000
    services the process kept ~50 MiB more than the config itself, with 100,000 (every shard
    reads the whole file) ~0.5 GiB. Parsing also takes seconds of pure Python, which in a
    thread of this process would hold the interpreter lock the event loop needs. Blocking, for
    a thread: the child costs a Python start-up, once per (re)load.
    """
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, path, str(shard)], capture_output=True, check=False
    )
    if done.returncode != 0:  # not a config error (those come back pickled): say what it was
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        error = ConfigError(path, 0, "", f"cannot be loaded: {last[0]}")
        raise ConfigInvalid(path, [error])
    kind, *payload = pickle.loads(done.stdout)  # from our own child, not from the network
    if kind == "invalid":
        raise ConfigInvalid(*payload)
    config, total = payload
    return config, total


_CHILD = "import sys; from sla_exporter.exporter import _send; _send(sys.argv[1], sys.argv[2])"


def _send(path: str, shard: str) -> None:
    """The child's side of load_elsewhere: load, select, write the pickled outcome to stdout."""
    result: tuple[object, ...]
    try:
        result = ("ok", *load(path, Shard.parse(shard)))
    except ConfigInvalid as err:
        result = ("invalid", err.file, err.errors)
    sys.stdout.buffer.write(pickle.dumps(result))


class Exporter:
    """Owns everything that lives as long as the process, and swaps configs safely."""

    def __init__(
        self,
        config_path: str,
        storage_path: Path | None = None,
        max_concurrency: int = 128,
        probe: ProbeFn = probe_service,
        clock: Clock | None = None,
        max_start_jitter: float = 5.0,
        freeze_gc: bool = False,
        shard: Shard = Shard(),
        load_elsewhere: bool = False,
        recover_from: tuple[str, str] | None = None,
        location: str | None = None,
        pool_interval: float = POOL_INTERVAL,
        replica_peers: list[str] | None = None,
        replica_interval: float = REPLICA_INTERVAL,
        replica_auth: tuple[str, str] | None = None,
        replica_tls: ssl.SSLContext | None = None,
        port: int | None = None,
    ) -> None:
        self.config_path = config_path
        self.freeze_gc = freeze_gc
        self.shard = shard
        self.load_elsewhere = load_elsewhere
        self.storage_path = storage_path
        self.recover_from = recover_from  # (Prometheus URL, selector) to resume months from
        self.location = location  # this exporter's name in the SLA file's `locations:`
        self.pool_interval = pool_interval
        self.status_public = False  # /status without the web config's basic auth
        self.pool: Pool | None = None  # the month pooled across locations, when they are named
        self._pooler: asyncio.Task[None] | None = None
        self.replica_interval = replica_interval
        self.replicas: Replicas | None = None  # the other exporters of this location, if any
        self._replicator: asyncio.Task[None] | None = None
        self.clock = clock or SystemClock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.health = Health(self.registry, str(shard.index), str(shard.count))
        self.store = Store()
        self.config: Config | None = None
        self.ledger: Ledger | None = None
        self.last_reload_error = ""
        self.ledger_error = ""  # why the ledger could not be written last time, if it could not
        self.crashes: dict[str, float] = {}  # service -> when its probe task last failed
        self._windows: dict[str, list[tuple[float, float]]] = {}  # declared maintenance
        self.ledger_ok = Gauge(
            "sla_exporter_ledger_last_write_successful",
            "Whether the last write of the month ledger to --storage.path succeeded (1) or not.",
            registry=self.registry,
        )
        self.ledger_failures = Counter(
            "sla_exporter_ledger_write_failures",
            "Writes of the month ledger to --storage.path that failed.",
            registry=self.registry,
        )
        self.refused = Counter(
            "sla_exporter_ledger_refused_results",
            "Probe results the month ledger refused because the clock had gone back.",
            registry=self.registry,
        )
        self.task_crashes = Counter(
            "sla_exporter_probe_task_crashes",
            "Unexpected errors in a service's probe task (it resumes at its next slot).",
            ["sla_service"],
            registry=self.registry,
        )
        if replica_peers:
            replica_up = Gauge(
                "sla_exporter_replica_up",
                "Whether the last read of another replica's months (--replica.peer, at one of "
                "the addresses its name resolves to) succeeded (1) or not.",
                ["peer", "address"],
                registry=self.registry,
            )
            self.replicas = Replicas(
                replica_peers,
                lambda: self.ledger,
                auth=replica_auth,
                tls=replica_tls,
                on_read=lambda url, address, ok: replica_up.labels(url, address).set(int(ok)),
                port=port,
            )
        self.scheduler = Scheduler(
            self._on_result,
            probe=probe,
            clock=self.clock,
            max_concurrency=max_concurrency,
            max_start_jitter=max_start_jitter,
            on_lag=lambda name, lag: self.health.lag.observe(lag),
            on_missed=self.store.missed,
            in_flight=self.health.in_flight.set,
            covered=self._covered,
            on_crash=self._on_crash,
        )
        # Not in the registry: /metrics writes the services' series itself, pausing for the
        # event loop as it goes (web.py); the registry holds what is small.
        self.services = ServiceCollector(
            self.store,
            lambda: self.ledger,
            lambda: self.config,
            self.clock.time,
            lambda: self.pool.figures if self.pool is not None else {},
        )
        # Ticket clocks (the `support:` section); renders nothing while it is not configured.
        self.support = SupportDesk(self.clock.time)
        self.registry.register(SupportCollector(self.support))
        self.registry.register(ZoneCollector(lambda: self.config, self.clock.time))
        self._flusher: asyncio.Task[None] | None = None
        self.aside = pausing.Aside()  # the ledger's flush stands aside for a scrape (web.py)
        self._reload_lock = asyncio.Lock()
        # The reload queued behind the running one, which every new request joins; and who
        # still waits for it (a function per request: is its client still there?).
        self._queued: asyncio.Task[ConfigInvalid | None] | None = None
        self._queued_for: list[Callable[[], bool]] = []
        self._reloading: set[asyncio.Task[ConfigInvalid | None]] = set()
        self.reloads = 0  # reloads actually run (read the file), for tests and the curious

    async def start(self) -> None:
        """Load the config (raising ConfigInvalid if it is bad) and start probing.

        The month ledger is read from --storage.path (LedgerInvalid, a RuntimeError, if it
        cannot be used), then completed from Prometheus if asked (RecoveryFailed, likewise)."""
        config = await self._load()
        self._check_location(config)  # ValueError: fatal at start, a failed reload later
        await self.support.apply(config)  # SupportUnavailable (a RuntimeError) is fatal here
        ledger = Ledger(self.storage_path, config.sla.timezone)
        if self.recover_from is not None:
            await recovery.recover(ledger, *self.recover_from)
        self.ledger = ledger
        if self.replicas is not None:
            # What the other replicas counted while this one was away, before anything is
            # probed or served: the first slot is not probed again if they covered it.
            ledger.join = True
            await self._sync_replicas(config, REPLICA_START_TIMEOUT, at_start=True)
        self._apply(config)
        now = self.clock.time()
        for name, service in config.services.items():
            failing = ledger.failing(name, service.interval, now)
            if failing is not None:
                self.store.resume(name, *failing)
        # Written at once: an unwritable folder shows now, in a metric and in /-/ready, not at
        # the first flush or at shutdown.
        self.ledger.mark_dirty()
        await self._write_ledger()
        self._flusher = asyncio.create_task(self._flush_forever(), name="ledger-flush")
        if self.pool is not None:
            self._pooler = asyncio.create_task(self._pool_forever(), name="month-pool")
        if self.replicas is not None:
            self._replicator = asyncio.create_task(self._replicas_forever(), name="replicas")

    def cancel_reloads(self) -> None:
        """Cancel the reload running and the one queued: the process is stopping, and the
        requests waiting for them must not hold up its end."""
        for task in list(self._reloading):
            task.cancel()

    async def stop(self) -> None:
        self.cancel_reloads()
        for task in (self._flusher, self._pooler, self._replicator):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.scheduler.stop()
        await self.support.close()
        if self.ledger is not None:
            self._advance()
            self._save_at_exit(self.ledger)

    def _save_at_exit(self, ledger: Ledger) -> None:
        """Write the ledger one last time; if its file cannot be written, write it elsewhere and
        say where, so that what is in memory is never thrown away without a word."""
        content = ledger.snapshot()
        if content is None:
            return
        try:
            ledger.write(content)
            return
        except OSError as err:
            log.error("cannot write the month ledger to %s: %s", ledger.path, err)
        fallback = Path(tempfile.gettempdir()) / f"sla-ledger-{int(time.time())}.json"
        try:
            ledger.write(content, fallback)
            log.error(
                "the month ledger was saved to %s instead; move it to %s before the next start",
                fallback,
                ledger.path,
            )
        except OSError as err:
            log.error(
                "cannot save the month ledger anywhere (%s); its content follows:\n%s",
                err,
                content.decode(),
            )

    def readiness(self) -> list[str]:
        """Why the exporter is not ready, if it is not: one line per problem."""
        problems = []
        if self.config is None:
            problems.append("no configuration loaded")
        if self.ledger_error:
            problems.append(f"the month ledger cannot be written: {self.ledger_error}")
        now = self.clock.time()
        crashed = sorted(
            name for name, when in self.crashes.items() if now - when < CRASH_NOT_READY
        )
        if crashed:
            problems.append(
                "probe task failed unexpectedly (see the log) for: " + ", ".join(crashed)
            )
        return problems

    async def reload(self, wanted: Callable[[], bool] = lambda: True) -> ConfigInvalid | None:
        """Re-read the config file; on error keep running the last good one and return the error.

        Coalesced: at most one reload runs and one waits behind it, which every request made
        meanwhile joins (it starts after them, so it reads the file as they left it). 200
        `POST /-/reload` in a burst used to run 84 full reloads in a row. `wanted` says whether
        the caller still cares (its HTTP client is still connected): a queued reload that no
        caller wants any more is dropped. Cancelling the caller does not cancel the reload.
        """
        if self._queued is None:
            self._queued = asyncio.create_task(self._reload_queued(), name="config-reload")
            self._queued_for = []
            self._reloading.add(self._queued)
            self._queued.add_done_callback(self._reloading.discard)
        queued = self._queued
        self._queued_for.append(wanted)
        return await asyncio.shield(queued)

    async def _reload_queued(self) -> ConfigInvalid | None:
        async with self._reload_lock:
            # From here on the file is read: a request made now needs a reload of its own.
            wanted, self._queued, self._queued_for = self._queued_for, None, []
            if not any(still() for still in wanted):
                log.info("config reload dropped: every client that asked for it has gone")
                return None
            self.reloads += 1
            return await self._reload_now()

    async def _reload_now(self) -> ConfigInvalid | None:
        """One reload, under the lock."""
        try:
            config = await self._load(in_thread=True)
            try:
                self._check_location(config)
                await self.support.apply(config)
            except ValueError as wrong:
                error = ConfigError(self.config_path, 0, "locations", str(wrong))
                raise ConfigInvalid(self.config_path, [error]) from wrong
            except SupportUnavailable as unavailable:
                error = ConfigError(self.config_path, 0, "support.database", str(unavailable))
                raise ConfigInvalid(self.config_path, [error]) from unavailable
        except ConfigInvalid as err:
            self.health.reload_ok.set(0)
            self.last_reload_error = str(err)
            log.error("config reload failed, keeping the running config:\n%s", err)
            return err
        self._advance()  # the time up to now keeps the settings it ran under
        self._apply(config)
        log.info("config reloaded from %s (%d services)", self.config_path, len(config.services))
        return None

    async def _load(self, in_thread: bool = False) -> Config:
        """This shard's part of the SLA file (all of it when not sharded)."""
        path, shard = self.config_path, self.shard
        if self.load_elsewhere:
            config, total = await asyncio.to_thread(load_elsewhere, path, shard)
        elif in_thread:
            config, total = await asyncio.to_thread(load, path, shard)
        else:
            config, total = load(path, shard)
        if shard.count > 1:
            log.info(
                "shard %s: %d of the %d services in %s", shard, len(config.services), total, path
            )
        return config

    def _apply(self, config: Config) -> None:
        self.config = config
        self.store.configure(config)
        self._windows = config.maintenance_by_service()
        if self.ledger is not None:
            self.ledger.set_timezone(config.sla.timezone)
            self._advance()  # the new settings take effect from now
        self.scheduler.apply(config)
        if config.locations and self.location is not None:
            if self.pool is None:
                self.pool = Pool(self.location, lambda: self.ledger)
            self.pool.configure(config)
        else:
            self.pool = None
        if self.freeze_gc:
            # The config, its services and their tasks live until the next reload: taken out of
            # the cyclic garbage collector's sight, a full collection no longer walks them all
            # (with 10,000 services it held the event loop ~0.1 s, as long as a probe's lag may
            # grow). What a reload leaves behind is collected first, at the cost of one full
            # collection per reload.
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        self.health.reload_ok.set(1)
        self.health.reload_time.set(self.clock.time())
        self.last_reload_error = ""

    def _check_location(self, config: Config) -> None:
        """With `locations:` in the SLA file, --location must name one of them."""
        if not config.locations:
            return
        if self.location is None:
            raise ValueError(
                "the SLA file names locations (" + ", ".join(config.locations) + "): start the "
                "exporter with --location NAME, the one it probes from"
            )
        if self.location not in config.locations:
            raise ValueError(
                f"--location {self.location} is not one of the SLA file's locations ("
                + ", ".join(config.locations)
                + ")"
            )

    async def _pool_forever(self) -> None:
        while True:
            config, pool = self.config, self.pool
            if config is not None and pool is not None:
                await pool.refresh(config, self.clock.time())
            await asyncio.sleep(self.pool_interval)

    async def _sync_replicas(self, config: Config, timeout: float, at_start: bool = False) -> None:
        assert self.replicas is not None
        try:
            changed = await asyncio.wait_for(self.replicas.sync(config, timeout), timeout + 1)
        except TimeoutError:
            log.warning("the other replicas' months took more than %gs to read", timeout)
            return
        if changed:
            log.log(
                logging.INFO if at_start else logging.DEBUG,
                "took %.3f s of service time from the other replicas' months",
                changed / 1000,
            )

    async def _replicas_forever(self) -> None:
        while True:
            await asyncio.sleep(self.replica_interval)
            if self.config is not None:
                await self._sync_replicas(self.config, max(self.replica_interval, 5.0))

    def windows(self, name: str) -> list[tuple[float, float]]:
        """The declared maintenance windows of service `name` (unix times)."""
        return self._windows.get(name, [])

    def _advance(self, names: Iterable[str] | None = None) -> None:
        """Record in the ledger the settings and declared maintenance in force up to now, for
        `names` (every service by default)."""
        config, ledger = self.config, self.ledger
        if config is None or ledger is None:
            return
        now = self.clock.time()
        for name in config.services if names is None else names:
            if name in config.services:
                objective, windows = config.objective(name), self.windows(name)
                ledger.advance(now, name, objective, config.sla.unknown, windows)

    def _covered(self, name: str, start: float, end: float) -> bool:
        return self.ledger is not None and self.ledger.covered(name, start, end)

    def _on_crash(self, name: str, err: BaseException) -> None:
        self.crashes[name] = self.clock.time()
        self.task_crashes.labels(name).inc()

    def _on_result(
        self, name: str, service: Service, result: ProbeResult, maint: bool, start: float | None
    ) -> None:
        previous = self.store.services[name].last if name in self.store.services else None
        self.store.record(name, result, maint, confirmation=start is None)
        # The month counts the regular slots only: a confirmation stands for no slot.
        if self.ledger is not None and start is not None:
            refused = self.ledger.clock_steps_back
            self.ledger.record(
                name,
                start,
                service.interval,
                result.success,
                None if result.reason is None else result.reason.value,
                known=result.reason not in EXPORTER_FAULTS,
            )
            if self.ledger.clock_steps_back != refused:
                self.refused.inc()
        if previous is None or previous.success != result.success:
            level = logging.INFO if result.success else logging.WARNING
            log.log(
                level,
                "service %s is %s%s",
                name,
                "up" if result.success else "down",
                "" if result.success else f" ({result.reason}: {result.message})",
            )
        log.debug("probe %s success=%s duration=%.3fs", name, result.success, result.duration)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            names = list(self.config.services) if self.config is not None else []
            await pausing.run(self._advancing(names), self.aside)
            await self._write_ledger()

    def _advancing(self, names: list[str]) -> pausing.Steps[None]:
        for batch in pausing.batched(names, ADVANCE_BATCH):
            self._advance(batch)
            yield  # probes due meanwhile start on time

    async def _write_ledger(self) -> None:
        """Write the ledger if it changed, in a thread, keeping the event loop free meanwhile."""
        ledger = self.ledger
        if ledger is None or ledger.path is None:
            self.ledger_ok.set(1)
            return
        ledger.prune()
        # Probes due meanwhile start on time; a scrape under way goes first.
        content = await pausing.run(ledger.dumping(), self.aside)
        if content is None:
            return
        try:
            await asyncio.to_thread(ledger.write, content)
        except OSError as err:
            if not self.ledger_error:
                log.error("cannot write the month ledger to %s: %s", ledger.path, err)
            self.ledger_error = str(err)
            self.ledger_ok.set(0)
            self.ledger_failures.inc()
        else:
            if self.ledger_error:
                log.info("the month ledger is written to %s again", ledger.path)
            self.ledger_error = ""
            self.ledger_ok.set(1)
