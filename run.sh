#!/usr/bin/env bash
# The whole bundle on loopback, no Docker: the exporter probing, Prometheus with our rules,
# Alertmanager routing pages to a receiver that writes them to a file. With no SLA file given,
# simulated services to probe too. Installs what is missing first (see scripts/install.sh).
# Ctrl-C stops everything.
#
#   ./run.sh                          demo services and examples/demo.yml; data in run/
#   SLA_CONFIG=my-sla.yml ./run.sh    your own SLA file (no demo services); data in
#                                     run/<file name>-<hash of its path>/, its own
#   ./run.sh --ha                     the highly available topology (docs/OPERATIONS.md): two
#                                     exporter replicas, two Prometheus, two Alertmanagers in a
#                                     cluster, VictoriaMetrics; data in the folder above + ha/
#
# Ports, for a second stack beside a running one: EXPORTER_PORT (9141), PROMETHEUS_PORT (9090),
# ALERTMANAGER_PORT (9093), RECEIVER_PORT (9095), and for the demo services DEMO_HTTP_PORT (9401)
# DEMO_SMTP_PORT (9402), DEMO_IMAP_PORT (9403) and DEMO_DNS_PORT (9404), which examples/demo.yml
# names; DEMO_RUN_DIR (run) the demo's folder.
# With --ha also the second of each pair: EXPORTER_B_PORT (9241), PROMETHEUS_B_PORT (9190),
# ALERTMANAGER_B_PORT (9193), the Alertmanagers' gossip ALERTMANAGER_CLUSTER_PORT (9094) and
# ALERTMANAGER_B_CLUSTER_PORT (9194), and VICTORIA_PORT (8428).
set -euo pipefail

ha=
case "${1:-}" in
  --ha) ha=1 ;;
  "") ;;
  *)
    echo "usage: ./run.sh [--ha]" >&2
    exit 2
    ;;
esac

# The SLA file as the user typed it: relative to the folder they are in, not to this repository.
config=${SLA_CONFIG:-}
if [ -n "$config" ]; then
  if [ ! -f "$config" ]; then
    echo "SLA_CONFIG=$config: no such file (relative paths are taken from $PWD)" >&2
    exit 1
  fi
  config=$(realpath "$config")
fi
cd "$(dirname "$0")"
scripts/install.sh
. .venv/bin/activate

exporter_port=${EXPORTER_PORT:-9141}
prometheus_port=${PROMETHEUS_PORT:-9090}
alertmanager_port=${ALERTMANAGER_PORT:-9093}
receiver_port=${RECEIVER_PORT:-9095}
exporter_b_port=${EXPORTER_B_PORT:-9241}
prometheus_b_port=${PROMETHEUS_B_PORT:-9190}
alertmanager_b_port=${ALERTMANAGER_B_PORT:-9193}
cluster_port=${ALERTMANAGER_CLUSTER_PORT:-9094}
cluster_b_port=${ALERTMANAGER_B_CLUSTER_PORT:-9194}
victoria_port=${VICTORIA_PORT:-8428}

demo=
demo_http_port=${DEMO_HTTP_PORT:-9401}
demo_smtp_port=${DEMO_SMTP_PORT:-9402}
demo_imap_port=${DEMO_IMAP_PORT:-9403}
demo_dns_port=${DEMO_DNS_PORT:-9404}
if [ -z "$config" ]; then
  demo=1
  config=examples/demo.yml
  RUN=${DEMO_RUN_DIR:-run}  # examples/demo.yml reads its CA and SMTP password from run/
  if [ -n "$ha" ]; then RUN=$RUN/ha; fi  # the HA stack's months and data apart from the plain one's
  if [ "$demo_http_port:$demo_smtp_port:$demo_imap_port:$demo_dns_port:$RUN" \
    != 9401:9402:9403:9404:run ]; then
    # The demo file with its ports and its folder moved (the tests run a demo beside yours).
    mkdir -p "$RUN"
    RUN=$(realpath "$RUN")
    sed -e "s/127.0.0.1:9401/127.0.0.1:$demo_http_port/" -e "s/port: 9402/port: $demo_smtp_port/" \
      -e "s/port: 9403/port: $demo_imap_port/" -e "s/127.0.0.1:9404/127.0.0.1:$demo_dns_port/" \
      -e "s#\.\./run/#$RUN/#" examples/demo.yml >"$RUN/demo.yml"
    config=$RUN/demo.yml
  fi
