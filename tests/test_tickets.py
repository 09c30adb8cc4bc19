"""Ticket events: validation, the SQLite store, and the replay of events into measured clocks."""

from __future__ import annotations

import random
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sla_exporter.config import Config, parse
from sla_exporter.support.desk import Policies, SupportDesk, derive, measure
from sla_exporter.support.events import BadEvents, Event, TicketEvent, validate_events
from sla_exporter.support.replay import replay
from sla_exporter.support.store import Conflict, TicketDB

H = 3600.0
ZURICH = ZoneInfo("Europe/Zurich")

SLA = """
sla: {name: Mailpro, timezone: Europe/Zurich}
services: {website: {http: {url: "http://127.0.0.1:9/"}}}
support:
  database: support.db
  token: test-token-0123456789
  calendars:
    europe: {timezone: Europe/Zurich, hours: {mon-fri: ["08:00-17:00"]}}
  policies:
    first-level:
      match: {level: 1}
      calendar: europe
      targets: {first_response: 4h, next_reply: 8h, resolution: 5 working days}
      warn_before: 1h
    second-level:
      match: {level: 2}
      calendar: europe
      targets: {first_response: 8h, resolution: 10 working days}
"""


def config(tmp_path: Path | None = None) -> Config:
    return parse(SLA, "sla.yml", base_dir=tmp_path or ".")


@pytest.fixture
def policies() -> Policies:
    support = config().support
    assert support is not None
    return Policies(support, 0.95)


def ts(text: str) -> float:
    """A local Geneva time as a unix time; 2026-01-19 is a Monday."""
    return datetime.fromisoformat(text).replace(tzinfo=ZURICH).timestamp()


def ev(n: int | str, kind: str, when: str, ticket: str = "T1", **attrs: str) -> Event:
    return Event(str(n), ticket, kind, ts(when), tuple(sorted(attrs.items())))


def event(n: int | str, kind: str, when: str, ticket: str = "T1", **attrs: Any) -> TicketEvent:
    data = {"id": str(n), "ticket": ticket, "type": kind, "time": f"{when}+01:00", **attrs}
    return TicketEvent.model_validate(data)


def measured(events: list[Event], policies: Policies, now: str) -> dict[str, Any]:
    """Each clock of the ticket as (kind, policy, elapsed hours, breached)."""
    line = replay("T1", events)
    out = []
    for run in line.clocks:
        stage = line.current if run.stage < 0 else line.stages[run.stage]
        rule = policies.match(stage.attributes)
        assert rule is not None
        m = measure(run, rule, ts(now))
        if m is not None:
            out.append((m.target, m.policy, m.elapsed / H, m.breached))
    return {"status": line.status, "clocks": out}


# --------------------------------------------------------------------------------------------
# Replay and clocks


def test_a_first_response_is_measured_in_business_hours(policies: Policies) -> None:
    events = [
        ev(1, "created", "2026-01-16T16:30", level="1"),  # Friday
        ev(2, "agent_replied", "2026-01-19T09:00"),  # Monday
    ]
    got = measured(events, policies, "2026-01-19T10:00")
    assert got["clocks"][0] == ("first_response", "first-level", 1.5, False)


def test_a_ticket_unanswered_past_a_1700_deadline_is_breached_overnight(policies: Policies) -> None:
    events = [ev(1, "created", "2026-01-19T13:00", level="1")]  # due 17:00
    assert measured(events, policies, "2026-01-19T17:00")["clocks"][0][3] is False
    assert measured(events, policies, "2026-01-19T17:01")["clocks"][0][3] is True
    assert measured(events, policies, "2026-01-20T07:00")["clocks"][0] == (
        "first_response",
        "first-level",
        4.0,
        True,
    )


def test_a_reply_at_exactly_the_deadline_meets_it(policies: Policies) -> None:
    events = [
        ev(1, "created", "2026-01-19T13:00", level="1"),
        ev(2, "agent_replied", "2026-01-19T17:00"),
    ]
    assert measured(events, policies, "2026-01-21T12:00")["clocks"][0][3] is False


def test_waiting_on_the_customer_stops_the_clock_until_they_reply(policies: Policies) -> None:
    events = [
        ev(1, "created", "2026-01-19T09:00", level="1"),
        ev(2, "agent_replied", "2026-01-19T09:30"),
        ev(3, "paused", "2026-01-19T10:00"),
        ev(4, "customer_replied", "2026-01-21T09:00"),  # two days later: not counted
        ev(5, "resolved", "2026-01-21T10:00"),
    ]
    got = measured(events, policies, "2026-01-22T12:00")
    assert ("resolution", "first-level", 2.0, False) in got["clocks"]
    # The customer's reply also started a next-reply clock, stopped by the resolution.
    assert ("next_reply", "first-level", 1.0, False) in got["clocks"]
    assert got["status"] == "resolved"


