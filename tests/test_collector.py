"""Month gauges as Prometheus reads them: exact time for real calendar months."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sla_exporter.collector import ServiceCollector
from sla_exporter.config import parse
from sla_exporter.ledger import Ledger, ms, slot
from sla_exporter.probes.base import ProbeResult, Reason
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


MAIL = """
sla: {name: Mailpro}
services:
  delivery:
    interval: 1m
    mail_delivery:
      submit: {host: smtp.test, from: probe@mail.test, auth: {username: probe, password: x}}
      to: inbox@mail.test
      mailbox: {host: imap.test, username: inbox, password: x}
  domain: {interval: 1m, mail_domain: {domain: mail.test}}
"""


def test_deliveries_late_messages_and_checks_are_exposed_exactly() -> None:
    config = parse(MAIL, "sla.yml")
    store = Store()
    store.configure(config)
    for delivery in (0.2, 0.25, 0.7, 1.5, 400.0):  # 0.25 is in the 0.25 bucket (le: <=)
        store.record("delivery", ProbeResult(True, delivery, delivery=delivery), False)
    late = ProbeResult(False, 30.0, Reason.NOT_DELIVERED, late=2)
    store.record("delivery", late, False)
    checks = MappingProxyType({"mx": True, "spf": False, "dkim:s1": True})
    store.record("domain", ProbeResult(False, 0.1, Reason.SPF, checks=checks, dnssec=False), False)
    registry = CollectorRegistry()
    registry.register(ServiceCollector(store, lambda: None, lambda: config, lambda: 0.0))
    got = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            labels = dict(sample.labels)
            service = labels.pop("sla_service", "")
            got[(sample.name, service, tuple(sorted(labels.items())))] = sample.value
    bucket = "sla_probe_delivery_seconds_bucket"
    assert got[(bucket, "delivery", (("le", "0.25"),))] == 2
    assert got[(bucket, "delivery", (("le", "1.0"),))] == 3
    assert got[(bucket, "delivery", (("le", "2.0"),))] == 4
    assert got[(bucket, "delivery", (("le", "300.0"),))] == 4
    assert got[(bucket, "delivery", (("le", "+Inf"),))] == 5
    assert got[("sla_probe_delivery_seconds_count", "delivery", ())] == 5
    assert got[("sla_probe_delivery_seconds_sum", "delivery", ())] == pytest.approx(402.65)
    assert got[("sla_probe_late_deliveries_total", "delivery", ())] == 2
    assert got[("sla_probe_check_success", "domain", (("check", "spf"),))] == 0
    assert got[("sla_probe_check_success", "domain", (("check", "dkim:s1"),))] == 1
    assert got[("sla_probe_dnssec_validated", "domain", ())] == 0
    # Only the delivery kind has delivery series; only a kind with checks has check series.
    assert not any(name.startswith("sla_probe_delivery") and s == "domain" for name, s, _ in got)
    assert not any(name == "sla_probe_check_success" and s == "delivery" for name, s, _ in got)
