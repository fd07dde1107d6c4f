"""The KWOK stages later rollout tests rely on, proven on the real cluster.

A pod picks a behaviour through its image tag (`...kwok-crash-loop`) or the
annotation kwok.blogsite.daedalus.dev/behavior.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import Kubectl
from tests.support import wait_for


def create_deployment(
    kubectl: Kubectl,
    namespace: str,
    name: str,
    image: str,
    annotations: dict[str, str] | None = None,
) -> None:
    kubectl.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
                    "spec": {"containers": [{"name": "main", "image": image}]},
                },
            },
        },
        namespace,
    )


def pod_of(kubectl: Kubectl, namespace: str, app: str) -> dict[str, Any] | None:
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", f"app={app}")["items"]
    return pods[0] if pods else None


def ready(pod: dict[str, Any]) -> str | None:
    for condition in pod.get("status", {}).get("conditions", []):
        if condition["type"] == "Ready":
            return str(condition["status"])
    return None


def container_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return dict(statuses[0])


def test_ordinary_pod_becomes_ready(kubectl: Kubectl, namespace: str) -> None:
    create_deployment(kubectl, namespace, "normal", "example.com/app:v1")
    pod = wait_for(
        lambda: (p := pod_of(kubectl, namespace, "normal")) and ready(p) == "True" and p,
        what="a Ready pod",
    )
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["nodeName"] == "kwok-node-0"


@pytest.mark.parametrize("select_by", ["image", "annotation"])
def test_never_ready(kubectl: Kubectl, namespace: str, select_by: str) -> None:
    image, annotations = "example.com/app:v2-kwok-never-ready", None
    if select_by == "annotation":
        image, annotations = (
            "example.com/app:v2",
            {"kwok.blogsite.daedalus.dev/behavior": "never-ready"},
        )
    create_deployment(kubectl, namespace, "never", image, annotations)
    pod = wait_for(
        lambda: (
            (p := pod_of(kubectl, namespace, "never"))
            and p["status"].get("phase") == "Running"
            and p
        ),
        what="a Running pod",
    )
    assert ready(pod) == "False"
    assert "running" in container_status(pod)["state"]
    # And it stays not Ready: a pod created after it gets through KWOK's
    # stages to Ready, so KWOK has had its chance to change this one too.
    create_deployment(kubectl, namespace, "later", "example.com/app:v1")
    wait_for(
        lambda: (p := pod_of(kubectl, namespace, "later")) and ready(p) == "True",
        what="a later pod Ready",
    )
    pod = pod_of(kubectl, namespace, "never")
    assert pod is not None
    assert ready(pod) == "False"
    deployment = kubectl.json("get", "deployment", "never", "-n", namespace)
    assert deployment["status"].get("availableReplicas", 0) == 0


def test_crash_loop_with_growing_restart_count(kubectl: Kubectl, namespace: str) -> None:
    create_deployment(kubectl, namespace, "crash", "example.com/app:v3-kwok-crash-loop")

    def restarts() -> int:
        pod = pod_of(kubectl, namespace, "crash")
        return int(container_status(pod).get("restartCount", 0)) if pod else 0

    first = wait_for(restarts, what="a first restart")
    wait_for(lambda: restarts() >= first + 2, timeout=60, what="the restart count to grow")
    pod = pod_of(kubectl, namespace, "crash")
    assert pod is not None
    status = container_status(pod)
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert ready(pod) == "False"


def test_image_pull_failure(kubectl: Kubectl, namespace: str) -> None:
    create_deployment(kubectl, namespace, "pull", "example.com/app:v4-kwok-image-pull-fail")
    pod = wait_for(
        lambda: (
            (p := pod_of(kubectl, namespace, "pull")) and container_status(p).get("state") and p
        ),
        what="a container status",
    )
    assert pod["status"]["phase"] == "Pending"
    assert container_status(pod)["state"]["waiting"]["reason"] == "ImagePullBackOff"
    assert ready(pod) == "False"
