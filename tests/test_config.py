"""The SLA file: golden errors for bad configs, defaults, secrets and maintenance windows."""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import SecretStr

from sla_exporter.config import Config, Maintenance, load, parse
from sla_exporter.loader import ConfigInvalid, load_model
from sla_exporter.probes.http import HTTPProbe
from sla_exporter.probes.sms_gateway import SMSGatewayProbe
from sla_exporter.probes.smtp import SMTPProbe
from sla_exporter.values import ExistingFile, Model

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "tests" / "configs" / "bad"
GOOD = ROOT / "tests" / "configs" / "good"
EXAMPLES = ROOT / "examples"

# Set for every golden: appears in configs through !env and must never appear in a message.
GOLDEN_SECRET = "golden-secret-9f2c"
# `UPDATE_GOLDEN=1 pytest tests/test_config.py` rewrites the .expected files; review the diff.
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


@pytest.fixture
def golden_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment the bad configs are written against, and their directory as cwd."""
    monkeypatch.setenv("SLA_TEST_TOKEN", GOLDEN_SECRET)
    monkeypatch.setenv("SLA_TEST_EMPTY", "")
    monkeypatch.delenv("SLA_TEST_UNSET", raising=False)
    monkeypatch.chdir(BAD)


def errors_of(text: str, file: str = "sla.yml", base_dir: Path | None = None) -> str:
    with pytest.raises(ConfigInvalid) as info:
        parse(text, file, base_dir=base_dir)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# Golden bad configs


@pytest.mark.parametrize("name", sorted(p.name for p in BAD.glob("*.yml")))
def test_a_bad_config_reports_exactly_its_expected_errors(golden_env: None, name: str) -> None:
    expected_file = BAD / name.replace(".yml", ".expected")
    with pytest.raises(ConfigInvalid) as info:
        load(name)  # relative to the cwd (BAD), so messages carry the base name
    actual = str(info.value)
    if UPDATE:
        expected_file.write_text(actual + "\n")
    assert actual == expected_file.read_text().rstrip("\n")


def test_every_golden_config_has_an_expected_file_and_the_reverse() -> None:
    configs = {p.stem for p in BAD.glob("*.yml")}
    expected = {p.stem for p in BAD.glob("*.expected")}
    assert configs == expected


@pytest.mark.parametrize("name", sorted(p.name for p in BAD.glob("*.yml")))
def test_messages_show_no_secret_and_no_pydantic_internals(golden_env: None, name: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        load(name)
    text = str(info.value)
    assert GOLDEN_SECRET not in text
    for internal in (
        "[key]",
        "function-",
        "is-instance",
        "literal[",
        "Input should",
        "pydantic",
        "SecretStr",
        "Value error",
        "json-or-python",
    ):
        assert internal not in text, f"{internal!r} in {text}"
    # Every error line is `file:line  path: message` with a real line number.
    for line in text.splitlines()[1:]:
        assert re.match(rf"^  {re.escape(name)}:[1-9]\d*  \S", line), line


def test_the_summary_line_counts_the_errors(golden_env: None) -> None:
    with pytest.raises(ConfigInvalid) as info:
        load("several_errors_at_once.yml")
    assert str(info.value).splitlines()[0] == "several_errors_at_once.yml: 8 errors"
    assert len(info.value.errors) == 8
    assert [e.line for e in info.value.errors] == sorted(e.line for e in info.value.errors)


def test_an_error_inside_a_step_points_at_the_step_line() -> None:
    text = """\
sla: {name: x}
services:
  app:
    http:
      steps:
        - url: https://app.example.com/login
        - method: POST
          form: {user: probe}
          url: not-a-url
"""
    assert errors_of(text) == (
        "sla.yml: 1 error\n"
        "  sla.yml:9  services.app.http.steps[1].url: "
        'must be an http:// or https:// URL with a host, got "not-a-url"'
    )


def test_a_missing_key_in_a_step_points_at_the_step() -> None:
    text = """\
