"""The measurements: CPU per probe, latency error, one process at scale, and shards.

Every figure comes from the processes themselves: CPU seconds from /proc/<pid>/stat (user +
system, all threads), memory from /proc/<pid>/status, probe durations as each exporter reports
them (blackbox's probe_duration_seconds, our ProbeResult.duration, which is what
sla_probe_duration_seconds shows), schedule lags from our scheduler.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .configs import blackbox_target, sla_file
from .drive import Blackbox, BlackboxLoad, Ours, RawLoad, Scrape
from .history import write as write_history
from .targets import Addresses, Targets


@dataclass
class Bench:
    """What every scenario needs: where to work, the targets, the blackbox binary, timings."""

    work: Path
    at: Addresses
    targets: Targets
    blackbox_binary: str
    blackbox_config: Path
    quick: bool
    session: aiohttp.ClientSession
    log: Any  # print-like progress callback
    event_loop: str  # our exporter's --event-loop

    def ours(self, config: Path, extra: Sequence[str] = (), name: str = "ours") -> Ours:
        """Our exporter on `config`, on the bench's event loop."""
        return Ours(self.work, config, [f"--event-loop={self.event_loop}", *extra], name)

    def seconds(self, full: float, quick: float) -> float:
        return quick if self.quick else full


def quantiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p99, max and mean of `values` (None when there are none)."""
    if not values:
        return {"p50": None, "p99": None, "max": None, "mean": None, "n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "p50": at(0.50),
        "p99": at(0.99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
        "n": len(ordered),
    }


@dataclass
class Measured:
    """One measured window of our exporters (one, or the shards of one file)."""

    wall_seconds: float
    targets_cpu: dict[str, float]  # CPU seconds of each target in the window
    scrapes: list[Scrape]
    cpu_seconds: list[float]  # of each exporter, in the order given
    samples: list[dict[str, Any]]  # what each one's /-/bench/samples reported for the window
    memory: list[dict[str, int]]


async def _measure(
    bench: Bench, exporters: Sequence[Ours], during: Awaitable[list[Scrape]], names: bool = False
) -> Measured:
    """Measure `exporters` while `during` (a coroutine not yet started, which scrapes them)
    runs: their CPU and samples, the targets' CPU. `names`: samples say which services ran."""
    for ours in exporters:
        await ours.samples(bench.session)  # what came before the window is not measured
    targets0 = bench.targets.cpu()
    cpu0, t0 = [ours.proc.cpu() for ours in exporters], time.monotonic()
    scrapes = await during
    cpu1, t1 = [ours.proc.cpu() for ours in exporters], time.monotonic()
    targets1 = bench.targets.cpu()
    return Measured(
        wall_seconds=t1 - t0,
        targets_cpu={k: targets1[k] - targets0[k] for k in targets1},
        scrapes=scrapes,
        cpu_seconds=[b - a for a, b in zip(cpu0, cpu1, strict=True)],
        samples=[await ours.samples(bench.session, names) for ours in exporters],
        memory=[ours.proc.memory() for ours in exporters],
    )


async def _scrape_every_15s(bench: Bench, exporters: Sequence[Ours], window: float) -> list[Scrape]:
    """Scrape every exporter's /metrics as Prometheus does, every 15 s (or twice in a shorter
    window), for `window` seconds."""
    every = min(15.0, window / 2)
    scrapes: list[Scrape] = []
    for _ in range(int(window / every)):
        begun = time.monotonic()
        for exporter in exporters:
            scrapes.append(await exporter.scrape(bench.session))
        await asyncio.sleep(every - (time.monotonic() - begun))
    return scrapes


# --------------------------------------------------------------------------------------------
# CPU per probe


async def _ours_window(
    bench: Bench, config: Path, warmup: float, window: float, scrapes: int = 1
) -> dict[str, Any]:
    """Start our exporter on `config`, let it settle, then measure one window."""
    ours = bench.ours(config)

    async def scraped() -> list[Scrape]:
        # Prometheus scrapes /metrics every 15 s; the window holds its share of scrapes.
        found: list[Scrape] = []
        for _ in range(scrapes):
            await asyncio.sleep(window / scrapes / 2)
            found.append(await ours.scrape(bench.session))
            await asyncio.sleep(window / scrapes / 2)
        return found

    try:
        await asyncio.to_thread(ours.wait_ready)
        await asyncio.sleep(warmup)
        measured = await _measure(bench, [ours], scraped())
    finally:
        ours.stop()
    samples = measured.samples[0]
    durations: list[float] = samples["durations"]
    return {
        "cpu_seconds": measured.cpu_seconds[0],
        "wall_seconds": measured.wall_seconds,
        "probes": len(durations),
        "failures": samples["failures"],
        "durations": durations,
        "lags": samples["lags"],
        "memory": measured.memory[0],
        "scrapes": [vars(s) for s in measured.scrapes],
        "targets_cpu": measured.targets_cpu,
    }


