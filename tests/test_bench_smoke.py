"""Smoke run of the benchmark harness (bench/): every section runs end to end and writes its JSON.

Not a benchmark: `python -m bench --quick` measures seconds, not minutes, and judges nothing
(the figures are in bench/RESULTS.md, from the full run). It checks that the harness still
works: the targets start, both exporters are driven, every figure is there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_smoke_run_of_the_benchmark_harness_fills_every_section(tmp_path: Path) -> None:
    for tool in ("nginx", "prometheus-blackbox-exporter"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} is missing: bench/run.sh installs it")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "cpu,latency,scale,shards",
            "--kinds",
            "http",
            "--history",
            "3",  # the scale section's exporter starts on a ledger of three months
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CPU seconds per 1000 probes" in done.stdout
    results = json.loads((tmp_path / "latest-quick.json").read_text())
    assert results["quick"] is True

    http = results["cpu"]["http"]
    assert http["ours"] > 0 and http["blackbox"] > 0 and http["ratio"] > 0
    for runs in http["runs"].values():
        assert all(run["probes"] > 0 and run["failures"] == 0 for run in runs)

    for concurrency in ("1", "20"):
        for who in ("ours", "blackbox", "floor"):
            errors = results["latency"][concurrency][who]
            assert errors["error_ms"]["n"] > 0 and errors["failures"] == 0

    (scale,) = results["scale"].values()
    assert scale["probes"] >= scale["services"] and scale["failures"] == 0
    assert scale["lag_seconds"]["n"] > 0  # runs started in the window (some still running)
    assert scale["metrics_bytes"] > scale["metrics_gzip_bytes"] > 0
    assert scale["history_months"] == 3 and scale["ledger_bytes"] > 0
    # Read at start: three months of each service on /metrics (nine month series each).
    assert scale["month_series"] == 3 * 9 * scale["services"]

    shards = results["shards"]
    assert shards["services_probed"] == shards["services"]
    assert shards["services_probed_by_two_shards"] == 0
    assert shards["failures"] == 0 and shards["missed_runs"] == 0
    # Once per interval: no service ran a second time within one interval. (A run may start late
    # by the scheduling lag, which on a loaded machine can be a good part of the 2 s interval of a
    # smoke run, and the next run on time; a second run in the same interval would come far sooner.)
    assert shards["shortest_gap_seconds"] > 0.5 * shards["interval_seconds"]


@pytest.mark.slow
def test_smoke_run_of_the_rules_section_times_every_group_and_panel(tmp_path: Path) -> None:
    """`--only rules --quick`: 20 services x 1 day backfilled with promtool into a real
    Prometheus running the shipped rules, every group evaluated, every panel query of the
    overview and service dashboards answered, the old rules beside the new on 10 services."""
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: scripts/install.sh installs Debian's prometheus")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "rules", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Prometheus: the shipped rules on 20 services x 1 days" in done.stdout
    rules = json.loads((tmp_path / "latest-quick.json").read_text())["rules"]
    shipped = rules["shipped"]
    assert shipped["backfill"]["samples"] > 0 and shipped["backfill"]["blocks"] >= 1
    shipped_groups = {
        group["name"]
        for path in (ROOT / "prometheus" / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
    }
    measured = {name for name in shipped["groups"] if not name.startswith("_")}
    assert measured == shipped_groups
    assert "_unhealthy" not in shipped["groups"], shipped["groups"]["_unhealthy"]
    for group in shipped["groups"].values():
        assert group["evaluations"] >= 2 and group["seconds"] > 0
    # Every query of both dashboards ran and found series (the backfilled service has them all).
    panels = shipped["panels"]
    assert {row["dashboard"] for row in panels} == {"sla-overview", "sla-service"}
    empty = [f"{row['panel']} {row['ref']}" for row in panels if not row["series"]]
    # Nothing fails now in 20 services that are up: these have nothing to show; nor have the
    # mail panels, the services being HTTPS.
    assert set(empty) <= {
        "Failing since A",
        "Services breaching this month A",
        "Alerts firing A",
        "Delivery time A",
        "Delivery time B",
        "Late messages A",
        "Checks A",
        "DNSSEC validated A",
    }, empty
    # Two of the 20 services breached a finished month (synthetic.BREACH_EVERY): listed.
    breached = [row for row in panels if row["panel"] == "Breached months"]
    assert len(breached) == 4 and all(row["series"] == 2 for row in breached), breached
    series = shipped["series"]
    assert series["scraped_per_service"] >= 130  # 13 months of month tallies each
    assert 0 < series["recorded_per_service"] < series["scraped_per_service"] * 2
    # The old shape beside the new: both measured in one Prometheus on the same history.
    reference = rules["judged"]["reference"]
    assert reference["old_seconds_per_minute"] > 0 and reference["new_seconds_per_minute"] > 0
    assert (
        reference["samples_per_service"]["reference-ratios-long"]
        > (reference["samples_per_service"]["sla-probe-ratios-long"])
    )
