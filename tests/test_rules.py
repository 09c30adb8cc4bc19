"""Prometheus rules and Alertmanager config: checked, unit-tested and routed with the real tools.

promtool and amtool come from Debian's prometheus and prometheus-alertmanager packages. A missing
tool fails the test rather than skipping it: a CI image without them would otherwise report green
without having checked a single alert.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import free_port, tool, wait_for

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))
ALERTMANAGER_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
ROUTES_TABLE = ROOT / "alertmanager" / "tests" / "routes.tsv"
RUNBOOK = ROOT / "docs" / "runbook.md"
RULES_DOC = ROOT / "docs" / "RULES.md"

# The burn-rate windows of the Google SRE workbook, chapter 5, table 5-8, as slok/sloth keeps them
# in internal/alert/windows/google-30d.yaml: (long window, short window, burn rate, severity).
WORKBOOK_WINDOWS = {
    ("1h", "5m", "14.4", "critical"),
    ("6h", "30m", "6", "critical"),
    ("1d", "2h", "3", "warning"),
    ("3d", "6h", "1", "warning"),
}
# Every window the recording rules keep: the workbook's, plus 30d for the rolling month.
RATIO_WINDOWS = ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"]
# The table the window rules and burn-rate alerts are generated from, and what comes out of it.
WINDOWS_TABLE = ROOT / "prometheus" / "windows.yml"
GENERATOR = ROOT / "prometheus" / "generate.py"
REFERENCE_RULES = ROOT / "prometheus" / "tests" / "reference" / "raw_ratios.yml"
# The one suite that runs at the snapshots' 5-minute cadence against the raw reference rules.
EQUALITY_TEST = ROOT / "prometheus" / "tests" / "windows_equal_test.yml"
# Which receiver each severity must reach (alertmanager/alertmanager.yml).
RECEIVER_OF_SEVERITY = {"critical": "page", "warning": "ticket", "info": "null"}
SUPPORT_RECEIVER_OF_SEVERITY = {"critical": "support-lead", "warning": "support-queue"}
RUNBOOK_PREFIX = "https://github.com/sla-bundle/sla-bundle/blob/main/docs/runbook.md#"


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a tool from the repository root, capturing what it says."""
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def assert_succeeded(result: subprocess.CompletedProcess[str]) -> None:
    """Fail with the tool's full output when it did not exit 0."""
    command = " ".join(str(arg) for arg in result.args)
    assert result.returncode == 0, (
        f"`{command}` exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of the given kind ("alert" or "record") across the rule files."""
    return [
        rule
        for path in RULE_FILES
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
        if kind in rule
    ]


def alert_names() -> list[str]:
    return sorted({rule["alert"] for rule in rules("alert")})


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, - for spaces."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


@dataclass(frozen=True)
class Route:
    """One line of alertmanager/tests/routes.tsv."""

    case: str
    receivers: str
    labels: tuple[str, ...]


def routing_table() -> list[Route]:
    lines = [
        line
        for line in ROUTES_TABLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    header, *rows = lines
    assert header.split("\t") == ["case", "receivers", "labels"], header
    table = []
    for row in rows:
        case, receivers, labels = row.split("\t")
        table.append(Route(case, receivers, tuple(labels.split())))
    return table


# ------------------------------------------------------------------------------------------------
# The tools' own checks
# ------------------------------------------------------------------------------------------------


def test_the_prometheus_config_passes_promtool_check_config() -> None:
    assert_succeeded(run(tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)))


def test_the_rule_files_pass_promtool_check_rules_with_every_lint_fatal() -> None:
    assert RULE_FILES, "no rule files in prometheus/rules/"
    assert_succeeded(
        run(
            tool("promtool"),
            "check",
            "rules",
            "--lint=all",
            "--lint-fatal",
            *(str(path) for path in RULE_FILES),
        )
    )


def test_the_alertmanager_config_passes_amtool_check_config() -> None:
    assert_succeeded(run(tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG)))


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=[path.name for path in RULE_TESTS])
def test_the_rule_unit_tests_pass_in_promtool(test_file: Path) -> None:
    assert_succeeded(run(tool("promtool"), "test", "rules", str(test_file)))


@pytest.mark.parametrize("route", routing_table(), ids=[route.case for route in routing_table()])
def test_the_alert_reaches_the_receivers_of_the_routing_table(route: Route) -> None:
    assert_succeeded(
        run(
            tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_CONFIG}",
            f"--verify.receivers={route.receivers}",
            *route.labels,
        )
    )


@pytest.mark.parametrize("alert", rules("alert"), ids=lambda rule: rule["alert"])
def test_every_alert_rule_reaches_the_receiver_of_its_severity(alert: dict[str, Any]) -> None:
    severity = alert["labels"]["severity"]
    labels = [f"{name}={value}" for name, value in alert["labels"].items()]
    receivers = RECEIVER_OF_SEVERITY
    if alert["labels"].get("team") == "support":
        # Support alerts go to the support lead (per calendar) or queue, not to on-call.
        receivers = SUPPORT_RECEIVER_OF_SEVERITY
        labels.append("calendar=europe")
    assert_succeeded(
        run(
            tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_CONFIG}",
            f"--verify.receivers={receivers[severity]}",
            f"alertname={alert['alert']}",
            "sla_service=website",
            *labels,
        )
    )


def test_the_notification_templates_render_with_amtool() -> None:
    templates = str(ROOT / "alertmanager" / "templates" / "*.tmpl")
    for name in ("sla.subject", "sla.text", "sla.html"):
        assert_succeeded(
            run(
                tool("amtool"),
                "template",
                "render",
                f"--template.glob={templates}",
                f'--template.text={{{{ template "{name}" . }}}}',
            )
        )


