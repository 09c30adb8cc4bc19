"""The HA Prometheus configuration, checked statically: what makes the pair safe is a few lines
(the replica label dropped before Alertmanager and before the store), and each is pinned here.
tests/test_ha.py runs the topology for real."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import tool
from tests.stack import ROOT

SHIPPED = ROOT / "prometheus" / "prometheus.yml"
HA = ROOT / "prometheus" / "prometheus.ha.yml"


def load(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config


def test_the_ha_config_passes_promtool_with_either_replica() -> None:
    for replica in ("a", "b"):
        result = subprocess.run(
            [tool("promtool"), "check", "config", str(HA)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PROMETHEUS_REPLICA": replica},
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_ha_config_says_what_the_shipped_one_says_but_for_the_pair() -> None:
    """The timings, rules and job of prometheus/prometheus.yml; only what makes a pair differs:
    the replica label, its removal, both Alertmanagers, both exporter replicas, the store."""
    shipped, ha = load(SHIPPED), copy.deepcopy(load(HA))
    assert ha["global"].pop("external_labels") == {"prometheus_replica": "${PROMETHEUS_REPLICA}"}
    assert ha["alerting"].pop("alert_relabel_configs")
    ha.pop("remote_write")
    for config in (shipped, ha):
        for job in config["scrape_configs"]:
            for static in job["static_configs"]:
                static["targets"] = ["EXPORTER"]
        for manager in config["alerting"]["alertmanagers"]:
            for static in manager["static_configs"]:
                static["targets"] = ["ALERTMANAGER"]
    assert ha == shipped


def test_both_servers_send_one_alert_to_every_alertmanager_and_one_series_to_the_store() -> None:
    ha = load(HA)
    external = set(ha["global"]["external_labels"])
    dropped_for_alerts = {
        rule["regex"]
        for rule in ha["alerting"]["alert_relabel_configs"]
        if rule["action"] == "labeldrop"
    }
    assert dropped_for_alerts == external
    [write] = ha["remote_write"]
    dropped_for_store = {
        rule["regex"] for rule in write["write_relabel_configs"] if rule["action"] == "labeldrop"
    }
    assert dropped_for_store == external
    [managers] = ha["alerting"]["alertmanagers"]
    assert len(managers["static_configs"][0]["targets"]) >= 2
    [job] = ha["scrape_configs"]
    [static] = job["static_configs"]
    assert len(static["targets"]) >= 2 and static["labels"] == {"location": "local"}
    assert job["job_name"] == "sla"
