"""Our exporter as the benchmark runs it: the real command line, plus a window on its schedule.

`python -m bench.exporter_proc <sla-exporter flags>` is `sla-exporter <flags>` with one addition:
GET /-/bench/samples returns, as JSON, every schedule lag and probe duration the scheduler saw
since the previous call (and which services it probed), so the harness can report exact
percentiles instead of histogram buckets, with the exact time that covers and the shortest time
between two runs of one service. Recording is an append to an array and a dict update per
probe; nothing else differs from the shipped exporter (same Exporter, same web app, same flags).
"""

from __future__ import annotations

import array
import asyncio
import inspect
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence

from aiohttp import web

from sla_exporter import cli
from sla_exporter.config import Service
from sla_exporter.exporter import Exporter
from sla_exporter.probes import ProbeResult
from sla_exporter.web import make_app
from sla_exporter.webconfig import WebConfigFile


class Samples:
    """What the scheduler did since the last read."""

    def __init__(self) -> None:
        self.last_start: dict[str, float] = {}  # kept across reads: a gap may span two windows
        self.reset()

    def reset(self) -> None:
        self.since = time.monotonic()
        self.lags = array.array("d")
        self.durations = array.array("d")
        self.failures = 0
        self.probed: Counter[str] = Counter()
        self.shortest_gap = math.inf

    def started(self, name: str) -> None:
        """A run of `name` starts now."""
        now = time.monotonic()
        previous = self.last_start.get(name)
        if previous is not None:
            self.shortest_gap = min(self.shortest_gap, now - previous)
        self.last_start[name] = now

    def read(self, exporter: Exporter, names: bool) -> dict[str, object]:
        out: dict[str, object] = {
            "seconds": time.monotonic() - self.since,
            "shortest_gap": None if math.isinf(self.shortest_gap) else self.shortest_gap,
            "lags": self.lags.tolist(),
            "durations": self.durations.tolist(),
            "failures": self.failures,
            "missed": sum(s.missed_runs for s in exporter.store.services.values()),
            "services": len(exporter.store.services),
            "probed": dict(self.probed) if names else {},
        }
        self.reset()
        return out


def instrument(exporter: Exporter, app: web.Application) -> None:
    samples = Samples()
    scheduler = exporter.scheduler
    on_lag, on_result = scheduler.on_lag, scheduler.on_result

    def lag(name: str, seconds: float) -> None:  # called as a run starts
        samples.lags.append(seconds)
        samples.started(name)
        on_lag(name, seconds)

    def result(
        name: str, service: Service, result: ProbeResult, maintenance: bool, start: float | None
    ) -> None:
        samples.durations.append(result.duration)
        samples.failures += not result.success
        samples.probed[name] += 1
        on_result(name, service, result, maintenance, start)

    scheduler.on_lag, scheduler.on_result = lag, result

    async def read(request: web.Request) -> web.Response:
        return web.json_response(samples.read(exporter, "names" in request.query))

    app.router.add_get("/-/bench/samples", read)


def main(argv: Sequence[str] | None = None) -> int:
    def make_instrumented_app(
        exporter: Exporter, web_config: WebConfigFile | None
    ) -> web.Application:
        app = make_app(exporter, web_config)
        instrument(exporter, app)
        return app

    args = cli.parse_args(argv)
    cli.setup_logging(args.log_level, args.log_format)
    if "app" not in inspect.signature(cli.serve).parameters:
        # An exporter from before serve() took `app` (measuring an older commit through
        # PYTHONPATH, as bench/RESULTS.md does): it built its app through this name.
        cli.make_app = make_instrumented_app  # type: ignore[attr-defined,assignment]
        return asyncio.run(cli.serve(args))
    return cli.run(cli.serve(args, app=make_instrumented_app), args.event_loop)


if __name__ == "__main__":
    sys.exit(main())
