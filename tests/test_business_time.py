"""Business time: deadlines pinned by the seed SLAs, properties against a minute-by-minute count."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sla_exporter.config import parse
from sla_exporter.support.business_time import Calendar
from sla_exporter.support.config import CalendarConfig, parse_hours

H = 3600
ZURICH = ZoneInfo("Europe/Zurich")
ROME = ZoneInfo("Europe/Rome")
MEXICO = ZoneInfo("America/Mexico_City")


def week(*days: list[str], weekend: list[str] | None = None) -> list[list[tuple[int, int]]]:
    """Monday to Friday with the given hours (one list for all five), weekend closed."""
    (hours,) = days
    return [[parse_hours(h) for h in hours]] * 5 + [[parse_hours(h) for h in weekend or []]] * 2


# Mailpro: "in Europe, Monday to Friday, from 8am to 5pm (GMT+1)": the Geneva office's local
# time, summer time included (docs/CONFIGURATION.md, "Calendars").
MAILPRO_EUROPE = Calendar(ZURICH, week(["08:00-17:00"]), name="europe")
# "and in America 9am to 5pm (GMT-6)": Mexico City, on GMT-6 all year since 2022.
MAILPRO_AMERICA = Calendar(MEXICO, week(["09:00-17:00"]), name="america")


def mailup(closed: tuple[date, ...] = ()) -> Calendar:
    """MailUp: "Monday to Friday (excluding public holidays), from 9am to 1pm and 2pm to 6pm"."""
    config = CalendarConfig.model_validate(
        {
            "timezone": "Europe/Rome",
            "hours": {"mon-fri": ["09:00-13:00", "14:00-18:00"]},
            "holidays": {"country": "IT"},
            "closed": list(closed),
        }
    )
    return config.build("mailup")


def at(zone: ZoneInfo, text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


# --------------------------------------------------------------------------------------------
# Examples from the seeds


def test_a_ticket_at_friday_1630_cet_with_4h_is_due_monday_1130() -> None:
    friday = at(ZURICH, "2026-01-16T16:30")
    assert MAILPRO_EUROPE.add(friday, 4 * H) == at(ZURICH, "2026-01-19T11:30")


def test_a_deadline_at_closing_time_stays_at_closing_time() -> None:
    assert MAILPRO_EUROPE.add(at(ZURICH, "2026-01-19T13:00"), 4 * H) == at(
        ZURICH, "2026-01-19T17:00"
    )


@pytest.mark.parametrize(
    ("opened", "due"),
    [
        ("2026-01-17T10:00", "2026-01-19T12:00"),  # Saturday
        ("2026-01-18T23:59", "2026-01-19T12:00"),  # Sunday night
        ("2026-01-19T06:00", "2026-01-19T12:00"),  # Monday before opening
        ("2026-01-19T17:00", "2026-01-20T12:00"),  # Monday at closing time
        ("2026-01-19T21:00", "2026-01-20T12:00"),  # Monday evening
    ],
)
def test_a_ticket_opened_outside_hours_starts_its_clock_at_the_next_opening(
    opened: str, due: str
) -> None:
    assert MAILPRO_EUROPE.add(at(ZURICH, opened), 4 * H) == at(ZURICH, due)


def test_the_lunch_break_does_not_count() -> None:
    calendar = mailup()
    # "dealt with within 4 working hours": 11:00-13:00 and 14:00-16:00.
    assert calendar.add(at(ROME, "2026-01-19T11:00"), 4 * H) == at(ROME, "2026-01-19T16:00")
    assert calendar.between(at(ROME, "2026-01-19T12:30"), at(ROME, "2026-01-19T14:30")) == H
    # A ticket during lunch starts at 14:00.
    assert calendar.add(at(ROME, "2026-01-19T13:20"), 30 * 60) == at(ROME, "2026-01-19T14:30")


def test_one_working_day_is_the_length_of_a_usual_day_of_the_calendar() -> None:
    calendar = mailup()
    assert calendar.working_day == 8 * H
    assert MAILPRO_EUROPE.working_day == 9 * H
    # "solve your problem within 1 working day": Monday 15:00 -> Tuesday 15:00.
    monday = at(ROME, "2026-01-19T15:00")
    assert calendar.add(monday, calendar.working_day) == at(ROME, "2026-01-20T15:00")
    # "Answer from Legal Team 5 days": 5 working days of 9 h, Monday to Monday.
    assert MAILPRO_EUROPE.add(at(ZURICH, "2026-01-19T10:00"), 5 * 9 * H) == at(
        ZURICH, "2026-01-26T10:00"
    )


def test_christmas_and_st_stephen_are_closed_in_italy() -> None:
    calendar = mailup()
    # Thursday 24 December is a working day in Italy; Friday 25 and Saturday 26 are holidays.
    christmas_eve = at(ROME, "2026-12-24T16:00")
    assert calendar.add(christmas_eve, 4 * H) == at(ROME, "2026-12-28T11:00")
    assert calendar.between(christmas_eve, at(ROME, "2026-12-28T09:00")) == 2 * H


def test_an_extra_closed_day_is_closed_too() -> None:
    calendar = mailup(closed=(date(2026, 12, 24),))
    assert calendar.add(at(ROME, "2026-12-23T17:00"), 4 * H) == at(ROME, "2026-12-28T12:00")
    assert calendar.is_closed(date(2026, 12, 24))
    assert not calendar.is_open(at(ROME, "2026-12-24T10:00").timestamp())


def test_a_weekend_when_summer_time_starts_keeps_local_opening_hours() -> None:
    # Clocks go forward on Sunday 29 March 2026; Monday opens at 08:00 CEST = 06:00 UTC.
    friday = at(ZURICH, "2026-03-27T16:00")
    due = MAILPRO_EUROPE.add(friday, 4 * H)
    assert due == at(ZURICH, "2026-03-30T11:00")
    assert due.astimezone(UTC) == datetime(2026, 3, 30, 9, 0, tzinfo=UTC)
    assert MAILPRO_EUROPE.between(friday, due) == 4 * H


def test_a_weekend_when_summer_time_ends_keeps_local_opening_hours() -> None:
    # Clocks go back on Sunday 25 October 2026: the weekend has 25 hours, not one is open.
    friday = at(ZURICH, "2026-10-23T16:00")
    assert MAILPRO_EUROPE.add(friday, 4 * H) == at(ZURICH, "2026-10-26T11:00")
    assert MAILPRO_EUROPE.between(friday, at(ZURICH, "2026-10-26T08:00")) == H


def test_a_round_the_clock_calendar_has_23_and_25_hour_days() -> None:
    always = Calendar(ZURICH, [[(0, 86400)]] * 7)
    assert always.between(at(ZURICH, "2026-03-29T00:00"), at(ZURICH, "2026-03-30T00:00")) == 23 * H
    assert always.between(at(ZURICH, "2026-10-25T00:00"), at(ZURICH, "2026-10-26T00:00")) == 25 * H


def test_america_opens_9_to_17_in_mexico_city_time() -> None:
    # A second-level ticket (8 h) on Friday 16:00 GMT-6 is due Monday 16:00 GMT-6.
    friday = datetime(2026, 6, 12, 16, 0, tzinfo=MEXICO)
    due = MAILPRO_AMERICA.add(friday, 8 * H)
    assert due == datetime(2026, 6, 15, 16, 0, tzinfo=MEXICO)
    assert due.utcoffset() == timedelta(hours=-6)  # no summer time in Mexico since 2022


def test_the_same_instant_has_different_business_time_in_each_region() -> None:
    # 16:00 UTC on a Monday in January: 17:00 in Geneva (closed), 10:00 in Mexico City (open).
    moment = datetime(2026, 1, 19, 16, 0, tzinfo=UTC).timestamp()
    assert not MAILPRO_EUROPE.is_open(moment)
    assert MAILPRO_AMERICA.is_open(moment)


def test_the_example_calendars_load_from_yaml() -> None:
    config = parse(
        """
