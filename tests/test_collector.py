"""Month gauges as Prometheus reads them: exact slot counts for real calendar months."""

from __future__ import annotations

from datetime import datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sla_exporter.collector import ServiceCollector
from sla_exporter.config import parse
from sla_exporter.ledger import Ledger
from sla_exporter.store import Store

CONFIG = """
sla: {name: Mailpro, timezone: Europe/Zurich}
services:
  api: {interval: 1m, http: {url: "http://127.0.0.1:9/"}}
  website: {interval: 5m, http: {url: "http://127.0.0.1:9/"}}
"""


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def render(now: float, ledger: Ledger) -> dict[tuple[str, str, str], float]:
    config = parse(CONFIG, "sla.yml")
    store = Store()
    store.configure(config)
    registry = CollectorRegistry()
    registry.register(ServiceCollector(store, lambda: ledger, lambda: config, lambda: now))
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if "month" in sample.labels and "sla_service" in sample.labels:
                key = (sample.name, sample.labels["sla_service"], sample.labels["month"])
                out[key] = sample.value
    return out


@pytest.mark.parametrize(
    ("now", "month", "api_slots", "website_slots"),
    [
        ("2026-11-16T00:00:00+01:00", "2026-11", 43200, 8640),  # 30 days
        ("2026-12-16T00:00:00+01:00", "2026-12", 44640, 8928),  # 31 days
        ("2026-02-10T00:00:00+01:00", "2026-02", 40320, 8064),  # February
        ("2026-03-10T00:00:00+01:00", "2026-03", 44580, 8916),  # 743 hours: clocks go forward
        ("2026-10-10T00:00:00+02:00", "2026-10", 44700, 8940),  # 745 hours: clocks go back
    ],
)
def test_month_slots_are_the_calendar_month_at_the_service_interval(
    now: str, month: str, api_slots: int, website_slots: int
) -> None:
    ledger = Ledger(None, "Europe/Zurich")
    for service in ("api", "website"):  # monitored since long before: whole months count
        ledger.record(service, ts("2025-06-15T12:00:00+00:00"), True, False, 60)
    figures = render(ts(now), ledger)
    assert figures[("sla_month_slots", "api", month)] == api_slots
    assert figures[("sla_month_slots", "website", month)] == website_slots
    assert figures[("sla_month_slot_seconds", "api", month)] == 60
    assert figures[("sla_month_slot_seconds", "website", month)] == 300


def test_elapsed_slots_count_whole_intervals_since_local_midnight_of_the_first() -> None:
    ledger = Ledger(None, "Europe/Zurich")
    ledger.record("api", ts("2026-10-15T12:00:00+00:00"), True, False, 60)
    ledger.record("website", ts("2026-10-15T12:00:00+00:00"), True, False, 300)
    figures = render(ts("2026-11-16T00:02:59+01:00"), ledger)
    assert figures[("sla_month_elapsed_slots", "api", "2026-11")] == 15 * 1440 + 2
    assert figures[("sla_month_elapsed_slots", "website", "2026-11")] == 15 * 288
    # October, when monitoring began (15 Oct 12:00 UTC), counts from that first probe to its
    # end (31 Oct 23:00 UTC): 16 days and 11 hours, all elapsed now that it is finished.
    assert figures[("sla_month_slots", "api", "2026-10")] == (16 * 24 + 11) * 60
    assert figures[("sla_month_elapsed_slots", "api", "2026-10")] == (16 * 24 + 11) * 60
