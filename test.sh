#!/usr/bin/env bash
# Runs every check: lint, types, and the test suite (real servers, Prometheus and Alertmanager).
# Installs what is missing first (see scripts/install.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh --with-bench  # the tests include a smoke run of bench/
. .venv/bin/activate
ruff check exporter demo tests grafana bench prometheus
ruff format --check exporter demo tests grafana bench prometheus
mypy
python -m pytest "$@"
