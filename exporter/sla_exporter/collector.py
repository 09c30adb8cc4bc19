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
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from . import __version__, pausing
from .config import Config
from .exposition import COUNTER, GAUGE, HISTOGRAM, Exposition, Family, escape, number
from .ledger import STATES, Figures, Ledger
from .store import DELIVERY_BUCKETS, ServiceState, Store

# Label for the service name: `service`, `instance`, `job` and `env` are taken by target labels.
SERVICE = "sla_service"


class Health:
    """The exporter's own metrics, updated as things happen."""

    def __init__(self, registry: CollectorRegistry, shard: str = "1", shards: str = "1") -> None:
        # `_created` series only double the series count of counters and histograms here.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        Info(
            "sla_exporter_build", "Build information of the SLA exporter.", registry=registry
        ).info({"version": __version__, "python_version": platform.python_version()})
        Info(
            "sla_exporter_shard",
            "Which share of the SLA file's services this exporter probes (--shard K/N).",
            registry=registry,
        ).info({"shard": shard, "shards": shards})
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


# --------------------------------------------------------------------------------------------
# The services' series, written as text (exposition.py) BATCH services at a time with the event
# loop given back in between (see `render`); each service is written in one go, so a scrape
# still sees it either before or after a probe result, never half of it.


def per_service(name: str, type: str, help: str, labels: tuple[str, ...] = (SERVICE,)) -> Family:
    """A family with one series (or a few, by `labels`) per service."""
    return Family(name, type, help, labels)


