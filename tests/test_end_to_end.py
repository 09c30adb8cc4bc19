"""End to end with real processes: an outage pages, recovery resolves, maintenance stays quiet.

The demo services, the exporter probing them every second, Prometheus evaluating the shipped
rules every second, and Alertmanager routing to a webhook receiver, all on loopback.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.slow


def maintenance_now(service: str) -> str:
    """A declared window around now for `service`, appended to the demo SLA file."""
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    return (
        f"\nmaintenance:\n  - services: [{service}]\n"
        f"    start: {start.isoformat()}\n    end: {end.isoformat()}\n"
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("stack")
    with running_stack(workdir, extra_config=maintenance_now("sms")) as stack:
        # Every service probed and its result in Prometheus, through the recording rules too.
        wait_for(
            lambda: (
                len(stack.query("sla_service_location:probe_consecutive_failures:count")) == 0
                and len(stack.query("sla_probe_success == 1")) == 7
            ),
            "all seven demo services up in Prometheus",
        )
        yield stack


def pages(stack: Stack, status: str, alertname: str, service: str) -> list[dict[str, Any]]:
    return [
        n
        for n in stack.notifications()
        if n["route"] == "page"
        and n["status"] == status
        and n["labels"].get("alertname") == alertname
        and n["labels"].get("sla_service") == service
    ]


def value(stack: Stack, promql: str) -> float:
    [sample] = stack.query(promql)
    return float(sample["value"][1])


def test_an_outage_pages_on_call_with_the_service_and_severity_and_recovery_resolves_it(
    stack: Stack,
) -> None:
    stack.set_service("api", up=False)
    [page] = wait_for(lambda: pages(stack, "firing", "SLAServiceDown", "api"), "the page", 60)
    # Pooled over locations: the page names the service, not one location.
    assert page["labels"] == {
        "alertname": "SLAServiceDown",
        "severity": "critical",
        "sla_service": "api",
    }
    assert page["annotations"]["summary"] == "api is down"
    assert "body_mismatch" in page["annotations"]["description"]
    assert page["annotations"]["runbook_url"].endswith("docs/runbook.md#slaservicedown")
    assert not pages(stack, "firing", "SLAServiceDown", "website")  # only the broken service

    # The time the page shows is in the SLA's zone (examples/demo.yml: Europe/Zurich).
    assert re.search(
        r"failing since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0[12]:00 \(Europe/Zurich\)",
        page["annotations"]["description"],
    ), page["annotations"]["description"]

    stack.set_service("api", up=True)
    wait_for(lambda: pages(stack, "resolved", "SLAServiceDown", "api"), "the resolution", 60)


def test_after_the_recovery_nothing_new_fires_and_every_resolution_comes_once(
    stack: Stack,
) -> None:
    """The replay of issue 14 on a young Prometheus: outage, page, recovery, then silence.

    Runs after the outage above, on a stack a minute or two old. The burn-rate alerts read that
    minute as "the last hour": they went pending with the outage and paged after the recovery.
    They are only pending at first (`for`), so ALERTS shows them long before they would page.
    """
    assert pages(stack, "resolved", "SLAServiceDown", "api"), "run after the outage test"
    seen = len(stack.notifications())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert not stack.query('ALERTS{sla_service="api"}'), "an alert about api after recovery"
        assert len(stack.notifications()) == seen, stack.notifications()[seen:]
        time.sleep(1)
    about_api = [n for n in stack.notifications() if n["labels"].get("sla_service") == "api"]
    firing = [n["labels"]["alertname"] for n in about_api if n["status"] == "firing"]
    resolved = [n["labels"]["alertname"] for n in about_api if n["status"] == "resolved"]
    assert firing == ["SLAServiceDown"]
    assert resolved == ["SLAServiceDown"]
    # And the receiver's pages file, what on-call reads, tells the same: one page, one end.
    text = (stack.workdir / "pages.log").read_text()
    assert text.count("FIRING  SLAServiceDown api") == 1, text
    assert text.count("RESOLVED  SLAServiceDown api") == 1, text
    assert re.search(r"api was down for \d+ s, from .*; back since .*\+0[12]:00\.", text), text


def test_an_outage_inside_declared_maintenance_pages_nobody_and_leaves_the_month_unchanged(
    stack: Stack,
) -> None:
    month = 'sla_month_seconds{sla_service="sms",state="down"}'
    maintenance = 'sla_month_seconds{sla_service="sms",state="maintenance"}'
    failures_before = value(stack, month)
    maintenance_before = value(stack, maintenance)
    assert value(stack, 'sla_maintenance{sla_service="sms"}') == 1

    stack.set_service("sms", up=False)
    # Long enough for SLAServiceDown to have paged twice over had sms been outside maintenance.
    wait_for(
        lambda: value(stack, 'sla_probe_consecutive_failures{sla_service="sms"}') >= 6,
        "six failed probes of sms",
    )
    wait_for(
        lambda: stack.query('ALERTS{alertname="SLAServiceInMaintenance",sla_service="sms"}'),
        "the maintenance alert that inhibits",
    )
    stack.set_service("sms", up=True)

    assert not [n for n in stack.notifications() if n["labels"].get("sla_service") == "sms"]
    assert not stack.query('ALERTS{alertname="SLAServiceDown",sla_service="sms"}')
    assert value(stack, month) == failures_before
    assert value(stack, maintenance) >= maintenance_before + 6  # six 1-second slots at least
    # The month counts no maintenance time as down: no failed slot, no figure of what probes saw.
    current = " and on (location, month) location_month:sla_month_current:bool"
    failed = stack.query(
        f'sla_service_location_month:failed_slots:count{{sla_service="sms"}}{current}'
    )
    assert [float(s["value"][1]) for s in failed] == [0.0]
    observed = stack.query(
        f'sla_service_location_month:probe_availability:ratio{{sla_service="sms"}}{current}'
    )
    assert observed == []  # every sms probe so far ran in maintenance: no figure, not NaN
