"""The month accounting: every millisecond of a calendar month is exactly one state.

An SLA promises availability per calendar month in its own time zone, and Prometheus has no
calendar ranges. So the exporter keeps each service's month itself, as time rather than as probe
counts: a probe result stands for its slot, the span of the service's schedule grid it was run
for (`slot()`: the same grid in every location and across restarts), and every moment of the
month is one of

    up, down      covered by the slot of a successful or failed probe
    maintenance   inside a declared maintenance window (from the SLA file, not from probes)
    unknown       no result covers it and the unknown policy in force then counts it as down
    excluded      no result covers it and the unknown policy in force then leaves it out
    unmonitored   before the service's first slot: nobody had promised to watch it yet

Interval changes, restarts, double probes and gaps need no special case: the first result for a
moment wins, and a moment no result covers is unknown. The objective and the unknown policy are
recorded as they come into force (`Term`), so a finished month keeps the terms it ran under.
Times are whole milliseconds (durations in the SLA file are whole milliseconds too), so sums are
exact. docs/RULES.md has the worked examples.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import re
import tempfile
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Literal, get_args
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from . import pausing

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
State = Literal["up", "down", "unknown", "excluded", "maintenance", "unmonitored"]
STATES: tuple[State, ...] = get_args(State)
Policy = Literal["down", "excluded"]


@functools.cache
def allowance(objective: float) -> Fraction:
    """1 - objective, exactly as written (0.99 is 1/100, not 0.010000000000000009)."""
    return 1 - Fraction(str(objective))


def month_key(timestamp: float, zone: ZoneInfo) -> str:
    """The calendar month ("2026-11") that a unix time falls in, in `zone`."""
    return datetime.fromtimestamp(timestamp, zone).strftime("%Y-%m")


def month_bounds(key: str, zone: ZoneInfo) -> tuple[float, float]:
    """Unix times of the first and of one past the last second of month `key` in `zone`."""
    year, month = (int(part) for part in key.split("-"))
    start = datetime(year, month, 1, tzinfo=zone)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)
    return start.timestamp(), end.timestamp()


def next_month(key: str) -> str:
    year, month = (int(part) for part in key.split("-"))
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds."""
    return round(seconds * 1000)


