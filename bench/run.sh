#!/usr/bin/env bash
# The benchmark in one command: installs what is missing (Debian's nginx and
# prometheus-blackbox-exporter, the exporter in ./.venv), then runs `python -m bench`.
# Extra arguments go to it, e.g. `bench/run.sh --quick` or `bench/run.sh --only cpu`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install.sh --with-bench  # Debian's nginx and blackbox_exporter, the exporter in .venv
# (Debian starts nginx as a service on install; the benchmark runs its own on free ports.)
exec .venv/bin/python -m bench "$@"
