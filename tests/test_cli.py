"""The command line as users run it: a real process, real signals, real sockets."""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest
import trustme

from tests.helpers import free_port

CONFIG = """
sla: {name: CLI test}
services:
  local:
    interval: 1s
    timeout: 500ms
    http: {url: "http://127.0.0.1:9/", headers: {X-Token: !env CLI_SECRET}}
"""
SECRET = "cli-secret-5b1e"


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sla_exporter", "--config.check", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "CLI_SECRET": SECRET},
    )


def test_config_check_accepts_a_good_file_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "sla.yml"
    path.write_text(CONFIG)
    result = run_check("--config.file", str(path))
    assert (result.returncode, result.stdout) == (0, f"{path}: OK, 1 services\n")


def test_config_check_prints_every_error_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "sla.yml"
    path.write_text(
        CONFIG.replace("timeout: 500ms", "timeout: 2s").replace("interval", "intervall")
    )
    result = run_check("--config.file", str(path))
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == f"{path}: 1 error"
    assert 'services.local.intervall: unknown key "intervall"; did you mean "interval"?' in (
        result.stdout
    )
    assert SECRET not in result.stdout


def test_config_check_also_validates_the_web_config(tmp_path: Path) -> None:
    path = tmp_path / "sla.yml"
    path.write_text(CONFIG)
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_user: {}\n")
    result = run_check("--config.file", str(path), "--web.config.file", str(web))
    assert result.returncode == 1
    assert 'basic_auth_user: unknown key "basic_auth_user"; did you mean "basic_auth_users"?' in (
        result.stdout
    )


