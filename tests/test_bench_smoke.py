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

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_smoke_run_of_the_benchmark_harness_fills_every_section(tmp_path: Path) -> None:
    for tool in ("nginx", "prometheus-blackbox-exporter"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} is missing: bench/run.sh installs it")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--kinds", "http", "--out", str(tmp_path)],
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

    shards = results["shards"]
    assert shards["services_probed"] == shards["services"]
    assert shards["services_probed_by_two_shards"] == 0
    assert shards["failures"] == 0 and shards["missed_runs"] == 0
    # Once per interval: no service ran a second time within one interval. (A run may start late
    # by the scheduling lag, which on a loaded machine can be a good part of the 2 s interval of a
    # smoke run, and the next run on time; a second run in the same interval would come far sooner.)
    assert shards["shortest_gap_seconds"] > 0.5 * shards["interval_seconds"]
