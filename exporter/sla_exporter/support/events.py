"""Ticket events: their model, their validation and the JSON they arrive in.

Events are facts from a helpdesk ("agent replied to ticket 42 at 10:31"). They are stored as
they come, once each (the event `id` makes a repeat harmless), and a ticket's clocks are always
derived by replaying all of its events in event-time order. So the order they arrive in does not
matter, and a restart rebuilds exactly the state it had from the database.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..durations import format_duration
from ..loader import explain
from ..values import Model, When, custom
from .config import Label

# --------------------------------------------------------------------------------------------
# The event model

EventType = Literal[
    "created",
    "agent_replied",
    "customer_replied",
    "escalated",
    "paused",
    "resumed",
    "resolved",
    "reopened",
]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]  # Literal args

# Events at the same instant apply in this order, so a replay never depends on arrival order: a
# customer's reply and the agent's answer in the same second make a next-reply time of 0, and a
# ticket resolved and reopened in the same second stays open.
_RANK = {
    "created": 0,
    "escalated": 1,
    "customer_replied": 2,
    "paused": 3,
    "resumed": 4,
    "agent_replied": 5,
    "resolved": 6,
    "reopened": 7,
}
ATTRIBUTES = ("level", "priority", "region", "plan")
# A sender's clock may run a little ahead of ours; an event further in the future is a bug
# (a local time sent with the wrong offset, milliseconds read as seconds).
FUTURE_TOLERANCE = 900.0
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


def _identifier(value: Any) -> Any:
    # Helpdesks number their tickets: 4711 and "4711" are the same ticket.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Identifier = Annotated[str, BeforeValidator(_identifier), Field(min_length=1, max_length=200)]


class TicketEvent(Model):
    """One thing that happened to a ticket; `created` and `escalated` carry its attributes."""

    id: Identifier
    ticket: Identifier
    type: EventType
    time: When
    level: Label | None = None
    priority: Label | None = None
    region: Label | None = None
    plan: Label | None = None

    @field_validator("time")
    @classmethod
    def _plausible(cls, time: datetime, info: ValidationInfo) -> datetime:
        now = (info.context or {}).get("now")
        if time < EARLIEST:
            raise custom("time", f"must be in 2000 or later, got {time.isoformat()}")
        if now is not None and time.timestamp() > now + FUTURE_TOLERANCE:
            ahead = format_duration(round(time.timestamp() - now))
            raise custom(
                "time",
                f"must not be in the future (more than {format_duration(FUTURE_TOLERANCE)} ahead "
                f"of the exporter's clock), got {time.isoformat()}, {ahead} ahead",
            )
        return time.astimezone(UTC)

    @model_validator(mode="after")
    def _attributes_where_they_belong(self) -> TicketEvent:
        given = list(self.attributes())
        if self.type == "escalated" and "level" not in given:
            raise custom("level", "is required on an escalated event (the new level)", "level")
        if self.type not in ("created", "escalated") and given:
            raise custom(
                "attributes",
                f"is only allowed on created and escalated events, not on {self.type}",
                given[0],
            )
        return self

    def attributes(self) -> dict[str, str]:
        """The ticket attributes this event sets."""
        return {a: v for a in ATTRIBUTES if (v := getattr(self, a)) is not None}

    def canonical(self) -> str:
        """The event as stored: compact JSON, time in UTC; equal events give equal text."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True)


@dataclass(frozen=True, slots=True)
class Event:
    """An event as replayed: what the clocks need, nothing more."""

    id: str
    ticket: str
    type: str
    time: float
    attributes: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, event: TicketEvent) -> Event:
        return cls(
            event.id,
            event.ticket,
            event.type,
            event.time.timestamp(),
            tuple(sorted(event.attributes().items())),
        )

    def key(self) -> tuple[float, int, str]:
        return (self.time, _RANK[self.type], self.id)


class BadEvents(ValueError):
    """Input that is not valid events; `errors` name each field and rule."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f'duplicate key "{key}"')
        out[key] = value
    return out


def parse_json(text: str | bytes) -> Any:
    """JSON with duplicate keys refused (plain JSON keeps the last one silently)."""
    try:
        # Decoded here: json.loads would guess UTF-16 or UTF-32 from the first bytes.
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno} column {err.colno}"
        raise BadEvents([f"invalid JSON: {err.msg} at {where}"]) from None
    except UnicodeDecodeError:
        raise BadEvents(["invalid JSON: not UTF-8 text"]) from None
    except RecursionError:  # [[[[... deeper than the interpreter's stack: no event is like it
        raise BadEvents(["invalid JSON: nested too deeply"]) from None
    except ValueError as err:  # from the hook
        raise BadEvents([f"invalid JSON: {err}"]) from None


def validate_event(data: Any, now: float | None, where: str = "") -> TicketEvent:
    """One event from parsed JSON (or a CSV row); raise BadEvents naming each bad field."""
    if not isinstance(data, dict):
        raise BadEvents([f"{where or 'event'}: must be a JSON object, got {type(data).__name__}"])
    try:
        return TicketEvent.model_validate(data, context={"now": now})
    except ValidationError as exc:
        errors = []
        for path, message in explain(TicketEvent, exc, data):
            location = f"{where}.{path}" if where and path else (where or path)
            errors.append(f"{location}: {message}" if location else message)
        raise BadEvents(errors) from None


def validate_events(data: Any, now: float | None, max_events: int = 10000) -> list[TicketEvent]:
    """One event (an object) or a list of events; every error at once, as `[3].time: ...`."""
    if isinstance(data, dict):
        return [validate_event(data, now)]
    if not isinstance(data, list):
        raise BadEvents(["must be an event (a JSON object) or a list of events"])
    if not data:
        raise BadEvents(["must contain at least one event, got an empty list"])
    if len(data) > max_events:
        raise BadEvents([f"must contain at most {max_events} events, got {len(data)}"])
    events, errors = [], []
    for i, item in enumerate(data):
        try:
            events.append(validate_event(item, now, f"[{i}]"))
        except BadEvents as bad:
            errors += bad.errors
    errors += same_id_different_content(events, [f"[{i}]." for i in range(len(events))])
    if errors:
        raise BadEvents(errors)
    return events


def same_id_different_content(events: Sequence[TicketEvent], where: Sequence[str]) -> list[str]:
    """Errors for an id used twice in one batch for two different events; `where` holds the
    prefix naming each event in messages (`[3].`, `events.csv:14  `)."""
    first: dict[str, tuple[str, str]] = {}
    errors = []
    for event, place in zip(events, where, strict=True):
        body = event.canonical()
        seen = first.setdefault(event.id, (body, place))
        if seen[0] != body:
            errors.append(
                f'{place}id: event "{event.id}" appears twice with different contents '
                f"(first at {seen[1].rstrip(' .')})"
            )
    return errors