else
  # Each SLA file its own Prometheus data, alerts and month ledger: your stack must not page
  # about the demo's services, nor count the demo's outages in your month. Named after the file
  # and a hash of its full path, so two my-sla.yml in different folders stay apart too.
  name=$(basename "$config")
  RUN=run/${name%.*}-$(printf '%s' "$config" | sha1sum | cut -c1-8)
  if [ -n "$ha" ]; then RUN=$RUN/ha; fi
fi

# Your SLA file: fail at once with the exporter's own words, before anything starts or is
# created. (The demo's file is checked by the tests; its secrets and CA only exist once the
# demo runs, below.)
if [ -z "$demo" ]; then
  if ! check=$(sla-exporter --config.check --config.file "$config" 2>&1); then
    echo "$check" >&2
    exit 1
  fi
fi
mkdir -p "$RUN"

names=() pids=() helpers=()
start() {  # start NAME COMMAND...: run in the background, output in $RUN/NAME.log
  local name=$1
  shift
  # setsid: a session of its own, so Ctrl-C in the terminal reaches this script alone, which
  # stops the processes itself. Before, each process got the Ctrl-C too and exited on its own,
  # and the script reported that as a crash before it had even begun to stop them.
  setsid "$@" >"$RUN/$name.log" 2>&1 &
  names+=("$name") pids+=($!)
}
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  # The helpers too (the statement written a few seconds after start): `wait` waits for them.
  for pid in "${pids[@]}" "${helpers[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

exited() {  # say which process has exited, with the end of its log
  local i
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "${names[$i]} exited; the end of $(realpath "$RUN/${names[$i]}.log"):" >&2
      tail -n 20 "$RUN/${names[$i]}.log" >&2
    fi
  done
}

answers() {  # answers URL: true if the URL answers 200
  python -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null
}

wait_for() {  # wait_for NAME URL: poll until the URL answers; stop at once if NAME exited
  local pid=${pids[-1]}
  for _ in $(seq 300); do
    answers "$2" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      exited
      exit 1
    fi
    sleep 0.1
  done
  echo "$1 did not come up at $2 within 30 s; see $RUN/$1.log" >&2
  exit 1
}

# The pager: Alertmanager's webhooks land here, each page written once to pages.log, with times
# in the SLA's zone. Started for every SLA file: pages must land somewhere.
# The zone read from the file as YAML, its !env and !file tags left unresolved: the demo's
# secrets do not exist yet, and the zone is all the receiver needs.
zone=$(python - "$config" <<'PY'
import sys

import yaml


class Loader(yaml.SafeLoader):
    pass


Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
sla = yaml.load(open(sys.argv[1]), Loader).get("sla") or {}  # noqa: S506 - SafeLoader's subclass
print(sla.get("timezone") or "UTC")
PY
)
pages="$RUN/pages.log"
if [ -n "$demo" ]; then
  # The demo's secrets, handed over the way a real deployment would: environment and a file.
  export DEMO_API_TOKEN="Bearer demo-api-token" DEMO_SMS_TOKEN=demo-sms-token
  printf 'demo-smtp-password\n' >"$RUN/smtp-password"
  chmod 600 "$RUN/smtp-password"
  start demo sla-exporter-demo --ca-file "$RUN/demo-ca.pem" --receiver-port "$receiver_port" \
    --http-port "$demo_http_port" --smtp-port "$demo_smtp_port" --imap-port "$demo_imap_port" \
    --dns-port "$demo_dns_port" --pages-file "$pages" --timezone "$zone"
  wait_for demo "http://127.0.0.1:$demo_http_port/-/demo"
else
  start receiver sla-exporter-demo --receiver-only --receiver-port "$receiver_port" \
    --pages-file "$pages" --timezone "$zone"
  wait_for receiver "http://127.0.0.1:$receiver_port/"
fi

