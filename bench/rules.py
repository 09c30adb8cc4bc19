"""The `rules` section: the shipped rules and dashboards in a real Prometheus, at scale.

N synthetic services (bench/synthetic.py) are scraped live by Debian's Prometheus, which runs
the shipped rule files, while D days of their history are backfilled into its storage with
`promtool tsdb create-blocks-from openmetrics`. Once every block is loaded and compacted:

- each rule group's evaluation time against its interval, and the slowest rule's time against
  the query timeout (2 minutes by default);
- every query of the overview and service dashboards (the committed JSON in
  grafana/dashboards/), timed as Grafana would send it over the last D days;
- the series Prometheus holds per service (scraped and recorded) and its memory per service.

What is backfilled is what the rules and panels read over days: the four counters' snapshots
every 5 minutes over the whole history (the long windows), the counters themselves every 15 s
over the last 6 hours (the short windows, 1h at most) and every 5 minutes over the 3 days
before (the history rules look one sample up, 3 days back), and every series a dashboard of one
service reads (svc-00000, whose dashboards are the ones timed). The counters' full 15 s history
is not written: no shipped rule or timed panel reads it. The reference phase does write it,
for the rules as they were (rate() over the raw counters, every window), on fewer services, to
measure the old shape against the new in the same run.

Figures at a size smaller than 10,000 services x 30 days are extrapolated linearly in the
samples each evaluation (or query) reads, and the table says so.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from . import synthetic
from .procs import REPO, Proc, free_port

PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((REPO / "prometheus" / "rules").glob("*.yml"))
REFERENCE_RULES = REPO / "prometheus" / "tests" / "reference" / "raw_ratios.yml"
DASHBOARDS = REPO / "grafana" / "dashboards"
TIMED_DASHBOARDS = ("sla-overview", "sla-service")
LONG_GROUP = "sla-probe-ratios-long"
TARGET_SERVICES = 10_000
TARGET_DAYS = 30
QUERY_TIMEOUT = 120.0  # Prometheus' default --query.timeout
GROUP_SHARE = 0.25  # of its interval, the most any group may take at the target size
PANEL_SECONDS = 1.0  # the most any panel query may take at the target size
LOCATION = "zrh"
DAY = 86400
INSPECTED = synthetic.name(0)  # the service whose dashboard is timed
DURATION = re.compile(r"(\d+)([smhd])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RANGE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*\[(\d+[smhd])\]")


def seconds(duration: str) -> int:
    return sum(int(n) * UNITS[u] for n, u in DURATION.findall(duration))


# ------------------------------------------------------------------------------------------------
# What each evaluation reads


def samples_per_service(expr: str, days: float) -> float:
    """Samples one evaluation of `expr` reads per service (and location): every range selector,
    at 5 minutes for the counters' snapshots and the scrape interval for everything else, no
    further back than `days` of history."""
    total = 0.0
    for metric, _, window in RANGE.findall(expr):
        span = min(seconds(window), days * DAY)
        spacing = synthetic.SNAPSHOT if metric.endswith(synthetic.SNAPSHOT_SUFFIX) else 15
        total += span / spacing + 1
    return total


def group_samples(group: dict[str, Any], days: float) -> float:
    return sum(samples_per_service(rule["expr"], days) for rule in group["rules"])


# ------------------------------------------------------------------------------------------------
# Rule files as the bench runs them


def shipped_groups() -> list[tuple[str, dict[str, Any]]]:
    """(file name, group) of every shipped rule group."""
    return [
        (path.name, group)
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
    ]


def reference_groups() -> list[dict[str, Any]]:
    """The rules as they were before the snapshots: the raw reference ratios, in the old
    layout (windows up to 6h every 15 s, 1d and longer every minute), under their own names."""
    (group,) = yaml.safe_load(REFERENCE_RULES.read_text())["groups"]
    short: list[dict[str, Any]] = []
    long: list[dict[str, Any]] = []
    for rule in group["rules"]:
        window = re.search(r"rate(\d+[mhd])$", rule["record"])
        assert window, rule["record"]
        (long if seconds(window[1]) >= DAY else short).append(rule)
    return [
        {"name": "reference-ratios", "rules": short},
        {"name": "reference-ratios-long", "interval": "1m", "rules": long},
    ]


def write_rules(
    directory: Path, intervals: dict[str, str], extra: list[dict[str, Any]] | None = None
) -> dict[str, str]:
    """The shipped rule files in `directory`, with group intervals overridden where asked;
    returns every group's interval as run."""
    directory.mkdir(parents=True, exist_ok=True)
    run: dict[str, str] = {}
    files: dict[str, list[dict[str, Any]]] = {}
    for filename, group in shipped_groups():
        files.setdefault(filename, []).append(group)
    if extra:
        files["reference.yml"] = extra
    for filename, groups in files.items():
        for group in groups:
            if group["name"] in intervals:
                group["interval"] = intervals[group["name"]]
            elif "*" in intervals:
                group["interval"] = intervals["*"]
            run[group["name"]] = group.get("interval", "15s")
        (directory / filename).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return run


