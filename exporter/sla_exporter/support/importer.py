"""`sla-support-import`: backfill ticket events from a helpdesk export (CSV or JSON lines).

Every row is checked with the rules of the HTTP endpoint before anything is written; one bad row
and nothing is stored, and every bad row is listed with its file and line. Rows already stored
(same event id, same content) are skipped, so running an import twice changes nothing.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..loader import ConfigInvalid
from .events import BadEvents, TicketEvent, parse_json, same_id_different_content, validate_event
from .store import Conflict, TicketDB

COLUMNS = list(TicketEvent.model_fields)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sla-support-import",
        description="Store ticket events from CSV or JSON-lines files in the support database "
        "named by the SLA file. All rows are checked first; any bad row and nothing is stored.",
    )
    parser.add_argument("--config.file", dest="config_file", default="sla.yml", help="SLA file")
    parser.add_argument(
        "--format",
        choices=["auto", "csv", "jsonl"],
        default="auto",
        help="input format; auto: .csv is CSV, anything else JSON lines",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check the files and report, store nothing"
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="CSV or JSON-lines files")
    return parser.parse_args(argv)


Row = tuple[str, Any]  # where ("events.csv:14"), data


def _csv_rows(path: Path, errors: list[str]) -> Iterator[Row]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        bad = False
        for column in header:
            if column not in COLUMNS:
                close = difflib.get_close_matches(column, COLUMNS, n=1)
                hint = f'did you mean "{close[0]}"?' if close else f"columns: {', '.join(COLUMNS)}"
                errors.append(f'{path}:1  unknown column "{column}"; {hint}')
                bad = True
        if bad:
            return
        for row in reader:
            # An empty cell is a value left out, as a missing key in JSON.
            yield f"{path}:{reader.line_num}", {k: v for k, v in row.items() if v not in ("", None)}


def _jsonl_rows(path: Path, errors: list[str]) -> Iterator[Row]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, parse_json(line.strip())
            except BadEvents as bad:
                errors += [f"{where}  {e}" for e in bad.errors]


def read(
    paths: Sequence[Path], fmt: str, now: float
) -> tuple[list[TicketEvent], list[str], list[str]]:
    """Every event of every file with where it is (`file:line  `), and every error."""
    events: list[TicketEvent] = []
    places: list[str] = []
    errors: list[str] = []
    for path in paths:
        kind = fmt if fmt != "auto" else ("csv" if path.suffix.lower() == ".csv" else "jsonl")
        rows = _csv_rows if kind == "csv" else _jsonl_rows
        try:
            for where, data in rows(path, errors):
                try:
                    events.append(validate_event(data, now))
                    places.append(f"{where}  ")
                except BadEvents as bad:
                    errors += [f"{where}  {e}" for e in bad.errors]
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            errors.append(f"{path}  cannot read: {err}")
    errors += same_id_different_content(events, places)
    return events, places, errors


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_mod.load(args.config_file)
    except ConfigInvalid as err:
        print(err, file=sys.stderr)
        return 1
    if config.support is None:
        print(f"{args.config_file}: no support section, so no ticket database", file=sys.stderr)
        return 1
    events, places, errors = read([Path(f) for f in args.files], args.format, time.time())
    if errors:
        count = len(errors)
        print(f"{count} error{'s' if count != 1 else ''}; nothing was stored", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(f"{len(events)} events are valid; nothing stored (--dry-run)")
        return 0
    try:
        db = TicketDB(config.support.database)
    except Exception as err:  # sqlite3.Error, OSError: say which file, whatever failed
        print(f"cannot open {config.support.database}: {err}", file=sys.stderr)
        return 1
    try:
        result = db.ingest(events, places)
    except Conflict as conflict:
        print("conflicting event ids; nothing was stored", file=sys.stderr)
        for error in conflict.errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    finally:
        db.close()
    print(
        f"{len(events)} events: {result.stored} stored, {result.duplicates} already stored, "
        f"in {config.support.database}"
    )
    if result.stored:
        print("a running exporter picks them up on its next reload (SIGHUP or POST /-/reload)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
