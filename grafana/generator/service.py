"""SLA service detail (sla-service): one service's probes now, over time, and this month."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, table

from grafana.generator.base import Settings, sla_dashboard
from grafana.generator.panels import (
    BLUE,
    GREEN,
    ORANGE,
    RED,
    Query,
    dashed,
    mapping,
    stat_panel,
    state_timeline_panel,
    steps,
    table_panel,
    timeseries_panel,
    up_down,
)
from grafana.generator.shared import (
    BY_LOCATION,
    CURRENT_MONTH,
    FINISHED,
    LOC,
    SVC,
    against_objective,
    budget_left_time,
    finished_month_columns,
    location_variable,
    objective,
    service_variable,
    this_month,
)
from grafana.generator.templating import annotation, custom_variable

UID = "sla-service"


def build(settings: Settings) -> dashboard.Dashboard:
    """The service detail: one service now, over time and this month."""
    board = sla_dashboard(
        settings,
        UID,
        "SLA service detail",
        "One service of the SLA: probe results and latency by phase over time, failures by "
        "reason, maintenance windows and alerts (annotations), TLS expiry, this month and the "
        "previous months.",
        time_from="now-6h",
    )
    board.with_variable(service_variable(multi=False))
    board.with_variable(location_variable(f"sla_probe_success{{{SVC}}}"))
    board.with_variable(
        custom_variable(
            "window",
            "Window",
            ["15m", "1h", "6h", "1d"],
            "1h",
            "Sliding window of the phase percentiles: long enough to hold many "
            "probes (60 at a 1-minute interval in 1h).",
        )
    )
    board.annotation(
        annotation(
            "Maintenance",
            f"max by (sla_service) (sla_maintenance{{{SVC}}}) == 1",
            "Maintenance: {{sla_service}}",
            "declared maintenance window",
            "sla_service",
            "blue",
        )
    )
    board.annotation(
        annotation(
            "Alerts",
            f'ALERTS{{alertstate="firing", {SVC}}}',
            "{{alertname}}",
            "{{severity}} {{location}}",
            "alertname,severity",
            "red",
        )
    )
    board.with_row(dashboard.Row("Now"))
    now(board)
    board.with_row(dashboard.Row("Over time"))
    over_time(board)
    board.with_row(dashboard.Row("Mail"))
    mail(board)
    board.with_row(dashboard.Row("This month"))
    month(board, settings)
    board.with_row(dashboard.Row("Previous months"))
    board.with_panel(previous_months())
    return board


def now(board: dashboard.Dashboard) -> None:
    """The last probe's result, per location."""
    board.with_panel(
        stat_panel(
            "Last probe",
            "Result of the last probe, per location (sla_probe_success).",
            "none",
            per_location("sla_probe_success"),
        ).mappings(up_down())
    )
    board.with_panel(
        stat_panel(
            "Consecutive failures",
            "Failed probes in a row up to the last one, per location; 0 after a success. Three "
            "in a quorum of locations page (SLAServiceDown). sla_probe_consecutive_failures.",
            "short",
            Query(
                f"max by (location) (sla_probe_consecutive_failures{BY_LOCATION})",
                "{{location}}",
                instant=True,
            ),
        ).thresholds(steps(GREEN, (1, ORANGE), (3, RED)))
    )
    board.with_panel(
        stat_panel(
            "Failing since",
            "When the current run of failed probes began, per location "
            "(sla_probe_failing_since_timestamp_seconds); empty while the last probe succeeded.",
            "dateTimeFromNow",
            Query(
                "max by (location) "
                f"(sla_probe_failing_since_timestamp_seconds{BY_LOCATION}) * 1000",
                "{{location}}",
                instant=True,
            ),
        )
        .thresholds(steps(RED))
        .no_value("not failing")
    )
    board.with_panel(
        stat_panel(
            "Status code",
            "Last HTTP status or SMTP reply code received, per location (sla_probe_status_code).",
            "none",
            per_location("sla_probe_status_code"),
        ).thresholds(steps(BLUE))
    )
    board.with_panel(
        stat_panel(
            "TLS certificate expires in",
            "Time until the server's certificate expires, per location "
            "(sla_probe_tls_cert_expiry_timestamp_seconds). Orange under 14 days (ticket), red "
            "under 3 days (page): SLATLSCertificateExpiring. Empty for services without TLS.",
            "dtdurations",
            Query(
                "min by (location) "
                f"(sla_probe_tls_cert_expiry_timestamp_seconds{BY_LOCATION}) - time()",
                "{{location}}",
                instant=True,
            ),
        )
        .thresholds(steps(RED, (3 * 86400, ORANGE), (14 * 86400, GREEN)))
        .no_value("no TLS")
    )
    board.with_panel(
        stat_panel(
            "Maintenance",
            "Whether a declared maintenance window covers the service now (sla_maintenance); "
            "probes in a window do not count against the SLA.",
            "none",
            per_location("sla_maintenance"),
        ).mappings(mapping({"1": ("IN MAINTENANCE", BLUE), "0": ("no", GREEN)}))
    )


