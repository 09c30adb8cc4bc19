#!/usr/bin/env bash
# The whole bundle on loopback, no Docker: simulated services, the exporter probing them,
# Prometheus with our rules, Alertmanager routing pages to a webhook that prints them.
# Installs what is missing first (see scripts/install.sh). Ctrl-C stops everything.
#
#   ./run.sh                      demo services and examples/demo.yml
#   SLA_CONFIG=my-sla.yml ./run.sh  your own SLA file (no demo services)
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh
. .venv/bin/activate

RUN=run  # examples/demo.yml reads its CA and SMTP password from here
mkdir -p "$RUN"
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT

wait_for() {  # wait_for NAME URL: poll until the URL answers, for at most 30 s
  for _ in $(seq 300); do
    if python -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$2" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "$1 did not come up at $2; see $RUN/$1.log" >&2
  exit 1
}

config=${SLA_CONFIG:-}
if [ -z "$config" ]; then
  config=examples/demo.yml
  # The demo's secrets, handed over the way a real deployment would: environment and a file.
  export DEMO_API_TOKEN="Bearer demo-api-token" DEMO_SMS_TOKEN=demo-sms-token
  printf 'demo-smtp-password\n' >"$RUN/smtp-password"
  chmod 600 "$RUN/smtp-password"
  sla-exporter-demo --ca-file "$RUN/demo-ca.pem" >"$RUN/demo.log" 2>&1 &
  pids+=($!)
  wait_for demo http://127.0.0.1:9401/-/demo
fi

sla-exporter --config.file "$config" --web.listen-address 127.0.0.1:9141 \
  --storage.path "$RUN/sla-ledger.json" >"$RUN/exporter.log" 2>&1 &
pids+=($!)
wait_for exporter http://127.0.0.1:9141/-/ready

# 400 days of retention keeps the last 13 calendar months queryable.
prometheus --config.file prometheus/prometheus.yml --storage.tsdb.path "$RUN/prometheus" \
  --storage.tsdb.retention.time 400d --web.listen-address 127.0.0.1:9090 \
  --web.enable-lifecycle >"$RUN/prometheus.log" 2>&1 &
pids+=($!)
wait_for prometheus http://127.0.0.1:9090/-/ready

# The shipped routing with its webhooks pointed at the demo's receiver and the e-mail
# receivers left out: they name a mail relay on the internet.
sla-exporter-demo --print-alertmanager-config alertmanager/alertmanager.yml >"$RUN/alertmanager.yml"
prometheus-alertmanager --config.file "$RUN/alertmanager.yml" \
  --storage.path "$RUN/alertmanager" --web.listen-address 127.0.0.1:9093 \
  --cluster.listen-address= >"$RUN/alertmanager.log" 2>&1 &
pids+=($!)
wait_for alertmanager http://127.0.0.1:9093/-/ready

cat <<MSG

The SLA bundle is running (logs in $RUN/):
  exporter       http://127.0.0.1:9141/          services, last results, recent failures
  metrics        http://127.0.0.1:9141/metrics
  Prometheus     http://127.0.0.1:9090/alerts    rules and alerts
  Alertmanager   http://127.0.0.1:9093/
MSG
if [ -z "${SLA_CONFIG:-}" ]; then
  cat <<MSG
  demo services  http://127.0.0.1:9401/-/demo     take a service down, watch it page
  pages          tail -f $RUN/demo.log            what on-call would receive
MSG
fi
echo; echo "Ctrl-C stops everything."
wait -n "${pids[@]}" || true
echo "a process exited; see the logs in $RUN/" >&2