# ------------------------------------------------------------------------------------------------
# Backfill


# promtool's block length for --max-block-duration=24h (the largest 2h x 3^k within it), and
# the alignment of its blocks: one file per block, so that no two backfilled blocks overlap.
BLOCK = 18 * 3600


async def backfill(history: synthetic.History, data: Path, work: Path, log: Any) -> dict[str, Any]:
    """The history through promtool into `data`, one block at a time, the next one written
    while promtool reads the last: two processes on two cores. The text goes to /dev/shm where
    there is one (promtool maps its input whole; the text need not touch the disk)."""
    started = time.monotonic()
    promtool = shutil.which("promtool") or "promtool"
    first = min(history.begin, history.detail_begin)
    spans = list(range(first - first % BLOCK, history.end, BLOCK))
    shm = Path("/dev/shm")
    text_dir = Path(tempfile.mkdtemp(prefix="sla-bench-", dir=shm if shm.is_dir() else work))
    running: tuple[int, subprocess.Popen[bytes], Path, Path] | None = None
    written = 0

    def finish(entry: tuple[int, subprocess.Popen[bytes], Path, Path]) -> None:
        span, proc, log_path, text = entry
        code = proc.wait()
        text.unlink()
        if code != 0:
            raise RuntimeError(f"promtool failed on {span}: {log_path.read_text()[-2000:]}")

    try:
        for n, span in enumerate(spans, 1):
            text = text_dir / f"{span}.om"
            size = await asyncio.to_thread(_write, history, span, text)
            written += size
            if running:  # one promtool at a time, and one block being written meanwhile
                await asyncio.to_thread(finish, running)
            log_path = work / f"promtool-{span}.log"
            with log_path.open("wb") as out:
                proc = subprocess.Popen(
                    [
                        promtool,
                        "tsdb",
                        "create-blocks-from",
                        "openmetrics",
                        "--max-block-duration=24h",
                        str(text),
                        str(data),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            running = (span, proc, log_path, text)
            log(f"rules: backfill block {n}/{len(spans)} ({size / 2**30:.2f} GiB of text)")
        if running:
            await asyncio.to_thread(finish, running)
    finally:
        shutil.rmtree(text_dir, ignore_errors=True)
    blocks = [p for p in data.iterdir() if (p / "meta.json").exists()]
    samples = sum(json.loads((p / "meta.json").read_text())["stats"]["numSamples"] for p in blocks)
    return {
        "seconds": time.monotonic() - started,
        "text_bytes": written,
        "blocks": len(blocks),
        "samples": samples,
    }


def _write(history: synthetic.History, span: int, path: Path) -> int:
    size = 0
    with path.open("w") as out:
        for piece in synthetic.openmetrics(history, span, span + BLOCK):
            out.write(piece)
            size += len(piece)
    return size


# ------------------------------------------------------------------------------------------------
# Prometheus


@dataclass
class Prometheus:
    """Debian's Prometheus on the shipped configuration, scraping the synthetic target."""

    work: Path
    target: str
    rules_dir: Path
    interval: str  # scrape and evaluation
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data(self) -> Path:
        return self.work / "data"

    def start(self) -> None:
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config["global"].update(
            scrape_interval=self.interval,
            evaluation_interval=self.interval,
            scrape_timeout=self.interval if seconds(self.interval) < 10 else "10s",
        )
        config["rule_files"] = [str(self.rules_dir / "*.yml")]
        config.pop("alerting", None)
        (job,) = config["scrape_configs"]
        job["static_configs"] = [{"targets": [self.target], "labels": {"location": LOCATION}}]
        path = self.work / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.data.mkdir(parents=True, exist_ok=True)
        self.proc = Proc(
            "prometheus",
            [
                shutil.which("prometheus") or "prometheus",
                f"--config.file={path}",
                f"--storage.tsdb.path={self.data}",
                "--storage.tsdb.retention.time=400d",  # as run.sh starts it
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            self.work,
        )
        self.proc.wait_port(self.port, timeout=120)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=60)


async def api(session: aiohttp.ClientSession, url: str, path: str, **params: str) -> Any:
    return (await timed_api(session, url, path, **params))[1]


async def timed_api(
    session: aiohttp.ClientSession, url: str, path: str, **params: str
) -> tuple[float, Any]:
    """(seconds from the request to the last byte of the answer, the answer's data): the time
    Prometheus takes to answer, not the time this client takes to parse it."""
    began = time.monotonic()
    async with session.get(f"{url}{path}", params=params) as response:
        raw = await response.read()
    seconds = time.monotonic() - began
    body = json.loads(raw)
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {params}: {body.get('error') or body}")
    return seconds, body["data"]


async def scalar(session: aiohttp.ClientSession, url: str, query: str) -> float | None:
    result = (await api(session, url, "/api/v1/query", query=query))["result"]
    return float(result[0]["value"][1]) if result else None


async def own(session: aiohttp.ClientSession, url: str, name: str) -> float | None:
    """A metric of Prometheus itself, from its /metrics (the bench does not scrape it)."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else None


async def wait_for(
    check: Callable[[], Any], what: str, timeout: float, log: Any, every: float = 2.0
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = await check()
        except (TimeoutError, aiohttp.ClientError, RuntimeError):
            result = None
        if result:
            return result
        await asyncio.sleep(every)
    raise TimeoutError(f"rules: gave up after {timeout:.0f} s waiting for {what}")


async def settle(
    session: aiohttp.ClientSession, prom: Prometheus, log: Any, timeout: float, quick: bool
) -> None:
    """Wait until the backfilled blocks are loaded and compacted: compaction starts a minute
    after Prometheus does, and its blocks count stops changing once it is done."""

    async def ready() -> bool:
        async with session.get(f"{prom.url}/-/ready") as response:
            return response.status == 200

    await wait_for(ready, "Prometheus to be ready", timeout, log)
    if quick:  # a smoke run: its two small blocks are not worth waiting for compaction
        await asyncio.sleep(3)
        return
    quiet_since, last = time.monotonic(), None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = (
            await own(session, prom.url, "prometheus_tsdb_compactions_total"),
            await own(session, prom.url, "prometheus_tsdb_blocks_loaded"),
        )
        if state != last:
            last, quiet_since = state, time.monotonic()
        # The first compaction cycle runs a minute after the start, and one a minute after.
        elif time.monotonic() - quiet_since > 130:
            log(f"rules: {state[1]:.0f} blocks loaded, compaction done")
            return
        await asyncio.sleep(5)
    raise TimeoutError("rules: compaction did not settle")


async def evaluations(
    session: aiohttp.ClientSession,
    prom: Prometheus,
    minimum: dict[str, int],
    timeout: float,
    log: Any,
) -> dict[str, Any]:
    """Each group's evaluation times from now until every group has run `minimum` times (by
    name, "*" for the others); the slowest rule of each."""
    seen: dict[str, dict[str, float]] = {}
    slowest: dict[str, tuple[float, str]] = {}
    per_rule: dict[str, dict[str, list[float]]] = {}
    health: dict[str, str] = {}
    started = time.time()
    deadline = time.monotonic() + timeout
    while True:
        groups = (await api(session, prom.url, "/api/v1/rules"))["groups"]
        for group in groups:
            last = group.get("lastEvaluation", "")
            stamp = _rfc3339(last)
            if stamp and stamp > started and last not in seen.get(group["name"], {}):
                seen.setdefault(group["name"], {})[last] = group["evaluationTime"]
                for rule in group["rules"]:
                    per_rule.setdefault(group["name"], {}).setdefault(rule["name"], []).append(
                        rule["evaluationTime"]
                    )
                    previous = slowest.get(group["name"], (0.0, ""))
                    if rule["evaluationTime"] > previous[0]:
                        slowest[group["name"]] = (rule["evaluationTime"], rule["name"])
                    if rule["health"] != "ok":
                        health[rule["name"]] = rule.get("lastError", rule["health"])
        names = [g["name"] for g in groups]
        if all(len(seen.get(n, {})) >= minimum.get(n, minimum["*"]) for n in names):
            break
        if time.monotonic() > deadline:
            counts = {n: len(seen.get(n, {})) for n in names}
            log(f"rules: stopped waiting for evaluations, seen {counts}")
            break
        await asyncio.sleep(1)
    return {
        name: {
            "interval_seconds": next(g["interval"] for g in groups if g["name"] == name),
            "evaluations": len(times),
            "seconds": statistics.median(times.values()),
            "seconds_max": max(times.values()),
            "slowest_rule": slowest.get(name, (0.0, ""))[1],
            "slowest_rule_seconds": slowest.get(name, (0.0, ""))[0],
            # Rules of one name (the four SLAErrorBudgetBurn, say) add up.
            "rules": {
                rule: statistics.median(values) * len(values) / len(times)
                for rule, values in per_rule.get(name, {}).items()
            },
        }
        for name, times in seen.items()
    } | ({"_unhealthy": health} if health else {})


def _rfc3339(text: str) -> float:
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?", text)
    if not match or text.startswith("0001"):
        return 0.0
    whole = time.mktime(time.strptime(match[1], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    return whole + float(match[2] or 0)


# ------------------------------------------------------------------------------------------------
# Dashboards


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str
    instant: bool
    all_services: bool  # reads every service (scales with their number), or one
    min_step: int = 0  # the panel's min interval, in seconds


def dashboard_queries(name: str) -> list[Query]:
    """Every panel query of a committed dashboard as Grafana sends it: variables at their
    defaults ("All" is `.*`), a repeated row's panels for one service (svc-00000), and a panel
    that reads `$window` once more at its longest choice, 1d."""
    board = json.loads((DASHBOARDS / f"{name}.json").read_text())
    rows = sorted(
        (p["gridPos"]["y"], bool(p.get("repeat")))
        for p in board["panels"]
        if p.get("type") == "row"
    )
    queries = []
    for panel in _panels(board["panels"]):
        y = panel["gridPos"]["y"]
        repeated = next((r for row_y, r in reversed(rows) if row_y <= y), False)
        one = name == "sla-service" or repeated
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr:
                continue
            expr = expr.replace("$service", INSPECTED if one else ".*").replace("$location", ".*")
            windows = ("1h", "1d") if "$window" in expr else ("",)
            interval = str(panel.get("interval") or "")
            for window in windows:
                queries.append(
                    Query(
                        name,
                        panel["title"]
                        + (f" ($window={window})" if window != "1h" and window else ""),
                        target.get("refId", ""),
                        expr.replace("$window", window),
                        bool(target.get("instant")) and not target.get("range"),
                        not one,
                        seconds(interval.replace("$window", window or "1h")),
                    )
                )
    return queries


def _panels(panels: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for panel in panels:
        if panel.get("type") == "row":
            yield from _panels(panel.get("panels", []))
        else:
            yield panel


def variable_queries(name: str) -> list[tuple[str, str, str]]:
    """(variable, label, match[] selector) of every `label_values(...)` variable."""
    board = json.loads((DASHBOARDS / f"{name}.json").read_text())
    out = []
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text.strip())
        if match:
            selector = match[1].replace("$service", INSPECTED).replace("$location", ".*")
            out.append((variable["name"], match[2], selector))
    return out


def step_for(span: float) -> int:
    """Grafana's interval for a panel about 1,000 pixels wide, never under the scrape."""
    return max(15, math.ceil(span / 1000 / 15) * 15)


async def time_query(
    session: aiohttp.ClientSession, url: str, query: Query, end: float, span: float, runs: int
) -> dict[str, Any]:
    step = max(step_for(span), query.min_step)
    expr = query.expr.replace("$__rate_interval", f"{max(4 * 15, step + 15)}s").replace(
        "$__interval", f"{step}s"
    )
    if query.instant:
        path, params = "/api/v1/query", {"query": expr, "time": f"{end:.3f}"}
    else:
        params = {
            "query": expr,
            "start": f"{end - span:.3f}",
            "end": f"{end:.3f}",
            "step": str(step),
        }
        path = "/api/v1/query_range"
    walls, evals, samples, series = [], [], None, 0
    for _ in range(runs):
        wall, data = await timed_api(session, url, path, **params, stats="all")
        walls.append(wall)
        stats = data.get("stats", {})
        evals.append(stats.get("timings", {}).get("evalTotalTime", walls[-1]))
        samples = stats.get("samples", {}).get("totalQueryableSamples", samples)
        series = len(data["result"])
    return {
        "dashboard": query.dashboard,
        "panel": query.panel,
        "ref": query.ref,
        "instant": query.instant,
        "all_services": query.all_services,
        "step_seconds": None if query.instant else step,
        "seconds": statistics.median(walls),
        "eval_seconds": statistics.median(evals),
        "samples": samples,
        "series": series,
    }


async def time_variables(
    session: aiohttp.ClientSession, url: str, name: str, end: float, span: float
) -> list[dict[str, Any]]:
    out = []
    for variable, label, selector in variable_queries(name):
        began = time.monotonic()
        values = await api(
            session,
            url,
            f"/api/v1/label/{label}/values",
            **{"match[]": selector, "start": f"{end - span:.0f}", "end": f"{end:.0f}"},
        )
        out.append(
            {
                "dashboard": name,
                "variable": variable,
                "seconds": time.monotonic() - began,
                "values": len(values),
            }
        )
    return out


# ------------------------------------------------------------------------------------------------
# Series and memory


async def idle_rss(session: aiohttp.ClientSession, work: Path, log: Any) -> int:
    """The RSS of a Prometheus with nothing to scrape, no rules and no history: what it costs
    before any service does."""
    idle = work / "idle"
    idle.mkdir(parents=True, exist_ok=True)
    (idle / "prometheus.yml").write_text("global: {scrape_interval: 15s}\n")
    port = free_port()
    proc = Proc(
        "prometheus-idle",
        [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={idle / 'prometheus.yml'}",
            f"--storage.tsdb.path={idle / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        idle,
    )
    try:
        proc.wait_port(port, timeout=60)
        await asyncio.sleep(10)
        return proc.memory()["rss"]
    finally:
        proc.stop()


async def series_and_memory(
    session: aiohttp.ClientSession, prom: Prometheus, services: int, idle: int
) -> dict[str, Any]:
    head = await own(session, prom.url, "prometheus_tsdb_head_series") or 0
    scraped = await scalar(session, prom.url, 'scrape_samples_post_metric_relabeling{job="sla"}')
    recorded = await scalar(session, prom.url, 'count({__name__=~".+:.+"})') or 0
    by_level = (
        await api(
            session,
            prom.url,
            "/api/v1/query",
            query=(
                'count by (level) (label_replace({__name__=~".+:.+"}, "level", "$1", '
                '"__name__", "([^:]+):.*"))'
            ),
        )
    )["result"]
    heap = await own(session, prom.url, "go_memstats_heap_inuse_bytes") or 0
    assert prom.proc is not None
    memory = prom.proc.memory()
    return {
        "head_series": head,
        "scraped_series": scraped,
        "recorded_series": recorded,
        "recorded_by_level": {r["metric"].get("level", ""): float(r["value"][1]) for r in by_level},
        "series_per_service": head / services,
        "scraped_per_service": (scraped or 0) / services,
        "recorded_per_service": recorded / services,
        "rss": memory["rss"],
        "rss_peak": memory["rss_peak"],
        "heap_inuse": heap,
        "rss_idle": idle,
        "rss_per_service": (memory["rss"] - idle) / services,
        "rss_per_series": (memory["rss"] - idle) / head if head else None,
    }


# ------------------------------------------------------------------------------------------------
# The section


@dataclass
class Phase:
    """One Prometheus on one size of history."""

    name: str
    services: int
    days: float
    raw_all: bool  # the counters at 15 s over the whole history (what the old rules read)
    extra_groups: list[dict[str, Any]] | None = None


async def run_phase(
    phase: Phase,
    work: Path,
    session: aiohttp.ClientSession,
    quick: bool,
    log: Any,
    timeout: float,
    panels: bool,
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    target_port = free_port()
    interval = "2s" if quick else "15s"
    # Every group at its shipped interval: they run at once and share the CPU, and more often
    # than shipped (to have evaluations sooner) they made each other slower. A smoke run
    # evaluates everything every 2 s.
    intervals = {"*": "2s"} if quick else {}
    ran = write_rules(work / "rules", intervals, phase.extra_groups)
    # The counters began before the history: every service has probed since `start`.
    now = int(time.time())
    end = now - now % synthetic.SNAPSHOT  # the backfill ends on a snapshot, before the live data
    begin = end - int(phase.days * DAY)
    model = synthetic.Model(phase.services, begin - 3600)
    target = Proc(
        f"synthetic-{phase.name}",
        [
            sys.executable,
            "-m",
            "bench.synthetic",
            f"--services={phase.services}",
            f"--port={target_port}",
            f"--start={model.start}",
        ],
        work,
    )
    prom = Prometheus(work, f"127.0.0.1:{target_port}", work / "rules", interval)
    result: dict[str, Any] = {
        "services": phase.services,
        "days": phase.days,
        "raw_counters_all_days": phase.raw_all,
        "group_intervals_run": ran,
    }
    try:
        target.wait_port(target_port, timeout=120)
        history = synthetic.History(
            model=model,
            instance=prom_target(target_port),
            location=LOCATION,
            begin=begin,
            end=end,
            dense=6 * 3600,
            sparse=3 * DAY + 3600,
            detail=1 if panels else 0,
            # 30 days of the timed service, but a smoke run keeps to its own history.
            detail_begin=begin if quick else end - TARGET_DAYS * DAY,
            raw_all=phase.raw_all,
        )
        log(f"rules[{phase.name}]: backfilling {phase.services} services x {phase.days:g} days")
        result["backfill"] = await backfill(history, prom.data, work, log)
        # The live scrape continues the history after the time the backfill took: the short
        # windows see that gap for an hour, which changes what they read by nothing worth a
        # figure, and no long window's cost.
        prom.start()
        await settle(session, prom, log, 20 if quick else timeout, quick)
        log(f"rules[{phase.name}]: measuring rule groups")
        cpu0, wall0 = prom.proc.cpu() if prom.proc else 0.0, time.monotonic()
        # A 15 s group 4 times, one every minute or two twice, the 5-minute group once.
        minimum = {"*": 3} if quick else {"*": 4}
        for name, every in ran.items():
            slow = 1 if seconds(every) >= 240 else 2 if seconds(every) >= 60 else minimum["*"]
            minimum.setdefault(name, slow)
        result["groups"] = await evaluations(session, prom, minimum, timeout, log)
        if prom.proc:
            result["prometheus_cpu_share"] = (prom.proc.cpu() - cpu0) / (time.monotonic() - wall0)
        result["series"] = await series_and_memory(
            session, prom, phase.services, await idle_rss(session, work, log)
        )
        if panels:
            log(f"rules[{phase.name}]: timing dashboard queries")
            span = (phase.days if quick else TARGET_DAYS) * DAY
            at = time.time()
            result["panels"] = [
                await time_query(session, prom.url, query, at, span, 1 if quick else 3)
                for board in TIMED_DASHBOARDS
                for query in dashboard_queries(board)
            ]
            result["variables"] = [
                row
                for board in TIMED_DASHBOARDS
                for row in await time_variables(session, prom.url, board, at, span)
            ]
        result["samples_per_service"] = {
            group["name"]: {
                "measured": group_samples(group, phase.days),
                "target": group_samples(group, TARGET_DAYS),
            }
            for group in _groups_run(work / "rules")
        }
        result["target_cpu_share"] = target.cpu() / max(1.0, time.monotonic() - wall0)
    finally:
        prom.stop()
        target.stop()
    return result


def prom_target(port: int) -> str:
    return f"127.0.0.1:{port}"


def _groups_run(directory: Path) -> list[dict[str, Any]]:
    return [
        group
        for path in sorted(directory.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    ]


async def rules(
    work: Path,
    session: aiohttp.ClientSession,
    services: int,
    days: float,
    reference: tuple[int, float] | None,
    quick: bool,
    log: Any,
) -> dict[str, Any]:
    """The section: the shipped rules and dashboards at `services` x `days`, and, at the
    `reference` size, the old shape of the rules beside the new in one Prometheus."""
    timeout = 600 if quick else 3600
    results: dict[str, Any] = {
        "target": {"services": TARGET_SERVICES, "days": TARGET_DAYS},
        "shipped": await run_phase(
            Phase("shipped", services, days, raw_all=False),
            work / "rules-shipped",
            session,
            quick,
            log,
            timeout,
            panels=True,
        ),
    }
    if reference:
        ref_services, ref_days = reference
        results["reference"] = await run_phase(
            Phase(
                "reference", ref_services, ref_days, raw_all=True, extra_groups=reference_groups()
            ),
            work / "rules-reference",
            session,
            quick,
            log,
            timeout,
            panels=False,
        )
    results["judged"] = judge(results)
    return results


def extrapolate(seconds_measured: float, measured: float, target: float) -> float:
    return seconds_measured * (target / measured) if measured else seconds_measured


def judge(results: dict[str, Any]) -> dict[str, Any]:
    """Every group and panel at the target size, extrapolated linearly in samples where the run
    was smaller, against the targets."""
    shipped = results["shipped"]
    n, d = shipped["services"], shipped["days"]
    scale_n = TARGET_SERVICES / n
    groups = {}
    for name, group in shipped["groups"].items():
        if name.startswith("_"):
            continue
        samples = shipped["samples_per_service"].get(name, {"measured": 0, "target": 0})
        # Groups that read no range scale with the services alone (their series).
        factor = scale_n * (samples["target"] / samples["measured"] if samples["measured"] else 1.0)
        at_target = group["seconds"] * factor
        interval = seconds(shipped_interval(name))
        groups[name] = {
            "seconds_at_target": at_target,
            "interval_seconds": interval,
            "share_at_target": at_target / interval,
            "ok": at_target / interval <= GROUP_SHARE,
            "slowest_rule_at_target": group["slowest_rule_seconds"] * factor,
            "rule_ok": group["slowest_rule_seconds"] * factor < QUERY_TIMEOUT / 4,
            "factor": factor,
        }
    panels = []
    for row in shipped.get("panels", []):
        # A panel of one service is timed on 30 days of its history whatever the size of the
        # run; a panel of all services is an instant query (none reads a range of them all).
        factor = scale_n if row["all_services"] else 1.0
        if row["all_services"] and not row["instant"]:
            factor *= TARGET_DAYS / d
        at_target = row["seconds"] * factor
        panels.append({**row, "seconds_at_target": at_target, "ok": at_target <= PANEL_SECONDS})
    comparison = None
    if "reference" in results:
        comparison = compare(results["reference"])
    return {
        "reference": comparison,
        "extrapolated": n != TARGET_SERVICES or d != TARGET_DAYS,
        "groups": groups,
        "panels": panels,
        "series_per_service": shipped["series"]["series_per_service"],
        "rss_at_target": shipped["series"]["rss_idle"]
        + shipped["series"]["rss_per_service"] * TARGET_SERVICES,
    }


def compare(reference: dict[str, Any]) -> dict[str, Any]:
    """The window rules old and new, in one Prometheus on the same history: seconds of
    evaluation per minute at their shipped intervals, and samples read per service."""
    groups = reference["groups"]
    samples = reference["samples_per_service"]
    old = ("reference-ratios", "reference-ratios-long")
    new = ("sla-probe-ratios", LONG_GROUP)
    intervals = {"reference-ratios": 15, "reference-ratios-long": 60}

    def per_minute(names: tuple[str, ...]) -> float:
        total = 0.0
        for name in names:
            interval = intervals.get(name) or seconds(shipped_interval(name))
            total += groups[name]["seconds"] * 60 / interval
        return total

    old_minute, new_minute = per_minute(old), per_minute(new)
    return {
        "services": reference["services"],
        "days": reference["days"],
        "groups": {name: groups[name] for name in (*old, *new) if name in groups},
        "samples_per_service": {
            name: samples[name]["measured"] for name in (*old, *new) if name in samples
        },
        "old_seconds_per_minute": old_minute,
        "new_seconds_per_minute": new_minute,
        "ratio": old_minute / new_minute if new_minute else None,
        "long_ratio": (
            groups["reference-ratios-long"]["seconds"] / groups[LONG_GROUP]["seconds"]
            if groups.get(LONG_GROUP, {}).get("seconds") and "reference-ratios-long" in groups
            else None
        ),
    }


def shipped_interval(group: str) -> str:
    for _, g in shipped_groups():
        if g["name"] == group:
            return str(g.get("interval", "15s"))
    return "15s"
