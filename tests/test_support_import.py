"""`sla-support-import`: backfill from CSV and JSON lines, all rows checked, re-runs harmless."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sla_exporter.support.importer import main
from sla_exporter.support.store import TicketDB

SLA = """
sla: {name: MailUp, timezone: Europe/Rome}
services: {website: {http: {url: "http://127.0.0.1:9/"}}}
support:
  database: tickets.db
  token: import-test-token-0123
  calendars:
    mailup:
      timezone: Europe/Rome
      hours: {mon-fri: ["09:00-13:00", "14:00-18:00"]}
      holidays: {country: IT}
  policies:
    standard: {calendar: mailup, targets: {first_response: 4h, resolution: 1 working day}}
"""

CSV = """\
id,ticket,type,time,level,priority,region,plan
e1,4711,created,2026-01-19T09:00:00+01:00,1,,,premium
e2,4711,agent_replied,2026-01-19T10:00:00+01:00,,,,
e3,4712,created,2026-01-19T11:00:00+01:00,2,high,europe,
"""


@pytest.fixture
def sla(tmp_path: Path) -> Path:
    path = tmp_path / "sla.yml"
    path.write_text(SLA)
    return path


def stored(tmp_path: Path) -> int:
    db = TicketDB(tmp_path / "tickets.db")
    try:
        return db.count()
    finally:
        db.close()


def test_a_csv_export_is_stored_and_a_second_run_changes_nothing(
    sla: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "export.csv"
    export.write_text(CSV)
    assert main(["--config.file", str(sla), str(export)]) == 0
    assert "3 events: 3 stored, 0 already stored" in capsys.readouterr().out
    assert main(["--config.file", str(sla), str(export)]) == 0
    assert "3 events: 0 stored, 3 already stored" in capsys.readouterr().out
    assert stored(tmp_path) == 3


def test_json_lines_skip_blank_lines_and_match_the_csv(sla: Path, tmp_path: Path) -> None:
    lines = [
        {"id": "e1", "ticket": 4711, "type": "created", "time": "2026-01-19T09:00:00+01:00",
         "level": 1, "plan": "premium"},
        {"id": "e2", "ticket": "4711", "type": "agent_replied", "time": "2026-01-19T09:30:00Z"},
    ]  # fmt: skip
    export = tmp_path / "export.jsonl"
    export.write_text(json.dumps(lines[0]) + "\n\n" + json.dumps(lines[1]) + "\n")
    assert main(["--config.file", str(sla), str(export)]) == 0
    csv_export = tmp_path / "export.csv"
    csv_export.write_text(CSV)
    # e1 is the same event in both files; e2 differs (another time), so the CSV conflicts.
    assert main(["--config.file", str(sla), str(csv_export)]) == 1
    assert stored(tmp_path) == 2


def test_every_bad_row_is_reported_with_its_line_and_nothing_is_stored(
    sla: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "bad.csv"
    export.write_text(
        CSV
        + "e4,4713,replied,2026-01-19T12:00:00+01:00,,,,\n"
        + "e5,4713,created,19.01.2026 12:00,1,,,\n"
        + "e6,4714,escalated,2026-01-19T12:00:00+01:00,,,,\n"
        + "e1,4711,created,2026-01-19T09:30:00+01:00,1,,,\n"
    )
    assert main(["--config.file", str(sla), str(export)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "4 errors; nothing was stored",
        f'  {export}:5  type: must be "created", "agent_replied", "customer_replied", '
        '"escalated", "paused", "resumed", "resolved" or "reopened", got "replied"',
        f"  {export}:6  time: must be a date and time with a UTC offset, like "
        '2026-11-28T22:00:00+01:00, got "19.01.2026 12:00"',
        f"  {export}:7  level: is required on an escalated event (the new level)",
        f'  {export}:8  id: event "e1" appears twice with different contents (first at {export}:2)',
    ]
    assert not (tmp_path / "tickets.db").exists() or stored(tmp_path) == 0


def test_an_unknown_column_is_reported_once_with_a_hint(
    sla: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "bad.csv"
    export.write_text("id,ticket,type,tim\ne1,1,created,2026-01-19T09:00:00Z\n")
    assert main(["--config.file", str(sla), str(export)]) == 1
    assert f'{export}:1  unknown column "tim"; did you mean "time"?' in capsys.readouterr().err


def test_bad_json_lines_are_reported_by_line(
    sla: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "bad.jsonl"
    export.write_text('{"id": "e1"\n[1, 2]\n')
    assert main(["--config.file", str(sla), str(export)]) == 1
    err = capsys.readouterr().err
    assert f"{export}:1  invalid JSON: Expecting ',' delimiter at line 1 column 12" in err
    assert f"{export}:2  must be an event (a JSON object)" not in err  # one object per line
    assert f"{export}:2  event: must be a JSON object, got list" in err


def test_dry_run_checks_and_stores_nothing(sla: Path, tmp_path: Path) -> None:
    export = tmp_path / "export.csv"
    export.write_text(CSV)
    assert main(["--config.file", str(sla), "--dry-run", str(export)]) == 0
    assert not (tmp_path / "tickets.db").exists()


def test_an_sla_file_without_support_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sla = tmp_path / "sla.yml"
    sla.write_text(SLA.split("support:")[0])
    (tmp_path / "e.csv").write_text(CSV)
    assert main(["--config.file", str(sla), str(tmp_path / "e.csv")]) == 1
    assert "no support section" in capsys.readouterr().err


def test_the_console_script_runs_as_a_process(sla: Path, tmp_path: Path) -> None:
    export = tmp_path / "export.csv"
    export.write_text(CSV)
    command = [sys.executable, "-m", "sla_exporter.support.importer", "--config.file", str(sla)]
    result = subprocess.run(
        [*command, str(export)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    assert "3 stored" in result.stdout
