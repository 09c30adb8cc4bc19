"""SLA support (sla-support): the helpdesk's queue, deadlines and monthly compliance."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from grafana.generator.base import Settings, sla_dashboard
from grafana.generator.panels import (
    BLUE,
    GREEN,
    GREY,
    ORANGE,
    RED,
    Column,
    Query,
    bargauge_panel,
    dashed,
    mapping,
    stat_panel,
    steps,
    table_panel,
    timeseries_panel,
)
from grafana.generator.shared import CURRENT_SUPPORT_MONTH, POL
from grafana.generator.templating import query_variable

UID = "sla-support"
QUEUE = "policy_calendar_state:sla_support_open_tickets:max"


def build(settings: Settings) -> dashboard.Dashboard:
    """Support: the queue, its deadlines, compliance per policy, ingestion."""
    board = sla_dashboard(
        settings,
        UID,
        "SLA support",
        "The support half of the SLA, from the sla_support_* metrics and the support recording "
        "rules: the queue now by policy and state, the nearest deadlines, and compliance per "
        f"policy and calendar month (in {settings.timezone}).",
        time_from="now/M",
    )
    board.with_variable(
        query_variable(
            "policy",
            "Policy",
            "label_values(sla_support_policy_info, policy)",
            "Support policies of the SLA file (label policy).",
        )
    )
    queue(board)
    compliance(board)
    board.with_row(dashboard.Row("Ingestion"))
    ingestion(board)
    return board


def queue_count(title: str, state: str) -> Query:
    """Open tickets of the selected policies, in `state` (every state if empty)."""
    selector = f', state="{state}"' if state else ""
    return Query(f"sum({QUEUE}{{{POL}{selector}}})", title.lower(), instant=True)


def queue(board: dashboard.Dashboard) -> None:
    """The queue now: counts by state, calendars, by policy, and the nearest deadlines."""
    for title, state, colours, description in [
        ("Open tickets", "", steps(BLUE), "Open tickets of the selected policies, every state."),
        (
            "Breached",
            "breached",
            steps(GREEN, (1, RED)),
            "Open tickets with a running clock past its deadline "
            "(SupportTicketBreached pages within opening hours).",
        ),
        (
            "Warning",
            "warning",
            steps(GREEN, (1, ORANGE)),
            "Open tickets closer to a deadline than the policy's warn_before "
            "(SupportTicketBreachImminent).",
        ),
        (
            "Paused",
            "paused",
            steps(BLUE),
            "Open tickets waiting on the customer: their clocks stand still.",
        ),
    ]:
        board.with_panel(
            stat_panel(title, description, "short", queue_count(title, state)).thresholds(colours)
        )
    board.with_panel(
        stat_panel(
            "Unmatched open tickets",
            "Open tickets that no policy matches, so nothing measures them "
            "(sla_support_unmatched_open_tickets); SupportTicketsUnmatched opens a ticket.",
            "short",
            Query("max(sla_support_unmatched_open_tickets)", "unmatched", instant=True),
        ).thresholds(steps(GREEN, (1, ORANGE)))
    )
    board.with_panel(
        stat_panel(
            "Calendars open now",
            "Whether each support calendar is within opening hours now "
            "(sla_support_calendar_open); business clocks run only then.",
            "none",
            Query("max by (calendar) (sla_support_calendar_open)", "{{calendar}}", instant=True),
        ).mappings(mapping({"1": ("open", GREEN), "0": ("closed", GREY)}))
    )
    board.with_panel(
        bargauge_panel(
            "Queue now by policy and state",
            "Open tickets per policy and state now (policy_calendar_state:sla_support_open_"
            "tickets:max, the max across exporters): within_target, warning, breached, paused.",
            "short",
            Query(
                f"sum by (policy, state) ({QUEUE}{{{POL}}})", "{{policy}} · {{state}}", instant=True
            ),
        ).decimals(0)
    )
    board.with_panel(
        table_panel(
            "Nearest deadlines",
            "Per policy and target, the nearest deadline of a running clock not yet breached: "
            "time left on the target's clock (business seconds: outside opening hours it stands "
            "still) and the wall-clock instant it falls due "
            "(sla_support_next_deadline_business_seconds, _timestamp_seconds).",
            [
                Column(
                    "Clock time left",
                    f"min by (policy, target) "
                    f"(sla_support_next_deadline_business_seconds{{{POL}}})",
                    "s",
                    thresholds=steps(RED, (900, ORANGE), (3600, GREEN)),
                ),
                Column(
                    "Due at",
                    f"min by (policy, target) "
                    f"(sla_support_next_deadline_timestamp_seconds{{{POL}}}) * 1000",
                    "dateTimeAsIso",
                ),
            ],
            [("policy", "Policy"), ("target", "Target")],
            sort_by="Clock time left",
            width=12,
        )
    )


def compliance(board: dashboard.Dashboard) -> None:
    """The queue over time, and each policy's compliance this month and per month."""
    board.with_panel(
        timeseries_panel(
            "Open tickets by state",
            "Open tickets of the selected policies over time, by state.",
            "short",
            Query(f"sum by (state) ({QUEUE}{{{POL}}})", "{{state}}"),
            stacked=True,
        ).min(0)
    )
    board.with_panel(
        timeseries_panel(
            "Compliance this month",
            "Share of this month's clocks that met their target, per policy "
            "(policy_month:sla_support_compliance:ratio), against each policy's objective "
            "(dashed). Absent until a clock is counted in the month.",
            "percentunit",
            Query(
                f"policy_month:sla_support_compliance:ratio{{{POL}}} {CURRENT_SUPPORT_MONTH}",
                "{{policy}}",
            ),
            Query(f"policy:sla_support_objective:ratio{{{POL}}}", "{{policy}} objective"),
        )
        .max(1)
        .overrides([dashed(".* objective", matcher="byRegexp")])
    )
    board.with_panel(
        table_panel(
            "Monthly compliance per policy",
            "Per policy and calendar month (the SLA's zone): clocks counted (a clock counts in "
            "the month it stopped in, or the month its deadline passed in if it breached), "
            "the late ones, compliance = 1 - breached / measured, the policy's objective, and "
            "whether it was met. The running month is month to date.",
            [
                Column(
                    "Measured", f"policy_month:sla_support_month_measured:sum{{{POL}}}", "short"
                ),
                Column(
                    "Breached", f"policy_month:sla_support_month_breached:sum{{{POL}}}", "short"
                ),
                Column(
                    "Compliance",
                    f"policy_month:sla_support_compliance:ratio{{{POL}}}",
                    "percentunit",
                    decimals=2,
                ),
                Column(
                    "Objective",
                    f"policy_month:sla_support_month_measured:sum{{{POL}}} * 0 "
                    f"+ on (policy) group_left () policy:sla_support_objective:ratio",
                    "percentunit",
                    decimals=2,
                ),
                Column(
                    "Objective met",
                    f"policy_month:sla_support_compliance:ratio{{{POL}}} "
                    f">= bool on (policy) group_left () policy:sla_support_objective:ratio",
                    "none",
                    mappings=mapping({"1": ("met", GREEN), "0": ("missed", RED)}),
                    thresholds=steps(RED, (1, GREEN)),
                ),
            ],
            [("month", "Month"), ("policy", "Policy")],
            sort_by="Month",
            sort_desc=True,
            height=10,
        )
    )


