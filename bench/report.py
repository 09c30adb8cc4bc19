"""The table `python -m bench` prints, from the results it also writes as JSON."""

from __future__ import annotations

from typing import Any

MIB = 1 << 20

# The targets of the issue, each checked against the figure it constrains.
# Our CPU per probe / blackbox's, for every probe kind: parity since issue 15 (probes on the
# card's libraries rather than a transport of our own; 0.8 before).
CPU_RATIO = 1.0
LATENCY_MS = 1.0  # latency error at 20 probes in flight
LAG_P99 = 0.100  # seconds, at 10,000 services
RENDER = 0.5  # seconds, /metrics at 10,000 services
RSS = 200 * MIB  # at 10,000 services
CPU_SHARE = 0.25  # of one core, at 10,000 services
PER_MINUTE = 100_000  # probes per minute across shards


QUICK = False  # a smoke run: its figures are too small to judge the targets by


def _mark(ok: bool | None) -> str:
    if QUICK:
        return "(smoke)"
    return "" if ok is None else ("ok" if ok else "MISSED")


def _f(value: float | None, digits: int = 2, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _cpu(results: dict[str, Any]) -> list[str]:
    first = next(iter(results.values()))
    lines = [
        f"CPU seconds per 1000 probes at {first['rate_per_second']} probes/s "
        f"(median of {len(first['ratios'])} alternating pairs of {first['window_seconds']:g} s; "
        "/proc utime+stime of each exporter)",
        f"  {'kind':<6} {'ours':>6} {'blackbox':>9} {'ratio':>6}  {'target':<14}"
        f"{'ratio per pair':<32} RSS ours / blackbox",
    ]
    for kind, row in results.items():
        ratio = row["ratio"]
        pairs = " ".join(f"{r:.2f}" for r in row["ratios"])
        target = f"<= {CPU_RATIO:g} " + _mark(ratio is not None and ratio <= CPU_RATIO)
        lines.append(
            f"  {kind:<6} {_f(row['ours']):>6} {_f(row['blackbox']):>9} {_f(ratio):>6}  "
            f"{target:<14}{pairs:<32} "
            f"{row['ours_rss'] / MIB:.0f} / {row['blackbox_rss'] / MIB:.0f} MiB"
        )
    targets: dict[str, float] = {}
    for row in results.values():
        for name, share in row["targets_cpu_share"].items():
            targets[name] = max(targets.get(name, 0.0), share)
    lines.append(
        "  targets, busiest window: "
        + ", ".join(f"{k} {v:.0%} of a core" for k, v in targets.items())
    )
    return lines


def _latency(results: dict[str, Any]) -> list[str]:
    lines = [
        "Latency error |reported duration - 200 ms| in ms (p50 / p99 / mean, probes)",
        f"  {'in flight':<10} {'ours':<30} {'blackbox':<30} {'floor (bare socket)':<30} target",
    ]
    for concurrency, row in results.items():
        cells = []
        for who in ("ours", "blackbox", "floor"):
            e = row[who]["error_ms"]
            cells.append(f"{_f(e['p50'], 3)} / {_f(e['p99'], 3)} / {_f(e['mean'], 3)}, {e['n']}")
        target = ""
        if concurrency == "20":
            mean = row["ours"]["error_ms"]["mean"]
            target = f"mean <= 1 ms {_mark(mean is not None and mean <= LATENCY_MS)}"
        lines.append(f"  {concurrency:<10} {cells[0]:<30} {cells[1]:<30} {cells[2]:<30} {target}")
    return lines


def _scale(results: dict[str, Any]) -> list[str]:
    lines = [
        "One process at scale (HTTP services on nginx)",
        f"  {'services':>8} {'lag p50/p99/max ms':>20} {'/metrics s':>10} {'MiB (gzip)':>12} "
        f"{'CPU core':>8} {'RSS peak MiB':>12} {'probes/expected':>16} {'missed':>6}",
    ]
    for count, row in results.items():
        lag = row["lag_seconds"]
        marks = ""
        if int(count) == 10_000:
            ok = (
                (lag["p99"] or 0) <= LAG_P99
                and (row["render_seconds"]["max"] or 0) <= RENDER
                and row["memory"]["rss_peak"] <= RSS
                and row["cpu_share_of_one_core"] <= CPU_SHARE
            )
            marks = f"  targets (p99 <= 100 ms, render <= 0.5 s, <= 200 MiB, < 25%): {_mark(ok)}"
        lags = "/".join((_f(lag["p50"], 1, 1000), _f(lag["p99"], 1, 1000), _f(lag["max"], 0, 1000)))
        lines.append(
            f"  {count:>8} {lags:>20} "
            f"{_f(row['render_seconds']['max'], 3):>10} "
            f"{row['metrics_bytes'] / MIB:>5.1f} ({row['metrics_gzip_bytes'] / MIB:.1f}) "
            f"{row['cpu_share_of_one_core']:>8.1%} {row['memory']['rss_peak'] / MIB:>12.0f} "
            f"{row['probes']:>7}/{row['probes_expected']:<8.0f} {row['missed_runs']:>6}{marks}"
        )
        if row.get("first_scrape_seconds") is not None:
            lines.append(
                f"  {'':>8} first scrape after the start: {row['first_scrape_seconds']:.3f} s "
                "(every month counted afresh; /metrics s is the slowest scrape after it)"
            )
    return lines


def _shards(row: dict[str, Any]) -> list[str]:
    lag = row["lag_seconds"]
    per_minute = row["probes_per_minute"]
    return [
        f"Shards: {row['shards']} processes x {row['services'] // row['shards']} services, "
        f"interval {row['interval_seconds']} s, one SLA file, --shard k/{row['shards']}",
        f"  probes per minute {per_minute:,.0f} (target {PER_MINUTE:,}: "
        f"{_mark(per_minute >= PER_MINUTE * 0.99)}), failures {row['failures']}, "
        f"missed runs {row['missed_runs']}",
        f"  services probed {row['services_probed']:,} of {row['services']:,}, "
        f"by two shards {row['services_probed_by_two_shards']}, "
        f"probes per service in the window {row['probes_per_service_in_window']}, "
        f"shortest time between two runs of a service {_f(row.get('shortest_gap_seconds'))} s",
        f"  lag p50/p99/max {_f(lag['p50'], 1, 1000)}/{_f(lag['p99'], 1, 1000)}/"
        f"{_f(lag['max'], 0, 1000)} ms, /metrics max {_f(row['render_seconds_max'], 3)} s",
        f"  CPU: shards {' + '.join(f'{c:.0%}' for c in row['cpu_share_per_shard'])} = "
        f"{row['cpu_share_total']:.0%} of one core; targets "
        + ", ".join(f"{k} {v:.0%}" for k, v in row["targets_cpu_share"].items())
        + f"; RSS peak {', '.join(str(r // MIB) for r in row['rss_peak_per_shard'])} MiB",
    ]


def _rules(results: dict[str, Any]) -> list[str]:
    shipped, judged = results["shipped"], results["judged"]
    n, d = shipped["services"], shipped["days"]
    target = results["target"]
    scaled = judged["extrapolated"]
    at = f"{target['services']:,} x {target['days']}d"
    note = (
        f"  (measured at {n:,} services x {d:g} days; '{at}' columns extrapolated linearly in "
        "the samples each evaluation or query reads)"
        if scaled
        else ""
    )
    backfill = shipped.get("backfill", {})
    lines = [
        f"Prometheus: the shipped rules on {n:,} services x {d:g} days of history{note}",
        f"  backfill {backfill.get('samples', 0) / 1e6:.1f} M samples in "
        f"{backfill.get('seconds', 0):.0f} s; Prometheus "
        f"{shipped.get('prometheus_cpu_share', 0):.0%} of a core while measured",
        f"  {'group':<22} {'every':>6} {'evals':>5} {'seconds':>8} {'slowest rule':<58}"
        f" {'at ' + at:>16} {'of interval':>11}",
    ]
    for name, group in shipped["groups"].items():
        if name.startswith("_"):
            continue
        j = judged["groups"].get(name, {})
        rule = f"{group['slowest_rule'][:46]} {group['slowest_rule_seconds']:.3f} s"
        lines.append(
            f"  {name:<22} {group['interval_seconds']:>5g}s {group['evaluations']:>5} "
            f"{group['seconds']:>8.3f} {rule:<58} {j.get('seconds_at_target', 0):>14.2f} s "
            f"{j.get('share_at_target', 0):>10.1%} "
            f"{'<= 25% ' + _mark(j.get('ok')) if j else ''}"
        )
    if "_unhealthy" in shipped["groups"]:
        lines.append(f"  UNHEALTHY RULES: {shipped['groups']['_unhealthy']}")
    slowest = max(judged["groups"].values(), key=lambda g: g["slowest_rule_at_target"])
    lines.append(
        f"  slowest rule at {at}: {slowest['slowest_rule_at_target']:.2f} s "
        f"(query timeout 120 s: {_mark(all(g['rule_ok'] for g in judged['groups'].values()))})"
    )
    series = shipped["series"]
    lines.append(
        f"  series per service {series['series_per_service']:.0f} (scraped "
        f"{series['scraped_per_service']:.0f}, recorded {series['recorded_per_service']:.0f}); "
        f"Prometheus RSS {series['rss'] / MIB:.0f} MiB, {series['rss_idle'] / MIB:.0f} MiB "
        f"idle + {series['rss_per_service'] / 1024:.0f} KiB per service "
        f"({(series['rss_per_series'] or 0) / 1024:.1f} KiB per series): "
        f"{judged['rss_at_target'] / MIB / 1024:.1f} GiB at {at}"
    )
    if shipped.get("panels"):
        lines.append(
            f"  dashboard queries over the last 30 days (svc-00000 has 30 days of every series "
            f"a panel reads; median of 3 runs; at {at}: x services where it reads them all):"
        )
        for row in judged["panels"]:
            kind = "instant" if row["instant"] else f"range/{row['step_seconds']}s"
            who = "all" if row["all_services"] else "one"
            title = f"{row['dashboard'].removeprefix('sla-')}: {row['panel']} {row['ref']}"
            lines.append(
                f"    {title[:60]:<60} {kind:<12} {who:<3} {row['seconds']:>7.3f} s "
                f"{(row['samples'] or 0):>10,} samples {row['seconds_at_target']:>8.3f} s "
                f"{'<= 1 s ' + _mark(row['ok'])}"
            )
        for row in shipped.get("variables", []):
            lines.append(
                f"    {row['dashboard'].removeprefix('sla-')}: variable ${row['variable']:<40}"
                f" {row['seconds']:>7.3f} s, {row['values']} values"
            )
    ref = judged.get("reference")
    if ref:
        samples = ref["samples_per_service"]
        lines.append(
            f"  old against new, one Prometheus, {ref['services']:,} services x {ref['days']:g} "
            "days (the counters at 15 s throughout):"
        )
        for name, group in ref["groups"].items():
            lines.append(
                f"    {name:<22} every {group['interval_seconds']:>4g}s {group['seconds']:>8.3f} s"
                f"  {samples.get(name, 0):>10,.0f} samples per service"
            )
        ratio = ref["ratio"]
        lines.append(
            f"    evaluation seconds per minute: old {ref['old_seconds_per_minute']:.2f}, "
            f"new {ref['new_seconds_per_minute']:.2f}: {_f(ratio, 1)}x less"
            + (
                f"; long windows per evaluation {_f(ref['long_ratio'], 1)}x faster"
                if ref["long_ratio"]
                else ""
            )
        )
    return lines


def table(results: dict[str, Any]) -> str:
    """Every section that ran, as aligned text."""
    global QUICK
    QUICK = bool(results.get("quick"))
    lines = [f"{results['command']}  ({results['seconds']:.0f} s)"]
    env = results["environment"]
    lines.append(
        f"  {env['cpus']} CPUs, Python {env['python']} (our event loop: "
        f"{env.get('event_loop', 'asyncio')}), {env['blackbox_exporter']}, {env['nginx']}"
    )
    for section, render in (("cpu", _cpu), ("latency", _latency), ("scale", _scale)):
        if section in results:
            lines += ["", *render(results[section])]
    if "shards" in results:
        lines += ["", *_shards(results["shards"])]
    if "rules" in results:
        lines += ["", *_rules(results["rules"])]
    return "\n".join(lines)
