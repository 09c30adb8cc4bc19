"""The highly available topology, with real processes on loopback and faults during an outage.

Two exporter replicas, two Prometheus servers, two Alertmanagers in a cluster and
VictoriaMetrics as the long-term store (tests/stack.py, running_ha_stack), plus a witness: an
exporter on its own that nobody kills, the run without faults. During a real outage of the
demo API, one Alertmanager, one Prometheus and one exporter replica are killed with SIGKILL and
started again. On-call must get exactly one page and one resolve; the month must be the
witness's, slot for slot; the month in VictoriaMetrics must be the month in Prometheus, for
sla-report too; and an exporter whose ledger is lost resumes the month from VictoriaMetrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sla_exporter.ledger import phase
from tests.helpers import free_port, wait_for
from tests.stack import HAStack, Member, http_get, running_ha_stack

pytestmark = pytest.mark.slow

INTERVAL = 2.0  # tests/stack.py HA_SLA


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HAStack]:
    with running_ha_stack(tmp_path_factory.mktemp("ha")) as stack:
        yield stack


def mid_slot() -> None:
    """Sleep until the middle of a slot of `api`: every exporter probes at the slot's start,
    so a switch half a slot away is seen alike by all of them."""
    start = phase("api", int(INTERVAL * 1000)) / 1000
    time.sleep((start + INTERVAL / 2 - time.time()) % INTERVAL)


def about_api(stack: HAStack) -> list[tuple[str, str, str]]:
    return [
        (n["route"], n["status"], n["labels"]["alertname"])
        for n in stack.notifications()
        if n["labels"].get("sla_service") == "api"
    ]


def runs(url: str, since: int, until: int) -> list[tuple[int, int, bool]]:
    """The runs of `api` an exporter holds for [since, until) (ms), clipped to it."""
    document = json.loads(http_get(url + "/api/v1/months") or "{}")
    months = document["services"]["api"]["months"]
    return [
        (max(a, since), min(b, until), up)
        for key in sorted(months)
        for a, b, up in months[key]
        if a < until and b > since
    ]


def month(stack: HAStack, base: str, at: float) -> dict[str, float]:
    """The current month of `api` at `at`, one copy per location (the max over the replicas
    of each state, as the month rules must read it), from a Prometheus or VictoriaMetrics."""
    found = stack.query(
        base, 'max by (state) (sla_month_seconds{sla_service="api", job="sla"})', at
    )
    return {s["metric"]["state"]: float(s["value"][1]) for s in found}


def report(base: str, exporter: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sla_exporter.report",
            *("--prometheus.url", base, "--exporter.url", exporter),
            *("--month", "current", "--format", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_kill_9_of_one_of_each_during_an_outage_pages_once_resolves_once_and_loses_no_slot(
    ha: HAStack,
) -> None:
    started = time.monotonic()
    wait_for(
        lambda: len(ha.query(ha.url("prometheus-b"), "up{job='sla'} == 1")) == 2,
        "both replicas scraped",
    )
    time.sleep(2 * INTERVAL)  # every exporter past its first slot
    begin = int(time.time() * 1000)

    mid_slot()
    ha.set_service("api", up=False)
    # Before anything pages, one Alertmanager goes: the other pages (after its peer timeout,
    # if the dead one came first in the cluster's order and was to send it).
    ha.members["am-a"].kill()
    wait_for(lambda: about_api(ha), "the page", timeout=60)
    # Then, with the alert firing: one Prometheus and one exporter replica.
    ha.members["prometheus-a"].kill()
    ha.members["exporter-a"].kill()
    time.sleep(INTERVAL)
    # Each comes back during the outage: the Alertmanager takes the cluster's notification log
    # and hears of the firing alert again, the exporter takes its gap from the other replica,
    # the Prometheus picks up the alert it had.
    for name in ("am-a", "exporter-a", "prometheus-a"):
        ha.members[name].start(ha.workdir)
    wait_for(lambda: ha.cluster_peers("am-a") == 2, "am-a back in the cluster", timeout=60)
    wait_for(
        lambda: ha.query(ha.url("prometheus-a"), 'ALERTS{alertstate="firing",sla_service="api"}'),
        "the restarted Prometheus firing the alert again",
        timeout=60,
    )
    wait_for(
        lambda: _alert_in(ha, "am-a"),
        "the restarted Alertmanager holding the alert",
        timeout=30,
    )
    time.sleep(INTERVAL)  # a resend or two with everybody back: still one page
    mid_slot()
    ha.set_service("api", up=True)
    wait_for(lambda: len(about_api(ha)) >= 2, "the resolve", timeout=60)
    time.sleep(10)  # two group intervals: a second page or resolve would be here by now
    assert about_api(ha) == [
        ("page", "firing", "SLAServiceDown"),
        ("page", "resolved", "SLAServiceDown"),
    ], ha.notifications()
    assert len(ha.notifications()) == 2, ha.notifications()  # and nothing else either

    # The month: the witness's, slot for slot, in both replicas.
    end = int(time.time() * 1000) - int(2 * INTERVAL * 1000)  # slots decided by now
    witness = runs(ha.witness, begin, end)
    down = [(a, b) for a, b, up in witness if not up]
    assert len(down) == 1 and (down[0][1] - down[0][0]) % int(INTERVAL * 1000) == 0, witness

    def same() -> bool:
        return all(runs(ha.url(e), begin, end) == witness for e in ("exporter-a", "exporter-b"))

    wait_for(same, "both replicas holding the witness's runs", timeout=10)

    # The month series: the same in both Prometheus servers and in VictoriaMetrics, and the
    # failed time the witness counted.
    at = time.time() - 3
    figures = {
        name: month(ha, base, at)
        for name, base in (
            ("prometheus-a", ha.url("prometheus-a")),
            ("prometheus-b", ha.url("prometheus-b")),
            ("victoria-metrics", ha.victoria),
        )
    }
    witness_down = sum(b - a for a, b in down) / 1000
    for name, states in figures.items():
        assert states["down"] >= witness_down, (name, states)  # the outage, at least
        assert states["unknown"] == 0.0, (name, states)  # no slot lost to a kill
    assert figures["prometheus-a"]["down"] == figures["prometheus-b"]["down"]
    assert figures["victoria-metrics"]["down"] == figures["prometheus-b"]["down"]
    # The store keeps one series per exporter, without the servers' replica label.
    series = ha.query(
        ha.victoria,
        'count by (prometheus_replica, instance) (sla_month_seconds{sla_service="api"})',
    )
    assert {s["metric"].get("prometheus_replica") for s in series} == {None}
    assert len(series) == 2

    # sla-report reads the month from VictoriaMetrics as from Prometheus.
    from_store = report(ha.victoria, ha.url("exporter-a"))
    from_prometheus = report(ha.url("prometheus-b"), ha.url("exporter-a"))
    [store_api] = [s for s in from_store["services"] if s["service"] == "api"]
    [prometheus_api] = [s for s in from_prometheus["services"] if s["service"] == "api"]
    assert store_api["figure"]["down_seconds"] == prometheus_api["figure"]["down_seconds"]
    assert store_api["figure"]["unknown_seconds"] == 0.0

    # Every ledger of the location lost: a new exporter resumes the months from the store.
    instance = ha.url("exporter-a").removeprefix("http://")
    address = f"127.0.0.1:{free_port()}"
    lost = Member(
        "recovered",
        [
            sys.executable,
            "-m",
            "sla_exporter",
            *("--config.file", str(ha.workdir / "sla.yml"), "--web.listen-address", address),
            *("--storage.path", str(ha.workdir / "recovered.json")),
            *("--storage.recover-from", ha.victoria),
            *("--storage.recover-match", f'{{job="sla",instance="{instance}"}}'),
        ],
        f"http://{address}",
    )
    try:
        lost.start(ha.workdir)
        metrics = http_get(lost.url + "/metrics") or ""
        resumed = {
            line.split('state="')[1].split('"')[0]: float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("sla_month_seconds{") and 'sla_service="api"' in line
        }
        assert resumed["down"] == figures["victoria-metrics"]["down"], resumed
    finally:
        lost.stop()
    print(f"HA scenario: {time.monotonic() - started:.0f} s")


def _alert_in(ha: HAStack, name: str) -> bool:
    body = http_get(ha.url(name) + "/api/v2/alerts?filter=sla_service%3D%22api%22") or "[]"
    return any(a["status"]["state"] == "active" for a in json.loads(body))
