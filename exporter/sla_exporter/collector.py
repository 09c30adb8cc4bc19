"""Metrics: a custom collector reading the store at scrape time, and the exporter's own health."""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
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
from prometheus_client.utils import floatToGoString

from . import __version__
from .config import Config
from .ledger import STATES, Figures, Ledger
from .store import ServiceState, Store

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
# The services' series
#
# Tens of thousands of services make hundreds of thousands of samples per scrape. Built as
# prometheus_client Metric and Sample objects and formatted one label at a time, 10,000 services
# took seconds per scrape on the event loop (4 s in bench/RESULTS.md); written straight to
# text, with each service's label escaped once and its samples appended to its families' lists,
# they take a fraction of that, written BATCH services at a time with the event loop given back
# in between (see `render`); each service is written in one go, so a scrape still sees it either
# before or after a probe result, never half of it.

GAUGE, COUNTER = "gauge", "counter"


@dataclass(frozen=True)
class Family:
    """A metric family: its name (counters without `_total`), type, help and label names."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...] = (SERVICE,)  # in exposition (sorted) order


# In the order they are exposed. Families whose index a renderer uses are named below.
FAMILIES = (
    SLA_INFO := Family("sla_info", GAUGE, "The SLA this exporter measures.", ("sla", "timezone")),
    UNKNOWN := Family(
        "sla_unknown_as_down",
        GAUGE,
        "Whether slots without a probe count as down (1) or are left out (0) of the SLA.",
        (),
    ),
    SERVICE_INFO := Family(
        "sla_service_info",
        GAUGE,
        "Services of the SLA and their probe kind.",
        ("description", "kind", SERVICE),
    ),
    SUCCESS := Family(
        "sla_probe_success", GAUGE, "Whether the last probe succeeded (1) or failed (0)."
    ),
    DURATION := Family("sla_probe_duration_seconds", GAUGE, "Duration of the last probe."),
    PHASES := Family(
        "sla_probe_phase_duration_seconds",
        GAUGE,
        "Duration of each phase of the last probe.",
        ("phase", SERVICE),
    ),
    LAST_RUN := Family(
        "sla_probe_last_run_timestamp_seconds", GAUGE, "Unix time the last probe started."
    ),
    INTERVAL := Family("sla_probe_interval_seconds", GAUGE, "Configured time between two probes."),
    TIMEOUT := Family("sla_probe_timeout_seconds", GAUGE, "Configured time a probe may take."),
    OBJECTIVE := Family("sla_objective_ratio", GAUGE, "Availability the SLA promises, as a ratio."),
    TLS_EXPIRY := Family(
        "sla_probe_tls_cert_expiry_timestamp_seconds",
        GAUGE,
        "Unix time the earliest-expiring certificate seen by the last probe expires.",
    ),
    STATUS := Family(
        "sla_probe_status_code", GAUGE, "Last HTTP status or SMTP reply code the probe received."
    ),
    PROBES := Family("sla_probes", COUNTER, "Probes run."),
    FAILURES := Family("sla_probe_failures", COUNTER, "Probes failed, for any reason."),
    REASONS := Family(
        "sla_probe_failure_reasons",
        COUNTER,
        "Probes failed, by reason of failure.",
        ("reason", SERVICE),
    ),
    MAINT_PROBES := Family(
        "sla_maintenance_probes", COUNTER, "Probes run during a declared maintenance window."
    ),
    MAINT_FAILURES := Family(
        "sla_maintenance_probe_failures",
        COUNTER,
        "Probes failed during a declared maintenance window.",
    ),
    MISSED := Family(
        "sla_probe_missed_runs",
        COUNTER,
        "Scheduled probes skipped because the previous one could not start in time.",
    ),
    CONFIRMATIONS := Family(
        "sla_probe_confirmations",
        COUNTER,
        "Re-probes of a failing service between its regular slots (its `confirm` setting); "
        "not in sla_probes_total.",
    ),
    MAINTENANCE := Family(
        "sla_maintenance", GAUGE, "Whether a declared maintenance window covers the service now."
    ),
    MAINTENANCE_END := Family(
        "sla_maintenance_window_end_timestamp_seconds",
        GAUGE,
        "Declared end of the maintenance window covering the service now.",
    ),
    CONSECUTIVE := Family(
        "sla_probe_consecutive_failures", GAUGE, "Failed probes in a row, up to the last one."
    ),
    FAILING_SINCE := Family(
        "sla_probe_failing_since_timestamp_seconds",
        GAUGE,
        "Unix time the first probe of the current run of failures started.",
    ),
    MONTH_SECONDS := Family(
        "sla_month_seconds",
        GAUGE,
        "Time of the calendar month so far in each state: up, down, unknown (no result, counted "
        "as down), excluded (no result, left out), maintenance, unmonitored (before the first "
        "slot).",
        ("month", SERVICE, "state"),
    ),
    MONTH_BUDGET := Family(
        "sla_month_error_budget_seconds",
        GAUGE,
        "Down and unknown time the whole calendar month allows under its objective.",
        ("month", SERVICE),
    ),
    MONTH_OBJECTIVE := Family(
        "sla_month_objective_ratio",
        GAUGE,
        "The calendar month's objective: the objectives in force during it, weighted by time.",
        ("month", SERVICE),
    ),
    POOLED_SECONDS := Family(
        "sla_month_pooled_seconds",
        GAUGE,
        "Time of the calendar month in each state pooled across every location of the SLA "
        "file under the quorum (more than half of those that know a moment saw it down).",
        ("month", SERVICE, "state"),
    ),
    POOLED_BUDGET := Family(
        "sla_month_pooled_error_budget_seconds",
        GAUGE,
        "Down and unknown time the whole calendar month allows, pooled across locations.",
        ("month", SERVICE),
    ),
    MONTH_SLOT := Family(
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
_INDEX = {family: i for i, family in enumerate(FAMILIES)}


def escape(value: str) -> str:
    """A label value as the exposition formats write it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def number(value: float) -> str:
    """A sample value, written exactly as prometheus_client writes it (Go's float format)."""
    if value < 1e6:  # the usual case, without the checks for exponents and infinities
        return repr(float(value))
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]  # untyped upstream


