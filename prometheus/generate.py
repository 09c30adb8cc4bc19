"""Writes the rolling-window rules and burn-rate alerts from one table (prometheus/windows.yml).

    python prometheus/generate.py          # write prometheus/rules/burn_rate.yml and the reference
    python prometheus/generate.py --check  # exit 1 if a committed file is not what this writes

Two files come out of the table:

- prometheus/rules/burn_rate.yml, shipped: the error ratios of every window (short windows from
  the exporter's counters, long ones from 5-minute snapshots of them), the history each alert's
  long window needs, and the SLAErrorBudgetBurn alerts.
- prometheus/tests/reference/raw_ratios.yml, for tests only: every ratio of the shipped file
  computed the expensive way, rate() over the raw counters, under the name prefixed
  `reference_`. prometheus/tests/windows_equal_test.yml holds the two against each other.

Both say "DO NOT EDIT": change the table (or this script) and run it again. tests/test_rules.py
regenerates them and fails on any difference, the way slok/sloth checks its examples/_gen/.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "prometheus" / "windows.yml"
RULES = ROOT / "prometheus" / "rules" / "burn_rate.yml"
REFERENCE = ROOT / "prometheus" / "tests" / "reference" / "raw_ratios.yml"
RUNBOOK = "https://github.com/sla-bundle/sla-bundle/blob/main/docs/runbook.md#slaerrorbudgetburn"
REFERENCE_PREFIX = "reference_"

# The four counters every ratio is made of: (counter, maintenance part of it).
FAILURES = ("sla_probe_failures_total", "sla_maintenance_probe_failures_total")
PROBES = ("sla_probes_total", "sla_maintenance_probes_total")
SNAPSHOT_LEVEL = "sla_service_location_instance"
UNITS = {"m": 60, "h": 3600, "d": 86400}


class TableError(Exception):
    """prometheus/windows.yml says something the generator cannot turn into rules."""


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)([mhd])", duration)
    if not match:
        raise TableError(f"{duration!r} is not a duration like 5m, 6h or 30d")
    return int(match[1]) * UNITS[match[2]]


@dataclass(frozen=True)
class Window:
    window: str
    source: str  # "raw" or "snapshots"
    availability: bool


@dataclass(frozen=True)
class Alert:
    long: str
    short: str
    burn: str  # as written in the expression: 14.4, 6
    severity: str
    for_: str
    summary: str
    description: str


@dataclass(frozen=True)
class Table:
    period: str
    snapshot_interval: str
    windows: tuple[Window, ...]
    alerts: tuple[Alert, ...]
    budget_left: str

    def window(self, name: str) -> Window:
        return next(w for w in self.windows if w.window == name)


class _Mapping(dict[str, Any]):
    """A YAML mapping that remembers the line it starts on, for error messages."""

    line = 0


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> _Mapping:
    mapping = _Mapping({str(k): v for k, v in loader.construct_mapping(node, deep=True).items()})
    mapping.line = node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load(path: Path = TABLE) -> Table:
    """The table, checked: known keys, windows that exist, snapshots that divide them. Errors
    name the file, the line and the key."""
    raw = yaml.load(path.read_text(), Loader=_Loader)  # a SafeLoader: no arbitrary objects
    name = path.name

    def fail(item: Any, at: str, message: str) -> TableError:
        line = getattr(item, "line", 0)
        return TableError(f"{name}:{line}: {at}: {message}" if line else f"{name}: {at}: {message}")

    def keys(item: Any, allowed: set[str], required: set[str], at: str) -> None:
        if not isinstance(item, dict):
            raise fail(item, at, f"expected a mapping, got {item!r}")
        unknown = set(item) - allowed
        if unknown:
            raise fail(item, at, f"unknown key(s) {sorted(unknown)}")
        missing = required - set(item)
        if missing:
            raise fail(item, at, f"missing key(s) {sorted(missing)}")

    top = {"period", "snapshot_interval", "windows", "alerts", "budget_left"}
    keys(raw, top, top, "the file")
    step = seconds(raw["snapshot_interval"])
    windows = []
    for i, item in enumerate(raw["windows"]):
        keys(item, {"window", "source", "availability"}, {"window", "source"}, f"windows[{i}]")
        if item["source"] not in ("raw", "snapshots"):
            raise fail(item, f"windows[{i}].source", f"raw or snapshots, not {item['source']}")
        if item["source"] == "snapshots" and seconds(item["window"]) % step:
            raise fail(
                item,
                f"windows[{i}]",
                f"{item['window']} is not a multiple of the snapshot_interval "
                f"{raw['snapshot_interval']}",
            )
        windows.append(Window(item["window"], item["source"], bool(item.get("availability"))))
    names = [w.window for w in windows]
    if names != sorted(names, key=seconds) or len(set(names)) != len(names):
        raise fail(raw, "windows", f"each once, shortest first, not {names}")
    if raw["period"] not in names:
        raise fail(raw, "period", f"{raw['period']} must be one of the windows")
    alerts = []
    fields = {"long", "short", "burn", "severity", "for", "summary", "description"}
    for i, item in enumerate(raw["alerts"]):
        keys(item, fields, fields, f"alerts[{i}]")
        for key in ("long", "short"):
            if item[key] not in names:
                raise fail(item, f"alerts[{i}].{key}", f"{item[key]} is not a window")
        if item["severity"] not in ("critical", "warning"):
            raise fail(item, f"alerts[{i}].severity", "critical or warning")
        try:
            seconds(item["for"])
        except TableError as error:
            raise fail(item, f"alerts[{i}].for", str(error)) from None
        alerts.append(
            Alert(
                item["long"],
                item["short"],
                f"{item['burn']:g}",
                item["severity"],
                item["for"],
                item["summary"],
                item["description"],
            )
        )
    return Table(
        raw["period"], raw["snapshot_interval"], tuple(windows), tuple(alerts), raw["budget_left"]
    )


# ------------------------------------------------------------------------------------------------
# Writing YAML by hand: the files are read by people, so they keep comments and block scalars.


def comment(text: str, indent: int, width: int = 100) -> list[str]:
    """`text` as YAML comments, each paragraph filled to `width` columns; lines that begin with
    a space (tables) or with `----` (headings) are kept as they are."""
    pad = f"{' ' * indent}# "
    out: list[str] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            out.extend(
                pad + line
                for line in textwrap.wrap(
                    " ".join(paragraph),
                    width=width - len(pad),
                    break_long_words=False,
                    break_on_hyphens=False,
                )
            )
            paragraph.clear()

    for line in textwrap.dedent(text).splitlines():
        if not line.strip():
            flush()
            out.append(pad.rstrip())
        elif line.startswith((" ", "----")):
            flush()
            out.append(pad + line)
        else:
            paragraph.append(line.strip())
    flush()
    return out


def rule(kind: str, name: str, expr: str, indent: int = 6) -> list[str]:
    pad = " " * indent
    lines = [f"{pad}- {kind}: {name}"]
    if "\n" in expr:
        lines.append(f"{pad}  expr: |")
        lines += [f"{pad}    {line}" for line in expr.splitlines()]
    else:
        lines.append(f"{pad}  expr: {expr}")
    return lines


def folded(key: str, text: str, indent: int, width: int = 92) -> list[str]:
    """`key: >-` and the text wrapped: YAML folds it back to the same one-line string."""
    pad = " " * indent
    if len(text) <= width:
        wrapped = [text]
    else:
        wrapped = textwrap.wrap(text, width=width, break_long_words=False, break_on_hyphens=False)
    return [f"{pad}{key}: >-", *(f"{pad}  {line}" for line in wrapped)]


def header(source: str) -> list[str]:
    return [
        f"# DO NOT EDIT: generated by prometheus/generate.py from prometheus/windows.yml. {source}",
        "# Change the table (or the generator), run `python prometheus/generate.py` and commit the",
        "# result; tests/test_rules.py regenerates this file and fails where it differs.",
    ]


# ------------------------------------------------------------------------------------------------
# The rules


def snapshot(counter: str, step: str) -> str:
    return f"{SNAPSHOT_LEVEL}:{counter}:max_over_time{step}"


def counted_rate(pair: tuple[str, str], window: Window, step: str, raw: bool = False) -> str:
    """Per second over the window, the counter less its maintenance part, per location."""
    if raw or window.source == "raw":
        read = [f"{counter}[{window.window}]" for counter in pair]
    else:
        read = [f"{snapshot(counter, step)}[{window.window}]" for counter in pair]
    total, maintenance = (f"sum by (sla_service, location) (rate({r}))" for r in read)
    return f"{total}\n-\n{maintenance}"


def ratio_rules(
    table: Table, window: Window, prefix: str = "", raw: bool = False
) -> list[tuple[str, str]]:
    """(name, expr) of the six, or four, rules of one window."""
    w = window.window
    failures = f"{prefix}sla_service_location:sla_probe_failures:rate{w}"
    probes = f"{prefix}sla_service_location:sla_probes:rate{w}"
    rules = [
        (failures, counted_rate(FAILURES, window, table.snapshot_interval, raw)),
        (probes, counted_rate(PROBES, window, table.snapshot_interval, raw)),
        (f"{prefix}sla_service_location:probe_errors:ratio_rate{w}", f"{failures}\n/\n{probes}"),
        (
            f"{prefix}sla_service:probe_errors:ratio_rate{w}",
            f"sum by (sla_service) ({failures})\n/\nsum by (sla_service) ({probes})",
        ),
    ]
    if window.availability:
        for level in ("sla_service_location", "sla_service"):
            rules.append(
                (
                    f"{prefix}{level}:probe_availability:ratio_rate{w}",
                    f"1 - {prefix}{level}:probe_errors:ratio_rate{w}",
                )
            )
    return rules


def burn_condition(alert: Alert, indent: str) -> str:
    """The per-location condition of one alert: both windows above the burn, history covered."""
    budget = f"on (sla_service) group_left () ({alert.burn} * sla_service:error_budget:ratio)"
    return "\n".join(
        [
            f"{indent}    (sla_service_location:probe_errors:ratio_rate{alert.long} > {budget})",
            f"{indent}  and",
            f"{indent}    (sla_service_location:probe_errors:ratio_rate{alert.short} > {budget})",
            f"{indent}  and on (sla_service, location)",
            f"{indent}    sla_service_location:probe_history:covers{alert.long}",
        ]
    )


def history_windows(table: Table, source: str) -> list[str]:
    """The long windows of the alerts that read windows of `source`."""
    longs = {alert.long for alert in table.alerts if table.window(alert.long).source == source}
    return sorted(longs, key=seconds)


def covers(window: str) -> list[str]:
    return rule(
        "record",
        f"sla_service_location:probe_history:covers{window}",
        f"group by (sla_service, location) (sla_probes_total offset {window})",
    )


GROUP_RULE = "  # " + "-" * 93

RATIOS_COMMENT = """\
Rolling error ratios from the counters, maintenance probes excluded.

