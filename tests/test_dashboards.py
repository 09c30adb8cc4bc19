"""Grafana dashboards: generated, linted, and every query run against a real Prometheus.

Grafana itself cannot run here, so the dashboards are checked where they can go wrong without it:
the JSON is what grafana/generator writes (regenerate and diff); every field in it is one of
Grafana's schema; every panel has a unit, a description and the provisioned datasource; rates use
`$__rate_interval`; no location or instance is hard-coded; every metric named exists; and every
query, with its template variables substituted, runs against real Prometheus scraping the real
exporter probing the demo services, and returns series carrying the labels its legend or table
shows.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.metadata
import json
import re
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from grafana.generator.panels import Query as PanelQuery
from grafana.generator.panels import stat_panel
from sla_exporter.ledger import Ledger, month_bounds, month_key
from tests.helpers import wait_for
from tests.stack import ROOT, Stack, running_stack

DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARDS_DIR.glob("*.json"))
DATASOURCE_FILE = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DATASOURCE_UID = "sla-prometheus"
GOLDEN = ROOT / "tests" / "golden" / "metrics.txt"
METRICS_DOC = ROOT / "docs" / "METRICS.md"
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))

# The demo's services (examples/demo.yml) and the location label of prometheus/prometheus.yml.
DEMO_SERVICES = ["website", "app", "api", "smtp", "delivery", "sender", "sms"]
LOCATION = "local"
SUPPORT_POLICY = "standard"  # the policy of SUPPORT_CONFIG below
# Grafana's own variables, with the values a 15s-scrape datasource and a 1h range would give.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}
# Series Prometheus makes itself, not the exporter: scrape health and alert state.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS"}

# Grafana unit ids used or likely to be (grafana/grafana,
# packages/grafana-data/src/valueFormats/categories.ts): a typo there shows raw numbers silently.
KNOWN_UNITS = {
    "none", "short", "percent", "percentunit", "locale", "string",
    "ns", "µs", "ms", "s", "m", "h", "d", "dtdurationms", "dtdurations", "dthms", "dtdhms",
    "dateTimeAsIso", "dateTimeAsIsoNoDateIfToday", "dateTimeAsUS", "dateTimeFromNow",
    "cps", "ops", "reqps", "cpm", "opm", "bytes", "decbytes",
}  # fmt: skip
COUNTER_FUNCTIONS = ("rate", "irate", "increase")

# Panels empty while every service answers, filled once one fails: checked with the API down.
WHILE_FAILING = {
    ("sla-service", "Failing since"),
    ("sla-service", "Failures by reason"),
    ("sla-service", "annotation Alerts"),
}
# Panels with data for some services only.
ONLY_FOR = {
    # The demo services that speak TLS: smtp (STARTTLS), delivery (STARTTLS and IMAPS).
    ("sla-service", "TLS certificate expires in"): {"smtp", "delivery"},
    # The mail kinds have no single reply code to show (a submission and a mailbox; DNS).
    ("sla-service", "Status code"): {"website", "app", "api", "smtp", "sms"},
    # Each mail kind's own series.
    ("sla-service", "Delivery time"): {"delivery"},
    ("sla-service", "Late messages"): {"delivery"},
    ("sla-service", "Checks"): {"delivery", "sender"},
    ("sla-service", "DNSSEC validated"): {"sender"},
    # The maintenance window the fixture declares covers the website only.
    ("sla-service", "annotation Maintenance"): {"website"},
    # Of the seeded previous month, the API alone breached.
    ("sla-overview", "Breached months"): {"api"},
}


# ------------------------------------------------------------------------------------------------
# Walking the dashboards
# ------------------------------------------------------------------------------------------------


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


DASHBOARDS = {path.stem: load(path) for path in DASHBOARD_FILES}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included; rows themselves too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def content_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (panel for panel in panels(dashboard) if panel["type"] != "row")


@dataclass(frozen=True)
class Query:
    """One PromQL query of a dashboard: a panel target, an annotation, or a variable."""

    dashboard: str
    title: str  # panel title, "annotation NAME" or "variable NAME"
    expr: str
    legend: str = ""
    columns: tuple[str, ...] = ()  # labels a table shows

    @property
    def key(self) -> tuple[str, str]:
        return (self.dashboard, self.title)

    def variables(self) -> set[str]:
        return set(re.findall(r"\$\{?(\w+)\}?", self.expr))


def table_columns(panel: dict[str, Any]) -> tuple[str, ...]:
    for transformation in panel.get("transformations", []):
        if transformation["id"] == "organize":
            renamed = transformation["options"].get("renameByName", {})
            return tuple(name for name in renamed if not name.startswith("Value #"))
    return ()


def queries(uid: str) -> Iterator[Query]:
    dashboard = DASHBOARDS[uid]
    for panel in content_panels(dashboard):
        for target in panel.get("targets", []):
            legend = target.get("legendFormat", "")
            yield Query(uid, panel["title"], target["expr"], legend, table_columns(panel))
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            yield Query(uid, f"annotation {annotation['name']}", annotation["expr"])


def all_queries() -> list[Query]:
    return [query for uid in DASHBOARDS for query in queries(uid)]


def variable_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(variable, metric selector, label) of every `label_values(selector, label)` variable."""
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text)
        assert match, f"{variable['name']}: only label_values(selector, label) is supported"
        yield variable["name"], match.group(1), match.group(2)


