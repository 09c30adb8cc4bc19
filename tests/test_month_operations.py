"""The month through the running exporter, under what operators do: restarts, reloads, a full
disk, a probe task that fails. Time is a hand-driven clock; the files are real."""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

from sla_exporter.config import Service
from sla_exporter.exporter import Exporter
from sla_exporter.probes import ProbeResult, Reason
from tests.fakes import FakeClock

MIN = 60_000


def write_config(path: Path, interval: str = "1m") -> None:
    path.write_text(
        "sla: {name: Ops, timezone: Europe/Zurich}\n"
        "services:\n"
        f"  api: {{interval: {interval}, timeout: 5s, http: {{url: 'http://127.0.0.1:9/'}}}}\n"
        f"  web: {{interval: {interval}, timeout: 5s, http: {{url: 'http://127.0.0.1:9/'}}}}\n"
    )


class Probe:
    """A fake probe: records when each service ran; `fail` decides a service's result."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.runs: dict[str, list[float]] = defaultdict(list)
        self.reason: dict[str, Reason] = {}
        self.raises: set[str] = set()

    async def __call__(self, name: str, service: Service) -> ProbeResult:
        now = self.clock.time()
        self.runs[name].append(now)
        if name in self.raises:
            raise RuntimeError(f"a bug while probing {name}")
        reason = self.reason.get(name)
        return ProbeResult(success=reason is None, duration=0.1, reason=reason, timestamp=now)


def exporter(config: Path, clock: FakeClock, probe: Probe, storage: Path | None) -> Exporter:
    return Exporter(str(config), storage_path=storage, probe=probe, clock=clock)


def month(exp: Exporter, name: str, clock: FakeClock) -> dict[str, int]:
    """The current month's figures of `name` as /metrics computes them (ms)."""
    assert exp.ledger is not None and exp.config is not None
    now = clock.time()
    key = exp.ledger.months(name, now)[-1]
    interval = exp.config.services[name].interval
    return exp.ledger.exposed(name, key, now, interval, (), 0.99, "down").seconds


async def test_a_restart_within_a_slot_probes_no_slot_twice_and_loses_none(tmp_path: Path) -> None:
    config, storage = tmp_path / "sla.yml", tmp_path / "ledger.json"
    write_config(config)
    clock = FakeClock()
    probe = Probe(clock)
    first = exporter(config, clock, probe, storage)
    await first.start()
    await clock.advance(600)
    runs_before = {name: len(runs) for name, runs in probe.runs.items()}
    await first.stop()
    await clock.advance(5)  # the new process starts 5 s later, inside the slots just probed
    second = exporter(config, clock, probe, storage)
    await second.start()
    await clock.advance(1)
    # Each service's slot is covered by the old process's run: no second run in it.
    assert {name: len(runs) for name, runs in probe.runs.items()} == runs_before
    await clock.advance(60)
    for name in ("api", "web"):
        last, new = probe.runs[name][runs_before[name] - 1 : runs_before[name] + 1]
        assert new - last == pytest.approx(60)  # the next slot of the same grid
    await clock.advance(120)
    for name in ("api", "web"):
        figures = month(second, name, clock)
        assert figures["unknown"] == 0
        assert figures["down"] == 0
    await second.stop()


async def test_a_reload_from_one_minute_to_thirty_seconds_leaves_no_gap(tmp_path: Path) -> None:
    config = tmp_path / "sla.yml"
    write_config(config, "1m")
    clock = FakeClock()
    probe = Probe(clock)
    exp = exporter(config, clock, probe, None)
    await exp.start()
    await clock.advance(600)
    write_config(config, "30s")
    assert await exp.reload() is None
    await clock.advance(600)
    for name in ("api", "web"):
        figures = month(exp, name, clock)
        assert figures["unknown"] == 0
        assert figures["down"] == 0
        runs = probe.runs[name]
        after = [b - a for a, b in itertools.pairwise(runs) if a > clock.time() - 500]
        assert after and all(gap == pytest.approx(30) for gap in after)
    await exp.stop()


async def test_a_failure_of_the_exporter_itself_is_unknown_time_not_down(tmp_path: Path) -> None:
    config = tmp_path / "sla.yml"
    write_config(config)
    clock = FakeClock()
    probe = Probe(clock)
    probe.reason["api"] = Reason.EXPORTER  # say, out of file descriptors
    probe.reason["web"] = Reason.CONNECT  # the service's own failure
    exp = exporter(config, clock, probe, None)
    await exp.start()
    await clock.advance(600)
    api, web = month(exp, "api", clock), month(exp, "web", clock)
    assert api["down"] == 0 and api["unknown"] >= 8 * MIN
    assert web["unknown"] == 0 and web["down"] >= 8 * MIN
    await exp.stop()


