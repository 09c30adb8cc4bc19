"""Calendar-month tallies: month boundaries in the SLA's zone, exact counts, survival on disk."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sla_exporter.ledger import Ledger, month_bounds, month_key

ZURICH = ZoneInfo("Europe/Zurich")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


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


def test_a_probe_counts_in_the_month_of_the_sla_zone_not_utc() -> None:
    # 23:30 UTC on 31 October is 00:30 on 1 November in Zurich.
    assert month_key(ts("2026-10-31T23:30:00+00:00"), ZURICH) == "2026-11"
    assert month_key(ts("2026-10-31T23:30:00+00:00"), ZoneInfo("UTC")) == "2026-10"
    assert month_key(ts("2026-11-30T22:59:59+00:00"), ZURICH) == "2026-11"
    assert month_key(ts("2026-11-30T23:00:00+00:00"), ZURICH) == "2026-12"


def test_every_minute_of_november_is_one_tally_of_43200_probes() -> None:
    ledger = Ledger(None, "Europe/Zurich")
    start, end = month_bounds("2026-11", ZURICH)
    t = start
    failed = 0
    while t < end:
        down = failed < 433 and int(t) % 7 == 0
        failed += down
        ledger.record("api", t, success=not down, in_maintenance=False, interval=60)
        t += 60
    [(key, tally)] = ledger.months("api", end - 1)
    assert key == "2026-11"
    assert (tally.probes, tally.failures, tally.maintenance_probes) == (43200, 433, 0)


def test_maintenance_probes_are_counted_apart_from_the_sla_tally() -> None:
    ledger = Ledger(None, "UTC")
    now = ts("2026-11-10T12:00:00+00:00")
    ledger.record("api", now, success=False, in_maintenance=True, interval=60)
    ledger.record("api", now + 60, success=True, in_maintenance=True, interval=60)
    ledger.record("api", now + 120, success=False, in_maintenance=False, interval=60)
    [(_, tally)] = ledger.months("api", now)
    assert (tally.probes, tally.failures, tally.maintenance_probes) == (1, 1, 2)


def test_tallies_survive_a_restart_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.json"
    ledger = Ledger(path, "Europe/Zurich")
    now = ts("2026-11-10T12:00:00+01:00")
    for i in range(5):
        ledger.record("smtp", now + 60 * i, success=i != 2, in_maintenance=False, interval=60)
    ledger.flush()
    assert ledger.snapshot() is None  # nothing changed since: no write
    again = Ledger(path, "Europe/Zurich")
    [(key, tally)] = again.months("smtp", now)
    assert (key, tally.probes, tally.failures) == ("2026-11", 5, 1)
    assert not list(path.parent.glob(".ledger-*"))  # no temporary file left behind


def test_a_corrupt_ledger_file_stops_the_start_instead_of_erasing_the_month(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(RuntimeError, match="cannot read month tallies"):
        Ledger(path, "UTC")
    assert path.read_text() == "{not json"


def test_thirteen_months_are_kept_and_older_ones_pruned(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.json", "UTC")
    for month in range(1, 13):
        ledger.record("web", ts(f"2025-{month:02d}-15T00:00:00+00:00"), True, False, 300)
    for month in range(1, 4):
        ledger.record("web", ts(f"2026-{month:02d}-15T00:00:00+00:00"), True, False, 300)
    ledger.prune()
    ledger.flush()
    kept = json.loads((tmp_path / "l.json").read_text())["tallies"]["web"]
    assert sorted(kept) == [f"2025-{m:02d}" for m in range(3, 13)] + [
        "2026-01",
        "2026-02",
        "2026-03",
    ]
    months = ledger.months("web", ts("2026-03-20T00:00:00+00:00"))
    assert months[0][0] == "2025-03"
    assert len(months) == 13


def test_a_service_first_probed_mid_month_counts_its_month_from_that_probe() -> None:
    ledger = Ledger(None, "UTC")
    first = ts("2026-11-16T00:00:00+00:00")  # half of November is gone
    ledger.record("api", first, success=True, in_maintenance=False, interval=60)
    [(key, tally)] = ledger.months("api", first + 600)
    assert ledger.monitored_from(key, tally) == first
    # The next month is monitored from its first second: a gap there is unknown time.
    ledger.record("api", ts("2026-12-03T00:00:00+00:00"), True, False, 60)
    december = dict(ledger.months("api", ts("2026-12-03T00:00:00+00:00")))["2026-12"]
    assert ledger.monitored_from("2026-12", december) == ts("2026-12-01T00:00:00+00:00")


def test_a_service_not_probed_yet_has_no_unknown_time_behind_it() -> None:
    ledger = Ledger(None, "UTC")
    now = ts("2026-11-20T12:00:00+00:00")
    [(key, tally)] = ledger.months("web", now)
    assert ledger.monitored_from(key, tally) == now
