"""Fixed-rate scheduling: every service on its own clock, a global concurrency cap, safe reloads."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Protocol

from .config import Config, Service
from .ledger import ms, slot
from .probes import KINDS, ProbeResult, run_probe

log = logging.getLogger(__name__)

# First runs are spread so that at most this many start per second, over the start-up window or,
# for large configurations, over the whole interval. Phases stay where the first runs put them,
# so this also decides how evenly every later interval is loaded: 10,000 services on a minute
# start over the whole minute (167 a second) instead of all within the first seconds.
START_RATE = 50.0


ProbeFn = Callable[[str, Service], Awaitable[ProbeResult]]
# (service name, its settings, the result, whether maintenance covered it, its slot's start, or
# None for a confirmation: a re-probe of a failing service between two slots)
ResultFn = Callable[[str, Service, ProbeResult, bool, float | None], None]
CoveredFn = Callable[[str, float, float], bool]
# A wall clock that moved this much more or less than the monotonic clock over one sleep was set
# (NTP step, an operator): the schedule is taken up again on the grid at the new time.
CLOCK_STEP = 1.0


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
    return await run_probe(KINDS[service.kind].probe, service.probe, service.effective_timeout)


class Scheduler:
    """Runs one task per service, once per slot of the service's grid on the wall clock.

    A service's slots are `interval` long and begin at a phase hashed from its name
    (ledger.slot): the same grid in every location and after every restart, so that a result
    stands for a known span of time and the month accounting can count time, not probes. Runs
    are due at slot starts, computed rather than accumulated, so probe durations never make the
    schedule drift. A run that could not start before its slot ended (the concurrency cap was
    saturated) is skipped and counted, not queued: its slot stays unknown.

    First runs come within `max_start_jitter` seconds (or the interval, if shorter), spread
    evenly rather than at random, so that no two services that start together run at the same
    instant (simultaneous probes delay each other on one event loop and measure it). With more
    services than START_RATE a second would start in that window, it widens up to the interval.
    A first run stands for the slot it falls in, unless results already cover that slot (an
    exporter restarted within a slot its predecessor probed): then it waits for the next slot.
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
        covered: CoveredFn = lambda name, start, end: False,
        on_crash: Callable[[str, BaseException], None] = lambda name, err: None,
    ) -> None:
        self.on_result = on_result
        self.probe = probe
        self.clock = clock or SystemClock()
        self.max_start_jitter = max_start_jitter
        self.on_lag = on_lag
        self.on_missed = on_missed
        self.report_in_flight = in_flight
        self.rng = rng or random.Random()
        self.covered = covered
        self.on_crash = on_crash
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
        now = self.clock.time()
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

    async def _run(self, name: str, service: Service, first: float) -> None:
        """Probe `name` in each slot of its grid, from the slot `first` (wall time) falls in;
        an unexpected error is logged and counted, and the service resumes at its next slot."""
        while True:
            try:
                await self._slots_from(name, service, first)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a bug: never let a service stop being probed silently
                log.exception("probing %s failed unexpectedly; resuming at its next slot", name)
                self.on_crash(name, err)
                await self.clock.sleep(min(service.interval, 1.0))
                first = self.clock.time() + service.interval

    async def _slots_from(self, name: str, service: Service, first: float) -> None:
        interval, length = service.interval, ms(service.interval)
        start = slot(name, length, ms(first)) / 1000  # the slot `first` falls in
        due = first
        if self.covered(name, start, start + interval):
            start += interval
            due = start
        # A first run late in the slot it falls in is a chance taken, not a run that was due:
        # if that slot ends before it can start, it is not counted as missed.
        chance = due > start
        while True:
            before_wall, before_mono = self.clock.time(), self.clock.monotonic()
            await self.clock.sleep(due - before_wall)
            now = self.clock.time()
            step = (now - before_wall) - (self.clock.monotonic() - before_mono)
            if abs(step) > CLOCK_STEP:
                # The wall clock was set: take the grid up again at the new time. The month
                # accounting refuses results for time it has already counted.
                log.warning(
                    "the wall clock moved by %+.1fs; %s resumes at its slot now", step, name
                )
                start = slot(name, length, ms(now)) / 1000
                due = now
            async with self._slots:
                lag = self.clock.time() - due
                ran = self.clock.time() < start + interval  # its slot not over yet
                if ran:
                    self.on_lag(name, max(0.0, lag))
                    result = await self._probe_once(name, service, start)
            if ran and not result.success and service.confirm is not None:
                await self._confirm(name, service, start + interval)
            # The next slot whose start has not passed by a whole interval; slots passed over
            # are skipped and counted, not run late in a burst.
            current = slot(name, length, ms(self.clock.time())) / 1000
            following = max(start + interval, current)
            skipped = round((following - start) / interval) - 1 + (0 if ran or chance else 1)
            chance = False
            if skipped > 0:
                log.warning("probe of %s fell behind; skipped %d run(s)", name, skipped)
                self.on_missed(name, skipped)
            start = due = following

    async def _confirm(self, name: str, service: Service, until: float) -> None:
        """Re-probe a failing service every `confirm` until it answers, as long as a re-probe
        ends before its next slot (`until`) begins: failures in a row reach three within two
        of these, and a recovery shows within one, instead of after whole intervals."""
        assert service.confirm is not None
        while True:
            due = self.clock.time() + service.confirm
            if due + service.effective_timeout > until:
                return
            await self.clock.sleep(due - self.clock.time())
            async with self._slots:
                result = await self._probe_once(name, service, None)
            if result.success:
                return

    async def _probe_once(self, name: str, service: Service, start: float | None) -> ProbeResult:
        self._in_flight += 1
        self.report_in_flight(self._in_flight)
        try:
            result = await self.probe(name, service)
        finally:
            self._in_flight -= 1
            self.report_in_flight(self._in_flight)
        maintenance = self._in_maintenance(name, result.timestamp)
        self.on_result(name, service, result, maintenance, start)
        return result
