"""Command line: write the dashboards, or check that the committed ones are up to date."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from grafana.generator import render
from grafana.generator.base import COMMAND, DEFAULT_SLA_FILE, OUT, read_settings
from sla_exporter.loader import ConfigInvalid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND, description="Write the SLA bundle's Grafana dashboards."
    )
    parser.add_argument(
        "--sla-file",
        type=Path,
        default=DEFAULT_SLA_FILE,
        help="SLA file whose time zone and objective the dashboards use",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="directory of the dashboards")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a file differs from what would be written",
    )
    args = parser.parse_args(argv)
    try:
        files = render(read_settings(args.sla_file))
    except ConfigInvalid as err:
        print(err, file=sys.stderr)
        return 1
    stale = []
    for name, text in files.items():
        path = args.out / name
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == text:
            continue
        stale.append(name)
        if args.check:
            diff = difflib.unified_diff(
                current.splitlines(),
                text.splitlines(),
                f"{path} (committed)",
                f"{path} (generated)",
                lineterm="",
            )
            print("\n".join(list(diff)[:40]), file=sys.stderr)
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; run {COMMAND}", file=sys.stderr)
        return 1
    if not args.check:
        print(f"{len(stale)} of {len(files)} dashboards written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