# ------------------------------------------------------------------------------------------------
# Consistency of rules, tests and docs (plain Python over the YAML)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alert", rules("alert"), ids=lambda rule: rule["alert"])
def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook(
    alert: dict[str, Any],
) -> None:
    assert alert["labels"].get("severity") in RECEIVER_OF_SEVERITY
    for annotation in ("summary", "description", "runbook_url"):
        assert alert["annotations"].get(annotation), f"{alert['alert']} has no {annotation}"
    assert alert["annotations"]["runbook_url"] == RUNBOOK_PREFIX + alert["alert"].lower()


def test_every_runbook_link_lands_on_a_section_of_the_runbook() -> None:
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    for alert in rules("alert"):
        anchor = alert["annotations"]["runbook_url"].removeprefix(RUNBOOK_PREFIX)
        assert anchor in anchors, f"{alert['alert']}: docs/runbook.md has no section #{anchor}"


def test_every_rule_is_listed_in_the_rules_doc() -> None:
    # `name<window>` in the doc stands for the name with each window of RATIO_WINDOWS.
    listed = set()
    for name in re.findall(r"`([^`\s]+)`", RULES_DOC.read_text()):
        if name.endswith("<window>"):
            listed |= {name.removesuffix("<window>") + window for window in RATIO_WINDOWS}
        else:
            listed.add(name)
    names = {rule["record"] for rule in rules("record")} | set(alert_names())
    assert not names - listed, f"missing from docs/RULES.md: {sorted(names - listed)}"


def windows_table() -> dict[str, Any]:
    table: dict[str, Any] = load_yaml(WINDOWS_TABLE)
    return table


def test_the_table_keeps_the_windows_and_burn_rates_of_the_sre_workbook() -> None:
    table = windows_table()
    assert [w["window"] for w in table["windows"]] == RATIO_WINDOWS
    rows = {(a["long"], a["short"], f"{a['burn']:g}", a["severity"]) for a in table["alerts"]}
    assert rows == WORKBOOK_WINDOWS


@pytest.mark.parametrize("window", RATIO_WINDOWS)
def test_every_window_has_its_rates_and_ratios_per_location_and_pooled(window: str) -> None:
    recorded = {rule["record"]: rule["expr"] for rule in rules("record")}
    row = next(w for w in windows_table()["windows"] if w["window"] == window)
    failures = f"sla_service_location:sla_probe_failures:rate{window}"
    probes = f"sla_service_location:sla_probes:rate{window}"
    for name in (failures, probes):
        assert f"[{window}]" in recorded[name], f"{name} does not read a {window} range"
        assert "maintenance" in recorded[name], f"{name} does not take maintenance probes out"
        # Long windows read the 5-minute snapshots, short ones the counters themselves.
        snapshots = ":max_over_time5m[" in recorded[name]
        assert snapshots == (row["source"] == "snapshots"), f"{name}: {recorded[name]}"
    for level in ("sla_service_location", "sla_service"):
        errors = recorded[f"{level}:probe_errors:ratio_rate{window}"]
        assert failures in errors
        assert probes in errors
        availability = recorded.get(f"{level}:probe_availability:ratio_rate{window}")
        if row.get("availability"):
            assert availability is not None
            assert availability.strip() == f"1 - {level}:probe_errors:ratio_rate{window}"
        else:  # no panel reads it: not worth a series per service
            assert availability is None
    # Pooled over locations: a sum over a sum, never an average of ratios.
    assert "avg" not in recorded[f"sla_service:probe_errors:ratio_rate{window}"]


def test_the_snapshot_group_takes_its_snapshots_before_the_windows_that_read_them() -> None:
    """The long windows end on the snapshot of the same evaluation: the snapshots come first in
    the group, and the group runs at the interval the snapshots are taken at (`max_over_time`
    over exactly that interval, so that no counter value falls between two snapshots)."""
    (group,) = (
        group
        for path in RULE_FILES
        for group in load_yaml(path)["groups"]
        if group["name"] == "sla-probe-ratios-long"
    )
    step = windows_table()["snapshot_interval"]
    assert group["interval"] == step
    names = [rule["record"] for rule in group["rules"]]
    snapshots = [name for name in names if name.endswith(f":max_over_time{step}")]
    assert len(snapshots) == 4
    assert names[: len(snapshots)] == snapshots
    for rule in group["rules"][: len(snapshots)]:
        assert f"[{step}]" in rule["expr"]
        assert "instance" in rule["expr"]  # resets are per exporter process


def test_the_committed_window_rules_are_what_the_generator_writes() -> None:
    done = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for path in (ROOT / "prometheus" / "rules" / "burn_rate.yml", REFERENCE_RULES):
        assert path.read_text().startswith("# DO NOT EDIT: generated by prometheus/generate.py")


