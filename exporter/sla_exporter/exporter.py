"""The running exporter: config, scheduler, store, month ledger and metrics wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 10.0  # seconds of month tallies a crash may lose (those slots become unknown)


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
    ) -> None:
        self.config_path = config_path
        self.storage_path = storage_path
        self.clock = clock or SystemClock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.health = Health(self.registry)
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
        self.registry.register(
            ServiceCollector(self.store, lambda: self.ledger, lambda: self.config, self.clock.time)
        )
        # Ticket clocks (the `support:` section); renders nothing while it is not configured.
        self.support = SupportDesk(self.clock.time)
        self.registry.register(SupportCollector(self.support))
        self._flusher: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()

    async def start(self) -> None:
        """Load the config (raising ConfigInvalid if it is bad) and start probing."""
        config = config_mod.load(self.config_path)
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
                config = await asyncio.to_thread(config_mod.load, self.config_path)
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

    def _apply(self, config: Config) -> None:
        self.config = config
        self.store.configure(config)
        if self.ledger is not None:
            self.ledger.set_timezone(config.sla.timezone)
        self.scheduler.apply(config)
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
                content = self.ledger.snapshot()
                if content is None:
                    continue
                try:
                    await asyncio.to_thread(self.ledger.write, content)
                except OSError as err:
                    log.error("cannot write month tallies: %s", err)