class Process:
    """The exporter as a child process, with its stderr collected in a file."""

    def __init__(
        self,
        args: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.log = log
        self.stderr = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sla_exporter", *args],
            stderr=self.stderr,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "CLI_SECRET": SECRET, **(env or {})},
            preexec_fn=preexec_fn,  # the hostile tests lower the file limit of the child
        )

    def wait_for(self, predicate: object, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"exporter exited: {self.log.read_text()}"
            if predicate():  # type: ignore[operator]  # a zero-argument callable
                return
            time.sleep(0.05)
        raise AssertionError(f"{what} not seen within {timeout}s; log:\n{self.log.read_text()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        self.stderr.close()
        return code


def launch(tmp_path: Path, *extra: str, storage: str = "") -> tuple[Process, Path, int]:
    """Start `sla-exporter` on a free port with CONFIG; returns the process, config and port."""
    config = tmp_path / "sla.yml"
    config.write_text(CONFIG)
    port = free_port()
    args = ["--config.file", str(config), "--web.listen-address", f"127.0.0.1:{port}"]
    proc = Process([*args, "--storage.path", storage, *extra], tmp_path / "stderr.log")
    return proc, config, port


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[tuple[Process, Path, int]]:
    running = launch(
        tmp_path,
        *("--log.format", "json", "--log.level", "debug"),
        storage=str(tmp_path / "ledger.json"),
    )
    yield running
    if running[0].proc.poll() is None:
        running[0].stop()


def get(url: str, context: ssl.SSLContext | None = None) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return ""


def test_sighup_with_a_bad_file_keeps_probing_and_logs_the_errors(
    exporter: tuple[Process, Path, int],
) -> None:
    proc, config, port = exporter
    metrics = f"http://127.0.0.1:{port}/metrics"
    proc.wait_for(lambda: 'sla_probes_total{sla_service="local"}' in get(metrics), "first probe")
    config.write_text(CONFIG.replace("interval: 1s", "interval: often"))
    proc.proc.send_signal(signal.SIGHUP)
    proc.wait_for(
        lambda: "sla_exporter_config_last_reload_successful 0.0" in get(metrics), "failed reload"
    )
    records = [json.loads(line) for line in proc.log.read_text().splitlines()]
    failed = [r for r in records if "config reload failed" in r["msg"]]
    assert failed and failed[0]["level"] == "error"
    assert 'services.local.interval: must be a duration like "30s"' in failed[0]["msg"]

    def probes() -> float:
        for line in get(metrics).splitlines():
            if line.startswith('sla_probes_total{sla_service="local"}'):
                return float(line.split()[-1])
        return 0.0

    before = probes()
    proc.wait_for(lambda: probes() > before, "probing on with the old config")
    config.write_text(CONFIG.replace("local:", "renamed:"))
    proc.proc.send_signal(signal.SIGHUP)
    proc.wait_for(lambda: 'sla_service="renamed"' in get(metrics), "the new config")
    assert 'sla_service="local"' not in get(metrics)
    assert proc.stop() == 0
    log = proc.log.read_text()
    assert SECRET not in log
    assert all(
        {"ts", "level", "logger", "msg"} <= set(json.loads(line)) for line in log.splitlines()
    )


def test_a_bad_config_at_start_exits_1_with_every_error(tmp_path: Path) -> None:
    config = tmp_path / "sla.yml"
    config.write_text("sla: {name: x}\nservices: {a: {interval: 1s}}\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sla_exporter",
            "--config.file",
            str(config),
            "--web.listen-address",
            f"127.0.0.1:{free_port()}",
            "--storage.path",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "services.a: must set exactly one probe kind (http, smtp, sms_gateway, " in result.stderr


def test_help_shows_the_default_of_every_flag_that_has_one() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sla_exporter", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "COLUMNS": "200"},  # no wrapping inside a default
    )
    # One entry per flag: its line and the help lines indented under it, joined.
    lines: list[str] = []
    for line in result.stdout.splitlines():
        if line.startswith("  -"):
            lines.append(line)
        elif lines and line.startswith("   "):
            lines[-1] += " " + line.strip()
    for flag, default in [
        ("--config.file", "sla.yml"),
        ("--web.listen-address", ":9141"),
        ("--storage.path", "data/sla-ledger.json"),
        ("--probes.max-concurrency", "128"),
        ("--shard", "1/1"),
        ("--log.level", "info"),
        ("--log.format", "logfmt"),
    ]:
        [line] = [line for line in lines if line.lstrip().startswith(flag)]
        assert f"(default: {default}" in line, line
    [check] = [line for line in lines if line.lstrip().startswith("--config.check")]
    assert "default" not in check  # a switch: "(default: False)" would only be noise


def test_log_level_warn_logs_level_warn_as_the_flag_spells_it() -> None:
    code = (
        "import logging; from sla_exporter.cli import setup_logging; "
        "setup_logging('warn', 'logfmt'); "
        "logging.getLogger('sla_exporter').info('hidden'); "
        "logging.getLogger('sla_exporter').warning('shown')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    [line] = result.stderr.splitlines()
    assert " level=warn logger=sla_exporter msg=shown" in line


def test_logfmt_is_the_default_log_format(tmp_path: Path) -> None:
    proc, _, port = launch(tmp_path)
    proc.wait_for(lambda: "Ready" in get(f"http://127.0.0.1:{port}/-/ready"), "readiness")
    assert proc.stop() == 0
    first = proc.log.read_text().splitlines()[0]
    assert first.startswith("ts=") and " level=info logger=sla_exporter msg=" in first


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_the_exporter_runs_on_the_event_loop_it_is_given(tmp_path: Path, event_loop: str) -> None:
    proc, _, port = launch(tmp_path, "--event-loop", event_loop, "--log.format", "json")
    proc.wait_for(lambda: "Ready" in get(f"http://127.0.0.1:{port}/-/ready"), "readiness")
    proc.wait_for(lambda: "sla_probe_success" in get(f"http://127.0.0.1:{port}/metrics"), "a probe")
    assert proc.stop() == 0
    started = [json.loads(line) for line in proc.log.read_text().splitlines()]
    assert any(line["msg"].endswith(f", event loop {event_loop})") for line in started)


def test_uvloop_is_the_default_event_loop_where_it_is_installed() -> None:
    from sla_exporter import cli

    assert cli.parse_args([]).event_loop == "uvloop"


def test_asking_for_uvloop_where_it_is_missing_is_a_clear_error(tmp_path: Path) -> None:
    # A stand-in for a machine without uvloop: an import path where `import uvloop` fails.
    (tmp_path / "uvloop.py").write_text("raise ImportError('no uvloop here')\n")
    config = tmp_path / "sla.yml"
    config.write_text(CONFIG)
    result = subprocess.run(
        [sys.executable, "-m", "sla_exporter", "--config.file", str(config), "--event-loop=uvloop"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "sla-exporter: --event-loop=uvloop: uvloop is not installed" in result.stderr


def test_the_web_config_serves_over_tls(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "web.yml").write_text(
        "tls_server_config: {cert_file: cert.pem, key_file: key.pem}\n"
    )
    proc, _, port = launch(tmp_path, "--web.config.file", str(tmp_path / "web.yml"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    proc.wait_for(lambda: "Ready" in get(f"https://127.0.0.1:{port}/-/ready", context), "TLS")
    assert get(f"http://127.0.0.1:{port}/-/ready") == ""  # no plain HTTP beside it
    assert proc.stop() == 0


def fetch(url: str, context: ssl.SSLContext, auth: str | None = None) -> int | str:
    """The status of a GET (with basic auth `user:password`), or why it failed."""
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, ConnectionError) as err:
        return str(getattr(err, "reason", err))


def issue(ca: trustme.CA, where: Path) -> None:
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    cert.private_key_pem.write_to_path(str(where / "key.pem"))


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


TLS_WEB = "tls_server_config: {cert_file: cert.pem, key_file: key.pem}\n"


def launch_tls(
    tmp_path: Path, ca: trustme.CA, more: str = "", *extra: str
) -> tuple[Process, Path, int]:
    """The exporter on TLS with a certificate from `ca`, `more` added to its web config; returns
    the process, the web config file and the port."""
    issue(ca, tmp_path)
    web_yml = tmp_path / "web.yml"
    web_yml.write_text(TLS_WEB + more)
    proc, _, port = launch(tmp_path, "--web.config.file", str(web_yml), *extra)
    return proc, web_yml, port


def test_a_renewed_certificate_is_served_from_the_next_connection_without_a_restart(
    tmp_path: Path, ca: trustme.CA
) -> None:
    proc, _, port = launch_tls(tmp_path, ca)
    url = f"https://127.0.0.1:{port}/-/ready"
    old, new = trusting(ca), trusting(renewer := trustme.CA())
    proc.wait_for(lambda: fetch(url, old) == 200, "TLS with the first certificate")

    issue(renewer, tmp_path)  # cert-manager, certbot: new files, same names
    assert fetch(url, new) == 200
    assert "CERTIFICATE_VERIFY_FAILED" in str(fetch(url, old))
    assert proc.stop() == 0
    assert "web config" in proc.log.read_text() and "reloaded" in proc.log.read_text()


def test_basic_auth_users_changed_in_the_web_config_apply_from_the_next_request(
    tmp_path: Path, ca: trustme.CA
) -> None:
    users = f"basic_auth_users: {{prometheus: '{hashed('first')}'}}\n"
    proc, web_yml, port = launch_tls(tmp_path, ca, users)
    url, context = f"https://127.0.0.1:{port}/metrics", trusting(ca)
    proc.wait_for(lambda: fetch(url, context, "prometheus:first") == 200, "the first password")

    web_yml.write_text(TLS_WEB + f"basic_auth_users: {{prometheus: '{hashed('second')}'}}\n")
    assert fetch(url, context, "prometheus:first") == 401  # verified before, refused now
    assert fetch(url, context, "prometheus:second") == 200

    web_yml.write_text(TLS_WEB)  # no users: no password asked
    assert fetch(url, context) == 200
    assert proc.stop() == 0


def test_web_config_headers_are_on_every_response_and_a_change_applies_to_the_next(
    tmp_path: Path, ca: trustme.CA
) -> None:
    def header(url: str, context: ssl.SSLContext) -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as resp:
                return str(resp.headers.get("X-Frame-Options"))
        except urllib.error.HTTPError as err:  # the 401 carries them too
            return str(err.headers.get("X-Frame-Options"))
        except (urllib.error.URLError, ConnectionError):  # not listening yet
            return None

    users = f"basic_auth_users: {{prometheus: '{hashed('first')}'}}\n"
    headers = "http_server_config: {headers: {X-Frame-Options: %s}}\n"
    proc, web_yml, port = launch_tls(tmp_path, ca, users + headers % "deny")
    url, context = f"https://127.0.0.1:{port}/metrics", trusting(ca)
    proc.wait_for(lambda: header(url, context) == "deny", "the configured header")

    web_yml.write_text(TLS_WEB + users + headers % "sameorigin")
    assert header(url, context) == "sameorigin"
    assert proc.stop() == 0


def test_an_invalid_change_to_the_web_config_is_logged_and_the_last_good_one_kept(
    tmp_path: Path, ca: trustme.CA
) -> None:
    users = f"basic_auth_users: {{prometheus: '{hashed('first')}'}}\n"
    proc, web_yml, port = launch_tls(tmp_path, ca, users, "--log.format", "json")
    url, context = f"https://127.0.0.1:{port}/metrics", trusting(ca)
    proc.wait_for(lambda: fetch(url, context, "prometheus:first") == 200, "the first password")

    web_yml.write_text(TLS_WEB + "basic_auth_user: {}\n")  # a typo: an unknown key
    assert fetch(url, context, "prometheus:first") == 200
    assert fetch(url, context) == 401

    web_yml.write_text(TLS_WEB + "tls_server_config: {min_version: TLS13}\n")  # a duplicate key
    assert fetch(url, context, "prometheus:first") == 200
    assert proc.stop() == 0
    errors = [
        line["msg"]
        for line in map(json.loads, proc.log.read_text().splitlines())
        if line["level"] == "error"
    ]
    assert len(errors) == 2, errors
    assert errors[0].startswith("web config not reloaded, keeping the last good one:")
    assert f"{web_yml.name}:2" in errors[0] and 'unknown key "basic_auth_user"' in errors[0]
    assert f"{web_yml.name}:2" in errors[1]


def test_tls_settings_beyond_the_certificate_wait_for_a_restart_and_say_so(
    tmp_path: Path, ca: trustme.CA
) -> None:
    proc, web_yml, port = launch_tls(tmp_path, ca)
    url, context = f"https://127.0.0.1:{port}/-/ready", trusting(ca)
    proc.wait_for(lambda: fetch(url, context) == 200, "TLS")

    web_yml.write_text(
        "tls_server_config: {cert_file: cert.pem, key_file: key.pem, min_version: TLS13}\n"
    )
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    assert fetch(url, context) == 200  # TLS 1.2 still accepted until the restart
    assert proc.stop() == 0
    assert "take effect at the next restart" in proc.log.read_text()


@pytest.mark.parametrize(
    ("asked", "file_limit", "probes", "expected"),
    [
        (0, 1024, 128, 1024 - 2 * 128 - 64),  # the common soft limit, raised or not
        (0, 1 << 20, 128, 1024),  # a generous limit: the ceiling
        (500, 1024, 128, 500),
        (2000, 1024, 128, 1024 - 2 * 128 - 64),  # never into the probes' share
        (0, 256, 128, 8),  # too small for both: a few connections, and a warning
        (0, None, 128, 1024),  # no file limit (Windows)
    ],
)
def test_the_web_connection_limit_leaves_the_probes_their_share_of_the_file_limit(
    asked: int, file_limit: int | None, probes: int, expected: int
) -> None:
    from sla_exporter.cli import web_connection_limit

    assert web_connection_limit(asked, file_limit, probes) == expected
