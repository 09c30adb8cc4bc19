"""The running exporter: config, scheduler, store, month ledger and metrics wired together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from . import config as config_mod
from .collector import Health, ServiceCollector
from .config import Config, ConfigError, ConfigInvalid, Service
from .ledger import Ledger
from .probes import ProbeResult
from .scheduler import Clock, ProbeFn, Scheduler, SystemClock, probe_service
from .store import Store
from .support import SupportDesk, SupportUnavailable
from .support_collector import SupportCollector
from .zone import ZoneCollector

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 10.0  # seconds of month tallies a crash may lose (those slots become unknown)


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
    ) -> None:
        self.config_path = config_path
        self.freeze_gc = freeze_gc
        self.shard = shard
        self.load_elsewhere = load_elsewhere
        self.storage_path = storage_path
        self.clock = clock or SystemClock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.health = Health(self.registry, str(shard.index), str(shard.count))
        self.store = Store()
        self.config: Config | None = None
        self.ledger: Ledger | None = None
        self.last_reload_error = ""
        self.scheduler = Scheduler(
            self._on_result,
            probe=probe,
            clock=self.clock,
            max_concurrency=max_concurrency,
            max_start_jitter=max_start_jitter,
            on_lag=lambda name, lag: self.health.lag.observe(lag),
            on_missed=self.store.missed,
            in_flight=self.health.in_flight.set,
        )
        # Not in the registry: /metrics writes the services' series itself, pausing for the
        # event loop as it goes (web.py); the registry holds what is small.
        self.services = ServiceCollector(
            self.store, lambda: self.ledger, lambda: self.config, self.clock.time
        )
        # Ticket clocks (the `support:` section); renders nothing while it is not configured.
        self.support = SupportDesk(self.clock.time)
        self.registry.register(SupportCollector(self.support))
        self.registry.register(ZoneCollector(lambda: self.config, self.clock.time))
        self._flusher: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()

    async def start(self) -> None:
        """Load the config (raising ConfigInvalid if it is bad) and start probing."""
        config = await self._load()
        await self.support.apply(config)  # SupportUnavailable (a RuntimeError) is fatal here
        self.ledger = Ledger(self.storage_path, config.sla.timezone)
        self._apply(config)
        self._flusher = asyncio.create_task(self._flush_forever(), name="ledger-flush")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.scheduler.stop()
        await self.support.close()
        if self.ledger is not None:
            self.ledger.flush()

    async def reload(self) -> ConfigInvalid | None:
        """Re-read the config file; on error keep running the last good one and return the error."""
        async with self._reload_lock:
            try:
                config = await self._load(in_thread=True)
                try:
                    await self.support.apply(config)
                except SupportUnavailable as unavailable:
                    error = ConfigError(self.config_path, 0, "support.database", str(unavailable))
                    raise ConfigInvalid(self.config_path, [error]) from unavailable
            except ConfigInvalid as err:
                self.health.reload_ok.set(0)
                self.last_reload_error = str(err)
                log.error("config reload failed, keeping the running config:\n%s", err)
                return err
            self._apply(config)
            log.info(
                "config reloaded from %s (%d services)", self.config_path, len(config.services)
            )
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
        if self.ledger is not None:
            self.ledger.set_timezone(config.sla.timezone)
        self.scheduler.apply(config)
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

    def _on_result(self, name: str, service: Service, result: ProbeResult, maint: bool) -> None:
        previous = self.store.services[name].last if name in self.store.services else None
        self.store.record(name, result, maint)
        if self.ledger is not None:
            self.ledger.record(name, result.timestamp, result.success, maint, service.interval)
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
            if self.ledger is not None:
                self.ledger.prune()
                dumping = self.ledger.dumping()
                try:
                    while True:
                        next(dumping)
                        await asyncio.sleep(0)  # probes due meanwhile start on time
                except StopIteration as done:
                    content: bytes | None = done.value
                if content is None:
                    continue
                try:
                    await asyncio.to_thread(self.ledger.write, content)
                except OSError as err:
                    log.error("cannot write month tallies: %s", err)
