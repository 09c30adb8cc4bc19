"""Resuming the month from Prometheus: a real exporter, a real Prometheus, a lost ledger."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port, wait_for
from tests.stack import Process, http_get, launch, scraping_prometheus

pytestmark = pytest.mark.slow

STATES = ("up", "down", "unknown", "excluded", "maintenance", "unmonitored")


def month_seconds(exporter: str) -> dict[str, float]:
    """The current month of `api` as the exporter exposes it: state -> seconds."""
    text = http_get(f"{exporter}/metrics") or ""
    months: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sla_month_seconds" and sample.labels["sla_service"] == "api":
                months.setdefault(sample.labels["month"], {})[sample.labels["state"]] = sample.value
    return months[max(months)] if months else {}


class Bench:
    """A target, an exporter that can be restarted, and a Prometheus scraping it twice: once
    as location zrh and once as fra (as if two locations' series were in one Prometheus)."""

    def __init__(self, workdir: Path, stack: ExitStack) -> None:
        self.workdir, self.stack = workdir, stack
        target = free_port()
        self.launch(
            "target",
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(target)],
            f"http://127.0.0.1:{target}/",
        )
        self.config = workdir / "sla.yml"
        self.config.write_text(
            "sla: {name: Recovery, timezone: Europe/Zurich}\n"
            "services:\n"
            f"  api: {{interval: 1s, timeout: 800ms, http: {{url: 'http://127.0.0.1:{target}/'}}}}\n"
        )
        self.ledger = workdir / "ledger.json"
        self.port = free_port()
        self.exporter = f"http://127.0.0.1:{self.port}"
        self.prometheus = scraping_prometheus(stack, workdir, self.port, ["zrh", "fra"])

    def launch(self, name: str, args: list[str], ready: str | None) -> Process:
        return launch(self.stack, name, args, self.workdir, ready)

    def exporter_args(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "sla_exporter",
            "--config.file",
            str(self.config),
            "--web.listen-address",
            f"127.0.0.1:{self.port}",
            "--storage.path",
            str(self.ledger),
            *extra,
        ]

    def last_in_prometheus(self) -> dict[str, float]:
        """The newest month figures of api that Prometheus scraped from location zrh."""
        query = 'sla_month_seconds{sla_service="api",location="zrh"}'
        body = json.loads(http_get(f"{self.prometheus}/api/v1/query?query={query}") or "{}")
        months: dict[str, dict[str, float]] = {}
        for sample in body["data"]["result"]:
            labels = sample["metric"]
            months.setdefault(labels["month"], {})[labels["state"]] = float(sample["value"][1])
        return months[max(months)] if months else {}


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    with ExitStack() as stack:
        yield Bench(tmp_path, stack)


def test_a_lost_ledger_resumes_from_prometheus_with_only_the_unrecorded_time_unknown(
    bench: Bench,
) -> None:
    first = bench.launch("exporter-1", bench.exporter_args(), f"{bench.exporter}/-/ready")
    wait_for(lambda: bench.last_in_prometheus().get("up", 0) >= 5, "five seconds up in Prometheus")
    first.stop()
    # What Prometheus holds now is what the recovery reads: nothing scrapes any more.
    before = bench.last_in_prometheus()
    bench.ledger.unlink()

    second = bench.launch(
        "exporter-2",
        bench.exporter_args(
            "--storage.recover-from",
            bench.prometheus,
            "--storage.recover-match",
            '{location="zrh"}',
        ),
        f"{bench.exporter}/-/ready",
    )
    wait_for(lambda: month_seconds(bench.exporter).get("up", 0) > before["up"] + 2, "probing on")
    second.stop()

    # The month continues: its first part is exactly what Prometheus had, then the new
    # process's own results; the time between them, which nobody recorded, is unknown.
    book = json.loads(bench.ledger.read_text())["services"]["api"]
    [(key, month)] = [(k, m) for k, m in book["months"].items() if m["carried"]]
    assert month["carried"] == {state: round(before[state] * 1000) for state in STATES}
    start_ms = month["terms"][0][0]
    assert month["carried_until"] == start_ms + sum(month["carried"].values())
    first_run = month["runs"][0][0]
    assert first_run > month["carried_until"]
    log = (bench.workdir / "exporter-2.log").read_text()
    assert f"recovered {key} of api from Prometheus" in log

    # The figures the second process exposed at its end agree with that to the millisecond.
    third = bench.launch("exporter-3", bench.exporter_args(), f"{bench.exporter}/-/ready")
    now = month_seconds(bench.exporter)
    third.stop()
    assert now["unmonitored"] == before["unmonitored"]
    assert now["down"] == 0
    gap = (first_run - month["carried_until"]) / 1000
    # exporter-3 started later still: its own restart gap is unknown as well, and no more.
    assert now["unknown"] >= gap
    assert now["up"] >= before["up"] + 2


def test_a_selector_that_matches_two_locations_is_refused_with_what_to_do(bench: Bench) -> None:
    first = bench.launch("exporter-1", bench.exporter_args(), f"{bench.exporter}/-/ready")

    def both_locations() -> bool:
        query = quote('count(count by (location) (sla_month_seconds{sla_service="api"}))')
        body = json.loads(http_get(f"{bench.prometheus}/api/v1/query?query={query}") or "{}")
        result = body.get("data", {}).get("result", [])
        return bool(result) and result[0]["value"][1] == "2"

    wait_for(both_locations, "the month in Prometheus as both locations")
    first.stop()
    bench.ledger.unlink()
    refused = bench.launch(
        "exporter-2", bench.exporter_args("--storage.recover-from", bench.prometheus), None
    )
    assert refused.popen.wait(timeout=30) == 1
    log = (bench.workdir / "exporter-2.log").read_text()
    assert '{job="sla"} selects several series of api' in log
    assert "narrow --storage.recover-match" in log
    assert not bench.ledger.exists()  # nothing half-recovered was written


def test_an_unreachable_prometheus_stops_the_start_with_its_address(bench: Bench) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    refused = bench.launch("exporter", bench.exporter_args("--storage.recover-from", nobody), None)
    assert refused.popen.wait(timeout=30) == 1
    assert f"cannot query Prometheus at {nobody}" in (bench.workdir / "exporter.log").read_text()
