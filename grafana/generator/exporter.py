"""SLA exporter health (sla-exporter): whether the measurements can be trusted."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models.common import BigValueTextMode

from grafana.generator.base import Settings, sla_dashboard
from grafana.generator.panels import (
    BLUE,
    GREEN,
    RED,
    Query,
    mapping,
    stat_panel,
    steps,
    timeseries_panel,
    up_down,
)
from grafana.generator.shared import LOC, location_variable

UID = "sla-exporter"
# Series of this location's exporters: their own metrics, and Prometheus' scrapes of them.
EXPORTER = f"{{{LOC}}}"
SCRAPE = 'job="sla", location=~"$location"'
PER_EXPORTER = "{{location}} {{instance}}"
PER_SERVICE = "{{sla_service}} ({{location}})"


def build(settings: Settings) -> dashboard.Dashboard:
    """Exporter health: scrapes, reloads, versions, and the probes' work."""
    board = sla_dashboard(
        settings,
        UID,
        "SLA exporter health",
        "Whether the measurements can be trusted: scrapes, config reloads, probes in flight, "
        "schedule lag and missed runs of every sla-exporter.",
        time_from="now-6h",
    )
    board.with_variable(location_variable("sla_exporter_build_info"))
    state(board)
    work(board)
    return board


def state(board: dashboard.Dashboard) -> None:
    """Scraped, config loaded, version: one line."""
    board.with_panel(
        stat_panel(
            "Exporter scraped",
            'Whether Prometheus scrapes each exporter (up{job="sla"}). Down for 2 minutes '
            "pages (SLAExporterAbsent): nothing it probes is measured meanwhile.",
            "none",
            Query(f"max by (location, instance) (up{{{SCRAPE}}})", PER_EXPORTER, instant=True),
            width=6,
        ).mappings(up_down())
    )
    board.with_panel(
        stat_panel(
            "Config reload",
            "Whether the last (re)load of the SLA file succeeded "
            "(sla_exporter_config_last_reload_successful). FAILED means the previous config "
            "is still running; the exporter's log names every error.",
            "none",
            Query(
                "max by (location, instance) "
                f"(sla_exporter_config_last_reload_successful{EXPORTER})",
                PER_EXPORTER,
                instant=True,
            ),
            width=6,
        ).mappings(mapping({"1": ("OK", GREEN), "0": ("FAILED", RED)}))
    )
    board.with_panel(
        stat_panel(
            "Last successful reload",
            "When the SLA file was last loaded successfully "
            "(sla_exporter_config_last_reload_success_timestamp_seconds).",
            "dateTimeFromNow",
            Query(
                f"max by (location, instance) "
                f"(sla_exporter_config_last_reload_success_timestamp_seconds{EXPORTER}) * 1000",
                PER_EXPORTER,
                instant=True,
            ),
            width=6,
        ).thresholds(steps(BLUE))
    )
    board.with_panel(
        stat_panel(
            "Version",
            "Exporter and Python versions (sla_exporter_build_info).",
            "none",
            Query(
                f"max by (location, version, python_version) (sla_exporter_build_info{EXPORTER})",
                "{{location}}: {{version}} (Python {{python_version}})",
                instant=True,
            ),
            width=6,
        )
        .thresholds(steps(BLUE))
        .text_mode(BigValueTextMode.NAME)
    )


def work(board: dashboard.Dashboard) -> None:
    """Probes running, late, run and missed; scrapes' duration and size."""
    board.with_panel(
        timeseries_panel(
            "Probes in flight",
            "Probes running at this moment, per exporter (sla_exporter_probes_in_flight). "
            "Reaching --probes.max-concurrency means probes wait for a slot.",
            "short",
            Query(
                f"max by (location, instance) (sla_exporter_probes_in_flight{EXPORTER})",
                PER_EXPORTER,
            ),
        ).min(0)
    )
    board.with_panel(
        timeseries_panel(
            "Schedule lag",
            "Delay between a probe's scheduled start and its actual start, p50 and p99 "
            "(sla_exporter_schedule_lag_seconds). Growing lag means the concurrency cap or the "
            "event loop is saturated.",
            "s",
            schedule_lag(0.5, "p50"),
            schedule_lag(0.99, "p99"),
        ).min(0)
    )
    board.with_panel(
        timeseries_panel(
            "Probes per minute",
            "Probes run per minute, per service and location (sla_probes_total).",
            "cpm",
            Query(
                "sum by (location, sla_service) "
                f"(rate(sla_probes_total{EXPORTER}[$__rate_interval])) * 60",
                PER_SERVICE,
            ),
        ).min(0)
    )
    board.with_panel(
        timeseries_panel(
            "Missed runs per minute",
            "Scheduled probes skipped because the previous one could not start in time "
            "(sla_probe_missed_runs_total); 0 in a healthy exporter. Missed slots are unknown "
            "time in the month's figures.",
            "cpm",
            Query(
                f"sum by (location, sla_service) "
                f"(rate(sla_probe_missed_runs_total{EXPORTER}[$__rate_interval])) * 60",
                PER_SERVICE,
            ),
        ).min(0)
    )
    board.with_panel(
        timeseries_panel(
            "Last probe age in intervals",
            "Time since each service's last probe started, in probe intervals "
            "(sla_probe_last_run_timestamp_seconds / sla_probe_interval_seconds). Above 3 the "
            "probes are not running (SLAProbesNotRunning pages).",
            "none",
            Query(
                f"(time() - max by (location, sla_service) "
                f"(sla_probe_last_run_timestamp_seconds{EXPORTER})) "
                f"/ max by (location, sla_service) (sla_probe_interval_seconds{EXPORTER})",
                PER_SERVICE,
            ),
            thresholds=steps(GREEN, (3, RED)),
        ).min(0)
    )
    board.with_panel(
        timeseries_panel(
            "Scrape duration",
            "How long Prometheus takes to scrape each exporter (scrape_duration_seconds); the "
            "exporter serves stored results, so this stays in milliseconds. Must stay below "
            "scrape_timeout (10s).",
            "s",
            Query(
                f"max by (location, instance) (scrape_duration_seconds{{{SCRAPE}}})",
                PER_EXPORTER,
            ),
        ).min(0)
    )
    board.with_panel(
        timeseries_panel(
            "Samples per scrape",
            "Series each scrape returns (scrape_samples_scraped): grows with services and "
            "months kept (13), and with support policies.",
            "short",
            Query(
                f"max by (location, instance) (scrape_samples_scraped{{{SCRAPE}}})",
                PER_EXPORTER,
            ),
        ).min(0)
    )


def schedule_lag(quantile: float, name: str) -> Query:
    """A quantile of the schedule lag of each location's exporters."""
    return Query(
        f"histogram_quantile({quantile}, sum by (location, le) "
        f"(rate(sla_exporter_schedule_lag_seconds_bucket{EXPORTER}[$__rate_interval])))",
        f"{name} {{{{location}}}}",
    )
