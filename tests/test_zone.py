"""sla_timezone_offset_seconds: the SLA zone's UTC offset when scraped, DST included."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sla_exporter import config as config_mod
from sla_exporter.zone import ZoneCollector

CONFIG = """
sla: {name: Zone test, timezone: %s}
services:
  web: {http: {url: "http://127.0.0.1:9/"}}
"""


@pytest.mark.parametrize(
    ("zone", "when", "offset"),
    [
        ("Europe/Zurich", datetime(2026, 1, 15, 12, tzinfo=UTC), 3600.0),
        ("Europe/Zurich", datetime(2026, 7, 15, 12, tzinfo=UTC), 7200.0),
        # The switch itself: 2026-03-29 01:00 UTC is 03:00 CEST; a second before, 01:59:59 CET.
        ("Europe/Zurich", datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC), 3600.0),
        ("Europe/Zurich", datetime(2026, 3, 29, 1, 0, 0, tzinfo=UTC), 7200.0),
        ("America/St_Johns", datetime(2026, 1, 15, 12, tzinfo=UTC), -12600.0),
        ("UTC", datetime(2026, 7, 15, 12, tzinfo=UTC), 0.0),
    ],
)
def test_the_offset_is_the_zones_at_the_time_of_the_scrape(
    tmp_path: Path, zone: str, when: datetime, offset: float
) -> None:
    path = tmp_path / "sla.yml"
    path.write_text(CONFIG % zone)
    config = config_mod.load(str(path))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ZoneCollector(lambda: config, when.timestamp))
    text = generate_latest(registry).decode()
    assert f'sla_timezone_offset_seconds{{timezone="{zone}"}} {offset}' in text


def test_nothing_is_exposed_before_a_config_is_loaded() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ZoneCollector(lambda: None, lambda: 0.0))
    assert "sla_timezone" not in generate_latest(registry).decode()