For every window: failures and probes per second with maintenance probes taken out (the SLA
does not count them), their ratio per location, and the ratio over all locations as
SUM(failures) / SUM(probes) - never an average of per-location ratios, which would weigh a
location that probed once as much as one that probed a hundred times. Availability is
1 - error ratio. While every probe of a window ran in maintenance the ratio is 0/0 = NaN:
no figure, and no alert (NaN compares false).

Short windows (group sla-probe-ratios, every 15s) read the counters themselves. Long windows
(group sla-probe-ratios-long, every {step}) read snapshots of the counters taken every {step}
at the start of that group: a window of W reads W / {step} samples per counter instead of
W / 15s. docs/RULES.md, "Snapshots", says why the figure is the same, and
prometheus/tests/windows_equal_test.yml holds both shapes against each other."""

HISTORY_COMMENT = """\
---- history: is each long window covered by data? ----
A ratio over [6h] on a Prometheus (or a service) with 20 minutes of samples is a ratio
over 20 minutes: rate() reads what is there, so a 4-minute outage looks like a 20 % error
rate "over 6 hours" and pages. The burn-rate alerts use a long window only where the probe
counter already existed when the window began: `offset W` finds a sample in the 5 minutes
before now - W (the lookback), so the window is covered to within 5 minutes. The counters
count every probe in the exporter, so a gap in Prometheus' own samples later in the window
loses no probe; only the time before the first sample is missing history. One sample looked
up per series: no cost worth a thought. 1 where the window is covered, absent where it is not
(the first hour, the first 6 hours... of a new install or of a service added to the SLA file)."""

LONG_HISTORY_COMMENT = """\
---- history of the long windows ----
As for 1h above (group sla-probe-ratios), for the long windows of the alerts, here with the
windows they qualify: a window's history changes once, when it fills up, and 5 minutes later
than that changes nothing worth a rule every 15s."""

PAGE_BURN_COMMENT = """\
---- page-level burn of one location ----
The location burns its error budget at a rate that pages (the critical rows of the table:
{rows}), with each long window covered by history. Used by SLALocationFailing, in its
condition and its text alike. Value: the location's error ratio over the last {first}."""

