"""deploy/kubernetes/, checked without a cluster: the StatefulSets' ordinal is the exporter's
`--shard K/N` and its replica's peer, and the Prometheus example's `hashmod` keeps both replicas
of an exporter shard together (run by a real Prometheus on the pods as service discovery would
describe them; Debian's Prometheus has no Kubernetes discovery, so a file stands in for it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from contextlib import ExitStack
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from sla_exporter.cli import parse_args
from sla_exporter.exporter import Shard
from tests.helpers import free_port, tool, wait_for
from tests.stack import ROOT, http_get, launch

KUBERNETES = ROOT / "deploy" / "kubernetes"
MANIFESTS = list(yaml.safe_load_all((KUBERNETES / "sla-exporters.yaml").read_text()))
PROMETHEUS = KUBERNETES / "prometheus.yml"
POD_INDEX = "metadata.labels['apps.kubernetes.io/pod-index']"


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in MANIFESTS if m["kind"] == kind}


SETS = of_kind("StatefulSet")
SERVICES = of_kind("Service")


def container(statefulset: dict[str, Any]) -> dict[str, Any]:
    [only] = statefulset["spec"]["template"]["spec"]["containers"]
    return only


def args_of_pod(statefulset: dict[str, Any], ordinal: int) -> list[str]:
    """The container's arguments in pod `ordinal`, $(SHARD) expanded as Kubernetes does."""
    env = {e["name"]: e for e in container(statefulset).get("env", [])}
    assert env["SHARD"]["valueFrom"]["fieldRef"]["fieldPath"] == POD_INDEX
    return [arg.replace("$(SHARD)", str(ordinal)) for arg in container(statefulset)["args"]]


def test_two_statefulsets_of_the_same_n_pods_numbered_from_1_one_per_replica() -> None:
    assert set(SETS) == {"sla-exporter-a", "sla-exporter-b"}
    counts = {s["spec"]["replicas"] for s in SETS.values()}
    assert len(counts) == 1
    for statefulset in SETS.values():
        assert statefulset["spec"]["ordinals"] == {"start": 1}  # ordinal = K of --shard K/N
        labels = statefulset["spec"]["template"]["metadata"]["labels"]
        assert statefulset["spec"]["selector"]["matchLabels"] == labels
        # The headless Service that gives each pod the name its replica reads.
        service = SERVICES[statefulset["spec"]["serviceName"]]
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["selector"] == labels


@pytest.mark.parametrize("name", ["sla-exporter-a", "sla-exporter-b"])
def test_pod_k_is_shard_k_of_n_and_reads_pod_k_of_the_other_replica(name: str) -> None:
    statefulset = SETS[name]
    [other] = [s for s in SETS.values() if s is not statefulset]
    count = statefulset["spec"]["replicas"]
    ports = {p["name"]: p["containerPort"] for p in container(statefulset)["ports"]}
    for ordinal in range(1, count + 1):
        args = parse_args(args_of_pod(statefulset, ordinal))  # every flag exists
        assert args.shard == Shard(ordinal, count)
        [peer] = args.replica_peers
        pod = f"{other['metadata']['name']}-{ordinal}"
        assert peer == f"http://{pod}.{other['spec']['serviceName']}:{ports['http']}"
        assert args.listen.rpartition(":")[2] == str(ports["http"])
    args = parse_args(args_of_pod(statefulset, 1))
    mounts = {m["name"]: m["mountPath"] for m in container(statefulset)["volumeMounts"]}
    assert str(PurePosixPath(args.storage_path).parent) == mounts["data"]
    assert [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]] == ["data"]
    assert str(PurePosixPath(args.config_file).parent) == mounts["config"]
    probes = container(statefulset)
    assert probes["readinessProbe"]["httpGet"]["path"] == "/-/ready"


def discovery_as_files(config: dict[str, Any], targets: Path) -> dict[str, Any]:
    """`config` with each kubernetes_sd_configs replaced by a file of the same targets."""
    for job in [*config["scrape_configs"], *config["alerting"]["alertmanagers"]]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
        job["file_sd_configs"] = [{"files": [str(targets)]}]
    return config