sla: {name: x}
services:
  app:
    http:
      steps:
        - url: https://app.example.com/login
        - method: POST
"""
    assert errors_of(text) == (
        "sla.yml: 1 error\n  sla.yml:7  services.app.http.steps[1].url: required key is missing"
    )


def test_a_file_that_cannot_be_read_is_one_error_without_a_line(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"
    with pytest.raises(ConfigInvalid) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: 1 error\n  {path}  cannot read the file: No such file or directory"
    )


def test_a_file_that_is_not_utf8_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yml"
    path.write_bytes("sla: {name: Zürich}\n".encode("latin-1"))
    with pytest.raises(ConfigInvalid) as info:
        load(path)
    assert "the file is not UTF-8 text" in str(info.value)


def test_an_unknown_key_inside_a_service_named_like_a_probe_kind_gets_the_right_hint() -> None:
    # The service name "http" must not be mistaken for the probe section when finding hints.
    text = "sla: {name: x}\nservices:\n  http:\n    http: {url: 'http://a/', expct: {}}\n"
    assert 'unknown key "expct"; did you mean "expect"?' in errors_of(text)


def test_a_key_is_the_text_written_not_what_yaml_1_1_makes_of_it() -> None:
    text = "sla: {name: x}\nservices:\n  404:\n    http: {url: 'http://a/'}\n"
    assert "services.404: service names must start with a lower-case letter" in errors_of(text)


@pytest.mark.parametrize("zone", ["Europe", "../etc/passwd", "a" * 300, ""])
def test_a_time_zone_that_is_not_a_zone_file_is_a_plain_error(zone: str) -> None:
    text = MINIMAL.replace("name: x", f"name: x, timezone: '{zone}'") % "description: ''"
    assert errors_of(text).splitlines()[1:] == [
        '  sla.yml:1  sla.timezone: must be an IANA time zone like "Europe/Zurich", got '
        + json.dumps(zone if len(zone) <= 80 else zone[:79] + "…", ensure_ascii=False)
    ]


def test_aliases_that_multiply_are_capped() -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    text = "\n".join(lines) + "\nsla: {name: x}\n"
    assert "too many values (over 100000); check the aliases" in errors_of(text)


def test_a_file_of_many_services_is_not_mistaken_for_an_alias_bomb(tmp_path: Path) -> None:
    """Sharded exporters share one file of up to 100,000 services (docs/SCALING.md): more values
    than the fixed cap, but no more than the file holds, so nothing multiplies them."""
    count = 34_000  # 3 values each (service, http, url): 102,000, over the 100,000 floor
    lines = [f"  s{i}: {{http: {{url: 'http://127.0.0.1:9/{i}'}}}}" for i in range(count)]
    path = tmp_path / "sla.yml"
    path.write_text("sla: {name: x}\nservices:\n" + "\n".join(lines) + "\n")
    assert len(load(path).services) == count


def test_aliases_that_multiply_a_large_file_are_capped_by_its_size() -> None:
    bomb = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    filler = [f"f{i}: [1, 2, 3, 4, 5, 6, 7, 8, 9]" for i in range(2_000)]  # 20,001 values
    text = "\n".join(bomb + filler) + "\nsla: {name: x}\n"
    # 10 times the values the file holds: the document, the bomb's 18 (aliases count once), the
    # filler's 20,000, `sla` and its name: 20,021.
    assert "too many values (over 200210); check the aliases" in errors_of(text)


# --------------------------------------------------------------------------------------------
# Good configs and defaults


@pytest.fixture
def example_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """examples/sla.yml copied into a directory that also holds its secret file."""
    monkeypatch.setenv("APP_PROBE_PASSWORD", "app-password-value")
    monkeypatch.setenv("MAILPRO_API_TOKEN", "api-token-value")
    monkeypatch.setenv("SMS_GATEWAY_TOKEN", "sms-token-value")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "smtp_password").write_text("smtp-password-value\n")
    (tmp_path / "secrets" / "mailbox_password").write_text("mailbox-password-value\n")
    (tmp_path / "secrets" / "support_token").write_text("support-token-value-0123\n")
    path = tmp_path / "sla.yml"
    shutil.copy(EXAMPLES / "sla.yml", path)
    return path


def test_the_annotated_example_loads_with_its_secrets(example_env: Path) -> None:
    config = load(example_env)
    assert config.sla.name == "Mailpro IT infrastructure"
    assert config.sla.timezone == "Europe/Zurich"
    assert {name: s.kind for name, s in config.services.items()} == {
        "website": "http",
        "app": "http",
        "api": "http",
        "smtp": "smtp",
        "smtp-delivery": "mail_delivery",
        "sender-domain": "mail_domain",
        "sms": "sms_gateway",
    }
    assert {name: s.interval for name, s in config.services.items()} == {
        "website": 300,
        "app": 60,
        "api": 60,
        "smtp": 60,
        "smtp-delivery": 60,
        "sender-domain": 300,
        "sms": 60,
    }
    assert all(config.objective(name) == 0.99 for name in config.services)
    smtp = config.services["smtp"].smtp
    assert smtp is not None and smtp.auth is not None
    assert smtp.effective_port == 587 and smtp.effective_starttls == "required"
    assert smtp.auth.password.get_secret_value() == "smtp-password-value"
    api = config.services["api"].http
    assert api is not None
    assert api.headers["X-Api-Key"] == SecretStr("api-token-value")
    assert api.headers["User-Agent"] == "sla-exporter (Mailpro SLA probe; ops@example.com)"
    sms = config.services["sms"].sms_gateway
    assert sms is not None and sms.token is not None and sms.send_test is not None
    assert sms.token.get_secret_value() == "sms-token-value"
    assert sms.send_test.enabled is False and sms.send_test.to == "+41790000000"
    app = config.services["app"].http
    assert app is not None
    flow = app.flow()
    assert [(s.method, s.follow_redirects) for s in flow] == [
        ("GET", "any"),
        ("POST", "none"),
        ("GET", "any"),
    ]
    assert flow[1].form is not None
    assert flow[1].form["password"] == SecretStr("app-password-value")
    window = config.maintenance[0]
    assert window.services == ["app", "api"]
    assert config.in_maintenance("api", datetime(2026, 3, 14, 23, tzinfo=UTC))
    assert not config.in_maintenance("website", datetime(2026, 3, 14, 23, tzinfo=UTC))


def test_the_example_support_section_models_the_seed_slas(example_env: Path) -> None:
    support = load(example_env).support
    assert support is not None
    assert support.database == str(example_env.parent / "data" / "support.db")
    assert support.token.get_secret_value() == "support-token-value-0123"
    zones = {name: c.timezone for name, c in support.calendars.items()}
    assert zones == {
        "europe": "Europe/Zurich",
        "america": "America/Mexico_City",
        "italy": "Europe/Rome",
    }
    italy = support.calendars["italy"].build("italy")
    assert italy.weekly[0] == ((9 * 3600, 13 * 3600), (14 * 3600, 18 * 3600))
    assert italy.is_closed(date(2026, 12, 25)) and italy.working_day == 8 * 3600
    targets = {
        name: {t: str(v.within) for t, v in p.targets.items()}
        for name, p in support.policies.items()
    }
    assert targets["first-level-europe"] == {"first_response": "4h"}
    assert targets["second-level-america"] == {"first_response": "8h"}
    assert targets["legal-europe"] == {"first_response": "5 working days"}
    assert targets["italy-second-level"] == {
        "first_response": "4h",
        "resolution": "4 working days",
    }


def test_the_example_never_shows_its_secrets(example_env: Path) -> None:
    config = load(example_env)
    for rendering in (
        repr(config),
        str(config),
        config.model_dump_json(),
        str(config.model_dump()),
    ):
        for secret in (
            "app-password-value",
            "api-token-value",
            "sms-token-value",
            "smtp-password",
            "support-token-value",
        ):
            assert secret not in rendering


def test_the_example_names_every_secret_it_needs_in_its_header() -> None:
    text = (EXAMPLES / "sla.yml").read_text()
    header = text.split("\nsla:", 1)[0]
    used = re.findall(r"^[^#\n]*!(?:env|file) (\S+)", text, re.MULTILINE)
    assert len(used) == 7  # smtp_password twice: submission and the delivery probe
    for name in used:
        assert name in header


def test_the_demo_config_probes_loopback_every_few_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ca_file: str
) -> None:
    # Laid out as ./run.sh lays it out: the config in examples/, its CA and password in run/.
    (tmp_path / "examples").mkdir()
    (tmp_path / "run").mkdir()
    shutil.copy(EXAMPLES / "demo.yml", tmp_path / "examples" / "demo.yml")
    shutil.copy(ca_file, tmp_path / "run" / "demo-ca.pem")
    (tmp_path / "run" / "smtp-password").write_text("demo-smtp-password\n")
    monkeypatch.setenv("DEMO_API_TOKEN", "Bearer demo-api-token")
    monkeypatch.setenv("DEMO_SMS_TOKEN", "demo-sms-token")
    config = load(tmp_path / "examples" / "demo.yml")
    assert {name: s.kind for name, s in config.services.items()} == {
        "website": "http",
        "app": "http",
        "api": "http",
        "smtp": "smtp",
        "delivery": "mail_delivery",
        "sender": "mail_domain",
        "sms": "sms_gateway",
    }
    assert all(5 <= s.interval <= 15 for s in config.services.values())
    delivery = config.services["delivery"].mail_delivery
    assert delivery is not None
    assert (delivery.submit.effective_port, delivery.mailbox.effective_port) == (9402, 9403)
    assert delivery.mailbox.password.get_secret_value() == "demo-smtp-password"
    sender = config.services["sender"].mail_domain
    assert sender is not None and sender.nameservers == ["127.0.0.1:9404"]
    smtp = config.services["smtp"].smtp
    assert smtp is not None and smtp.auth is not None
    assert (smtp.host, smtp.effective_port, smtp.effective_starttls) == (
        "127.0.0.1",
        9402,
        "required",
    )
    assert smtp.auth.password.get_secret_value() == "demo-smtp-password"


@pytest.mark.parametrize("name", sorted(p.name for p in GOOD.glob("*.yml")))
def test_a_good_config_loads(name: str) -> None:
    assert isinstance(load(GOOD / name), Config)


def test_anchors_merge_keys_and_x_keys_work() -> None:
    config = load(GOOD / "anchors.yml")
    assert config.services["website"].interval == 30
    assert config.services["api"].interval == 60
    assert config.objective("api") == 0.995
    api = config.services["api"].http
    assert api is not None
    assert api.headers == {"User-Agent": "sla-exporter", "Accept": "application/json"}


def test_smtp_ports_and_starttls_default_by_tls_mode() -> None:
    services = load(GOOD / "smtp_modes.yml").services
    modes = {}
    for name, service in services.items():
        assert isinstance(service.probe, SMTPProbe)
        modes[name] = (service.probe.effective_port, service.probe.effective_starttls)
    assert modes == {
        "mx": (25, "required"),
        "smtps": (465, "off"),
        "plain": (2525, "off"),
        "v6": (25, "opportunistic"),
    }


MINIMAL = "sla: {name: x}\nservices:\n  web:\n    %s\n    http: {url: 'https://a.example/'}\n"


@pytest.mark.parametrize(
    ("interval", "timeout"),
    [("1m", 10.0), ("5m", 10.0), ("10s", 8.0), ("1s", 0.8), ("12500ms", 10.0)],
)
def test_the_default_timeout_is_10s_capped_at_80_percent_of_the_interval(
    interval: str, timeout: float
) -> None:
    service = parse(MINIMAL % f"interval: {interval}").services["web"]
    assert service.timeout is None
    assert service.effective_timeout == pytest.approx(timeout)


def test_an_explicit_timeout_wins() -> None:
    service = parse(MINIMAL % "timeout: 59s").services["web"]
    assert service.effective_timeout == 59


def test_service_defaults_are_what_the_docs_say() -> None:
    config = parse(MINIMAL % "description: ''")
    assert config.sla.timezone == "UTC"
    assert config.sla.objective == 0.99
    assert config.sla.unknown == "down"
    assert config.maintenance == []
    service = config.services["web"]
    assert service.interval == 60
    assert service.objective is None
    http = service.http
    assert isinstance(http, HTTPProbe)
    assert http.method == "GET" and http.follow_redirects == "any"
    assert http.max_body_bytes == 1 << 20
    assert http.tls.verify is True and http.tls.ca_file is None
    assert http.expect.accepts_status(204) and not http.expect.accepts_status(301)


def test_sms_gateway_defaults_to_a_bearer_token() -> None:
    text = "sla: {name: x}\nservices:\n  sms: {sms_gateway: {url: 'https://s.example/'}}\n"
    probe = parse(text).services["sms"].probe
    assert isinstance(probe, SMSGatewayProbe)
    assert (probe.method, probe.token, probe.token_header, probe.token_prefix) == (
        "GET",
        None,
        "Authorization",
        "Bearer ",
    )


@pytest.mark.parametrize("word", ["off", "no", "false", '"off"'])
def test_starttls_off_means_off_even_when_yaml_reads_a_boolean(word: str) -> None:
    text = f"sla: {{name: x}}\nservices:\n  mx: {{smtp: {{host: mx, starttls: {word}}}}}\n"
    probe = parse(text).services["mx"].probe
    assert isinstance(probe, SMTPProbe)
    assert probe.starttls == "off" and probe.effective_starttls == "off"


def test_implicit_tls_with_starttls_off_is_fine() -> None:
    text = (
        "sla: {name: x}\nservices:\n  mx: {smtp: {host: mx, implicit_tls: true, starttls: off}}\n"
    )
    probe = parse(text).services["mx"].probe
    assert isinstance(probe, SMTPProbe)
    assert (probe.effective_port, probe.effective_starttls) == (465, "off")


def test_a_service_objective_overrides_the_sla_objective() -> None:
    text = """\