# In the order they are exposed.
FAMILIES = (
    SLA_INFO := Family("sla_info", GAUGE, "The SLA this exporter measures.", ("sla", "timezone")),
    UNKNOWN := Family(
        "sla_unknown_as_down",
        GAUGE,
        "Whether slots without a probe count as down (1) or are left out (0) of the SLA.",
        (),
    ),
    SERVICE_INFO := per_service(
        "sla_service_info",
        GAUGE,
        "Services of the SLA and their probe kind.",
        ("description", "kind", SERVICE),
    ),
    SUCCESS := per_service(
        "sla_probe_success", GAUGE, "Whether the last probe succeeded (1) or failed (0)."
    ),
    DURATION := per_service("sla_probe_duration_seconds", GAUGE, "Duration of the last probe."),
    PHASES := per_service(
        "sla_probe_phase_duration_seconds",
        GAUGE,
        "Duration of each phase of the last probe.",
        ("phase", SERVICE),
    ),
    LAST_RUN := per_service(
        "sla_probe_last_run_timestamp_seconds", GAUGE, "Unix time the last probe started."
    ),
    INTERVAL := per_service(
        "sla_probe_interval_seconds", GAUGE, "Configured time between two probes."
    ),
    TIMEOUT := per_service("sla_probe_timeout_seconds", GAUGE, "Configured time a probe may take."),
    OBJECTIVE := per_service(
        "sla_objective_ratio", GAUGE, "Availability the SLA promises, as a ratio."
    ),
    TLS_EXPIRY := per_service(
        "sla_probe_tls_cert_expiry_timestamp_seconds",
        GAUGE,
        "Unix time the earliest-expiring certificate seen by the last probe expires.",
    ),
    STATUS := per_service(
        "sla_probe_status_code", GAUGE, "Last HTTP status or SMTP reply code the probe received."
    ),
    PROBES := per_service("sla_probes", COUNTER, "Probes run."),
    FAILURES := per_service("sla_probe_failures", COUNTER, "Probes failed, for any reason."),
    REASONS := per_service(
        "sla_probe_failure_reasons",
        COUNTER,
        "Probes failed, by reason of failure.",
        ("reason", SERVICE),
    ),
    MAINT_PROBES := per_service(
        "sla_maintenance_probes", COUNTER, "Probes run during a declared maintenance window."
    ),
    MAINT_FAILURES := per_service(
        "sla_maintenance_probe_failures",
        COUNTER,
        "Probes failed during a declared maintenance window.",
    ),
    MISSED := per_service(
        "sla_probe_missed_runs",
        COUNTER,
        "Scheduled probes skipped because the previous one could not start in time.",
    ),
    CONFIRMATIONS := per_service(
        "sla_probe_confirmations",
        COUNTER,
        "Re-probes of a failing service between its regular slots (its `confirm` setting); "
        "not in sla_probes_total.",
    ),
    MAINTENANCE := per_service(
        "sla_maintenance", GAUGE, "Whether a declared maintenance window covers the service now."
    ),
    MAINTENANCE_END := per_service(
        "sla_maintenance_window_end_timestamp_seconds",
        GAUGE,
        "Declared end of the maintenance window covering the service now.",
    ),
    CONSECUTIVE := per_service(
        "sla_probe_consecutive_failures", GAUGE, "Failed probes in a row, up to the last one."
    ),
    FAILING_SINCE := per_service(
        "sla_probe_failing_since_timestamp_seconds",
        GAUGE,
        "Unix time the first probe of the current run of failures started.",
    ),
    CHECKS := per_service(
        "sla_probe_check_success",
        GAUGE,
        "Whether each check of the last probe passed (1) or failed (0): mx, spf, dkim:<selector>, "
        "dmarc (mail_domain), delivered and dkim_signature (mail_delivery).",
        ("check", SERVICE),
    ),
    DNSSEC := per_service(
        "sla_probe_dnssec_validated",
        GAUGE,
        "Whether the resolver marked every answer of the last probe DNSSEC-validated (AD).",
    ),
    DELIVERY := per_service(
        "sla_probe_delivery_seconds",
        HISTOGRAM,
        "End-to-end time of probe messages delivered in time: from the start of the submission "
        "to the first sight in the mailbox.",
        ("le", SERVICE),
    ),
    LATE := per_service(
        "sla_probe_late_deliveries",
        COUNTER,
        "Probe messages found in the mailbox after their probe had given up on them.",
    ),
    MONTH_SECONDS := per_service(
        "sla_month_seconds",
        GAUGE,
        "Time of the calendar month so far in each state: up, down, unknown (no result, counted "
        "as down), excluded (no result, left out), maintenance, unmonitored (before the first "
        "slot).",
        ("month", SERVICE, "state"),
    ),
    MONTH_BUDGET := per_service(
        "sla_month_error_budget_seconds",
        GAUGE,
        "Down and unknown time the whole calendar month allows under its objective.",
        ("month", SERVICE),
    ),
    MONTH_OBJECTIVE := per_service(
        "sla_month_objective_ratio",
        GAUGE,
        "The calendar month's objective: the objectives in force during it, weighted by time.",
        ("month", SERVICE),
    ),
    POOLED_SECONDS := per_service(
        "sla_month_pooled_seconds",
        GAUGE,
        "Time of the calendar month in each state pooled across every location of the SLA "
        "file under the quorum (more than half of those that know a moment saw it down).",
        ("month", SERVICE, "state"),
    ),
    POOLED_BUDGET := per_service(
        "sla_month_pooled_error_budget_seconds",
        GAUGE,
        "Down and unknown time the whole calendar month allows, pooled across locations.",
        ("month", SERVICE),
    ),
    MONTH_SLOT := per_service(
        "sla_month_slot_seconds",
        GAUGE,
        "Length of one probe slot: the interval the month is probed at (at its end, once over).",
        ("month", SERVICE),
    ),
    MONTH_START := Family(
        "sla_month_start_timestamp_seconds",
        GAUGE,
        "Unix time the calendar month starts.",
        ("month",),
    ),
    MONTH_END := Family(
        "sla_month_end_timestamp_seconds", GAUGE, "Unix time the calendar month ends.", ("month",)
    ),
)
BATCH = 200  # services rendered between two pauses: under 10 ms of the event loop