SNAPSHOTS_COMMENT = """\
---- snapshots of the counters, every {step} ----
Each counter as it stood at this evaluation, per exporter instance: the highest value in the
last {step}, which is the last one unless the exporter restarted in between. rate() over
these snapshots is rate() over the counters, sampled every {step} instead of every scrape.
`instance` stays: a restart resets one exporter's counters, and rate() must see that reset
on its own series; summed with another exporter's first, it would read as a smaller drop
and count twice. `max_over_time`, not the last value: across a restart the snapshot keeps
the old process's last count for up to {step}, so rate() sees the drop from there and loses
none of the probes the old process counted after the previous snapshot (the new process's
first probes are counted up to {step} later, when the snapshot drops to its count)."""

LONG_GROUP_COMMENT = """\
Every {step}: the snapshots, then the long windows from them, in the same evaluation, so that
each window ends on the snapshot just taken and begins on one taken exactly W before (Prometheus
2.42 ranges include both ends): no extrapolation, and with the counters scraped on the same grid
the very figure rate() over the counters gives. The alerts on these windows wait 15 minutes
(6x page) to hours (`for`); a figure up to {step} old changes little."""

ALERTS_COMMENT = """\
Error budget burn: multiwindow, multi-burn-rate alerts, Google SRE workbook chapter 5
"Alerting on SLOs", table 5-8 (https://sre.google/workbook/alerting-on-slos/).

Burn rate = error ratio / error budget ratio. A burn rate of 1 spends exactly the month's
budget in {period}; 14.4 spends 2 % of it in one hour. Each alert needs BOTH a long window
(enough budget is gone to matter) and a short window (it is still happening, so the alert
resolves minutes after the fix instead of an hour later).

{table}

Locations: a condition must hold in MORE than sla:location_quorum:ratio of the locations
(per-location ratios, counted), so one location failing alone (its network, its DNS) does
not page; it raises SLALocationFailing instead. $value is the error ratio over the long
window with every location pooled.

History: a long window counts only where the probe counters existed when it began
(sla_service_location:probe_history:covers<long>). A Prometheus with 20 minutes of samples
would otherwise read a 4-minute outage as a 20 % error rate over "6 hours" and page 6x. So on
a new install or for a newly added service the 14.4x alert can page after the first hour,
the 6x after 6 hours; SLAServiceDown pages for a hard outage from the first minutes.

Detection time for a full outage (100 % errors) at a 99 % objective: the 1h error ratio
reaches 14.4 x 1 % = 14.4 % after 0.144 x 60 min = 8.64 min, i.e. on the 9th failed 1-minute
probe; plus `for: 2m`. SLAServiceDown pages earlier for a hard outage. Windows from snapshots
(sla-probe-ratios-long) are up to {step} old: add that to the detection of the alerts on them."""