def _headers(family: Family, openmetrics: bool) -> str:
    """The HELP and TYPE lines of `family` in one format or the other."""
    if openmetrics:
        doc = family.help.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        name = family.name
    else:
        doc = family.help.replace("\\", r"\\").replace("\n", r"\n")
        name = family.name + "_total" if family.type == COUNTER else family.name
    return f"# HELP {name} {doc}\n# TYPE {name} {family.type}\n"


Rendering = Generator[None, None, list[bytes]]  # pauses (yields), then the exposition text
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
        text = b"".join(finish(self.rendering())).decode()
        yield from text_string_to_metric_families(text)

    async def render(self, openmetrics: bool = False, names: set[str] | None = None) -> bytes:
        """The services' families as exposition text, pausing for the event loop as it goes;
        with `names`, only families with those sample names (`name[]`, as prometheus_client)."""
        rendering = self.rendering(openmetrics, names)
        try:
            while True:
                next(rendering)
                await asyncio.sleep(0)
        except StopIteration as done:
            return b"".join(done.value)

    def rendering(self, openmetrics: bool = False, names: set[str] | None = None) -> Rendering:
        """The work of `render`, as a generator that yields where it may pause."""
        config = self.config()
        if config is None:
            return []
        now = self.clock()
        ledger = self.ledger()
        when = datetime.fromtimestamp(now, UTC)
        # Each family's lines since the last pause, then joined into one string per batch: a
        # few hundred thousand small strings alive at once would cost more than the text.
        lines: list[list[str]] = [[] for _ in FAMILIES]
        add = [family.append for family in lines]
        joined: list[list[str]] = [[] for _ in FAMILIES]
        sla = f'sla="{escape(config.sla.name)}",timezone="{escape(config.sla.timezone)}"'
        add[_INDEX[SLA_INFO]](f"sla_info{{{sla}}} 1.0\n")
        unknown = 1.0 if config.sla.unknown == "down" else 0.0
        add[_INDEX[UNKNOWN]](f"sla_unknown_as_down {unknown}\n")
        months = _Months(ledger, config, now, add, self.pooled()) if ledger is not None else None

        # Each family's lines are "name{labels} value"; counters' samples end in _total.
        (
            service_info, success, duration, phases, last_run, interval, timeout, objective,
            tls_expiry, status, probes, failures, reasons, maint_probes, maint_failures, missed,
            confirmations, maintenance, maintenance_end, consecutive, failing_since,
        ) = add[_INDEX[SERVICE_INFO] : _INDEX[FAILING_SINCE] + 1]  # fmt: skip
        windows = config.maintenance
        for i, state in enumerate(list(self.store.services.values())):
            if i and i % BATCH == 0:
                _join(lines, joined)
                yield
            label, service = state.label, state.service
            kind, description = service.kind, escape(service.description)
            service_info(
                f'sla_service_info{{description="{description}",kind="{kind}",{label}}} 1.0\n'
            )
            interval(f"sla_probe_interval_seconds{{{label}}} {number(service.interval)}\n")
            timeout(f"sla_probe_timeout_seconds{{{label}}} {number(service.effective_timeout)}\n")
            objective(f"sla_objective_ratio{{{label}}} {number(state.objective)}\n")
            probes(f"sla_probes_total{{{label}}} {number(state.probes)}\n")
            failures(f"sla_probe_failures_total{{{label}}} {number(state.failures)}\n")
            maint_probes(
                f"sla_maintenance_probes_total{{{label}}} {number(state.maintenance_probes)}\n"
            )
            maint_failures(
                f"sla_maintenance_probe_failures_total{{{label}}} "
                f"{number(state.maintenance_failures)}\n"
            )
            missed(f"sla_probe_missed_runs_total{{{label}}} {number(state.missed_runs)}\n")
            if state.service.confirm is not None:
                confirmations(
                    f"sla_probe_confirmations_total{{{label}}} {number(state.confirmations)}\n"
                )
            consecutive(
                f"sla_probe_consecutive_failures{{{label}}} {number(state.consecutive_failures)}\n"
            )
            if state.failing_since is not None:
                failing_since(
                    f"sla_probe_failing_since_timestamp_seconds{{{label}}} "
                    f"{number(state.failing_since)}\n"
                )
            for reason, count in state.reasons.items():
                reasons(
                    f'sla_probe_failure_reasons_total{{reason="{reason}",{label}}} '
                    f"{number(count)}\n"
                )
            ends = [m.end for m in windows if m.covers(state.name, when)] if windows else []
            maintenance(f"sla_maintenance{{{label}}} {1.0 if ends else 0.0}\n")
            if ends:
                maintenance_end(
                    f"sla_maintenance_window_end_timestamp_seconds{{{label}}} "
                    f"{number(max(ends).timestamp())}\n"
                )
            if months is not None:
                months.add(state)
            last = state.last
            if last is None:
                continue
            success(f"sla_probe_success{{{label}}} {1.0 if last.success else 0.0}\n")
            duration(f"sla_probe_duration_seconds{{{label}}} {number(last.duration)}\n")
            last_run(f"sla_probe_last_run_timestamp_seconds{{{label}}} {number(last.timestamp)}\n")
            for phase, seconds in last.phases.items():
                phases(
                    f'sla_probe_phase_duration_seconds{{phase="{phase}",{label}}} '
                    f"{number(seconds)}\n"
                )
            if last.tls_expiry is not None:
                tls_expiry(
                    f"sla_probe_tls_cert_expiry_timestamp_seconds{{{label}}} "
                    f"{number(last.tls_expiry)}\n"
                )
            if last.status_code is not None:
                status(f"sla_probe_status_code{{{label}}} {number(last.status_code)}\n")
        if months is not None:
            months.bounds_families()
        _join(lines, joined)
        out = []
        for family, parts in zip(FAMILIES, joined, strict=True):
            if names is None or _sample_name(family) in names:
                out.append(_headers(family, openmetrics).encode())
                out.extend(part.encode() for part in parts)
            parts.clear()
        return out


