"""The month accounting: time, not probes, exact under what operators do.

Each scenario drives the ledger the way the exporter does (a result for each slot of the
service's grid, `advance()` with the settings in force at reloads and restarts) and checks the
figures counting time by hand gives, to the millisecond. tests/test_month_operations.py does the
same through the running exporter.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sla_exporter.ledger import (
    Figures,
    Ledger,
    LedgerInvalid,
    Month,
    month_bounds,
    month_key,
    ms,
    phase,
    slot,
)
from tests.helpers import ts

ZURICH = ZoneInfo("Europe/Zurich")
MIN = 60_000  # ms
DAY = 86_400_000


def grid_at_or_after(name: str, interval: float, at: float) -> float:
    """The first slot start of `name` at or after `at` (seconds)."""
    start = slot(name, ms(interval), ms(at))
    return (start if start >= ms(at) else start + ms(interval)) / 1000


def run_schedule(
    ledger: Ledger,
    name: str,
    interval: float,
    begin: float,
    end: float,
    down: Callable[[float], bool] = lambda t: False,
) -> None:
    """What the scheduler does from `begin` (an exporter start or a reload) until `end`: a
    first run for the slot `begin` falls in unless results cover it already, then a run at
    each slot start before `end`; each result stands for its slot."""
    start = slot(name, ms(interval), ms(begin)) / 1000
    run_at = begin
    if ledger.covered(name, start, start + interval):
        start += interval
        run_at = start
    while run_at < end:
        ledger.record(name, start, interval, up=not down(run_at), reason="timeout")
        start += interval
        run_at = start


def settle(ledger: Ledger, name: str, at: float, objective: float = 0.99, **kw: object) -> None:
    ledger.advance(at, name, objective, kw.get("unknown", "down"), kw.get("windows", ()))  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------
# Calendar months


@pytest.mark.parametrize(
    ("month", "zone", "hours"),
    [
        ("2026-11", "Europe/Zurich", 720),  # 30 days
        ("2026-12", "Europe/Zurich", 744),  # 31 days
        ("2026-02", "Europe/Zurich", 672),  # February, not a leap year
        ("2028-02", "Europe/Zurich", 696),  # February of a leap year
        ("2026-03", "Europe/Zurich", 743),  # clocks go forward on 29 March
        ("2026-10", "Europe/Zurich", 745),  # clocks go back on 25 October
        ("2026-03", "America/Chicago", 743),  # US DST starts 8 March
        ("2026-03", "UTC", 744),
    ],
)
def test_a_month_lasts_its_calendar_length_in_the_sla_zone(
    month: str, zone: str, hours: int
) -> None:
    start, end = month_bounds(month, ZoneInfo(zone))
    assert end - start == hours * 3600


def test_month_bounds_fall_on_local_midnight() -> None:
    start, end = month_bounds("2026-11", ZURICH)
    assert datetime.fromtimestamp(start, UTC).isoformat() == "2026-10-31T23:00:00+00:00"
    assert datetime.fromtimestamp(end, UTC).isoformat() == "2026-11-30T23:00:00+00:00"


def test_a_moment_counts_in_the_month_of_the_sla_zone_not_utc() -> None:
    # 23:30 UTC on 31 October is 00:30 on 1 November in Zurich.
    assert month_key(ts("2026-10-31T23:30:00+00:00"), ZURICH) == "2026-11"
    assert month_key(ts("2026-10-31T23:30:00+00:00"), ZoneInfo("UTC")) == "2026-10"
    assert month_key(ts("2026-11-30T22:59:59+00:00"), ZURICH) == "2026-11"
    assert month_key(ts("2026-11-30T23:00:00+00:00"), ZURICH) == "2026-12"


def test_a_service_has_the_same_slots_everywhere_and_after_every_restart() -> None:
    # The grid depends on the name and the interval only: every location probes the same slots.
    assert phase("api", MIN) == phase("api", MIN)
    assert 0 <= phase("api", MIN) < MIN
    start = slot("api", MIN, ms(ts("2026-11-10T12:00:30+00:00")))
    assert (start - phase("api", MIN)) % MIN == 0
    assert start <= ms(ts("2026-11-10T12:00:30+00:00")) < start + MIN
    assert len({phase(f"s{i}", MIN) for i in range(100)}) == 100  # spread over the minute


# -------------------------------------------------------------------------------------------
# A steady month


@pytest.mark.parametrize(("failed", "met"), [(432, True), (433, False)])
def test_november_at_one_minute_allows_exactly_432_failed_slots(failed: int, met: bool) -> None:
    ledger = Ledger(None, "Europe/Zurich")
    start, end = month_bounds("2026-11", ZURICH)
    settle(ledger, "api", start - 3600)
    run_schedule(
        ledger, "api", 60, start - 3600, end, down=lambda t: start <= t < start + failed * 60
    )
    settle(ledger, "api", end + 60)
    figures = ledger.figures("api", "2026-11", end + 60)
    assert figures.seconds["down"] == failed * MIN
    assert figures.seconds["up"] == (43_200 - failed) * MIN
    assert figures.seconds["unknown"] == 0
    assert figures.budget == 432 * MIN
    assert (figures.failed <= figures.budget) is met


@pytest.mark.parametrize(("month", "hours"), [("2026-03", 743), ("2026-10", 745)])
def test_a_dst_month_is_its_real_length_of_slots(month: str, hours: int) -> None:
    ledger = Ledger(None, "Europe/Zurich")
    start, end = month_bounds(month, ZURICH)
    settle(ledger, "api", start - 60)
    run_schedule(ledger, "api", 60, start - 60, end)
    figures = ledger.figures("api", month, end)
    assert figures.seconds["up"] == hours * 60 * MIN
    assert figures.budget == hours * 60 * MIN // 100  # 1 % of 44,580 or 44,700 slots


def test_mid_month_a_slot_whose_probe_is_still_running_is_not_unknown() -> None:
    ledger = Ledger(None, "UTC")
    begin = ts("2026-11-10T00:00:00+00:00")
    settle(ledger, "api", begin)
    run_schedule(ledger, "api", 60, begin, begin + 3600)  # every slot up to the hour probed
    current = slot("api", MIN, ms(begin + 3600 + 30)) / 1000
    if ledger.covered("api", current, current + 60):  # the hour's last slot reaches past it
        current += 60
    # At any moment of the next slot, before its result: nothing is unknown.
    for into in (0.001, 5, 59.999):
        figures = ledger.figures("api", "2026-11", current + into, pending_from=current)
        assert figures.seconds["unknown"] == 0
        assert figures.end == ms(current)
    # Without a result for a whole slot, that slot is unknown: exactly one.
    later = current + 60 + 1
    figures = ledger.figures("api", "2026-11", later, pending_from=current + 60)
    assert figures.seconds["unknown"] == MIN


# -------------------------------------------------------------------------------------------
# What operators do


def test_an_interval_changed_mid_month_keeps_the_month_whole() -> None:
    ledger = Ledger(None, "Europe/Zurich")
    start, end = month_bounds("2026-11", ZURICH)
    reload = ts("2026-11-16T00:00:20+01:00")
    settle(ledger, "api", start - 60)
    run_schedule(ledger, "api", 60, start - 60, reload)  # 1m until the reload
    settle(ledger, "api", reload)
    run_schedule(ledger, "api", 30, reload, reload + 600)  # then 30s
    ten_minutes = ledger.figures("api", "2026-11", reload + 600, pending_from=reload + 600)
    assert ten_minutes.seconds["unknown"] == 0
    assert ten_minutes.seconds["down"] == 0
    run_schedule(ledger, "api", 30, reload + 600, end)
    figures = ledger.figures("api", "2026-11", end)
    assert figures.seconds == {
        "up": 30 * DAY,
        "down": 0,
        "unknown": 0,
        "excluded": 0,
        "maintenance": 0,
        "unmonitored": 0,
    }


def test_a_hundred_minute_outage_after_a_change_from_30s_to_1m_is_a_hundred_minutes() -> None:
    ledger = Ledger(None, "Europe/Zurich")
    start, end = month_bounds("2026-11", ZURICH)
    reload = ts("2026-11-10T08:00:10+01:00")
    outage = ts("2026-11-12T10:00:00+01:00")
    down = lambda t: outage <= t < outage + 6000  # noqa: E731
    settle(ledger, "api", start - 30)
    run_schedule(ledger, "api", 30, start - 30, reload, down)
    settle(ledger, "api", reload)
    run_schedule(ledger, "api", 60, reload, end, down)
    figures = ledger.figures("api", "2026-11", end)
    assert figures.seconds["down"] == 100 * MIN
    assert figures.seconds["up"] == 30 * DAY - 100 * MIN


def test_a_restart_within_a_slot_during_an_outage_probes_no_minute_twice(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = Ledger(path, "Europe/Zurich")
    start, end = month_bounds("2026-11", ZURICH)
    outage = ts("2026-11-20T10:00:00+01:00")
    down = lambda t: outage <= t < outage + 6000  # noqa: E731
    # The old exporter probes the slot the restart falls in, then stops 20 s into it.
    stop = grid_at_or_after("api", 60, outage + 3000) + 20
    settle(ledger, "api", start - 60)
    run_schedule(ledger, "api", 60, start - 60, stop, down)
    settle(ledger, "api", stop)
    ledger.flush()
    again = Ledger(path, "Europe/Zurich")  # the new process, 5 s later, from the file
    settle(again, "api", stop + 5)
    run_schedule(again, "api", 60, stop + 5, end, down)
    figures = again.figures("api", "2026-11", end)
    assert figures.seconds["down"] == 100 * MIN  # not 101 slots
    assert figures.seconds["unknown"] == 0


def test_a_restart_after_a_gap_leaves_exactly_the_unprobed_slots_unknown() -> None:
    ledger = Ledger(None, "UTC")
    start, end = month_bounds("2026-11", ZoneInfo("UTC"))
    stop = grid_at_or_after("api", 60, ts("2026-11-05T10:00:00+00:00"))  # before this slot's run
    back = grid_at_or_after("api", 60, ts("2026-11-05T10:07:00+00:00")) + 30  # mid-slot
    settle(ledger, "api", start - 60)
    run_schedule(ledger, "api", 60, start - 60, stop)
    settle(ledger, "api", back)
    run_schedule(ledger, "api", 60, back, end)
    figures = ledger.figures("api", "2026-11", end)
    # The slots from `stop` up to the one `back` falls in had no run: exactly 7 slots.
    assert figures.seconds["unknown"] == 7 * MIN
    assert figures.seconds["up"] == 30 * DAY - 7 * MIN


def test_time_the_exporter_was_stopped_inside_declared_maintenance_is_maintenance() -> None:
    ledger = Ledger(None, "Europe/Zurich")
    start, end = month_bounds("2026-11", ZURICH)
    window = (ts("2026-11-14T22:00:00+01:00"), ts("2026-11-15T02:00:00+01:00"))
    stop = grid_at_or_after("api", 60, ts("2026-11-14T21:30:00+01:00"))
    back = grid_at_or_after("api", 60, ts("2026-11-15T02:30:00+01:00"))
    settle(ledger, "api", start - 60, windows=[window])
    run_schedule(ledger, "api", 60, start - 60, stop)
    settle(ledger, "api", back, windows=[window])  # the restart: the window is in the SLA file
    run_schedule(ledger, "api", 60, back, end)
    figures = ledger.figures("api", "2026-11", end, future_maintenance=[window])
    assert figures.seconds["maintenance"] == 4 * 3_600_000
    assert figures.seconds["unknown"] == ms(back - stop) - 4 * 3_600_000  # 30 + 30 minutes
    assert figures.budget == (30 * DAY - 4 * 3_600_000) // 100


def test_failures_inside_a_declared_maintenance_window_are_maintenance_not_down() -> None:
    ledger = Ledger(None, "UTC")
    start, end = month_bounds("2026-11", ZoneInfo("UTC"))
    window = (ts("2026-11-14T22:00:00+00:00"), ts("2026-11-15T00:00:00+00:00"))
    outage = ts("2026-11-14T23:00:00+00:00")  # the last hour of the window and the next
    down = lambda t: outage <= t < outage + 7200  # noqa: E731
    settle(ledger, "api", start - 60, windows=[window])
    run_schedule(ledger, "api", 60, start - 60, end, down)
    settle(ledger, "api", end, windows=[window])
    figures = ledger.figures("api", "2026-11", end)
    assert figures.seconds["maintenance"] == 2 * 3_600_000
    # Down only after the window: up to the first slot that ran after the outage.
    back = grid_at_or_after("api", 60, outage + 7200)
    assert figures.seconds["down"] == ms(back - window[1])
    assert figures.budget == (30 * DAY - 2 * 3_600_000) // 100


def test_the_month_monitoring_began_counts_from_the_first_slot_not_the_first_probe() -> None:
    ledger = Ledger(None, "UTC")
    start, end = month_bounds("2026-11", ZoneInfo("UTC"))
    first = ts("2026-11-16T00:00:00+00:00") + 17.5  # the first run comes 17.5 s into its slot
    settle(ledger, "api", first)
    run_schedule(ledger, "api", 60, first, end)
    figures = ledger.figures("api", "2026-11", end)
    since = slot("api", MIN, ms(first))
    assert figures.seconds["unmonitored"] == since - ms(start)
    assert figures.seconds["up"] == ms(end) - since
    assert figures.seconds["unknown"] == 0
    assert figures.budget == (ms(end) - since) // 100


def test_a_whole_month_without_probes_is_reported_down_under_the_down_policy() -> None:
    ledger = Ledger(None, "Europe/Zurich")
    october, _ = month_bounds("2026-10", ZURICH)
    settle(ledger, "api", october)
    run_schedule(ledger, "api", 60, october, ts("2026-10-31T12:00:00+01:00"))
    back = ts("2026-12-02T09:00:00+01:00")
    settle(ledger, "api", back)
    assert "2026-11" in ledger.months("api", back)
    figures = ledger.figures("api", "2026-11", back)
    assert figures.seconds["unknown"] == 30 * DAY
    assert figures.seconds["up"] == 0
    assert figures.failed > figures.budget == 432 * MIN  # a breach, availability 0


def test_excluded_unknown_time_shrinks_the_budget_it_is_excluded_from() -> None:
    ledger = Ledger(None, "UTC")
    start, end = month_bounds("2026-11", ZoneInfo("UTC"))
    gap_from = grid_at_or_after("api", 60, ts("2026-11-20T00:00:00+00:00"))
    outage = ts("2026-11-10T00:00:00+00:00")
    down = lambda t: outage <= t < outage + 431 * 60  # noqa: E731
    settle(ledger, "api", start - 60, unknown="excluded")
    run_schedule(ledger, "api", 60, start - 60, gap_from, down)
    run_schedule(ledger, "api", 60, gap_from + 120 * 60, end, down)  # 120 slots without a run
    figures = ledger.figures("api", "2026-11", end, unknown="excluded")
    assert figures.seconds["excluded"] == 120 * MIN
    assert figures.seconds["unknown"] == 0
    assert figures.failed == 431 * MIN
    # 1 % of the 43,080 counted minutes is 430.8: 431 failed minutes breach the month.
    assert figures.budget == 25_848_000
    assert figures.failed > figures.budget


def test_a_finished_month_keeps_the_objective_and_policy_it_ran_under() -> None:
    ledger = Ledger(None, "UTC")
    start, end = month_bounds("2026-11", ZoneInfo("UTC"))
    settle(ledger, "api", start - 60)
    run_schedule(ledger, "api", 60, start - 60, end, down=lambda t: start <= t < start + 433 * 60)
    settle(ledger, "api", end)
    # December: the objective is lowered to 95 % and unknown time is excluded from now on.
    settle(ledger, "api", end + 3600, objective=0.95, unknown="excluded")
    november = ledger.figures("api", "2026-11", end + 7200, objective=0.95, unknown="excluded")
    assert november.budget == 432 * MIN
    assert november.objective == pytest.approx(0.99)
    assert november.failed > november.budget


def test_an_objective_changed_mid_month_applies_from_that_moment() -> None:
    ledger = Ledger(None, "UTC")
    start, end = month_bounds("2026-11", ZoneInfo("UTC"))
    change = ts("2026-11-16T00:00:00+00:00")
    settle(ledger, "api", start - 60)
    run_schedule(ledger, "api", 60, start - 60, change)
    settle(ledger, "api", change)
    settle(ledger, "api", change, objective=0.95)
    run_schedule(ledger, "api", 60, change, end)
    figures = ledger.figures("api", "2026-11", end, objective=0.95)
    # 15 days at 1 % and 15 days at 5 % of budget.
    assert figures.budget == 15 * DAY // 100 + 15 * DAY * 5 // 100
    assert figures.objective == pytest.approx(0.97)


def test_a_clock_stepped_back_ten_days_rewrites_no_month() -> None:
    ledger = Ledger(None, "Europe/Zurich")
    now = ts("2026-12-03T12:00:00+01:00")
    settle(ledger, "api", ts("2026-11-01T00:00:00+01:00"))
    run_schedule(ledger, "api", 60, ts("2026-11-01T00:00:00+01:00"), now)
    settle(ledger, "api", now)
    before = {key: ledger.figures("api", key, now) for key in ("2026-11", "2026-12")}
    back = now - 10 * 86400  # 23 November by the stepped clock
    run_schedule(ledger, "api", 60, back, back + 600)  # ten minutes of probes at the wrong time
    settle(ledger, "api", back + 600)
    assert ledger.clock_steps_back == 10
    after = {key: ledger.figures("api", key, back + 600) for key in ("2026-11", "2026-12")}
    assert after == before
    assert ledger.months("api", back) == ledger.months("api", now)


def test_a_result_of_the_exporter_s_own_fault_leaves_its_slot_unknown() -> None:
    ledger = Ledger(None, "UTC")
    at = grid_at_or_after("api", 60, ts("2026-11-10T00:00:00+00:00"))
    settle(ledger, "api", at)
    ledger.record("api", at, 60, up=True)
    ledger.record("api", at + 60, 60, up=False, reason="exporter", known=False)
    ledger.record("api", at + 120, 60, up=True)
    figures = ledger.figures("api", "2026-11", at + 180)
    assert (figures.seconds["up"], figures.seconds["down"]) == (2 * MIN, 0)
    assert figures.seconds["unknown"] == MIN


def test_down_runs_keep_the_reasons_seen_for_the_incident_list() -> None:
    ledger = Ledger(None, "UTC")
    at = grid_at_or_after("api", 60, ts("2026-11-10T00:00:00+00:00"))
    for i, reason in enumerate(["timeout", "connect", "timeout"]):
        ledger.record("api", at + 60 * i, 60, up=False, reason=reason)
    [run] = ledger.books["api"].months["2026-11"].runs
    assert (run.start, run.end, run.up) == (ms(at), ms(at) + 3 * MIN, False)
    assert run.reasons == {"timeout", "connect"}


# -------------------------------------------------------------------------------------------
# The file


def test_the_month_survives_a_restart_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.json"
    ledger = Ledger(path, "Europe/Zurich")
    begin = ts("2026-11-10T12:00:00+01:00")
    settle(ledger, "smtp", begin)
    run_schedule(
        ledger, "smtp", 60, begin, begin + 300, down=lambda t: begin + 120 <= t < begin + 180
    )
    ledger.flush()
    assert ledger.snapshot() is None  # nothing changed since: no write
    again = Ledger(path, "Europe/Zurich")
    assert again.figures("smtp", "2026-11", begin + 300) == ledger.figures(
        "smtp", "2026-11", begin + 300
    )
    assert not list(path.parent.glob(".ledger-*"))  # no temporary file left behind


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ('{"version": 1, "timezone": "UTC", "tallies": {}}', "older sla-exporter"),
        ('{"version": 2, "timezone": "UTC", "horizon": 0, "services": []}', "services: "),
        (
            '{"version": 2, "timezone": "UTC", "horizon": 0, "services": {"api": {"months": '
            '{"Nov": {}}}}}',
            "'Nov' is not a month",
        ),
        (
            '{"version": 2, "timezone": "UTC", "horizon": 0, "services": {"api": {"months": '
            '{"2026-11": {"carried": {"up": -5}, "carried_until": 1793491200000}}}}}',
            "services.api.months.2026-11.carried.up: negative",
        ),
        (
            '{"version": 2, "timezone": "UTC", "horizon": 0, "services": {"api": {"months": '
            '{"2026-11": {"runs": [[1793491200000, 1793491260000, true, []], '
            "[1793491230000, 1793491290000, false, []]]}}}}}",
            "services.api.months.2026-11.runs[1]",
        ),
        ('{"version": 2, "timezone": "Mars/Olympus", "horizon": 0, "services": {}}', "Mars"),
    ],
)
def test_a_bad_ledger_file_is_refused_with_what_is_wrong_and_left_untouched(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "ledger.json"
    path.write_text(content)
    with pytest.raises(LedgerInvalid) as refused:
        Ledger(path, "UTC")
    assert str(path) in str(refused.value)
    assert message in str(refused.value)
    assert "--storage.recover-from" in str(refused.value)
    assert path.read_text() == content


def test_thirteen_months_are_kept_and_older_ones_pruned(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.json", "UTC")
    for year, month in [(2025, m) for m in range(1, 13)] + [(2026, m) for m in range(1, 4)]:
        ledger.record("web", ts(f"{year}-{month:02d}-15T00:00:00+00:00"), 300, True)
    ledger.exposed("web", "2025-01", ts("2026-03-20T00:00:00+00:00"), 300, (), 0.99, "down")
    ledger.prune()
    assert ("web", "2025-01") not in ledger._figures  # nor the figures kept of a pruned month
    ledger.flush()
    kept = json.loads((tmp_path / "l.json").read_text())["services"]["web"]["months"]
    assert sorted(kept) == [f"2025-{m:02d}" for m in range(3, 13)] + [
        "2026-01",
        "2026-02",
        "2026-03",
    ]
    months = ledger.months("web", ts("2026-03-20T00:00:00+00:00"))
    assert months[0] == "2025-03"
    assert len(months) == 13


def test_a_service_not_probed_yet_has_no_unknown_time_behind_it() -> None:
    ledger = Ledger(None, "UTC")
    now = ts("2026-11-20T12:00:00+00:00")
    settle(ledger, "web", now)
    figures = ledger.figures("web", "2026-11", now)
    assert figures.seconds["unknown"] == 0
    assert figures.seconds["unmonitored"] == ms(now - month_bounds("2026-11", ZoneInfo("UTC"))[0])


@given(
    st.lists(
        st.tuples(st.integers(0, 60), st.integers(1, 25), st.booleans()), min_size=1, max_size=10
    )
)
def test_each_moment_keeps_the_first_result_that_covered_it(
    fills: list[tuple[int, int, bool]],
) -> None:
    month = Month()
    painted: dict[int, bool] = {}
    for start, length, up in fills:
        new = [t for t in range(start, start + length) if t not in painted]
        assert month.fill(start, start + length, up, None) == len(new)
        painted.update({t: up for t in new})
    assert {t: r.up for r in month.runs for t in range(r.start, r.end)} == painted
    for before, after in itertools.pairwise(month.runs):  # sorted, disjoint, merged
        assert before.end <= after.start
        assert not (before.end == after.start and before.up == after.up)


def test_figures_kept_between_two_questions_are_the_figures_counted_afresh() -> None:
    """The ledger keeps each month's figures with what they were counted from, for the next
    scrape: whatever is asked in between, each answer is the one counted from scratch."""
    ledger = Ledger(None, "Europe/Zurich")
    now = ts("2026-11-10T12:00:00+01:00")
    window = [(now - 1200, now - 600)]

    def both(
        clock: float, objective: float = 0.99, windows: Sequence[tuple[float, float]] = ()
    ) -> Figures:
        kept = ledger.exposed("api", "2026-11", clock, 60, windows, objective, "down")
        # The ledger's own cache set aside: the figures counted from scratch.
        saved, ledger._figures = ledger._figures, {}
        try:
            afresh = ledger.exposed("api", "2026-11", clock, 60, windows, objective, "down")
        finally:
            ledger._figures = saved
        assert kept == afresh
        return kept

    ledger.advance(now - 3600, "api", 0.99, "down", ())
    before = both(now)
    assert ledger.exposed("api", "2026-11", now, 60, (), 0.99, "down") is before  # kept
    # A first result that is the exporter's own fault: monitored from its slot on, but the
    # month's time is not covered by it (the month itself is unchanged).
    ledger.record("api", slot("api", MIN, ms(now - 1800)) / 1000, 60, False, known=False)
    assert both(now) != before
    # Another objective, other windows, asked in turns.
    assert both(now, objective=0.995) != both(now)
    assert both(now, windows=window) != both(now)
    # The settings recorded up to a time inside the window, without the window: its part
    # before that time is no longer maintenance to come.
    inside = both(now, windows=window)
    ledger.advance(now - 900, "api", 0.99, "down", ())
    assert both(now, windows=window) != inside
    # A window over the pending slot, before the time recorded: only the time to come sees it.
    pending = slot("api", MIN, ms(now)) / 1000
    ledger.advance(now, "api", 0.99, "down", ())
    assert both(now, windows=[(pending, now)]) != both(now)
    # The clock at the next slot, and the figures asked without a pending slot.
    both(now + 60)
    assert ledger.figures("api", "2026-11", now + 60) != both(now + 60)


def test_a_finished_month_is_counted_to_its_end_once_the_slot_across_it_is_over() -> None:
    """The slot that straddles the end of a month is pending for a while after the month ends;
    if no result ever comes for it (missed), the month's last moments are unknown once it is
    over, not left out of the month forever."""
    ledger = Ledger(None, "UTC")
    start, end = (t / 1000 for t in (ms(t) for t in month_bounds("2026-11", ZoneInfo("UTC"))))
    name = next(f"svc{i}" for i in itertools.count() if slot(f"svc{i}", MIN, ms(end)) < ms(end))
    straddling = slot(name, MIN, ms(end)) / 1000
    ledger.advance(start, name, 0.99, "down", ())
    ledger.record(name, start, straddling - start, True)
    ledger.advance(end + 1, name, 0.99, "down", ())  # the month is over and committed
    pending = ledger.exposed(name, "2026-11", end + 1, 60, (), 0.99, "down")
    assert pending.end == ms(straddling)  # the straddling slot is still pending
    over = ledger.exposed(name, "2026-11", straddling + 61, 60, (), 0.99, "down")
    assert over.end == ms(end)
    assert over.seconds["unknown"] == ms(end - straddling)


def test_a_finished_month_kept_whole_is_counted_again_when_its_end_is_pending_again() -> None:
    """The figures of a month over are kept on the month and the settings alone, but only
    while its end is decided: an interval lengthened by a reload soon after the month ended
    puts its end back into a pending slot, and the figures say so, as counted afresh."""
    ledger = Ledger(None, "UTC")
    start, end = (t / 1000 for t in (ms(t) for t in month_bounds("2026-11", ZoneInfo("UTC"))))
    hour = 3600
    name = next(
        f"svc{i}" for i in itertools.count() if slot(f"svc{i}", ms(hour), ms(end)) < ms(end)
    )
    ledger.advance(start, name, 0.99, "down", ())
    ledger.record(name, start, end - start, True)
    later = end + 120
    ledger.advance(later, name, 0.99, "down", ())
    over = ledger.exposed(name, "2026-11", later, 60, (), 0.99, "down")
    assert over.end == ms(end) and over.seconds["up"] == ms(end - start)
    hourly = ledger.exposed(name, "2026-11", later, hour, (), 0.99, "down")
    ledger._figures.clear()
    assert hourly == ledger.exposed(name, "2026-11", later, hour, (), 0.99, "down")
    assert hourly.end == slot(name, ms(hour), ms(later)) < ms(end)  # pending again
