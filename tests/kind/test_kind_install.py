"""`make kind-test`: the chart installed on a kind cluster with the images
built by Docker, and one site served, broken and reverted by real pods.

Needs a Docker engine, kind (through pytest-kind) and helm; the machines this
project is developed on have no Docker engine, so `make test` does not run
this (the same scenario runs on the local cluster's real node there). Run it
with `make kind-test`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, helm_binary
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_IMAGE = "blogsite-operator:kind"
DAEDALUS_IMAGE = "daedalus-standin:kind"
CRASHING_IMAGE = "daedalus-standin:kind-crash"
NAMESPACE = "blogs"


def run(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        args, input=stdin, capture_output=True, text=True, check=False, timeout=900
    )
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def kind() -> Iterator[Any]:
    from pytest_kind import KindCluster  # noqa: PLC0415 - only where Docker exists

    run("docker", "build", "-t", OPERATOR_IMAGE, str(ROOT))
    daedalus = str(ROOT / "tests" / "images" / "daedalus")
    run("docker", "build", "-t", DAEDALUS_IMAGE, daedalus)
    run("docker", "build", "--build-arg", "BEHAVIOR=crash", "-t", CRASHING_IMAGE, daedalus)
    cluster = KindCluster("blogsite-operator-kind-test")
    cluster.create()
    try:
        for image in (OPERATOR_IMAGE, DAEDALUS_IMAGE, CRASHING_IMAGE):
            cluster.load_docker_image(image)
        yield cluster
    finally:
        cluster.delete()


def kubectl(cluster: Any, *args: str, stdin: str | None = None) -> str:
    return run("kubectl", "--kubeconfig", str(cluster.kubeconfig_path), *args, stdin=stdin)


def site(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "metadata": {"name": "blog", "namespace": NAMESPACE},
        "spec": {
            "domains": ["blog.example.test"],
            "daedalus": {
                "image": image,
                "healthCheck": {"path": "/healthz", "periodSeconds": 2},
            },
            "rollout": {"readyTimeoutSeconds": 45, "maxRestarts": 2},
        },
    }


def status(cluster: Any) -> dict[str, Any]:
    body = json.loads(kubectl(cluster, "get", "blogsite", "blog", "-n", NAMESPACE, "-o", "json"))
    return dict(body.get("status") or {})


def condition(cluster: Any, kind: str) -> dict[str, Any]:
    for item in status(cluster).get("conditions") or []:
        if item["type"] == kind:
            return dict(item)
    return {}


def wait_for_condition(cluster: Any, kind: str, field: str, value: str, what: str) -> None:
    wait_for(
        lambda: condition(cluster, kind).get(field) == value, timeout=300, interval=2, what=what
    )


def test_the_chart_on_kind_serves_a_site_and_reverts_a_crashing_version(kind: Any) -> None:
    kubectl(kind, "create", "namespace", NAMESPACE)
    repository, tag = OPERATOR_IMAGE.split(":")
    run(
        helm_binary(),
        "--kubeconfig",
        str(kind.kubeconfig_path),
        "install",
        "blogsite-operator",
        str(CHART),
        "--namespace",
        "blogsite-system",
        "--create-namespace",
        "--set",
        f"image.repository={repository},image.tag={tag},image.pullPolicy=Never",
        "--set",
        f"watchNamespaces={{{NAMESPACE}}}",
        "--wait",
        "--timeout",
        "5m",
    )
    kubectl(kind, "apply", "-f", "-", stdin=yaml.safe_dump(site(DAEDALUS_IMAGE)))
    wait_for_condition(kind, "Ready", "status", "True", "the site Ready")
    # The page through the frontend Service, from inside the cluster.
    fetch = (
        "import urllib.request as u;"
        "r=u.urlopen(u.Request('http://blog-frontend.blogs.svc',"
        "headers={'Host':'blog.example.test'}),timeout=10);print(r.status,r.read().decode())"
    )
    page = kubectl(
        kind,
        "exec",
        "-n",
        "blogsite-system",
        "deployment/blogsite-operator",
        "--",
        "python",
        "-c",
        fetch,
    )
    assert page.startswith("200"), page
    assert "daedalus stand-in" in page, page

    kubectl(kind, "apply", "-f", "-", stdin=yaml.safe_dump(site(CRASHING_IMAGE)))
    wait_for_condition(
        kind, "RolloutHealthy", "reason", "RolledBack", "the crashing version reverted"
    )
    deployment = json.loads(
        kubectl(kind, "get", "deployment", "blog-daedalus", "-n", NAMESPACE, "-o", "json")
    )
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == DAEDALUS_IMAGE
