"""The `support:` section of the SLA file: business calendars, ticket policies and ingestion.

Same rules as the rest of the file (strict keys, errors with line and path); the models build on
the shared value types (values.py).
"""

from __future__ import annotations

import difflib
import functools
import itertools
import os
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..durations import format_duration, parse_duration
from ..values import Duration, Model, Objective, TimeZone, custom, show
from .business_time import DAY, Calendar, Interval

# --------------------------------------------------------------------------------------------
# Value types

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise custom(
            "name",
            "names must start with a lower-case letter and use only a-z, 0-9, _ and - "
            f"(at most 63 characters), got {show(value)}",
        )
    return value


# Calendar and policy names become label values (`calendar`, `policy`), hence the service rule.
Name = Annotated[str, AfterValidator(_name)]

# "GMT+1", "UTC-6", "CET+1": what SLAs write, and what is not a zone (nor a fixed offset anyone
# can agree on the sign of: the IANA zone Etc/GMT-1 is UTC+1).
_OFFSET_NAME = re.compile(r"^(GMT|UTC)\s*[+-]\s*\d{1,2}(:?\d{2})?$", re.IGNORECASE)


def _office_zone(value: Any) -> Any:
    if isinstance(value, str) and _OFFSET_NAME.match(value.strip()):
        raise custom(
            "timezone",
            f"must be an IANA time zone, got {show(value)}: use the zone of the office, such as "
            '"Europe/Zurich" for GMT+1 with summer time, or a fixed offset such as "Etc/GMT-1" '
            "(UTC+1 all year; the sign of Etc/ zones is inverted)",
        )
    return value


CalendarZone = Annotated[TimeZone, BeforeValidator(_office_zone)]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _days(value: str) -> str:
    first, _, last = value.partition("-")
    if (
        first not in WEEKDAYS
        or (last and last not in WEEKDAYS)
        or (last and WEEKDAYS.index(last) <= WEEKDAYS.index(first))
    ):
        raise custom(
            "weekday",
            "must be a day (mon, tue, wed, thu, fri, sat, sun) or a range of days in week order "
            f'like "mon-fri", got {show(value)}',
        )
    return value


Days = Annotated[str, AfterValidator(_days)]

_HOURS = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")


def parse_hours(text: str) -> Interval:
    """ "08:00-17:00" as seconds since local midnight; 24:00 is the end of the day."""
    match = _HOURS.match(text.strip())
    if match is None:
        raise ValueError(text)
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if m1 > 59 or m2 > 59 or h1 > 23 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise ValueError(text)
    start, end = h1 * 3600 + m1 * 60, h2 * 3600 + m2 * 60
    if start >= end:
        raise ValueError(text)
    return start, end


def _hours(value: Any) -> str:
    if not isinstance(value, str):
        # Unquoted 9:00 is a YAML 1.1 base-60 number (540); a range is always text.
        raise custom("hours", f'must be opening hours like "08:00-17:00", got {show(value)}')
    try:
        parse_hours(value)
    except ValueError:
        raise custom(
            "hours",
            'must be opening hours like "08:00-17:00" (start before end, 24:00 at the latest), '
            f"got {show(value)}",
        ) from None
    return value


Hours = Annotated[str, BeforeValidator(_hours)]


def _day(value: Any) -> date:
    # YAML reads an unquoted 2026-12-24 as a date; anything else is a typo or a local format.
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    raise custom("date", f"must be a date like 2026-12-24 (unquoted), got {show(value)}")


Day = Annotated[date, BeforeValidator(_day)]


def _as_text(value: Any) -> Any:
    # `level: 1` and `"level": 1` mean the level named "1"; a boolean is a typo.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _one_or_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


Label = Annotated[str, BeforeValidator(_as_text), Field(min_length=1, max_length=100)]
Labels = Annotated[list[Label], BeforeValidator(_one_or_list), Field(min_length=1)]

_WORKING_DAYS = re.compile(r"^(\d+) working days?$")


@dataclass(frozen=True)
class Span:
    """A target's length: clock seconds, or working days of the policy's calendar."""

    seconds: float = 0.0
    working_days: int = 0

    def resolve(self, calendar: Calendar) -> float:
        """Seconds on the clock: a working day is the calendar's `working_day`."""
        return self.working_days * calendar.working_day if self.working_days else self.seconds

    def __str__(self) -> str:
        if self.working_days:
            plural = "s" if self.working_days != 1 else ""
            return f"{self.working_days} working day{plural}"
        return format_duration(self.seconds)


