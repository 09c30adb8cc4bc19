"""docker-compose.yml and exporter/Dockerfile, checked statically (no Docker daemon here).

What can break without anyone running `docker compose up`: a mount of a path that was moved, a
writable mount of the repository, an unpinned image, a service without a health check, a scrape
target or webhook that names no service or the wrong port, provisioning that looks where nothing
is mounted, an entrypoint that is not a console script, and the compose twins of the shipped
configs (prometheus.compose.yml, alertmanager.compose.yml, demo.compose.yml) drifting from their
originals. promtool and amtool check the compose configs as they check the shipped ones.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

import sla_demo as demo
from tests.helpers import tool
from tests.stack import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "exporter" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_COMPOSE = ROOT / "prometheus" / "prometheus.compose.yml"
PROMETHEUS_HA = ROOT / "prometheus" / "prometheus.ha.yml"
ALERTMANAGER = ROOT / "alertmanager" / "alertmanager.yml"
ALERTMANAGER_COMPOSE = ROOT / "alertmanager" / "alertmanager.compose.yml"
DEMO = ROOT / "examples" / "demo.yml"
DEMO_COMPOSE = ROOT / "examples" / "demo.compose.yml"
PROVISIONING = ROOT / "grafana" / "provisioning"

COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The image installs the exporter and the demo (a project of its own, demo/pyproject.toml).
CONSOLE_SCRIPTS = set(PYPROJECT["project"]["scripts"]) | set(
    tomllib.loads((ROOT / "demo" / "pyproject.toml").read_text())["project"]["scripts"]
)


def expand(value: str) -> str:
    """Compose variable interpolation with nothing set: `${VAR:-default}` is the default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def mounts(service: str) -> list[tuple[str, str, str]]:
    """(source, target, options) of every volume of `service`, short syntax."""
    result = []
    for volume in SERVICES[service].get("volumes", []):
        source, target, *options = expand(volume).split(":")
        result.append((source, target, options[0] if options else "rw"))
    return result


def bind_mounts(service: str) -> dict[str, Path]:
    """Container path -> repository path of the bind mounts of `service`."""
    return {
        target: (ROOT / source).resolve()
        for source, target, _ in mounts(service)
        if source.startswith((".", "/"))
    }


def flags(service: str) -> dict[str, str]:
    """The command-line flags of `service`: {"--config.file": "/etc/...", "--web.x": ""}."""
    return dict(argument.partition("=")[::2] for argument in SERVICES[service]["command"])


def exposed(service: str) -> set[int]:
    return {int(port) for port in SERVICES[service].get("expose", [])}


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def assert_names_a_service(address: str, where: str) -> None:
    host, port = host_port(address)
    assert host in SERVICES, f"{where}: {host} is not a compose service"
    assert port in exposed(host), f"{where}: {host} does not listen on {port}"


# ------------------------------------------------------------------------------------------------
# The compose file
# ------------------------------------------------------------------------------------------------


def test_the_compose_file_has_the_whole_bundle_and_the_ha_profile_the_second_of_each() -> None:
    always = {name for name, service in SERVICES.items() if "profiles" not in service}
    assert always == {
        "demo",
        "exporter",
        "prometheus",
        "alertmanager",
        "victoriametrics",
        "grafana",
    }
    ha = {name for name, service in SERVICES.items() if service.get("profiles") == ["ha"]}
    assert ha == {"exporter-b", "prometheus-b", "alertmanager-b"}
    assert set(SERVICES) == always | ha


# The HA twins: the same service but for these keys (tests/test_compose.py checks the values).
TWIN_KEYS = {"profiles", "ports", "volumes", "environment"}


@pytest.mark.parametrize("twin", ["exporter-b", "prometheus-b", "alertmanager-b"])
def test_each_ha_twin_is_its_first_half_with_a_volume_and_a_port_of_its_own(twin: str) -> None:
    first = twin.removesuffix("-b")
    original, copy = SERVICES[first], SERVICES[twin]
    assert {k: v for k, v in copy.items() if k not in TWIN_KEYS} == {
        k: v for k, v in original.items() if k not in TWIN_KEYS
    }
    # The same files, but each its own data: two Prometheus or two ledgers on one volume would
    # overwrite each other.
    assert {t: s for s, t, _ in mounts(twin) if s.startswith(".") or "$" in s} == {
        t: s for s, t, _ in mounts(first) if s.startswith(".") or "$" in s
    }
    named = {s for s, _, o in mounts(twin) if s in COMPOSE["volumes"] and o == "rw"}
    assert named and not named & {s for s, _, _ in mounts(first)}
    host_ports = {p.rsplit(":", 2)[1] for p in copy["ports"] + original["ports"]}
    assert len(host_ports) == 2, (original["ports"], copy["ports"])
    assert [p.rsplit(":", 1)[1] for p in copy["ports"]] == [
        p.rsplit(":", 1)[1] for p in original["ports"]
    ]


