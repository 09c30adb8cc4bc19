"""Our exporter as the benchmark runs it: the real command line, plus a window on its schedule.

`python -m bench.exporter_proc <sla-exporter flags>` is `sla-exporter <flags>` with one addition:
GET /-/bench/samples returns, as JSON, every schedule lag and probe duration the scheduler saw
since the previous call (and which services it probed), so the harness can report exact
percentiles instead of histogram buckets. Recording is an append to an array per probe; nothing
else differs from the shipped exporter (same Exporter, same web app, same flags).
"""

from __future__ import annotations

import array
import asyncio
import inspect
import sys
from collections import Counter
from collections.abc import Sequence

from aiohttp import web

from sla_exporter import cli
from sla_exporter.config import Service
from sla_exporter.exporter import Exporter
from sla_exporter.probes import ProbeResult
from sla_exporter.web import make_app
from sla_exporter.webconfig import WebConfig


class Samples:
    """What the scheduler did since the last read."""

    def __init__(self) -> None:
        self.lags = array.array("d")
        self.durations = array.array("d")
        self.failures = 0
        self.probed: Counter[str] = Counter()

    def reset(self) -> None:
        self.lags = array.array("d")
        self.durations = array.array("d")
        self.failures = 0
        self.probed = Counter()

    def read(self, exporter: Exporter, names: bool) -> dict[str, object]:
        out = {
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

    def lag(name: str, seconds: float) -> None:
        samples.lags.append(seconds)
        on_lag(name, seconds)

    def result(name: str, service: Service, result: ProbeResult, maintenance: bool) -> None:
        samples.durations.append(result.duration)
        samples.failures += not result.success
        samples.probed[name] += 1
        on_result(name, service, result, maintenance)

    scheduler.on_lag, scheduler.on_result = lag, result

    async def read(request: web.Request) -> web.Response:
        return web.json_response(samples.read(exporter, "names" in request.query))

    app.router.add_get("/-/bench/samples", read)


def main(argv: Sequence[str] | None = None) -> int:
    def make_instrumented_app(exporter: Exporter, web_config: WebConfig | None) -> web.Application:
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
    return asyncio.run(cli.serve(args, app=make_instrumented_app))


if __name__ == "__main__":
    sys.exit(main())
