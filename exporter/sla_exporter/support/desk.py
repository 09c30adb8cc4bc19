"""The support desk: policies matched to tickets, clocks measured against targets, month tallies.

`SupportDesk` owns the ticket store and an in-memory view derived from it: for each ticket the
contributions of its finished clocks (fixed once a clock stops) and, while it is open, its
timeline, whose running clocks are measured at scrape time. A reload re-derives the whole view
from the database, so a changed policy applies to every ticket and no ticket is lost.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from ..config import Config
from ..ledger import month_key
from .business_time import WALL_CLOCK, Calendar, WallClock
from .config import TARGETS, Policy, SupportConfig
from .events import Event, TicketEvent
from .replay import ClockRun, Timeline, replay
from .store import Ingested, TicketDB, TicketStore

log = logging.getLogger(__name__)

# Histogram buckets in clock seconds: 15 min up to 10 working days of 8 h. Support targets are
# hours to days, and a bucket at each common target (1, 2, 4, 8 h; 1, 2, 5 days of 8 or 9 h)
# lets histogram_quantile() and "share within target" be read without interpolation.
BUCKETS = (
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    32400.0,
    57600.0,
    64800.0,
    115200.0,
    144000.0,
    162000.0,
    230400.0,
    288000.0,
)
HISTOGRAM_TARGETS = ("first_response", "resolution")
STATES = ("within_target", "warning", "breached", "paused")
KEEP_MONTHS = 13


class SupportUnavailable(RuntimeError):
    """The ticket database cannot be opened or read."""


# --------------------------------------------------------------------------------------------
# Policies


@dataclass(frozen=True)
class TargetRule:
    """One target of a policy, resolved to clock seconds on its clock."""

    name: str
    seconds: float
    clock: Calendar | WallClock
    clock_kind: str  # business or calendar
    warn_before: float


@dataclass(frozen=True)
class Rule:
    """A policy ready to measure clocks."""

    name: str
    policy: Policy
    calendar: Calendar
    objective: float
    targets: dict[str, TargetRule]


class Policies:
    """The policies of a support config in their order; the first that matches a ticket wins."""

    def __init__(self, support: SupportConfig, default_objective: float) -> None:
        self.calendars = {name: c.build(name) for name, c in support.calendars.items()}
        self.rules: list[Rule] = []
        for name, policy in support.policies.items():
            calendar = self.calendars[policy.calendar]
            targets = {}
            for target_name, target in policy.targets.items():
                seconds = target.within.resolve(calendar)
                # Without warn_before, a quarter of the target: 1 h of a 4 h response time.
                warn = policy.warn_before if policy.warn_before is not None else seconds / 4
                targets[target_name] = TargetRule(
                    target_name,
                    seconds,
                    calendar if target.clock == "business" else WALL_CLOCK,
                    target.clock,
                    warn,
                )
            objective = policy.objective if policy.objective is not None else default_objective
            self.rules.append(Rule(name, policy, calendar, objective, targets))
        self._cache: dict[tuple[tuple[str, str], ...], Rule | None] = {}

    def match(self, attributes: tuple[tuple[str, str], ...]) -> Rule | None:
        """The first policy whose `match` accepts these ticket attributes."""
        if attributes not in self._cache:
            values = dict(attributes)
            self._cache[attributes] = next(
                (r for r in self.rules if r.policy.match.matches(values)), None
            )
        return self._cache[attributes]


# --------------------------------------------------------------------------------------------
# Measuring one clock


@dataclass(frozen=True, slots=True)
class Measure:
    """A clock against its target at some instant."""

    policy: str
    target: str
    elapsed: float  # clock seconds used, up to the stop or to now
    limit: float
    reached_at: float | None  # when the clock used up its target (None: not yet, or paused)
    breached: bool  # the clock ran on after reaching its target
    stopped_at: float | None

    @property
    def left(self) -> float:
        return self.limit - self.elapsed


def measure(run: ClockRun, rule: Rule, now: float) -> Measure | None:
    """Measure `run` against `rule`'s target of its kind; None when the policy has no such target.

    A clock is breached when it was running at some instant after it used up its target, so a
    reply at exactly the deadline meets it, and a ticket left unanswered past a 17:00 deadline
    is breached at 17:00 even though no business time passes overnight.
    """
    target = rule.targets.get(run.kind)
    if target is None:
        return None
    clock = target.clock
    used = 0.0
    reached: float | None = None
    breached = False
    for start, end in run.spans:
        until = now if end is None else end
        if reached is None:
            if end is None:
                # Running: the instant the target will be used up, past or future.
                reached = clock.add_ts(start, target.seconds - used)
            else:
                part = clock.between_ts(start, end)
                if used + part >= target.seconds:
                    reached = clock.add_ts(start, target.seconds - used)
        if reached is not None and until > max(start, reached):
            breached = True
        used += clock.between_ts(start, max(start, until))
    return Measure(rule.name, run.kind, used, target.seconds, reached, breached, run.stopped_at)


# --------------------------------------------------------------------------------------------
# Tallies


@dataclass
class Histogram:
    """Cumulative-on-output bucket counts that can also take an observation back."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def add(self, value: float, sign: int = 1) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += sign
        self.total += sign * value
        self.count += sign

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else f"{bound:g}", float(running)))
        return out


