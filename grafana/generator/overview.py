"""SLA overview (sla-overview): every service now and this month, and the previous months."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models.common import BigValueGraphMode, BigValueTextMode

from grafana.generator.base import Settings, sla_dashboard
from grafana.generator.panels import (
    BLUE,
    GREEN,
    ORANGE,
    RED,
    Column,
    Query,
    link,
    stat_panel,
    steps,
    table_panel,
    up_down,
)
from grafana.generator.shared import (
    BY_LOCATION,
    CURRENT_MONTH,
    LOC,
    SVC,
    against_objective,
    budget_left_time,
    finished_month_columns,
    location_variable,
    service_variable,
    this_month,
)

UID = "sla-overview"


def build(settings: Settings) -> dashboard.Dashboard:
    """The overview: a summary line, a row per service, the previous months."""
    board = sla_dashboard(
        settings,
        UID,
        "SLA overview",
        "Every service of the SLA: up now, this month against the objective, error budget, "
        f"burn rate, and the previous months. Months are the SLA's, in {settings.timezone}.",
        time_from="now/M",
    )
    board.with_variable(service_variable()).with_variable(location_variable())
    summary(board)
    board.with_row(dashboard.Row("$service").repeat("service"))
    per_service(board, settings)
    board.with_row(dashboard.Row("Previous months"))
    previous_months(board)
    return board


def summary(board: dashboard.Dashboard) -> None:
    """The top line: the SLA and its zone, then counts that are 0 when all is well."""
    board.with_panel(
        stat_panel(
            "SLA and time zone",
            "The SLA file's name and the IANA zone its calendar months are counted in "
            "(sla_info). This dashboard's time zone must be the same one, so that 'this month' "
            "on the time picker is the SLA's month; see docs/DASHBOARDS.md.",
            "none",
            Query("max by (sla, timezone) (sla_info)", "{{sla}} · {{timezone}}", instant=True),
            width=8,
        )
        .thresholds(steps(BLUE))
        .text_mode(BigValueTextMode.NAME)
    )
    board.with_panel(
        stat_panel(
            "Services down now",
            "Services whose last probe fails in a quorum of locations "
            "(sla_service:probe_quorum_failing:bool). 0 when everything answers.",
            "short",
            Query(f"sum(sla_service:probe_quorum_failing:bool{{{SVC}}})", "down", instant=True),
            width=5,
        ).thresholds(steps(GREEN, (1, RED)))
    )
    board.with_panel(
        stat_panel(
            "Services breaching this month",
            "Service and location pairs whose failed slots this month already exceed the "
            "month's error budget (sla_service_location_month:sla_met:bool = 0).",
            "short",
            Query(
                f"count(sla_service_location_month:sla_met:bool{BY_LOCATION} == 0 "
                f"{CURRENT_MONTH}) or vector(0)",
                "breaching",
                instant=True,
            ),
            width=5,
        ).thresholds(steps(GREEN, (1, RED)))
    )
    board.with_panel(
        stat_panel(
            "Alerts firing",
            "SLA alerts firing now (critical and warning; the info alert SLAServiceInMaintenance "
            "is left out). Alertmanager routes them: critical pages, warning opens a ticket.",
            "short",
            Query(
                'count(ALERTS{alertstate="firing", severity=~"critical|warning"}) or vector(0)',
                "alerts",
                instant=True,
            ),
            width=6,
        ).thresholds(steps(GREEN, (1, ORANGE)))
    )


def per_service(board: dashboard.Dashboard, settings: Settings) -> None:
    """One row per service (the row repeats over $service): now, this month, the budget."""
    board.with_panel(
        stat_panel(
            "Up now",
            "Whether the service answers now: DOWN while its last probe fails in a quorum of "
            "locations (sla_service:probe_quorum_failing:bool). Click for the service's detail.",
            "none",
            Query(
                f"1 - sla_service:probe_quorum_failing:bool{{{SVC}}}",
                "{{sla_service}}",
                instant=True,
            ),
            width=3,
        )
        .mappings(up_down())
        .data_links(
            [
                link(
                    "Service detail",
                    "/d/sla-service/sla-service-detail?var-service=${service}&${__url_time_range}",
                )
            ]
        )
    )
    board.with_panel(
        against_objective(
            settings,
            "Availability this month",
            "Month-to-date availability as the SLA counts it: down time (plus time no probe "
            "covered, if the SLA counts it as down) over the time that counts, maintenance left "
            "out. 'all locations' is the service's one figure (pooled across the SLA file's "
            "locations, or the only location's); the others are per location. Green at or above "
            "the service's objective, red below. Rules: sla_service_month:sla_availability:ratio, "
            "sla_service_location_month:sla_availability:ratio.",
            Query(
                f"sla_service_month:sla_availability:ratio{{{SVC}}} "
                "and on (month) location_month:sla_month_current:bool",
                "all locations",
                instant=True,
            ),
            this_month("sla_service_location_month:sla_availability:ratio"),
            width=4,
        )
    )
    board.with_panel(
        budget_left_time(
            "Downtime still allowed this month before the objective is breached, per location: "
            "the month's budget minus its down (and counted unknown) time. Negative once "
            "overspent. "
            "Rule: sla_service_location_month:error_budget_remaining:seconds.",
            width=4,
        )
    )
    board.with_panel(
        stat_panel(
            "Error budget left",
            "This month's error budget left as a share of the whole month's budget, per location "
            "(1 = untouched, 0 = used up, negative = overspent). Orange below a quarter. "
            "Rule: sla_service_location_month:error_budget_remaining:ratio.",
            "percentunit",
            this_month("sla_service_location_month:error_budget_remaining:ratio"),
            width=3,
        )
        .thresholds(steps(RED, (0, ORANGE), (0.25, GREEN)))
        .decimals(1)
    )
    board.with_panel(
        stat_panel(
            "Burn rate (1h)",
            "How fast the service spends its error budget: the error ratio of the last hour "
            "over the budget ratio (1 - objective), all locations pooled. 1 spends exactly the "
            "month's budget in a month; 14.4 over 1h (and 5m) pages (SLAErrorBudgetBurn). "
            "Rules: sla_service:probe_errors:ratio_rate1h / sla_service:error_budget:ratio.",
            "none",
            Query(
                f"sla_service:probe_errors:ratio_rate1h{{{SVC}}} "
                f"/ on (sla_service) sla_service:error_budget:ratio{{{SVC}}}",
                "{{sla_service}}",
            ),
            width=3,
        )
        .thresholds(steps(GREEN, (1, ORANGE), (14.4, RED)))
        .decimals(2)
        .graph_mode(BigValueGraphMode.AREA)  # a sparkline
    )
    board.with_panel(
        against_objective(
            settings,
            "Projected at month end",
            "Availability at the end of the month if the rest of the month fails at the "
            "month-to-date rate, per location. Empty until a day of the month has counted: a "
            "rate over a few hours predicts nothing. Green at or above the objective. "
            "Rule: sla_service_location_month:projected_sla_availability:ratio.",
            this_month("sla_service_location_month:projected_sla_availability:ratio"),
            width=4,
        )
    )
    board.with_panel(
        stat_panel(
            "Unknown time",
            "Time this month that no probe result covers (exporter down or stuck), per "
            "location. It counts as downtime if the SLA file says `sla.unknown: down` (the "
            "default), and is left out with `excluded`. Rule: "
            "sla_service_location_month:unknown:seconds.",
            "s",
            this_month("sla_service_location_month:unknown:seconds"),
            width=3,
        ).thresholds(steps(GREEN, (1, ORANGE)))
    )


def previous_months(board: dashboard.Dashboard) -> None:
    """The finished months in two tables that stay short at any number of services, from series
    recorded for them (prometheus/rules/month.yml, group sla-month-finished-tables): one row
    per month and location, then the months that missed their objective. Every month of one
    service is on its detail dashboard (a data link away)."""

    def per_month(figure: str) -> str:
        return f"location_finished_month:{figure}{{{LOC}}}"

    board.with_panel(
        table_panel(
            "Previous months",
            "Every finished month the exporter keeps (12 besides the running one, from its own "
            "month ledger, so they survive Prometheus' retention), one row per month and "
            "location, over every service of the SLA (the service filter does not apply): how "
            "many were measured, how many met their objective and how many breached it (failed "
            "time against the month's exact budget, under the objective the month ran under), "
            "and the lowest availability among them. Which services breached: the next table. "
            "Rules: location_finished_month:*.",
            [
                Column("Services", per_month("sla_services:count"), "none"),
                Column("Met", per_month("sla_met:count"), "none"),
                Column(
                    "Breached",
                    per_month("sla_breached:count"),
                    "none",
                    thresholds=steps(GREEN, (1, RED)),
                ),
                Column(
                    "Lowest availability",
                    per_month("sla_availability:min"),
                    "percentunit",
                    decimals=3,
                ),
            ],
            [("month", "Month"), ("location", "Location")],
            sort_by="Month",
            sort_desc=True,
            width=10,
            height=10,
        )
    )
    board.with_panel(
        table_panel(
            "Breached months",
            "The finished months in which a selected service missed its objective, per "
            "location, with their final figures. Empty while every month was met. A service's "
            "every month, met or not, is in the table of its detail dashboard (click its row). "
            "Rules: sla_service_location_breached_month:*.",
            finished_month_columns(breached_only=True),
            [("month", "Month"), ("sla_service", "Service"), ("location", "Location")],
            sort_by="Month",
            sort_desc=True,
            width=14,
            height=10,
            links=[
                link(
                    "Service detail",
                    "/d/sla-service/sla-service-detail?var-service=${__data.fields.Service}"
                    "&${__url_time_range}",
                )
            ],
        )
    )
