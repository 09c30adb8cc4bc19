#!/usr/bin/env bash
# Installs what the bundle needs on a Debian machine: Prometheus, Alertmanager (with promtool and
# amtool) and VictoriaMetrics (the long-term store of ./run.sh --ha and its test) from Debian,
# and the exporter with its demo and test extras in ./.venv; with --with-bench also what bench/
# and the tests need (nginx, prometheus-blackbox-exporter, chromium, postfix and dovecot for the
# delivery tests).
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v promtool >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
command -v victoria-metrics >/dev/null || missing+=(victoria-metrics)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ "${1:-}" = --with-bench ]; then
  # The benchmark's targets and reference (bench/): nginx serves loopback pages, and the Prometheus
  # project's blackbox_exporter is what we measure against. The tests run a smoke pass of it.
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  command -v prometheus-blackbox-exporter >/dev/null || missing+=(prometheus-blackbox-exporter)
  # The tests render the SLA statement in headless Chromium and keep the screenshots.
  command -v chromium >/dev/null || missing+=(chromium)
  # The delivery probe's tests run a real Postfix (submission) delivering over LMTP to a real
  # Dovecot (IMAP), each as the tests' own instance (tests/mail_servers.py).
  [ -x /usr/sbin/postfix ] || missing+=(postfix)
  [ -x /usr/lib/dovecot/imap ] || missing+=(dovecot-imapd)
  [ -x /usr/lib/dovecot/lmtp ] || missing+=(dovecot-lmtpd)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  # Postfix asks what kind of mail system to set up: none. The tests start their own instance;
  # the machine gets no mail server of its own from this.
  echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
  # --no-install-recommends: Prometheus recommends a node exporter we do not need.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
  # Debian starts Dovecot as a system service where services start (not in containers); the
  # tests need only its programs, so a system IMAP server is not left listening.
  if printf '%s\n' "${missing[@]}" | grep -q dovecot && command -v systemctl >/dev/null \
    && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now dovecot >/dev/null 2>&1 || true
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# The stamp skips pip when pyproject.toml has not changed since the last install.
stamp=.venv/.installed-$(cat pyproject.toml demo/pyproject.toml | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]' -e ./demo
  rm -f .venv/.installed-* && touch "$stamp"
fi
