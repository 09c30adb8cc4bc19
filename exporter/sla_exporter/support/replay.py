"""Replay: a ticket's events, in event-time order, into the clocks measured against targets."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from .events import Event

# --------------------------------------------------------------------------------------------
# Replay: events -> clocks


@dataclass(slots=True)
class ClockRun:
    """One clock of a ticket: the spans it ran, and when it stopped for good."""

    kind: str  # first_response, next_reply or resolution
    stage: int  # the stage it belongs to; the resolution clock follows the current stage
    spans: list[tuple[float, float | None]] = field(default_factory=list)
    stopped_at: float | None = None

    @property
    def running(self) -> bool:
        return self.stopped_at is None and bool(self.spans) and self.spans[-1][1] is None

    @property
    def paused(self) -> bool:
        return self.stopped_at is None and not self.running

    def pause(self, t: float) -> None:
        if self.running:
            self.spans[-1] = (self.spans[-1][0], t)

    def resume(self, t: float) -> None:
        if self.stopped_at is None and not self.running:
            self.spans.append((t, None))

    def stop(self, t: float) -> None:
        if self.stopped_at is None:
            self.pause(t)
            self.stopped_at = t


@dataclass(frozen=True, slots=True)
class Stage:
    """A period of a ticket with one set of attributes: from creation or an escalation on."""

    start: float
    attributes: tuple[tuple[str, str], ...]

    def get(self) -> dict[str, str]:
        return dict(self.attributes)


Status = Literal["open", "paused", "resolved"]


@dataclass
class Timeline:
    """A ticket as its events describe it; None as `created` means no created event yet."""

    ticket: str
    created: float | None = None
    stages: list[Stage] = field(default_factory=list)
    clocks: list[ClockRun] = field(default_factory=list)
    status: Status = "open"
    events: int = 0
    ignored: int = 0  # events before the created event, or that do not apply in their state

    @property
    def current(self) -> Stage:
        return self.stages[-1]


def replay(ticket: str, events: Iterable[Event]) -> Timeline:
    """Derive a ticket's clocks from its events, applied in event-time order.

    - `created` starts the first stage: its first-response clock and the resolution clock.
    - `escalated` starts a stage with the new attributes and a first-response clock of its own;
      the resolution clock continues, measured against the new stage's policy.
    - `agent_replied` stops every running first-response and next-reply clock.
    - `customer_replied` resumes a paused ticket; after the stage's first response it starts a
      next-reply clock (if none is running).
    - `paused` (waiting on the customer) stops every clock; `resumed` or a customer reply
      starts them again.
    - `resolved` stops every clock (a ticket resolved without a reply counts as answered then);
      `reopened` resumes the resolution clock.
    """
    line = Timeline(ticket)
    for event in sorted(events, key=Event.key):
        line.events += 1
        t = event.time
        if line.created is None:
            if event.type != "created":
                line.ignored += 1
                continue
            line.created = t
            line.stages.append(Stage(t, event.attributes))
            line.clocks += [
                ClockRun("first_response", 0, [(t, None)]),
                ClockRun("resolution", -1, [(t, None)]),
            ]
            continue
        applied = _apply(line, event, t)
        line.ignored += not applied
    return line


def _apply(line: Timeline, event: Event, t: float) -> bool:
    """Apply one event after creation; False when it does not apply in the ticket's state."""
    live = [c for c in line.clocks if c.stopped_at is None]
    kind = event.type
    if kind == "escalated":
        merged = {**line.current.get(), **dict(event.attributes)}
        line.stages.append(Stage(t, tuple(sorted(merged.items()))))
        if line.status != "resolved":
            clock = ClockRun("first_response", len(line.stages) - 1)
            if line.status == "open":
                clock.resume(t)
            line.clocks.append(clock)
        return True
    if line.status == "resolved":
        if kind != "reopened":
            return False
        line.status = "open"
        for clock in line.clocks:
            if clock.kind == "resolution":
                clock.stopped_at = None
                clock.resume(t)
        return True
    if kind == "agent_replied":
        for clock in live:
            if clock.kind in ("first_response", "next_reply"):
                clock.stop(t)
        return True
    if kind == "customer_replied":
        if line.status == "paused":
            _resume(line, live, t)
        stage = len(line.stages) - 1
        answered = not any(
            c.kind == "first_response" and c.stage == stage and c.stopped_at is None
            for c in line.clocks
        )
        if answered and not any(c.kind == "next_reply" for c in live):
            line.clocks.append(ClockRun("next_reply", stage, [(t, None)]))
        return True
    if kind == "paused":
        if line.status == "paused":
            return False
        line.status = "paused"
        for clock in live:
            clock.pause(t)
        return True
    if kind == "resumed":
        if line.status != "paused":
            return False
        _resume(line, live, t)
        return True
    if kind == "resolved":
        line.status = "resolved"
        for clock in live:
            clock.stop(t)
        return True
    return False  # a second `created`, or `reopened` on an open ticket


def _resume(line: Timeline, live: list[ClockRun], t: float) -> None:
    line.status = "open"
    for clock in live:
        clock.resume(t)