# ------------------------------------------------------------------------------------------------
# PromQL helpers
# ------------------------------------------------------------------------------------------------

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_KEYWORDS |= {"and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric and recording-rule names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"%[-+#0-9.]*[a-z]", " 0 ", text)  # printf verbs of alert templates: numbers
    text = re.sub(r"\boffset\s+-?\w+", " ", text)  # offset 1h
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w:$])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)  # numbers, 1e-6
    names = set()
    for match in re.finditer(r"(?<![\w:$])[A-Za-z_:][\w:]*", text):
        name = match.group()
        is_call = re.match(r"\s*\(", text[match.end() :]) is not None
        if not is_call and name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def counter_ranges(expr: str) -> list[str]:
    """The range of every rate(), irate() and increase() in `expr`, e.g. ["$__rate_interval"]."""
    ranges = []
    for match in re.finditer(rf"\b({'|'.join(COUNTER_FUNCTIONS)})\s*\(", expr):
        depth, end = 1, match.end()
        while depth and end < len(expr):
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            end += 1
        argument = expr[match.end() : end - 1]
        found = re.findall(r"\[([^\]]*)\]", argument)
        ranges.extend(found or ["(no range)"])
    return ranges


def hard_coded_labels(expr: str) -> list[str]:
    """Matchers that pin `location` or `instance` to a literal instead of a variable."""
    return [
        match.group()
        for match in re.finditer(r'\b(location|instance)\s*(=~|!~|!=|=)\s*"([^"]*)"', expr)
        if not match.group(3).startswith("$")
    ]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace `$name` and `${name}` as Grafana would; an unknown variable fails."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"undefined variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def test_the_lint_helpers_catch_what_they_are_for() -> None:
    """Guards against lints that pass vacuously."""
    assert metric_names(
        'sum by (le) (rate(a_total{x="y"}[5m])) / on (b) group_left () c:d:e * 1e-6 + time()'
    ) == {"a_total", "c:d:e"}
    assert counter_ranges('rate(a[5m]) + increase(b[$__rate_interval]) + irate(c{d="["}[1m])')[
        :2
    ] == ["5m", "$__rate_interval"]
    assert hard_coded_labels('a{location="fra", instance=~"$instance", location!~"$x"}') == [
        'location="fra"'
    ]
    assert substitute(
        'x{a=~"$service"}[${__rate_interval}]', {"service": "api", **GRAFANA_VARIABLES}
    ) == ('x{a=~"api"}[1m]')


