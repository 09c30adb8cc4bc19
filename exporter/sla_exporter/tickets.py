"""Ticket events: their model and validation, the SQLite store, and the replay into clocks.

Events are facts from a helpdesk ("agent replied to ticket 42 at 10:31"). They are stored as
they come, once each (the event `id` makes a repeat harmless), and a ticket's clocks are always
derived by replaying all of its events in event-time order. So the order they arrive in does not
matter, and a restart rebuilds exactly the state it had from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .config import Model, When, _custom, explain
from .durations import format_duration
from .support_config import Label

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
            raise _custom("time", f"must be in 2000 or later, got {time.isoformat()}")
        if now is not None and time.timestamp() > now + FUTURE_TOLERANCE:
            ahead = format_duration(round(time.timestamp() - now))
            raise _custom(
                "time",
                f"must not be in the future (more than {format_duration(FUTURE_TOLERANCE)} ahead "
                f"of the exporter's clock), got {time.isoformat()}, {ahead} ahead",
            )
        return time.astimezone(UTC)

    @model_validator(mode="after")
    def _attributes_where_they_belong(self) -> TicketEvent:
        given = list(self.attributes())
        if self.type == "escalated" and "level" not in given:
            raise _custom("level", "is required on an escalated event (the new level)", "level")
        if self.type not in ("created", "escalated") and given:
            raise _custom(
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


# --------------------------------------------------------------------------------------------
# The store


SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    ticket TEXT NOT NULL,
    type TEXT NOT NULL,
    time REAL NOT NULL,
    attributes TEXT NOT NULL,
    body TEXT NOT NULL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_ticket ON events (ticket, time);
"""


class Conflict(Exception):
    """An event id already stored for a different event; nothing of the batch was stored."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


@dataclass
class Ingested:
    """What one batch did: new events stored, repeats ignored, and the tickets touched."""

    stored: int = 0
    duplicates: int = 0
    tickets: dict[str, list[Event]] = field(default_factory=dict)


class TicketDB:
    """The SQLite file of ticket events; one connection, to be used from one thread only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we write BEGIN/COMMIT ourselves, so a commit happens exactly
        # where the code says, before the sender hears "stored".
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            self.conn.execute("PRAGMA busy_timeout = 10000")  # the import command may write too
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL mode (got {mode})")
            # FULL: in WAL mode, NORMAL may lose the last commits on a power cut (not on a crash
            # of this process). An acknowledged event is one the helpdesk will not send again,
            # so it must survive both; one fsync per batch is cheap at helpdesk rates.
            self.conn.execute("PRAGMA synchronous = FULL")
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(
                    f"schema version {version} is newer than this exporter ({SCHEMA_VERSION})"
                )
            self.conn.executescript(_SCHEMA)
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def ingest(self, events: Sequence[TicketEvent], where: Sequence[str] | None = None) -> Ingested:
        """Store the events not stored yet, in one transaction, and commit before returning.

        An id already stored with the same content is a repeat (ignored); with a different
        content it is a conflict, and the whole batch is refused. `where` names each event in
        messages, as in `same_id_different_content`.
        """
        places = list(where) if where is not None else [f"[{i}]." for i in range(len(events))]
        result = Ingested()
        now = datetime.now(UTC).timestamp()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            errors = []
            fresh: dict[str, TicketEvent] = {}
            for event, place in zip(events, places, strict=True):
                body = event.canonical()
                row = self.conn.execute("SELECT body FROM events WHERE id = ?", (event.id,))
                stored = row.fetchone()
                if stored is None and event.id not in fresh:
                    fresh[event.id] = event
                elif stored is not None and stored[0] != body:
                    errors.append(
                        f'{place}id: event "{event.id}" is already stored with different '
                        "contents; an event id must name one event"
                    )
                else:
                    result.duplicates += 1
            if errors:
                raise Conflict(errors)
            self.conn.executemany(
                "INSERT INTO events (id, ticket, type, time, attributes, body, received) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.id,
                        e.ticket,
                        e.type,
                        e.time.timestamp(),
                        json.dumps(e.attributes(), sort_keys=True),
                        e.canonical(),
                        now,
                    )
                    for e in fresh.values()
                ],
            )
            self.conn.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself on some errors (disk full, I/O error): a ROLLBACK then
            # fails with "no transaction is active" and would replace the real cause.
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise
        result.stored = len(fresh)
        for ticket in {e.ticket for e in fresh.values()}:
            result.tickets[ticket] = self.ticket_events(ticket)
        return result

    def ticket_events(self, ticket: str) -> list[Event]:
        """Every stored event of `ticket`, in replay order."""
        rows = self.conn.execute(
            "SELECT id, ticket, type, time, attributes FROM events WHERE ticket = ?", (ticket,)
        )
        return sorted((_event(row) for row in rows), key=Event.key)

    def tickets(self) -> Iterator[tuple[str, list[Event]]]:
        """Every ticket with its events in replay order, one ticket in memory at a time."""
        rows = self.conn.execute(
            "SELECT id, ticket, type, time, attributes FROM events ORDER BY ticket"
        )
        current: str | None = None
        batch: list[Event] = []
        for row in rows:
            event = _event(row)
            if event.ticket != current:
                if current is not None:
                    yield current, sorted(batch, key=Event.key)
                current, batch = event.ticket, []
            batch.append(event)
        if current is not None:
            yield current, sorted(batch, key=Event.key)

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM events").fetchone()[0])


def _event(row: tuple[Any, ...]) -> Event:
    event_id, ticket, kind, time, attributes = row
    return Event(event_id, ticket, kind, time, tuple(sorted(json.loads(attributes).items())))


T = TypeVar("T")


class TicketStore:
    """`TicketDB` behind one worker thread, for the event loop: blocking work never runs on it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tickets-db")
        self._db: TicketDB | None = None
        self._thread: threading.Thread | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        def _open() -> None:
            self._db = TicketDB(self.path)

        await self._run(_open)

    @property
    def db(self) -> TicketDB:
        """The database; call only from a function passed to `run`."""
        if self._db is None:
            raise RuntimeError("the ticket store is not open")
        return self._db

    async def run(self, fn: Callable[[TicketDB], T]) -> T:
        """Run `fn(db)` on the store's thread."""
        return await self._run(lambda: fn(self.db))

    async def ingest(self, events: Sequence[TicketEvent]) -> Ingested:
        return await self.run(lambda db: db.ingest(events))

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(_close)
        self._executor.shutdown(wait=True)


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
