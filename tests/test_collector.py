"""Month gauges as Prometheus reads them: exact time for real calendar months."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sla_exporter.collector import ServiceCollector
from sla_exporter.config import parse
from sla_exporter.ledger import Ledger, ms, slot
from sla_exporter.store import Store
from tests.helpers import ts

CONFIG = """
sla: {name: Mailpro, timezone: Europe/Zurich}
services:
  api: {interval: 1m, http: {url: "http://127.0.0.1:9/"}}
  website: {interval: 5m, http: {url: "http://127.0.0.1:9/"}}
"""


def render(now: float, ledger: Ledger) -> dict[tuple[str, str, str, str], float]:
    config = parse(CONFIG, "sla.yml")
    store = Store()
    store.configure(config)
    registry = CollectorRegistry()
    registry.register(ServiceCollector(store, lambda: ledger, lambda: config, lambda: now))
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if "month" in sample.labels and "sla_service" in sample.labels:
                labels = sample.labels
                key = (sample.name, labels["sla_service"], labels["month"], labels.get("state", ""))
                out[key] = sample.value
    return out


def monitored_since_june(ledger: Ledger, now: float) -> None:
    """Both services, monitored since long before `now`, every slot up."""
    since = ts("2025-06-15T12:00:00+00:00")
    for service, interval in (("api", 60), ("website", 300)):
        ledger.advance(since, service, 0.99, "down", ())
        start = slot(service, ms(interval), ms(since)) / 1000
        # One result per slot would be half a million records: runs of equal state merge, so
        # one result standing for the whole span gives the same ledger.
        ledger.record(service, start, now - start, up=True)


@pytest.mark.parametrize(
    ("now", "month", "minutes"),
    [
        ("2026-11-16T00:00:00+01:00", "2026-11", 43200),  # 30 days
        ("2026-12-16T00:00:00+01:00", "2026-12", 44640),  # 31 days
        ("2026-02-10T00:00:00+01:00", "2026-02", 40320),  # February
        ("2026-03-10T00:00:00+01:00", "2026-03", 44580),  # 743 hours: clocks go forward
        ("2026-10-10T00:00:00+02:00", "2026-10", 44700),  # 745 hours: clocks go back
    ],
)
def test_the_month_budget_is_one_percent_of_the_calendar_month(
    now: str, month: str, minutes: int
) -> None:
    ledger = Ledger(None, "Europe/Zurich")
    monitored_since_june(ledger, ts(now))
    figures = render(ts(now), ledger)
    for service in ("api", "website"):
        assert figures[("sla_month_error_budget_seconds", service, month, "")] == minutes * 60 / 100
        assert figures[("sla_month_objective_ratio", service, month, "")] == 0.99
    assert figures[("sla_month_slot_seconds", "api", month, "")] == 60
    assert figures[("sla_month_slot_seconds", "website", month, "")] == 300


def test_the_month_is_counted_up_to_the_start_of_each_service_s_current_slot() -> None:
    ledger = Ledger(None, "Europe/Zurich")
    now = ts("2026-11-16T00:02:59+01:00")
    monitored_since_june(ledger, now)
    figures = render(now, ledger)
    start = ts("2026-11-01T00:00:00+01:00")
    for service, interval in (("api", 60), ("website", 300)):
        current = slot(service, ms(interval), ms(now))
        assert ms(figures[("sla_month_seconds", service, "2026-11", "up")]) == current - ms(start)
        for state in ("down", "unknown", "excluded", "maintenance", "unmonitored"):
            assert figures[("sla_month_seconds", service, "2026-11", state)] == 0
        # October, finished: all of its 745 hours up.
        assert figures[("sla_month_seconds", service, "2026-10", "up")] == 745 * 3600