def test_the_prometheus_example_passes_promtool(tmp_path: Path) -> None:
    config = discovery_as_files(yaml.safe_load(PROMETHEUS.read_text()), tmp_path / "pods.json")
    config["rule_files"] = [str(ROOT / "prometheus" / "rules" / "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [tool("promtool"), "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PROMETHEUS_REPLICA": "a"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def pods(count: int) -> list[dict[str, Any]]:
    """Service discovery's view of both StatefulSets' pods, and of a pod that is not ours."""
    found = []
    for name, statefulset in SETS.items():
        replica = statefulset["spec"]["template"]["metadata"]["labels"]["sla-bundle.io/replica"]
        for ordinal in range(1, count + 1):
            found.append(
                {
                    "targets": [f"10.0.{ordinal}.{ord(replica)}:9141"],
                    "labels": {
                        "__meta_kubernetes_pod_name": f"{name}-{ordinal}",
                        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "sla-exporter",
                        "__meta_kubernetes_pod_label_sla_bundle_io_replica": replica,
                        "__meta_kubernetes_pod_label_apps_kubernetes_io_pod_index": str(ordinal),
                        "__meta_kubernetes_pod_container_port_name": "http",
                    },
                }
            )
    found.append(
        {
            "targets": ["10.0.9.9:8080"],
            "labels": {
                "__meta_kubernetes_pod_name": "someone-else-1",
                "__meta_kubernetes_pod_label_app_kubernetes_io_name": "web",
                "__meta_kubernetes_pod_label_apps_kubernetes_io_pod_index": "1",
                "__meta_kubernetes_pod_container_port_name": "http",
            },
        }
    )
    return found


@pytest.mark.slow
def test_prometheus_hashmod_keeps_both_replicas_of_an_exporter_shard_on_one_pair(
    tmp_path: Path,
) -> None:
    """Prometheus itself applies the example's relabelling to the pods: this pair (shard 0 of
    M) keeps exactly the exporter shards K with hashmod(K, M) = 0, each with both replicas."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    [job] = config["scrape_configs"]
    [hashmod] = [rule for rule in job["relabel_configs"] if rule.get("action") == "hashmod"]
    [keep] = [
        rule
        for rule in job["relabel_configs"]
        if rule.get("source_labels") == [hashmod["target_label"]]
    ]
    modulus, mine = hashmod["modulus"], int(keep["regex"])
    count = next(iter(SETS.values()))["spec"]["replicas"]
    (tmp_path / "pods.json").write_text(json.dumps(pods(count)))
    config = discovery_as_files(config, tmp_path / "pods.json")
    config.pop("rule_files")
    config.pop("remote_write")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch, ExitStack() as stack:
        patch.setenv("PROMETHEUS_REPLICA", "a")  # the Prometheus started inherits it
        launch(
            stack,
            "prometheus",
            [
                tool("prometheus"),
                f"--config.file={path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--enable-feature=expand-external-labels",
            ],
            tmp_path,
            f"{url}/-/ready",
        )

        def active() -> list[dict[str, Any]]:
            body = json.loads(http_get(f"{url}/api/v1/targets?state=active") or "{}")
            return list(body.get("data", {}).get("activeTargets", []))

        targets = wait_for(active, "the pods discovered")
    kept = sorted((t["labels"]["shard"], t["labels"]["replica"]) for t in targets)
    # Prometheus' hashmod is the exporter's own shard function (tests/test_shard.py).
    expected = [
        (str(k), r)
        for k in range(1, count + 1)
        if Shard(mine + 1, modulus).owns(str(k))
        for r in ("a", "b")
    ]
    assert kept == sorted(expected), kept
    for target in targets:
        assert target["labels"]["location"] == "zrh"
        assert re.fullmatch(r"sla-exporter-[ab]-\d+", target["labels"]["instance"])