# ------------------------------------------------------------------------------------------------
# Generated and committed
# ------------------------------------------------------------------------------------------------


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the generator as the docs say: `python -m grafana.generator` from the repository."""
    return subprocess.run(
        [sys.executable, "-m", "grafana.generator", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_the_committed_dashboards_are_what_the_generator_writes() -> None:
    result = generate("--check")
    assert result.returncode == 0, result.stderr
    assert {path.name for path in DASHBOARD_FILES} == {
        "sla-overview.json",
        "sla-service.json",
        "sla-exporter.json",
        "sla-support.json",
    }


def test_an_sla_file_without_timezone_gets_the_exporters_defaults(tmp_path: Path) -> None:
    # It used to read the file with its own YAML loader and crash with KeyError: 'timezone'.
    # Its secrets (unset here) are not needed for the dashboards.
    sla = tmp_path / "sla.yml"
    sla.write_text(
        "sla: {name: Minimal}\n"
        "services:\n"
        "  api: {http: {url: https://api.example.com/, headers: {X-Key: !env UNSET_13_KEY}}}\n"
    )
    result = generate("--sla-file", str(sla), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    overview = json.loads((tmp_path / "out" / "sla-overview.json").read_text())
    assert "in UTC" in json.dumps(overview)


def test_a_bad_sla_section_is_reported_with_its_line_not_a_traceback(tmp_path: Path) -> None:
    sla = tmp_path / "sla.yml"
    sla.write_text("sla:\n  name: Bad\n  timezone: Mars/Olympus\n")
    result = generate("--sla-file", str(sla), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "sla.yml:3  sla.timezone: must be an IANA time zone" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_third_party_module_the_generator_imports_is_in_the_dashboards_extra() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    declared = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in extras["dashboards"]}
    provided = importlib.metadata.packages_distributions()
    imported = set()
    for source in (ROOT / "grafana" / "generator").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.partition(".")[0])
            elif isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
    # The generator itself, and the exporter whose SLA file loader it uses.
    third_party = imported - set(sys.stdlib_module_names) - {"grafana", "sla_exporter"}
    assert "grafana_foundation_sdk" in third_party
    normal = {name.lower().replace("_", "-") for name in declared}
    missing = {
        module
        for module in third_party
        if not {name.lower().replace("_", "-") for name in provided.get(module, [module])} & normal
    }
    assert not missing, f"imported but not in the dashboards extra: {sorted(missing)}"


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_dashboard_says_it_is_generated(uid: str) -> None:
    assert "DO NOT EDIT" in DASHBOARDS[uid]["description"]


def test_dashboard_uids_are_unique_and_match_their_file_names() -> None:
    uids = [dashboard["uid"] for dashboard in DASHBOARDS.values()]
    assert len(uids) == len(set(uids))
    for stem, dashboard in DASHBOARDS.items():
        assert dashboard["uid"] == stem


def sla_timezone(path: Path) -> str:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return str(yaml.load(path.read_text(), Loader=Loader)["sla"]["timezone"])


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_dashboard_time_zone_is_the_sla_time_zone(uid: str) -> None:
    """'This month' in Grafana must be the SLA's calendar month."""
    zone = sla_timezone(ROOT / "examples" / "sla.yml")
    assert zone == sla_timezone(ROOT / "examples" / "demo.yml") == "Europe/Zurich"
    assert DASHBOARDS[uid]["timezone"] == zone


# ------------------------------------------------------------------------------------------------
# Structure
# ------------------------------------------------------------------------------------------------

# Fields Grafana's dashboard schema leaves to the datasource: how Prometheus' annotation support
# (grafana/grafana, packages/grafana-prometheus/src/annotations.ts) turns series into events.
PROMETHEUS_ANNOTATION_FIELDS = {"step", "titleFormat", "textFormat", "tagKeys", "useValueForTime"}


def schema_differences(dashboard: dict[str, Any]) -> list[str]:
    """Where `dashboard` differs from itself read into Grafana's schema and written back.

    The models are grafana-foundation-sdk's, generated from the schemas Grafana publishes for
    dashboards and each panel kind (a panel's options and field config by its kind's): a field
    the schema does not know, or one in the wrong place, is lost on the way.
    """
    register_default_plugins()
    again = json.loads(json.dumps(Dashboard.from_json(dashboard), cls=JSONEncoder))
    return list(differences(dashboard, again, dashboard.get("uid", "")))