def over_time(board: dashboard.Dashboard) -> None:
    """Results, maintenance, availability, durations and failures over the time range."""
    board.with_panel(
        state_timeline_panel(
            "Probe results",
            "Each probe's result over time, per location (sla_probe_success): green up, red down.",
            Query(f"max by (location) (sla_probe_success{BY_LOCATION})", "{{location}}"),
            mappings=up_down(),
        )
    )
    board.with_panel(
        state_timeline_panel(
            "Maintenance windows",
            "Declared maintenance windows over time, per location (sla_maintenance). Also shown "
            "as annotations on every graph.",
            Query(f"max by (location) (sla_maintenance{BY_LOCATION})", "{{location}}"),
            mappings=mapping({"1": ("maintenance", BLUE), "0": ("none", "transparent")}),
        )
    )
    board.with_panel(
        timeseries_panel(
            "Availability, rolling",
            "Share of probes that succeeded over the last 5 minutes and the last hour, per "
            "location, maintenance left out (sla_service_location:probe_availability:ratio_rate5m "
            "and ratio_rate1h). The dashed line is the objective.",
            "percentunit",
            Query(
                f"sla_service_location:probe_availability:ratio_rate5m{BY_LOCATION}",
                "{{location}} 5m",
            ),
            Query(
                f"sla_service_location:probe_availability:ratio_rate1h{BY_LOCATION}",
                "{{location}} 1h",
            ),
            objective(instant=False),
        )
        .max(1)
        .overrides([dashed("objective")])
    )
    board.with_panel(
        timeseries_panel(
            "Probe duration",
            "How long each probe took, start to end, per location (sla_probe_duration_seconds), "
            "against the configured timeout (sla_probe_timeout_seconds, dashed).",
            "s",
            Query(f"max by (location) (sla_probe_duration_seconds{BY_LOCATION})", "{{location}}"),
            Query(f"max(sla_probe_timeout_seconds{BY_LOCATION})", "timeout"),
        )
        .min(0)
        .overrides([dashed("timeout")])
    )
    board.with_panel(
        timeseries_panel(
            "Latency by phase",
            "Time the last probe spent in each phase, stacked (sla_probe_phase_duration_seconds): "
            "HTTP dns, connect, tls, first_byte, transfer; SMTP dns, connect, banner, ehlo, "
            "starttls, tls, auth, send, quit. A failed probe shows the phase it failed in.",
            "s",
            Query(
                f"max by (location, phase) (sla_probe_phase_duration_seconds{BY_LOCATION})",
                "{{phase}} ({{location}})",
            ),
            stacked=True,
        ).min(0)
    )
    board.with_panel(
        timeseries_panel(
            "Failures by reason",
            "Failed probes per minute by reason (sla_probe_failure_reasons_total), per location: "
            "timeout, dns, connect, tls, protocol, http_status, body_mismatch, ... "
            "(docs/METRICS.md). Empty while nothing failed.",
            "cpm",
            Query(
                f"sum by (location, reason) "
                f"(rate(sla_probe_failure_reasons_total{BY_LOCATION}[$__rate_interval])) * 60",
                "{{reason}} ({{location}})",
            ),
            bars=True,
        ).min(0)
    )
    # One point per window at most (min interval $window): each point is the quantile of the
    # window before it, so every probe is read once whatever the time range. A point every
    # pixel read a whole window per pixel: 28 million samples for 1d windows over 30 days.
    board.with_panel(
        timeseries_panel(
            "Phase latency p50",
            "Median time per phase over the sliding window chosen in 'Window', one point per "
            "window (quantile_over_time of sla_probe_phase_duration_seconds): the typical probe.",
            "s",
            phase_quantile(0.5),
        )
        .min(0)
        .interval("$window")
    )
    board.with_panel(
        timeseries_panel(
            "Phase latency p95",
            "95th percentile of the time per phase over the sliding window chosen in 'Window', "
            "one point per window (quantile_over_time of sla_probe_phase_duration_seconds): the "
            "slow probes.",
            "s",
            phase_quantile(0.95),
        )
        .min(0)
        .interval("$window")
    )


def per_location(metric: str) -> Query:
    """The last value of `metric` for the selected service, per location."""
    return Query(f"max by (location) ({metric}{BY_LOCATION})", "{{location}}", instant=True)


def phase_quantile(quantile: float) -> Query:
    """A quantile of each phase's time over the window the `window` variable picks."""
    return Query(
        f"max by (location, phase) "
        f"(quantile_over_time({quantile}, sla_probe_phase_duration_seconds{BY_LOCATION}[$window]))",
        "{{phase}} ({{location}})",
    )


