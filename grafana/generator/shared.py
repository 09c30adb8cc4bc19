"""What more than one dashboard shows: PromQL fragments, the month's figures, the variables."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, stat

from grafana.generator.base import Settings
from grafana.generator.panels import (
    GREEN,
    RED,
    REFS,
    Column,
    Query,
    mapping,
    objective_from_query,
    stat_panel,
    steps,
)
from grafana.generator.templating import query_variable

# PromQL fragments. `=~` with the variables: Grafana expands a multi-value or "All" selection into
# a regex; a repeated row substitutes its single value.
SVC = 'sla_service=~"$service"'
LOC = 'location=~"$location"'
POL = 'policy=~"$policy"'
BY_LOCATION = f"{{{SVC}, {LOC}}}"
CURRENT_MONTH = "and on (location, month) location_month:sla_month_current:bool"
CURRENT_SUPPORT_MONTH = "and on (month) month:sla_support_month_current:bool"
# The finished months' final figures (prometheus/rules/month.yml, group sla-month-finished).
FINISHED = "sla_service_location_finished_month"
BREACHED = "sla_service_location_breached_month"  # the finished months that missed, alone

SERVICE_VARIABLE_HELP = "Services of the SLA file (label sla_service)."
LOCATION_VARIABLE_HELP = "Where the probes run from: one exporter per location (target label)."


def service_variable(multi: bool = True) -> dashboard.QueryVariable:
    """The SLA file's services: several (or all) at once, or one."""
    return query_variable(
        "service",
        "Service",
        "label_values(sla_objective_ratio, sla_service)",
        SERVICE_VARIABLE_HELP,
        multi=multi,
        include_all=multi,
    )


def location_variable(selector: str = "sla_probe_success") -> dashboard.QueryVariable:
    """The locations (exporters) the series of `selector` come from."""
    return query_variable(
        "location", "Location", f"label_values({selector}, location)", LOCATION_VARIABLE_HELP
    )


def this_month(metric: str) -> Query:
    """A per-location month figure of the selected services, the running month only."""
    return Query(f"{metric}{BY_LOCATION} {CURRENT_MONTH}", "{{location}}", instant=True)


def finished_month_columns(breached_only: bool = False) -> list[Column]:
    """The final figures of the selected services' finished months, per location; with
    `breached_only`, of the months that missed their objective alone, from the series recorded
    for them (so that a table of 10,000 services reads and lists the few breaches, not 120,000
    months)."""
    level = BREACHED if breached_only else FINISHED
    columns = [
        Column(
            "Availability",
            f"{level}:sla_availability:ratio{BY_LOCATION}",
            "percentunit",
            decimals=3,
        )
    ]
    if not breached_only:
        columns.append(
            Column(
                "Compliance",
                f"{FINISHED}:sla_met:bool{BY_LOCATION}",
                "none",
                mappings=mapping({"1": ("met", GREEN), "0": ("breached", RED)}),
                thresholds=steps(RED, (1, GREEN)),
            )
        )
    return [
        *columns,
        Column("Downtime", f"{level}:downtime:seconds{BY_LOCATION}", "s"),
        Column("Budget left", f"{level}:error_budget_remaining:seconds{BY_LOCATION}", "s"),
        Column("Unknown time", f"{level}:unknown:seconds{BY_LOCATION}", "s"),
    ]


def objective(instant: bool = True) -> Query:
    """The objective of the selected services, as a series named "objective"."""
    return Query(f"max(sla_service:objective:ratio{{{SVC}}})", "objective", instant=instant)


def against_objective(
    settings: Settings, title: str, description: str, *queries: Query, width: int
) -> stat.Panel:
    """An availability stat, green at or above the service's objective and red below: the
    objective comes from Prometheus through a last query (see objective_from_query)."""
    # The objective is the query after the others: its ref is the next letter.
    thresholds, from_objective = objective_from_query(settings.objective, REFS[len(queries)])
    return (
        stat_panel(title, description, "percentunit", *queries, objective(), width=width)
        .thresholds(thresholds)
        .transformations([from_objective])
        .decimals(3)
    )


def budget_left_time(description: str, width: int) -> stat.Panel:
    """Downtime still allowed this month, per location; red once overspent."""
    return stat_panel(
        "Error budget left (time)",
        description,
        "s",
        this_month("sla_service_location_month:error_budget_remaining:seconds"),
        width=width,
    ).thresholds(steps(RED, (0, GREEN)))
