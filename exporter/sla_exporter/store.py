"""Results store: last result, exact counters and recent failures of every configured service."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from .config import Config, Service
from .exposition import escape
from .probes.base import ProbeResult

RECENT_FAILURES = 10  # kept per service for the landing page
# Upper bounds of `sla_probe_delivery_seconds`, in seconds: a message handed over is usually in
# the mailbox within a second or two; the upper ones reach the longest timeouts a delivery probe
# sets (under its interval).
DELIVERY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class ServiceState:
    """Everything the exporter knows about one service; counters only ever grow."""

    name: str
    service: Service
    objective: float
    last: ProbeResult | None = None
    probes: int = 0
    failures: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    maintenance_probes: int = 0
    maintenance_failures: int = 0
    missed_runs: int = 0
    confirmations: int = 0  # re-probes of a failing service between its slots
    consecutive_failures: int = 0  # failed probes in a row, up to the last one; 0 after a success
    failing_since: float | None = None  # start of the first probe of that run of failures
    # The last failures, for the landing page; made at the first failure (an empty deque costs
    # 0.75 KiB, and most services never fail).
    recent_failures: deque[ProbeResult] | tuple[()] = ()
    label: str = ""  # sla_service="name" as /metrics writes it, escaped once
    # mail_delivery: the end-to-end times of messages delivered in time (per bucket of
    # DELIVERY_BUCKETS, not cumulative), their sum, and messages that came after their probe.
    delivery_buckets: list[int] = field(default_factory=lambda: [0] * len(DELIVERY_BUCKETS))
    delivery_sum: float = 0.0
    delivery_count: int = 0
    late_deliveries: int = 0

    def __post_init__(self) -> None:
        self.label = f'sla_service="{escape(self.name)}"'


class Store:
    """Written by the scheduler after each probe, read by the collector and the landing page.

    Everything runs on one event loop, so plain attribute updates are atomic with respect to
    readers; a scrape sees each service either before or after a result, never half of it.
    """

    def __init__(self) -> None:
        self.services: dict[str, ServiceState] = {}

    def configure(self, config: Config) -> None:
        """Follow a (re)loaded config: keep the counters of kept services, forget removed ones."""
        for name in list(self.services):
            if name not in config.services:
                del self.services[name]
        for name, service in config.services.items():
            state = self.services.get(name)
            if state is None:
                self.services[name] = ServiceState(name, service, config.objective(name))
            else:
                state.service = service
                state.objective = config.objective(name)

    def record(
        self, name: str, result: ProbeResult, in_maintenance: bool, confirmation: bool = False
    ) -> None:
        """Count one finished probe; a result for a service removed meanwhile is dropped.

        A `confirmation` (a re-probe of a failing service between its slots) moves what the
        service is now (last result, failures in a row) but no counter: the rolling ratios
        count the regular probes, one per slot, however long an outage is re-probed."""
        state = self.services.get(name)
        if state is None:
            return
        state.last = result
        state.confirmations += confirmation
        state.late_deliveries += result.late
        if result.delivery is not None:  # every delivery measured, a confirmation's too
            state.delivery_count += 1
            state.delivery_sum += result.delivery
            for i, bound in enumerate(DELIVERY_BUCKETS):
                if result.delivery <= bound:
                    state.delivery_buckets[i] += 1
                    break
        if not confirmation:
            state.probes += 1
            state.maintenance_probes += in_maintenance
        if result.success:
            state.consecutive_failures = 0
            state.failing_since = None
        else:
            state.consecutive_failures += 1
            if state.failing_since is None:
                state.failing_since = result.timestamp
            assert result.reason is not None
            if not confirmation:
                state.failures += 1
                state.reasons[result.reason.value] += 1
                state.maintenance_failures += in_maintenance
            if not state.recent_failures:
                state.recent_failures = deque(maxlen=RECENT_FAILURES)
            state.recent_failures.append(result)

    def resume(self, name: str, failures: int, since: float) -> None:
        """Take up a run of `failures` failed slots since `since` that the month ledger holds
        (an exporter started again during an outage), before this process probed anything."""
        state = self.services.get(name)
        if state is not None and state.last is None and not state.consecutive_failures:
            state.consecutive_failures, state.failing_since = failures, since

    def missed(self, name: str, runs: int) -> None:
        """Count slots skipped because a probe could not start in time."""
        state = self.services.get(name)
        if state is not None:
            state.missed_runs += runs