class ServiceCollector(Collector):
    """Renders every configured service from the store; a removed service simply disappears.

    `render()` is what /metrics uses: it writes the text directly and gives the event loop back
    every BATCH services, so probes due meanwhile start on time. Each service is written in one
    go, so a scrape sees it either before or after a probe result, never half of it. `collect()`
    serves the same series to prometheus_client registries (parsed back from that text).
    """

    def __init__(
        self,
        store: Store,
        ledger: Callable[[], Ledger | None],
        config: Callable[[], Config | None],
        clock: Callable[[], float] = time.time,
        pooled: Callable[[], dict[str, dict[str, Figures]]] = dict,
    ) -> None:
        self.store = store
        self.pooled = pooled
        self.ledger = ledger
        self.config = config
        self.clock = clock

    def describe(self) -> list[Metric]:
        # No describe at registration time: the store is empty then and families vary by config.
        return []

    def collect(self) -> Iterator[Metric]:
        text = b"".join(pausing.finish(self.rendering())).decode()
        yield from text_string_to_metric_families(text)

    async def render(self, openmetrics: bool = False, names: set[str] | None = None) -> bytes:
        """The services' families as exposition text, pausing for the event loop as it goes;
        with `names`, only families with those sample names (`name[]`, as prometheus_client)."""
        return b"".join(await pausing.run(self.rendering(openmetrics, names)))

    def rendering(
        self, openmetrics: bool = False, names: set[str] | None = None
    ) -> pausing.Steps[list[bytes]]:
        """The work of `render`, as steps between which the event loop may run."""
        out = yield from self.writing()
        return [] if out is None else out.text(openmetrics, names)

    def writing(self) -> pausing.Steps[Exposition | None]:
        """Every service's series as they are now, to be handed out family by family
        (`Exposition.chunks`; /metrics sends each as it is joined); None without a config.
        Steps between which the event loop may run."""
        config = self.config()
        if config is None:
            return None
        now = self.clock()
        ledger = self.ledger()
        when = datetime.fromtimestamp(now, UTC)
        out = Exposition(FAMILIES)
        w = out.writer
        sla = f'sla="{escape(config.sla.name)}",timezone="{escape(config.sla.timezone)}"'
        w(SLA_INFO)(sla, 1.0)
        out.sample(UNKNOWN, 1.0 if config.sla.unknown == "down" else 0.0)
        months = _Months(ledger, config, now, out, self.pooled()) if ledger is not None else None

        service_info, success, duration, phases = (
            w(SERVICE_INFO),
            w(SUCCESS),
            w(DURATION),
            w(PHASES),
        )
        last_run, interval, timeout, objective = w(LAST_RUN), w(INTERVAL), w(TIMEOUT), w(OBJECTIVE)
        tls_expiry, status, probes, failures = w(TLS_EXPIRY), w(STATUS), w(PROBES), w(FAILURES)
        reasons, maint_probes, maint_failures = w(REASONS), w(MAINT_PROBES), w(MAINT_FAILURES)
        missed, confirmations, maintenance = w(MISSED), w(CONFIRMATIONS), w(MAINTENANCE)
        maintenance_end, consecutive = w(MAINTENANCE_END), w(CONSECUTIVE)
        failing_since = w(FAILING_SINCE)
        checks, dnssec, late = w(CHECKS), w(DNSSEC), w(LATE)
        buckets, delivery_sum = w(DELIVERY, "_bucket"), w(DELIVERY, "_sum")
        delivery_count = w(DELIVERY, "_count")
        bucket_labels = [f'le="{number(bound)}"' for bound in DELIVERY_BUCKETS] + ['le="+Inf"']
        windows = config.maintenance
        for batch in pausing.batched(list(self.store.services.values()), BATCH):
            for state in batch:
                label, service = state.label, state.service
                kind = service.kind  # a property that looks for it: once per service
                description = escape(service.description)
                service_info(f'description="{description}",kind="{kind}",{label}', 1.0)
                interval(label, service.interval)
                timeout(label, service.effective_timeout)
                objective(label, state.objective)
                probes(label, state.probes)
                failures(label, state.failures)
                maint_probes(label, state.maintenance_probes)
                maint_failures(label, state.maintenance_failures)
                missed(label, state.missed_runs)
                if service.confirm is not None:
                    confirmations(label, state.confirmations)
                consecutive(label, state.consecutive_failures)
                if state.failing_since is not None:
                    failing_since(label, state.failing_since)
                for reason, count in state.reasons.items():
                    reasons(f'reason="{reason}",{label}', count)
                ends = [m.end for m in windows if m.covers(state.name, when)] if windows else []
                maintenance(label, 1.0 if ends else 0.0)
                if ends:
                    maintenance_end(label, max(ends).timestamp())
                if months is not None:
                    months.add(state)
                if kind == "mail_delivery":
                    total = 0
                    for le, count in zip(bucket_labels, state.delivery_buckets, strict=False):
                        total += count
                        buckets(f"{le},{label}", total)
                    buckets(f"{bucket_labels[-1]},{label}", state.delivery_count)
                    delivery_sum(label, state.delivery_sum)
                    delivery_count(label, state.delivery_count)
                    late(label, state.late_deliveries)
                last = state.last
                if last is None:
                    continue
                success(label, 1.0 if last.success else 0.0)
                duration(label, last.duration)
                last_run(label, last.timestamp)
                for phase, seconds in last.phases.items():
                    phases(f'phase="{phase}",{label}', seconds)
                if last.tls_expiry is not None:
                    tls_expiry(label, last.tls_expiry)
                if last.status_code is not None:
                    status(label, last.status_code)
                for check, passed in last.checks.items():
                    checks(f'check="{escape(check)}",{label}', 1.0 if passed else 0.0)
                if last.dnssec is not None:
                    dnssec(label, 1.0 if last.dnssec else 0.0)
            out.flush()
            yield
        if months is not None:
            months.bounds_families()
        return out