@dataclass(frozen=True, slots=True)
class Finished:
    """What a stopped clock adds to the tallies, fixed once it stopped."""

    policy: str
    target: str
    month: str
    breached: bool
    elapsed: float


@dataclass
class Tallies:
    """Finished clocks of every ticket, summed."""

    measured: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # policy,target,month
    breached: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    breaches: Counter[tuple[str, str]] = field(default_factory=Counter)
    histograms: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # target,policy

    def add(self, items: Iterable[Finished], sign: int = 1) -> None:
        for f in items:
            self.measured[(f.policy, f.target, f.month)] += sign
            if f.breached:
                self.breached[(f.policy, f.target, f.month)] += sign
                self.breaches[(f.policy, f.target)] += sign
            if f.target in HISTOGRAM_TARGETS:
                self.histograms.setdefault((f.target, f.policy), Histogram()).add(f.elapsed, sign)


@dataclass(slots=True)
class Ticket:
    """A ticket as the desk keeps it: its finished clocks, and its timeline while it is open."""

    finished: tuple[Finished, ...]
    timeline: Timeline | None  # None once no clock runs or waits any more
    complete: bool  # has a created event


def _rule_for(run: ClockRun, line: Timeline, policies: Policies) -> Rule | None:
    stage = line.current if run.stage < 0 else line.stages[run.stage]
    return policies.match(stage.attributes)


def derive(
    ticket: str, events: Sequence[Event], policies: Policies, zone: ZoneInfo, now: float
) -> Ticket:
    """Replay a ticket and fix the contributions of its stopped clocks."""
    line = replay(ticket, events)
    if line.created is None:
        return Ticket((), line, False)
    finished = []
    live = False
    for run in line.clocks:
        if run.stopped_at is None:
            live = True
            continue
        rule = _rule_for(run, line, policies)
        m = measure(run, rule, now) if rule is not None else None
        if m is None:
            continue
        when = m.reached_at if m.breached and m.reached_at is not None else run.stopped_at
        finished.append(Finished(m.policy, m.target, month_key(when, zone), m.breached, m.elapsed))
    return Ticket(tuple(finished), line if live else None, True)


# --------------------------------------------------------------------------------------------
# What a scrape sees


@dataclass
class Snapshot:
    """Everything the collector renders, measured at one instant."""

    now: float
    policies: Policies
    zone: ZoneInfo
    open: Counter[tuple[str, str]] = field(default_factory=Counter)  # policy, state
    unmatched: int = 0
    incomplete: int = 0
    next_deadline: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    measured: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    breached: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    breaches: Counter[tuple[str, str]] = field(default_factory=Counter)
    histograms: dict[tuple[str, str], Histogram] = field(default_factory=dict)


