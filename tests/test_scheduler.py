"""Scheduler: fixed rate without drift, jittered start, concurrency cap, skips, reloads."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter, defaultdict

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sla_exporter.config import Config, Service, parse
from sla_exporter.ledger import ms, slot
from sla_exporter.probes import ProbeResult, Reason
from sla_exporter.scheduler import Scheduler
from tests.fakes import WALL_OFFSET, FakeClock


def make_config(services: dict[str, str], timeout: str = "2s") -> Config:
    """A config of HTTP services: name -> interval."""
    body = "sla: {name: Test}\nservices:\n"
    for name, interval in services.items():
        body += (
            f"  {name}:\n    interval: {interval}\n    timeout: {timeout}\n"
            f"    http: {{url: 'http://127.0.0.1:9/{name}'}}\n"
        )
    return parse(body, "test.yml")


class Recorder:
    """A fake probe that takes `busy` seconds of fake time and records when it ran."""

    def __init__(self, clock: FakeClock, busy: float = 0.0) -> None:
        self.clock = clock
        self.busy = busy
        self.starts: dict[str, list[float]] = defaultdict(list)
        self.running = 0
        self.max_running = 0

    async def __call__(self, name: str, service: Service) -> ProbeResult:
        self.starts[name].append(self.clock.monotonic())
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        started = self.clock.time()
        try:
            if self.busy:
                await self.clock.sleep(self.busy)
        finally:
            self.running -= 1
        return ProbeResult(success=True, duration=self.busy, timestamp=started)


def scheduler_for(clock: FakeClock, probe: Recorder, **kwargs: object) -> tuple[Scheduler, list]:
    results: list[tuple[str, ProbeResult, bool]] = []
    scheduler = Scheduler(
        lambda name, service, result, maint, start: results.append((name, result, maint)),
        probe=probe,
        clock=clock,
        rng=random.Random(1),
        **kwargs,  # type: ignore[arg-type]  # test-only pass-through of keyword options
    )
    return scheduler, results


async def test_runs_stay_on_a_fixed_rate_however_long_each_probe_takes() -> None:
    clock = FakeClock()
    probe = Recorder(clock, busy=23.0)  # each probe takes 23 s of a 60 s interval
    scheduler, _ = scheduler_for(clock, probe)
    scheduler.apply(make_config({"api": "1m"}, timeout="30s"))
    await clock.advance(600)
    starts = probe.starts["api"]
    first, grid = starts[0], starts[1]
    assert 0 <= first < 5  # jittered first run within max_start_jitter
    # Every later run starts its slot of the service's grid on the wall clock, 60 s apart.
    assert ms(grid + WALL_OFFSET) == slot("api", 60_000, ms(grid + WALL_OFFSET))
    assert starts[1:] == [grid + 60 * k for k in range(len(starts) - 1)]
    assert first < grid < first + 60
    assert len(starts) in (10, 11)
    await scheduler.stop()


async def test_the_first_run_comes_within_the_start_jitter_and_jitter_spreads_services() -> None:
    clock = FakeClock()
    probe = Recorder(clock)
    scheduler, _ = scheduler_for(clock, probe, max_start_jitter=5.0)
    scheduler.apply(make_config({f"s{i}": "5m" for i in range(50)}))
    await clock.advance(5)
    firsts = [starts[0] for starts in probe.starts.values()]
    assert len(firsts) == 50
    assert all(0 <= t <= 5 for t in firsts)
    assert len(set(firsts)) == 50  # spread, not all at once
    await scheduler.stop()


async def test_the_global_concurrency_cap_holds_and_waiting_counts_as_lag() -> None:
    clock = FakeClock()
    probe = Recorder(clock, busy=10.0)
    lags: dict[str, float] = {}
    scheduler, _ = scheduler_for(
        clock,
        probe,
        max_concurrency=2,
        max_start_jitter=0.001,
        on_lag=lambda n, lag: lags.setdefault(n, lag),
    )
    # An hour: the slots of these five names do not end within the half minute watched.
    scheduler.apply(make_config({f"s{i}": "1h" for i in range(5)}, timeout="30s"))
    await clock.advance(30)
    assert probe.max_running == 2
    # The first runs: 3 waves of 10 s each, two at a time.
    assert sorted(round(lag) for lag in lags.values()) == [0, 0, 10, 10, 20]
    await scheduler.stop()


async def test_a_run_held_back_a_whole_interval_is_skipped_and_counted() -> None:
    clock = FakeClock()
    probe = Recorder(clock, busy=9.0)
    missed: dict[str, int] = defaultdict(int)

    def on_missed(name: str, runs: int) -> None:
        missed[name] += runs

    scheduler, results = scheduler_for(
        clock, probe, max_concurrency=1, max_start_jitter=0.001, on_missed=on_missed
    )
    # Two services of 10 s interval, each probe takes 9 s, one slot: one of them must skip.
    scheduler.apply(make_config({"a": "10s", "b": "10s"}, timeout="9s"))
    await clock.advance(100)
    ran = {name: len(starts) for name, starts in probe.starts.items()}
    assert sum(ran.values()) - len(results) in (0, 1)  # at most one probe still running
    assert sum(missed.values()) > 0
    # Every slot of every service either ran or was counted as missed.
    for name in ("a", "b"):
        assert ran.get(name, 0) + missed[name] in (9, 10)
    await scheduler.stop()


async def test_reload_keeps_unchanged_services_on_their_schedule_and_restarts_changed_ones() -> (
    None
):
    clock = FakeClock()
    probe = Recorder(clock)
    scheduler, _ = scheduler_for(clock, probe)
    scheduler.apply(make_config({"keep": "1m", "change": "1m", "drop": "1m"}))
    await clock.advance(130)
    keep_before = list(probe.starts["keep"])
    drop_runs = len(probe.starts["drop"])
    scheduler.apply(make_config({"keep": "1m", "change": "30s", "new": "1m"}))
    await clock.advance(120)
    keep = probe.starts["keep"]
    assert keep[: len(keep_before)] == keep_before
    assert keep[1:] == [keep[1] + 60 * k for k in range(len(keep) - 1)]  # no phase shift
    assert len(probe.starts["drop"]) == drop_runs  # removed: never probed again
    assert len(probe.starts["new"]) >= 2
    change = [t for t in probe.starts["change"] if t > 130]
    assert [round(b - a) for a, b in itertools.pairwise(change)] == [30] * (len(change) - 1)
    await scheduler.stop()


async def test_results_inside_a_declared_maintenance_window_are_flagged() -> None:
    clock = FakeClock()
    probe = Recorder(clock)
    scheduler, results = scheduler_for(clock, probe, max_start_jitter=0.001)
    config = parse(
        "sla: {name: T}\n"
        "services:\n"
        "  api: {interval: 1m, http: {url: 'http://127.0.0.1:9/'}}\n"
        "  web: {interval: 1m, http: {url: 'http://127.0.0.1:9/'}}\n"
        "maintenance:\n"
        "  - services: [api]\n"
        "    start: 2025-11-24T16:02:00+00:00\n"  # WALL_OFFSET + 120 s
        "    end: 2025-11-24T16:04:00+00:00\n",
        "m.yml",
    )
    scheduler.apply(config)
    await clock.advance(360)
    flags = [(name, maint) for name, _, maint in results]
    assert flags.count(("api", True)) == 2  # the runs at +120 s and +180 s
    assert ("web", True) not in flags
    await scheduler.stop()


async def test_two_hundred_services_keep_their_schedule_beside_one_hung_target() -> None:
    """Real HTTP probes on loopback: one target accepts and never answers."""
    hung = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def hang(request: web.Request) -> web.Response:
        await hung.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/ok/{n}", ok)
    app.router.add_get("/hang", hang)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    body = "sla: {name: Load}\nservices:\n"
    body += (
        f"  hung: {{interval: 1s, timeout: 900ms, http: {{url: '{server.make_url('/hang')}'}}}}\n"
    )
    for i in range(199):
        url = server.make_url(f"/ok/{i}")
        body += f"  s{i}: {{interval: 1s, timeout: 900ms, http: {{url: '{url}'}}}}\n"
    config = parse(body, "load.yml")

    results: dict[str, list[ProbeResult]] = defaultdict(list)
    lags: list[float] = []
    missed: dict[str, int] = {}
    scheduler = Scheduler(
        lambda name, service, result, maint, start: results[name].append(result),
        max_start_jitter=0.5,
        on_lag=lambda name, lag: lags.append(lag),
        on_missed=lambda name, runs: missed.__setitem__(name, missed.get(name, 0) + runs),
    )
    started = time.monotonic()
    scheduler.apply(config)
    while time.monotonic() - started < 4.0:
        await asyncio.sleep(0.1)
    await scheduler.stop()
    hung.set()
    await server.close()

    assert all(r.reason is Reason.TIMEOUT for r in results["hung"])
    assert len(results["hung"]) >= 3
    counts = [len(results[f"s{i}"]) for i in range(199)]
    assert min(counts) >= 3, counts
    assert all(r.success for i in range(199) for r in results[f"s{i}"])
    # No slot of any service was skipped for lateness: the hung target held up nobody.
    # (How small the lag stays is a performance figure: bench/ measures it.)
    assert missed == {}
    assert max(lags) < 1.0


async def test_services_started_together_are_spread_evenly_not_at_random() -> None:
    clock = FakeClock()
    probe = Recorder(clock)
    scheduler, _ = scheduler_for(clock, probe, max_start_jitter=5.0)
    scheduler.apply(make_config({f"s{i}": "5m" for i in range(40)}))
    await clock.advance(5)
    firsts = sorted(starts[0] for starts in probe.starts.values())
    gaps = [b - a for a, b in itertools.pairwise(firsts)]
    # 40 services over 5 s: one every 125 ms, so no two probes start at the same instant and
    # none waits behind another on the event loop (random offsets would clump some together).
    assert len(firsts) == 40
    assert min(gaps) > 0.124
    assert max(gaps) < 0.126
    await scheduler.stop()


async def test_thousands_of_services_spread_over_their_whole_interval_every_interval() -> None:
    clock = FakeClock()
    probe = Recorder(clock)
    scheduler, _ = scheduler_for(clock, probe, max_start_jitter=5.0)
    # 1500 services would start at 300 a second within the 5 s start-up window; past START_RATE
    # (50 a second) the first runs spread over the interval instead. Later runs start their
    # slots, whose phases are hashed from the names (as Prometheus spreads scrapes): every
    # service once an interval, and every second of the interval about as busy as the next.
    scheduler.apply(make_config({f"s{i}": "30s" for i in range(1500)}, timeout="10s"))
    await clock.advance(60)
    firsts = Counter(int(starts[0]) for starts in probe.starts.values())
    assert set(firsts) == set(range(30))
    assert all(49 <= count <= 51 for count in firsts.values()), firsts
    later = Counter(int(t) for starts in probe.starts.values() for t in starts if t >= 30)
    assert sum(later.values()) == 1500  # each service exactly once in the second interval
    assert set(later) == set(range(30, 60))
    assert all(25 <= count <= 100 for count in later.values()), later  # mean 50, hashed
    await scheduler.stop()


async def test_a_few_hundred_services_start_within_a_wider_window_at_the_start_rate() -> None:
    clock = FakeClock()
    probe = Recorder(clock)
    scheduler, _ = scheduler_for(clock, probe, max_start_jitter=5.0)
    scheduler.apply(make_config({f"s{i}": "5m" for i in range(500)}))
    await clock.advance(20)
    firsts = [starts[0] for starts in probe.starts.values()]
    assert len(firsts) == 500
    assert max(firsts) < 10.0  # 500 services at 50 a second: within 10 s, not the 5 m interval
    assert max(Counter(int(t) for t in firsts).values()) <= 51
    await scheduler.stop()


class Outage(Recorder):
    """A probe that fails while the fake clock is inside [start, end)."""

    def __init__(self, clock: FakeClock, start: float, end: float) -> None:
        super().__init__(clock)
        self.start, self.end = start, end
        self.results: list[tuple[float, bool]] = []

    async def __call__(self, name: str, service: Service) -> ProbeResult:
        await super().__call__(name, service)
        now = self.clock.monotonic()
        up = not self.start <= now < self.end
        self.results.append((now, up))
        if up:
            return ProbeResult(success=True, duration=0.0, timestamp=self.clock.time())
        return ProbeResult(
            success=False, duration=0.0, reason=Reason.CONNECT, timestamp=self.clock.time()
        )


def confirming(interval: str = "1m", confirm: str = "10s") -> Config:
    return parse(
        "sla: {name: T}\nservices:\n"
        f"  api: {{interval: {interval}, timeout: 5s, confirm: {confirm},"
        " http: {url: 'http://127.0.0.1:9/'}}\n",
        "c.yml",
    )


async def test_a_failing_service_is_confirmed_down_within_two_re_probes() -> None:
    clock = FakeClock()
    probe = Outage(clock, start=100.0, end=400.0)
    slots: list[float | None] = []
    scheduler = Scheduler(
        lambda name, service, result, maint, start: slots.append(start),
        probe=probe,
        clock=clock,
        max_start_jitter=0.001,
    )
    scheduler.apply(confirming())
    await clock.advance(600)
    await scheduler.stop()
    times = [t for t, _ in probe.results]
    first_failure = next(t for t, up in probe.results if not up)
    # The first failed regular probe, then two re-probes 10 s apart: three failures in a row.
    assert [t - first_failure for t in times if first_failure <= t < first_failure + 21] == [
        0,
        10,
        20,
    ]
    assert first_failure - 100 < 60  # the first regular slot after the outage began
    # Re-probed every 10 s while down, never past the next slot; back within 10 s of recovery.
    first_success = next(t for t, up in probe.results if up and t > first_failure)
    assert 400 <= first_success < 410
    regular = [s for s in slots if s is not None]
    assert [b - a for a, b in itertools.pairwise(regular)] == [60.0] * (len(regular) - 1)
    assert slots.count(None) > 20  # the re-probes, handed over as no slot's


async def test_one_failed_probe_that_a_re_probe_contradicts_is_one_failure_in_a_row() -> None:
    clock = FakeClock()
    regular = slot("api", 60_000, ms(WALL_OFFSET + 30)) / 1000 + 60 - WALL_OFFSET
    probe = Outage(clock, start=regular - 1, end=regular + 5)  # a blip over one regular probe
    scheduler = Scheduler(lambda *args: None, probe=probe, clock=clock, max_start_jitter=0.001)
    scheduler.apply(confirming())
    await clock.advance(regular + 100)
    await scheduler.stop()
    assert [t for t, up in probe.results if not up] == [pytest.approx(regular)]
    after = [(t, up) for t, up in probe.results if t > regular]
    assert after[0] == (pytest.approx(regular + 10), True)  # the re-probe that contradicts it
