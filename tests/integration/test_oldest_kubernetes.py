"""The oldest Kubernetes minor the operator supports, for real.

A control plane of its own (KUBERNETES_OLDEST_VERSION in hack/versions.env,
built from the Go module proxy by `hack/build-tools.sh kubernetes-oldest`),
run by kwokctl beside the test cluster, with KWOK's fake node only. What a
user on that minor meets: the CRD with its whole admission corpus, the
operator's start-up check and a reconcile to Ready, and `helm install` of
the chart. Its `kubectl` fixture replaces the session's for this module, so
the tests taken from other modules below run here, against this cluster.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, Helm, helm_binary
from tests.integration import test_crd_validation, test_operator
from tests.integration.conftest import (
    HACK,
    ROOT,
    TEST_CLUSTER_ENV,
    Kubectl,
    OperatorProcess,
    cluster_env,
)
from tests.integration.test_operator import EXAMPLE, condition
from tests.support import wait_for

OLDEST_ENV = {
    **TEST_CLUSTER_ENV,
    "BLOGSITE_CLUSTER": "blogsite-oldest",
    "BLOGSITE_KUBE": "oldest",
}


def versions() -> dict[str, str]:
    lines = (HACK / "versions.env").read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


@pytest.fixture(scope="module")
def kubectl() -> Iterator[Kubectl]:
    """The oldest minor's cluster, up for this module only, with the CRD from crds/."""
    cluster = [str(HACK / "cluster.sh")]
    subprocess.run([*cluster, "up"], check=True, timeout=1800, env=OLDEST_ENV)
    try:
        env = cluster_env(env=OLDEST_ENV)
        client = Kubectl(binary=env["KUBECTL"], kubeconfig=env["KUBECONFIG"])
        client.install_crds(str(ROOT / "crds" / "blogsite.yaml"), "blogsites.blog.daedalus.dev")
        yield client
    finally:
        if os.environ.get("BLOGSITE_TEST_KEEP_CLUSTER") != "1":
            subprocess.run([*cluster, "down"], check=True, timeout=600, env=OLDEST_ENV)


def test_the_control_plane_is_the_oldest_supported_minor(kubectl: Kubectl) -> None:
    server = kubectl.json("version")["serverVersion"]
    assert server["gitVersion"] == versions()["KUBERNETES_OLDEST_VERSION"]
    assert (server["major"], server["minor"]) == ("1", "31")


# The admission corpus and a reconcile to Ready, as on the newest minor.
test_invalid_blogsite_is_rejected = test_crd_validation.test_invalid_blogsite_is_rejected
test_examples_are_accepted = test_crd_validation.test_examples_are_accepted
test_defaults_are_applied_by_the_api_server = (
    test_crd_validation.test_defaults_are_applied_by_the_api_server
)
test_blogsite_becomes_ready_with_owned_children = (
    test_operator.test_blogsite_becomes_ready_with_owned_children
)


def test_a_site_behind_a_gateway_without_the_gateway_api_is_refused_in_words(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    """This cluster has no Gateway API (the other one gets it from the Gateway
    tests): the operator starts, reconciles the rest of such a site, and
    says why it cannot be reached."""
    absent = kubectl.run("get", "crd", "httproutes.gateway.networking.k8s.io", check=False)
    assert absent.returncode != 0, absent.stdout
    site = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    site["spec"].setdefault("frontend", {})["gateway"] = {"name": "shared", "namespace": "gw"}
    kubectl.apply(site, namespace)
    name = site["metadata"]["name"]

    def refused() -> dict[str, Any] | None:
        found = kubectl.json("get", "blogsite", name, "-n", namespace)
        ready = condition(found, "Ready")
        return found if ready.get("reason") == "GatewayAPINotInstalled" else None

    found = wait_for(refused, timeout=120, what="Ready False for want of the Gateway API")
    accepted = condition(found, "GatewayAccepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "GatewayAPINotInstalled")
    assert "install its CRDs" in accepted["message"]
    assert condition(found, "FrontendAvailable")["status"] == "True"
    assert condition(found, "Reconciled")["status"] == "True"


def test_helm_installs_the_chart(kubectl: Kubectl, namespace: str) -> None:
    """The chart's kubeVersion admits this minor and every object it renders
    is accepted; KWOK runs the operator's pods (Ready, no process)."""
    helm = Helm(helm_binary(), kubectl.kubeconfig)
    release = f"oldest-{namespace[-5:]}"
    helm.run(
        "install", release, str(CHART), "--namespace", namespace,
        # The CRD is there already (applied from crds/): the chart takes it over.
        "--take-ownership",
        "--set", f"watchNamespaces={{{namespace}}}",
        "--wait", "--timeout", "3m",
    )  # fmt: skip
    status = helm.run("status", release, "--namespace", namespace, "-o", "json").stdout
    assert '"status":"deployed"' in status.replace(" ", "")
    deployment = kubectl.json("get", "deployment", release + "-blogsite-operator", "-n", namespace)
    assert deployment["status"]["availableReplicas"] == deployment["spec"]["replicas"]
    helm.run("uninstall", release, "--namespace", namespace, "--wait")