class SupportDesk:
    """The ticket store, the policies, and the derived view the metrics are read from."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.config: SupportConfig | None = None
        self.policies: Policies | None = None
        self.store: TicketStore | None = None
        self.zone = ZoneInfo("UTC")
        self.tickets: dict[str, Ticket] = {}
        self.tallies = Tallies()
        self.events_stored = 0
        self.outcomes: Counter[str] = Counter()  # events stored / duplicate since start
        self.rejected: Counter[str] = Counter()  # requests refused, by HTTP status
        self.last_event_time: float | None = None
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.config is not None and self.store is not None

    async def apply(self, config: Config) -> None:
        """Follow a (re)loaded config: open the database it names, re-derive every ticket.

        Raises SupportUnavailable when the database cannot be opened or read; the running
        support config (if any) then stays in force.
        """
        async with self._lock:
            support = config.support
            if support is None:
                await self._close_store()
                self.config, self.policies = None, None
                self.tickets, self.tallies = {}, Tallies()
                return
            policies = Policies(support, config.sla.objective)
            zone = ZoneInfo(config.sla.timezone)
            store = self.store
            fresh = store is None or str(store.path) != support.database
            try:
                if fresh:
                    store = TicketStore(support.database)
                    await store.open()
                assert store is not None
                now = self.clock()
                tickets, count = await store.run(lambda db: _derive_all(db, policies, zone, now))
            except (sqlite3.Error, OSError) as err:
                if fresh and store is not None:
                    await store.close()
                raise SupportUnavailable(
                    f"cannot use the ticket database {support.database}: {err}"
                ) from err
            if fresh:
                await self._close_store()
            tallies = Tallies()
            for ticket in tickets.values():
                tallies.add(ticket.finished)
            self.store, self.config, self.policies, self.zone = store, support, policies, zone
            self.tickets, self.tallies, self.events_stored = tickets, tallies, count
            log.info(
                "support: %d tickets from %d events in %s", len(tickets), count, support.database
            )

    async def _close_store(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def close(self) -> None:
        async with self._lock:
            await self._close_store()

    async def ingest(self, events: Sequence[TicketEvent]) -> Ingested:
        """Store events durably (committed before this returns), then update the view."""
        async with self._lock:
            if self.store is None or self.policies is None:
                raise SupportUnavailable("support is not configured")
            result = await self.store.ingest(events)
            now = self.clock()
            for ticket, ticket_events in result.tickets.items():
                self._replace(ticket, derive(ticket, ticket_events, self.policies, self.zone, now))
            self.events_stored += result.stored
            self.outcomes["stored"] += result.stored
            self.outcomes["duplicate"] += result.duplicates
            if result.stored:
                self.last_event_time = now
            return result

    def _replace(self, name: str, ticket: Ticket) -> None:
        old = self.tickets.get(name)
        if old is not None:
            self.tallies.add(old.finished, -1)
        self.tallies.add(ticket.finished)
        self.tickets[name] = ticket

    def snapshot(self, now: float | None = None) -> Snapshot | None:
        """Measure every open ticket now; None when support is not configured."""
        policies = self.policies
        if policies is None:
            return None
        now = self.clock() if now is None else now
        snap = Snapshot(now, policies, self.zone)
        snap.measured.update(self.tallies.measured)
        snap.breached.update(self.tallies.breached)
        snap.breaches.update(self.tallies.breaches)
        snap.histograms = self.tallies.histograms
        for ticket in self.tickets.values():
            line = ticket.timeline
            if line is None:
                continue
            if not ticket.complete:
                snap.incomplete += 1
                continue
            current = policies.match(line.current.attributes)
            if current is None:
                snap.unmatched += 1
            worst = "paused" if line.status == "paused" else "within_target"
            for run in line.clocks:
                if run.stopped_at is not None:
                    continue
                rule = _rule_for(run, line, policies)
                m = measure(run, rule, now) if rule is not None else None
                if m is None:
                    continue
                if m.breached:
                    worst = "breached"
                    month = month_key(m.reached_at or now, self.zone)
                    snap.measured[(m.policy, m.target, month)] += 1
                    snap.breached[(m.policy, m.target, month)] += 1
                    snap.breaches[(m.policy, m.target)] += 1
                    continue
                if run.paused or m.reached_at is None:
                    continue
                assert rule is not None
                if worst == "within_target" and m.left <= rule.targets[m.target].warn_before:
                    worst = "warning"
                key = (m.policy, m.target)
                best = snap.next_deadline.get(key)
                if best is None or m.reached_at < best[1]:
                    snap.next_deadline[key] = (m.left, m.reached_at)
            if current is not None:
                snap.open[(current.name, worst)] += 1
        return snap


def misses(desk: SupportDesk, key: str, now: float | None = None) -> list[dict[str, str]]:
    """The clocks that breached their target in month `key`: ticket, policy and target, the
    report's list of misses. A clock counts in the month its deadline passed in, as in the
    month figures; one still running past it counts too."""
    policies = desk.policies
    if policies is None:
        return []
    now = desk.clock() if now is None else now
    out = []
    for name, ticket in sorted(desk.tickets.items()):
        for f in ticket.finished:
            if f.breached and f.month == key:
                out.append({"ticket": name, "policy": f.policy, "target": f.target})
        line = ticket.timeline
        if line is None or not ticket.complete:
            continue
        for run in line.clocks:
            if run.stopped_at is not None:
                continue
            rule = _rule_for(run, line, policies)
            m = measure(run, rule, now) if rule is not None else None
            if m is not None and m.breached and month_key(m.reached_at or now, desk.zone) == key:
                out.append({"ticket": name, "policy": m.policy, "target": m.target})
    return out


def _derive_all(
    db: TicketDB, policies: Policies, zone: ZoneInfo, now: float
) -> tuple[dict[str, Ticket], int]:
    tickets = {name: derive(name, events, policies, zone, now) for name, events in db.tickets()}
    return tickets, db.count()


def months(snapshot: Snapshot) -> list[str]:
    """The months to expose: the current one and those before it with figures, newest 13."""
    current = month_key(snapshot.now, snapshot.zone)
    keys = {current} | {m for (_, _, m) in snapshot.measured if m <= current}
    return sorted(keys)[-KEEP_MONTHS:]


__all__ = [
    "STATES",
    "TARGETS",
    "Policies",
    "Snapshot",
    "SupportDesk",
    "SupportUnavailable",
    "measure",
]
