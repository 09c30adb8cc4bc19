"""The month accounting against a second-by-second reference, on random operator histories.

Hypothesis draws a few hours around a month boundary in Europe/Zurich: the exporter running and
stopped (restarts, gaps), reloads that change the interval or the unknown policy, outages and
declared maintenance windows. The driver plays it as the exporter does (a run for the slot a
start or reload falls in unless results cover it, then a run at each slot start; `advance()`
with the settings in force at every start, reload and stop; the ledger written and read back at
every stop). The reference paints every second of the window by hand, independently of the
ledger's interval arithmetic, and counts the month. The ledger, the /metrics text and the shipped
rules (in promtool) must all agree with it to the second.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from sla_exporter.collector import ServiceCollector
from sla_exporter.config import parse
from sla_exporter.ledger import STATES, Ledger, Span, month_bounds, month_key, ms, slot
from sla_exporter.pausing import finish
from sla_exporter.store import Store
from tests.helpers import tool
from tests.stack import ROOT

ZONE = "Europe/Zurich"
HALF = 2 * 3600  # the window: two hours either side of a month boundary
INTERVALS = (30, 60, 120)
BOUNDARIES = [
    int(month_bounds(key, ZoneInfo(ZONE))[0])
    for key in ("2026-03", "2026-04", "2026-11")  # winter, summer time, and back
]
Policy = Literal["down", "excluded"]


def _whole_second_name() -> str:
    """A service name whose slots start on whole seconds at every interval drawn: the
    reference paints seconds (the grid's phase is a hash of the name, in milliseconds)."""
    for i in range(100_000):
        name = f"svc-{i}"
        digest = hashlib.md5(name.encode(), usedforsecurity=False).digest()
        if int.from_bytes(digest[:8], "big") % 1000 == 0:
            return name
    raise AssertionError("no name found")


NAME = _whole_second_name()


@dataclass
class History:
    """What happened, in unix seconds: when the exporter ran, reloads, outages, maintenance."""

    base: int
    runs: list[tuple[int, int]]  # the exporter up, [start, stop)
    reloads: list[tuple[int, int, Policy]]  # (when, new interval, new policy), inside runs
    outages: list[tuple[int, int]]
    windows: list[tuple[int, int]]
    first: tuple[int, Policy]

    @property
    def end(self) -> int:
        return self.base + HALF

    def settings(self, at: int) -> tuple[int, Policy]:
        current = self.first
        for when, interval, policy in self.reloads:
            if when <= at:
                current = (interval, policy)
        return current

    def down(self, at: int) -> bool:
        return any(a <= at < b for a, b in self.outages)

    def in_window(self, at: int) -> bool:
        return any(a <= at < b for a, b in self.windows)


def _spans(draw: st.DrawFn, base: int, count: int, longest: int) -> list[tuple[int, int]]:
    spans = []
    for _ in range(draw(st.integers(0, count))):
        start = draw(st.integers(base - HALF, base + HALF - 1))
        spans.append((start, start + draw(st.integers(1, longest))))
    return spans


@st.composite
def histories(draw: st.DrawFn) -> History:
    base = draw(st.sampled_from(BOUNDARIES))
    cuts = sorted(
        draw(st.lists(st.integers(base - HALF + 1, base + HALF - 1), max_size=6, unique=True))
    )
    points = [base - HALF, *cuts, base + HALF]
    # Alternate up and down between the cut points, starting up; short gaps are restarts.
    runs = [(points[i], points[i + 1]) for i in range(0, len(points) - 1, 2)]
    reloads: list[tuple[int, int, Policy]] = []
    for a, b in runs:
        if b - a > 2 and draw(st.booleans()):
            reloads.append(
                (
                    draw(st.integers(a + 1, b - 1)),
                    draw(st.sampled_from(INTERVALS)),
                    draw(st.sampled_from(("down", "excluded"))),
                )
            )
    return History(
        base=base,
        runs=runs,
        reloads=sorted(reloads),
        outages=_spans(draw, base, 3, 3600),
        windows=_spans(draw, base, 2, 5400),
        first=(draw(st.sampled_from(INTERVALS)), draw(st.sampled_from(("down", "excluded")))),
    )


# -------------------------------------------------------------------------------------------
# The reference: every second painted by hand


@dataclass
class Reference:
    painted: dict[int, bool] = field(default_factory=dict)  # second -> up
    since: int | None = None

    def covered(self, start: int, end: int) -> bool:
        return all(s in self.painted for s in range(start, end))

    def paint(self, start: int, end: int, up: bool) -> None:
        self.since = start if self.since is None else min(self.since, start)
        for second in range(start, end):
            self.painted.setdefault(second, up)  # the first result for a moment wins

    def month(self, history: History, key: str, until: int) -> tuple[dict[str, int], int]:
        """Seconds per state of month `key` up to `until`, and its budget (ms)."""
        zone = ZoneInfo(ZONE)
        start, end = (int(t) for t in month_bounds(key, zone))
        seconds = dict.fromkeys(STATES, 0)
        for second in range(start, min(until, end)):
            if self.since is None or second < self.since:
                state = "unmonitored"
            elif history.in_window(second):
                state = "maintenance"
            elif second in self.painted:
                state = "up" if self.painted[second] else "down"
            else:
                state = "unknown" if history.settings(second)[1] == "down" else "excluded"
            seconds[state] += 1
        counted = seconds["up"] + seconds["down"] + seconds["unknown"]
        # The rest of the month counts but for declared maintenance (all of it in the window).
        rest = range(max(until, start), end)
        declared = {second for a, b in history.windows for second in range(a, b) if second in rest}
        to_come = len(rest) - len(declared)
        budget = int(Fraction(1, 100) * (counted + to_come) * 1000)
        return seconds, budget


def play(history: History, path: Path) -> tuple[Ledger, Reference]:
    """Drive a real ledger (written and read back at every stop) as the exporter would, and the
    reference beside it, deciding each first run by the reference's own notion of covered."""
    reference = Reference()
    ledger: Ledger | None = None

    def advance(at: int, settings_at: int | None = None) -> None:
        assert ledger is not None
        _, policy = history.settings(at if settings_at is None else settings_at)
        ledger.advance(at, NAME, 0.99, policy, history.windows)

    def run(at: int, slot_start: int, interval: int) -> None:
        assert ledger is not None
        up = not history.down(at)
        ledger.record(NAME, slot_start, interval, up, None if up else "timeout")
        reference.paint(slot_start, slot_start + interval, up)

    for a, b in history.runs:
        ledger = Ledger(path, ZONE)  # a new process, from the file the last one left
        advance(a)
        starts = [a] + [when for when, _, _ in history.reloads if a < when < b]
        for i, begin in enumerate(starts):
            finish = starts[i + 1] if i + 1 < len(starts) else b
            if i:  # a reload: the time up to it keeps the settings it ran under ...
                advance(begin, settings_at=begin - 1)
            interval, _ = history.settings(begin)
            advance(begin)  # ... and the new ones apply from it
            start = slot(NAME, interval * 1000, begin * 1000) // 1000
            assert ledger.covered(NAME, start, start + interval) == reference.covered(
                start, start + interval
            )
            at = begin
            if reference.covered(start, start + interval):
                start += interval
                at = start
            while at < finish:
                run(at, start, interval)
                start += interval
                at = start
        advance(b)
        ledger.flush()
    assert ledger is not None
    return Ledger(path, ZONE), reference


def months(history: History) -> list[str]:
    zone = ZoneInfo(ZONE)
    return sorted({month_key(history.base - HALF, zone), month_key(history.end - 1, zone)})


@settings(max_examples=60, deadline=None)
@given(history=histories())
def test_the_ledger_counts_every_second_as_the_reference_does(history: History) -> None:
    path = Path(tempfile.mkdtemp()) / "ledger.json"
    ledger, reference = play(history, path)
    _, policy = history.settings(history.end)
    for key in months(history):
        spans: list[Span] = []
        figures = ledger.figures(
            NAME, key, history.end, future_maintenance=history.windows, unknown=policy, spans=spans
        )
        seconds, budget = reference.month(history, key, history.end)
        # The spans partition the month up to where it is counted, and add up to the figures:
        # a report's incident list is the month's downtime, to the millisecond.
        month_start = ms(month_bounds(key, ZoneInfo(ZONE))[0])
        assert [s.start for s in spans] == [month_start] + [s.end for s in spans[:-1]]
        assert (spans[-1].end if spans else month_start) == figures.end
        for state in STATES:
            assert sum(s.end - s.start for s in spans if s.state == state) == figures.seconds[state]
        assert {s: v // 1000 for s, v in figures.seconds.items()} == seconds, key
        assert all(v % 1000 == 0 for v in figures.seconds.values())
        assert figures.budget == budget, key


CONFIG = """
sla: {{name: Property, timezone: {zone}, unknown: {policy}}}
services:
  {name}: {{interval: {interval}s, timeout: 5s, http: {{url: "http://127.0.0.1:9/"}}}}
maintenance:
{windows}
"""


def rendered(history: History, ledger: Ledger) -> dict[tuple[str, str], float]:
    """The month families of /metrics at the window's end, as the exporter writes them."""
    interval, policy = history.settings(history.end)
    windows = "".join(
        f"  - {{services: [{NAME}], start: {_iso(a)}, end: {_iso(b)}}}\n"
        for a, b in history.windows
    )
    text = CONFIG.format(
        zone=ZONE, policy=policy, name=NAME, interval=interval, windows=windows or "  []\n"
    ).replace("maintenance:\n  []", "maintenance: []")
    config = parse(text, "property.yml")
    store = Store()
    store.configure(config)
    collector = ServiceCollector(store, lambda: ledger, lambda: config, lambda: history.end)
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(collector_text(collector)):
        for sample in family.samples:
            if "month" in sample.labels and sample.name.startswith("sla_month_"):
                key = (sample.name, sample.labels["month"], sample.labels.get("state", ""))
                out[key] = sample.value  # type: ignore[index]
    return out


def collector_text(collector: ServiceCollector) -> str:
    return b"".join(finish(collector.rendering())).decode()


def _iso(at: int) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


@settings(max_examples=8, deadline=None)
@given(history=histories())
def test_the_metrics_and_the_shipped_rules_agree_with_the_reference(history: History) -> None:
    workdir = Path(tempfile.mkdtemp())
    ledger, reference = play(history, workdir / "ledger.json")
    series = rendered(history, ledger)
    interval, _ = history.settings(history.end)
    current = slot(NAME, interval * 1000, history.end * 1000) // 1000  # counted up to here
    inputs, expected = [], []
    labels = f'job="sla",location="zrh",sla_service="{NAME}"'
    for key in months(history):
        seconds, budget = reference.month(history, key, current)
        for state in STATES:
            assert series[("sla_month_seconds", key, state)] == seconds[state], (key, state)
        assert series[("sla_month_error_budget_seconds", key, "")] == budget / 1000
        for (name, month, state), value in series.items():
            if month != key or name.endswith("_timestamp_seconds"):
                # Without the month bounds no month runs: every month is a finished one, and the
                # rules' figures are those of sla_service_location_finished_month.
                continue
            of = f'{labels},month="{key}"' + (f',state="{state}"' if state else "")
            inputs.append({"series": f"{name}{{{of}}}", "values": f"{value}x5"})
        failed = seconds["down"] + seconds["unknown"]
        counted = seconds["up"] + failed
        result = f'{{location="zrh",month="{key}",sla_service="{NAME}"}}'
        figures = [
            ("sla_met:bool", 1 if failed * 1000 <= budget else 0),
            ("downtime:seconds", failed),
        ]
        if counted:
            figures.append(("sla_availability:ratio", 1 - failed / counted))
        for figure, value in figures:
            name = f"sla_service_location_finished_month:{figure}{result}"
            expected.append(
                {
                    "expr": name,
                    "eval_time": "1m",
                    "exp_samples": [{"labels": name, "value": value}],
                }
            )
    unit = {
        # Without month bounds no month runs: month_finished.yml records these figures.
        "rule_files": [
            str(ROOT / "prometheus" / "rules" / name)
            for name in ("month.yml", "month_finished.yml")
        ],
        "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": inputs, "promql_expr_test": expected}],
    }
    (workdir / "test.yml").write_text(yaml.safe_dump(unit))
    done = subprocess.run(
        [tool("promtool"), "test", "rules", str(workdir / "test.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
