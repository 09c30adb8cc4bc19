"""Calendar-month tallies in the SLA's time zone, kept on disk so they survive restarts.

Prometheus has no calendar ranges (a PromQL range is a fixed duration), so the exporter counts
each service's probes per calendar month itself, in the SLA's IANA zone, and exposes the running
tallies as gauges labelled with the month. Finished months stay exposed with their final figures
for `keep_months` months, which makes them queryable beyond Prometheus' retention as well.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class Tally:
    """One service's counts for one calendar month."""

    probes: int = 0  # outside maintenance: the SLA's denominator
    failures: int = 0  # outside maintenance: the SLA's numerator
    maintenance_probes: int = 0
    interval: float = 60.0  # the service's interval when it last probed in this month
    # When monitoring of the service began, if it began during this month (its first probe
    # ever); None for a month that was monitored from its start. Slots before it are not
    # "unknown": nobody had promised to watch them yet.
    since: float | None = None


def month_key(timestamp: float, zone: ZoneInfo) -> str:
    """The calendar month ("2026-11") that a unix time falls in, in `zone`."""
    return datetime.fromtimestamp(timestamp, zone).strftime("%Y-%m")


def month_bounds(key: str, zone: ZoneInfo) -> tuple[float, float]:
    """Unix times of the first and of one past the last second of month `key` in `zone`."""
    year, month = (int(part) for part in key.split("-"))
    start = datetime(year, month, 1, tzinfo=zone)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)
    return start.timestamp(), end.timestamp()


class Ledger:
    """Per-service, per-month probe tallies; `flush()` writes them atomically to `path`."""

    def __init__(self, path: Path | None, timezone: str, keep_months: int = 13) -> None:
        self.path = path
        self.zone = ZoneInfo(timezone)
        self.keep_months = keep_months
        self.tallies: dict[str, dict[str, Tally]] = {}
        self._dirty = False
        self._month = ("", 0.0, 0.0)  # the month probes last fell in: key, start, end
        if path is not None and path.exists():
            self._read(path)

    def _read(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown format version {data.get('version')!r}")
            self.tallies = {
                service: {month: Tally(**tally) for month, tally in months.items()}
                for service, months in data["tallies"].items()
            }
        except (OSError, ValueError, TypeError, KeyError) as err:
            # Refuse to start over silently: that would erase the month's figures on disk.
            raise RuntimeError(f"cannot read month tallies from {path}: {err}") from err

    def set_timezone(self, timezone: str) -> None:
        self.zone = ZoneInfo(timezone)
        self._month = ("", 0.0, 0.0)

    def _key(self, timestamp: float) -> str:
        """month_key(timestamp), without a date computation for every probe of the month."""
        key, start, end = self._month
        if not start <= timestamp < end:
            key = month_key(timestamp, self.zone)
            start, end = month_bounds(key, self.zone)
            self._month = (key, start, end)
        return key

    def record(
        self, service: str, timestamp: float, success: bool, in_maintenance: bool, interval: float
    ) -> None:
        """Count one probe that started at `timestamp` in the month it started in."""
        months = self.tallies.setdefault(service, {})
        key = self._key(timestamp)
        tally = months.get(key)
        if tally is None:
            tally = months[key] = Tally(since=None if months else timestamp)
        tally.interval = interval
        if in_maintenance:
            tally.maintenance_probes += 1
        else:
            tally.probes += 1
            tally.failures += not success
        self._dirty = True

    def monitored_from(self, key: str, tally: Tally) -> float:
        """Unix time from which month `key` counts: its start, or the first probe if later."""
        start = month_bounds(key, self.zone)[0]
        return start if tally.since is None else max(start, tally.since)

    def months(
        self, service: str, now: float, current: str | None = None
    ) -> list[tuple[str, Tally]]:
        """The kept months of `service`, oldest first, with the current month always present
        (`current`, its key, if the caller has it already)."""
        months = self.tallies.get(service, {})
        current = current or month_key(now, self.zone)
        if len(months) == 1 and current in months:  # the usual case, and the most frequent call
            return [(current, months[current])]
        keys = sorted({*months, current})[-self.keep_months :]
        # A service never probed yet is monitored from now on, not from the month's start.
        fresh = Tally(since=None if months else now)
        return [(key, months.get(key) or fresh) for key in keys]

    def prune(self) -> None:
        """Drop months older than the kept window.

        Services that left the config keep their tallies (they are no longer exposed), so removing
        a service by mistake and adding it back does not erase its month.
        """
        for months in self.tallies.values():
            if len(months) <= self.keep_months:
                continue
            for key in sorted(months)[: -self.keep_months]:
                del months[key]
                self._dirty = True

    def snapshot(self) -> bytes | None:
        """The tallies as file content if they changed since the last snapshot, else None."""
        dumping = self.dumping()
        try:
            while True:
                next(dumping)
        except StopIteration as done:
            content: bytes | None = done.value
            return content

    def dumping(self, batch: int = 500) -> Generator[None, None, bytes | None]:
        """`snapshot()` as a generator that yields every `batch` services, so that the event
        loop (where tallies change, and where this runs so that a writer thread never sees a
        dict being modified) can go on between two batches; each service's months are copied
        in one go. With 10,000 services, the whole file at once held the loop ~0.1 s."""
        if self.path is None or not self._dirty:
            return None
        self._dirty = False  # changes from now on are in the next snapshot (maybe in this one)
        head = {"version": FORMAT_VERSION, "timezone": self.zone.key}
        parts = [json.dumps(head, separators=(",", ":"))[:-1], ',"tallies":{']
        for i, (service, months) in enumerate(list(self.tallies.items())):
            if i and i % batch == 0:
                yield
            tallies = {
                month: {
                    "probes": t.probes,
                    "failures": t.failures,
                    "maintenance_probes": t.maintenance_probes,
                    "interval": t.interval,
                    "since": t.since,
                }
                for month, t in months.items()
            }
            comma = "," if i else ""
            parts.append(
                f"{comma}{json.dumps(service)}:{json.dumps(tallies, separators=(',', ':'))}"
            )
        parts.append("}}")
        return "".join(parts).encode()

    def write(self, content: bytes) -> None:
        """Replace the file atomically: write a temporary file, fsync it, rename it over."""
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ledger-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            self._dirty = True  # try again at the next flush
            Path(tmp).unlink(missing_ok=True)
            raise

    def flush(self) -> None:
        """Write the tallies now if they changed."""
        content = self.snapshot()
        if content is not None:
            self.write(content)