sla: {name: x, objective: 0.995}
services:
  web: {http: {url: 'https://a.example/'}}
  api: {objective: 0.999, http: {url: 'https://b.example/'}}
"""
    config = parse(text)
    assert config.objective("web") == 0.995
    assert config.objective("api") == 0.999


def test_single_request_flow_carries_the_probe_settings() -> None:
    text = """\
sla: {name: x}
services:
  web:
    http:
      url: https://a.example/login
      method: POST
      form: {user: probe}
      headers: {Accept: text/html}
      follow_redirects: false
      expect: {status: [302]}
"""
    http = parse(text).services["web"].http
    assert http is not None
    [step] = http.flow()
    assert (step.url, step.method, step.form, step.headers, step.follow_redirects) == (
        "https://a.example/login",
        "POST",
        {"user": "probe"},
        {"Accept": "text/html"},
        "none",
    )
    assert step.expect.status == [302]


def test_step_headers_extend_and_override_the_probe_headers() -> None:
    text = """\
sla: {name: x}
services:
  web:
    http:
      headers: {Accept: text/html, User-Agent: probe}
      steps:
        - url: https://a.example/
        - url: https://a.example/api
          headers: {Accept: application/json}
"""
    http = parse(text).services["web"].http
    assert http is not None
    assert [s.headers for s in http.flow()] == [
        {"Accept": "text/html", "User-Agent": "probe"},
        {"Accept": "application/json", "User-Agent": "probe"},
    ]


def test_a_relative_ca_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not checked here\n")
    path = tmp_path / "sla.yml"
    path.write_text(
        "sla: {name: x}\nservices:\n  web: {http: {url: 'https://a/', tls: {ca_file: ca.pem}}}\n"
    )
    http = load(path).services["web"].http
    assert http is not None
    assert http.tls.ca_file == str(tmp_path / "ca.pem")


# --------------------------------------------------------------------------------------------
# Secrets


SECRETS = """\
sla: {name: x}
services:
  api:
    http:
      url: https://api.example/
      headers: {Authorization: !env SLA_TEST_API_TOKEN}
  mx:
    smtp:
      host: mx.example
      auth: {username: probe, password: !file %s}