def words(duration: str) -> str:
    amount, unit = int(duration[:-1]), {"m": "minute", "h": "hour", "d": "day"}[duration[-1]]
    return f"{amount} {unit}{'s' if amount != 1 else ''}"


def alert_table(table: Table) -> str:
    period = seconds(table.period)
    lines = [
        "  burn   long  short  budget spent in the long window   severity   for",
    ]
    for a in table.alerts:
        spent = float(a.burn) * seconds(a.long) / period
        lines.append(
            f"  {a.burn:<6} {a.long:<5} {a.short:<6} {spent:.0%}".ljust(53)
            + f"{a.severity:<10} {a.for_}"
        )
    return "\n".join(lines)


def rules_file(table: Table) -> str:
    step = table.snapshot_interval
    raw = [w for w in table.windows if w.source == "raw"]
    long = [w for w in table.windows if w.source == "snapshots"]
    out = header("The shipped rules.")
    out += [
        "#",
        "# Names follow `level:metric:operations` (prometheus/rules/recording.yml says more):",
        "#   sla_service                    one series per service, every location pooled",
        "#   sla_service_location           one series per service and probing location",
        "#   sla_service_location_instance  one per service, location and exporter (snapshots)",
        "",
        "groups:",
        GROUP_RULE,
        *comment(RATIOS_COMMENT.format(step=step), 2),
        GROUP_RULE,
        "  - name: sla-probe-ratios",
        "    rules:",
        "",
        *comment(HISTORY_COMMENT, 6),
    ]
    for w in history_windows(table, "raw"):
        out += covers(w)
    for window in raw:
        out += ["", f"      # ---- {window.window}, from the counters ----"]
        for name, expr in ratio_rules(table, window):
            out += rule("record", name, expr)

    pages = [a for a in table.alerts if a.severity == "critical"]
    rows = " or ".join(f"{a.burn}x over {a.long} and {a.short}" for a in pages)
    first = words(pages[0].long).removeprefix("1 ")
    out += ["", *comment(PAGE_BURN_COMMENT.format(rows=rows, first=first), 6)]
    either = "\n  or\n".join("    (\n" + burn_condition(a, "    ") + "\n    )" for a in pages)
    out += rule(
        "record",
        "sla_service_location:probe_errors:page_burn",
        f"sla_service_location:probe_errors:ratio_rate{pages[0].long}\n"
        f"and on (sla_service, location)\n(\n{either}\n)",
    )

    out += ["", *comment(LONG_GROUP_COMMENT.format(step=step), 2)]
    out += ["  - name: sla-probe-ratios-long", f"    interval: {step}", "    rules:", ""]
    out += comment(SNAPSHOTS_COMMENT.format(step=step), 6)
    for counter in (*PROBES, *FAILURES):
        out += rule(
            "record",
            snapshot(counter, step),
            f"max by (sla_service, location, instance) (max_over_time({counter}[{step}]))",
        )
    out += ["", *comment(LONG_HISTORY_COMMENT, 6)]
    for w in history_windows(table, "snapshots"):
        out += covers(w)
    for window in long:
        out += ["", f"      # ---- {window.window}, from the snapshots ----"]
        for name, expr in ratio_rules(table, window):
            out += rule("record", name, expr)

    out += [
        "",
        GROUP_RULE,
        *comment(
            ALERTS_COMMENT.format(period=words(table.period), table=alert_table(table), step=step),
            2,
        ),
        GROUP_RULE,
        "  - name: sla-burn-rate-alerts",
        "    rules:",
    ]
    for i, a in enumerate(table.alerts):
        condition = burn_condition(a, "    ")
        expr = (
            f"sla_service:probe_errors:ratio_rate{a.long}\n"
            "and on (sla_service)\n"
            "(\n"
            "    count by (sla_service) (\n"
            f"{condition}\n"
            "    )\n"
            "  / on (sla_service)\n"
            "    sla_service:locations:count\n"
            "  > scalar(sla:location_quorum:ratio)\n"
            ")"
        )
        if i:
            out.append("")
        out += rule("alert", "SLAErrorBudgetBurn", expr)
        out += [
            f"        for: {a.for_}",
            "        labels:",
            f"          severity: {a.severity}",
            f"          long_window: {a.long}",
            f"          short_window: {a.short}",
            "        annotations:",
            f"          summary: {json.dumps(a.summary)}",
            *folded("description", a.description, 10),
            f"          runbook_url: {RUNBOOK}",
        ]
        if i == 0:
            out += ["          budget_left: &budget_left >-", f"            {table.budget_left}"]
        else:
            out.append("          budget_left: *budget_left")
    return "\n".join(out) + "\n"


