"""The month's SLA statement: `sla-report`, from the one month accounting the rules use.

Figures come from Prometheus: the month series the exporters expose (`sla_month_*`, and
`sla_month_pooled_*` across locations), the same the recording rules and dashboards read. The
incident list comes from each location's exporter (`GET /api/v1/report?month=`): the month span
by span as its ledger counts it, so the down and unknown spans add up to the month's downtime to
the millisecond; the report checks that they do, and says so when they do not (a ledger lost or
recovered, an exporter not given). Availability is shown truncated, never rounded, so that
98.9995 % reads 98.999 % and cannot pass for 99.000 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import jinja2

from . import __version__
from .ledger import STATES, Ledger, Span, month_bounds, month_key

SCHEMA = "sla-report/1"
LOOKBACK = "35d"  # exporters expose their 13 months at every scrape: the last sample is recent
INCIDENT_STATES = ("down", "unknown")  # what counts as downtime


# --------------------------------------------------------------------------------------------
# The exporter's side: a month span by span


def month_document(
    ledger: Ledger,
    location: str,
    key: str,
    services: dict[str, Any],
    support_misses: list[dict[str, str]] | None = None,
    clock: float | None = None,
) -> dict[str, Any]:
    """What `GET /api/v1/report?month=` serves: for each service (name -> (interval, windows,
    objective, unknown)), the month's figures and its spans other than up, as /metrics counts
    them."""
    out: dict[str, Any] = {}
    clock = datetime.now().timestamp() if clock is None else clock
    for name, (interval, windows, objective, unknown) in services.items():
        spans: list[Span] = []
        figures = ledger.exposed(
            name, key, clock, interval, windows, objective, unknown, spans=spans
        )
        out[name] = {
            "seconds": {state: figures.seconds[state] / 1000 for state in STATES},
            "budget_seconds": figures.budget / 1000,
            "spans": [
                [span.start / 1000, span.end / 1000, span.state, list(span.reasons)]
                for span in spans
                if span.state != "up"
            ],
        }
    return {
        "location": location,
        "timezone": ledger.zone.key,
        "month": key,
        "services": out,
        "support_misses": support_misses or [],
    }


# --------------------------------------------------------------------------------------------
# The report


@dataclass
class Figure:
    """A month of one service, for the whole service or one location."""

    source: str  # "pooled", "location" or the location's name
    seconds: dict[str, float]
    budget_seconds: float
    objective: float
    slot_seconds: float

    @property
    def downtime(self) -> float:
        return self.seconds["down"] + self.seconds["unknown"]

    @property
    def counted(self) -> float:
        return self.seconds["up"] + self.downtime

    def summary(self) -> dict[str, Any]:
        met = self.downtime <= self.budget_seconds
        return {
            "source": self.source,
            "availability": availability(self.seconds["up"], self.counted),
            "availability_ratio": self.seconds["up"] / self.counted if self.counted else None,
            "met": met,
            "objective": self.objective,
            "downtime_seconds": self.downtime,
            "counted_seconds": self.counted,
            "budget_seconds": self.budget_seconds,
            "budget_left_seconds": self.budget_seconds - self.downtime,
            "slot_seconds": self.slot_seconds,
            "failed_slots": self.downtime / self.slot_seconds if self.slot_seconds else None,
            "budget_slots": self.budget_seconds / self.slot_seconds if self.slot_seconds else None,
            **{f"{state}_seconds": self.seconds[state] for state in STATES},
        }


def availability(up: float, counted: float) -> str | None:
    """Percent with three decimals, truncated: 98.9995 % is 98.999 %, never 99.000 %."""
    if not counted:
        return None
    exact = Decimal(repr(up)) / Decimal(repr(counted)) * 100
    return str(exact.quantize(Decimal("0.001"), rounding=ROUND_DOWN))


@dataclass
class ServiceReport:
    service: str
    figure: Figure | None = None
    locations: list[Figure] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    maintenance: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


async def _query(session: aiohttp.ClientSession, url: str, promql: str) -> list[Any]:
    async with session.get(f"{url}/api/v1/query", params={"query": promql}) as response:
        body = await response.json(content_type=None)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus at {url} refused {promql!r}: {body.get('error')}")
    return list(body["data"]["result"])


class _Series:
    """The month series Prometheus holds, figure by figure, for any month they cover."""

    def __init__(self, *samples: list[Any]) -> None:
        (
            self.seconds,
            self.budgets,
            self.objectives,
            self.slots,
            self.pooled,
            self.pooled_budgets,
        ) = samples

    def months(self) -> list[str]:
        return sorted({s["metric"]["month"] for s in self.seconds})

    def month(self, key: str) -> dict[str, ServiceReport]:
        def of(samples: list[Any]) -> list[Any]:
            return [s for s in samples if s["metric"].get("month") == key]

        def by(samples: list[Any]) -> dict[tuple[str, str], float]:
            return {
                (s["metric"]["sla_service"], s["metric"].get("location", "")): float(s["value"][1])
                for s in of(samples)
            }

        per_location: dict[tuple[str, str], dict[str, float]] = {}
        for s in of(self.seconds):
            m = s["metric"]
            per_location.setdefault((m["sla_service"], m.get("location", "")), {})[m["state"]] = (
                float(s["value"][1])
            )
        budget, objective, slot = by(self.budgets), by(self.objectives), by(self.slots)
        pooled_seconds: dict[str, dict[str, float]] = {}
        for s in of(self.pooled):  # every location exposes the same pooled month: the largest
            m = s["metric"]
            states = pooled_seconds.setdefault(m["sla_service"], {})
            states[m["state"]] = max(states.get(m["state"], 0.0), float(s["value"][1]))
        pooled_budget: dict[str, float] = {}
        for (service, _), value in by(self.pooled_budgets).items():
            pooled_budget[service] = max(pooled_budget.get(service, 0.0), value)
        reports: dict[str, ServiceReport] = {}
        for (service, location), states in sorted(per_location.items()):
            report = reports.setdefault(service, ServiceReport(service))
            report.locations.append(
                Figure(
                    location or "location",
                    {state: states.get(state, 0.0) for state in STATES},
                    budget.get((service, location), 0.0),
                    objective.get((service, location), 0.0),
                    slot.get((service, location), 0.0),
                )
            )
        for service, report in reports.items():
            first = report.locations[0]
            if service in pooled_seconds:
                states = pooled_seconds[service]
                report.figure = Figure(
                    "pooled",
                    {state: states.get(state, 0.0) for state in STATES},
                    pooled_budget.get(service, 0.0),
                    first.objective,
                    first.slot_seconds,
                )
            elif len(report.locations) == 1:
                report.figure = first
            else:
                report.notes.append(
                    f"{len(report.locations)} locations and no pooled month (the SLA file has no "
                    "locations: section): one figure per location only"
                )
        return reports


async def gather(
    prometheus: str, month: str, exporters: Sequence[str], timeout: float = 30.0
) -> dict[str, Any]:
    """Everything the report of `month` says, as the JSON document (schema sla-report/1)."""
    prometheus = prometheus.rstrip("/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:

        async def last(name: str) -> list[Any]:  # every month the exporters keep (13)
            return await _query(session, prometheus, f"last_over_time({name}[{LOOKBACK}])")

        seconds, budgets, objectives, slots, pooled, pooled_budgets, info = await asyncio.gather(
            last("sla_month_seconds"),
            last("sla_month_error_budget_seconds"),
            last("sla_month_objective_ratio"),
            last("sla_month_slot_seconds"),
            last("sla_month_pooled_seconds"),
            last("sla_month_pooled_error_budget_seconds"),
            last("sla_info"),
        )
        measured, breached, support_objectives, support_policies = await asyncio.gather(
            last(f'sla_support_month_measured{{month="{month}"}}'),
            last(f'sla_support_month_breached{{month="{month}"}}'),
            last("sla_support_objective_ratio"),
            last("sla_support_policy_info"),
        )
        documents = []
        for url in exporters:
            target = f"{url.rstrip('/')}/api/v1/report?month={month}"
            async with session.get(target) as response:
                if response.status != 200:
                    raise RuntimeError(f"{target}: HTTP {response.status}")
                documents.append(await response.json())

    series = _Series(seconds, budgets, objectives, slots, pooled, pooled_budgets)
    reports = series.month(month)
    history: dict[str, list[dict[str, Any]]] = {}
    for key in series.months()[-13:]:
        for service, past in series.month(key).items():
            if past.figure is not None:
                summary = past.figure.summary()
                history.setdefault(service, []).append(
                    {"month": key, "availability": summary["availability"], "met": summary["met"]}
                )
    for document in documents:
        for service, entry in document["services"].items():
            found = reports.get(service)
            if found is None:
                continue
            report = found
            # An exporter started without --location does not know its name; with a single
            # location, Prometheus' label says it.
            location = document["location"] or (
                report.locations[0].source if len(report.locations) == 1 else "location"
            )
            for start, end, state, reasons in entry["spans"]:
                item = {
                    "location": location,
                    "start": start,
                    "end": end,
                    "duration_seconds": end - start,
                    "state": state,
                    "reasons": reasons,
                }
                if state in INCIDENT_STATES:
                    report.incidents.append(item)
                elif state == "maintenance":
                    report.maintenance.append(item)
            # The incidents must add up to the downtime Prometheus holds for this location.
            mine = [f for f in report.locations if f.source in (location, "location")]
            spans = sum(
                i["duration_seconds"] for i in report.incidents if i["location"] == location
            )
            if mine and abs(spans - mine[0].downtime) > 0.0005:
                report.notes.append(
                    f"{location}: the incidents add up to {spans:g} s but Prometheus holds "
                    f"{mine[0].downtime:g} s of downtime (a ledger recovered or replaced?)"
                )
            if any(state == "recovered" for _, _, state, _ in entry["spans"]):
                report.notes.append(
                    f"{location}: part of the month was recovered from Prometheus as totals; "
                    "its incidents are not known"
                )
    missing = []
    if not reports:
        missing.append(f"Prometheus at {prometheus} holds no month series for {month}")
    if not exporters:
        missing.append("no --exporter.url given: no incident list")
    name, zone = next(
        ((s["metric"].get("sla", ""), s["metric"].get("timezone", "UTC")) for s in info),
        ("", "UTC"),
    )
    start, end = month_bounds(month, ZoneInfo(zone))
    now = datetime.now().timestamp()
    return {
        "schema": SCHEMA,
        "generator": f"sla-report {__version__}",
        "sla": name,
        "timezone": zone,
        "month": month,
        "month_start": start,
        "month_end": end,
        "final": end <= now,
        "generated": now,
        "services": [
            {
                "service": r.service,
                "figure": r.figure.summary() if r.figure else None,
                "locations": [f.summary() for f in r.locations],
                "incidents": sorted(r.incidents, key=lambda i: (i["start"], i["location"])),
                "maintenance": r.maintenance,
                "notes": r.notes,
                "history": history.get(r.service, []),
            }
            for r in sorted(reports.values(), key=lambda r: r.service)
        ],
        "support": support_summary(
            measured, breached, support_objectives, support_policies, documents
        ),
        "missing": missing,
    }


def support_summary(
    measured: list[Any],
    breached: list[Any],
    objectives: list[Any],
    policies: list[Any],
    documents: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Per support policy: clocks measured and late in the month, by target, against the
    policy's objective, the calendar it counts in, and the late tickets by id."""
    out: dict[str, dict[str, Any]] = {}
    calendars = {s["metric"]["policy"]: s["metric"].get("calendar", "") for s in policies}
    objective = {s["metric"]["policy"]: float(s["value"][1]) for s in objectives}
    for samples, field_ in ((measured, "measured"), (breached, "breached")):
        for s in samples:
            policy, target = s["metric"]["policy"], s["metric"]["target"]
            entry = out.setdefault(policy, {"policy": policy, "targets": {}})
            counts = entry["targets"].setdefault(target, {"measured": 0, "breached": 0})
            counts[field_] = max(counts[field_], int(float(s["value"][1])))
    misses: dict[str, list[dict[str, str]]] = {}
    for document in documents:
        for miss in document.get("support_misses", []):
            misses.setdefault(miss["policy"], []).append(miss)
    for policy, entry in out.items():
        total = sum(t["measured"] for t in entry["targets"].values())
        late = sum(t["breached"] for t in entry["targets"].values())
        entry["calendar"] = calendars.get(policy, "")
        entry["objective"] = objective.get(policy)
        entry["measured"], entry["breached"] = total, late
        entry["compliance"] = availability(total - late, total)
        entry["met"] = (
            None
            if not total or entry["objective"] is None
            else Fraction(total - late, total) >= Fraction(str(entry["objective"]))
        )
        entry["misses"] = sorted(misses.get(policy, []), key=lambda m: (m["ticket"], m["target"]))
    return [out[p] for p in sorted(out)]


