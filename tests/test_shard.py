"""Sharding: every service in exactly one shard, the one Prometheus' hashmod picks, and a sharded
exporter probes and exposes its own services only."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from sla_exporter.config import Service, parse
from sla_exporter.exporter import Exporter, Shard
from sla_exporter.probes import ProbeResult
from tests.helpers import free_port, tool, wait_for
from tests.stack import Process, http_get, start

# What the SLA file allows as a service name (values.ServiceName).
NAMES = st.from_regex(r"[a-z][a-z0-9_-]{0,62}", fullmatch=True)


def sla_file(names: list[str], url: str = "http://127.0.0.1:9") -> str:
    lines = ["sla: {name: Shards}", "services:"]
    lines += [
        f"  {n}: {{interval: 1s, timeout: 500ms, http: {{url: '{url}/s/{n}'}}}}" for n in names
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The selection


@settings(max_examples=300, deadline=None)
@given(st.sets(NAMES, max_size=100), st.integers(min_value=1, max_value=16))
def test_the_shards_partition_any_set_of_service_names_exactly(names: set[str], count: int) -> None:
    for name in names:
        owners = [k for k in range(1, count + 1) if Shard(k, count).owns(name)]
        assert len(owners) == 1, (name, owners)


@settings(max_examples=50, deadline=None)
@given(st.sets(NAMES, min_size=1, max_size=60), st.integers(min_value=2, max_value=8))
def test_selecting_a_config_keeps_exactly_the_shards_services(names: set[str], count: int) -> None:
    config = parse(sla_file(sorted(names)), "sla.yml")
    parts = [Shard(k, count).select(config) for k in range(1, count + 1)]
    seen = Counter(name for part in parts for name in part.services)
    assert seen == Counter(names)  # every service once, none twice, none lost
    for part in parts:
        assert all(part.services[n] is config.services[n] for n in part.services)


def test_the_shard_of_a_service_is_fixed_by_its_name_alone() -> None:
    # The last 8 bytes of md5(name), big-endian, modulo N (Prometheus' hashmod): the same in
    # every process and on every machine, unlike Python's randomised hash(). These values are
    # also checked against Prometheus itself in the test below.
    assert [k for k in range(1, 5) if Shard(k, 4).owns("api")] == [3]
    assert [k for k in range(1, 5) if Shard(k, 4).owns("website")] == [1]
    assert [k for k in range(1, 5) if Shard(k, 4).owns("smtp")] == [4]
    assert Shard(1, 1).owns("anything")


def test_shards_get_about_the_same_number_of_services() -> None:
    names = [f"service-{i}" for i in range(20_000)]
    sizes = Counter(k for n in names for k in range(1, 5) if Shard(k, 4).owns(n))
    assert all(4_800 <= size <= 5_200 for size in sizes.values()), sizes


@pytest.mark.parametrize("text", ["0/4", "5/4", "1", "a/b", "1/0", "-1/2", "2/4/6"])
def test_a_shard_outside_1_to_n_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="must be K/N with 1 <= K <= N"):
        Shard.parse(text)


SUPPORT = """
support:
  database: data/support.db
  token: not-a-real-token-but-long-enough-0123456789
  calendars:
    europe: {timezone: Europe/Zurich, hours: {mon-fri: ["08:00-17:00"]}}
  policies:
    first-level:
      match: {level: 1}
      calendar: europe
      targets: {first_response: 4h}