def aliases(name: str) -> set[str]:
    networks = SERVICES[name].get("networks") or {}
    return set((networks.get("default") or {}).get("aliases") or [])


def test_the_members_of_each_pair_find_each_other_by_an_alias_they_both_carry() -> None:
    assert aliases("exporter") == aliases("exporter-b") == {"sla-exporters"}
    assert aliases("alertmanager") == aliases("alertmanager-b") == {"alertmanagers"}
    assert "--replica.peer=http://sla-exporters:9141" in SERVICES["exporter"]["command"]
    assert "--cluster.peer=alertmanagers:9094" in SERVICES["alertmanager"]["command"]
    assert flags("alertmanager")["--cluster.listen-address"] == "0.0.0.0:9094"
    assert 9094 in exposed("alertmanager")
    replicas = {
        SERVICES[n]["environment"]["PROMETHEUS_REPLICA"] for n in ("prometheus", "prometheus-b")
    }
    assert replicas == {"a", "b"}
    assert "--enable-feature=expand-external-labels" in SERVICES["prometheus"]["command"]


def test_victoriametrics_keeps_400_days_and_one_sample_of_the_pairs_identical_series() -> None:
    command = dict(a.partition("=")[::2] for a in SERVICES["victoriametrics"]["command"])
    assert command["-retentionPeriod"] == "400d"
    prometheus = yaml.safe_load(PROMETHEUS_COMPOSE.read_text())
    assert command["-dedup.minScrapeInterval"] == prometheus["global"]["scrape_interval"]
    data = {t: s for s, t, _ in mounts("victoriametrics")}[command["-storageDataPath"]]
    assert data in COMPOSE["volumes"]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_mounted_path_exists_and_repository_files_are_read_only(service: str) -> None:
    for source, target, options in mounts(service):
        if source.startswith((".", "/")):
            assert (ROOT / source).exists(), f"{service}: {source} does not exist"
            assert "ro" in options.split(","), f"{service}: {source} mounted writable"
        else:
            assert source in COMPOSE["volumes"], f"{service}: volume {source} is not declared"
        assert target.startswith("/"), target


def test_every_secret_file_exists_and_every_secret_used_is_declared() -> None:
    for name, secret in COMPOSE["secrets"].items():
        assert (ROOT / secret["file"]).is_file(), name
    for name, service in SERVICES.items():
        for secret in service.get("secrets", []):
            assert secret in COMPOSE["secrets"], f"{name}: secret {secret} is not declared"