async def _blackbox_window(
    bench: Bench, kind: str, count: int, interval: float, warmup: float, window: float
) -> dict[str, Any]:
    """Start blackbox_exporter, drive it like Prometheus, then measure one window."""
    blackbox = Blackbox(bench.work, bench.blackbox_config, bench.blackbox_binary)
    targets = [blackbox_target(kind, i, bench.at) for i in range(count)]
    load = BlackboxLoad(blackbox, targets, interval)
    try:
        await asyncio.to_thread(blackbox.wait_ready)
        await load.start()
        await asyncio.sleep(warmup)
        load.take()
        targets0 = bench.targets.cpu()
        cpu0, t0 = blackbox.proc.cpu(), time.monotonic()
        await asyncio.sleep(window)
        cpu1, t1 = blackbox.proc.cpu(), time.monotonic()
        targets1 = bench.targets.cpu()
        tally = load.take()
        memory = blackbox.proc.memory()
    finally:
        await load.stop()
        blackbox.stop()
    return {
        "cpu_seconds": cpu1 - cpu0,
        "wall_seconds": t1 - t0,
        "probes": tally.probes,
        "failures": tally.failed,
        "durations": tally.durations,
        "memory": memory,
        "targets_cpu": {k: targets1[k] - targets0[k] for k in targets1},
    }


def _per_1000(run: dict[str, Any]) -> float | None:
    return 1000 * run["cpu_seconds"] / run["probes"] if run["probes"] else None


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    """A run without its raw samples, plus CPU per 1000 probes."""
    out = {k: v for k, v in run.items() if k not in ("durations", "lags")}
    out["cpu_seconds_per_1000"] = _per_1000(run)
    return out


async def cpu(bench: Bench, kinds: Sequence[str], rounds: int, rate: int) -> dict[str, Any]:
    """CPU seconds per 1000 probes, ours against blackbox, alternating, `rounds` pairs.

    `rate` services on a 1 s interval (so `rate` probes a second) for ours, Prometheus scraping
    its /metrics once per window; the same targets scraped through blackbox once a second each,
    as Prometheus would. Each pair gives a ratio; the median ratio is the figure, so that a
    machine slowing down for a while (other virtual machines on the host) moves both sides.
    """
    warmup = bench.seconds(4, 1)
    window = bench.seconds(12, 2)
    out: dict[str, Any] = {}
    for kind in kinds:
        config = bench.work / f"cpu-{kind}.yml"
        config.write_text(sla_file(kind, rate, "1s", bench.at))
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "blackbox": []}
        for r in range(rounds):
            for who in ("ours", "blackbox") if r % 2 == 0 else ("blackbox", "ours"):
                if who == "ours":
                    run = await _ours_window(bench, config, warmup, window)
                else:
                    run = await _blackbox_window(bench, kind, rate, 1.0, warmup, window)
                runs[who].append(_summary(run))
                bench.log(
                    f"cpu {kind} round {r + 1}/{rounds} {who}: {run['probes']} probes, "
                    f"{run['failures']} failed, {run['cpu_seconds']:.2f} s CPU"
                )
        ratios = [
            o["cpu_seconds_per_1000"] / b["cpu_seconds_per_1000"]
            for o, b in zip(runs["ours"], runs["blackbox"], strict=True)
            if o["cpu_seconds_per_1000"] and b["cpu_seconds_per_1000"]
        ]
        targets = [r["targets_cpu"] for who in runs.values() for r in who]
        out[kind] = {
            "rate_per_second": rate,
            "window_seconds": window,
            "runs": runs,
            "ours": statistics.median(r["cpu_seconds_per_1000"] for r in runs["ours"]),
            "blackbox": statistics.median(r["cpu_seconds_per_1000"] for r in runs["blackbox"]),
            "ratio": statistics.median(ratios) if ratios else None,
            "ratios": ratios,
            "ours_rss": max(r["memory"]["rss_peak"] for r in runs["ours"]),
            "blackbox_rss": max(r["memory"]["rss_peak"] for r in runs["blackbox"]),
            "targets_cpu_share": {
                name: max(t[name] for t in targets) / window for name in targets[0]
            },
        }
    return out


# --------------------------------------------------------------------------------------------
# Latency error against the 200 ms target


