"""Fixed-rate scheduling: every service on its own clock, a global concurrency cap, safe reloads."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

from .config import Config, Service
from .probes import PROBERS, ProbeResult, run_probe

log = logging.getLogger(__name__)

ProbeFn = Callable[[str, Service], Awaitable[ProbeResult]]
ResultFn = Callable[[str, Service, ProbeResult, bool], None]


class Clock(Protocol):
    """Time as the scheduler sees it; tests pass a fake one to drive time by hand."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


async def probe_service(name: str, service: Service) -> ProbeResult:
    """Run the service's probe kind once under its timeout."""
    kind = PROBERS[service.kind]
    return await run_probe(kind.prober, service.probe, service.effective_timeout, kind.classify)


class Scheduler:
    """Runs one task per service at a fixed rate, `interval` apart on the monotonic clock.

    The next run is due at first_run + k * interval, never "interval after the previous run
    ended", so probe durations do not make the schedule drift. A run that could not start before
    its successor was due (the concurrency cap was saturated) is skipped and counted, not queued.
    """

    def __init__(
        self,
        on_result: ResultFn,
        probe: ProbeFn = probe_service,
        clock: Clock | None = None,
        max_concurrency: int = 128,
        max_start_jitter: float = 5.0,
        on_lag: Callable[[str, float], None] = lambda name, lag: None,
        on_missed: Callable[[str, int], None] = lambda name, runs: None,
        in_flight: Callable[[int], None] = lambda count: None,
        rng: random.Random | None = None,
    ) -> None:
        self.on_result = on_result
        self.probe = probe
        self.clock = clock or SystemClock()
        self.max_start_jitter = max_start_jitter
        self.on_lag = on_lag
        self.on_missed = on_missed
        self.report_in_flight = in_flight
        self.rng = rng or random.Random()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tasks: dict[str, tuple[Service, asyncio.Task[None]]] = {}
        self._in_flight = 0
        self.config: Config | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def apply(self, config: Config) -> None:
        """Switch to `config`: start new services, restart changed ones, stop removed ones.

        Services whose settings did not change keep their task and their place in the schedule.
        Maintenance windows are read at each result, so changing them restarts nothing.
        """
        self.config = config
        for name in list(self._tasks):
            service, task = self._tasks[name]
            if config.services.get(name) != service:
                task.cancel()
                del self._tasks[name]
        for name, service in config.services.items():
            if name not in self._tasks:
                task = asyncio.create_task(self._run(name, service), name=f"probe:{name}")
                self._tasks[name] = (service, task)

    async def stop(self) -> None:
        """Cancel every probe task and wait for them to finish."""
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _in_maintenance(self, name: str, started: float) -> bool:
        config = self.config
        when = datetime.fromtimestamp(started, UTC)
        return config is not None and config.in_maintenance(name, when)

    async def _run(self, name: str, service: Service) -> None:
        interval = service.interval
        # First run soon after start, spread so that a thousand services do not fire at once.
        origin = self.clock.monotonic() + self.rng.uniform(0, min(interval, self.max_start_jitter))
        slot = 0  # run k is due at origin + k * interval: computed, not accumulated, so no drift
        while True:
            due = origin + slot * interval
            await self.clock.sleep(due - self.clock.monotonic())
            async with self._slots:
                lag = self.clock.monotonic() - due
                ran = lag < interval  # the cap held this run back a whole slot: skip it
                if ran:
                    self.on_lag(name, max(0.0, lag))
                    await self._probe_once(name, service)
            # The next slot whose start has not passed by a whole interval; slots passed over
            # are skipped and counted, not run late in a burst.
            next_slot = max(slot + 1, math.floor((self.clock.monotonic() - origin) / interval))
            skipped = next_slot - slot - 1 + (0 if ran else 1)
            if skipped:
                log.warning("probe of %s fell behind; skipped %d run(s)", name, skipped)
                self.on_missed(name, skipped)
            slot = next_slot

    async def _probe_once(self, name: str, service: Service) -> None:
        self._in_flight += 1
        self.report_in_flight(self._in_flight)
        try:
            result = await self.probe(name, service)
        finally:
            self._in_flight -= 1
            self.report_in_flight(self._in_flight)
        self.on_result(name, service, result, self._in_maintenance(name, result.timestamp))