_STATE_LABELS = [(kind, f',state="{kind}"') for kind in STATES]


class _Months:
    """The month families of each service, from the ledger as it is now."""

    def __init__(
        self,
        ledger: Ledger,
        config: Config,
        now: float,
        out: Exposition,
        pooled: dict[str, dict[str, Figures]],
    ) -> None:
        self.ledger = ledger
        self.pooled = pooled
        self.config = config
        self.now = now
        self.bounds: dict[str, tuple[int, int]] = {}  # of each month seen, in that order
        self.windows = config.maintenance_by_service()
        self.seconds, self.budget = out.writer(MONTH_SECONDS), out.writer(MONTH_BUDGET)
        self.objective, self.slot = out.writer(MONTH_OBJECTIVE), out.writer(MONTH_SLOT)
        self.pooled_seconds = out.writer(POOLED_SECONDS)
        self.pooled_budget = out.writer(POOLED_BUDGET)
        self.starts, self.ends = out.writer(MONTH_START), out.writer(MONTH_END)

    def add(self, state: ServiceState) -> None:
        ledger, now, label, name = self.ledger, self.now, state.label, state.name
        interval = state.service.interval
        windows, unknown = self.windows.get(name, ()), self.config.sla.unknown
        for key in ledger.months(name, now):
            if key not in self.bounds:
                self.bounds[key] = ledger.bounds(key)
            figures = ledger.exposed(name, key, now, interval, windows, state.objective, unknown)
            labels = f'month="{key}",{label}'
            seconds, write = figures.seconds, self.seconds
            for kind, suffix in _STATE_LABELS:
                write(labels + suffix, seconds[kind] / 1000)
            self.budget(labels, figures.budget / 1000)
            self.objective(labels, figures.objective)
            self.slot(labels, interval)
        for key, figures in self.pooled.get(name, {}).items():
            labels = f'month="{key}",{label}'
            for kind in STATES:
                self.pooled_seconds(f'{labels},state="{kind}"', figures.seconds[kind] / 1000)
            self.pooled_budget(labels, figures.budget / 1000)

    def bounds_families(self) -> None:
        for key, (start, end) in self.bounds.items():
            self.starts(f'month="{key}"', start / 1000)
            self.ends(f'month="{key}"', end / 1000)
