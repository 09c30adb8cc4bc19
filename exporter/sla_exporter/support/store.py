"""The SQLite file of ticket events, and its worker thread for the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from .events import Event, TicketEvent

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
