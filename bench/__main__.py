"""`python -m bench`: our exporter against blackbox_exporter, our exporter at scale, and the
Prometheus side (rules and dashboards) at scale.

Prints a table and writes every figure (and the raw runs behind them) as JSON to bench/out/.
`bench/run.sh` installs nginx and prometheus-blackbox-exporter first if they are missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from sla_exporter.cli import DEFAULT_EVENT_LOOP, EVENT_LOOPS

from . import report, rules, scenarios
from .configs import KINDS, blackbox_file
from .targets import Targets

OUT = Path(__file__).parent / "out"
SECTIONS = ("cpu", "latency", "scale", "shards", "rules")
# The sections that probe the loopback targets (nginx, the 200 ms target, the SMTP responder).
TARGET_SECTIONS = {"cpu", "latency", "scale", "shards"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: small counts, short windows, one round (about a minute)",
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"sections to run, of {','.join(SECTIONS)}"
    )
    parser.add_argument("--rounds", type=int, help="alternating rounds per comparison")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"probe kinds to compare, of {','.join(KINDS)}"
    )
    parser.add_argument("--rate", type=int, help="probes per second in the CPU comparison")
    parser.add_argument("--scale", help="service counts for one process, e.g. 1000,10000,30000")
    parser.add_argument("--shards", help="shards x services per shard, e.g. 4x25000")
    parser.add_argument("--interval", type=int, help="seconds between probes at scale")
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help="scale section: start on a month ledger of this many months (13 is a year's)",
    )
    parser.add_argument(
        "--rules",
        help="rules section: services x days of history, e.g. 10000x30 (the default; 20x1 quick)",
    )
    parser.add_argument(
        "--rules-reference",
        help="rules section: services x days for the old rules beside the new, e.g. 100x30 "
        "(the default; 10x1 quick), or 0 for none",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--event-loop",
        default=DEFAULT_EVENT_LOOP,
        choices=EVENT_LOOPS,
        help="our exporter's event loop (its --event-loop; default: %(default)s)",
    )
    parser.add_argument(
        "--blackbox", default="prometheus-blackbox-exporter", help="blackbox_exporter binary"
    )
    return parser.parse_args(argv)


def environment(blackbox: str, event_loop: str) -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "missing"
        return (done.stdout or done.stderr).splitlines()[0] if done.stdout or done.stderr else ""

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "event_loop": event_loop,
        "kernel": platform.release(),
        "blackbox_exporter": version([blackbox, "--version"]),
        "nginx": version(["nginx", "-v"]),
        "prometheus": version(["prometheus", "--version"]),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    sections = [s for s in args.only.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s): {', '.join(sorted(unknown))}")
    blackbox = shutil.which(args.blackbox)
    if ("cpu" in sections or "latency" in sections) and blackbox is None:
        raise SystemExit(f"{args.blackbox} not found: run bench/run.sh (installs it)")
    rounds = args.rounds or (1 if quick else 5)
    rate = args.rate or (20 if quick else 100)
    kinds = [k for k in args.kinds.split(",") if k]
    if set(kinds) - set(KINDS):
        raise SystemExit(f"unknown kind(s): {', '.join(sorted(set(kinds) - set(KINDS)))}")
    counts = [int(n) for n in (args.scale or ("200" if quick else "1000,10000,30000")).split(",")]
    shard_count, per_shard = (
        int(n) for n in (args.shards or ("2x100" if quick else "4x25000")).split("x")
    )
    interval = args.interval or (2 if quick else 60)
    rules_size = size(args.rules or ("20x1" if quick else "10000x30"))
    reference = args.rules_reference or ("10x1" if quick else "100x30")
    rules_reference = None if reference == "0" else size(reference)

    work = Path(tempfile.mkdtemp(prefix="sla-bench-"))
    targets = Targets(work)
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "quick": quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(args.blackbox, args.event_loop),
    }
    started = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:6.0f}s] {line}", file=sys.stderr, flush=True)

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            if TARGET_SECTIONS & set(sections):
                at = targets.start()
                bb_config = work / "blackbox.yml"
                bb_config.write_text(blackbox_file(at))
                bench = scenarios.Bench(
                    work, at, targets, blackbox or "", bb_config, quick, session, log,
                    args.event_loop,
                )  # fmt: skip
                if "cpu" in sections:
                    results["cpu"] = await scenarios.cpu(bench, kinds, rounds, rate)
                    checkpoint(args.out, results)
                if "latency" in sections:
                    # Latency windows are long (30 s at one probe in flight): fewer rounds suffice.
                    results["latency"] = await scenarios.latency(bench, (1, 20), rounds // 2 + 1)
                    checkpoint(args.out, results)
                if "scale" in sections:
                    results["scale"] = await scenarios.scale(bench, counts, interval, args.history)
                    checkpoint(args.out, results)
                if "shards" in sections:
                    results["shards"] = await scenarios.shards(
                        bench, shard_count, per_shard, interval
                    )
                    checkpoint(args.out, results)
            if "rules" in sections:
                services, days = rules_size
                results["rules"] = await rules.rules(
                    work, session, int(services), days, rules_reference, quick, log
                )
    finally:
        targets.stop()
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = time.monotonic() - started
    return results


def size(text: str) -> tuple[int, float]:
    """`10000x30` -> (10000 services, 30.0 days)."""
    try:
        services, days = text.split("x")
        return int(services), float(days)
    except ValueError:
        raise SystemExit(f"expected services x days like 10000x30, got {text!r}") from None


def checkpoint(out: Path, results: dict[str, Any]) -> None:
    """The sections done so far, in case a later one fails (the run takes half an hour)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "partial.json").write_text(json.dumps(results, indent=2, default=float))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = f"bench-{'quick-' if args.quick else ''}{stamp}.json"
    text = json.dumps(results, indent=2, default=float)
    (args.out / name).write_text(text)
    (args.out / ("latest-quick.json" if args.quick else "latest.json")).write_text(text)
    print(report.table(results))
    print(f"\nJSON: {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
