"""/metrics with the month figures the ledger keeps from one scrape to the next: never a byte
different from counting everything afresh, through what a running exporter lives through."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from types import MappingProxyType

from sla_exporter import pausing
from sla_exporter.collector import ServiceCollector
from sla_exporter.config import Service
from sla_exporter.exporter import Exporter
from sla_exporter.ledger import Ledger, MonthDocument, ms, slot
from sla_exporter.pool import months_document
from sla_exporter.probes import ProbeResult, Reason
from tests.fakes import WALL_OFFSET, FakeClock, settle
from tests.helpers import ts

HTTP = "http: {url: 'http://127.0.0.1:9/'}"
MAIL = (
    "mail_delivery: {submit: {host: smtp.test, from: probe@mail.test, "
    "auth: {username: probe, password: x}}, to: inbox@mail.test, "
    "mailbox: {host: imap.test, username: inbox, password: x}}"
)
# The other location answers nothing on port 9: its months are given by hand (`pool`).
LOCATIONS = "locations:\n  zrh: {url: 'http://127.0.0.1:9'}\n  fra: {url: 'http://127.0.0.1:9'}\n"
FIRST = (
    "sla: {name: Cache, timezone: Europe/Zurich, objective: 0.99}\n"
    "services:\n"
    f"  api: {{interval: 1m, confirm: 20s, {HTTP}}}\n"
    f"  web: {{interval: 1m, {HTTP}}}\n"
    f"  slow: {{interval: 1m, {HTTP}}}\n"
    f"  delivery: {{interval: 1m, {MAIL}}}\n"
    "maintenance:\n"
    "  - {services: [web], start: '2025-12-01T00:05:00+01:00', end: '2025-12-01T00:12:00+01:00'}\n"
    + LOCATIONS
)
# Reloaded: another interval, another objective, a service gone and one new, unknown excluded,
# a window moved.
SECOND = (
    "sla: {name: Cache, timezone: Europe/Zurich, objective: 0.99, unknown: excluded}\n"
    "services:\n"
    f"  api: {{interval: 1m, confirm: 20s, objective: 0.995, {HTTP}}}\n"
    f"  web: {{interval: 30s, {HTTP}}}\n"
    f"  delivery: {{interval: 1m, description: Mail from end to end, {MAIL}}}\n"
    f"  extra: {{interval: 2m, {HTTP}}}\n"
    "maintenance:\n"
    "  - {services: [extra, web], start: '2025-12-01T00:40:00+01:00', "
    "end: '2025-12-01T00:50:00+01:00'}\n" + LOCATIONS
)


class SteppedClock(FakeClock):
    """The fake clock, with a wall clock that can be set apart from the monotonic one."""

    step = 0.0

    def time(self) -> float:
        return super().time() + self.step


class Probe:
    """Results as each kind would give them; `reason` fails a service, `delay` slows it."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.reason: dict[str, Reason] = {}
        self.delay: dict[str, float] = {}
        self.runs: dict[str, int] = defaultdict(int)

    async def __call__(self, name: str, service: Service) -> ProbeResult:
        now = self.clock.time()
        self.runs[name] += 1
        if name in self.delay:
            await self.clock.sleep(self.delay[name])
        reason = self.reason.get(name)
        if service.kind == "mail_delivery":
            late = self.runs[name] % 5 == 0
            delivery = None if reason else 0.2 * (self.runs[name] % 7)
            return ProbeResult(reason is None, 1.0, reason, delivery=delivery, late=late)
        phases = MappingProxyType({"connect": 0.001, "first_byte": 0.002 * self.runs[name]})
        return ProbeResult(
            reason is None, 0.003, reason, phases=phases, status_code=200, timestamp=now
        )


def check(exp: Exporter) -> bytes:
    """The exporter's text, required to be the text written afresh: a new collector, and the
    ledger's figures counted anew (the figures it keeps set aside meanwhile)."""
    cached = b"".join(pausing.finish(exp.services.rendering()))
    ledger = exp.ledger
    assert ledger is not None
    kept, ledger._figures = ledger._figures, {}
    try:
        fresh = ServiceCollector(
            exp.store,
            lambda: ledger,
            lambda: exp.config,
            exp.clock.time,
            lambda: exp.pool.figures if exp.pool is not None else {},
        )
        afresh = b"".join(pausing.finish(fresh.rendering()))
    finally:
        ledger._figures = kept
    assert cached.decode() == afresh.decode()
    return cached


async def scrapes(exp: Exporter, clock: FakeClock, minutes: float) -> list[bytes]:
    """Prometheus' scrapes every 15 s for `minutes`, each checked."""
    texts = []
    for _ in range(round(minutes * 4)):
        await clock.advance(15)
        texts.append(check(exp))
    return texts