exporter=http://127.0.0.1:$exporter_port
prometheus=http://127.0.0.1:$prometheus_port
alertmanager=http://127.0.0.1:$alertmanager_port
if [ -n "$ha" ]; then
  # The highly available topology (docs/OPERATIONS.md, "High availability"), on loopback.
  exporter_b=http://127.0.0.1:$exporter_b_port
  prometheus_b=http://127.0.0.1:$prometheus_b_port
  alertmanager_b=http://127.0.0.1:$alertmanager_b_port
  victoria=http://127.0.0.1:$victoria_port
  links=(--web.link "Prometheus alerts=$prometheus/classic/alerts")
  if [ -n "$demo" ]; then
    links+=(--web.link "Demo switches=http://127.0.0.1:$demo_http_port/-/demo")
  fi
  # Two replicas of the one location, each merging the other's months into its own ledger: the
  # month stays exact while either runs.
  start exporter-a sla-exporter --config.file "$config" \
    --web.listen-address "127.0.0.1:$exporter_port" --storage.path "$RUN/sla-ledger-a.json" \
    --replica.peer "$exporter_b" "${links[@]}"
  wait_for exporter-a "$exporter/-/ready"
  start exporter-b sla-exporter --config.file "$config" \
    --web.listen-address "127.0.0.1:$exporter_b_port" --storage.path "$RUN/sla-ledger-b.json" \
    --replica.peer "$exporter" "${links[@]}"
  wait_for exporter-b "$exporter_b/-/ready"

  # The long-term store both Prometheus servers write to: 400 days, one sample per scrape of
  # the two servers' identical series. Samples shown from 5 s old (30 s by default, for
  # writers far away; here they are on the same machine).
  start victoria-metrics victoria-metrics -storageDataPath="$RUN/victoria-metrics" \
    -httpListenAddr="127.0.0.1:$victoria_port" -retentionPeriod=400d \
    -dedup.minScrapeInterval=15s -search.latencyOffset=5s
  wait_for victoria-metrics "$victoria/health"

  # Two Alertmanagers in one cluster: they gossip silences and what was sent, so each page is
  # sent once by whichever lives.
  sla-exporter-demo --print-alertmanager-config alertmanager/alertmanager.yml \
    --receiver-port "$receiver_port" >"$RUN/alertmanager.yml"
  start alertmanager-a prometheus-alertmanager --config.file "$RUN/alertmanager.yml" \
    --storage.path "$RUN/alertmanager-a" --web.listen-address "127.0.0.1:$alertmanager_port" \
    --cluster.listen-address "127.0.0.1:$cluster_port" --cluster.peer "127.0.0.1:$cluster_b_port"
  wait_for alertmanager-a "$alertmanager/-/ready"
  start alertmanager-b prometheus-alertmanager --config.file "$RUN/alertmanager.yml" \
    --storage.path "$RUN/alertmanager-b" --web.listen-address "127.0.0.1:$alertmanager_b_port" \
    --cluster.listen-address "127.0.0.1:$cluster_b_port" --cluster.peer "127.0.0.1:$cluster_port"
  wait_for alertmanager-b "$alertmanager_b/-/ready"

  # The pair's one config with this run's ports and the rules by absolute path.
  python - "$RUN/prometheus.yml" "$exporter_port" "$exporter_b_port" "$alertmanager_port" \
    "$alertmanager_b_port" "$victoria_port" <<'PY'
import sys
from pathlib import Path

import yaml

out, exporter, exporter_b, manager, manager_b, victoria = sys.argv[1:]
config = yaml.safe_load(Path("prometheus/prometheus.ha.yml").read_text())
config["rule_files"] = [str(Path("prometheus/rules/*.yml").resolve())]
config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
    f"127.0.0.1:{manager}",
    f"127.0.0.1:{manager_b}",
]
config["scrape_configs"][0]["static_configs"][0]["targets"] = [
    f"127.0.0.1:{exporter}",
    f"127.0.0.1:{exporter_b}",
]
config["remote_write"][0]["url"] = f"http://127.0.0.1:{victoria}/api/v1/write"
Path(out).write_text(yaml.safe_dump(config, sort_keys=False))
PY
  # At Ctrl-C the store stops with them: 5 s to send what is left, not a minute.
  for replica in a b; do
    if [ $replica = a ]; then port=$prometheus_port; else port=$prometheus_b_port; fi
    start prometheus-$replica env PROMETHEUS_REPLICA=$replica prometheus \
      --config.file "$RUN/prometheus.yml" --enable-feature=expand-external-labels \
      --storage.tsdb.path "$RUN/prometheus-$replica" --storage.tsdb.retention.time 400d \
      --web.listen-address "127.0.0.1:$port" --web.enable-lifecycle \
      --storage.remote.flush-deadline=5s
    wait_for prometheus-$replica "http://127.0.0.1:$port/-/ready"
  done
else
  links=(--web.link "Prometheus alerts=$prometheus/classic/alerts")
  if [ -n "$demo" ]; then
    links+=(--web.link "Demo switches=http://127.0.0.1:$demo_http_port/-/demo")
  fi
  start exporter sla-exporter --config.file "$config" --web.listen-address "127.0.0.1:$exporter_port" \
    --storage.path "$RUN/sla-ledger.json" "${links[@]}"
  wait_for exporter "$exporter/-/ready"

  # The shipped Prometheus config with this run's ports and the rules by absolute path.
  python - "$RUN/prometheus.yml" "$exporter_port" "$alertmanager_port" <<'PY'