def mail(board: dashboard.Dashboard) -> None:
    """Delivery time and late messages (mail_delivery), and each check (mail_domain too)."""
    board.with_panel(
        timeseries_panel(
            "Delivery time",
            "mail_delivery services: end-to-end time of the probe messages delivered in time, "
            "from the start of the submission to the first sight in the mailbox, median and "
            "95th percentile of the messages of each interval on the graph "
            "(histogram_quantile of sla_probe_delivery_seconds), against the timeout (dashed). "
            "A message not delivered in time is a not_delivered failure, not a point here.",
            "s",
            delivery_quantile(0.5),
            delivery_quantile(0.95),
            Query(f"max(sla_probe_timeout_seconds{BY_LOCATION})", "timeout"),
        )
        .min(0)
        .overrides([dashed("timeout")])
    )
    board.with_panel(
        timeseries_panel(
            "Late messages",
            "mail_delivery services: probe messages found in the mailbox after their probe had "
            "given up on them, per minute (sla_probe_late_deliveries_total): mail that was "
            "delayed, not lost. Zero while every message arrives in time.",
            "cpm",
            Query(
                "sum by (location) "
                f"(rate(sla_probe_late_deliveries_total{BY_LOCATION}[$__rate_interval])) * 60",
                "{{location}}",
            ),
            bars=True,
        ).min(0)
    )
    board.with_panel(
        state_timeline_panel(
            "Checks",
            "Each check of the last probe over time, per location (sla_probe_check_success): "
            "mail_domain mx, spf, dkim:<selector>, dmarc; mail_delivery delivered and "
            "dkim_signature. Green passed, red failed; a failure for 15 minutes opens "
            "SLASenderAuthenticationBroken, delivered failing twice pages SLAMailNotDelivered.",
            Query(
                f"max by (location, check) (sla_probe_check_success{BY_LOCATION})",
                "{{check}} ({{location}})",
            ),
            mappings=mapping({"1": ("pass", GREEN), "0": ("FAIL", RED)}),
        )
    )
    board.with_panel(
        stat_panel(
            "DNSSEC validated",
            "mail_domain services: whether the resolver marked every answer of the last probe "
            "DNSSEC-validated (AD flag), per location (sla_probe_dnssec_validated). A resolver "
            "that does not validate never does: 'no' then says nothing about the zone.",
            "none",
            per_location("sla_probe_dnssec_validated"),
        )
        .mappings(mapping({"1": ("yes", GREEN), "0": ("no", ORANGE)}))
        .no_value("not a mail_domain service")
    )


def delivery_quantile(quantile: float) -> Query:
    """A quantile of the delivery time of the messages within each point's rate interval."""
    return Query(
        f"histogram_quantile({quantile}, sum by (location, le) "
        f"(rate(sla_probe_delivery_seconds_bucket{BY_LOCATION}[$__rate_interval])))",
        f"p{int(quantile * 100)} ({{{{location}}}})",
    )


def month(board: dashboard.Dashboard, settings: Settings) -> None:
    """This month's availability, downtime, budget and maintenance, per location."""
    board.with_panel(
        against_objective(
            settings,
            "Availability this month",
            "Month-to-date availability as the SLA counts it, per location; green at or above "
            "the objective (sla_service_location_month:sla_availability:ratio).",
            this_month("sla_service_location_month:sla_availability:ratio"),
            width=6,
        )
    )
    board.with_panel(
        stat_panel(
            "Downtime this month",
            "Down time this month, plus the time no probe covered if the SLA counts it as down, "
            "per location (sla_service_location_month:downtime:seconds).",
            "s",
            this_month("sla_service_location_month:downtime:seconds"),
            width=6,
        ).thresholds(steps(GREEN, (1, ORANGE)))
    )
    board.with_panel(
        budget_left_time(
            "Downtime still allowed this month, per location; negative once overspent "
            "(sla_service_location_month:error_budget_remaining:seconds).",
            width=6,
        )
    )
    board.with_panel(
        stat_panel(
            "Maintenance this month",
            "Declared maintenance this month, per location "
            '(sla_month_seconds{state="maintenance"}): time that counts neither up nor down, '
            "whether or not the exporter ran.",
            "s",
            Query(
                "max by (location, month) "
                f'(sla_month_seconds{{state="maintenance", {SVC}, {LOC}}}) {CURRENT_MONTH}',
                "{{location}}",
                instant=True,
            ),
            width=6,
        ).thresholds(steps(BLUE))
    )


def previous_months() -> table.Panel:
    """Every finished month of the service the exporter keeps, per location."""
    return table_panel(
        "Previous months",
        "The final figures of every finished month the exporter keeps (12 besides the running "
        "one, from its own month ledger, so they survive Prometheus' retention), per location. "
        "Compliance compares the month's failed time with its exact budget, under the objective "
        f"the month ran under ({FINISHED}:sla_met:bool).",
        finished_month_columns(),
        [("month", "Month"), ("location", "Location")],
        sort_by="Month",
        sort_desc=True,
        height=10,
    )