"""


@pytest.fixture
def secrets_text(monkeypatch: pytest.MonkeyPatch, secret_file: Path) -> str:
    monkeypatch.setenv("SLA_TEST_API_TOKEN", "Bearer env-secret-value")
    return SECRETS % secret_file


def test_secrets_load_into_secret_strings(secrets_text: str) -> None:
    config = parse(secrets_text)
    api = config.services["api"].http
    mx = config.services["mx"].smtp
    assert api is not None and mx is not None and mx.auth is not None
    token = api.headers["Authorization"]
    assert isinstance(token, SecretStr)
    assert token.get_secret_value() == "Bearer env-secret-value"
    # The file's final newline is not part of the secret.
    assert mx.auth.password.get_secret_value() == "s3cr3t-value"


def test_secret_values_never_appear_when_the_config_is_printed(secrets_text: str) -> None:
    config = parse(secrets_text)
    for rendering in (
        repr(config),
        str(config),
        config.model_dump_json(),
        str(config.model_dump()),
    ):
        assert "env-secret-value" not in rendering
        assert "s3cr3t-value" not in rendering


def test_secret_values_never_appear_in_errors_elsewhere_in_the_file(secrets_text: str) -> None:
    text = secrets_text.replace("url: https://api.example/", "url: ftp://api.example/\n      x: 1")
    text = text.replace("host: mx.example", "host: mx.example\n      port: 0")
    message = errors_of(text)
    assert message.splitlines()[0] == "sla.yml: 3 errors"
    assert "env-secret-value" not in message
    assert "s3cr3t-value" not in message


def test_a_secret_in_a_plain_field_is_refused_without_showing_it(secrets_text: str) -> None:
    text = secrets_text.replace("username: probe", "username: !env SLA_TEST_API_TOKEN")
    message = errors_of(text)
    assert "services.mx.smtp.auth.username: cannot be a secret (!env or !file)" in message
    assert "env-secret-value" not in message


def test_a_relative_file_secret_is_read_from_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLA_TEST_API_TOKEN", "t")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text("relative-secret\r\n")
    path = tmp_path / "sla.yml"
    path.write_text(SECRETS % "secrets/pw")
    monkeypatch.chdir("/")
    mx = load(path).services["mx"].smtp
    assert mx is not None and mx.auth is not None
    assert mx.auth.password.get_secret_value() == "relative-secret"


def test_parse_takes_the_base_directory_for_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLA_TEST_API_TOKEN", "t")
    (tmp_path / "pw").write_text("from-base-dir")
    mx = parse(SECRETS % "pw", "sla.yml", base_dir=tmp_path).services["mx"].smtp
    assert mx is not None and mx.auth is not None
    assert mx.auth.password.get_secret_value() == "from-base-dir"


def test_a_secret_file_that_is_not_text_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "pw").write_bytes(b"\xff\xfe\x00")
    message = errors_of(SECRETS.replace("!env SLA_TEST_API_TOKEN", "x") % "pw", base_dir=tmp_path)
    assert 'services.mx.smtp.auth.password: secret file "pw" is not UTF-8 text' in message


# --------------------------------------------------------------------------------------------
# Maintenance windows


def window(start: str, end: str) -> Maintenance:
    return Maintenance.model_validate({"services": ["web"], "start": start, "end": end})


def test_a_window_covers_its_start_but_not_its_end() -> None:
    w = window("2026-11-28T22:00:00+01:00", "2026-11-29T02:00:00+01:00")
    start = datetime(2026, 11, 28, 21, 0, tzinfo=UTC)
    end = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)
    assert not w.covers("web", start - timedelta(microseconds=1))
    assert w.covers("web", start)
    assert w.covers("web", end - timedelta(microseconds=1))
    assert not w.covers("web", end)


def test_a_window_compares_instants_across_utc_offsets() -> None:
    w = window("2026-11-28T22:00:00+01:00", "2026-11-28T23:00:00+01:00")
    new_york = timezone(timedelta(hours=-5))
    assert w.covers("web", datetime(2026, 11, 28, 16, 30, tzinfo=new_york))
    assert not w.covers("web", datetime(2026, 11, 28, 22, 30, tzinfo=new_york))
    assert w.covers("web", datetime(2026, 11, 28, 21, 59, tzinfo=UTC))


def test_a_window_covers_only_its_services() -> None:
    w = window("2026-11-28T22:00:00+01:00", "2026-11-28T23:00:00+01:00")
    assert not w.covers("api", datetime(2026, 11, 28, 21, 30, tzinfo=UTC))


def test_a_window_refuses_a_naive_time() -> None:
    w = window("2026-11-28T22:00:00+01:00", "2026-11-28T23:00:00+01:00")
    with pytest.raises(ValueError, match="timezone-aware"):
        w.covers("web", datetime(2026, 11, 28, 22, 30))


def test_yaml_timestamps_with_z_and_offsets_load_as_aware_datetimes() -> None:
    text = """\
