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


def start(
    name: str,
    args: list[str],
    workdir: Path,
    env: dict[str, str] | None = None,
    append: bool = False,
) -> Process:
    """Start `args` in `workdir`, output in NAME.log (after what is there, with `append`: a
    restart keeps the log of the run before)."""
    log = workdir / f"{name}.log"
    out = log.open("ab" if append else "wb")
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
    """prometheus/prometheus.yml with 1s scrapes and evaluations and the test's ports; the rule
    files as shipped but for the groups' own intervals (the month every minute, the long
    windows every 5), which would keep a test waiting for figures."""
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    rules = workdir / "rules"
    rules.mkdir(exist_ok=True)
    for path in (ROOT / "prometheus" / "rules").glob("*.yml"):
        content = yaml.safe_load(path.read_text())
        for group in content["groups"]:
            group.pop("interval", None)
        (rules / path.name).write_text(yaml.safe_dump(content))
    config["rule_files"] = [str(rules / "*.yml")]
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


# --------------------------------------------------------------------------------------------
# The highly available topology (docs/OPERATIONS.md, "High availability")


@dataclass
class Member:
    """One process of the HA stack, which the test may kill and start again."""

    name: str
    args: list[str]
    url: str
    env: dict[str, str] = field(default_factory=dict)
    process: Process | None = None

    def start(self, workdir: Path, ready: str = "/-/ready") -> None:
        self.process = start(self.name, self.args, workdir, self.env, append=True)

        def up() -> bool:
            assert self.process is not None
            self.process.alive()
            return http_get(self.url + ready) is not None

        wait_for(up, f"{self.name} ready at {self.url}{ready}", timeout=60)

    def kill(self) -> None:
        """kill -9: no shutdown, no last write."""
        assert self.process is not None
        self.process.popen.kill()
        self.process.popen.wait()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@dataclass