async def test_an_unwritable_ledger_shows_at_once_and_shutdown_says_where_it_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "sla.yml"
    write_config(config)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the ledger's folder should be\n")
    elsewhere = tmp_path / "tmp"
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    clock = FakeClock()
    exp = exporter(config, clock, Probe(clock), blocked / "ledger.json")
    await exp.start()
    # At once, before any probe result: the metric and readiness say so.
    assert [s.value for s in exp.ledger_ok.collect()[0].samples] == [0.0]
    [problem] = exp.readiness()
    assert "the month ledger cannot be written" in problem
    await clock.advance(300)
    with caplog.at_level(logging.ERROR):
        await exp.stop()
    [saved] = elsewhere.glob("sla-ledger-*.json")
    assert '"api"' in saved.read_text()
    assert f"the month ledger was saved to {saved} instead" in caplog.text


async def test_a_probe_task_that_fails_unexpectedly_is_counted_reported_and_resumed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "sla.yml"
    write_config(config)
    clock = FakeClock()
    probe = Probe(clock)
    probe.raises.add("api")
    exp = exporter(config, clock, probe, None)
    with caplog.at_level(logging.ERROR):
        await exp.start()
        await clock.advance(200)
    assert len(probe.runs["api"]) >= 3  # resumed at each next slot, not dead
    assert len(probe.runs["web"]) >= 3  # and nobody else held up
    crashes = {s.labels["sla_service"]: s.value for s in exp.task_crashes.collect()[0].samples}
    assert crashes["api"] >= 3
    assert exp.readiness() == ["probe task failed unexpectedly (see the log) for: api"]
    assert "probing api failed unexpectedly" in caplog.text
    probe.raises.clear()
    await clock.advance(700)  # ten minutes after the last failure, ready again
    assert exp.readiness() == []
    await exp.stop()


class SteppingClock(FakeClock):
    """A fake clock whose wall time an operator (or NTP) can set apart from the monotonic."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset


async def test_a_clock_set_back_ten_days_rewrites_no_month_and_probing_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "sla.yml"
    write_config(config)
    clock = SteppingClock()
    probe = Probe(clock)
    exp = exporter(config, clock, probe, tmp_path / "ledger.json")
    await exp.start()
    await clock.advance(600)
    assert exp.ledger is not None
    before = {name: month(exp, name, clock) for name in ("api", "web")}
    runs = len(probe.runs["api"])
    with caplog.at_level(logging.WARNING):
        clock.offset = -10 * 86400.0
        await clock.advance(300)
    assert len(probe.runs["api"]) >= runs + 4  # probing went on, live metrics with it
    refused = exp.refused.collect()[0].samples[0].value
    assert refused >= 8  # both services' results for time already counted
    assert "the wall clock moved by -864000" in caplog.text
    assert "the month is not rewritten" in caplog.text
    after = {name: month(exp, name, clock) for name in ("api", "web")}
    assert after == before
    assert exp.ledger.months("api", clock.time())[-1] == "2025-11"  # not the month of the clock
    await exp.stop()


async def test_re_probes_of_a_failing_service_move_its_state_not_its_month_or_counters(
    tmp_path: Path,
) -> None:
    config = tmp_path / "sla.yml"
    config.write_text(
        "sla: {name: Ops, timezone: Europe/Zurich}\n"
        "services:\n"
        "  api: {interval: 1m, timeout: 5s, confirm: 10s, http: {url: 'http://127.0.0.1:9/'}}\n"
    )
    clock = FakeClock()
    probe = Probe(clock)
    probe.reason["api"] = Reason.CONNECT
    exp = exporter(config, clock, probe, None)
    await exp.start()
    await clock.advance(600)
    state = exp.store.services["api"]
    assert state.confirmations >= 4 * state.probes  # five re-probes a minute while down
    assert len(probe.runs["api"]) == state.probes + state.confirmations
    assert state.failures == state.probes  # the counters: one per regular slot
    assert state.consecutive_failures == len(probe.runs["api"])
    figures = month(exp, "api", clock)
    assert figures["down"] == (state.probes - 1) * MIN  # the slots before the current one
    await exp.stop()
