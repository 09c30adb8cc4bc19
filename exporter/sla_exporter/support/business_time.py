"""Business time: weekly opening hours in an IANA zone, minus holidays, and clocks that run in it.

A `Calendar` answers two questions, exactly and fast (it walks whole opening intervals, never
minutes):

- `add(start, seconds)`: the earliest instant at which `seconds` of opening time have passed
  since `start` (a deadline). A ticket at Friday 16:30 with 4 h to go in an 08:00-17:00 week is
  due Monday 11:30.
- `between(a, b)`: the opening seconds from `a` to `b` (time used on a clock).

Opening hours are local wall-clock times in the calendar's zone, so they follow daylight saving:
08:00-17:00 in Europe/Zurich is 07:00-16:00 UTC in winter and 06:00-15:00 UTC in summer. A day's
intervals become instants on that date with zoneinfo's default reading of an ambiguous or missing
local time (`fold=0`); only an interval boundary inside the hour a clock changes is affected, and
opening hours do not put one there. A day that is a public holiday or an extra closed day has no
intervals at all.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

DAY = 86400
# How far `add` looks ahead before giving up; only a calendar with (nearly) no opening time
# gets there, and the config refuses calendars without weekly hours.
MAX_DAYS = 3660

Interval = tuple[int, int]  # seconds since local midnight, start < end <= 86400


class Calendar:
    """Weekly opening intervals in a zone, minus closed days (public holidays and extra ones)."""

    def __init__(
        self,
        zone: str | ZoneInfo,
        weekly: Sequence[Iterable[Interval]],
        *,
        name: str = "",
        closed: Iterable[date] = (),
        holidays: Callable[[int], Iterable[date]] | None = None,
        working_day: float | None = None,
    ) -> None:
        """`weekly[0]` is Monday's intervals, `weekly[6]` Sunday's; `holidays(year)` lists the
        public holidays of a year (called once per year and cached)."""
        if len(weekly) != 7:
            raise ValueError("weekly needs 7 days, Monday first")
        self.name = name
        self.zone = zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone)
        self.weekly: tuple[tuple[Interval, ...], ...] = tuple(tuple(sorted(day)) for day in weekly)
        for day in self.weekly:
            previous_end = 0
            for start, end in day:
                if not 0 <= start < end <= DAY or start < previous_end:
                    raise ValueError(f"bad or overlapping opening intervals: {day}")
                previous_end = end
        if not any(self.weekly):
            raise ValueError("a calendar needs opening hours on at least one day of the week")
        self.closed_days = frozenset(closed)
        self._holidays = holidays
        self._holiday_years: dict[int, frozenset[date]] = {}
        self._lock = threading.Lock()
        self._days: dict[date, tuple[tuple[float, float], ...]] = {}
        self.working_day = working_day if working_day is not None else self._usual_day()

    def _usual_day(self) -> float:
        """The most common length of an open weekday (the longest on a tie): "1 working day"."""
        lengths = Counter(sum(end - start for start, end in day) for day in self.weekly if day)
        best = max(lengths.items(), key=lambda item: (item[1], item[0]))
        return float(best[0])

    def is_closed(self, day: date) -> bool:
        """Whether `day` (a local date) is a public holiday or an extra closed day."""
        if day in self.closed_days:
            return True
        if self._holidays is None:
            return False
        year = self._holiday_years.get(day.year)
        if year is None:
            # The holidays library fills its dicts lazily; one lock keeps a reload thread and
            # the event loop from filling the same year at once.
            with self._lock:
                year = self._holiday_years.get(day.year)
                if year is None:
                    year = frozenset(self._holidays(day.year))
                    self._holiday_years[day.year] = year
        return day in year

    def intervals(self, day: date) -> tuple[tuple[float, float], ...]:
        """Opening intervals of local date `day` as unix times (start inclusive, end exclusive)."""
        cached = self._days.get(day)
        if cached is not None:
            return cached
        if self.is_closed(day):
            result: tuple[tuple[float, float], ...] = ()
        else:
            midnight = datetime(day.year, day.month, day.day, tzinfo=self.zone)
            # Aware datetime + timedelta is wall-clock arithmetic: 08:00 stays 08:00 local on
            # a day the clocks change, and 24:00 is the next local midnight (23 or 25 h later).
            result = tuple(
                (
                    (midnight + timedelta(seconds=start)).timestamp(),
                    (midnight + timedelta(seconds=end)).timestamp(),
                )
                for start, end in self.weekly[day.weekday()]
            )
        if len(self._days) > 20000:  # a few decades of days; bounded for long-running processes
            self._days.clear()
        self._days[day] = result
        return result

    def _local_date(self, timestamp: float) -> date:
        return datetime.fromtimestamp(timestamp, self.zone).date()

    def is_open(self, timestamp: float) -> bool:
        """Whether `timestamp` falls inside an opening interval."""
        return any(s <= timestamp < e for s, e in self.intervals(self._local_date(timestamp)))

    def add_ts(self, start: float, seconds: float) -> float:
        """The earliest unix time by which `seconds` of opening time have passed since `start`."""
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, got {seconds}")
        if seconds == 0:
            return start
        remaining = seconds
        day = self._local_date(start)
        for _ in range(MAX_DAYS):
            for s, e in self.intervals(day):
                if e <= start:
                    continue
                s = max(s, start)
                if e - s >= remaining:
                    return s + remaining
                remaining -= e - s
            day += timedelta(days=1)
        raise ValueError(f"calendar {self.name!r} has no opening time within {MAX_DAYS} days")

    def between_ts(self, a: float, b: float) -> float:
        """Opening seconds in [a, b); 0 when b <= a."""
        if b <= a:
            return 0.0
        total = 0.0
        day, last = self._local_date(a), self._local_date(b)
        while day <= last:
            for s, e in self.intervals(day):
                lo, hi = max(s, a), min(e, b)
                if hi > lo:
                    total += hi - lo
            day += timedelta(days=1)
        return total

    def add(self, start: datetime, seconds: float) -> datetime:
        """`add_ts` for aware datetimes; the result is in the calendar's zone."""
        return datetime.fromtimestamp(self.add_ts(_aware(start).timestamp(), seconds), self.zone)

    def between(self, a: datetime, b: datetime) -> float:
        """`between_ts` for aware datetimes."""
        return self.between_ts(_aware(a).timestamp(), _aware(b).timestamp())

    def __repr__(self) -> str:
        return f"Calendar({self.name!r}, {self.zone.key})"


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("business time needs timezone-aware datetimes")
    return when


class WallClock:
    """The calendar-time counterpart of `Calendar`: every second counts."""

    name = "calendar"

    def add_ts(self, start: float, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, got {seconds}")
        return start + seconds

    def between_ts(self, a: float, b: float) -> float:
        return max(0.0, b - a)


WALL_CLOCK = WallClock()