@functools.lru_cache(maxsize=1 << 16)  # one per service and interval: md5 once, not per slot
def phase(service: str, interval: int) -> int:
    """Where in each interval (ms) the slots of `service` begin: a hash of its name.

    The same in every location and after every restart, so each location probes the same slots
    and a restarted exporter resumes the grid it left; spread over the interval like
    Prometheus' scrape offsets, so that services do not all start together.
    """
    digest = hashlib.md5(service.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") % interval


def slot(service: str, interval: int, at: int) -> int:
    """Start (ms) of the slot of `service` at `interval` (ms) that contains `at` (ms)."""
    return at - (at - phase(service, interval)) % interval


# --------------------------------------------------------------------------------------------
# Spans: sorted, disjoint [start, end) lists


def _clip(spans: Iterable[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    return [(max(a, lo), min(b, hi)) for a, b in spans if a < hi and b > lo]


def _union(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _length(spans: Iterable[tuple[int, int]]) -> int:
    return sum(b - a for a, b in spans)


def _minus(spans: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`spans` without `holes` (both sorted and disjoint)."""
    out: list[tuple[int, int]] = []
    j = 0
    for a, b in spans:
        while j < len(holes) and holes[j][1] <= a:
            j += 1
        k = j
        while a < b and k < len(holes) and holes[k][0] < b:
            if holes[k][0] > a:
                out.append((a, holes[k][0]))
            a = max(a, holes[k][1])
            k += 1
        if a < b:
            out.append((a, b))
    return out


# --------------------------------------------------------------------------------------------
# One service's month


_REASONS: dict[frozenset[str], frozenset[str]] = {}


def reasons_of(reasons: Iterable[str]) -> frozenset[str]:
    """The reasons of a run, one object for each set of them (there are few: a year of
    10,000 services' months holds hundreds of thousands of runs)."""
    key = frozenset(reasons)
    return _REASONS.setdefault(key, key)


@dataclass(slots=True)  # a year of 10,000 services' months holds hundreds of thousands
class Run:
    """Consecutive time covered by results of one state: up, or down with the reasons seen."""

    start: int
    end: int
    up: bool
    reasons: frozenset[str] = frozenset()  # up runs share the one empty frozenset


@dataclass(frozen=True)
class Term:
    """The objective and unknown policy in force from `start` (ms) on."""

    start: int
    objective: float
    unknown: Policy


@dataclass(slots=True)
class Month:
    """One service's calendar month: what results covered, maintenance, terms, recovered part."""

    runs: list[Run] = field(default_factory=list)
    maintenance: list[tuple[int, int]] = field(default_factory=list)  # declared, committed
    terms: list[Term] = field(default_factory=list)
    # Totals carried in for [month start, carried_until), where no runs exist (kept in the file
    # format for recovering a month from the series Prometheus holds).
    carried: dict[str, int] = field(default_factory=dict)
    carried_until: int = 0
    version: int = 0  # bumped on every change, for the figures the ledger keeps (`_figures`)

    def fill(self, start: int, end: int, up: bool, reason: str | None) -> int:
        """Cover the part of [start, end) no result covers yet; return the milliseconds added."""
        return self._fill(start, end, up, reasons_of((reason,) if reason else ()))

    def _fill(self, start: int, end: int, up: bool, reasons: frozenset[str]) -> int:
        start = max(start, self.carried_until)
        if start >= end:
            return 0
        runs = self.runs
        if runs and runs[-1].end > start:  # overlapping what is there: fill only its gaps
            spans = [(r.start, r.end) for r in runs if r.end > start and r.start < end]
            gaps = _minus([(start, end)], spans)
        else:  # the usual case: the newest slot, after everything else
            gaps = [(start, end)]
        for a, b in gaps:
            self._put(a, b, up, reasons)
        return _length(gaps)

    def join(self, start: int, end: int, up: bool, reason: str | None) -> int:
        """Like `fill()`, but an up result also turns down time up: the result of several
        replicas of one location (replicas.py), where a moment is up if any of them saw it up,
        down if those that probed it all saw it down, and unknown if none did. Return the
        milliseconds that changed."""
        if not up or not self.runs or self.runs[-1].end <= start:
            return self.fill(start, end, up, reason)  # nothing to overturn
        return self.merge([(start, end, True, ())])

    def merge(self, others: Iterable[tuple[int, int, bool, Iterable[str]]]) -> int:
        """Join another replica's runs (start, end, up, reasons) into this month, moment by
        moment: up over down over unknown, the reasons of every down run kept. The outcome does
        not depend on who merges whom first, nor on merging the same runs twice, so replicas
        that read each other end with the same month. Return the milliseconds that changed."""
        floor = self.carried_until
        theirs = [
            (max(a, floor), b, up, frozenset(reasons))
            for a, b, up, reasons in others
            if b > max(a, floor)
        ]
        if not theirs:
            return 0
        ours = [(r.start, r.end, r.up, frozenset(r.reasons)) for r in self.runs]
        points = sorted({t for a, b, _, _ in (*ours, *theirs) for t in (a, b)})
        merged: list[Run] = []
        changed = 0
        i = j = 0
        for a, b in itertools.pairwise(points):
            while i < len(ours) and ours[i][1] <= a:
                i += 1
            while j < len(theirs) and theirs[j][1] <= a:
                j += 1
            mine = ours[i] if i < len(ours) and ours[i][0] <= a else None
            other = theirs[j] if j < len(theirs) and theirs[j][0] <= a else None
            covering = [run for run in (mine, other) if run is not None]
            if not covering:
                continue
            up = any(run[2] for run in covering)
            reasons = reasons_of(() if up else (r for run in covering for r in run[3]))
            if mine is None or mine[2] != up:
                changed += b - a
            if merged and merged[-1].end == a and merged[-1].up == up:
                merged[-1].end = b
                merged[-1].reasons = reasons_of(merged[-1].reasons | reasons)
            else:
                merged.append(Run(a, b, up, reasons))
        if changed or [(r.start, r.end, r.reasons) for r in merged] != [
            (r.start, r.end, r.reasons) for r in self.runs
        ]:
            self.runs = merged
            self.version += 1
        return changed

    def _put(self, start: int, end: int, up: bool, reasons: frozenset[str]) -> None:
        """Insert [start, end) (covered by no run) in order, merged with equal neighbours."""
        runs = self.runs
        self.version += 1
        run = Run(start, end, up, reasons)
        i = len(runs)
        if i and runs[-1].start > start:
            i = bisect_right([r.start for r in runs], start)
        runs.insert(i, run)
        if i + 1 < len(runs) and runs[i + 1].start == end and runs[i + 1].up == up:
            run.end = runs[i + 1].end
            run.reasons = reasons_of(run.reasons | runs[i + 1].reasons)
            del runs[i + 1]
        if i > 0 and runs[i - 1].end == start and runs[i - 1].up == up:
            runs[i - 1].end = run.end
            runs[i - 1].reasons = reasons_of(runs[i - 1].reasons | run.reasons)
            del runs[i]


@dataclass(frozen=True)
class Span:
    """A stretch of a month in one state (`recovered`: totals from Prometheus, no detail)."""

    start: int
    end: int
    state: str
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)  # one kept per service and month shown (`_figures`)
class Figures:
    """A service's month as the SLA counts it, in milliseconds, at some moment."""

    seconds: dict[str, int]  # STATES -> ms (unknown/excluded by the policy in force then)
    budget: int  # ms of failure the whole month allows: floor(sum (1 - objective) x counted)
    objective: float  # the month's objective, weighted by the time each one was in force
    end: int  # accounted up to here (ms): the month's end once it is over

    @property
    def failed(self) -> int:
        return self.seconds["down"] + self.seconds["unknown"]

    @property
    def counted(self) -> int:
        return self.seconds["up"] + self.failed


@dataclass(frozen=True)
class MonthDocument:
    """One service's month as a replica sends it (`GET /api/v1/months`, replicas.py)."""

    runs: list[tuple[int, int, bool, tuple[str, ...]]]
    maintenance: list[tuple[int, int]] = field(default_factory=list)
    terms: list[Term] = field(default_factory=list)
    carried: dict[str, int] = field(default_factory=dict)
    carried_until: int = 0


@dataclass
class ServiceBook:
    """Everything the ledger keeps for one service."""

    since: int | None = None  # start of its first slot ever: monitored from then on
    committed: int | None = None  # maintenance and terms recorded up to here (ms)
    months: dict[str, Month] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The file: validated on load


class _Model(BaseModel):
    # Lax, so that JSON arrays read as tuples; every leaf is strict all the same.
    model_config = ConfigDict(extra="forbid")


_KEY = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class _MonthFile(_Model):
    runs: list[tuple[StrictInt, StrictInt, StrictBool, list[StrictStr]]] = []
    maintenance: list[tuple[StrictInt, StrictInt]] = []
    terms: list[tuple[StrictInt, StrictFloat, Policy]] = []
    carried: dict[State, StrictInt] = {}
    carried_until: StrictInt = 0


class _ServiceFile(_Model):
    since: StrictInt | None = None
    committed: StrictInt | None = None
    months: dict[str, _MonthFile] = {}

    @field_validator("months")
    @classmethod
    def _keys(cls, months: dict[str, _MonthFile]) -> dict[str, _MonthFile]:
        for key in months:
            if not _KEY.match(key):
                raise ValueError(f"month {key!r} is not a month like 2026-11")
        return months


class _LedgerFile(_Model):
    version: StrictInt
    timezone: StrictStr
    horizon: StrictInt = Field(ge=0)
    services: dict[str, _ServiceFile]


class LedgerInvalid(RuntimeError):
    """The ledger file cannot be used; the message names the file and what is wrong."""


def _check_month(where: str, key: str, month: _MonthFile, zone: ZoneInfo) -> None:
    start, end = (ms(t) for t in month_bounds(key, zone))
    last = start
    for i, (a, b, _, _) in enumerate(month.runs):
        if not start <= a < b <= end or a < last:
            raise ValueError(
                f"{where}.runs[{i}]: [{a}, {b}) is not inside the month after the run before it"
            )
        last = b
    for i, (a, b) in enumerate(month.maintenance):
        if not start <= a < b <= end:
            raise ValueError(f"{where}.maintenance[{i}]: [{a}, {b}) is not inside the month")
    for state, value in month.carried.items():
        if value < 0:
            raise ValueError(f"{where}.carried.{state}: negative ({value})")
    if month.carried and not start <= month.carried_until <= end:
        raise ValueError(f"{where}.carried_until: {month.carried_until} is not inside the month")
    for i, (_, objective, _) in enumerate(month.terms):
        if not 0 < objective < 1:
            raise ValueError(f"{where}.terms[{i}]: objective {objective} is not a ratio")


# --------------------------------------------------------------------------------------------
# The ledger


class Ledger:
    """Every service's months; `flush()` writes them atomically to `path`."""

    def __init__(self, path: Path | None, timezone: str, keep_months: int = 13) -> None:
        self.path = path
        self.zone = ZoneInfo(timezone)
        self.keep_months = keep_months
        self.books: dict[str, ServiceBook] = {}
        self.horizon = 0  # the latest time accounted (ms): the accounting clock never goes back
        self.clock_steps_back = 0  # results refused because the clock went back
        # Replicas of one location merge their months (replicas.py): an up result then turns
        # down time up, whoever recorded what first (Month.join), so that they all converge.
        self.join = False
        self._refusal_logged = -60_000  # when (accounting clock) a refusal was last logged
        self._dirty = False
        self._bounds: dict[str, tuple[int, int]] = {}
        self._last_key = ("", 0, 0)
        # The figures last counted of each service's month, with what they were counted from
        # (`figures()`): a scrape every 15 s asks again for months most of which have not
        # changed since the last one.
        self._figures: dict[tuple[str, str], tuple[Month | None, tuple[object, ...], Figures]] = {}
        self._shown: dict[tuple[str, str, int], tuple[str, ...]] = {}  # months(), made once
        if path is not None and path.exists():
            self._read(path)

    # -- reading and writing ----------------------------------------------------------------

    def _read(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise LedgerInvalid(f"cannot read the month ledger {path}: {err}") from err
        try:
            data = json.loads(text)
        except ValueError as err:
            raise LedgerInvalid(f"{path}: not JSON ({err}); {_ADVICE}") from err
        if isinstance(data, dict) and data.get("version") == 1:
            raise LedgerInvalid(
                f"{path}: written by an older sla-exporter (format 1, probe counts); this "
                f"version counts time. {_ADVICE}"
            )
        try:
            parsed = _LedgerFile.model_validate(data)
            if parsed.version != FORMAT_VERSION:
                raise ValueError(f"unknown format version {parsed.version}")
            zone = ZoneInfo(parsed.timezone)
            for name, entry in parsed.services.items():
                for key, month in entry.months.items():
                    _check_month(f"services.{name}.months.{key}", key, month, zone)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise LedgerInvalid(
                f"{path}: {where}: {first['msg']} ({err.error_count()} error(s)); {_ADVICE}"
            ) from err
        except (ValueError, KeyError) as err:  # ZoneInfoNotFoundError is a KeyError
            raise LedgerInvalid(f"{path}: {err}; {_ADVICE}") from err
        self.horizon = parsed.horizon
        for name, entry in parsed.services.items():
            book = self.books[name] = ServiceBook(entry.since, entry.committed)
            for key, m in entry.months.items():
                book.months[key] = Month(
                    runs=[Run(a, b, up, reasons_of(reasons)) for a, b, up, reasons in m.runs],
                    maintenance=[(a, b) for a, b in m.maintenance],
                    terms=[Term(a, objective, unknown) for a, objective, unknown in m.terms],
                    carried={str(state): value for state, value in m.carried.items()},
                    carried_until=m.carried_until,
                )

    def dumping(self, batch: int = 500) -> pausing.Steps[bytes | None]:
        """The ledger as file content if it changed since the last call, else None; yields
        every `batch` services so that the event loop (where the ledger changes, and where this
        runs so that a writer thread never sees it half-changed) can go on in between."""
        if self.path is None or not self._dirty:
            return None
        self._dirty = False  # changes from now on are in the next snapshot (maybe in this one)
        head = {"version": FORMAT_VERSION, "timezone": self.zone.key, "horizon": self.horizon}
        parts = [json.dumps(head, separators=(",", ":"))[:-1], ',"services":{']
        comma = ""
        for chunk in pausing.batched(list(self.books.items()), batch):
            for name, book in chunk:
                months = {
                    key: {
                        "runs": [[r.start, r.end, r.up, sorted(r.reasons)] for r in m.runs],
                        "maintenance": [list(span) for span in m.maintenance],
                        "terms": [[t.start, t.objective, t.unknown] for t in m.terms],
                        "carried": m.carried,
                        "carried_until": m.carried_until,
                    }
                    for key, m in book.months.items()
                }
                entry = {"since": book.since, "committed": book.committed, "months": months}
                entry_text = json.dumps(entry, separators=(",", ":"))
                parts.append(f"{comma}{json.dumps(name)}:{entry_text}")
                comma = ","
            yield
        parts.append("}}")
        return "".join(parts).encode()

    def snapshot(self) -> bytes | None:
        """`dumping()` run to its end at once."""
        return pausing.finish(self.dumping())

    def write(self, content: bytes, path: Path | None = None) -> None:
        """Replace the file atomically: write a temporary file, fsync it, rename it over."""
        path = path or self.path
        assert path is not None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ledger-")
        except OSError:
            self._dirty = True
            raise
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            self._dirty = True  # try again at the next flush
            Path(tmp).unlink(missing_ok=True)
            raise

    def flush(self) -> None:
        """Write the ledger now if it changed."""
        content = self.snapshot()
        if content is not None:
            self.write(content)

    def mark_dirty(self) -> None:
        self._dirty = True

    # -- time -------------------------------------------------------------------------------

    def set_timezone(self, timezone: str) -> None:
        if timezone != self.zone.key:
            log.warning(
                "the SLA's time zone changed from %s to %s: months are counted in the new zone "
                "from now on, finished months keep their figures as far as their runs allow",
                self.zone.key,
                timezone,
            )
        self.zone = ZoneInfo(timezone)
        self._bounds.clear()
        self._figures.clear()
        self._last_key = ("", 0, 0)

    def bounds(self, key: str) -> tuple[int, int]:
        bounds = self._bounds.get(key)
        if bounds is None:
            start, end = month_bounds(key, self.zone)
            bounds = self._bounds[key] = (ms(start), ms(end))
        return bounds

    def key(self, at: int) -> str:
        """The month (ms) `at` falls in; the month asked last is remembered (most calls are for
        the running month, and a date computation costs more than the rest of a figure)."""
        key, start, end = self._last_key
        if not start <= at < end:
            key = month_key(at / 1000, self.zone)
            start, end = self.bounds(key)
            self._last_key = (key, start, end)
        return key

    def now(self, clock: float) -> int:
        """The accounting time: the clock, but never before a time already accounted."""
        return max(ms(clock), self.horizon)

    def _spans(self, start: int, end: int) -> Iterator[tuple[str, int, int]]:
        """[start, end) cut at month boundaries: (month key, start, end) pieces."""
        key = self.key(start)
        while start < end:
            month_end = self.bounds(key)[1]
            piece_end = min(end, month_end)
            yield key, start, piece_end
            start, key = piece_end, next_month(key)

    def _month(self, book: ServiceBook, key: str, term: Term | None) -> Month:
        month = book.months.get(key)
        if month is None:
            month = book.months[key] = Month()
            if term is not None:
                month.terms.append(Term(self.bounds(key)[0], term.objective, term.unknown))
        return month

    def _last_term(self, book: ServiceBook) -> Term | None:
        for key in sorted(book.months, reverse=True):
            if book.months[key].terms:
                return book.months[key].terms[-1]
        return None

    # -- what happens -------------------------------------------------------------------------

    def advance(
        self,
        clock: float,
        service: str,
        objective: float,
        unknown: Policy,
        maintenance: Iterable[tuple[float, float]],
    ) -> None:
        """Record the terms and declared maintenance of `service` up to `clock`.

        Called with the settings in force (before a reload applies new ones, and periodically),
        so that past time keeps the settings it had; new settings take effect from the end of
        what was recorded. Time the exporter was not running is given the settings of the first
        call after it, from the SLA file then in force: maintenance is announced in advance, so
        a window declared in the file covers the time the exporter was stopped as well.
        """
        book = self.books.setdefault(service, ServiceBook())
        now = self.now(clock)
        self.horizon = now
        if book.committed is None:  # first seen: from its month's start (before `since`, the
            book.committed = self.bounds(self.key(now))[0]  # time is unmonitored anyway)
        begin = min(book.committed, now)
        last = self._last_term(book)
        changed = last is None or (last.objective, last.unknown) != (objective, unknown)
        if begin >= now and not changed:
            return
        term = Term(begin, objective, unknown)
        windows = _union((ms(a), ms(b)) for a, b in maintenance)
        pieces = list(self._spans(begin, now)) or [(self.key(begin), begin, begin)]
        for key, a, b in pieces:
            month = self._month(book, key, term if changed else last)
            if changed and a == begin:
                if month.terms and month.terms[-1].start >= begin:
                    month.terms[-1] = term
                elif not month.terms or (month.terms[-1].objective, month.terms[-1].unknown) != (
                    objective,
                    unknown,
                ):
                    month.terms.append(term)
                month.version += 1
            new = _clip(windows, a, b)
            if new:
                month.maintenance = _union([*month.maintenance, *new])
                month.version += 1
        book.committed = max(book.committed, now)
        self._dirty = True

    def record(
        self,
        service: str,
        start: float,
        interval: float,
        up: bool,
        reason: str | None = None,
        known: bool = True,
    ) -> int:
        """Let one result stand for its slot [start, start + interval); return the ms it newly
        covers. `known` False (the exporter's own fault) leaves the slot unknown, but monitoring
        has begun all the same. A result from a clock that went back is refused and counted."""
        book = self.books.setdefault(service, ServiceBook())
        a = ms(start)
        b = a + ms(interval)
        if b + (b - a) <= self.horizon:
            # No real result is that late: a run may wait up to an interval to start and take
            # less than an interval, so its slot starts within two intervals of now.
            self.clock_steps_back += 1
            # Once a minute of the accounting clock at most: a clock set back ten days would
            # otherwise log every result of every service until it catches up.
            if self.horizon - self._refusal_logged >= 60_000:
                self._refusal_logged = self.horizon
                log.warning(
                    "refused a result of %s for %s: the clock is behind the time already "
                    "accounted (%s); the month is not rewritten (%d results refused so far, "
                    "sla_exporter_ledger_refused_results_total)",
                    service,
                    datetime.fromtimestamp(start, self.zone).isoformat(),
                    datetime.fromtimestamp(self.horizon / 1000, self.zone).isoformat(),
                    self.clock_steps_back,
                )
            return 0
        book.since = a if book.since is None else min(book.since, a)
        self.horizon = max(self.horizon, a)  # time goes on at least to the latest slot's start
        self._dirty = True
        if not known:
            return 0
        added = 0
        last = self._last_term(book)
        for key, x, y in self._spans(a, b):
            month = self._month(book, key, last)
            if self.join:
                added += month.join(x, y, up, reason)
            else:
                added += month.fill(x, y, up, reason)
        return added

    def merge(self, service: str, since: int | None, months: dict[str, MonthDocument]) -> int:
        """Join another replica's months of `service` (replicas.py) into this ledger: its runs
        (Month.merge), its declared maintenance, and its terms and recovered totals for a month
        this ledger holds nothing of. Return the milliseconds that changed."""
        book = self.books.setdefault(service, ServiceBook())
        changed = 0
        touched = False
        if since is not None and (book.since is None or since < book.since):
            book.since, touched = since, True
        for key, theirs in months.items():
            if not _KEY.match(key):
                continue
            start, end = self.bounds(key)
            runs = [
                (max(a, start), min(b, end), up, reasons)
                for a, b, up, reasons in theirs.runs
                if max(a, start) < min(b, end)
            ]
            month = book.months.get(key)
            if month is None:
                if not runs and not theirs.carried:
                    continue
                month = book.months[key] = Month()
            version = month.version
            if not month.runs and not month.carried and theirs.carried:
                month.carried = dict(theirs.carried)
                month.carried_until = min(max(theirs.carried_until, start), end)
                month.version += 1
            if not month.terms and theirs.terms:
                month.terms = list(theirs.terms)
                month.version += 1
            maintenance = _union([*month.maintenance, *_clip(theirs.maintenance, start, end)])
            if maintenance != month.maintenance:
                month.maintenance = maintenance
                month.version += 1
            changed += month.merge(runs)
            touched = touched or month.version != version
        if touched:
            self._dirty = True
        return changed

    def failing(self, service: str, interval: float, clock: float) -> tuple[int, float] | None:
        """The run of failed slots `service` is in, if its last slot before `clock` failed: how
        many slots, and when the first began (unix time). For an exporter that starts again
        during an outage (its own ledger, or the months its replicas merged in): it goes on
        counting the failures in a row where it left them, instead of reporting none until its
        first probe, which would end the page and start another."""
        book = self.books.get(service)
        if book is None or not book.months:
            return None
        month = book.months[max(book.months)]
        if not month.runs or month.runs[-1].up:
            return None
        run, length = month.runs[-1], ms(interval)
        if run.end < slot(service, length, self.now(clock)):
            return None  # nobody knows how the last slot went: no run of failures to go on
        return -(-(run.end - run.start) // length), run.start / 1000

    def covered(self, service: str, start: float, end: float) -> bool:
        """Whether results already cover all of [start, end) (a restarted exporter does not
        probe a slot its predecessor probed)."""
        book = self.books.get(service)
        if book is None:
            return False
        a, b = ms(start), ms(end)
        for key, x, y in self._spans(a, b):
            month = book.months.get(key)
            if month is None:
                return False
            spans = _clip(((r.start, r.end) for r in month.runs), x, y)
            if _length(spans) < y - x:
                return False
        return True

    def recover(self, service: str, key: str, seconds: dict[str, int], objective: float) -> bool:
        """Take month `key` of `service` from totals (ms per state) that Prometheus holds, when
        they account for more of the month than this ledger does: they stand for the month from
        its start up to the time they add up to, and results after that count on from there.
        Return whether they were taken."""
        start, end = self.bounds(key)
        total = sum(seconds.get(state, 0) for state in STATES)
        until = min(end, start + total)
        book = self.books.setdefault(service, ServiceBook())
        if key in book.months and self.figures(service, key, until / 1000).end >= until:
            return False
        unmonitored = seconds.get("unmonitored", 0)
        policy: Policy = "excluded" if seconds.get("excluded") else "down"
        month = book.months[key] = Month(
            terms=[Term(start, objective, policy)],
            carried={state: seconds.get(state, 0) for state in STATES},
            carried_until=until,
        )
        month.version += 1
        if unmonitored < total:
            since = start + unmonitored
            book.since = since if book.since is None else min(book.since, since)
        book.committed = max(book.committed or 0, until)
        self.horizon = max(self.horizon, until)
        self._dirty = True
        return True

    def prune(self) -> None:
        """Drop months older than the kept window.

        Services that left the config keep their months (they are no longer exposed), so removing
        a service by mistake and adding it back does not erase its month.
        """
        for name, book in self.books.items():
            if len(book.months) <= self.keep_months:
                continue
            for key in sorted(book.months)[: -self.keep_months]:
                del book.months[key]
                self._figures.pop((name, key), None)
                self._dirty = True

    # -- figures ------------------------------------------------------------------------------

    def months(self, service: str, clock: float) -> tuple[str, ...]:
        """The months to show for `service`, oldest first: each kept month from the first one
        it was monitored in up to the current one, including months without any result."""
        now = self.now(clock)
        current = self.key(now)
        book = self.books.get(service)
        if book is None or book.since is None:
            first = min(book.months) if book is not None and book.months else current
        else:  # the earlier of its first slot's month and its first kept month
            first = min(book.months) if book.months else current
            if book.since < self.bounds(first)[0]:
                first = self.key(book.since)
        shown = (first, current, self.keep_months)
        keys = self._shown.get(shown)
        if keys is None:  # the same few lists for every service: made once
            months = [first]
            while months[-1] < current:
                months.append(next_month(months[-1]))
            keys = self._shown[shown] = tuple(months[-self.keep_months :])
        return keys

    def exposed(
        self,
        service: str,
        key: str,
        clock: float,
        interval: float,
        windows: Iterable[tuple[float, float]],
        objective: float,
        unknown: Policy,
        book: ServiceBook | None = None,
        spans: list[Span] | None = None,
    ) -> Figures:
        """`figures()` as /metrics, the pooled month and the report show them: counted up to
        the start of the service's current slot, by the ledger's clock (which never goes back),
        with the settings in force now."""
        pending = slot(service, ms(interval), self.now(clock))
        if book is None and spans is None:
            # A month over, as `figures()` keeps it: asked again at every scrape, unchanged.
            kept = self._figures.get((service, key))
            if kept is not None and len(kept[1]) == 4 and pending >= self.bounds(key)[1]:
                own = self.books.get(service)
                month = kept[0]
                if (
                    own is not None
                    and month is not None
                    and month is own.months.get(key)
                    and kept[1] == (month.version, own.since, objective, unknown)
                ):
                    return kept[2]
        # By position: called for every service and month at each scrape.
        return self.figures(
            service, key, clock, pending / 1000, windows, objective, unknown, book, spans
        )

    def figures(
        self,
        service: str,
        key: str,
        clock: float,
        pending_from: float | None = None,
        future_maintenance: Iterable[tuple[float, float]] = (),
        objective: float | None = None,
        unknown: Policy = "down",
        book: ServiceBook | None = None,
        spans: list[Span] | None = None,
    ) -> Figures:
        """Month `key` of `service` as it stands at `clock`.

        `pending_from`: start of the service's current slot; the month is counted up to there,
        so figures change once a slot and the slot whose probe is due or running is not
        unknown. `future_maintenance` (the declared windows, unix times), `objective` and
        `unknown`: the settings in force now, for time `advance()` has not recorded yet and for
        the part of the month still to come. `book`: count that book instead of the service's
        own (the month pooled across locations, pool.py). `spans`: a list to add the month's
        time to, span by span and in order, as the figures count it (the incidents of a report).
        """
        now = self.now(clock)
        start, end = self.bounds(key)
        own = book is None
        book = book or self.books.get(service) or ServiceBook()
        stored = book.months.get(key)
        month = stored if stored is not None else Month()
        upto = min(now, end)
        if pending_from is not None:  # the current slot is decided when it is over
            upto = max(start, min(upto, ms(pending_from)))
        # A month over, its last slot decided and everything up to its end recorded: its
        # figures depend on the month itself, when the service was first monitored and the
        # settings given (through a term that starts after the month's end, which changes no
        # time but whether the objective is weighted), and not on when they are asked or the
        # windows declared (all in the future): they are kept on just those (`exposed()`).
        over = (
            own
            and spans is None
            and stored is not None
            and stored.terms
            and upto == end
            and (book.committed or start) >= end
        )
        final = (stored.version, book.since, objective, unknown) if over and stored else ()
        # The terms recorded in the month; a month nothing was recorded in yet (the exporter was
        # down across it) runs on the terms in force before it.
        terms = list(month.terms) or [
            Term(start, last.objective, last.unknown)
            for last in [self._last_term(book) or Term(start, objective or 0.99, unknown)]
        ]
        # Time `advance()` has not recorded yet runs on the settings given, if they differ.
        uncommitted = max(start, book.committed or start)
        now_objective = terms[-1].objective if objective is None else objective
        if (terms[-1].objective, terms[-1].unknown) != (now_objective, unknown):
            terms.append(Term(uncommitted, now_objective, unknown))
        future = tuple((ms(a), ms(b)) for a, b in future_maintenance) if future_maintenance else ()
        future_uncommitted = tuple(_clip(future, uncommitted, end)) if future else ()
        # What follows reads nothing but these (the month through its version, which every
        # change to it bumps): the same inputs, the same figures, counted once. `committed`
        # moves every few seconds (`advance()`), but counts only through the terms and the
        # declared windows past it.
        inputs = (
            month.version,
            start,
            end,
            upto,
            book.since,
            tuple(terms),
            future,
            future_uncommitted,
        )
        if own and spans is None:
            cached = self._figures.get((service, key))
            if cached is not None and cached[0] is stored and cached[1] == inputs:
                return cached[2]
        seconds: dict[str, int] = dict.fromkeys(STATES, 0)
        counted_at: dict[float, int] = {}  # ms that count, by the objective in force then
        for state, value in month.carried.items():
            seconds[state] += value
        lo = max(start, month.carried_until)
        if month.carried_until > start:
            counted = month.carried["up"] + month.carried["down"] + month.carried["unknown"]
            counted_at[terms[0].objective] = counted
            if spans is not None:  # totals only: which moments were down is not known
                spans.append(Span(start, month.carried_until, "recovered"))
        since = book.since if book.since is not None else upto
        unmonitored_end = min(max(since, lo), upto)
        seconds["unmonitored"] += max(0, unmonitored_end - lo)
        if spans is not None and unmonitored_end > lo:
            spans.append(Span(lo, unmonitored_end, "unmonitored"))
        lo = max(lo, unmonitored_end)
        # Declared maintenance: as recorded, and as the SLA file says now for what `advance()`
        # has not recorded yet.
        declared = _union([*month.maintenance, *future_uncommitted])
        maintenance = _clip(declared, lo, upto)
        seconds["maintenance"] += _length(maintenance)
        if spans is not None:
            spans.extend(Span(a, b, "maintenance") for a, b in maintenance)
        covered: list[tuple[int, int]] = []
        for run in month.runs:
            if run.end <= lo or run.start >= upto:
                continue
            pieces = _minus([(max(run.start, lo), min(run.end, upto))], maintenance)
            seconds["up" if run.up else "down"] += _length(pieces)
            covered.extend(pieces)
            if spans is not None:
                state = "up" if run.up else "down"
                reasons = tuple(sorted(run.reasons))
                spans.extend(Span(a, b, state, reasons) for a, b in pieces)
        # What neither a result nor maintenance covers, before the pending slot, is unknown;
        # the policy in force at each moment says whether it counts as down.
        holes = _minus(_minus([(lo, upto)], maintenance), _union(covered))
        for i, term in enumerate(terms):
            term_end = terms[i + 1].start if i + 1 < len(terms) else end
            term_lo = max(term.start, lo) if i else lo
            pieces = _clip(holes, term_lo, term_end)
            part = _length(pieces)
            state = "unknown" if term.unknown == "down" else "excluded"
            seconds[state] += part
            if spans is not None:
                spans.extend(Span(a, b, state) for a, b in pieces)
            counted = _length(_clip(covered, term_lo, term_end))
            counted += part if term.unknown == "down" else 0
            counted_at[term.objective] = counted_at.get(term.objective, 0) + counted
        # Time still to come (the current slot included) counts toward the budget at today's
        # terms, but for declared maintenance.
        declared = _union([*month.maintenance, *future])
        rest = _length(_minus([(upto, end)], declared))
        last = terms[-1].objective
        counted_at[last] = counted_at.get(last, 0) + rest
        budget = sum(allowance(objective) * ms_ for objective, ms_ in counted_at.items())
        countable = seconds["up"] + seconds["down"] + seconds["unknown"] + rest
        if len(counted_at) == 1:  # one objective all month: no division needed
            [weighted] = counted_at
        else:
            weighted = float(1 - budget / countable) if countable else terms[-1].objective
        accounted = sum(seconds.values())
        figures = Figures(seconds, int(budget), weighted, start + accounted)
        if own and spans is None:
            self._figures[(service, key)] = (stored, final or inputs, figures)
        if spans is not None:
            spans.sort(key=lambda span: span.start)
        return figures


_ADVICE = (
    "the exporter does not start over on its own, which would erase the months it holds: "
    "restore a good copy of the file, or move it aside and start with "
    "--storage.recover-from=<Prometheus URL> to resume the months from the series Prometheus "
    "holds (docs/OPERATIONS.md)"
)