async def latency(bench: Bench, concurrencies: Sequence[int], rounds: int) -> dict[str, Any]:
    """|reported duration - 200 ms| at 1 and 20 probes in flight, ours and blackbox.

    A probe of the delay target lasts 200 ms, so 5 services a second keep one probe in flight
    and 100 keep twenty; both exporters get the same services, once a second each.
    """
    from .targets import DELAY

    warmup = bench.seconds(3, 1)
    out: dict[str, Any] = {}
    for concurrency in concurrencies:
        count = 5 * concurrency
        window = bench.seconds(30 if concurrency == 1 else 15, 2)
        config = bench.work / f"latency-{concurrency}.yml"
        config.write_text(sla_file("delay", count, "1s", bench.at))
        errors: dict[str, list[float]] = {"ours": [], "blackbox": [], "floor": []}
        signed: dict[str, list[float]] = {"ours": [], "blackbox": [], "floor": []}
        failures = Counter[str]()
        for r in range(rounds):
            order = ["ours", "blackbox", "floor"]
            if r % 2:
                order.reverse()
            for who in order:
                if who == "ours":
                    run = await _ours_window(bench, config, warmup, window, scrapes=1)
                elif who == "blackbox":
                    run = await _blackbox_window(bench, "delay", count, 1.0, warmup, window)
                else:
                    run = await _floor_window(bench, count, warmup, window)
                failures[who] += run["failures"]
                for seconds in run["durations"]:
                    signed[who].append((seconds - DELAY) * 1000)
                    errors[who].append(abs(seconds - DELAY) * 1000)
                bench.log(
                    f"latency c={concurrency} round {r + 1}/{rounds} {who}: "
                    f"{len(run['durations'])} probes, {run['failures']} failed"
                )
        out[str(concurrency)] = {
            who: {
                "error_ms": quantiles(errors[who]),
                "signed_error_ms_mean": statistics.fmean(signed[who]) if signed[who] else None,
                "failures": failures[who],
            }
            for who in ("ours", "blackbox", "floor")
        }
    return out


async def _floor_window(bench: Bench, count: int, warmup: float, window: float) -> dict[str, Any]:
    load = RawLoad(bench.at.delay, count, 1.0)
    try:
        await load.start()
        await asyncio.sleep(warmup)
        load.take()
        await asyncio.sleep(window)
        durations = load.take()
    finally:
        await load.stop()
    return {"durations": durations, "failures": 0}


# --------------------------------------------------------------------------------------------
# One process at scale


async def scale(
    bench: Bench, counts: Sequence[int], interval: int, history: int = 0
) -> dict[str, Any]:
    """Our exporter alone with `count` HTTP services on `interval`: lag, /metrics, CPU, RSS;
    with `history`, started on a ledger of that many months (bench/history.py)."""
    out: dict[str, Any] = {}
    for count in counts:
        config = bench.work / f"scale-{count}.yml"
        config.write_text(sla_file("http", count, f"{interval}s", bench.at))
        ledger_bytes = 0
        if history:
            names = [f"http-{i:06d}" for i in range(count)]
            ledger = Ours.ledger_for(bench.work, f"scale-{count}")
            ledger_bytes = await asyncio.to_thread(write_history, ledger, names, history)
            bench.log(f"scale {count}: a ledger of {history} months, {ledger_bytes >> 20} MiB")
        ours = bench.ours(config, name=f"scale-{count}")
        window = interval * (1 if bench.quick else 2)
        try:
            started = time.monotonic()
            await asyncio.to_thread(ours.wait_ready)
            ready = time.monotonic() - started
            # One whole interval for start-up (first runs spread over it), then one measured;
            # scraped throughout, as Prometheus does from the start: the first scrape after a
            # start counts every month afresh (every service has results it has not seen), the
            # next ones only what changed since the last. The first is reported on its own.
            settle = interval + bench.seconds(10, 1)
            begun = time.monotonic()
            warmup = await _scrape_every_15s(bench, [ours], settle)
            await asyncio.sleep(max(0.0, settle - (time.monotonic() - begun)))
            measured = await _measure(bench, [ours], _scrape_every_15s(bench, [ours], window))
        finally:
            ours.stop()
        samples, memory, wall = measured.samples[0], measured.memory[0], measured.wall_seconds
        cpu = measured.cpu_seconds[0]
        scrapes = measured.scrapes
        lags: list[float] = samples["lags"]
        durations: list[float] = samples["durations"]
        expected = count * samples["seconds"] / interval  # the samples' own window
        out[str(count)] = {
            "services": count,
            "interval_seconds": interval,
            "history_months": history,
            "ledger_bytes": ledger_bytes,
            "startup_seconds": ready,
            "window_seconds": wall,
            "probes": len(durations),
            "probes_expected": expected,
            "failures": samples["failures"],
            "missed_runs": samples["missed"],
            "lag_seconds": quantiles(lags),
            "render_seconds": quantiles([s.seconds for s in scrapes]),
            "first_scrape_seconds": warmup[0].seconds if warmup else None,
            "metrics_bytes": max(s.text_bytes for s in scrapes),
            "metrics_gzip_bytes": max(s.wire_bytes for s in scrapes),
            "month_series": max(s.month_series for s in scrapes),
            "cpu_seconds": cpu,
            "cpu_share_of_one_core": cpu / wall,
            "cpu_seconds_per_1000": 1000 * cpu / len(durations) if durations else None,
            "memory": memory,
            "targets_cpu_share": {k: v / wall for k, v in measured.targets_cpu.items()},
        }
        bench.log(
            f"scale {count}: p99 lag {out[str(count)]['lag_seconds']['p99']}, "
            f"CPU {out[str(count)]['cpu_share_of_one_core']:.1%}, RSS {memory['rss'] >> 20} MiB"
        )
    return out


