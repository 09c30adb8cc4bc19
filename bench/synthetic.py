"""Synthetic services for the `rules` section: their history for backfilling, their /metrics now.

One model for both, so that the counters Prometheus scrapes continue the ones it was backfilled
with, without a reset. Service i (named svc-00000...) is probed once a minute at its own second
of the minute from START on, and fails every FAIL_EVERY[i % 5]-th probe (one service in five
never fails); one month in a hundred of its tallies is a breach. Its /metrics is the exporter's
for an HTTPS service with 13 months of month tallies: the series of tests/golden/metrics.txt,
one location (`location` is the target label Prometheus adds), as a year-old installation
exposes them.

    python -m bench.synthetic --services 10000 --port 9141 --start 1767225600

serves that /metrics; the backfill writes OpenMetrics text (`openmetrics`) for
`promtool tsdb create-blocks-from openmetrics`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from aiohttp import web

FAIL_EVERY = (500, 1000, 2000, 4000, 0)  # 0: never
PHASES = ("dns", "connect", "tls", "first_byte", "transfer")
MONTH_STATES = ("up", "down", "unknown", "excluded", "maintenance", "unmonitored")
MONTHS = 13
# One service-month in BREACH_EVERY missed the objective (the overview's "Breached months"
# table has rows to show: 1,200 at 10,000 services).
BREACH_EVERY = 100
SCRAPE = 15  # seconds, the shipped scrape interval
SNAPSHOT = 300  # seconds, the spacing of the recorded counter snapshots
COUNTERS = (
    "sla_probes_total",
    "sla_maintenance_probes_total",
    "sla_probe_failures_total",
    "sla_maintenance_probe_failures_total",
)
SNAPSHOT_PREFIX = "sla_service_location_instance:"
SNAPSHOT_SUFFIX = ":max_over_time5m"


def name(i: int) -> str:
    return f"svc-{i:05d}"


@dataclass(frozen=True)
class Model:
    """Counters of every service at any time, from START on."""

    services: int
    start: int  # unix seconds, when every counter was 0

    def phase(self, i: int) -> int:
        return (i * 7919) % 60

    def probes(self, i: int, t: float) -> int:
        since = t - self.start - self.phase(i)
        return 0 if since < 0 else int(since // 60) + 1

    def failures(self, i: int, probes: int) -> int:
        every = FAIL_EVERY[i % len(FAIL_EVERY)]
        return probes // every if every else 0

    def counters(self, i: int, t: float) -> tuple[int, int, int, int]:
        """(probes, maintenance probes, failures, maintenance failures), as COUNTERS."""
        probes = self.probes(i, t)
        return probes, 0, self.failures(i, probes), 0


def months(now: float) -> list[tuple[str, float, float]]:
    """(month key, start, end) of the 13 months up to `now`, in UTC, oldest first."""
    tm = time.gmtime(now)
    year, month = tm.tm_year, tm.tm_mon
    out = []
    for back in range(MONTHS - 1, -1, -1):
        y, m = year, month - back
        while m < 1:
            y, m = y - 1, m + 12
        ny, nm = (y, m + 1) if m < 12 else (y + 1, 1)
        start = time.mktime((y, m, 1, 0, 0, 0, 0, 0, 0)) - time.timezone
        end = time.mktime((ny, nm, 1, 0, 0, 0, 0, 0, 0)) - time.timezone
        out.append((f"{y:04d}-{m:02d}", start, end))
    return out


# ------------------------------------------------------------------------------------------------
# /metrics now


class Exposition:
    """The exporter's /metrics for the model's services: static parts rendered once."""

    def __init__(self, model: Model, now: float):
        self.model = model
        self.labels = [f'sla_service="{name(i)}"' for i in range(model.services)]
        static: list[str] = [
            'sla_info{sla="bench",timezone="UTC"} 1\n',
            "sla_unknown_as_down 1\n",
            'sla_timezone_offset_seconds{timezone="UTC"} 0\n',
            "sla_exporter_config_last_reload_successful 1\n",
            f"sla_exporter_config_last_reload_success_timestamp_seconds {model.start}\n",
            'sla_exporter_build_info{python_version="3.11.7",version="bench"} 1\n',
            'sla_exporter_shard_info{shard="1",shards="1"} 1\n',
        ]
        spans = months(now)
        for key, start, end in spans:
            static.append(f'sla_month_start_timestamp_seconds{{month="{key}"}} {start:.0f}\n')
            static.append(f'sla_month_end_timestamp_seconds{{month="{key}"}} {end:.0f}\n')
        for i, label in enumerate(self.labels):
            static += [
                f'sla_service_info{{description="bench service {i}",kind="http",{label}}} 1\n',
                f"sla_probe_interval_seconds{{{label}}} 60\n",
                f"sla_probe_timeout_seconds{{{label}}} 10\n",
                f"sla_objective_ratio{{{label}}} 0.99\n",
                f"sla_maintenance{{{label}}} 0\n",
                f"sla_probe_status_code{{{label}}} 200\n",
                f"sla_probe_tls_cert_expiry_timestamp_seconds{{{label}}} {now + 90 * 86400:.0f}\n",
                f"sla_probe_duration_seconds{{{label}}} 0.012\n",
            ]
            static += [
                f'sla_probe_phase_duration_seconds{{phase="{phase}",{label}}} 0.002\n'
                for phase in PHASES
            ]
            for m, (key, start, end) in enumerate(spans):
                of = f'{label},month="{key}"'
                seconds = min(end, now) - start
                down = 600.0 if FAIL_EVERY[i % len(FAIL_EVERY)] else 0.0
                if (i * 7 + m) % BREACH_EVERY == BREACH_EVERY - 1:  # 2 % down: over the budget
                    down = 0.02 * seconds
                values = {"up": seconds - down, "down": down}
                static += [
                    f'sla_month_seconds{{{of},state="{state}"}} {values.get(state, 0.0):.0f}\n'
                    for state in MONTH_STATES
                ]
                static += [
                    f"sla_month_error_budget_seconds{{{of}}} {0.01 * (end - start):.0f}\n",
                    f"sla_month_objective_ratio{{{of}}} 0.99\n",
                    f"sla_month_slot_seconds{{{of}}} 60\n",
                ]
        self.static = "".join(static).encode()

    def render(self, now: float) -> bytes:
        """The counters and last-probe gauges at `now`, then the static part."""
        model = self.model
        out = []
        for i, label in enumerate(self.labels):
            probes, maint, failures, maint_failures = model.counters(i, now)
            last_failed = failures > model.failures(i, probes - 1) if probes else False
            last_run = model.start + model.phase(i) + 60 * (probes - 1) if probes else 0
            out.append(
                f"sla_probes_total{{{label}}} {probes}\n"
                f"sla_probe_failures_total{{{label}}} {failures}\n"
                f"sla_maintenance_probes_total{{{label}}} {maint}\n"
                f"sla_maintenance_probe_failures_total{{{label}}} {maint_failures}\n"
                f"sla_probe_missed_runs_total{{{label}}} 0\n"
                f'sla_probe_failure_reasons_total{{reason="timeout",{label}}} {failures}\n'
                f"sla_probe_success{{{label}}} {0 if last_failed else 1}\n"
                f"sla_probe_consecutive_failures{{{label}}} {1 if last_failed else 0}\n"
                f"sla_probe_last_run_timestamp_seconds{{{label}}} {last_run}\n"
            )
            if last_failed:
                out.append(f"sla_probe_failing_since_timestamp_seconds{{{label}}} {last_run}\n")
        return "".join(out).encode() + self.static


def serve(services: int, port: int, start: int) -> None:
    """Serve /metrics on 127.0.0.1:`port` until killed."""
    model = Model(services, start)
    exposition = Exposition(model, time.time())

    async def metrics(request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(
            None, exposition.render, time.time()
        )
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ------------------------------------------------------------------------------------------------
# History for promtool


@dataclass(frozen=True)
class History:
    """What the backfill writes, for `services` services over [begin, end)."""

    model: Model
    instance: str  # the live target's address: backfilled and scraped series must be one
    location: str
    begin: int
    end: int
    dense: int  # raw counters every 15s over the last `dense` seconds, every 5 minutes before
    sparse: int  # ... back to `sparse` seconds before the end (older: only the snapshots)
    detail: int  # how many services (from svc-00000) get every series a dashboard reads...
    detail_begin: int  # ... from this time on (the dashboards are timed over 30 days)
    raw_all: bool = False  # every counter at 15s over the whole history (the reference shape)


def _series(metric: str, labels: str, points: Iterable[tuple[int, int | float]]) -> str:
    head = f"{metric}{{{labels}}} "
    return "".join(f"{head}{value} {t}\n" for t, value in points)


def _grid(begin: int, end: int, step: int) -> range:
    first = -(-begin // step) * step
    return range(first, end, step)


def openmetrics(history: History, begin: int, end: int) -> Iterator[str]:
    """The OpenMetrics text of [begin, end) of the history, in pieces (one per service), then
    `# EOF`."""
    model = history.model
    detail_from = max(begin, history.detail_begin)
    begin, end = max(begin, history.begin), min(end, history.end)
    target = f'instance="{history.instance}",job="sla",location="{history.location}"'
    recorded = f'instance="{history.instance}",location="{history.location}"'
    dense_from = history.begin if history.raw_all else history.end - history.dense
    sparse_from = history.end - history.sparse
    snapshots = _grid(begin, end, SNAPSHOT)
    raw = [
        *_grid(max(begin, sparse_from), min(end, dense_from), SNAPSHOT),
        *_grid(max(begin, dense_from), end, SCRAPE),
    ]
    for i in range(model.services):
        label = f'sla_service="{name(i)}"'
        if i < history.detail:
            yield _detail(history, i, f"{target},{label}", detail_from, end)
        if begin >= end:
            continue
        at_snapshots = [model.counters(i, t) for t in snapshots]
        at_raw = [model.counters(i, t) for t in raw]
        parts = []
        for c, counter in enumerate(COUNTERS):
            parts.append(
                _series(
                    f"{SNAPSHOT_PREFIX}{counter}{SNAPSHOT_SUFFIX}",
                    f"{recorded},{label}",
                    ((t, row[c]) for t, row in zip(snapshots, at_snapshots, strict=True)),
                )
            )
            parts.append(
                _series(
                    counter,
                    f"{target},{label}",
                    ((t, row[c]) for t, row in zip(raw, at_raw, strict=True)),
                )
            )
        yield "".join(parts)
    yield "# EOF\n"


def _detail(history: History, i: int, target: str, begin: int, end: int) -> str:
    """Every series a dashboard of one service reads over its time range, at the scrape."""
    model = history.model
    times = list(_grid(begin, end, SCRAPE))
    label = target.rsplit(",", 1)[1]  # sla_service="..."
    loc = f'location="{history.location}",{label}'

    def last_failed(t: int) -> int:
        probes = model.probes(i, t)
        return int(probes > 0 and model.failures(i, probes) > model.failures(i, probes - 1))

    def ratio(t: int, window: int) -> float:
        p0, p1 = model.probes(i, t - window), model.probes(i, t)
        f0, f1 = model.failures(i, p0), model.failures(i, p1)
        return (f1 - f0) / (p1 - p0) if p1 > p0 else 0.0

    out = [
        _series("sla_probe_success", target, ((t, 1 - last_failed(t)) for t in times)),
        _series("sla_probe_consecutive_failures", target, ((t, last_failed(t)) for t in times)),
        _series("sla_probe_duration_seconds", target, ((t, 0.012) for t in times)),
        _series("sla_probe_timeout_seconds", target, ((t, 10) for t in times)),
        _series("sla_maintenance", target, ((t, 0) for t in times)),
        _series("sla_objective_ratio", target, ((t, 0.99) for t in times)),
        _series(
            "sla_probe_failure_reasons_total",
            f'reason="timeout",{target}',
            ((t, model.counters(i, t)[2]) for t in times),
        ),
        _series("sla_service:objective:ratio", label, ((t, 0.99) for t in times)),
        _series("sla_service:error_budget:ratio", label, ((t, 0.01) for t in times)),
        _series(
            "sla_service:probe_errors:ratio_rate1h", label, ((t, ratio(t, 3600)) for t in times)
        ),
    ]
    for phase in PHASES:
        out.append(
            _series(
                "sla_probe_phase_duration_seconds",
                f'phase="{phase}",{target}',
                ((t, 0.002) for t in times),
            )
        )
    for window, seconds in (("5m", 300), ("1h", 3600)):
        out.append(
            _series(
                f"sla_service_location:probe_availability:ratio_rate{window}",
                loc,
                ((t, 1 - ratio(t, seconds)) for t in times),
            )
        )
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.synthetic", description=__doc__)
    parser.add_argument("--services", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--start", type=int, required=True, help="unix time the counters began")
    args = parser.parse_args(argv)
    serve(args.services, args.port, args.start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
