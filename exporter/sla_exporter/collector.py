"""Metrics: a custom collector reading the store at scrape time, and the exporter's own health."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .config import Config
from .ledger import Ledger, month_bounds, month_key
from .store import Store

# Label for the service name: `service`, `instance`, `job` and `env` are taken by target labels.
SERVICE = "sla_service"


class Health:
    """The exporter's own metrics, updated as things happen."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # `_created` series only double the series count of counters and histograms here.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        Info(
            "sla_exporter_build", "Build information of the SLA exporter.", registry=registry
        ).info({"version": __version__, "python_version": platform.python_version()})
        self.reload_ok = Gauge(
            "sla_exporter_config_last_reload_successful",
            "Whether the last configuration reload attempt succeeded (1) or failed (0).",
            registry=registry,
        )
        self.reload_time = Gauge(
            "sla_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration reload.",
            registry=registry,
        )
        self.in_flight = Gauge(
            "sla_exporter_probes_in_flight",
            "Probes running right now.",
            registry=registry,
        )
        self.lag = Histogram(
            "sla_exporter_schedule_lag_seconds",
            "Delay between a probe's scheduled start and its actual start.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=[SERVICE, *(labels or [])])


def _counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=[SERVICE, *(labels or [])])


class ServiceCollector(Collector):
    """Renders every configured service from the store; a removed service simply disappears."""

    def __init__(
        self,
        store: Store,
        ledger: Callable[[], Ledger | None],
        config: Callable[[], Config | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.config = config
        self.clock = clock

    def describe(self) -> list[Metric]:
        # No describe at registration time: the store is empty then and families vary by config.
        return []

    def collect(self) -> Iterator[Metric]:
        config = self.config()
        if config is None:
            return
        now = self.clock()
        when = datetime.fromtimestamp(now, UTC)
        info = GaugeMetricFamily(
            "sla_info", "The SLA this exporter measures.", labels=["sla", "timezone"]
        )
        info.add_metric([config.sla.name, config.sla.timezone], 1)
        yield info
        unknown = GaugeMetricFamily(
            "sla_unknown_as_down",
            "Whether slots without a probe count as down (1) or are left out (0) of the SLA.",
        )
        unknown.add_metric([], 1 if config.sla.unknown == "down" else 0)
        yield unknown

        service_info = _gauge(
            "sla_service_info", "Services of the SLA and their probe kind.", ["kind", "description"]
        )
        success = _gauge("sla_probe_success", "Whether the last probe succeeded (1) or failed (0).")
        duration = _gauge("sla_probe_duration_seconds", "Duration of the last probe.")
        phases = _gauge(
            "sla_probe_phase_duration_seconds",
            "Duration of each phase of the last probe.",
            ["phase"],
        )
        last_run = _gauge(
            "sla_probe_last_run_timestamp_seconds", "Unix time the last probe started."
        )
        interval = _gauge("sla_probe_interval_seconds", "Configured time between two probes.")
        timeout = _gauge("sla_probe_timeout_seconds", "Configured time a probe may take.")
        objective = _gauge("sla_objective_ratio", "Availability the SLA promises, as a ratio.")
        tls_expiry = _gauge(
            "sla_probe_tls_cert_expiry_timestamp_seconds",
            "Unix time the earliest-expiring certificate seen by the last probe expires.",
        )
        status = _gauge(
            "sla_probe_status_code", "Last HTTP status or SMTP reply code the probe received."
        )
        consecutive = _gauge(
            "sla_probe_consecutive_failures", "Failed probes in a row, up to the last one."
        )
        failing_since = _gauge(
            "sla_probe_failing_since_timestamp_seconds",
            "Unix time the first probe of the current run of failures started.",
        )
        probes = _counter("sla_probes", "Probes run.")
        failures = _counter("sla_probe_failures", "Probes failed, for any reason.")
        reasons = _counter(
            "sla_probe_failure_reasons", "Probes failed, by reason of failure.", ["reason"]
        )
        maint_probes = _counter(
            "sla_maintenance_probes", "Probes run during a declared maintenance window."
        )
        maint_failures = _counter(
            "sla_maintenance_probe_failures",
            "Probes failed during a declared maintenance window.",
        )
        missed = _counter(
            "sla_probe_missed_runs",
            "Scheduled probes skipped because the previous one could not start in time.",
        )
        maintenance = _gauge(
            "sla_maintenance", "Whether a declared maintenance window covers the service now."
        )
        maintenance_end = _gauge(
            "sla_maintenance_window_end_timestamp_seconds",
            "Declared end of the maintenance window covering the service now.",
        )
        for name, state in self.store.services.items():
            service = state.service
            service_info.add_metric([name, service.kind, service.description], 1)
            interval.add_metric([name], service.interval)
            timeout.add_metric([name], service.effective_timeout)
            objective.add_metric([name], state.objective)
            probes.add_metric([name], state.probes)
            failures.add_metric([name], state.failures)
            maint_probes.add_metric([name], state.maintenance_probes)
            maint_failures.add_metric([name], state.maintenance_failures)
            missed.add_metric([name], state.missed_runs)
            consecutive.add_metric([name], state.consecutive_failures)
            if state.failing_since is not None:
                failing_since.add_metric([name], state.failing_since)
            for reason, count in state.reasons.items():
                reasons.add_metric([name, reason], count)
            windows = [m for m in config.maintenance if m.covers(name, when)]
            maintenance.add_metric([name], 1 if windows else 0)
            if windows:
                maintenance_end.add_metric([name], max(m.end for m in windows).timestamp())
            last = state.last
            if last is None:
                continue
            success.add_metric([name], 1 if last.success else 0)
            duration.add_metric([name], last.duration)
            last_run.add_metric([name], last.timestamp)
            for phase, seconds in last.phases.items():
                phases.add_metric([name, phase], seconds)
            if last.tls_expiry is not None:
                tls_expiry.add_metric([name], last.tls_expiry)
            if last.status_code is not None:
                status.add_metric([name], last.status_code)
        yield from (service_info, success, duration, phases, last_run, interval, timeout)
        yield from (objective, tls_expiry, status, probes, failures, reasons, maint_probes)
        yield from (
            maint_failures,
            missed,
            maintenance,
            maintenance_end,
            consecutive,
            failing_since,
        )
        yield from self._months(now)

    def _months(self, now: float) -> Iterator[Metric]:
        ledger = self.ledger()
        if ledger is None:
            return
        labels = ["month"]
        month_probes = _gauge(
            "sla_month_probes", "Probes this calendar month outside maintenance.", labels
        )
        month_failures = _gauge(
            "sla_month_probe_failures",
            "Failed probes this calendar month outside maintenance.",
            labels,
        )
        month_maint = _gauge(
            "sla_month_maintenance_probes", "Probes this calendar month during maintenance.", labels
        )
        month_slots = _gauge(
            "sla_month_slots",
            "Probe slots in the calendar month at the service's interval, counted from the "
            "first probe if monitoring began during the month.",
            labels,
        )
        month_elapsed = _gauge(
            "sla_month_elapsed_slots", "Probe slots of the calendar month elapsed so far.", labels
        )
        month_slot = _gauge(
            "sla_month_slot_seconds",
            "Length of one probe slot of the calendar month: the interval it is probed at.",
            labels,
        )
        starts = GaugeMetricFamily(
            "sla_month_start_timestamp_seconds",
            "Unix time the calendar month starts.",
            labels=labels,
        )
        ends = GaugeMetricFamily(
            "sla_month_end_timestamp_seconds", "Unix time the calendar month ends.", labels=labels
        )
        current = month_key(now, ledger.zone)
        seen: set[str] = set()
        for name, state in self.store.services.items():
            for key, tally in ledger.months(name, now):
                start, end = month_bounds(key, ledger.zone)
                # A finished month keeps the interval it was probed at; this one uses today's.
                step = state.service.interval if key == current else tally.interval
                month_probes.add_metric([name, key], tally.probes)
                month_failures.add_metric([name, key], tally.failures)
                month_maint.add_metric([name, key], tally.maintenance_probes)
                month_slot.add_metric([name, key], step)
                since = ledger.monitored_from(key, tally)
                month_slots.add_metric([name, key], (end - since) // step)
                month_elapsed.add_metric([name, key], max(0.0, min(now, end) - since) // step)
                if key not in seen:
                    seen.add(key)
                    starts.add_metric([key], start)
                    ends.add_metric([key], end)
        yield from (
            month_probes,
            month_failures,
            month_maint,
            month_slots,
            month_elapsed,
            month_slot,
        )
        yield from (starts, ends)
