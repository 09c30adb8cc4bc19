"""The demo's pager: each page once, a resolution saying what happened, times in the SLA's zone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sla_demo import Pager

DOWN = {"alertname": "SLAServiceDown", "severity": "critical", "sla_service": "api"}


def alert(status: str, labels: dict[str, str] = DOWN, **annotations: str) -> dict[str, Any]:
    """An alert as Alertmanager's webhook sends it (Go's times, nanoseconds and all)."""
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "api is down", **annotations},
        "startsAt": "2026-12-04T04:50:42.123456789Z",
        "endsAt": "2026-12-04T04:54:42.5Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "fingerprint": "a1b2c3",
    }


def test_a_page_shows_its_times_in_the_slas_zone_with_the_offset(tmp_path: Path) -> None:
    pager = Pager(tmp_path / "pages.log", "Europe/Zurich")
    text = pager.block("page", alert("firing", description="api failed 3 probes in a row"))
    assert text is not None
    lines = text.splitlines()
    assert lines[0].endswith("  page  FIRING  SLAServiceDown api (critical)")
    assert lines[1:4] == [
        "  api is down",
        "  api failed 3 probes in a row",
        "  Since:       2026-12-04 05:50:42+01:00",
    ]
    # In July the same zone is +02:00: the offset is the one of the time shown.
    summer = alert("firing") | {"startsAt": "2026-07-04T04:50:42Z", "fingerprint": "b"}
    assert "  Since:       2026-07-04 06:50:42+02:00" in (pager.block("page", summer) or "")


def test_a_resolution_says_how_long_the_service_was_down_and_since_when_it_is_back(
    tmp_path: Path,
) -> None:
    pager = Pager(tmp_path / "pages.log", "Europe/Zurich")
    pager.block("page", alert("firing"))
    text = pager.block("page", alert("resolved"))
    assert text is not None
    assert text.splitlines()[1] == (
        "  api was down for 4 min, from 2026-12-04 05:50:42+01:00; "
        "back since 2026-12-04 05:54:42+01:00."
    )
    assert "api is down" not in text


def test_a_resolution_alertmanager_sends_again_with_its_group_is_shown_once(
    tmp_path: Path,
) -> None:
    pager = Pager(tmp_path / "pages.log", "UTC")
    assert pager.block("page", alert("firing")) is not None
    assert pager.block("page", alert("resolved")) is not None
    assert pager.block("page", alert("resolved")) is None


def test_a_page_repeated_after_the_repeat_interval_is_shown_as_a_reminder(tmp_path: Path) -> None:
    pager = Pager(tmp_path / "pages.log", "UTC")
    pager.block("page", alert("firing"))
    again = pager.block("page", alert("firing"))
    assert again is not None and "FIRING (reminder)  SLAServiceDown api" in again


def test_other_alerts_resolve_with_how_long_they_fired_and_what_they_had_said(
    tmp_path: Path,
) -> None:
    burn = {"alertname": "SLAErrorBudgetBurn", "severity": "critical", "sla_service": "api"}
    pager = Pager(None, "UTC")
    text = pager.block("page", alert("resolved", burn, summary="api burns 14.4 times too fast"))
    assert text is not None
    assert text.splitlines()[1] == (
        "  Over: fired for 4 min, from 2026-12-04 04:50:42+00:00 to 2026-12-04 04:54:42+00:00. "
        "It had said: api burns 14.4 times too fast"
    )
