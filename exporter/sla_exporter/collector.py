"""Metrics: a custom collector reading the store at scrape time, and the exporter's own health."""

from __future__ import annotations

import itertools
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
from .exposition import COUNTER, GAUGE, HISTOGRAM, Exposition, Family, escape, number, unzip
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
        sla = f'sla="{escape(config.sla.name)}",timezone="{escape(config.sla.timezone)}"'
        out.counts(SLA_INFO, [sla], [1])
        out.sample(UNKNOWN, 1.0 if config.sla.unknown == "down" else 0.0)
        months = _Months(ledger, config, now, out, self.pooled()) if ledger is not None else None

        column, counts = out.column, out.counts
        bucket_labels = [f'le="{number(bound)}"' for bound in DELIVERY_BUCKETS] + ['le="+Inf"']
        windows = config.maintenance
        for batch in pausing.batched(list(self.store.services.values()), BATCH):
            # Family by family for the batch (each service is still written in one go: nothing
            # runs on the loop in between); a service's labels are escaped once (store.py).
            labels = [state.label for state in batch]
            services = [state.service for state in batch]
            kinds = [service.kind for service in services]  # a property that looks for it
            info = [
                f'description="{escape(service.description)}",kind="{kind}",{label}'
                for service, kind, label in zip(services, kinds, labels, strict=True)
            ]
            counts(SERVICE_INFO, info, [1] * len(batch))
            column(INTERVAL, labels, [service.interval for service in services])
            column(TIMEOUT, labels, [service.effective_timeout for service in services])
            column(OBJECTIVE, labels, [state.objective for state in batch])
            counts(PROBES, labels, [state.probes for state in batch])
            counts(FAILURES, labels, [state.failures for state in batch])
            counts(MAINT_PROBES, labels, [state.maintenance_probes for state in batch])
            counts(MAINT_FAILURES, labels, [state.maintenance_failures for state in batch])
            counts(MISSED, labels, [state.missed_runs for state in batch])
            confirming = [state for state in batch if state.service.confirm is not None]
            counts(
                CONFIRMATIONS,
                [state.label for state in confirming],
                [state.confirmations for state in confirming],
            )
            counts(CONSECUTIVE, labels, [state.consecutive_failures for state in batch])
            failing = [(s.label, at) for s in batch if (at := s.failing_since) is not None]
            column(FAILING_SINCE, *unzip(failing))
            reasons = [
                (f'reason="{reason}",{state.label}', count)
                for state in batch
                for reason, count in state.reasons.items()
            ]
            counts(REASONS, *unzip(reasons))
            if windows:
                ends = [[m.end for m in windows if m.covers(s.name, when)] for s in batch]
                counts(MAINTENANCE, labels, [1 if e else 0 for e in ends])
                covered = [
                    (label, max(e).timestamp()) for label, e in zip(labels, ends, strict=True) if e
                ]
                column(MAINTENANCE_END, *unzip(covered))
            else:
                counts(MAINTENANCE, labels, [0] * len(batch))
            if months is not None:
                months.add(batch)
            for state, kind in zip(batch, kinds, strict=True):
                if kind == "mail_delivery":
                    self._delivery(out, state, bucket_labels)
            done = [(state.label, last) for state in batch if (last := state.last) is not None]
            labels, results = unzip(done)
            counts(SUCCESS, labels, [1 if result.success else 0 for result in results])
            column(DURATION, labels, [result.duration for result in results])
            column(LAST_RUN, labels, [result.timestamp for result in results])
            phases = [
                (f'phase="{phase}",{label}', seconds)
                for label, result in zip(labels, results, strict=True)
                for phase, seconds in result.phases.items()
            ]
            column(PHASES, *unzip(phases))
            expiring = [
                (label, result.tls_expiry)
                for label, result in zip(labels, results, strict=True)
                if result.tls_expiry is not None
            ]
            column(TLS_EXPIRY, *unzip(expiring))
            coded = [
                (label, result.status_code)
                for label, result in zip(labels, results, strict=True)
                if result.status_code is not None
            ]
            counts(STATUS, *unzip(coded))
            checks = [
                (f'check="{escape(check)}",{label}', 1 if passed else 0)
                for label, result in zip(labels, results, strict=True)
                for check, passed in result.checks.items()
            ]
            counts(CHECKS, *unzip(checks))
            signed = [
                (label, 1 if result.dnssec else 0)
                for label, result in zip(labels, results, strict=True)
                if result.dnssec is not None
            ]
            counts(DNSSEC, *unzip(signed))
            out.flush()
            yield
        if months is not None:
            months.bounds_families()
        return out

    @staticmethod
    def _delivery(out: Exposition, state: ServiceState, bucket_labels: list[str]) -> None:
        """The delivery-time histogram of a mail_delivery service (cumulative buckets)."""
        label = state.label
        cumulative = list(itertools.accumulate(state.delivery_buckets))
        cumulative.append(state.delivery_count)
        out.counts(DELIVERY, [f"{le},{label}" for le in bucket_labels], cumulative, "_bucket")
        out.column(DELIVERY, [label], [state.delivery_sum], "_sum")
        out.counts(DELIVERY, [label], [state.delivery_count], "_count")
        out.counts(LATE, [label], [state.late_deliveries])


class _Months:
    """The month families of each service, from the ledger as it is now: `add` a batch of
    services, then `write` them family by family."""

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
        self.out = out
        self.bounds: dict[str, tuple[int, int]] = {}  # of each month seen, in that order
        self.windows = config.maintenance_by_service()

    def add(self, batch: list[ServiceState]) -> None:
        ledger, now, bounds, unknown = self.ledger, self.now, self.bounds, self.config.sla.unknown
        exposed, windows = ledger.exposed, self.windows
        labels: list[str] = []
        figures: list[Figures] = []
        slots: list[float] = []
        for state in batch:
            name, label, interval = state.name, state.label, state.service.interval
            service_windows, objective = windows.get(name, ()), state.objective
            for key in ledger.months(name, now):
                if key not in bounds:
                    bounds[key] = ledger.bounds(key)
                labels.append(f'month="{key}",{label}')
                figures.append(
                    exposed(name, key, now, interval, service_windows, objective, unknown)
                )
                slots.append(interval)
        self._write(MONTH_SECONDS, MONTH_BUDGET, labels, figures)
        self.out.column(MONTH_OBJECTIVE, labels, [f.objective for f in figures])
        self.out.column(MONTH_SLOT, labels, slots)
        pooled = [
            (f'month="{key}",{state.label}', figures)
            for state in batch
            for key, figures in self.pooled.get(state.name, {}).items()
        ]
        if pooled:
            self._write(POOLED_SECONDS, POOLED_BUDGET, *unzip(pooled))

    def _write(
        self, seconds: Family, budget: Family, labels: list[str], figures: list[Figures]
    ) -> None:
        """Each month's seconds in every state (in STATES order) and its budget."""
        self.out.column(
            seconds,
            [f'{text},state="{kind}"' for text in labels for kind in STATES],
            [f.seconds[kind] / 1000 for f in figures for kind in STATES],
        )
        self.out.column(budget, labels, [f.budget / 1000 for f in figures])

    def bounds_families(self) -> None:
        keys = [f'month="{key}"' for key in self.bounds]
        self.out.column(MONTH_START, keys, [start / 1000 for start, _ in self.bounds.values()])
        self.out.column(MONTH_END, keys, [end / 1000 for _, end in self.bounds.values()])
