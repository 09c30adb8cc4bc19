"""The status page (`/status`): each service now, this month, and its last 90 days.

Everything on it comes from the month ledger, the one accounting /metrics, the rules and the
report use; a day's square is that day's share of the time that counted (down and unknown time
against up, maintenance left out), in the SLA's zone. It shows names, descriptions and failure
reasons (a closed set), never a URL, a header or what a server answered, so it can be public
(`--web.status-public`). No script: it is a page a phone loads in one request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from .config import Config
from .ledger import Ledger, Span, month_key, ms, next_month
from .report import TEMPLATES, availability, duration
from .store import Store

DAYS = 90


@dataclass
class Day:
    day: date
    up: int = 0  # ms
    failed: int = 0  # down, and unknown counted as down
    maintenance: int = 0

    @property
    def kind(self) -> str:
        counted = self.up + self.failed
        if not counted:
            return "maintenance" if self.maintenance else "none"
        if not self.failed:
            return "up"
        return "down" if self.failed * 20 >= counted else "partial"  # 5 % of the day or more

    @property
    def title(self) -> str:
        counted = self.up + self.failed
        figure = f"{availability(self.up, counted)} %" if counted else "no data"
        extra = f", {duration(self.failed / 1000)} down" if self.failed else ""
        return f"{self.day.isoformat()}: {figure}{extra}"


def _days(spans: list[Span], zone: ZoneInfo, first: date, last: date) -> list[Day]:
    days = {first + timedelta(n): Day(first + timedelta(n)) for n in range((last - first).days + 1)}
    for span in spans:
        at = span.start
        while at < span.end:
            local = datetime.fromtimestamp(at / 1000, zone).date()
            next_day = datetime.combine(local + timedelta(1), datetime.min.time(), zone)
            cut = min(span.end, ms(next_day.timestamp()))
            day = days.get(local)
            if day is not None:
                if span.state == "up":
                    day.up += cut - at
                elif span.state in ("down", "unknown"):
                    day.failed += cut - at
                elif span.state == "maintenance":
                    day.maintenance += cut - at
            at = cut
    return [days[d] for d in sorted(days)]


def document(
    config: Config, ledger: Ledger, store: Store, windows: Any, clock: float
) -> dict[str, Any]:
    """What the status page shows; `windows(name)` gives a service's declared maintenance."""
    zone = ZoneInfo(config.sla.timezone)
    now = datetime.fromtimestamp(clock, zone)
    last = now.date()
    first = last - timedelta(DAYS - 1)
    months = [month_key(datetime.combine(first, datetime.min.time(), zone).timestamp(), zone)]
    while months[-1] < month_key(clock, zone):
        months.append(next_month(months[-1]))
    services = []
    for name, service in config.services.items():
        state = store.services.get(name)
        spans: list[Span] = []
        this_month = None
        for key in months:
            figures = ledger.exposed(
                name,
                key,
                clock,
                service.interval,
                windows(name),
                config.objective(name),
                config.sla.unknown,
                spans=spans,
            )
            this_month = figures
        assert this_month is not None
        in_maintenance = config.in_maintenance(name, now)
        last_result = state.last if state is not None else None
        services.append(
            {
                "name": name,
                "description": service.description,
                "now": (
                    "maintenance"
                    if in_maintenance
                    else "unknown"
                    if last_result is None
                    else "up"
                    if last_result.success
                    else "down"
                ),
                "since": state.failing_since if state is not None else None,
                "reason": last_result.reason.value
                if last_result is not None and last_result.reason is not None
                else None,
                "availability": availability(this_month.seconds["up"], this_month.counted),
                "met": this_month.failed <= this_month.budget,
                "budget_left": (this_month.budget - this_month.failed) / 1000,
                "objective": config.objective(name),
                "days": _days(spans, zone, first, last),
            }
        )
    upcoming = sorted(
        (w.start, w.end, ", ".join(w.services), w.description)
        for w in config.maintenance
        if w.end.timestamp() > clock
    )
    return {
        "sla": config.sla.name,
        "zone": config.sla.timezone,
        "generated": now.strftime("%Y-%m-%d %H:%M %Z"),
        "month": now.strftime("%B %Y"),
        "services": services,
        "down": [s for s in services if s["now"] == "down"],
        "maintenance": [
            {
                "start": start.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
                "end": end.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z"),
                "services": names,
                "description": description,
            }
            for start, end, names, description in upcoming
        ],
        "local": lambda t: datetime.fromtimestamp(t, zone).strftime("%Y-%m-%d %H:%M"),
    }


def render(page: dict[str, Any]) -> str:
    return TEMPLATES.get_template("status.html").render(**page)