def other_ledger(exp: Exporter, service: str, up: bool, minutes: int) -> Ledger:
    """Another exporter's months of `service`: its last `minutes` slots, all `up` or not."""
    assert exp.config is not None
    other = Ledger(None, exp.config.sla.timezone)
    interval = exp.config.services[service].interval
    last = slot(service, ms(interval), ms(exp.clock.time())) / 1000
    other.advance(last - minutes * 60, service, 0.99, "down", ())
    other.record(service, last - minutes * 60, minutes * 60, up, None if up else "connect")
    return other


async def test_the_kept_figures_are_the_figures_counted_afresh_after_every_operation(
    tmp_path: Path,
) -> None:
    config = tmp_path / "sla.yml"
    config.write_text(FIRST)
    start = ts("2025-11-30T23:40:00+01:00")  # 20 minutes before December
    clock = SteppedClock(start - WALL_OFFSET)
    probe = Probe(clock)
    # One probe at a time: a slow one holds the others up, which miss slots without a result.
    exp = Exporter(str(config), probe=probe, clock=clock, location="zrh", max_concurrency=1)
    await exp.start()
    texts = [check(exp)]
    texts += await scrapes(exp, clock, 2)

    # Failures, and the confirmations between slots that they bring.
    probe.reason["api"] = Reason.CONNECT
    probe.reason["delivery"] = Reason.NOT_DELIVERED
    texts += await scrapes(exp, clock, 3)
    assert exp.store.services["api"].confirmations > 0
    del probe.reason["api"], probe.reason["delivery"]

    # A probe slower than its interval: the slots it overruns are missed, its own and, while
    # it holds the only place, the others'.
    probe.delay["slow"] = 130
    texts += await scrapes(exp, clock, 4)
    del probe.delay["slow"]
    assert exp.store.services["slow"].missed_runs > 0
    assert exp.store.services["web"].missed_runs > 0

    # Into December, through web's maintenance window (00:05 to 00:12), and out of it.
    texts += await scrapes(exp, clock, 35 - (clock.time() - start) / 60)
    assert any(b'sla_maintenance{sla_service="web"} 1.0' in text for text in texts)
    assert b'sla_maintenance{sla_service="web"} 0.0' in texts[-1]
    assert b'month="2025-11"' in texts[-1] and b'month="2025-12"' in texts[-1]

    # A service removed and added back between two scrapes.
    config.write_text(FIRST.replace(f"  slow: {{interval: 1m, {HTTP}}}\n", ""))
    assert await exp.reload() is None
    config.write_text(FIRST)
    assert await exp.reload() is None
    texts += [check(exp)]

    # A reload that changes nearly everything; the new service's first results are the
    # exporter's own failures (its time unknown, but monitored).
    probe.reason["extra"] = Reason.EXPORTER
    config.write_text(SECOND)
    assert await exp.reload() is None
    texts += [check(exp)]
    texts += await scrapes(exp, clock, 3)
    assert b'sla_service="slow"' not in texts[-1]
    assert b'sla_service="extra"' in texts[-1]
    del probe.reason["extra"]

    # Replicas: another replica saw web up where this one saw it down.
    probe.reason["web"] = Reason.CONNECT
    texts += await scrapes(exp, clock, 3)
    assert exp.ledger is not None
    exp.ledger.join = True
    replica = other_ledger(exp, "web", True, 2)
    for name, book in replica.books.items():
        documents = {
            key: MonthDocument(
                runs=[(r.start, r.end, r.up, tuple(r.reasons)) for r in month.runs],
                maintenance=month.maintenance,
                terms=month.terms,
            )
            for key, month in book.months.items()
        }
        assert exp.ledger.merge(name, book.since, documents) > 0
    texts += [check(exp)]
    del probe.reason["web"]

    # The other location's months, pooled: down there, so the pooled figure moves.
    assert exp.pool is not None and exp.config is not None
    pooled_before = exp.pool.figures.get("api")
    exp.pool.peers["fra"].services = months_document(other_ledger(exp, "api", False, 5), "fra")[
        "services"
    ]
    exp.pool.compute(exp.config, clock.time())
    assert exp.pool.figures.get("api") != pooled_before
    texts += [check(exp)]
    texts += await scrapes(exp, clock, 2)

    # The wall clock set back five minutes: results for time already counted are refused.
    clock.step = -300
    texts += await scrapes(exp, clock, 3)
    assert exp.ledger.clock_steps_back > 0
    # And forward an hour: the hour no result covers becomes unknown (excluded, here).
    clock.step = 3300
    texts += await scrapes(exp, clock, 3)
    await exp.stop()
    await settle()
