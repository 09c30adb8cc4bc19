"""The bundle as real processes on loopback: demo services, exporter, Prometheus, Alertmanager.

Used by the end-to-end and dashboard tests. Each process gets free ports and a private
directory; the shipped configs are used with only ports, timings and the e-mail receiver
(no network here) rewritten, so what is tested is what ships.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sla_demo import local_alertmanager_config
from tests.helpers import free_port, tool, wait_for

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def http_get(url: str, timeout: float = 5.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def http_post(url: str, accept: str = "application/json") -> str:
    request = urllib.request.Request(url, method="POST", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return str(resp.read().decode())


def screenshot(url: str, shot: Path, width: int, height: int, profile: Path) -> None:
    """Render `url` in headless Chromium (Debian's) at `width` x `height` into the PNG `shot`."""
    subprocess.run(
        [
            tool("chromium"),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",  # no traffic off this machine
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            f"--window-size={width},{height}",
            url,
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def alive(self) -> None:
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")


def start(name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> Process:
    log = workdir / f"{name}.log"
    out = log.open("wb")
    popen = subprocess.Popen(
        args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env={**os.environ, **(env or {})}
    )
    out.close()
    return Process(name, popen, log)


def scraping_prometheus(stack: ExitStack, workdir: Path, port: int, locations: list[str]) -> str:
    """A Prometheus scraping the exporter on `port` every second, once per location label (as
    if each location's exporter were there), stopped by `stack`; its URL."""
    listen = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [
            {
                "job_name": "sla",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {"location": location}}
                    for location in locations
                ],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{listen}"
    args = [
        tool("prometheus"),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{listen}",
    ]
    launch(stack, "prometheus", args, workdir, f"{url}/-/ready")
    return url


def launch(
    stack: ExitStack, name: str, args: list[str], workdir: Path, ready: str | None
) -> Process:
    """`start()` a process that `stack` stops, and wait until `ready` answers, if given."""
    process = start(name, args, workdir)
    stack.callback(process.stop)
    if ready is not None:

        def up() -> bool:
            process.alive()
            return http_get(ready) is not None

        wait_for(up, f"{name} ready at {ready}")
    return process


@dataclass
class Stack:
    """URLs and handles of a running stack."""

    workdir: Path
    demo: str  # the demo services, http://127.0.0.1:PORT
    smtp_port: int
    receiver: str  # the webhook receiver that records pages and tickets
    exporter: str
    prometheus: str
    alertmanager: str
    config: Path
    processes: dict[str, Process] = field(default_factory=dict)

    def _api(self, endpoint: str, params: dict[str, str]) -> list[Any]:
        """Call a Prometheus query endpoint; raise with Prometheus' own error if it fails."""
        url = f"{self.prometheus}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:
            raise AssertionError(
                f"query failed: {params['query']}\n{err.read().decode()}"
            ) from None
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Run an instant query in Prometheus."""
        params = {"query": promql}
        if at is not None:
            params["time"] = str(at)
        return self._api("query", params)

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[Any]:
        params = {"query": promql, "start": str(start), "end": str(end), "step": str(step)}
        return self._api("query_range", params)

    def notifications(self) -> list[dict[str, Any]]:
        """Alerts the webhook receiver got, oldest first: route, status, labels, annotations."""
        return list(json.loads(http_get(self.receiver + "/") or "[]"))

    def set_service(self, name: str, up: bool) -> None:
        http_post(f"{self.demo}/-/demo/{'up' if up else 'down'}/{name}")

    def reload_exporter(self) -> None:
        http_post(f"{self.exporter}/-/reload", accept="text/plain")


def demo_config(
    http_port: int,
    smtp_port: int,
    workdir: Path,
    interval: str = "1s",
    imap_port: int = 9403,
    dns_port: int = 9404,
) -> str:
    """examples/demo.yml pointed at the test's ports, probing every `interval`; with
    intervals of a second, without the demo's own timeouts and re-probes, which need longer."""
    text = (ROOT / "examples" / "demo.yml").read_text()
    text = text.replace("127.0.0.1:9401", f"127.0.0.1:{http_port}")
    text = text.replace("port: 9402", f"port: {smtp_port}")
    text = text.replace("port: 9403", f"port: {imap_port}")
    text = text.replace("127.0.0.1:9404", f"127.0.0.1:{dns_port}")
    text = text.replace("../run/", f"{workdir}/")
    for old in ("15s", "10s", "5s"):
        text = text.replace(f"interval: {old}", f"interval: {interval}")
    if interval == "1s":
        keep = ("    timeout:", "    confirm:")
        text = "".join(line for line in text.splitlines(True) if not line.startswith(keep))
    return text


def prometheus_config(workdir: Path, exporter_port: int, alertmanager_port: int) -> Path:
    """prometheus/prometheus.yml with 1s scrapes and evaluations and the test's ports."""
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ROOT / "prometheus" / "rules" / "*.yml")]
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{alertmanager_port}"
    ]
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{exporter_port}"]
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def alertmanager_config(workdir: Path, receiver_port: int) -> Path:
    """alertmanager/alertmanager.yml with fast grouping, our receiver, and no e-mail."""
    path = workdir / "alertmanager.yml"
    source = ROOT / "alertmanager" / "alertmanager.yml"
    path.write_text(local_alertmanager_config(source, receiver_port, fast=True))
    return path


@contextmanager
def running_stack(workdir: Path, extra_config: str = "", interval: str = "1s") -> Iterator[Stack]:
    """Start everything, wait until each answers, and stop it all afterwards."""
    http_port, smtp_port, receiver_port = free_port(), free_port(), free_port()
    imap_port, dns_port = free_port(), free_port()
    exporter_port, prometheus_port, am_port = free_port(), free_port(), free_port()
    (workdir / "smtp-password").write_text("demo-smtp-password\n")
    config = workdir / "sla.yml"
    config.write_text(
        demo_config(http_port, smtp_port, workdir, interval, imap_port, dns_port) + extra_config
    )
    python = [sys.executable, "-m"]
    secrets = {"DEMO_API_TOKEN": "Bearer demo-api-token", "DEMO_SMS_TOKEN": "demo-sms-token"}
    with ExitStack() as stack:
        processes: dict[str, Process] = {}

        def launch(name: str, args: list[str], ready: str) -> None:
            processes[name] = proc = start(name, args, workdir, secrets)
            stack.callback(proc.stop)

            def up() -> bool:
                proc.alive()
                return http_get(ready) is not None

            wait_for(up, f"{name} ready at {ready}")

        demo = f"http://127.0.0.1:{http_port}"
        launch(
            "demo",
            [
                *python,
                "sla_demo",
                "--http-port",
                str(http_port),
                "--smtp-port",
                str(smtp_port),
                "--imap-port",
                str(imap_port),
                "--dns-port",
                str(dns_port),
                "--receiver-port",
                str(receiver_port),
                "--ca-file",
                str(workdir / "demo-ca.pem"),
                "--pages-file",
                str(workdir / "pages.log"),
                "--timezone",
                "Europe/Zurich",  # examples/demo.yml's
            ],
            f"{demo}/-/demo",
        )
        exporter = f"http://127.0.0.1:{exporter_port}"
        launch(
            "exporter",
            [
                *python,
                "sla_exporter",
                "--config.file",
                str(config),
                "--web.listen-address",
                f"127.0.0.1:{exporter_port}",
                "--storage.path",
                str(workdir / "ledger.json"),
                "--log.level",
                "debug",
            ],
            f"{exporter}/-/ready",
        )
        alertmanager = f"http://127.0.0.1:{am_port}"
        launch(
            "alertmanager",
            [
                tool("prometheus-alertmanager"),
                "--config.file",
                str(alertmanager_config(workdir, receiver_port)),
                "--storage.path",
                str(workdir / "am"),
                "--web.listen-address",
                f"127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            f"{alertmanager}/-/ready",
        )
        prometheus = f"http://127.0.0.1:{prometheus_port}"
        launch(
            "prometheus",
            [
                tool("prometheus"),
                "--config.file",
                str(prometheus_config(workdir, exporter_port, am_port)),
                "--storage.tsdb.path",
                str(workdir / "tsdb"),
                "--web.listen-address",
                f"127.0.0.1:{prometheus_port}",
            ],
            f"{prometheus}/-/ready",
        )
        yield Stack(
            workdir=workdir,
            demo=demo,
            smtp_port=smtp_port,
            receiver=f"http://127.0.0.1:{receiver_port}",
            exporter=exporter,
            prometheus=prometheus,
            alertmanager=alertmanager,
            config=config,
            processes=processes,
        )