sla: {name: x}
services: {a: {http: {url: "http://127.0.0.1/"}}}
support:
  database: support.db
  token: 0123456789abcdef
  calendars:
    mailup:
      timezone: Europe/Rome
      hours: {mon-fri: ["09:00-13:00", "14:00-18:00"]}
      holidays: {country: IT}
      closed: [2026-08-14]
  policies:
    standard: {calendar: mailup, targets: {first_response: 4h, resolution: 1 working day}}
"""
    )
    assert config.support is not None
    calendar = config.support.calendars["mailup"].build("mailup")
    assert calendar.is_closed(date(2026, 8, 14)) and calendar.is_closed(date(2026, 8, 15))
    assert calendar.working_day == 8 * H


def test_naive_datetimes_and_negative_durations_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        MAILPRO_EUROPE.add(datetime(2026, 1, 19, 10, 0), H)
    with pytest.raises(ValueError, match="negative"):
        MAILPRO_EUROPE.add_ts(0, -1)


def test_a_calendar_without_any_opening_hours_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one day"):
        Calendar(ZURICH, [[]] * 7)


# --------------------------------------------------------------------------------------------
# Properties against a brute-force reference: a minute is open when its local wall time falls
# in an opening interval of its local date and that date is not closed.

ZONES = ["Europe/Zurich", "America/Chicago", "America/Mexico_City", "Australia/Sydney", "UTC"]
# Interval boundaries avoid 01:00-04:00, where clocks change, so "local wall time inside the
# interval" (the reference) and "instants between the interval's ends" (the calendar) agree.
BOUNDS = [0, *range(4 * 60, 24 * 60 + 1, 30)]
WINDOW_START = datetime(2026, 3, 20, tzinfo=UTC)  # covers two spring-forward weekends
WINDOW_DAYS = 240  # and two fall-back ones


@st.composite
def calendars(draw: st.DrawFn) -> Calendar:
    zone = draw(st.sampled_from(ZONES))
    weekly = []
    for _ in range(7):
        points = sorted(draw(st.sets(st.sampled_from(BOUNDS), max_size=4)))
        pairs = list(zip(points[::2], points[1::2], strict=False))
        weekly.append([(a * 60, b * 60) for a, b in pairs])
    if not any(weekly):
        weekly[0] = [(9 * 3600, 17 * 3600)]
    closed = draw(
        st.sets(st.dates(min_value=date(2026, 3, 15), max_value=date(2026, 12, 31)), max_size=10)
    )
    return Calendar(zone, weekly, closed=closed)


minutes_in_window = st.integers(0, WINDOW_DAYS * 24 * 60)


def start_of(minute: int) -> float:
    return WINDOW_START.timestamp() + minute * 60


def open_minute(calendar: Calendar, ts: float) -> bool:
    local = datetime.fromtimestamp(ts, calendar.zone)
    if calendar.is_closed(local.date()):
        return False
    second = local.hour * 3600 + local.minute * 60
    return any(s <= second < e for s, e in calendar.weekly[local.weekday()])


@settings(max_examples=40, deadline=None)
@given(calendars(), minutes_in_window, st.integers(0, 4 * 24 * 60))
def test_between_equals_the_minutes_counted_one_by_one(
    calendar: Calendar, start: int, length: int
) -> None:
    a = start_of(start)
    expected = sum(60 for m in range(length) if open_minute(calendar, a + m * 60))
    assert calendar.between_ts(a, a + length * 60) == expected


@settings(max_examples=40, deadline=None)
@given(calendars(), minutes_in_window, st.integers(1, 3 * 8 * 60))
def test_add_finds_the_minute_the_count_reaches_the_target(
    calendar: Calendar, start: int, business_minutes: int
) -> None:
    a = start_of(start)
    counted, ts = 0, a
    while counted < business_minutes:
        counted += open_minute(calendar, ts)
        ts += 60
    assert calendar.add_ts(a, business_minutes * 60) == ts


@settings(max_examples=60, deadline=None)
@given(calendars(), minutes_in_window, st.floats(0, 10 * 86400), st.floats(0, 10 * 86400))
def test_add_and_between_are_inverse_and_additive(
    calendar: Calendar, start: int, first: float, second: float
) -> None:
    a = start_of(start)
    b = calendar.add_ts(a, first)
    c = calendar.add_ts(b, second)
    assert calendar.between_ts(a, b) == pytest.approx(first, abs=1e-6)
    assert calendar.between_ts(a, c) == pytest.approx(first + second, abs=1e-6)
    assert calendar.add_ts(a, first + second) == pytest.approx(c, abs=1e-6)
    assert a <= b <= c