# --------------------------------------------------------------------------------------------
# Shards


async def shards(bench: Bench, count: int, per_shard: int, interval: int) -> dict[str, Any]:
    """`count` exporters, each started with --shard k/count on one SLA file of
    count * per_shard services: every service probed once per interval, by one shard."""
    total = count * per_shard
    config = bench.work / f"shards-{total}.yml"
    config.write_text(sla_file("http", total, f"{interval}s", bench.at))
    procs = [
        bench.ours(config, [f"--shard={k}/{count}"], f"shard-{k}-of-{count}")
        for k in range(1, count + 1)
    ]
    try:
        started = time.monotonic()
        for shard in procs:
            await asyncio.to_thread(shard.wait_ready, 900.0)
        ready = time.monotonic() - started
        await asyncio.sleep(interval + bench.seconds(10, 1))
        # Prometheus scrapes each shard
        during = _scrape_every_15s(bench, procs, float(interval))
        measured = await _measure(bench, procs, during, names=True)
    finally:
        for shard in procs:
            shard.stop()
    wall, samples, memory = measured.wall_seconds, measured.samples, measured.memory
    owners: Counter[str] = Counter()
    probes_per_service: Counter[int] = Counter()
    for sample in samples:
        probed: dict[str, int] = sample["probed"]
        owners.update(probed.keys())
        probes_per_service.update(probed.values())
    lags = [lag for sample in samples for lag in sample["lags"]]
    probes = sum(len(sample["durations"]) for sample in samples)
    # Each shard's samples cover its own window (read one shard after the other, a little
    # longer than t0..t1): its rate is its probes over its window.
    per_minute = sum(60 * len(s["durations"]) / s["seconds"] for s in samples)
    gaps = [s["shortest_gap"] for s in samples if s["shortest_gap"] is not None]
    result = {
        "shards": count,
        "services": total,
        "interval_seconds": interval,
        "startup_seconds": ready,
        "window_seconds": wall,
        "probes": probes,
        "probes_per_minute": per_minute,
        "sample_window_seconds": [s["seconds"] for s in samples],
        "shortest_gap_seconds": min(gaps) if gaps else None,
        "failures": sum(s["failures"] for s in samples),
        "missed_runs": sum(s["missed"] for s in samples),
        "services_per_shard": [s["services"] for s in samples],
        "services_probed": len(owners),
        "services_probed_by_two_shards": sum(1 for n in owners.values() if n > 1),
        "probes_per_service_in_window": dict(sorted(probes_per_service.items())),
        "lag_seconds": quantiles(lags),
        "lag_p99_per_shard": [quantiles(s["lags"])["p99"] for s in samples],
        "render_seconds_max": max(s.seconds for s in measured.scrapes),
        "cpu_share_per_shard": [cpu / wall for cpu in measured.cpu_seconds],
        "cpu_share_total": sum(measured.cpu_seconds) / wall,
        "targets_cpu_share": {k: cpu / wall for k, cpu in measured.targets_cpu.items()},
        "rss_per_shard": [m["rss"] for m in memory],
        "rss_peak_per_shard": [m["rss_peak"] for m in memory],
    }
    bench.log(
        f"shards {count}x{per_shard}: {result['probes_per_minute']:.0f} probes/min, "
        f"p99 lag {result['lag_seconds']['p99']}"
    )
    return result