def test_resumed_restarts_a_paused_clock_and_a_pause_before_the_deadline_saves_it(
    policies: Policies,
) -> None:
    events = [
        ev(1, "created", "2026-01-19T13:00", level="1"),
        ev(2, "paused", "2026-01-19T16:00"),
        ev(3, "resumed", "2026-01-20T10:00"),
    ]
    # 3 h before the pause, 1 h more after 10:00: due at 11:00 on Tuesday.
    assert measured(events, policies, "2026-01-20T11:00")["clocks"][0][3] is False
    assert measured(events, policies, "2026-01-20T11:00:01")["clocks"][0][3] is True


def test_an_escalation_starts_the_second_levels_own_response_clock(policies: Policies) -> None:
    events = [
        ev(1, "created", "2026-01-19T09:00", level="1"),
        ev(2, "agent_replied", "2026-01-19T10:00"),
        ev(3, "escalated", "2026-01-19T11:00", level="2"),
        ev(4, "agent_replied", "2026-01-20T11:00"),  # 9 business hours later: 8 h target missed
    ]
    got = measured(events, policies, "2026-01-20T12:00")
    assert got["clocks"][0] == ("first_response", "first-level", 1.0, False)
    assert ("first_response", "second-level", 9.0, True) in got["clocks"]
    # The resolution clock runs from creation, measured against the current (second) level.
    assert ("resolution", "second-level", 12.0, False) in got["clocks"]


def test_a_reopened_ticket_resumes_its_resolution_clock(policies: Policies) -> None:
    events = [
        ev(1, "created", "2026-01-19T09:00", level="1"),
        ev(2, "resolved", "2026-01-19T10:00"),
        ev(3, "reopened", "2026-01-20T09:00"),
    ]
    got = measured(events, policies, "2026-01-20T11:00")
    assert got["status"] == "open"
    assert ("resolution", "first-level", 3.0, False) in got["clocks"]
    # The first response was the resolution itself, and it stays done.
    assert ("first_response", "first-level", 1.0, False) in got["clocks"]


def test_events_before_the_created_event_are_ignored_and_a_ticket_without_one_waits() -> None:
    line = replay("T1", [ev(1, "agent_replied", "2026-01-19T09:00")])
    assert line.created is None and line.ignored == 1
    line = replay(
        "T1",
        [ev(1, "agent_replied", "2026-01-19T09:00"), ev(2, "created", "2026-01-19T10:00")],
    )
    assert line.created == ts("2026-01-19T10:00") and line.ignored == 1


def test_any_arrival_order_gives_the_same_clocks(policies: Policies) -> None:
    events = [
        ev(1, "created", "2026-01-16T16:30", level="1"),
        ev(2, "agent_replied", "2026-01-19T09:00"),
        ev(3, "customer_replied", "2026-01-19T10:00"),
        ev(4, "paused", "2026-01-19T11:00"),
        ev(5, "customer_replied", "2026-01-20T09:00"),
        ev(6, "escalated", "2026-01-20T09:30", level="2"),
        ev(7, "agent_replied", "2026-01-20T09:30"),  # same second as the escalation
        ev(8, "resolved", "2026-01-21T15:00"),
        ev(9, "reopened", "2026-01-22T08:00"),
    ]
    expected = measured(events, policies, "2026-01-23T12:00")
    shuffler = random.Random(5)
    for _ in range(50):
        shuffled = events[:]
        shuffler.shuffle(shuffled)
        assert measured(shuffled, policies, "2026-01-23T12:00") == expected


def test_a_finished_breach_counts_in_the_month_its_deadline_passed(policies: Policies) -> None:
    events = [
        ev(1, "created", "2026-01-30T16:00", level="1"),  # Friday, due Monday 2 Feb 11:00
        ev(2, "agent_replied", "2026-02-02T12:00"),
    ]
    ticket = derive("T1", events, policies, ZURICH, ts("2026-02-03T00:00"))
    (first,) = [f for f in ticket.finished if f.target == "first_response"]
    assert (first.month, first.breached, first.elapsed) == ("2026-02", True, 5 * H)


# --------------------------------------------------------------------------------------------
# Validation: every bad input named by field and rule