def parse_span(value: Any) -> Span:
    """ "4h", "1h30m" or "5 working days"; raise ValueError otherwise."""
    if isinstance(value, Span):
        return value
    if not isinstance(value, str):
        raise ValueError(value)
    match = _WORKING_DAYS.match(value.strip())
    if match is not None:
        days = int(match.group(1))
        if days < 1:
            raise ValueError(value)
        return Span(working_days=days)
    return Span(seconds=parse_duration(value))


_SPAN_RULE = 'must be a duration like "4h" or "1h30m", or working days like "5 working days"'


def _span(value: Any) -> Span:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise custom("span", f"{_SPAN_RULE}, got {show(value)} (a number without a unit)")
    try:
        return parse_span(value)
    except ValueError:
        raise custom("span", f"{_SPAN_RULE}, got {show(value)}") from None


SpanValue = Annotated[Span, BeforeValidator(_span)]


def _target_form(value: Any) -> Any:
    # `first_response: 4h` is short for `first_response: {within: 4h}`.
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        _span(value)  # report a bad scalar here, at the target's own key
        return {"within": value}
    return value


def _database(value: str, info: ValidationInfo) -> str:
    if not value.strip():
        raise custom("database", "must be a file path, got an empty value")
    base = (info.context or {}).get("base_dir")
    return os.fspath(Path(base, value) if base is not None else Path(value))


DatabasePath = Annotated[str, AfterValidator(_database)]


def _token(value: SecretStr) -> SecretStr:
    if len(value.get_secret_value()) < 16:
        raise custom("token", "must be at least 16 characters long (a random string)")
    return value


# --------------------------------------------------------------------------------------------
# Models


@functools.cache
def _countries() -> dict[str, list[str]]:
    import holidays

    return {code: list(subs) for code, subs in holidays.list_supported_countries().items()}


class Holidays(Model):
    """Public holidays from the `holidays` library: a country and optionally a subdivision."""

    country: str
    subdivision: Annotated[str | None, BeforeValidator(_as_text)] = None

    @field_validator("country")
    @classmethod
    def _country(cls, value: str) -> str:
        countries = _countries()
        if value not in countries:
            close = difflib.get_close_matches(value.upper(), list(countries), n=1, cutoff=0.5)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            raise custom(
                "country",
                f"must be an ISO 3166 country code the holidays library knows, such as "
                f'"CH" or "IT", got {show(value)}{hint}',
            )
        return value

    @field_validator("subdivision")
    @classmethod
    def _subdivision(cls, value: str | None, info: ValidationInfo) -> str | None:
        country = info.data.get("country")
        if value is None or country is None:
            return value
        known = _countries()[country]
        if value not in known:
            listed = ", ".join(known) if known else "none"
            raise custom(
                "subdivision",
                f"must be a subdivision of {country} ({listed}), got {show(value)}",
            )
        return value

    def days(self, year: int) -> list[date]:
        """The public holidays of `year`."""
        import holidays

        return list(holidays.country_holidays(self.country, subdiv=self.subdivision, years=year))