def test_the_demo_secrets_are_what_the_demo_services_accept() -> None:
    """Otherwise the compose demo would show every probe failing on authentication."""

    def secret(name: str) -> str:
        return (ROOT / str(COMPOSE["secrets"][name]["file"])).read_text().strip()

    assert secret("demo_api_token") == f"Bearer {demo.API_TOKEN}"
    assert secret("demo_sms_token") == demo.SMS_TOKEN
    assert secret("demo_smtp_password") == demo.SMTP_PASSWORD


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_image_is_pinned(service: str) -> None:
    image = SERVICES[service]["image"]
    name, _, tag = image.rpartition(":")
    assert name and tag and tag != "latest", f"{service}: {image} is not pinned to a version"
    if "build" in SERVICES[service]:
        # Our own image is tagged with the package version it is built from.
        assert (name, tag) == ("sla-exporter", PYPROJECT["project"]["version"])
        assert (ROOT / SERVICES[service]["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert (ROOT / SERVICES[service]["build"]["context"]).resolve() == ROOT


def test_the_pinned_versions_are_the_ones_the_docs_name() -> None:
    images = {SERVICES[name]["image"] for name in SERVICES}
    assert any(re.fullmatch(r"prom/prometheus:v2\.53\.\d+", image) for image in images)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_has_a_health_check_on_a_port_it_listens_on(service: str) -> None:
    check = SERVICES[service]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    (port,) = re.findall(r"http://127\.0\.0\.1:(\d+)/", " ".join(check["test"]))
    assert int(port) in exposed(service), f"{service}: checks {port}, exposes {exposed(service)}"
    assert {"interval", "timeout", "retries"} <= set(check)


def test_depends_on_names_services_with_health_checks() -> None:
    for name, service in SERVICES.items():
        for other, condition in service.get("depends_on", {}).items():
            assert other in SERVICES, f"{name} depends on unknown {other}"
            assert condition["condition"] == "service_healthy"
            assert "healthcheck" in SERVICES[other]


# ------------------------------------------------------------------------------------------------
# The image
# ------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"use the exec form: {arguments}"
    return [str(item) for item in value]


def test_the_image_is_python_slim_and_runs_as_an_unprivileged_user() -> None:
    instructions = dockerfile_instructions()
    bases = [args for kind, args in instructions if kind == "FROM"]
    assert all(base.startswith("python:3.11-slim") for base in bases), bases
    users = [args for kind, args in instructions if kind == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("0", "root")


def test_the_entrypoints_are_console_scripts_and_their_flags_exist() -> None:
    instructions = dict(dockerfile_instructions())
    entrypoint = exec_form(instructions["ENTRYPOINT"])
    assert entrypoint[0] in CONSOLE_SCRIPTS
    runs = [(entrypoint, exec_form(instructions["CMD"]))]
    for name, service in SERVICES.items():
        if "build" in service:
            command = service.get("entrypoint", entrypoint)
            assert command[0] in CONSOLE_SCRIPTS, name
            runs.append((command, service.get("command", [])))
    for command, arguments in runs:
        # `--help` of the installed console script lists every flag the container passes.
        help_text = subprocess.run(
            [*command, "--help"], capture_output=True, text=True, check=True, timeout=60
        ).stdout
        for argument in arguments:
            flag = argument.split("=", 1)[0]
            assert re.search(rf"(^|\s){re.escape(flag)}\b", help_text), f"{command[0]}: {flag}"


def test_the_dockerignore_lets_through_what_the_dockerfile_copies() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.startswith("!")
    ]
    # An allow-list: everything is left out ("*") but what is let back in ("!path").
    assert "*" in DOCKERIGNORE.read_text().splitlines()
    for kind, arguments in dockerfile_instructions():
        if kind == "COPY" and "--from" not in arguments:
            *sources, _ = shlex.split(arguments)
            for source in sources:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
                assert (ROOT / source).exists(), source


# ------------------------------------------------------------------------------------------------
# Prometheus
# ------------------------------------------------------------------------------------------------


def test_the_compose_prometheus_config_passes_promtool() -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "config", str(PROMETHEUS_COMPOSE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "PROMETHEUS_REPLICA": "a"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_prometheus_config_says_what_the_shipped_ha_one_says() -> None:
    """prometheus.ha.yml (which tests/test_ha_config.py holds to prometheus.yml) but for the
    addresses: names found by DNS instead of loopback targets."""
    shipped = yaml.safe_load(PROMETHEUS_HA.read_text())
    compose = yaml.safe_load(PROMETHEUS_COMPOSE.read_text())
    for job in shipped["scrape_configs"]:
        [static] = job.pop("static_configs")
        job["targets"], job["labels"] = port_of(static["targets"]), static["labels"]
    for job in compose["scrape_configs"]:
        [dns] = job.pop("dns_sd_configs")
        [relabel] = job.pop("relabel_configs")
        job["targets"], job["labels"] = (
            [dns["port"]],
            {relabel["target_label"]: relabel["replacement"]},
        )
    for manager in shipped["alerting"]["alertmanagers"]:
        [static] = manager.pop("static_configs")
        manager["targets"] = port_of(static["targets"])
    for manager in compose["alerting"]["alertmanagers"]:
        [dns] = manager.pop("dns_sd_configs")
        manager["targets"] = [dns["port"]]
    for config in (shipped, compose):
        for write in config["remote_write"]:
            write["url"] = urllib.parse.urlsplit(write["url"])._replace(netloc="HOST").geturl()
    assert compose == shipped


def port_of(targets: list[str]) -> list[int]:
    """The port of the first of `targets`: on loopback the pair listens on two ports, in
    compose on one port of two containers, under one DNS name."""
    return [host_port(targets[0])[1]]


def test_prometheus_scrapes_alerts_and_writes_to_compose_services() -> None:
    config = yaml.safe_load(PROMETHEUS_COMPOSE.read_text())
    found = [
        (dns, where)
        for job in config["scrape_configs"]
        for dns in job["dns_sd_configs"]
        for where in [f"scrape job {job['job_name']}"]
    ] + [
        (dns, "alerting")
        for m in config["alerting"]["alertmanagers"]
        for dns in m["dns_sd_configs"]
    ]
    for dns, where in found:
        assert dns["type"] == "A"
        for name in dns["names"]:
            carriers = [service for service in SERVICES if name in aliases(service)]
            assert len(carriers) == 2, f"{where}: {name} is the alias of {carriers}"
            for service in carriers:
                assert dns["port"] in exposed(service), f"{where}: {service} on {dns['port']}"
    for write in config["remote_write"]:
        assert_names_a_service(urllib.parse.urlsplit(write["url"]).netloc, "remote_write")


def test_prometheus_reads_the_mounted_config_and_rules_and_keeps_400_days() -> None:
    assert flags("prometheus")["--storage.tsdb.retention.time"] == "400d"
    binds = bind_mounts("prometheus")
    config_path = flags("prometheus")["--config.file"]
    assert binds[config_path] == PROMETHEUS_COMPOSE
    config = yaml.safe_load(PROMETHEUS_COMPOSE.read_text())
    for pattern in config["rule_files"]:
        # Relative to the config file's directory, as Prometheus resolves them.
        directory = str(Path(config_path).parent / Path(pattern).parent)
        assert binds[directory] == (ROOT / "prometheus" / "rules").resolve()


# ------------------------------------------------------------------------------------------------
# Alertmanager
# ------------------------------------------------------------------------------------------------


def webhooks(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        hook for receiver in config["receivers"] for hook in receiver.get("webhook_configs", [])
    ]


def test_the_compose_alertmanager_config_passes_amtool() -> None:
    result = subprocess.run(
        [tool("amtool"), "check-config", str(ALERTMANAGER_COMPOSE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_alertmanager_config_differs_only_in_the_webhook_host() -> None:
    shipped = yaml.safe_load(ALERTMANAGER.read_text())
    compose = yaml.safe_load(ALERTMANAGER_COMPOSE.read_text())
    for config in (shipped, compose):
        for hook in webhooks(config):
            hook["url"] = urllib.parse.urlsplit(hook["url"])._replace(netloc="HOST").geturl()
    assert compose == shipped, (
        "alertmanager.compose.yml must be alertmanager.yml with the webhooks on demo:9095"
    )


def test_alertmanager_webhooks_reach_the_demo_receiver() -> None:
    config = yaml.safe_load(ALERTMANAGER_COMPOSE.read_text())
    for hook in webhooks(config):
        address = urllib.parse.urlsplit(hook["url"]).netloc
        assert_names_a_service(address, hook["url"])
        assert host_port(address)[0] == "demo"
        assert f"--receiver-port={host_port(address)[1]}" in SERVICES["demo"]["command"]


def test_alertmanager_finds_its_templates_and_its_password_secret() -> None:
    binds = bind_mounts("alertmanager")
    config_path = flags("alertmanager")["--config.file"]
    assert binds[config_path] == ALERTMANAGER_COMPOSE
    config = yaml.safe_load(ALERTMANAGER_COMPOSE.read_text())
    for pattern in config["templates"]:
        directory = str(Path(config_path).parent / Path(pattern).parent)
        assert binds[directory] == (ROOT / "alertmanager" / "templates").resolve()
    files = {
        email["auth_password_file"]
        for receiver in config["receivers"]
        for email in receiver.get("email_configs", [])
    }
    secrets = {f"/run/secrets/{name}" for name in SERVICES["alertmanager"]["secrets"]}
    assert files and files <= secrets


# ------------------------------------------------------------------------------------------------
# The exporter and the demo
# ------------------------------------------------------------------------------------------------


class TagLoader(yaml.SafeLoader):
    """Keeps `!env NAME` and `!file PATH` as ("!env", "NAME") so two configs can be compared."""


TagLoader.add_multi_constructor(
    "!", lambda loader, suffix, node: (f"!{suffix}", loader.construct_scalar(node))
)


def read_tagged(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=TagLoader)


def tagged_values(value: Any) -> list[tuple[str, str]]:
    """Every `!env`/`!file` value in a config read with TagLoader."""
    if isinstance(value, dict):
        return [found for item in value.values() for found in tagged_values(item)]
    if isinstance(value, list):
        return [found for item in value for found in tagged_values(item)]
    return [value] if isinstance(value, tuple) else []


def rewrite(value: Any, replace: dict[Any, Any]) -> Any:
    if isinstance(value, dict):
        return {key: rewrite(item, replace) for key, item in value.items()}
    if isinstance(value, list):
        return [rewrite(item, replace) for item in value]
    if isinstance(value, tuple):
        return replace.get(value, value)
    if isinstance(value, str):
        for old, new in replace.items():
            if isinstance(old, str):
                value = value.replace(old, new)
        return value
    return value


# What examples/demo.compose.yml changes in examples/demo.yml, and nothing else.
DEMO_REWRITES = {
    "127.0.0.1:9401": "demo:9401",
    "127.0.0.1": "demo",
    "../run/demo-ca.pem": "/var/lib/sla-demo/demo-ca.pem",
    ("!env", "DEMO_API_TOKEN"): ("!file", "/run/secrets/demo_api_token"),
    ("!env", "DEMO_SMS_TOKEN"): ("!file", "/run/secrets/demo_sms_token"),
    ("!file", "../run/smtp-password"): ("!file", "/run/secrets/demo_smtp_password"),
}


def test_the_compose_demo_config_differs_only_in_addresses_and_secrets() -> None:
    assert read_tagged(DEMO_COMPOSE) == rewrite(read_tagged(DEMO), DEMO_REWRITES)


def test_the_compose_demo_config_probes_the_demo_service_on_its_ports() -> None:
    config = read_tagged(DEMO_COMPOSE)
    for name, service in config["services"].items():
        if "http" in service or "sms_gateway" in service:
            spec = service.get("http") or service["sms_gateway"]
            for step in spec.get("steps", [spec]):
                assert_names_a_service(urllib.parse.urlsplit(step["url"]).netloc, name)
        if "smtp" in service:
            smtp = service["smtp"]
            assert_names_a_service(f"{smtp['host']}:{smtp['port']}", name)
            assert f"--smtp-port={smtp['port']}" in SERVICES["demo"]["command"]
            ca_dir = str(Path(smtp["tls"]["ca_file"]).parent)
            assert f"--ca-file={smtp['tls']['ca_file']}" in SERVICES["demo"]["command"]
            assert ("demo-ca", ca_dir, "ro") in mounts("exporter")
    secrets = {f"/run/secrets/{name}" for name in SERVICES["exporter"]["secrets"]}
    used = {
        path for kind, path in tagged_values(config) if kind == "!file" and "/run/secrets/" in path
    }
    assert used == secrets


def test_the_compose_demo_config_passes_the_exporters_config_check(tmp_path: Path) -> None:
    """With the secrets and the CA where compose would mount them, rewritten to local paths."""
    text = DEMO_COMPOSE.read_text()
    for name, secret in COMPOSE["secrets"].items():
        text = text.replace(f"/run/secrets/{name}", str(ROOT / secret["file"]))
    ca = tmp_path / "demo-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    text = text.replace("/var/lib/sla-demo/demo-ca.pem", str(ca))
    config = tmp_path / "sla.yml"
    config.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "sla_exporter", "--config.check", f"--config.file={config}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_exporter_reads_the_mounted_sla_file_and_keeps_its_tallies_on_a_volume() -> None:
    exporter = flags("exporter")
    assert bind_mounts("exporter")[exporter["--config.file"]] == DEMO_COMPOSE
    ledger_dir = str(Path(exporter["--storage.path"]).parent)
    volumes = {target: source for source, target, _ in mounts("exporter")}
    assert volumes[ledger_dir] in COMPOSE["volumes"], "the month tallies must be on a volume"
    assert host_port(exporter["--web.listen-address"])[1] in exposed("exporter")


# ------------------------------------------------------------------------------------------------
# Grafana
# ------------------------------------------------------------------------------------------------


def test_grafana_provisioning_and_dashboards_are_where_the_provider_looks() -> None:
    binds = bind_mounts("grafana")
    assert binds["/etc/grafana/provisioning"] == PROVISIONING.resolve()
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "sla.yml").read_text())
    (entry,) = provider["providers"]
    assert binds[entry["options"]["path"]] == (ROOT / "grafana" / "dashboards").resolve()
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    directory, _, name = home.rpartition("/")
    assert (binds[directory] / name).is_file()


def test_grafana_queries_the_compose_prometheus_and_reads_its_password_from_a_secret() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert_names_a_service(urllib.parse.urlsplit(datasource["url"]).netloc, "datasource")
    longterm = yaml.safe_load((PROVISIONING / "datasources" / "longterm.yml").read_text())
    (store,) = longterm["datasources"]
    assert urllib.parse.urlsplit(store["url"]).netloc == "victoriametrics:8428"
    assert_names_a_service("victoriametrics:8428", "long-term datasource")
    assert store["uid"] != datasource["uid"]
    environment = SERVICES["grafana"]["environment"]
    password = environment["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    assert password in {f"/run/secrets/{name}" for name in SERVICES["grafana"]["secrets"]}
    assert not any("PASSWORD" in key and not key.endswith("__FILE") for key in environment)