sla: {name: x}
services:
  web: {http: {url: 'https://a.example/'}}
maintenance:
  - services: [web]
    start: 2026-11-28T21:00:00Z
    end: "2026-11-28T23:00:00+01:00"
"""
    [w] = parse(text).maintenance
    assert w.start == datetime(2026, 11, 28, 21, tzinfo=UTC)
    assert w.end - w.start == timedelta(hours=1)


# --------------------------------------------------------------------------------------------
# Other YAML files read the same way


class Listener(Model):
    cert_file: ExistingFile
    password: SecretStr
    port: int = 9141


def test_load_model_reads_another_file_with_the_same_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLA_TEST_LISTENER", "listener-secret")
    (tmp_path / "cert.pem").write_text("-")
    path = tmp_path / "web.yml"
    path.write_text("cert_file: cert.pem\npassword: !env SLA_TEST_LISTENER\n")
    listener = load_model(path, Listener)
    assert listener.cert_file == str(tmp_path / "cert.pem")
    assert listener.password.get_secret_value() == "listener-secret"
    assert listener.port == 9141


def test_load_model_reports_every_error_in_the_usual_format(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("cert_file: missing.pem\nprot: 9141\n")
    with pytest.raises(ConfigInvalid) as info:
        load_model(path, Listener)
    assert str(info.value) == (
        f"{path}: 3 errors\n"
        f'  {path}:1  cert_file: must be a readable file, got "missing.pem"\n'
        f"  {path}:1  password: required key is missing\n"
        f'  {path}:2  prot: unknown key "prot"; did you mean "port"?'
    )


def test_unknown_may_be_down_or_excluded() -> None:
    text = MINIMAL.replace("name: x", "name: x, unknown: excluded") % "description: ''"
    assert parse(text).sla.unknown == "excluded"
    message = errors_of(MINIMAL.replace("name: x", "name: x, unknown: up") % "description: ''")
    assert 'sla.unknown: must be "down" or "excluded", got "up"' in message