def _join(lines: list[list[str]], joined: list[list[str]]) -> None:
    for pending, parts in zip(lines, joined, strict=True):
        if pending:
            parts.append("".join(pending))
            pending.clear()


def finish(rendering: Rendering) -> list[bytes]:
    """Run a rendering to its end without pausing."""
    try:
        while True:
            next(rendering)
    except StopIteration as done:
        text: list[bytes] = done.value
        return text


def _sample_name(family: Family) -> str:
    return family.name + "_total" if family.type == COUNTER else family.name


class _Months:
    """The month families of each service, from the ledger as it is now."""

    def __init__(
        self,
        ledger: Ledger,
        config: Config,
        now: float,
        add: list[Callable[[str], None]],
        pooled: dict[str, dict[str, Figures]],
    ) -> None:
        self.ledger = ledger
        self.pooled = pooled
        self.pooled_seconds, self.pooled_budget = add[
            _INDEX[POOLED_SECONDS] : _INDEX[POOLED_BUDGET] + 1
        ]
        self.config = config
        self.now = now
        self.current = ledger.key(ledger.now(now))
        self.bounds: dict[str, tuple[int, int]] = {}  # of each month seen, in that order
        self.windows = config.maintenance_by_service()
        self.seconds, self.budget, self.objective = add[
            _INDEX[MONTH_SECONDS] : _INDEX[MONTH_OBJECTIVE] + 1
        ]
        self.slot = add[_INDEX[MONTH_SLOT]]
        self.starts, self.ends = add[_INDEX[MONTH_START]], add[_INDEX[MONTH_END]]

    def add(self, state: ServiceState) -> None:
        ledger, now, label, name = self.ledger, self.now, state.label, state.name
        interval = state.service.interval
        windows, unknown = self.windows.get(name, ()), self.config.sla.unknown
        for key in ledger.months(name, now):
            if key not in self.bounds:
                self.bounds[key] = ledger.bounds(key)
            figures = ledger.exposed(name, key, now, interval, windows, state.objective, unknown)
            labels = f'month="{key}",{label}'
            for kind in STATES:
                value = number(figures.seconds[kind] / 1000)
                self.seconds(f'sla_month_seconds{{{labels},state="{kind}"}} {value}\n')
            self.budget(
                f"sla_month_error_budget_seconds{{{labels}}} {number(figures.budget / 1000)}\n"
            )
            self.objective(f"sla_month_objective_ratio{{{labels}}} {number(figures.objective)}\n")
            self.slot(f"sla_month_slot_seconds{{{labels}}} {number(interval)}\n")
        for key, figures in self.pooled.get(name, {}).items():
            labels = f'month="{key}",{label}'
            for kind in STATES:
                value = number(figures.seconds[kind] / 1000)
                self.pooled_seconds(
                    f'sla_month_pooled_seconds{{{labels},state="{kind}"}} {value}\n'
                )
            budget = number(figures.budget / 1000)
            self.pooled_budget(f"sla_month_pooled_error_budget_seconds{{{labels}}} {budget}\n")

    def bounds_families(self) -> None:
        for key, (start, end) in self.bounds.items():
            self.starts(
                f'sla_month_start_timestamp_seconds{{month="{key}"}} {number(start / 1000)}\n'
            )
            self.ends(f'sla_month_end_timestamp_seconds{{month="{key}"}} {number(end / 1000)}\n')