def ingestion(board: dashboard.Dashboard) -> None:
    """The helpdesk's events: received, rejected, the last one, stored."""
    board.with_panel(
        timeseries_panel(
            "Events received per minute",
            "Ticket events the helpdesk sent, per minute, by outcome: stored (new) or duplicate "
            "(a repeat, ignored) (sla_support_events_total).",
            "cpm",
            Query(
                "sum by (location, outcome) (rate(sla_support_events_total[$__rate_interval])) "
                "* 60",
                "{{outcome}} ({{location}})",
            ),
            width=8,
        ).min(0)
    )
    board.with_panel(
        timeseries_panel(
            "Rejected requests per minute",
            "Requests to the events endpoint refused, per minute, by HTTP code "
            "(sla_support_rejected_requests_total): 400 bad input, 401 token, 409 reused id, "
            "413 too large. Anything but 0 means events are being lost at the sender.",
            "cpm",
            Query(
                "sum by (location, code) "
                "(rate(sla_support_rejected_requests_total[$__rate_interval])) * 60",
                "{{code}} ({{location}})",
            ),
            width=8,
        ).min(0)
    )
    board.with_panel(
        stat_panel(
            "Last event received",
            "Time since the exporter stored the last new event "
            "(sla_support_last_event_received_timestamp_seconds). A long silence within "
            "opening hours usually means a broken webhook; SupportEventsStale opens a ticket "
            "after 2 hours of it.",
            "s",
            Query(
                "time() - max by (location) (sla_support_last_event_received_timestamp_seconds)",
                "{{location}}",
                instant=True,
            ),
            height=8,
        )
        .thresholds(steps(GREEN, (3600, ORANGE)))
        .no_value("none yet")
    )
    board.with_panel(
        stat_panel(
            "Stored events",
            "Events in the exporter's database (sla_support_stored_events).",
            "short",
            Query("max by (location) (sla_support_stored_events)", "{{location}}", instant=True),
            height=8,
        ).thresholds(steps(BLUE))
    )