CREATED = {"id": "e1", "ticket": "T1", "type": "created", "time": "2026-01-19T09:00:00+01:00"}
AWARE = "must be a date and time with a UTC offset, like 2026-11-28T22:00:00+01:00"
TYPES = (
    '"created", "agent_replied", "customer_replied", "escalated", "paused", "resumed", '
    '"resolved" or "reopened"'
)
QUOTE = "put it in quotes to make it text"


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        ({**CREATED, "time": "2026-01-19T09:00:00"}, [f'time: {AWARE}, got "2026-01-19T09:00:00"']),
        ({**CREATED, "time": 1768809600}, [f"time: {AWARE}, got 1768809600"]),
        (
            {**CREATED, "time": "1999-12-31T23:00:00Z"},
            ["time: must be in 2000 or later, got 1999-12-31T23:00:00+00:00"],
        ),
        ({**CREATED, "type": "answered"}, [f'type: must be {TYPES}, got "answered"']),
        ({**CREATED, "tim": "x"}, ['tim: unknown key "tim"; did you mean "time"?']),
        ({k: v for k, v in CREATED.items() if k != "ticket"}, ["ticket: required key is missing"]),
        ({**CREATED, "id": ""}, ["id: must not be empty"]),
        ({**CREATED, "level": True}, [f"level: must be a string, got true; {QUOTE}"]),
        (
            {**CREATED, "type": "escalated"},
            ["level: is required on an escalated event (the new level)"],
        ),
        (
            {**CREATED, "type": "resolved", "plan": "premium"},
            ["plan: is only allowed on created and escalated events, not on resolved"],
        ),
        ([], ["must contain at least one event, got an empty list"]),
        ("created", ["must be an event (a JSON object) or a list of events"]),
        ([CREATED, 7], ["[1]: must be a JSON object, got int"]),
        (
            [CREATED, {**CREATED, "ticket": "T2"}],
            ['[1].id: event "e1" appears twice with different contents (first at [0])'],
        ),
    ],
)
def test_bad_events_are_refused_with_the_field_and_rule(data: Any, errors: list[str]) -> None:
    with pytest.raises(BadEvents) as info:
        validate_events(data, now=None)
    assert info.value.errors == errors


def test_an_event_from_the_future_is_refused() -> None:
    now = datetime.fromisoformat("2026-01-19T08:00:00+01:00").timestamp()
    with pytest.raises(BadEvents) as info:
        validate_events({**CREATED, "time": "2026-01-19T09:00:00+01:00"}, now=now)
    assert info.value.errors == [
        "time: must not be in the future (more than 15m ahead of the exporter's clock), "
        "got 2026-01-19T09:00:00+01:00, 1h ahead"
    ]


def test_numeric_ids_and_levels_are_read_as_text_and_times_as_utc() -> None:
    (event_,) = validate_events({**CREATED, "ticket": 4711, "level": 1}, now=None)
    assert (event_.ticket, event_.level, event_.time.isoformat()) == (
        "4711",
        "1",
        "2026-01-19T08:00:00+00:00",
    )


# --------------------------------------------------------------------------------------------
# The store


def test_the_database_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    db = TicketDB(tmp_path / "t.db")
    try:
        assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        db.close()


def test_a_repeated_event_changes_nothing(tmp_path: Path) -> None:
    db = TicketDB(tmp_path / "t.db")
    batch = [
        event(1, "created", "2026-01-19T09:00", level=1),
        event(2, "agent_replied", "2026-01-19T09:30"),
    ]
    first = db.ingest(batch)
    again = db.ingest(batch)
    # The same event with its time written in another offset is the same event.
    same = TicketEvent.model_validate({**batch[0].model_dump(), "time": "2026-01-19T08:00:00Z"})
    third = db.ingest([same])
    assert (first.stored, first.duplicates) == (2, 0)
    assert (again.stored, again.duplicates, again.tickets) == (0, 2, {})
    assert (third.stored, third.duplicates) == (0, 1)
    assert db.count() == 2
    db.close()


def test_an_id_reused_for_another_event_refuses_the_whole_batch(tmp_path: Path) -> None:
    db = TicketDB(tmp_path / "t.db")
    db.ingest([event(1, "created", "2026-01-19T09:00", level=1)])
    with pytest.raises(Conflict) as info:
        db.ingest(
            [
                event(2, "agent_replied", "2026-01-19T09:30"),
                event(1, "created", "2026-01-19T09:05", level=1),
            ]
        )
    assert info.value.errors == [
        '[1].id: event "1" is already stored with different contents; an event id must name '
        "one event"
    ]
    assert db.count() == 1  # event 2 was not stored either
    db.close()


