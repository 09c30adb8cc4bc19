"""A month ledger with history, for the scale section's `--history N`: what an exporter that has
run for N months holds when it starts (its months are exposed at every scrape, 13 at most).

Every service was monitored from the start of the first month; each month has two outages of
ten minutes at places that differ by service and month; the current month runs up to a couple
of minutes ago, so that the exporter's own probes go on from there. The file is written by the
exporter's own Ledger and read back by the exporter under test, which validates it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from pathlib import Path
from zoneinfo import ZoneInfo

from sla_exporter.ledger import (
    Ledger,
    Month,
    Run,
    ServiceBook,
    Term,
    month_bounds,
    month_key,
    reasons_of,
)

OUTAGE_MS = 10 * 60 * 1000


def _previous(key: str) -> str:
    year, month = int(key[:4]), int(key[5:])
    return f"{year:04d}-{month - 1:02d}" if month > 1 else f"{year - 1:04d}-12"


def _outages(name: str, key: str, start: int, end: int) -> list[tuple[int, int]]:
    """Two ten-minute outages inside [start, end), placed by a hash of the service and month."""
    digest = hashlib.blake2b(f"{name}/{key}".encode(), digest_size=8).digest()
    span = max(1, (end - start) // 2 - OUTAGE_MS)
    first = start + int.from_bytes(digest[:4]) % span
    second = start + (end - start) // 2 + int.from_bytes(digest[4:]) % span
    return [(first, first + OUTAGE_MS), (second, second + OUTAGE_MS)]


def _runs(name: str, key: str, start: int, end: int) -> list[Run]:
    runs: list[Run] = []
    at = start
    for down_start, down_end in _outages(name, key, start, end):
        if down_start >= end:
            break
        runs.append(Run(at, down_start, True))
        runs.append(Run(down_start, min(down_end, end), False, reasons_of(["connect"])))
        at = min(down_end, end)
    if at < end:
        runs.append(Run(at, end, True))
    return [run for run in runs if run.end > run.start]


def write(path: Path, names: Iterable[str], months: int, timezone: str = "UTC") -> int:
    """Write `months` months (the current one included) for every one of `names` to `path`;
    return the file's size in bytes."""
    zone = ZoneInfo(timezone)
    now = time.time() - 120
    current = month_key(now, zone)
    keys = [current]
    while len(keys) < months:
        keys.insert(0, _previous(keys[0]))
    bounds = {key: tuple(round(t * 1000) for t in month_bounds(key, zone)) for key in keys}
    until = round(now * 1000)
    ledger = Ledger(path, timezone)
    ledger.horizon = until
    for name in names:
        book = ledger.books[name] = ServiceBook(since=bounds[keys[0]][0], committed=until)
        for key in keys:
            start, end = bounds[key]
            book.months[key] = Month(
                runs=_runs(name, key, start, min(end, until)), terms=[Term(start, 0.99, "down")]
            )
    ledger.mark_dirty()
    ledger.flush()
    return path.stat().st_size
