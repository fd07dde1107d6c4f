"""The cert-refresh pod's own API client (stdlib only), against the real API
server, as a ServiceAccount with the cert-refresh pod's Role: list and watch
of its one ConfigMap, nothing else."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from blogsite_operator.challenge_server import Answers, InClusterApi, watch_answers
from tests.integration.conftest import Kubectl
from tests.support import FIGURES, wait_for

CONFIG_MAP = "blog-acme-http01"


@pytest.fixture
def service_account(
    kubectl: Kubectl, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """What the kubelet mounts for the pod: a token and the cluster's CA,
    with the API server's address in the environment."""
    kubectl.run("create", "serviceaccount", "cert-refresh", "-n", namespace)
    kubectl.run(
        "create", "role", "cert-refresh", "-n", namespace, "--verb=list,watch",
        "--resource=configmaps", f"--resource-name={CONFIG_MAP}",
    )  # fmt: skip
    kubectl.run(
        "create", "rolebinding", "cert-refresh", "-n", namespace, "--role=cert-refresh",
        f"--serviceaccount={namespace}:cert-refresh",
    )  # fmt: skip
    token = kubectl.run("create", "token", "cert-refresh", "-n", namespace).stdout.strip()
    config = kubectl.json("config", "view", "--raw")
    cluster = config["clusters"][0]["cluster"]
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text(token)
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"])
    else:
        ca = Path(cluster["certificate-authority"]).read_bytes()
    (directory / "ca.crt").write_bytes(ca)
    server = urlsplit(cluster["server"])
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", server.hostname or "")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port or 443))
    return directory


@pytest.fixture
def watched(service_account: Path, namespace: str) -> Iterator[Answers]:
    answers = Answers()
    stop = threading.Event()
    thread = threading.Thread(
        target=watch_answers,
        kwargs={
            "answers": answers,
            "namespace": namespace,
            "config_map": CONFIG_MAP,
            "selector": None,
            "stop": stop,
            "api": InClusterApi(service_account),
        },
        daemon=True,
    )
    thread.start()
    yield answers
    stop.set()


def test_answers_arrive_through_the_watch(
    kubectl: Kubectl, namespace: str, watched: Answers
) -> None:
    kubectl.run("create", "configmap", CONFIG_MAP, "-n", namespace, "--from-literal=t1=t1.key")
    wait_for(lambda: watched.lookup("t1") == "t1.key", timeout=10, what="the first answer")
    assert watched.synced.is_set()
    started = time.monotonic()
    kubectl.run(
        "patch", "configmap", CONFIG_MAP, "-n", namespace, "--type=merge",
        "-p", '{"data": {"t2": "t2.key"}}',
    )  # fmt: skip
    wait_for(lambda: watched.lookup("t2") == "t2.key", timeout=10, what="a new answer")
    seconds = time.monotonic() - started
    FIGURES.append(f"cert-refresh's own client: a new answer served {seconds:.2f}s after it")
    kubectl.run("delete", "configmap", CONFIG_MAP, "-n", namespace)
    wait_for(lambda: watched.lookup("t1") is None, timeout=10, what="the answers gone")


def test_it_reads_only_its_own_config_map(
    kubectl: Kubectl, namespace: str, service_account: Path
) -> None:
    api = InClusterApi(service_account)
    listed = api.list_raw(
        "ConfigMap", namespace, [("fieldSelector", f"metadata.name={CONFIG_MAP}")]
    )
    assert listed["items"] == []
    with pytest.raises(OSError, match="HTTP 403"):
        api.list_raw("ConfigMap", namespace, [])