def check_table(table: Path) -> subprocess.CompletedProcess[str]:
    """`prometheus/generate.py --check` against another table than the committed one."""
    return subprocess.run(
        [sys.executable, str(GENERATOR), "--check", "--table", str(table)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_generator_finds_a_stale_file_and_says_where(tmp_path: Path) -> None:
    table = WINDOWS_TABLE.read_text().replace("for: 2m", "for: 3m", 1)
    assert table != WINDOWS_TABLE.read_text()
    (tmp_path / "windows.yml").write_text(table)
    done = check_table(tmp_path / "windows.yml")
    assert done.returncode == 1
    assert "-        for: 2m\n+        for: 3m" in done.stderr
    assert "prometheus/rules/burn_rate.yml (generated)" in done.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("source: raw}", "source: cache}"), ":39: windows[1].source: raw or snapshots, not cache"),
        (("{window: 2h,", "{window: 7m,"), ":41: windows[3]: 7m is not a multiple of"),
        (("long: 6h", "long: 12h"), ":68: alerts[1].long: 12h is not a window"),
        (
            ("    for: 2m\n", "    for: 2m\n    page: yes\n"),
            ":57: alerts[0]: unknown key(s) ['page']",
        ),
    ],
)
def test_a_bad_table_is_refused_with_the_key_that_is_wrong(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in WINDOWS_TABLE.read_text()
    (tmp_path / "windows.yml").write_text(WINDOWS_TABLE.read_text().replace(old, new, 1))
    done = check_table(tmp_path / "windows.yml")
    assert done.returncode == 2
    assert f"windows.yml{message}" in done.stderr


def test_every_alert_that_tells_the_budget_left_tells_it_the_same_way() -> None:
    texts = {
        rule["alert"]: rule["annotations"]["budget_left"]
        for rule in rules("alert")
        if "budget_left" in rule.get("annotations", {})
    }
    assert {"SLAErrorBudgetBurn", "SLAServiceDown", "SLAMaintenanceOverrun"} <= set(texts)
    assert set(texts.values()) == {windows_table()["budget_left"]}


def test_the_burn_rate_alerts_use_the_windows_and_rates_of_the_sre_workbook() -> None:
    found = set()
    for alert in rules("alert"):
        if alert["alert"] != "SLAErrorBudgetBurn":
            continue
        labels = alert["labels"]
        long, short = labels["long_window"], labels["short_window"]
        match = re.search(
            rf"ratio_rate{long} > on \(sla_service\) group_left \(\) \(([\d.]+) \* "
            r"sla_service:error_budget:ratio\)",
            alert["expr"],
        )
        assert match, f"no {long} condition against the error budget in {alert['expr']}"
        rate = match.group(1)
        assert (
            f"ratio_rate{short} > on (sla_service) group_left () ({rate} * "
            "sla_service:error_budget:ratio)" in alert["expr"]
        )
        found.add((long, short, rate, labels["severity"]))
    assert found == WORKBOOK_WINDOWS


def test_the_unit_tests_evaluate_rules_as_the_shipped_prometheus_does() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    groups = [group["name"] for path in RULE_FILES for group in load_yaml(path)["groups"]]
    shipped = sorted(
        path.resolve()
        for pattern in config["rule_files"]
        for path in PROMETHEUS_CONFIG.parent.glob(pattern)
    )
    for test_file in RULE_TESTS:
        suite = load_yaml(test_file)
        loaded = sorted((test_file.parent / path).resolve() for path in suite["rule_files"])
        if test_file == EQUALITY_TEST:
            # The shipped window rules against their raw reference, at the 5-minute cadence of
            # the snapshots (promtool ignores a group's own `interval`), and nothing else.
            window_rules = [
                ROOT / "prometheus" / "rules" / n for n in ("recording.yml", "burn_rate.yml")
            ]
            assert loaded == sorted([*window_rules, REFERENCE_RULES]), test_file.name
            assert suite["evaluation_interval"] == windows_table()["snapshot_interval"]
            groups_loaded = [g["name"] for p in loaded for g in load_yaml(p)["groups"]]
            assert sorted(suite["group_eval_order"]) == sorted(groups_loaded), test_file.name
            continue
        assert suite["evaluation_interval"] == config["global"]["evaluation_interval"], test_file
        assert loaded == shipped, f"{test_file.name} does not load the shipped rule files"
        # promtool picks a random group order otherwise, and the asserted times would wobble.
        assert sorted(suite["group_eval_order"]) == sorted(groups), test_file.name


@pytest.mark.parametrize("name", alert_names())
def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_must_not(name: str) -> None:
    fires, stays_quiet = False, False
    for test_file in RULE_TESTS:
        for case in load_yaml(test_file)["tests"]:
            for check in case.get("alert_rule_test", []):
                if check["alertname"] == name:
                    if check.get("exp_alerts"):
                        fires = True
                    else:
                        stays_quiet = True
    assert fires, f"no unit test where {name} fires"
    assert stays_quiet, f"no unit test where {name} must not fire"


# One token of promtool's series notation: `_`, `stale`, a number, `_xN`, `axN`, `a+bxN`, `a-bxN`.
NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
EXPANDING = re.compile(rf"(?P<a>{NUMBER})(?:(?P<op>[-+])(?P<b>{NUMBER}))?x(?P<n>\d+)")
MISSING = None  # `_`: no sample at this step
STALE = "stale"


def expand_series(values: str) -> list[float | str | None]:
    """promtool's `values` of an input series, one entry per step: a number, MISSING or STALE.

    As promtool reads it: `a+bxn` is n+1 samples a, a+b, ..., a+n*b; `axn` is a n+1 times; `_xn`
    is n missing samples (not n+1: a missing sample cannot increment).
    """
    samples: list[float | str | None] = []
    for token in values.split():
        if token == "_":
            samples.append(MISSING)
        elif token == STALE:
            samples.append(STALE)
        elif re.fullmatch(r"_x\d+", token):
            samples += [MISSING] * int(token[2:])
        elif match := EXPANDING.fullmatch(token):
            a, n = float(match["a"]), int(match["n"])
            b = float(match["b"] or 0) * (-1 if match["op"] == "-" else 1)
            samples += [a + i * b for i in range(n + 1)]
        else:
            samples.append(float(token))
    return samples


def parse_series(series: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`name{a="1",b="2"}` -> ("name", (("a", "1"), ("b", "2"))), labels sorted."""
    name, _, rest = series.partition("{")
    labels = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest)
    return name.strip(), tuple(sorted(labels))


def probe_cases() -> list[tuple[str, dict[str, Any]]]:
    """(id, test case) for every unit test that feeds sla_probe_success."""
    return [
        (f"{path.name}: {case['name']}", case)
        for path in RULE_TESTS
        for case in load_yaml(path)["tests"]
        if any(
            parse_series(s["series"])[0] == "sla_probe_success"
            for s in case.get("input_series", [])
        )
    ]


@pytest.mark.parametrize("case", [c for _, c in probe_cases()], ids=[i for i, _ in probe_cases()])
def test_the_run_of_failures_gauges_of_every_unit_test_agree_with_its_probe_results(
    case: dict[str, Any],
) -> None:
    """The exporter's sla_probe_consecutive_failures and sla_probe_failing_since_timestamp_seconds
    fed to a unit test tell the same story as its sla_probe_success, sample by sample: the count
    goes up by one per failed probe and is 0 after a success; the start is the start time
    (sla_probe_last_run_timestamp_seconds) of the run's first failed probe, and the series leaves
    /metrics on the first success, which a real Prometheus records as a staleness marker (`stale`;
    a bare `_` would keep the old start visible to the rules for 5 more minutes).
    """
    series: dict[tuple[tuple[str, str], ...], dict[str, list[float | str | None]]] = {}
    for s in case["input_series"]:
        name, labels = parse_series(s["series"])
        series.setdefault(labels, {})[name] = expand_series(str(s["values"]))
    for labels, metrics in series.items():
        if "sla_probe_success" not in metrics:
            continue
        where = ",".join(f"{k}={v}" for k, v in labels)
        success = metrics["sla_probe_success"]
        consecutive = metrics.get("sla_probe_consecutive_failures")
        since = metrics.get("sla_probe_failing_since_timestamp_seconds")
        last_run = metrics.get("sla_probe_last_run_timestamp_seconds")
        assert consecutive is not None, f"{where}: no sla_probe_consecutive_failures"
        assert len(consecutive) == len(success), (
            f"{where}: consecutive failures and success differ in length"
        )
        failed_any = any(value == 0 for value in success)
        if not failed_any:
            assert since is None, f"{where}: failing_since without a failed probe"
        else:
            assert since is not None, f"{where}: no sla_probe_failing_since_timestamp_seconds"
            assert last_run is not None, f"{where}: no sla_probe_last_run_timestamp_seconds"
            assert len(since) == len(success), (
                f"{where}: failing_since and success differ in length"
            )
        count, start = 0.0, None
        for step, up in enumerate(success):
            assert up in (0, 1), f"{where}: sla_probe_success[{step}] = {up}"
            if up == 0:
                if count == 0:
                    start = last_run[step] if last_run else None
                count += 1
            else:
                count, start = 0, None
            assert consecutive[step] == count, (
                f"{where}: sla_probe_consecutive_failures[{step}] = {consecutive[step]}, "
                f"expected {count}"
            )
            if since is None:
                continue
            if start is not None:
                assert since[step] == start, (
                    f"{where}: failing_since[{step}] = {since[step]}, expected {start}"
                )
            else:
                was_present = step > 0 and isinstance(since[step - 1], float)
                expected = STALE if was_present else MISSING
                assert since[step] == expected, (
                    f"{where}: failing_since[{step}] = {since[step]!r}, expected "
                    f"{'stale (the series just left /metrics)' if was_present else '_ (absent)'}"
                )


# The exporter's per-service month figures (docs/METRICS.md, "Calendar months"): a unit test that
# feeds one of them feeds them all, for the same series and steps.
MONTH_FIGURES = (
    "sla_month_seconds",
    "sla_month_error_budget_seconds",
    "sla_month_objective_ratio",
    "sla_month_slot_seconds",
)
MONTH_STATES = ("up", "down", "unknown", "excluded", "maintenance", "unmonitored")


def month_cases() -> list[tuple[str, dict[str, Any]]]:
    """(id, test case) for every unit test that feeds any of the month figures."""
    return [
        (f"{path.name}: {case['name']}", case)
        for path in RULE_TESTS
        for case in load_yaml(path)["tests"]
        if any(parse_series(s["series"])[0] in MONTH_FIGURES for s in case.get("input_series", []))
    ]


@pytest.mark.parametrize("case", [c for _, c in month_cases()], ids=[i for i, _ in month_cases()])
def test_the_month_figures_of_every_unit_test_agree_with_each_other_and_the_month(
    case: dict[str, Any],
) -> None:
    """Whatever a unit test feeds of a service's month, it feeds all of it, as the exporter does:
    every state of sla_month_seconds and the budget, objective and slot with the same labels; the
    states add up to no more than the month's start..end of that location; and the budget is at
    most (1 - objective) of the time that counts plus the time still to come.
    """
    series: dict[tuple[tuple[str, str], ...], dict[str, list[float | str | None]]] = {}
    bounds: dict[tuple[str, str], dict[str, list[float | str | None]]] = {}
    for s in case["input_series"]:
        name, labels = parse_series(s["series"])
        values = expand_series(str(s["values"]))
        if name in MONTH_FIGURES:
            of = dict(labels)
            key = name if name != "sla_month_seconds" else f"{name}:{of.pop('state')}"
            series.setdefault(tuple(sorted(of.items())), {})[key] = values
        elif name in ("sla_month_start_timestamp_seconds", "sla_month_end_timestamp_seconds"):
            of = dict(labels)
            bounds.setdefault((of["location"], of["month"]), {})[name] = values
    expected = {*MONTH_FIGURES[1:], *(f"sla_month_seconds:{state}" for state in MONTH_STATES)}
    for labels, figures in series.items():
        where = ",".join(f"{k}={v}" for k, v in labels)
        missing = sorted(expected - set(figures))
        assert not missing, f"{where}: feeds some month figures but not {missing}"
        assert len({len(v) for v in figures.values()}) == 1, f"{where}: figures differ in length"
        location, month = dict(labels)["location"], dict(labels)["month"]
        month_bounds = bounds.get((location, month), {})
        assert len(month_bounds) == 2, f"{where}: no start and end of {month} in {location}"
        start = month_bounds["sla_month_start_timestamp_seconds"]
        end = month_bounds["sla_month_end_timestamp_seconds"]
        for step in range(len(figures["sla_month_slot_seconds"])):
            f = {
                name: value
                for name, values in figures.items()
                if isinstance(value := values[step], float)
            }
            first, last = start[step], end[step]
            if len(f) < len(expected) or not isinstance(first, float):
                continue  # a step without samples: nothing to compare
            assert isinstance(last, float)
            assert f["sla_month_slot_seconds"] > 0, f"{where}[{step}]: slot of {f}"
            states = {state: f[f"sla_month_seconds:{state}"] for state in MONTH_STATES}
            assert all(v >= 0 for v in states.values()), f"{where}[{step}]: {states}"
            accounted = sum(states.values())
            assert accounted <= last - first, f"{where}[{step}]: {accounted} s in a month"
            counted = states["up"] + states["down"] + states["unknown"]
            to_come = (last - first) - accounted
            most = (1 - f["sla_month_objective_ratio"]) * (counted + to_come) + 1e-6
            assert f["sla_month_error_budget_seconds"] <= most, f"{where}[{step}]: budget {f}"


# ------------------------------------------------------------------------------------------------
# A real Alertmanager: inhibition and what a page says
#
# The config under test is alertmanager.yml with only the addresses changed (webhooks and SMTP
# point at loopback servers of this test, the SMTP password file at a temporary file) and the
# group timers shortened so that a notification leaves in a second instead of 30.
# ------------------------------------------------------------------------------------------------


@dataclass
class Webhooks:
    """A loopback HTTP server recording the JSON Alertmanager posts, by path."""

    url: str
    posts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def alertnames(self, path: str) -> set[tuple[str, str]]:
        return {
            (alert["labels"]["alertname"], alert["labels"].get("sla_service", ""))
            for payload in self.posts.get(path, [])
            for alert in payload["alerts"]
        }


@pytest.fixture(scope="module")
def webhooks() -> Iterator[Webhooks]:
    hooks = Webhooks(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hooks.posts.setdefault(self.path, []).append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest's output free of one access-log line per notification

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hooks.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield hooks
    server.shutdown()
    server.server_close()


@dataclass
class Mails:
    """A loopback SMTP server (aiosmtpd) recording the messages Alertmanager sends."""

    port: int
    messages: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def mails() -> Iterator[Mails]:
    from aiosmtpd.controller import Controller

    box = Mails(port=free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            box.messages.append(envelope.content.decode("utf-8", "replace"))
            return "250 OK"

    # server_hostname: aiosmtpd would otherwise call the slow socket.getfqdn().
    controller = Controller(
        Handler(), hostname="127.0.0.1", port=box.port, server_hostname="mx.test"
    )
    controller.start()
    yield box
    controller.stop()


@dataclass
class Alertmanager:
    url: str

    def post(self, *alerts: dict[str, Any], resolved: bool = False) -> None:
        """Send alerts as Prometheus does: firing since 3 minutes, or `resolved` a second ago."""
        now = datetime.now(UTC)
        ends = now - timedelta(seconds=1) if resolved else now + timedelta(hours=1)
        payload = [
            {
                "labels": alert["labels"],
                "annotations": alert.get("annotations", {}),
                "startsAt": (now - timedelta(minutes=3)).isoformat(),
                "endsAt": ends.isoformat(),
                "generatorURL": "http://prometheus.test/graph",
            }
            for alert in alerts
        ]
        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def state(self, labels: dict[str, str]) -> dict[str, Any] | None:
        """The status Alertmanager reports for the alert with exactly these labels."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as response:
            for alert in json.load(response):
                if alert["labels"] == labels:
                    status: dict[str, Any] = alert["status"]
                    return status
        return None


@pytest.fixture(scope="module")
def alertmanager(
    tmp_path_factory: pytest.TempPathFactory, webhooks: Webhooks, mails: Mails
) -> Iterator[Alertmanager]:
    binary = tool("prometheus-alertmanager")
    workdir = tmp_path_factory.mktemp("alertmanager")
    config = load_yaml(ALERTMANAGER_CONFIG)
    config["global"]["smtp_smarthost"] = f"127.0.0.1:{mails.port}"
    config["global"]["smtp_require_tls"] = False
    config["templates"] = [str(ROOT / "alertmanager" / "templates" / "*.tmpl")]
    config["route"]["group_wait"] = "1s"
    config["route"]["group_interval"] = "1s"
    password = workdir / "smtp_password"
    password.write_text("not-a-real-password\n")
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = hook["url"].replace("http://127.0.0.1:9095", webhooks.url)
        for mail in receiver.get("email_configs", []):
            mail["auth_password_file"] = str(password)
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (workdir / "alertmanager.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail("Alertmanager exited:\n" + (workdir / "alertmanager.log").read_text())
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)

        wait_for(ready, "Alertmanager to be ready")
        yield Alertmanager(url)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@dataclass(frozen=True)
class InhibitionCase:
    """Alerts fired together, and which of them Alertmanager must hold back."""

    case: str
    alerts: tuple[dict[str, str], ...]
    suppressed: tuple[int, ...]  # indexes into alerts


INHIBITION_CASES = [
    InhibitionCase(
        "a declared maintenance window holds back the outage page of that service only",
        (
            {"alertname": "SLAServiceInMaintenance", "severity": "info", "sla_service": "m1"},
            {"alertname": "SLAServiceDown", "severity": "critical", "sla_service": "m1"},
            {"alertname": "SLAServiceDown", "severity": "critical", "sla_service": "m1-other"},
        ),
        suppressed=(1,),
    ),
    InhibitionCase(
        "a declared maintenance window does not hold back its own overrun",
        (
            {"alertname": "SLAServiceInMaintenance", "severity": "info", "sla_service": "m2"},
            {
                "alertname": "SLAMaintenanceOverrun",
                "severity": "critical",
                "sla_service": "m2",
                "location": "zrh",
            },
        ),
        suppressed=(),
    ),
    InhibitionCase(
        "a maintenance overrun replaces the service-down page",
        (
            {
                "alertname": "SLAMaintenanceOverrun",
                "severity": "critical",
                "sla_service": "m3",
                "location": "zrh",
            },
            {"alertname": "SLAServiceDown", "severity": "critical", "sla_service": "m3"},
        ),
        suppressed=(1,),
    ),
    InhibitionCase(
        "a page holds back the ticket of the same alert and service",
        (
            {"alertname": "SLATLSCertificateExpiring", "severity": "critical", "sla_service": "t1"},
            {"alertname": "SLATLSCertificateExpiring", "severity": "warning", "sla_service": "t1"},
            {"alertname": "SLATLSCertificateExpiring", "severity": "warning", "sla_service": "t2"},
            {
                "alertname": "SLAMonthlyErrorBudgetAtRisk",
                "severity": "warning",
                "sla_service": "t1",
            },
        ),
        suppressed=(1,),
    ),
    InhibitionCase(
        "an outage of the service holds back the tickets of its failing locations",
        (
            {
                "alertname": "SLAErrorBudgetBurn",
                "severity": "critical",
                "sla_service": "q1",
                "long_window": "1h",
                "short_window": "5m",
            },
            {
                "alertname": "SLALocationFailing",
                "severity": "warning",
                "sla_service": "q1",
                "location": "zrh",
            },
        ),
        suppressed=(1,),
    ),
    InhibitionCase(
        "mail accepted but not delivered replaces the service-down page of that service only",
        (
            {"alertname": "SLAMailNotDelivered", "severity": "critical", "sla_service": "d1"},
            {"alertname": "SLAServiceDown", "severity": "critical", "sla_service": "d1"},
            {"alertname": "SLAServiceDown", "severity": "critical", "sla_service": "d2"},
        ),
        suppressed=(1,),
    ),
    InhibitionCase(
        "a sending domain's service opens tickets and never pages",
        (
            {
                "alertname": "SLASenderAuthenticationService",
                "severity": "info",
                "sla_service": "s1",
            },
            {"alertname": "SLAServiceDown", "severity": "critical", "sla_service": "s1"},
            {
                "alertname": "SLAErrorBudgetBurn",
                "severity": "critical",
                "sla_service": "s1",
                "long_window": "1h",
                "short_window": "5m",
            },
            {
                "alertname": "SLASenderAuthenticationBroken",
                "severity": "warning",
                "sla_service": "s1",
                "check": "spf",
            },
            {"alertname": "SLAServiceDown", "severity": "critical", "sla_service": "s2"},
        ),
        suppressed=(1, 2),
    ),
    InhibitionCase(
        "an exporter that cannot be scraped holds back the alerts of its own location only",
        (
            {
                "alertname": "SLAExporterAbsent",
                "severity": "critical",
                "cause": "scrape_failing",
                "job": "sla",
                "instance": "sla-fra:9141",
                "location": "fra",
            },
            {
                "alertname": "SLAProbesNotRunning",
                "severity": "critical",
                "sla_service": "e1",
                "location": "fra",
            },
            {
                "alertname": "SLAProbesNotRunning",
                "severity": "critical",
                "sla_service": "e1",
                "location": "zrh",
            },
            {"alertname": "SLAServiceDown", "severity": "critical", "sla_service": "e1"},
        ),
        suppressed=(1,),
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", INHIBITION_CASES, ids=[case.case for case in INHIBITION_CASES])
def test_alertmanager_inhibits(alertmanager: Alertmanager, case: InhibitionCase) -> None:
    alertmanager.post(*({"labels": labels} for labels in case.alerts))
    for index, labels in enumerate(case.alerts):
        state = wait_for(partial(alertmanager.state, labels), f"alert {labels}")
        expected = "suppressed" if index in case.suppressed else "active"
        assert state["state"] == expected, f"{labels}: {state}"
        assert bool(state["inhibitedBy"]) == (index in case.suppressed), f"{labels}: {state}"


@pytest.mark.slow
def test_a_page_tells_on_call_what_is_broken_since_when_the_budget_left_and_the_runbook(
    alertmanager: Alertmanager, webhooks: Webhooks, mails: Mails
) -> None:
    alertmanager.post(
        {
            "labels": {"alertname": "SLAServiceDown", "severity": "critical", "sla_service": "app"},
            "annotations": {
                "summary": "app is down",
                "description": "app failed at least 3 probes in a row in 100% of its locations.",
                "budget_left": "zrh 61.57% (4h 26m 0s)",
                "runbook_url": RUNBOOK_PREFIX + "slaservicedown",
            },
        }
    )
    wait_for(lambda: ("SLAServiceDown", "app") in webhooks.alertnames("/page"), "the page webhook")
    message = wait_for(
        lambda: next((m for m in mails.messages if "SLAServiceDown app" in m), None), "the mail"
    )
    parsed = email.message_from_string(message, policy=email.policy.default)
    assert parsed["Subject"] == "[FIRING:1] SLAServiceDown app (critical)"
    assert isinstance(parsed, email.message.EmailMessage)
    mail = parsed.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    for expected in (
        "What is broken: app failed at least 3 probes in a row in 100% of its locations.",
        "Since:",
        "Budget left:    zrh 61.57% (4h 26m 0s)",
        "Runbook:        " + RUNBOOK_PREFIX + "slaservicedown",
    ):
        assert expected in mail, f"{expected!r} not in the mail:\n{mail}"
    assert ("SLAServiceDown", "app") not in webhooks.alertnames("/ticket")


def test_a_resolved_page_says_how_long_it_lasted_and_since_when_it_is_over(
    alertmanager: Alertmanager, mails: Mails
) -> None:
    alert = {
        "labels": {"alertname": "SLAServiceDown", "severity": "critical", "sla_service": "rs"},
        "annotations": {"summary": "rs is down", "runbook_url": RUNBOOK_PREFIX + "slaservicedown"},
    }
    alertmanager.post(alert)
    wait_for(lambda: any("[FIRING:1] SLAServiceDown rs" in m for m in mails.messages), "firing")
    alertmanager.post(alert, resolved=True)
    message = wait_for(
        lambda: next((m for m in mails.messages if "[RESOLVED] SLAServiceDown rs" in m), None),
        "the resolved mail",
    )
    parsed = email.message_from_string(message, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    mail = parsed.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    # What happened, not the firing summary again as if it were still true.
    mail = mail.replace("\r\n", "\n")
    # About 3 minutes (StartsAt 3 min before the post, EndsAt a second before the second one).
    assert re.search(r"^Over after [23]m\d+s: SLAServiceDown rs no longer fires\.$", mail, re.M)
    assert "It had said:    rs is down" in mail
    assert "Back since:" in mail
    assert not re.search(r"^rs is down", mail, re.M)


@pytest.mark.slow
def test_a_ticket_goes_to_the_ticket_queue_and_wakes_nobody(
    alertmanager: Alertmanager, webhooks: Webhooks, mails: Mails
) -> None:
    alertmanager.post(
        {
            "labels": {
                "alertname": "SLAMonthlyErrorBudgetAtRisk",
                "severity": "warning",
                "sla_service": "tickets-only",
                "month": "2026-11",
            },
            "annotations": {"summary": "tickets-only is on course to breach its SLA"},
        }
    )
    wait_for(
        lambda: ("SLAMonthlyErrorBudgetAtRisk", "tickets-only") in webhooks.alertnames("/ticket"),
        "the ticket webhook",
    )
    assert ("SLAMonthlyErrorBudgetAtRisk", "tickets-only") not in webhooks.alertnames("/page")
    assert not any("tickets-only" in mail for mail in mails.messages)


# ------------------------------------------------------------------------------------------------
# A real Prometheus: every rule evaluates without error on exporter-shaped data
#
# promtool's unit tests evaluate the rules, but only on the series each test feeds. A real
# Prometheus scraping two locations of an exporter-shaped /metrics catches what only real label
# sets reveal (duplicate series, many-to-many matches). The scrape and rule intervals are 1s here
# so the test takes seconds; the rules are the shipped ones with their group intervals removed.
# ------------------------------------------------------------------------------------------------


def exporter_metrics(now: float) -> str:
    """A /metrics page shaped like the exporter's (see tests/golden/metrics.txt)."""
    month_start = now - 10 * 86400
    month_end = month_start + 30 * 86400
    lines = [
        "# TYPE sla_unknown_as_down gauge",
        "sla_unknown_as_down 1",
        "# TYPE sla_exporter_config_last_reload_successful gauge",
        "sla_exporter_config_last_reload_successful 1",
        "# TYPE sla_month_start_timestamp_seconds gauge",
        f'sla_month_start_timestamp_seconds{{month="2026-11"}} {month_start}',
        f'sla_month_start_timestamp_seconds{{month="2026-10"}} {month_start - 31 * 86400}',
        "# TYPE sla_month_end_timestamp_seconds gauge",
        f'sla_month_end_timestamp_seconds{{month="2026-11"}} {month_end}',
        f'sla_month_end_timestamp_seconds{{month="2026-10"}} {month_start}',
    ]
    families: dict[str, list[str]] = {}
    # Three probes a second, so that rates move within the test's few seconds; smtp fails one.
    probes = 3 * int(now)
    for service, failures in (("website", 0), ("smtp", probes // 3)):
        labels = f'sla_service="{service}"'
        values = {
            "sla_probes_total": probes,
            "sla_probe_failures_total": failures,
            "sla_maintenance_probes_total": 0,
            "sla_maintenance_probe_failures_total": 0,
            "sla_probe_success": 1 if failures == 0 else 0,
            "sla_probe_last_run_timestamp_seconds": now - 5,
            # smtp's last probe failed: the 4th in a row, the first of them 3 intervals earlier.
            "sla_probe_consecutive_failures": 0 if failures == 0 else 4,
            "sla_probe_interval_seconds": 60,
            "sla_objective_ratio": 0.99,
            "sla_maintenance": 0,
            "sla_probe_tls_cert_expiry_timestamp_seconds": now + 90 * 86400,
        }
        if failures:  # absent while the last probe succeeded
            values["sla_probe_failing_since_timestamp_seconds"] = now - 5 - 3 * 60
        for name, value in values.items():
            families.setdefault(name, []).append(f"{name}{{{labels}}} {value}")
        families.setdefault("sla_probe_failure_reasons_total", []).append(
            f'sla_probe_failure_reasons_total{{{labels},reason="timeout"}} {failures}'
        )
        # Ten days into November (minutes): 180 down, 60 unknown, 400 in maintenance;
        # October, over: 500 down minutes of 44,640.
        for month, states, budget in (
            ("2026-11", {"up": 13760, "down": 180, "unknown": 60, "maintenance": 400}, 25_680),
            ("2026-10", {"up": 44140, "down": 500}, 26_784),
        ):
            of = f'{labels},month="{month}"'
            for state in ("up", "down", "unknown", "excluded", "maintenance", "unmonitored"):
                families.setdefault("sla_month_seconds", []).append(
                    f'sla_month_seconds{{{of},state="{state}"}} {states.get(state, 0) * 60}'
                )
            for name, value in (
                ("sla_month_error_budget_seconds", budget),
                ("sla_month_objective_ratio", 0.99),
                ("sla_month_slot_seconds", 60),
            ):
                families.setdefault(name, []).append(f"{name}{{{of}}} {value}")
    for name, samples in families.items():
        kind = "counter" if name.endswith("_total") else "gauge"
        lines += [f"# TYPE {name.removesuffix('_total') if kind == 'counter' else name} {kind}"]
        lines += samples
    return "\n".join(lines) + "\n"


@pytest.fixture
def fake_exporter() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = exporter_metrics(time.time()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per scrape would drown pytest's output

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def prometheus_api(url: str, path: str) -> Any:
    with urllib.request.urlopen(f"{url}{path}", timeout=5) as response:
        return json.load(response)["data"]


@pytest.mark.slow
def test_every_rule_evaluates_without_error_in_a_real_prometheus(
    tmp_path: Path, fake_exporter: str
) -> None:
    binary = tool("prometheus")
    rule_dir = tmp_path / "rules"
    rule_dir.mkdir()
    for path in RULE_FILES:
        content = load_yaml(path)
        for group in content["groups"]:
            group.pop("interval", None)
        (rule_dir / path.name).write_text(yaml.safe_dump(content))
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rule_dir / "*.yml")]
    config.pop("alerting")
    config["scrape_configs"][0]["static_configs"] = [
        {"targets": [fake_exporter], "labels": {"location": location}}
        for location in ("zrh", "fra")
    ]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "prometheus.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def evaluated_twice() -> list[dict[str, Any]] | None:
                if process.poll() is not None:
                    pytest.fail("Prometheus exited:\n" + log_path.read_text())
                groups = prometheus_api(url, "/api/v1/rules")["groups"]
                rules = [rule for group in groups for rule in group["rules"]]
                # Rates need two scrapes; give every group a few evaluations after those.
                if rules and all(rule["lastEvaluation"] > "1971" for rule in rules):
                    series = prometheus_api(
                        url, "/api/v1/query?query=sla_service:probe_errors:ratio_rate5m"
                    )
                    # ... and both locations through every group, recording and month alike
                    # (groups run on their own timers: one may lag a scrape behind another).
                    later = prometheus_api(
                        url,
                        "/api/v1/query?query="
                        + urllib.parse.quote(
                            "count(sla_service_location:probe_consecutive_failures:count)"
                            " + count(sla_service_location_month:sla_met:bool)"
                            " + count(sla_service_location_finished_month:sla_met:bool)"
                        ),
                    )["result"]
                    if len(series["result"]) == 2 and later and later[0]["value"][1] == "10":
                        return rules
                return None

            rules = wait_for(evaluated_twice, "every rule to be evaluated", timeout=60)
            broken = {
                rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"
            }
            assert not broken, f"rules that failed to evaluate: {broken}"

            def value(query: str) -> dict[str, float]:
                result = prometheus_api(url, "/api/v1/query?query=" + urllib.parse.quote(query))
                return {
                    ",".join(
                        f"{k}={v}" for k, v in sorted(r["metric"].items()) if k != "__name__"
                    ): float(r["value"][1])
                    for r in result["result"]
                }

            # Pooled over two locations that see the same thing: 1 probe in 3 fails for smtp.
            pooled = value("sla_service:probe_errors:ratio_rate5m")
            assert pooled["sla_service=website"] == 0
            assert pooled["sla_service=smtp"] == pytest.approx(1 / 3, abs=0.05)
            # The run of failures comes from the exporter's own gauges, per location; a service
            # whose last probe succeeded has neither figure.
            assert value("sla_service_location:probe_consecutive_failures:count") == {
                "location=fra,sla_service=smtp": 4,
                "location=zrh,sla_service=smtp": 4,
            }
            since = value("sla_service_location:probe_failing_since:timestamp_seconds")
            assert set(since) == {"location=fra,sla_service=smtp", "location=zrh,sla_service=smtp"}
            for started in since.values():
                assert started == pytest.approx(time.time() - 5 - 3 * 60, abs=30)
            # The month figures exist per service, location and month; only one month is current.
            # The running month's figures, and the finished one's: 2 services in 2 locations.
            assert len(value("sla_service_location_month:sla_met:bool")) == 4
            assert len(value("sla_service_location_finished_month:sla_met:bool")) == 4
            # The slot length is the exporter's own, with the level's labels and no others, for
            # the running month only (a finished month keeps only what its table shows).
            assert value("sla_service_location_month:slot:seconds") == {
                f"location={location},month=2026-11,sla_service={service}": 60
                for location in ("fra", "zrh")
                for service in ("smtp", "website")
            }
            assert set(value("location_month:sla_month_current:bool")) == {
                "location=fra,month=2026-11",
                "location=zrh,month=2026-11",
            }
        finally:
            process.terminate()
            process.wait(timeout=10)