def differences(before: Any, after: Any, path: str) -> Iterator[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(before.keys() | after.keys()):
            if key not in after:
                yield f"{path}.{key}: not in the schema"
            elif key not in before:
                yield f"{path}.{key}: added by the schema"
            else:
                yield from differences(before[key], after[key], f"{path}.{key}")
    elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for index, (one, other) in enumerate(zip(before, after, strict=True)):
            yield from differences(one, other, f"{path}[{index}]")
    elif before != after:
        yield f"{path}: {before!r} read back as {after!r}"


def test_the_schema_check_catches_a_field_grafana_does_not_know() -> None:
    """Guards against a schema check that passes vacuously: a misspelt option, and a unit set on
    the panel instead of its field config, are both reported."""
    dashboard = copy.deepcopy(DASHBOARDS["sla-exporter"])
    assert not schema_differences(dashboard)
    dashboard["panels"][0]["options"]["colourMode"] = "background"
    dashboard["panels"][1]["unit"] = "s"
    assert schema_differences(dashboard) == [
        "sla-exporter.panels[0].options.colourMode: not in the schema",
        "sla-exporter.panels[1].unit: not in the schema",
    ]


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_field_of_every_dashboard_is_in_grafanas_schema(uid: str) -> None:
    dashboard = DASHBOARDS[uid]
    allowed = {
        f"{uid}.annotations.list[{index}].{field}: not in the schema"
        for index, annotation in enumerate(dashboard["annotations"]["list"])
        if annotation["datasource"]["type"] == "prometheus"
        for field in PROMETHEUS_ANNOTATION_FIELDS
    }
    unknown = [
        difference for difference in schema_differences(dashboard) if difference not in allowed
    ]
    assert not unknown, "\n".join(unknown)


def test_a_panel_without_a_description_or_a_unit_cannot_be_built() -> None:
    up = PanelQuery("up")
    assert stat_panel("Up", "Whether Prometheus scrapes it.", "none", up).build().description
    for description, unit in [("", "none"), (" ", "none"), ("Whether Prometheus scrapes it.", "")]:
        with pytest.raises(ValueError, match="every panel needs a description and a unit"):
            stat_panel("Up", description, unit, up)


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_panel_has_a_description_and_a_known_unit(uid: str) -> None:
    for panel in content_panels(DASHBOARDS[uid]):
        assert panel.get("description", "").strip(), f"{panel['title']}: no description"
        units = [panel["fieldConfig"]["defaults"].get("unit")]
        for override in panel["fieldConfig"].get("overrides", []):
            units += [p["value"] for p in override["properties"] if p["id"] == "unit"]
        for unit in units:
            assert unit in KNOWN_UNITS, f"{panel['title']}: unit {unit!r} is not a Grafana unit"


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_query_uses_the_provisioned_datasource(uid: str) -> None:
    dashboard = DASHBOARDS[uid]
    fixed = {"type": "prometheus", "uid": DATASOURCE_UID}
    for panel in content_panels(dashboard):
        assert panel["datasource"] == fixed, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == fixed, panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == fixed, variable["name"]
    for annotation in dashboard["annotations"]["list"]:
        if not annotation.get("builtIn"):
            assert annotation["datasource"] == fixed, annotation["name"]


def test_the_provisioned_datasource_has_the_fixed_uid() -> None:
    config = yaml.safe_load(DATASOURCE_FILE.read_text())
    (datasource,) = config["datasources"]
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "prometheus"
    # $__rate_interval is max(4 x this, step + this): it must be the scrape interval.
    prometheus = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    assert datasource["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]


def test_thresholds_from_a_query_come_from_the_objective_query() -> None:
    """Config from query results takes its query out of the panel: it must be the objective's,
    not one of the figures the panel shows."""
    checked = []
    for uid, dashboard in DASHBOARDS.items():
        for panel in content_panels(dashboard):
            legends = {target["refId"]: target["legendFormat"] for target in panel["targets"]}
            for transformation in panel.get("transformations", []):
                if transformation["id"] == "configFromData":
                    ref = transformation["options"]["configRefId"]
                    assert legends.get(ref) == "objective", f"{panel['title']}: {ref} of {legends}"
                    checked.append(f"{uid} / {panel['title']}")
    assert sorted(checked) == [
        "sla-overview / Availability this month",
        "sla-overview / Projected at month end",
        "sla-service / Availability this month",
    ]


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_rates_over_counters_use_the_rate_interval(uid: str) -> None:
    for query in queries(uid):
        for window in counter_ranges(query.expr):
            assert window == "$__rate_interval", f"{query.title}: {query.expr}"


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_no_query_hard_codes_a_location_or_an_instance(uid: str) -> None:
    for query in queries(uid):
        assert not hard_coded_labels(query.expr), f"{query.title}: {query.expr}"
    for _, selector, _ in variable_queries(DASHBOARDS[uid]):
        assert not hard_coded_labels(selector), selector


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_variable_a_query_uses_is_defined(uid: str) -> None:
    dashboard = DASHBOARDS[uid]
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    for query in queries(uid):
        assert query.variables() <= defined | set(GRAFANA_VARIABLES), query.title


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_panels_have_unique_ids_and_titles_and_do_not_overlap(uid: str) -> None:
    dashboard = DASHBOARDS[uid]
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    titles = [panel["title"] for panel in content_panels(dashboard)]
    assert len(titles) == len(set(titles)), "the live tests tell panels apart by title"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


# ------------------------------------------------------------------------------------------------
# Every metric named exists
# ------------------------------------------------------------------------------------------------


def known_metrics() -> set[str]:
    """The golden catalogue, the metrics of docs/METRICS.md that only some SLA files bring (the
    support section's, the month pooled across `locations:`), and recording rules."""
    names = {line.split()[0] for line in GOLDEN.read_text().splitlines() if line.strip()}
    doc = METRICS_DOC.read_text()
    names |= set(re.findall(r"^\| `(sla_month_pooled_\w+)`", doc, flags=re.MULTILINE))
    support = doc.split("\n## Support", 1)[1]
    for name in re.findall(r"^\| `(sla_support_\w+)`", support, flags=re.MULTILINE):
        names.add(name)
        # Histograms are documented by their base name.
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names | PROMETHEUS_SERIES


def rule_expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every rule expression and every query in an alert's annotations."""
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule.get("alert")
                yield f"{path.name} {name}", rule["expr"]
                for text in rule.get("annotations", {}).values():
                    for query in re.findall(r"`([^`]*)`", text):
                        yield f"{path.name} {name} annotation", query.replace("%q", '""')


def test_every_metric_a_dashboard_names_exists() -> None:
    known = known_metrics()
    named = [(query.title, name) for query in all_queries() for name in metric_names(query.expr)]
    for dashboard in DASHBOARDS.values():
        for variable, selector, _ in variable_queries(dashboard):
            named += [(f"variable {variable}", name) for name in metric_names(selector)]
    assert named
    unknown = sorted({f"{where}: {name}" for where, name in named if name not in known})
    assert not unknown, "not in tests/golden/metrics.txt, METRICS.md or a rule:\n" + "\n".join(
        unknown
    )


def test_every_metric_a_rule_names_exists() -> None:
    known = known_metrics()
    unknown = sorted(
        f"{where}: {name}"
        for where, expr in rule_expressions()
        for name in metric_names(expr)
        if name not in known
    )
    assert not unknown, "not in tests/golden/metrics.txt, METRICS.md or a rule:\n" + "\n".join(
        unknown
    )


# ------------------------------------------------------------------------------------------------
# Every query against a real Prometheus
# ------------------------------------------------------------------------------------------------

SUPPORT_TOKEN = "dashboard-test-support-token"
# Appended to the demo SLA file: a maintenance window over the website, and a support desk open
# around the clock with a 10-minute first response, so that every state of the queue, a
# deadline and this month's compliance can be produced by events from the last few minutes.
SUPPORT_CONFIG = """
maintenance:
  - services: [website]
    start: {start}
    end: {end}
    description: dashboard test window
support:
  database: support.db
  token: {token}
  calendars:
    always:
      timezone: Europe/Zurich
      hours: {{mon-sun: ["00:00-24:00"]}}
  policies:
    {policy}:
      calendar: always
      targets: {{first_response: 10m, resolution: 1d}}
      warn_before: 5m
      objective: 0.95
"""


def support_events(now: datetime) -> list[dict[str, str]]:
    """Tickets in every state: breached, warning, within target, paused, and one answered."""

    def at(minutes: int) -> str:
        return (now - timedelta(minutes=minutes)).isoformat(timespec="seconds")

    return [
        {"id": "1", "ticket": "breached", "type": "created", "time": at(11), "level": "1"},
        {"id": "2", "ticket": "warning", "type": "created", "time": at(7), "level": "1"},
        {"id": "3", "ticket": "answered", "type": "created", "time": at(2), "level": "1"},
        {"id": "4", "ticket": "answered", "type": "agent_replied", "time": at(1)},
        {"id": "5", "ticket": "answered", "type": "resolved", "time": at(1)},
        {"id": "6", "ticket": "fresh", "type": "created", "time": at(1), "level": "1"},
        {"id": "7", "ticket": "waiting", "type": "created", "time": at(3), "level": "1"},
        {"id": "8", "ticket": "waiting", "type": "paused", "time": at(2)},
    ]


def seed_previous_month(path: Path, now: float) -> None:
    """Final figures for last month, as an exporter that ran then would have left them.

    The API breached (500 failed minutes of a 99 % month), the others met the objective.
    """
    ledger = Ledger(path, "Europe/Zurich")
    start = month_bounds(month_key(now, ledger.zone), ledger.zone)[0]
    previous = month_key(start - 1, ledger.zone)
    first, end = month_bounds(previous, ledger.zone)
    for service in DEMO_SERVICES:  # monitored all month
        ledger.advance(first, service, 0.99, "down", ())
    for service in DEMO_SERVICES:
        failed = (500 if service == "api" else 10) * 60
        # Results stand for their slots; equal neighbours merge, so one result per span is
        # the ledger a minute-by-minute month of them leaves.
        ledger.record(service, first, failed, up=False, reason="timeout")
        ledger.record(service, first + failed, end - first - failed, up=True)
    for service in DEMO_SERVICES:
        ledger.advance(end, service, 0.99, "down", ())
    ledger.flush()


def seeded_month_seconds() -> float:
    """The length of the month seed_previous_month fills (the one before the current)."""
    zone = ZoneInfo("Europe/Zurich")
    start = month_bounds(month_key(time.time(), zone), zone)[0]
    first, end = month_bounds(month_key(start - 1, zone), zone)
    return end - first


def post_events(stack: Stack, events: list[dict[str, str]]) -> None:
    request = urllib.request.Request(
        f"{stack.exporter}/api/v1/support/events",
        data=json.dumps(events).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {SUPPORT_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response) == {"stored": len(events), "duplicates": 0}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The demo stack with support, a maintenance window and last month, started once."""
    workdir = tmp_path_factory.mktemp("dashboards")
    now = datetime.now(UTC)
    seed_previous_month(workdir / "ledger.json", now.timestamp())
    extra = SUPPORT_CONFIG.format(
        start=(now - timedelta(hours=1)).isoformat(timespec="seconds"),
        end=(now + timedelta(hours=1)).isoformat(timespec="seconds"),
        token=SUPPORT_TOKEN,
        policy=SUPPORT_POLICY,
    )
    with running_stack(workdir, extra_config=extra) as running:
        post_events(running, support_events(now))
        yield running


def contexts(query: Query, services: list[str]) -> list[dict[str, str]]:
    """The variable values to run `query` with: once per service if it uses $service."""
    dashboard = DASHBOARDS[query.dashboard]
    values = dict(GRAFANA_VARIABLES, location=LOCATION, policy=SUPPORT_POLICY)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "custom":
            values[variable["name"]] = variable["current"]["value"]
    if "service" not in query.variables():
        return [values]
    return [dict(values, service=service) for service in services]


def run(stack: Stack, query: Query, values: dict[str, str]) -> list[dict[str, Any]]:
    """Run the query as Grafana would; check each series has what its legend or table shows."""
    result = stack.query(substitute(query.expr, values))
    for series in result:
        labels = series["metric"]
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", query.legend) + list(query.columns):
            assert label in labels, f"{query.title}: {label} missing in {labels}"
    return result


def empty_queries(stack: Stack, required: list[tuple[Query, dict[str, str]]]) -> list[str]:
    return [
        f"{query.dashboard} / {query.title} with {values.get('service', '-')}: {query.expr}"
        for query, values in required
        if not run(stack, query, values)
    ]


@pytest.mark.slow
def test_variables_list_the_demo_services_location_and_policy(stack: Stack) -> None:
    expected = {
        "service": set(DEMO_SERVICES),
        "location": {LOCATION},
        "policy": {SUPPORT_POLICY},
    }

    def lists(name: str, selector: str, label: str) -> bool:
        query = f"group by ({label}) ({substitute(selector, {'service': '.*'})})"
        return {s["metric"].get(label, "") for s in stack.query(query)} == expected[name]

    for dashboard in DASHBOARDS.values():
        for name, selector, label in variable_queries(dashboard):
            wait_for(
                functools.partial(lists, name, selector, label),
                f"{dashboard['uid']} variable {name} = {expected[name]}",
            )


@pytest.mark.slow
def test_every_query_runs_and_has_data_while_the_services_are_healthy(stack: Stack) -> None:
    """No query fails, and each has data except those that only fill on a failure."""
    required = []
    for query in all_queries():
        for values in contexts(query, DEMO_SERVICES):
            run(stack, query, values)  # no error, right labels, even when empty
            only = ONLY_FOR.get(query.key)
            if query.key in WHILE_FAILING or (only and values["service"] not in only):
                continue
            required.append((query, values))
    assert len(required) > 200
    # Ratios need two scrapes, month rules an evaluation after the first probe: a few seconds.
    last: list[str] = []

    def filled() -> bool:
        last[:] = empty_queries(stack, required)
        return not last

    try:
        wait_for(filled, "every panel with data", timeout=45)
    except (AssertionError, pytest.fail.Exception):  # wait_for fails through pytest.fail
        pytest.fail("no data after 45 s:\n" + "\n".join(last))


@pytest.mark.slow
def test_failure_panels_fill_when_a_service_fails(stack: Stack) -> None:
    """Failures by reason, failing since and alert annotations, with the API answering badly."""
    failing = [
        (query, values)
        for query in all_queries()
        if query.key in WHILE_FAILING
        for values in contexts(query, ["api"])
    ]
    assert len(failing) == len(WHILE_FAILING)
    stack.set_service("api", up=False)
    last: list[str] = []

    def filled() -> bool:
        last[:] = empty_queries(stack, failing)
        return not last

    try:
        wait_for(filled, "failure panels with data", timeout=30)
    except (AssertionError, pytest.fail.Exception):  # wait_for fails through pytest.fail
        pytest.fail("no data after 30 s with the API down:\n" + "\n".join(last))
    finally:
        stack.set_service("api", up=True)


@pytest.mark.slow
def test_previous_months_and_support_show_their_figures(stack: Stack) -> None:
    """The seeded month's compliance and the support queue come through the rules as expected:
    each service's table, the overview's count per month and its list of the breaches."""
    compliance = next(
        q for q in queries("sla-service") if q.title == "Previous months" and "sla_met" in q.expr
    )
    met = {
        service: [
            s["value"][1]
            for s in wait_for(
                lambda service=service: run(
                    stack, compliance, {"service": service, "location": LOCATION}
                ),
                f"previous month's compliance of {service}",
            )
        ]
        for service in DEMO_SERVICES
    }
    assert met == {service: ["0" if service == "api" else "1"] for service in DEMO_SERVICES}

    every = {"service": ".*", "location": LOCATION}
    summary = {
        column: [s["value"][1] for s in run(stack, q, every)]
        for q, column in zip(
            (q for q in queries("sla-overview") if q.title == "Previous months"),
            ("services", "met", "breached", "lowest"),
            strict=True,
        )
    }
    # 500 failed minutes of the month, exactly as the rules divide them.
    api_availability = 1 - 500 * 60 / seeded_month_seconds()
    lowest = summary.pop("lowest")
    assert summary == {
        "services": [str(len(DEMO_SERVICES))],
        "met": [str(len(DEMO_SERVICES) - 1)],
        "breached": ["1"],
    }
    assert [float(value) for value in lowest] == [api_availability]
    breached = [q for q in queries("sla-overview") if q.title == "Breached months"]
    assert len(breached) == 4
    for query in breached:
        rows = run(stack, query, every)
        assert [row["metric"]["sla_service"] for row in rows] == ["api"], query.expr
    assert float(run(stack, breached[0], every)[0]["value"][1]) == api_availability

    queue = next(q for q in queries("sla-support") if q.title == "Queue now by policy and state")
    states = {
        s["metric"]["state"]: s["value"][1] for s in run(stack, queue, {"policy": SUPPORT_POLICY})
    }
    assert states == {"breached": "1", "warning": "1", "within_target": "1", "paused": "1"}
