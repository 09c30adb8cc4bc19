"""./run.sh as a newcomer runs it: from another folder, with their own SLA file.

The script itself, with its own processes; only the ports are moved (EXPORTER_PORT, ...) so the
test can run beside a stack someone already has on the default ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_for
from tests.stack import ROOT, http_get

pytestmark = pytest.mark.slow

# A service that is never there: it fails every probe, so a page comes soon. 10s, not 1s: the
# exporter is scraped every 15s, and SLAProbesNotRunning would page about a 1s interval whose
# last probe looks 4 intervals old between two scrapes.
OWN_SLA = """
sla:
  name: Newcomer SLA
  timezone: America/New_York
  objective: 0.99
services:
  shop:
    interval: 10s
    timeout: 2s
    http: {url: "http://127.0.0.1:%d/"}
"""

# The first line of a block in the pages file: local time with offset, route, status, alert.
PAGE_HEAD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d  [a-z-]+  (FIRING|RESOLVED)( \(reminder\))?  \w+"
)


@dataclass
class Run:
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)


def start_run_sh(cwd: Path, env: dict[str, str], *args: str) -> Run:
    popen = subprocess.Popen(
        [str(ROOT / "run.sh"), *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # Ctrl-C is sent to the script, as a terminal would
    )
    run = Run(popen)

    def read() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            run.lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return run


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, Path]]:
    """run.sh started from a folder of its own with SLA_CONFIG=my-sla.yml, as the README says."""
    home = tmp_path_factory.mktemp("newcomer")
    (home / "my-sla.yml").write_text(OWN_SLA % free_port())
    ports = {
        name: str(free_port())
        for name in ("EXPORTER_PORT", "PROMETHEUS_PORT", "ALERTMANAGER_PORT", "RECEIVER_PORT")
    }
    run = start_run_sh(home, {"SLA_CONFIG": "my-sla.yml", **ports})
    data: Path | None = None
    try:
        wait_for(
            lambda: "Ctrl-C stops everything." in run.output() or run.popen.poll() is not None,
            "run.sh to say it is running",
            timeout=120,
        )
        assert "Ctrl-C stops everything." in run.output(), run.output()
        found = re.search(r"data and logs in (\S+)/\)", run.output())
        assert found, run.output()
        data = Path(found.group(1))
        yield run, data
    finally:
        if run.popen.poll() is None:
            os.kill(run.popen.pid, signal.SIGINT)
            try:
                run.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(run.popen.pid, signal.SIGKILL)
        if data is not None and data.parent == ROOT / "run":
            shutil.rmtree(data, ignore_errors=True)


def test_every_address_run_sh_prints_answers_200(own_stack: tuple[Run, Path]) -> None:
    run, _ = own_stack
    urls = re.findall(r"https?://\S+", run.output())
    assert len(urls) >= 6, run.output()
    for url in urls:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200, url
    # The commands it prints for Alertmanager, which has no UI here, work too.
    amtool = re.compile(r"^\s+\w+\s+(amtool \S+ (?:alert|silence) query)$", re.M)
    for command in amtool.findall(run.output()):
        result = subprocess.run(command.split(), capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, (command, result.stderr)


def test_an_own_sla_file_starts_clean_in_a_folder_of_its_own(own_stack: tuple[Run, Path]) -> None:
    run, data = own_stack
    assert data.parent == ROOT / "run" and data.name.startswith("my-sla-"), data
    assert (data / "prometheus").is_dir() and (data / "sla-ledger.json").parent == data
    prometheus = re.search(r"Prometheus\s+(http://127.0.0.1:\d+)", run.output())
    assert prometheus
    # Only this file's service in this Prometheus: nothing of the demo's (or anyone's) before.
    # Over all the samples this Prometheus has, not just the last 5 minutes.
    query = urllib.parse.urlencode(
        {"query": "count by (sla_service) (last_over_time(sla_probes_total[400d]))"}
    )
    url = f"{prometheus.group(1)}/api/v1/query?{query}"
    body = wait_for(lambda: (b := http_get(url)) and "shop" in b and b, "shop scraped", 60)
    assert body.count('"sla_service"') == 1, body


def test_pages_land_in_the_pages_file_one_block_each_and_nothing_else(
    own_stack: tuple[Run, Path],
) -> None:
    _, data = own_stack
    pages = data / "pages.log"
    text = wait_for(
        lambda: "SLAServiceDown shop" in pages.read_text() and pages.read_text(),
        "the page about shop in pages.log",
        timeout=150,
    )
    blocks = [b for b in text.split("\n\n") if b.strip()]
    for block in blocks:
        lines = block.splitlines()
        assert PAGE_HEAD.match(lines[0]), block
        assert all(line.startswith("  ") for line in lines[1:]), block
    [down] = [b for b in blocks if "FIRING  SLAServiceDown shop (critical)" in b]
    # Times in the SLA's zone: New York is -05:00 or -04:00, never +00:00.
    assert re.search(r"failing since \S+ \S+ -0[45]:00 \(America/New_York\)", down), down
    assert re.search(r"Since:\s+\S+ \S+-0[45]:00", down), down


def test_ctrl_c_stops_everything_without_reporting_a_crash(own_stack: tuple[Run, Path]) -> None:
    run, _ = own_stack
    os.kill(run.popen.pid, signal.SIGINT)
    assert run.popen.wait(timeout=30) == 0
    time.sleep(0.2)  # the reader thread takes the last lines
    tail = run.output().split("Ctrl-C stops everything.")[1]
    assert "exited" not in tail, tail
    assert "stopping..." in tail
    exporter = re.search(r"exporter\s+(http://127.0.0.1:\d+)/", run.output())
    assert exporter and http_get(exporter.group(1) + "/-/healthy", timeout=1) is None


def test_a_bad_sla_file_fails_at_once_with_the_exporters_own_message(tmp_path: Path) -> None:
    (tmp_path / "my-sla.yml").write_text((OWN_SLA % 9).replace("interval:", "intervall:"))
    started = time.monotonic()
    result = subprocess.run(
        [str(ROOT / "run.sh")],
        cwd=tmp_path,
        env={**os.environ, "SLA_CONFIG": "my-sla.yml", "EXPORTER_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert time.monotonic() - started < 30  # not the 52 s of waiting for an exporter
    # The path as typed, found where it was typed, and the exporter's error for it.
    assert f"{tmp_path}/my-sla.yml: 1 error" in result.stderr, result.stderr
    assert 'unknown key "intervall"' in result.stderr, result.stderr
    digest = hashlib.sha1(str((tmp_path / "my-sla.yml").resolve()).encode()).hexdigest()[:8]
    assert not (ROOT / "run" / f"my-sla-{digest}").exists(), "a folder for a file that never ran"


def test_an_sla_file_that_does_not_exist_is_named_with_where_it_was_looked_for(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [str(ROOT / "run.sh")],
        cwd=tmp_path,
        env={**os.environ, "SLA_CONFIG": "nope.yml"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"SLA_CONFIG=nope.yml: no such file (relative paths are taken from {tmp_path})" in (
        result.stderr
    )


def test_the_demo_starts_prints_addresses_that_answer_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """./run.sh with no SLA file, on ports and a folder of its own (not the repository's run/)."""
    ports = {
        name: str(free_port())
        for name in (
            "EXPORTER_PORT",
            "PROMETHEUS_PORT",
            "ALERTMANAGER_PORT",
            "RECEIVER_PORT",
            "DEMO_HTTP_PORT",
            "DEMO_SMTP_PORT",
            "DEMO_IMAP_PORT",
            "DEMO_DNS_PORT",
        )
    }
    run = start_run_sh(tmp_path, {**ports, "DEMO_RUN_DIR": str(tmp_path / "demo")})
    try:
        wait_for(
            lambda: "Ctrl-C stops everything." in run.output() or run.popen.poll() is not None,
            "run.sh to say the demo is running",
            timeout=120,
        )
        assert "Ctrl-C stops everything." in run.output(), run.output()
        urls = re.findall(r"https?://\S+", run.output())
        assert f"http://127.0.0.1:{ports['DEMO_HTTP_PORT']}/-/demo" in urls
        for url in urls:
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200, url
        # Every demo service probed and up: its secrets and CA reached the exporter.
        metrics = f"http://127.0.0.1:{ports['EXPORTER_PORT']}/metrics"

        def successes() -> list[str]:
            text = http_get(metrics) or ""
            return [
                line.split()[-1]
                for line in text.splitlines()
                if line.startswith("sla_probe_success{")
            ]

        wait_for(lambda: successes() == ["1.0"] * 7, "the seven demo services up", timeout=60)
    finally:
        os.kill(run.popen.pid, signal.SIGINT)
        code = run.popen.wait(timeout=30)
    time.sleep(0.2)
    assert code == 0
    assert "exited" not in run.output().split("Ctrl-C stops everything.")[1]


HA_PORTS = (
    "EXPORTER_PORT",
    "EXPORTER_B_PORT",
    "PROMETHEUS_PORT",
    "PROMETHEUS_B_PORT",
    "ALERTMANAGER_PORT",
    "ALERTMANAGER_B_PORT",
    "ALERTMANAGER_CLUSTER_PORT",
    "ALERTMANAGER_B_CLUSTER_PORT",
    "VICTORIA_PORT",
    "RECEIVER_PORT",
    "DEMO_HTTP_PORT",
    "DEMO_SMTP_PORT",
    "DEMO_IMAP_PORT",
    "DEMO_DNS_PORT",
)


def test_run_sh_ha_starts_each_pair_and_the_store_natively_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    """./run.sh --ha: two exporter replicas, two Prometheus, two Alertmanagers in a cluster and
    VictoriaMetrics, no Docker; every address it prints answers, and everything is wired."""
    ports = {name: str(free_port()) for name in HA_PORTS}
    run = start_run_sh(tmp_path, {**ports, "DEMO_RUN_DIR": str(tmp_path / "demo")}, "--ha")
    try:
        wait_for(
            lambda: "Ctrl-C stops everything." in run.output() or run.popen.poll() is not None,
            "run.sh --ha to say it is running",
            timeout=180,
        )
        assert "Ctrl-C stops everything." in run.output(), run.output()
        urls = re.findall(r"https?://\S+", run.output())
        for url in urls:
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200, url
        # The data apart from the plain demo's: the HA stack's own months.
        assert (tmp_path / "demo" / "ha" / "sla-ledger-b.json").is_file()

        def query(port: str, promql: str) -> list[dict[str, object]]:
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode(
                {"query": promql}
            )
            body = json.loads(http_get(url) or "{}")
            return list(body.get("data", {}).get("result", []))

        # Both Prometheus scrape both replicas; both write to the store, without their label.
        for port in (ports["PROMETHEUS_PORT"], ports["PROMETHEUS_B_PORT"]):
            wait_for(lambda p=port: len(query(p, 'up{job="sla"} == 1')) == 2, "both replicas up")
        stored = 'count by (instance, prometheus_replica) (sla_probe_success{sla_service="api"})'
        wait_for(
            lambda: len(query(ports["VICTORIA_PORT"], stored)) == 2,
            "both replicas' series in VictoriaMetrics",
            timeout=60,
        )
        assert "prometheus_replica" not in json.dumps(query(ports["VICTORIA_PORT"], stored))
        # The Alertmanagers are one cluster of two.
        for port in (ports["ALERTMANAGER_PORT"], ports["ALERTMANAGER_B_PORT"]):
            status = json.loads(http_get(f"http://127.0.0.1:{port}/api/v2/status") or "{}")
            assert status["cluster"]["status"] == "ready", status
            assert len(status["cluster"]["peers"]) == 2, status
    finally:
        os.kill(run.popen.pid, signal.SIGINT)
        code = run.popen.wait(timeout=60)
    time.sleep(0.2)
    assert code == 0
    assert "exited" not in run.output().split("Ctrl-C stops everything.")[1]


def test_run_sh_refuses_an_argument_it_does_not_know(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ROOT / "run.sh"), "--hq"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "usage: ./run.sh [--ha]" in result.stderr