class CalendarConfig(Model):
    """Weekly opening hours in a zone, minus public holidays and extra closed days."""

    description: str = ""
    timezone: CalendarZone
    hours: dict[Days, list[Hours]] = Field(min_length=1)
    holidays: Holidays | None = None
    closed: list[Day] = []
    working_day: Duration | None = None

    @field_validator("hours")
    @classmethod
    def _week(cls, hours: dict[str, list[str]]) -> dict[str, list[str]]:
        seen: dict[int, str] = {}
        for spec, intervals in hours.items():
            for day in _expand(spec):
                if day in seen:
                    raise custom(
                        "hours",
                        f'{WEEKDAYS[day]} is set twice (in "{seen[day]}" and "{spec}")',
                    )
                seen[day] = spec
            parsed = sorted((parse_hours(text), text) for text in intervals)
            for ((_, end), first), ((start, _), second) in itertools.pairwise(parsed):
                if start < end:
                    raise custom(
                        "hours", f'opening hours overlap in "{spec}": "{first}" and "{second}"'
                    )
        if not any(hours.values()):
            raise custom("hours", "must open on at least one day of the week")
        return hours

    @field_validator("working_day")
    @classmethod
    def _working_day(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= DAY:
            raise custom(
                "working_day", f"must be longer than 0s and at most 24h, got {show(value)}"
            )
        return value

    def weekly(self) -> list[list[Interval]]:
        """Monday-first intervals, seconds since local midnight."""
        week: list[list[Interval]] = [[] for _ in WEEKDAYS]
        for spec, intervals in self.hours.items():
            for day in _expand(spec):
                week[day] = sorted(parse_hours(text) for text in intervals)
        return week

    def build(self, name: str) -> Calendar:
        """The runtime calendar."""
        return Calendar(
            self.timezone,
            self.weekly(),
            name=name,
            closed=self.closed,
            holidays=self.holidays.days if self.holidays is not None else None,
            working_day=self.working_day,
        )


def _expand(spec: str) -> range:
    first, _, last = spec.partition("-")
    return range(WEEKDAYS.index(first), WEEKDAYS.index(last or first) + 1)


Clock = Literal["business", "calendar"]


class Target(Model):
    """How long a clock may run: `within` on the `clock` (business hours by default)."""

    within: SpanValue
    clock: Clock = "business"

    @field_validator("clock")
    @classmethod
    def _days_need_business(cls, clock: str, info: ValidationInfo) -> str:
        within = info.data.get("within")
        if clock == "calendar" and isinstance(within, Span) and within.working_days:
            raise custom(
                "clock",
                f'working days ({within}) need clock "business"; for calendar time write a '
                'duration such as "5d"',
            )
        return clock


TargetValue = Annotated[Target, BeforeValidator(_target_form)]
TARGETS = ("first_response", "next_reply", "resolution")


class Targets(Model):
    first_response: TargetValue | None = None
    next_reply: TargetValue | None = None
    resolution: TargetValue | None = None

    @model_validator(mode="after")
    def _some(self) -> Targets:
        if all(getattr(self, name) is None for name in TARGETS):
            raise custom("targets", f"must set at least one of {', '.join(TARGETS)}")
        return self

    def items(self) -> list[tuple[str, Target]]:
        """The targets that are set, in a fixed order."""
        return [(n, t) for n in TARGETS if (t := getattr(self, n)) is not None]


class Match(Model):
    """Ticket attributes a policy applies to; a key left out matches any value."""

    level: Labels | None = None
    priority: Labels | None = None
    region: Labels | None = None
    plan: Labels | None = None

    def matches(self, attributes: dict[str, str]) -> bool:
        for key in ("level", "priority", "region", "plan"):
            allowed = getattr(self, key)
            if allowed is not None and attributes.get(key) not in allowed:
                return False
        return True


def _known_calendar(value: str, info: ValidationInfo) -> str:
    names = (info.context or {}).get("support_calendars")
    if names is not None and value not in names:
        close = difflib.get_close_matches(value, names, n=1)
        hint = f'did you mean "{close[0]}"?' if close else f"calendars: {', '.join(names)}"
        raise custom("calendar", f'unknown calendar "{value}"; {hint}')
    return value


class Policy(Model):
    """Which tickets (`match`), on which `calendar`, must meet which `targets`."""

    description: str = ""
    match: Match = Match()
    calendar: Annotated[str, AfterValidator(_known_calendar)]
    targets: Targets
    warn_before: Duration | None = None
    objective: Objective | None = None

    @model_validator(mode="after")
    def _warn_before_targets(self, info: ValidationInfo) -> Policy:
        calendars = (info.context or {}).get("support_calendar_configs") or {}
        if self.warn_before is None:
            return self
        config = calendars.get(self.calendar)
        calendar = config.build(self.calendar) if config is not None else None
        for name, target in self.targets.items():
            if calendar is not None:
                seconds = target.within.resolve(calendar)
            elif target.within.working_days:
                continue  # the calendar has errors of its own, reported there
            else:
                seconds = target.within.seconds
            if self.warn_before >= seconds:
                raise custom(
                    "warn_before",
                    "must be shorter than every target (warn_before "
                    f"{format_duration(self.warn_before)}, {name} {target.within})",
                    field="warn_before",
                )
        return self


class SupportConfig(Model):
    """Ticket clocks in business hours: where tickets are kept, who may send events, the rules."""

    database: DatabasePath
    token: Annotated[SecretStr, AfterValidator(_token)]
    max_body_bytes: StrictInt = Field(default=1 << 20, ge=1024, le=64 << 20)
    calendars: dict[Name, CalendarConfig] = Field(min_length=1)
    policies: dict[Name, Policy] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _calendar_names(cls, data: Any, info: ValidationInfo) -> Any:
        # Policies name calendars; the names are shared through the validation context so
        # that an unknown one is reported at the policy's own `calendar` key and line.
        calendars = data.get("calendars") if isinstance(data, dict) else None
        if isinstance(calendars, dict) and info.context is not None:
            info.context["support_calendars"] = [str(k) for k in calendars]
        return data

    @field_validator("calendars")
    @classmethod
    def _share_calendars(
        cls, calendars: dict[str, CalendarConfig], info: ValidationInfo
    ) -> dict[str, CalendarConfig]:
        # Validated before `policies` (field order): their working days size the targets.
        if info.context is not None:
            info.context["support_calendar_configs"] = calendars
        return calendars