# --------------------------------------------------------------------------------------------
# Rendering


def duration(seconds: float) -> str:
    seconds = round(seconds)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = (
        [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{minutes}m"] * bool(minutes)
    )
    return sign + ("".join(parts) + (f"{secs}s" if secs or not parts else "") or "0s")


def local(timestamp: float, zone: str) -> str:
    return datetime.fromtimestamp(timestamp, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %z")


def text(document: dict[str, Any]) -> str:
    """The terminal table."""
    zone = document["timezone"]
    lines = [
        f"SLA statement {document['sla']} {document['month']} ({zone})"
        + ("" if document["final"] else ", month to date"),
        "",
        f"{'service':<14} {'availability':>12} {'objective':>9} {'met':>5} {'downtime':>10} "
        f"{'budget left':>11} {'unknown':>9}",
    ]
    for service in document["services"]:
        rows = [service["figure"]] if service["figure"] else []
        rows += service["locations"] if len(service["locations"]) > 1 else []
        for figure in rows:
            label = service["service"] + (
                "" if figure is service["figure"] else f" @{figure['source']}"
            )
            lines.append(
                f"{label:<14} {(figure['availability'] or '-') + ' %':>12} "
                f"{figure['objective'] * 100:>8g}% {'yes' if figure['met'] else 'NO':>5} "
                f"{duration(figure['downtime_seconds']):>10} "
                f"{duration(figure['budget_left_seconds']):>11} "
                f"{duration(figure['unknown_seconds'] + figure['excluded_seconds']):>9}"
            )
        for incident in service["incidents"]:
            lines.append(
                f"    {incident['state']:<7} {local(incident['start'], zone)} .. "
                f"{local(incident['end'], zone)[11:]}  {duration(incident['duration_seconds']):>8}"
                f"  {incident['location']}  {', '.join(incident['reasons'])}"
            )
        lines += [f"    note: {note}" for note in service["notes"]]
        if len(service["history"]) > 1:
            lines.append(
                "    months: "
                + "  ".join(
                    f"{h['month']} {h['availability'] or '-'}%{'' if h['met'] else ' (breached)'}"
                    for h in service["history"]
                )
            )
    for policy in document["support"]:
        lines.append(
            f"support {policy['policy']} ({policy['calendar']}): {policy['compliance'] or '-'} % "
            f"within target ({policy['measured'] - policy['breached']} of {policy['measured']}), "
            f"objective {policy['objective'] * 100 if policy['objective'] else 0:g} %"
        )
        lines += [f"    late: {m['ticket']} ({m['target']})" for m in policy["misses"]]
    lines += [f"missing: {m}" for m in document["missing"]]
    return "\n".join(lines) + "\n"


TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("sla_exporter", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
)
TEMPLATES.filters["duration"] = duration


def html(document: dict[str, Any]) -> str:
    """A self-contained page to send a customer: print-friendly, no script."""
    zone = document["timezone"]
    return TEMPLATES.get_template("report.html").render(
        doc=document, local=lambda t: local(t, zone)
    )


# --------------------------------------------------------------------------------------------
# The command


async def sla_zone(prometheus: str) -> str:
    """The SLA's time zone, as the exporters state it (sla_info); UTC if none does."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        info = await _query(
            session, prometheus.rstrip("/"), f"last_over_time(sla_info[{LOOKBACK}])"
        )
    return next((s["metric"].get("timezone", "UTC") for s in info), "UTC")


def last_finished_month(zone: str) -> str:
    now = datetime.now(ZoneInfo(zone))
    first = now.replace(day=1)
    return month_key(first.timestamp() - 1, ZoneInfo(zone))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sla-report",
        description="The month's SLA statement from Prometheus and the exporters' month ledgers.",
    )
    parser.add_argument("--prometheus.url", dest="prometheus", default="http://127.0.0.1:9090")
    parser.add_argument(
        "--exporter.url",
        dest="exporters",
        action="append",
        default=[],
        help="an exporter to take the incident list from; once per location",
    )
    parser.add_argument(
        "--month",
        default="last",
        help="YYYY-MM, `last` (the last finished month, the default) or `current`",
    )
    parser.add_argument(
        "--timezone",
        default=None,
        help="the SLA's zone, for which month is last or current (default: sla_info's)",
    )
    parser.add_argument("--format", choices=("text", "json", "html"), default="text")
    parser.add_argument("--output", default="-", help="a file, or - for standard output")
    args = parser.parse_args(argv)
    month = args.month
    try:
        zone = args.timezone or asyncio.run(sla_zone(args.prometheus))
    except (aiohttp.ClientError, TimeoutError, RuntimeError) as err:
        print(f"sla-report: {err}", file=sys.stderr)
        return 1
    if month == "last":
        month = last_finished_month(zone)
    elif month == "current":
        month = month_key(datetime.now().timestamp(), ZoneInfo(zone))
    try:
        document = asyncio.run(gather(args.prometheus, month, args.exporters))
    except (aiohttp.ClientError, TimeoutError, RuntimeError) as err:
        print(f"sla-report: {err}", file=sys.stderr)
        return 1
    renderers: dict[str, Callable[[dict[str, Any]], str]] = {
        "text": text,
        "html": html,
        "json": lambda d: json.dumps(d, indent=2) + "\n",
    }
    rendered = renderers[args.format](document)
    if args.output == "-":
        sys.stdout.write(rendered)
    else:
        Path(args.output).write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