class HAStack:
    """Demo services, two exporter replicas and a witness, two Prometheus, two Alertmanagers
    in a cluster, and VictoriaMetrics: URLs and members by name."""

    workdir: Path
    demo: str
    receiver: str
    witness: str  # an exporter on its own, never stopped, scraped by nobody: the fault-free run
    victoria: str
    members: dict[str, Member]

    def url(self, name: str) -> str:
        return self.members[name].url

    def query(self, base: str, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query against `base`: a Prometheus or VictoriaMetrics."""
        params = {"query": promql, **({"time": str(at)} if at is not None else {})}
        url = f"{base}/api/v1/query?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def notifications(self) -> list[dict[str, Any]]:
        return list(json.loads(http_get(self.receiver + "/") or "[]"))

    def set_service(self, name: str, up: bool) -> None:
        http_post(f"{self.demo}/-/demo/{'up' if up else 'down'}/{name}")

    def cluster_peers(self, name: str) -> int:
        """How many members the Alertmanager `name` sees in its cluster (itself included), 0
        before its cluster is ready."""
        status = json.loads(http_get(self.url(name) + "/api/v2/status") or "{}")
        cluster = status.get("cluster") or {}
        return len(cluster.get("peers") or []) if cluster.get("status") == "ready" else 0


# One service, probed every 2 s: the HA test is about processes dying, not probe kinds, and a
# machine shared by many runs probes one service twice over more calmly than five.
HA_SLA = """
sla:
  name: Mailpro HA
  timezone: Europe/Zurich
  objective: 0.99
services:
  api:
    interval: 2s
    timeout: 1s
    http:
      url: http://127.0.0.1:{http_port}/api/v1/ping
      headers: {{Authorization: Bearer demo-api-token}}
      expect: {{status: [200], json: {{status: ok}}}}
"""


def ha_prometheus_config(workdir: Path, exporters: list[int], managers: list[int], vm: int) -> Path:
    """prometheus/prometheus.ha.yml with 1 s scrapes and evaluations, the test's ports, and
    samples sent to the store every second."""
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.ha.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ROOT / "prometheus" / "rules" / "*.yml")]
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{port}" for port in managers
    ]
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{port}" for port in exporters
    ]
    [write] = config["remote_write"]
    write["url"] = f"http://127.0.0.1:{vm}/api/v1/write"
    write["queue_config"] = {"batch_send_deadline": "1s"}
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def running_ha_stack(workdir: Path) -> Iterator[HAStack]:
    """Start the HA topology on loopback, wait until each member answers (and the Alertmanagers
    see each other), and stop it all afterwards."""
    http_port, smtp_port, receiver_port, vm_port = (free_port() for _ in range(4))
    imap_port, dns_port = free_port(), free_port()  # the demo's mail services, unused here
    config = workdir / "sla.yml"
    config.write_text(HA_SLA.format(http_port=http_port))
    python = [sys.executable, "-m"]
    with ExitStack() as stack:
        demo = f"http://127.0.0.1:{http_port}"
        launch(
            stack,
            "demo",
            [
                *python,
                "sla_demo",
                *("--http-port", str(http_port), "--smtp-port", str(smtp_port)),
                *("--imap-port", str(imap_port), "--dns-port", str(dns_port)),
                *("--receiver-port", str(receiver_port), "--ca-file", str(workdir / "ca.pem")),
                *("--pages-file", str(workdir / "pages.log"), "--timezone", "Europe/Zurich"),
            ],
            workdir,
            f"{demo}/-/demo",
        )
        victoria = f"http://127.0.0.1:{vm_port}"
        launch(
            stack,
            "victoria-metrics",
            [
                tool("victoria-metrics"),
                f"-storageDataPath={workdir / 'victoria'}",
                f"-httpListenAddr=127.0.0.1:{vm_port}",
                "-retentionPeriod=400d",
                # One sample per scrape interval of the two servers' identical series.
                "-dedup.minScrapeInterval=1s",
                # Samples visible at once (30 s by default, for writers far away).
                "-search.latencyOffset=0s",
                "-search.disableCache",
            ],
            workdir,
            f"{victoria}/health",
        )
        witness_port = free_port()
        launch(
            stack,
            "witness",
            [
                *python,
                "sla_exporter",
                *("--config.file", str(config), "--storage.path", str(workdir / "witness.json")),
                *("--web.listen-address", f"127.0.0.1:{witness_port}"),
            ],
            workdir,
            f"http://127.0.0.1:{witness_port}/-/ready",
        )
        members: dict[str, Member] = {}
        ports = {name: free_port() for name in ("exporter-a", "exporter-b")}
        for name, port in ports.items():
            other = ports["exporter-b" if name == "exporter-a" else "exporter-a"]
            members[name] = Member(
                name,
                [
                    *python,
                    "sla_exporter",
                    *("--config.file", str(config), "--web.listen-address", f"127.0.0.1:{port}"),
                    *("--storage.path", str(workdir / f"{name}.json")),
                    *("--replica.peer", f"http://127.0.0.1:{other}"),
                    *("--replica.refresh-interval", "1s"),
                ],
                f"http://127.0.0.1:{port}",
            )
        managers = {name: (free_port(), free_port()) for name in ("am-a", "am-b")}
        am_config = workdir / "alertmanager.yml"
        am = yaml.safe_load(
            local_alertmanager_config(
                ROOT / "alertmanager" / "alertmanager.yml", receiver_port, fast=True
            )
        )
        # A group flushed every 5 s, not every second: the two servers of the pair see the end
        # of an outage up to a scrape and an evaluation apart, and a flush in between would
        # page again for the alert the later server still sends (Alertmanager's own advice:
        # group_interval well above the difference between its senders).
        am["route"]["group_interval"] = "5s"
        am_config.write_text(yaml.safe_dump(am, sort_keys=False))
        for name, (web_port, cluster_port) in managers.items():
            other = managers["am-b" if name == "am-a" else "am-a"][1]
            members[name] = Member(
                name,
                [
                    tool("prometheus-alertmanager"),
                    f"--config.file={am_config}",
                    f"--storage.path={workdir / name}",
                    f"--web.listen-address=127.0.0.1:{web_port}",
                    f"--cluster.listen-address=127.0.0.1:{cluster_port}",
                    f"--cluster.peer=127.0.0.1:{other}",
                    # The second member waits this long for the first to notify before doing
                    # it itself (15 s by default): a page after a dead member within seconds.
                    "--cluster.peer-timeout=2s",
                ],
                f"http://127.0.0.1:{web_port}",
            )
        prometheus_config = ha_prometheus_config(
            workdir,
            list(ports.values()),
            [web_port for web_port, _ in managers.values()],
            vm_port,
        )
        for replica in ("a", "b"):
            name, port = f"prometheus-{replica}", free_port()
            members[name] = Member(
                name,
                [
                    tool("prometheus"),
                    f"--config.file={prometheus_config}",
                    f"--storage.tsdb.path={workdir / name}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--enable-feature=expand-external-labels",
                    # Firing alerts sent again every 2 s (1 min by default): a restarted
                    # Alertmanager hears of them at once.
                    "--rules.alert.resend-delay=2s",
                ],
                f"http://127.0.0.1:{port}",
                env={"PROMETHEUS_REPLICA": replica},
            )
        for member in members.values():
            stack.callback(member.stop)
            member.start(workdir)
        ha = HAStack(
            workdir,
            demo,
            f"http://127.0.0.1:{receiver_port}",
            f"http://127.0.0.1:{witness_port}",
            victoria,
            members,
        )
        wait_for(
            lambda: ha.cluster_peers("am-a") == 2 and ha.cluster_peers("am-b") == 2,
            "both Alertmanagers in one cluster",
            timeout=60,
        )
        yield ha
