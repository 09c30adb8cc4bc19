"""Fixed-rate scheduling: every service on its own clock, a global concurrency cap, safe reloads."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Protocol

from .config import Config, Service
from .probes import PROBERS, ProbeResult, run_probe

log = logging.getLogger(__name__)

# First runs are spread so that at most this many start per second, over the start-up window or,
# for large configurations, over the whole interval. Phases stay where the first runs put them,
# so this also decides how evenly every later interval is loaded: 10,000 services on a minute
# start over the whole minute (167 a second) instead of all within the first seconds.
START_RATE = 50.0


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

    First runs come within `max_start_jitter` seconds (or the interval, if shorter), spread
    evenly rather than at random, so that no two services that start together run at the same
    instant (simultaneous probes delay each other on one event loop and measure it). With more
    services than START_RATE a second would start in that window, it widens up to the interval.
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
        new = [(name, s) for name, s in config.services.items() if name not in self._tasks]
        for name, service, origin in self._first_runs(new):
            task = asyncio.create_task(self._run(name, service, origin), name=f"probe:{name}")
            self._tasks[name] = (service, task)

    def _first_runs(
        self, services: list[tuple[str, Service]]
    ) -> Iterator[tuple[str, Service, float]]:
        """When each of `services` runs first: evenly over its start-up window."""
        now = self.clock.monotonic()
        spread = len(services) / START_RATE  # seconds that keep start-up at START_RATE
        windows: dict[float, list[tuple[str, Service]]] = {}
        for name, service in services:
            window = min(service.interval, max(self.max_start_jitter, spread))
            windows.setdefault(window, []).append((name, service))
        for window, group in windows.items():
            self.rng.shuffle(group)
            turn = self.rng.random()  # where in the window the even spread begins
            for i, (name, service) in enumerate(group):
                yield name, service, now + (i / len(group) + turn) % 1.0 * window

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

    async def _run(self, name: str, service: Service, origin: float) -> None:
        interval = service.interval
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
