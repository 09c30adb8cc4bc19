"""Support metrics (`sla_support_*`), measured from the desk's tickets at scrape time.

Label names: `policy`, `calendar`, `target`, `state`, `month`, `clock`. Never `service`,
`instance`, `job` or `env` (target labels), and never a ticket id (one series per ticket would
grow without bound; the landing of a ticket is in the helpdesk, not in Prometheus).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..ledger import month_bounds
from .desk import STATES, Histogram, SupportDesk, months


class SupportCollector(Collector):
    """Renders the support desk; nothing at all when the SLA file has no `support:` section."""

    def __init__(self, desk: SupportDesk) -> None:
        self.desk = desk

    def describe(self) -> list[Metric]:
        return []  # families exist only when support is configured

    def collect(self) -> Iterator[Metric]:
        desk = self.desk
        snap = desk.snapshot()
        if snap is None:
            return
        rules = snap.policies.rules
        now = snap.now

        info = GaugeMetricFamily(
            "sla_support_policy_info",
            "Support policies, their calendar and description; first match wins, in this order.",
            labels=["policy", "calendar", "description", "order"],
        )
        objective = GaugeMetricFamily(
            "sla_support_objective_ratio",
            "Share of clocks a policy promises to stop within target each month.",
            labels=["policy"],
        )
        target_seconds = GaugeMetricFamily(
            "sla_support_target_seconds",
            "Configured target of each policy, in seconds on its clock (business or calendar).",
            labels=["policy", "target", "clock"],
        )
        warn_seconds = GaugeMetricFamily(
            "sla_support_warning_seconds",
            "Seconds left on the clock at which an open ticket turns from within_target to "
            "warning.",
            labels=["policy", "target"],
        )
        for order, rule in enumerate(rules):
            info.add_metric([rule.name, rule.calendar.name, rule.policy.description, str(order)], 1)
            objective.add_metric([rule.name], rule.objective)
            for rule_target in rule.targets.values():
                labels = [rule.name, rule_target.name, rule_target.clock_kind]
                target_seconds.add_metric(labels, rule_target.seconds)
                warn_seconds.add_metric([rule.name, rule_target.name], rule_target.warn_before)
        yield from (info, objective, target_seconds, warn_seconds)

        calendar_open = GaugeMetricFamily(
            "sla_support_calendar_open",
            "Whether the calendar is within opening hours now (1) or closed (0), holidays "
            "included.",
            labels=["calendar"],
        )
        for name, calendar in snap.policies.calendars.items():
            calendar_open.add_metric([name], 1 if calendar.is_open(now) else 0)
        yield calendar_open

        open_tickets = GaugeMetricFamily(
            "sla_support_open_tickets",
            "Open tickets by current policy and state: within_target, warning (close to a "
            "deadline), breached (a running clock is past its deadline), paused (waiting on the "
            "customer).",
            labels=["policy", "calendar", "state"],
        )
        for rule in rules:
            for state in STATES:
                open_tickets.add_metric(
                    [rule.name, rule.calendar.name, state], snap.open[(rule.name, state)]
                )
        yield open_tickets
        unmatched = GaugeMetricFamily(
            "sla_support_unmatched_open_tickets",
            "Open tickets that match no policy (their clocks are not measured).",
        )
        unmatched.add_metric([], snap.unmatched)
        incomplete = GaugeMetricFamily(
            "sla_support_incomplete_tickets",
            "Tickets with events but no created event yet (not measured until it arrives).",
        )
        incomplete.add_metric([], snap.incomplete)
        yield from (unmatched, incomplete)

        left = GaugeMetricFamily(
            "sla_support_next_deadline_business_seconds",
            "Seconds left on the clock (business time for business targets) until the nearest "
            "deadline of a running clock not yet breached; absent when no clock runs.",
            labels=["policy", "target"],
        )
        due = GaugeMetricFamily(
            "sla_support_next_deadline_timestamp_seconds",
            "Unix time of the nearest deadline of a running clock not yet breached.",
            labels=["policy", "target"],
        )
        for (policy, target), (seconds, at) in sorted(snap.next_deadline.items()):
            left.add_metric([policy, target], seconds)
            due.add_metric([policy, target], at)
        yield from (left, due)

        breaches = CounterMetricFamily(
            "sla_support_breaches",
            "Clocks that ran past their target (stopped late, or still running past it).",
            labels=["policy", "target"],
        )
        for rule in rules:
            for target in rule.targets:
                breaches.add_metric([rule.name, target], snap.breaches[(rule.name, target)])
        yield breaches

        for target, doc in (
            ("first_response", "Time to first response of each stage"),
            ("resolution", "Time to resolution"),
        ):
            family = HistogramMetricFamily(
                f"sla_support_{target}_business_seconds",
                f"{doc}, in seconds on the policy's clock (pauses excluded), of stopped clocks.",
                labels=["policy"],
            )
            for rule in rules:
                if target not in rule.targets:
                    continue
                histogram = snap.histograms.get((target, rule.name)) or Histogram()
                family.add_metric([rule.name], histogram.cumulative(), histogram.total)
            yield family

        measured = GaugeMetricFamily(
            "sla_support_month_measured",
            "Clocks counted in the calendar month (SLA time zone): stopped in it, or breached "
            "in it.",
            labels=["policy", "target", "month"],
        )
        breached = GaugeMetricFamily(
            "sla_support_month_breached",
            "Clocks of sla_support_month_measured that breached their target.",
            labels=["policy", "target", "month"],
        )
        starts = GaugeMetricFamily(
            "sla_support_month_start_timestamp_seconds",
            "Unix time the calendar month starts in the SLA time zone.",
            labels=["month"],
        )
        ends = GaugeMetricFamily(
            "sla_support_month_end_timestamp_seconds",
            "Unix time the next calendar month starts in the SLA time zone.",
            labels=["month"],
        )
        for month in months(snap):
            start, end = month_bounds(month, snap.zone)
            starts.add_metric([month], start)
            ends.add_metric([month], end)
            for rule in rules:
                for target in rule.targets:
                    key = (rule.name, target, month)
                    measured.add_metric([rule.name, target, month], snap.measured[key])
                    breached.add_metric([rule.name, target, month], snap.breached[key])
        yield from (measured, breached, starts, ends)

        events = CounterMetricFamily(
            "sla_support_events",
            "Ticket events received since the exporter started: stored, or duplicate (ignored).",
            labels=["outcome"],
        )
        for outcome in ("stored", "duplicate"):
            events.add_metric([outcome], desk.outcomes[outcome])
        rejected = CounterMetricFamily(
            "sla_support_rejected_requests",
            "Event requests refused since the exporter started, by HTTP status "
            "(400 bad input, 401 token, 409 conflicting id, 413 too large).",
            labels=["code"],
        )
        for code in ("400", "401", "409", "413"):
            rejected.add_metric([code], desk.rejected[code])
        stored = GaugeMetricFamily("sla_support_stored_events", "Ticket events in the database.")
        stored.add_metric([], desk.events_stored)
        yield from (events, rejected, stored)
        if desk.last_event_time is not None:
            last = GaugeMetricFamily(
                "sla_support_last_event_received_timestamp_seconds",
                "Unix time the last new ticket event was stored.",
            )
            last.add_metric([], desk.last_event_time)
            yield last