"""


def test_the_support_desk_runs_on_the_first_shard_only() -> None:
    # Ticket clocks are not services: one desk per location, or every shard would count them.
    config = parse(sla_file(["api", "website"]) + SUPPORT, "sla.yml")
    assert config.support is not None
    assert Shard(1, 3).select(config).support is config.support
    assert Shard(2, 3).select(config).support is None
    assert Shard(1, 1).select(config) is config


@pytest.mark.slow
def test_the_shard_is_the_one_prometheus_hashmod_relabelling_computes(tmp_path: Path) -> None:
    """Prometheus shards targets with `hashmod`; ours must agree, so that relabelling can say
    which exporter probes a service (docs/SCALING.md)."""
    names = ["api", "website", "smtp", "sms", "app", *(f"svc-{i}" for i in range(35))]
    modulus = 5
    config = {
        "global": {"scrape_interval": "1h"},
        "scrape_configs": [
            {
                "job_name": "shards",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{1000 + i}"], "labels": {"sla_service": name}}
                    for i, name in enumerate(names)
                ],
                "relabel_configs": [
                    {
                        "source_labels": ["sla_service"],
                        "modulus": modulus,
                        "target_label": "__tmp_hash",
                        "action": "hashmod",
                    },
                    {"source_labels": ["__tmp_hash"], "target_label": "hash"},
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    prometheus = start(
        "prometheus",
        [
            tool("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path,
    )
    try:

        def targets() -> dict[str, int] | None:
            prometheus.alive()
            text = http_get(f"http://127.0.0.1:{port}/api/v1/targets")
            if text is None:
                return None
            active = yaml.safe_load(text)["data"]["activeTargets"]
            found = {t["labels"]["sla_service"]: int(t["labels"]["hash"]) for t in active}
            return found if len(found) == len(names) else None

        hashes = wait_for(targets, "Prometheus lists every target", timeout=60)
    finally:
        prometheus.stop()
    for name in names:
        assert Shard(hashes[name] + 1, modulus).owns(name), name


# --------------------------------------------------------------------------------------------
# Sharded exporters


class Recorder:
    """A probe that only notes which service it was asked to probe."""

    def __init__(self) -> None:
        self.probed: Counter[str] = Counter()

    async def __call__(self, name: str, service: Service) -> ProbeResult:
        self.probed[name] += 1
        return ProbeResult(success=True, duration=0.001, timestamp=time.time())


async def test_sharded_exporters_probe_and_expose_each_service_once_between_them(
    tmp_path: Path,
) -> None:
    names = [f"svc-{i:02d}" for i in range(30)]
    path = tmp_path / "sla.yml"
    path.write_text(sla_file(names))
    count = 3
    exporters, recorders = [], []
    for k in range(1, count + 1):
        recorder = Recorder()
        exporter = Exporter(str(path), probe=recorder, max_start_jitter=0.05, shard=Shard(k, count))
        await exporter.start()
        exporters.append(exporter)
        recorders.append(recorder)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while sum(len(r.probed) for r in recorders) < len(names):
            assert asyncio.get_running_loop().time() < deadline, "not every service was probed"
            await asyncio.sleep(0.05)
        for k, (exporter, recorder) in enumerate(zip(exporters, recorders, strict=True), 1):
            mine = {n for n in names if Shard(k, count).owns(n)}
            assert set(exporter.store.services) == mine
            assert set(recorder.probed) == mine
            text = (await exporter.services.render()).decode()
            assert {n for n in names if f'sla_service="{n}"' in text} == mine
        probed = Counter(n for r in recorders for n in r.probed)
        assert set(probed) == set(names)
    finally:
        for exporter in exporters:
            await exporter.stop()


async def test_a_reload_adds_only_the_shards_share_of_new_services(tmp_path: Path) -> None:
    path = tmp_path / "sla.yml"
    path.write_text(sla_file([f"old-{i}" for i in range(10)]))
    shard = Shard(2, 2)
    exporter = Exporter(str(path), probe=Recorder(), max_start_jitter=0.05, shard=shard)
    await exporter.start()
    try:
        names = [f"old-{i}" for i in range(10)] + [f"new-{i}" for i in range(10)]
        path.write_text(sla_file(names))
        assert await exporter.reload() is None
        assert set(exporter.store.services) == {n for n in names if shard.owns(n)}
        assert exporter.config is not None
        assert set(exporter.config.services) == set(exporter.store.services)
    finally:
        await exporter.stop()


# --------------------------------------------------------------------------------------------
# The command line


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sla_exporter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_check_says_how_many_services_the_shard_has(tmp_path: Path) -> None:
    path = tmp_path / "sla.yml"
    names = ["api", "website", "smtp", "sms"]
    path.write_text(sla_file(names))
    mine = sum(Shard(2, 4).owns(n) for n in names)
    result = check("--config.check", "--config.file", str(path), "--shard", "2/4")
    assert (result.returncode, result.stdout) == (
        0,
        f"{path}: OK, 4 services, {mine} in shard 2/4\n",
    )


def test_a_shard_outside_1_to_n_is_a_usage_error(tmp_path: Path) -> None:
    result = check("--config.file", str(tmp_path / "sla.yml"), "--shard", "5/4")
    assert result.returncode == 2
    assert "argument --shard: must be K/N with 1 <= K <= N, got 5/4" in result.stderr


@pytest.fixture
async def recording_server() -> AsyncIterator[tuple[str, Counter[str]]]:
    """An HTTP server on loopback that counts requests per path."""
    hits: Counter[str] = Counter()

    async def handler(request: web.Request) -> web.Response:
        hits[request.path] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), hits
    await server.close()


async def test_two_exporter_processes_sharing_a_file_probe_each_service_once_per_interval(
    tmp_path: Path, recording_server: tuple[str, Counter[str]]
) -> None:
    url, hits = recording_server
    names = [f"svc-{i:02d}" for i in range(24)]
    path = tmp_path / "sla.yml"
    path.write_text(sla_file(names, url))
    ports = [free_port(), free_port()]
    processes = [
        start(
            f"shard-{k}",
            [
                sys.executable,
                "-m",
                "sla_exporter",
                "--config.file",
                str(path),
                "--web.listen-address",
                f"127.0.0.1:{port}",
                "--storage.path",
                "",
                "--shard",
                f"{k}/2",
            ],
            tmp_path,
        )
        for k, port in enumerate(ports, 1)
    ]
    try:
        for process, port in zip(processes, ports, strict=True):

            def ready(process: Process = process, port: int = port) -> str | None:
                process.alive()
                return http_get(f"http://127.0.0.1:{port}/-/ready")

            await asyncio.to_thread(wait_for, ready, f"{process.name} ready")
        await asyncio.sleep(4.5)  # first runs within 1 s, then one per second each
        counts = {n: hits[f"/s/{n}"] for n in names}
        # Every service probed, and at the rate of one exporter: 4 or 5 runs in 4.5 s, where
        # two exporters probing the same service would have made 8 or more.
        assert all(3 <= c <= 6 for c in counts.values()), counts
        for k, port in enumerate(ports, 1):
            text = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
            assert text is not None
            exposed = {n for n in names if f'sla_service="{n}"' in text}
            assert exposed == {n for n in names if Shard(k, 2).owns(n)}
            assert f'sla_exporter_shard_info{{shard="{k}",shards="2"}} 1.0' in text
    finally:
        for process in processes:
            process.stop()