def reference_file(table: Table) -> str:
    out = header("For tests only.")
    out += [
        "#",
        "# Every ratio of prometheus/rules/burn_rate.yml, computed as it was before the long",
        "# windows read snapshots: rate() over the raw counters, every window, under the same name",
        f"# prefixed `{REFERENCE_PREFIX}`. Never shipped (prometheus.yml loads rules/*.yml only):",
        "# at 10,000 services the 30d window alone reads 172,801 samples per counter and takes",
        "# minutes. prometheus/tests/windows_equal_test.yml holds the shipped rules to these.",
        "",
        "groups:",
        "  - name: reference-raw-ratios",
        "    rules:",
    ]
    for window in table.windows:
        out += ["", f"      # ---- {window.window} ----"]
        for name, expr in ratio_rules(table, window, REFERENCE_PREFIX, raw=True):
            out += rule("record", name, expr)
    return "\n".join(out) + "\n"


def outputs(table: Table) -> dict[Path, str]:
    return {RULES: rules_file(table), REFERENCE: reference_file(table)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python prometheus/generate.py", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    parser.add_argument("--table", type=Path, default=TABLE, help="the table (%(default)s)")
    args = parser.parse_args(argv)
    try:
        table = load(args.table)
    except (TableError, OSError, yaml.YAMLError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stale = 0
    for path, text in outputs(table).items():
        old = path.read_text() if path.exists() else ""
        if old == text:
            continue
        if args.check:
            stale += 1
            diff = difflib.unified_diff(
                old.splitlines(keepends=True),
                text.splitlines(keepends=True),
                f"{path.relative_to(ROOT)} (committed)",
                f"{path.relative_to(ROOT)} (generated)",
            )
            sys.stderr.writelines(diff)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(
            f"{stale} file(s) differ from what prometheus/generate.py writes: run it and commit",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