import sys
from pathlib import Path

import yaml

out, exporter_port, alertmanager_port = sys.argv[1:]
config = yaml.safe_load(Path("prometheus/prometheus.yml").read_text())
config["rule_files"] = [str(Path("prometheus/rules/*.yml").resolve())]
config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
    f"127.0.0.1:{alertmanager_port}"
]
config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{exporter_port}"]
Path(out).write_text(yaml.safe_dump(config, sort_keys=False))
PY
  # 400 days of retention keeps the last 13 calendar months queryable.
  start prometheus prometheus --config.file "$RUN/prometheus.yml" --storage.tsdb.path "$RUN/prometheus" \
    --storage.tsdb.retention.time 400d --web.listen-address "127.0.0.1:$prometheus_port" \
    --web.enable-lifecycle
  wait_for prometheus "$prometheus/-/ready"

  # The shipped routing with its webhooks pointed at our receiver and the e-mail receivers left
  # out: they name a mail relay on the internet.
  sla-exporter-demo --print-alertmanager-config alertmanager/alertmanager.yml \
    --receiver-port "$receiver_port" >"$RUN/alertmanager.yml"
  start alertmanager prometheus-alertmanager --config.file "$RUN/alertmanager.yml" \
    --storage.path "$RUN/alertmanager" --web.listen-address "127.0.0.1:$alertmanager_port" \
    --cluster.listen-address=
  wait_for alertmanager "$alertmanager/-/ready"

fi

# Addresses that work for the versions installed: Debian's Prometheus 2.42 serves its UI under
# /classic/ (the new UI is not packaged), and Debian's Alertmanager has no web UI at all.
if answers "$prometheus/alerts"; then ui=$prometheus; else ui=$prometheus/classic; fi
here=$(realpath "$RUN")
pages=$here/pages.log
cat <<MSG

The SLA bundle is running for $config (data and logs in $here/):
  exporter       $exporter/               services, last results, recent failures
  metrics        $exporter/metrics
  Prometheus     $ui/alerts     alerts
                 $ui/rules      rules
                 $ui/graph      queries
MSG
# Upstream's Alertmanager UI loads script.js; Debian's answers / with a page saying it has no UI.
if answers "$alertmanager/script.js"; then
  echo "  Alertmanager   $alertmanager/#/alerts   alerts and silences"
else
  cat <<MSG
  Alertmanager   $alertmanager/api/v2/alerts   alerts as JSON (this Alertmanager has no web UI)
    alerts         amtool --alertmanager.url=$alertmanager alert query
    silences       amtool --alertmanager.url=$alertmanager silence query
    silence one    amtool --alertmanager.url=$alertmanager silence add sla_service=api -d 1h -c "why"
MSG
fi
if [ -n "$ha" ]; then
  if answers "$prometheus_b/alerts"; then ui_b=$prometheus_b; else ui_b=$prometheus_b/classic; fi
  cat <<MSG
  the second of each pair (kill -9 either of a pair: pages, alerts and the month go on):
  exporter b     $exporter_b/
  Prometheus b   $ui_b/alerts
  Alertmanager b $alertmanager_b/api/v2/status   the cluster: both Alertmanagers, ready
  VictoriaMetrics $victoria/api/v1/query?query=sla_month_seconds   the long-term store,
                 which the statement reads the months from (Debian's has no web UI)
MSG
fi
if [ -n "$demo" ]; then
  echo "  demo services  http://127.0.0.1:$demo_http_port/-/demo    take a service down, watch it page"
fi
# The month's SLA statement so far, once Prometheus has a few scrapes of the month (and with
# --ha, once they reached the store); again with the command printed below whenever you like.
if [ -n "$ha" ]; then source=$victoria delay=30; else source=$prometheus delay=20; fi
report="sla-report --prometheus.url $source --exporter.url $exporter --month current"
(sleep $delay && $report --format html --output "$here/statement.html" >/dev/null 2>&1) &
helpers+=($!)
cat <<MSG
  status page    $exporter/status         each service now, this month, the last 90 days
  SLA statement  file://$here/statement.html   this month so far (written in $delay s)
                 $report
  pages          tail -f $pages    each page and ticket on-call would receive, once

Ctrl-C stops everything.
MSG
# Here only when a process exited by itself (Ctrl-C leaves through the trap above).
wait -n "${pids[@]}" || true
exited
exit 1
