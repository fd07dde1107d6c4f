"""The operator and ten sites on one small node, as the scheduler sees it.

A KWOK node with the allocatable resources of a 1 vCPU / 1.7 GB machine
(940m CPU, 1.15 GiB once the kubelet and the system have theirs), tainted so
only this test's namespaces land there. The chart is installed with
values-small.yaml, ten one-replica BlogSites are reconciled (by an operator
process on this machine: the chart's pod on KWOK runs nothing), and every
pod must be scheduled: the real scheduler, with the real requests.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, Helm, helm_binary
from tests.integration.conftest import Kubectl, OperatorProcess
from tests.support import FIGURES, wait_for

NODE = "kwok-small-0"
TAINT = "blog.daedalus.dev/small-node"
ALLOCATABLE = {"cpu": "940m", "memory": "1180Mi", "pods": "110"}
SITES = 10


def cpu_millis(value: str) -> int:
    return int(value[:-1]) if value.endswith("m") else int(float(value) * 1000)


def mebibytes(value: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value) / 2**20


@pytest.fixture
def small_node(kubectl: Kubectl) -> Iterator[str]:
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"kubernetes.io/hostname": NODE, "type": "small"},
        },
        "spec": {"taints": [{"key": TAINT, "value": "true", "effect": "NoSchedule"}]},
    }
    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(node))
    try:
        kubectl.run("wait", "--for=condition=Ready", f"node/{NODE}", "--timeout=60s")
        # After KWOK's first status (which fills in its own huge defaults).
        status = {"status": {"allocatable": ALLOCATABLE, "capacity": ALLOCATABLE}}
        kubectl.run(
            "patch", "node", NODE, "--subresource=status", "--type=merge", "-p", json.dumps(status)
        )
        wait_for(
            lambda: (
                kubectl.json("get", "node", NODE)["status"]["allocatable"]["memory"]
                == ALLOCATABLE["memory"]
            ),
            timeout=30,
            what="the small node's allocatable resources",
        )
        yield NODE
    finally:
        kubectl.run("delete", "node", NODE, "--wait=false", check=False)


def small_namespace(kubectl: Kubectl, name: str) -> None:
    tolerations = [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}]
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "annotations": {
                "scheduler.alpha.kubernetes.io/node-selector": "type=small",
                "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps(tolerations),
            },
        },
    }
    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(namespace))


def small_site(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "metadata": {"name": f"s{index}"},
        "spec": {
            "domains": [f"s{index}.example.test"],
            "daedalus": {"image": "registry.blogsite.test/daedalus-standin:local", "replicas": 1},
            "frontend": {"replicas": 1, "service": {"type": "ClusterIP"}},
        },
    }


def test_the_operator_and_ten_sites_fit_a_small_node(
    kubectl: Kubectl, small_node: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:5]
    system, sites = f"small-system-{suffix}", f"small-sites-{suffix}"
    for name in (system, sites):
        small_namespace(kubectl, name)
    helm = Helm(helm_binary(), kubectl.kubeconfig)
    operator = OperatorProcess(kubectl, sites, tmp_path / "operator.log")
    try:
        helm.run(
            "install", "small", str(CHART), "--namespace", system,
            "-f", str(CHART / "values-small.yaml"),
            "--set", f"watchNamespaces={{{sites}}}",
            # The session applied the CRD; other releases of the run own it.
            "--set", "crds.install=false",
            "--wait", "--timeout", "2m",
        )  # fmt: skip
        operator.start()
        for index in range(SITES):
            kubectl.apply(small_site(index), sites)

        def every_site_ready() -> bool:
            items = kubectl.json("get", "blogsites", "-n", sites)["items"]
            return len(items) == SITES and all(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (item.get("status") or {}).get("conditions") or []
                )
                for item in items
            )

        wait_for(every_site_ready, timeout=180, interval=1, what="ten small sites Ready")
        pods = [
            pod
            for namespace in (system, sites)
            for pod in kubectl.json("get", "pods", "-n", namespace)["items"]
        ]
        assert len(pods) == 1 + 3 * SITES, [p["metadata"]["name"] for p in pods]
        pending = [p["metadata"]["name"] for p in pods if p["status"].get("phase") != "Running"]
        assert not pending, pending
        assert {p["spec"].get("nodeName") for p in pods} == {NODE}
        requests = [
            c["resources"].get("requests") or {} for p in pods for c in p["spec"]["containers"]
        ]
        cpu = sum(cpu_millis(r.get("cpu", "0")) for r in requests)
        memory = sum(mebibytes(r.get("memory", "0")) for r in requests)
        FIGURES.append(
            f"small node: the operator and {SITES} one-replica sites request {cpu}m CPU and "
            f"{memory:.0f} MiB of {ALLOCATABLE['cpu']} and {ALLOCATABLE['memory']}"
        )
    finally:
        if operator.process is not None:
            assert operator.stop() == 0, operator.logs()[-3000:]
        helm.run("uninstall", "small", "--namespace", system, "--wait", check=False)
        for name in (system, sites):
            kubectl.run("delete", "namespace", name, "--wait=false", check=False)