def test_a_full_disk_is_reported_as_itself_not_as_a_failed_rollback(tmp_path: Path) -> None:
    # SQLite rolls a transaction back by itself on SQLITE_FULL; a ROLLBACK after that fails with
    # "no transaction is active", which used to replace the real cause in the log. The database
    # is made "full" for real by capping its pages at what it already has.
    db = TicketDB(tmp_path / "t.db")
    try:
        db.ingest([event(1, "created", "2026-01-19T09:00", level=1)])
        pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
        db.conn.execute(f"PRAGMA max_page_count = {pages}")
        big = [event(n, "agent_replied", "2026-01-19T09:30") for n in range(2, 2000)]
        with pytest.raises(sqlite3.OperationalError) as info:
            db.ingest(big)
        assert "full" in str(info.value)
        assert not db.conn.in_transaction
        db.conn.execute(f"PRAGMA max_page_count = {pages * 100}")
        assert db.ingest(big).stored == len(big)  # the connection is usable again
    finally:
        db.close()


def stream() -> list[TicketEvent]:
    """Three tickets' events as a helpdesk might send them: interleaved, some late."""
    return [
        event("a1", "created", "2026-01-19T09:00", "A", level=1),
        event("b1", "created", "2026-01-19T09:10", "B", level=2, region="europe"),
        event("a3", "customer_replied", "2026-01-19T11:00", "A"),  # before a2 arrives
        event("a2", "agent_replied", "2026-01-19T10:00", "A"),
        event("c2", "agent_replied", "2026-01-19T12:00", "C"),  # before C's created event
        event("b2", "paused", "2026-01-19T13:00", "B"),
        event("c1", "created", "2026-01-19T11:30", "C", level=1),
        event("a4", "resolved", "2026-01-19T15:00", "A"),
        event("b3", "customer_replied", "2026-01-20T09:00", "B"),
        event("a5", "reopened", "2026-01-20T10:00", "A"),
    ]


async def desk_with(tmp_path: Path, db_name: str) -> SupportDesk:
    desk = SupportDesk(clock=lambda: ts("2026-01-20T16:00"))
    cfg = parse(SLA.replace("support.db", db_name), "sla.yml", base_dir=tmp_path)
    await desk.apply(cfg)
    return desk


def view(desk: SupportDesk) -> Any:
    snap = desk.snapshot()
    assert snap is not None
    hist = {k: (h.count, h.total, tuple(h.counts)) for k, h in snap.histograms.items() if h.count}
    return (
        dict(snap.open),
        snap.incomplete,
        dict(snap.next_deadline),
        +snap.measured,
        +snap.breached,
        +snap.breaches,
        hist,
    )


async def test_a_restart_in_the_middle_of_a_stream_loses_nothing(tmp_path: Path) -> None:
    events = stream()
    whole = await desk_with(tmp_path, "whole.db")
    for e in events:
        await whole.ingest([e])
    expected = view(whole)
    await whole.close()

    first = await desk_with(tmp_path, "halves.db")
    await first.ingest(events[:6])
    await first.close()  # the process stops here; the helpdesk resends from event 4 on
    second = await desk_with(tmp_path, "halves.db")
    result = await second.ingest(events[3:])
    assert (result.stored, result.duplicates) == (4, 3)
    assert view(second) == expected
    await second.close()


async def test_the_order_events_arrive_in_does_not_change_the_result(tmp_path: Path) -> None:
    events = stream()
    ordered = await desk_with(tmp_path, "ordered.db")
    await ordered.ingest(sorted(events, key=lambda e: e.time))
    shuffled = await desk_with(tmp_path, "shuffled.db")
    mixed = events[:]
    random.Random(1).shuffle(mixed)
    for e in mixed:
        await shuffled.ingest([e])
    assert view(shuffled) == view(ordered)
    await ordered.close()
    await shuffled.close()


async def test_the_desk_measures_open_tickets_by_policy_and_state(tmp_path: Path) -> None:
    desk = await desk_with(tmp_path, "t.db")
    await desk.ingest(stream())
    snap = desk.snapshot()
    assert snap is not None
    # At Tuesday 16:00: A reopened (resolution running, within target); B resumed on Tuesday
    # 09:00 with its 8 h response long gone; C answered, resolution running.
    assert dict(+snap.open) == {
        ("first-level", "within_target"): 2,
        ("second-level", "breached"): 1,
    }
    assert snap.breaches[("second-level", "first_response")] == 1
    assert snap.incomplete == 0
    await desk.close()


async def test_a_database_that_cannot_be_opened_is_reported(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    desk = SupportDesk()
    with pytest.raises(RuntimeError, match=r"cannot use the ticket database .*dir\.db"):
        await desk.apply(parse(SLA.replace("support.db", "dir.db"), "sla.yml", base_dir=tmp_path))
    assert desk.snapshot() is None


def test_a_database_from_a_newer_exporter_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    sqlite3.connect(path).execute("PRAGMA user_version = 99").connection.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema version 99"):
        TicketDB(path)
