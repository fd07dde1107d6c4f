"""On the real node: real containers from the images built here, the operator
itself in a pod, Pebble validating HTTP-01 through a real nginx, and requests
counted while versions fail, revert, change and renew.

The tests in this module share one operator pod, one Pebble and one site,
and run in file order: each leaves the site healthy for the next.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import http.client
import ipaddress
import itertools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from cryptography import x509

from blogsite_operator import certs
from blogsite_operator.policies.ledger import LEDGER_ANNOTATION, Ledger, names_digest
from blogsite_operator.render.site import (
    FRONTEND_HTTPS_PORT,
    NONROOT_UID,
    TLS_HASH_ANNOTATION,
    UPSTREAMS_RESTART_ANNOTATION,
    VERSION_LABEL,
)
from tests.acme_faults import (
    AcmeFaultProxy,
    issued_without_replaces,
    orders_naming_what_they_replace,
)
from tests.chart.conftest import CHART, Helm, helm_binary
from tests.gateway import install_gateway_api
from tests.integration.conftest import (
    Kubectl,
    Watch,
    cluster_env,
    parse_time,
    renewals_through_an_outage,
)
from tests.integration.test_plugin import plugin
from tests.pebble import Pebble, running_pebble
from tests.support import FIGURES, AuditMark, audit_lines, audit_mark, wait_for
from tests.traffic import Answer, Response, Traffic, request, tls_context

NODE_NAME = "blogsite-node-0"
POD_RANGE = ipaddress.ip_network("198.18.0.0/24")
KWOK_POD_RANGE = ipaddress.ip_network("198.18.128.0/17")
SERVICE_RANGE = ipaddress.ip_network("198.19.0.0/16")
# Namespace defaults that send a namespace's pods to the real node
# (PodNodeSelector and PodTolerationRestriction, hack/kwok/kwok.yaml).
REAL_NODE_ANNOTATIONS = {
    "scheduler.alpha.kubernetes.io/node-selector": "type=real",
    "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps(
        [{"key": "blog.daedalus.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]
    ),
}
OPERATOR_NAMESPACE = "blogsite-system"
# Ports of their own, apart from the other ACME tests' Pebble; HTTP-01 on 80,
# the frontend Service's port, as a real CA does.
PEBBLE_ENV = {
    "PEBBLE_PORT": "14030",
    "PEBBLE_MANAGEMENT_PORT": "15030",
    "PEBBLE_DNS_PORT": "8083",
    "PEBBLE_CHALLTESTSRV_PORT": "8085",
    "PEBBLE_HTTP01_PORT": "80",
    # Every order validates afresh (Let's Encrypt reuses authorizations for
    # 7 hours only): a renewal always runs the self-check and the challenge.
    "PEBBLE_AUTHZREUSE": "0",
}
SITE = "blog"
DOMAINS = ["blog.example.test", "www.blog.example.test"]
REDIRECT_DOMAINS = ["old-blog.example.test"]
PAGE = "daedalus stand-in"
# rollout.readyTimeoutSeconds of the site: past the second restart of a
# crashing container (back-offs of 10 s and 20 s), so crashes are judged by
# their restarts, as they would be with the defaults; and far past the few
# seconds a good stand-in pod takes, so a loaded machine never fails a good
# version (a never-ready one is restarted by its liveness probe first).
READY_TIMEOUT = 120


@dataclass(frozen=True)
class RealNode:
    ip: str
    operator_image: str
    frontend_image: str
    daedalus_image: str

    def daedalus(self, variant: str = "") -> str:
        """The stand-in, or one of its variants (crash, crash-once, never-ready, v2)."""
        return f"{self.daedalus_image}-{variant}" if variant else self.daedalus_image


@pytest.fixture(scope="module")
def real_node(kubectl: Kubectl, request: pytest.FixtureRequest) -> RealNode:
    if (
        os.environ.get("BLOGSITE_TEST_KUBECONFIG")
        or request.config.getoption("--cluster") != "kwok"
    ):
        reason = "the real node belongs to the local cluster of hack/cluster.sh"
        if os.environ.get("CI"):  # CI runs on that cluster: another one is a broken set-up
            pytest.fail(f"{reason}, and CI must run these tests")
        pytest.skip(reason)
    env = cluster_env()
    missing = [
        k
        for k in ("NODE_IP", "OPERATOR_IMAGE", "FRONTEND_IMAGE", "DAEDALUS_IMAGE")
        if not env.get(k)
    ]
    assert not missing, f"the local cluster has no real node (hack/node.sh): {missing} not set"
    kubectl.run("wait", "--for=condition=Ready", f"node/{NODE_NAME}", "--timeout=120s")
    return RealNode(
        env["NODE_IP"], env["OPERATOR_IMAGE"], env["FRONTEND_IMAGE"], env["DAEDALUS_IMAGE"]
    )


def create_real_namespace(kubectl: Kubectl, name: str) -> None:
    kubectl.run(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "annotations": REAL_NODE_ANNOTATIONS},
            }
        ),
    )
    wait_for(lambda: kubectl.exists("serviceaccount", "default", name), what=f"{name} ready")


@pytest.fixture(scope="module")
def real_namespace(kubectl: Kubectl, real_node: RealNode) -> Iterator[str]:
    name = f"real-{uuid.uuid4().hex[:6]}"
    create_real_namespace(kubectl, name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def pebble(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    env = {**PEBBLE_ENV, "PEBBLE_PUBLIC_ADDRESS": real_node.ip}
    with running_pebble(env, tmp_path_factory.mktemp("pebble")) as running:
        yield running


RELEASE = "blogsite-operator"
PROBE_INTERVAL = 20  # seconds between served-certificate probes (the chart's: 300)
OPERATOR_SELECTOR = "app.kubernetes.io/name=blogsite-operator"
LEASE = "blogsite-operator"
# The chart's leader election (client-go's timings, the README's figures): a
# leader renews every 2 s, a standby tries every 2 s and takes a Lease 15 s
# after the last renewal it saw.
LEASE_SECONDS, RENEW_SECONDS = 15.0, 2.0


class OperatorLogs:
    """Every operator container's log, kept as it is written: `kubectl logs
    -f` on each container instance as it appears, so the logs of pods that
    were killed, deleted or upgraded away are read too, to their last line.
    An instance that came and went between two looks is read with
    --previous."""

    def __init__(self, kubectl: Kubectl, directory: Path) -> None:
        self.kubectl = kubectl
        self.directory = directory
        self.followers: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._follow_new_instances, daemon=True)
        self.thread.start()

    def _follow_new_instances(self) -> None:
        while not self.stopped.wait(1.0):
            result = self.kubectl.run(
                "get",
                "pods",
                "-n",
                OPERATOR_NAMESPACE,
                "-l",
                OPERATOR_SELECTOR,
                "-o",
                "json",
                check=False,
            )
            if result.returncode != 0:
                continue
            for pod in json.loads(result.stdout)["items"]:
                for container in pod["status"].get("containerStatuses") or []:
                    self._follow(pod["metadata"]["name"], container)

    def _follow(self, pod: str, container: dict[str, Any]) -> None:
        name, restarts = container["name"], container["restartCount"]
        before = f"{pod}_{name}_{restarts - 1}"
        if restarts and before not in self.followers:
            self._start(before, pod, name, "--previous")  # it ended before it was followed
        now = f"{pod}_{name}_{restarts}"
        if now not in self.followers and "running" in (container.get("state") or {}):
            self._start(now, pod, name, "--follow")

    def _start(self, key: str, pod: str, container: str, how: str) -> None:
        args = ["logs", "-n", OPERATOR_NAMESPACE, pod, "-c", container, how]
        with (self.directory / key).open("wb") as out:
            self.followers[key] = subprocess.Popen(
                [self.kubectl.binary, "--kubeconfig", self.kubectl.kubeconfig, *args],
                stdout=out,
                stderr=subprocess.DEVNULL,
            )

    def instances(self) -> dict[str, int]:
        """Bytes of log kept per container instance."""
        return {path.name: path.stat().st_size for path in self.directory.iterdir()}

    def text(self) -> str:
        """All of it, each line prefixed with its container instance."""
        return "".join(
            f"[{path.name}] {line}\n"
            for path in sorted(self.directory.iterdir())
            for line in path.read_text(errors="replace").splitlines()
        )

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        for follower in self.followers.values():
            follower.terminate()
            follower.wait()


@dataclass
class Release:
    """The operator installed with the chart: two replicas, one leading."""

    kubectl: Kubectl
    helm: Helm
    values_path: Path
    watched: str
    kept_logs: OperatorLogs

    # Restarts a test caused (it killed the process), by pod UID: any other
    # restart fails the test that sees it.
    expected_restarts: dict[str, int] = field(default_factory=dict)
    # Where the API server's audit log stood at install (a reused cluster's
    # log holds earlier runs), and the leader changes tests caused since.
    audit_start: AuditMark | None = None  # the audit log when it was installed
    handovers: int = 0

    def helm_run(self, *args: str, check: bool = True) -> str:
        return self.helm.run(*args, check=check).stdout

    def install_or_upgrade(
        self, chart: Path = CHART, *sets: str, flags: tuple[str, ...] = ()
    ) -> None:
        args = ["upgrade", "--install", RELEASE, str(chart), "-n", OPERATOR_NAMESPACE, *flags]
        args += ["-f", str(self.values_path), "--wait", "--timeout", "5m"]
        for value in sets:
            args += ["--set", value]
        self.helm_run(*args)

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.kubectl.json(
            "get", "pods", "-n", OPERATOR_NAMESPACE, "-l", OPERATOR_SELECTOR
        )["items"]
        return items

    def holder(self) -> str:
        """The Lease's holder: POD_PROCESS ("" when none)."""
        if not self.kubectl.exists("lease", LEASE, OPERATOR_NAMESPACE):
            return ""
        spec = self.kubectl.json("get", "lease", LEASE, "-n", OPERATOR_NAMESPACE)["spec"]
        return str(spec.get("holderIdentity") or "")

    def leader(self) -> dict[str, Any]:
        """The Ready pod holding the Lease, once there is one."""

        def find() -> dict[str, Any] | None:
            holder = self.holder().rsplit("_", 1)[0]
            for pod in self.pods():
                allowed = self.expected_restarts.get(pod["metadata"]["uid"], 0)
                for status in pod["status"].get("containerStatuses") or []:
                    if status["restartCount"] > allowed:
                        raise AssertionError(f"an operator pod restarted:\n{self.logs()[-3000:]}")
                ready = all(s.get("ready") for s in pod["status"].get("containerStatuses") or [{}])
                if pod["metadata"]["name"] == holder and ready:
                    return pod
            return None

        pod: dict[str, Any] = wait_for(
            find, timeout=180, interval=0.5, what="an operator pod leading"
        )
        return pod

    def logs(self) -> str:
        """Every operator process's log so far, the ended ones' included."""
        return self.kept_logs.text()


class PodCounts:
    """How many operator pods exist (not being deleted), sampled every half
    second from a thread while a test changes them."""

    def __init__(self, release: Release) -> None:
        self.release = release
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            pods = self.release.pods()
            self.samples.append(sum(1 for p in pods if not p["metadata"].get("deletionTimestamp")))

    def __enter__(self) -> PodCounts:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def release_values(node: RealNode, watched: str) -> dict[str, Any]:
    """The chart's values for this cluster: images built here, one watched
    namespace (the namespaced mode), test timings for ACME."""
    repository, tag = node.operator_image.rsplit(":", 1)
    return {
        "image": {"repository": repository, "tag": tag},
        "frontendImage": node.frontend_image,
        "watchNamespaces": [watched],
        "acme": {"selfCheck": "frontend"},
        "servedProbe": {"intervalSeconds": PROBE_INTERVAL},
        "extraEnv": [
            {"name": "BLOGSITE_OPERATOR_ACME_BACKOFF_SECONDS", "value": "2"},
            {"name": "BLOGSITE_OPERATOR_ACME_MAX_BACKOFF_SECONDS", "value": "8"},
            {"name": "BLOGSITE_OPERATOR_ACME_ORDER_TIMEOUT_SECONDS", "value": "120"},
            # The preflight asks Pebble's DNS (on the node's address) where
            # each name points, and fetches from there on port 80, as Pebble.
            {
                "name": "BLOGSITE_OPERATOR_ACME_PREFLIGHT_RESOLVER",
                "value": f"{node.ip}:{PEBBLE_ENV['PEBBLE_DNS_PORT']}",
            },
        ],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
    }


def new_release(
    kubectl: Kubectl, node: RealNode, watched: str, tmp_path_factory: pytest.TempPathFactory
) -> Release:
    """A Release handle for `node`'s images, its operator namespace made, and
    its operators' logs followed from now on; nothing installed yet."""
    kubectl.run(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": OPERATOR_NAMESPACE,
                    "annotations": REAL_NODE_ANNOTATIONS,
                    "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
                },
            }
        ),
    )
    values_path = tmp_path_factory.mktemp("helm") / "values.yaml"
    values_path.write_text(yaml.safe_dump(release_values(node, watched)))
    kept_logs = OperatorLogs(kubectl, tmp_path_factory.mktemp("operator-logs"))
    return Release(
        kubectl, Helm(helm_binary(), kubectl.kubeconfig), values_path, watched, kept_logs
    )


@pytest.fixture(scope="module")
def release(
    kubectl: Kubectl,
    real_node: RealNode,
    real_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    """`helm install` of the chart, as the README says, into a namespace that
    enforces the restricted Pod Security Standard."""
    handle = new_release(kubectl, real_node, real_namespace, tmp_path_factory)
    kept_logs = handle.kept_logs
    audit = audit_log(kubectl)
    handle.audit_start = audit_mark(audit) if audit.exists() else None
    try:
        # The session installed the CRD from crds/ (kubectl apply), as a user
        # who had it before the chart did: the README's way to hand it over.
        handle.install_or_upgrade(flags=("--take-ownership",))
        yield handle
        handle.helm_run(
            "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "5m", check=False
        )
    finally:
        kept_logs.stop()
    # Every process of the module, the killed, deleted and upgraded ones too.
    instances = kept_logs.instances()
    assert len(instances) >= 2, instances
    assert all(instances.values()), instances
    logs = kept_logs.text()
    assert "Traceback" not in logs, logs[-5000:]


@pytest.fixture(scope="module")
def operator_pod(release: Release) -> dict[str, Any]:
    """The leading operator pod, from the image built from the Dockerfile."""
    return release.leader()


def in_operator_pod(kubectl: Kubectl, code: str) -> str:
    """Run Python in the operator's container (kubectl exec: API server -> kubelet)."""
    return kubectl.run(
        "exec",
        "-n",
        OPERATOR_NAMESPACE,
        f"deployment/{RELEASE}",
        "--",
        "python",
        "-c",
        code,
    ).stdout.strip()


# --- the node itself --------------------------------------------------------


def test_pods_run_on_the_real_node_with_test_range_addresses(
    kubectl: Kubectl, real_node: RealNode, operator_pod: dict[str, Any]
) -> None:
    node = kubectl.json("get", "node", NODE_NAME)
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == real_node.ip
    assert {"key": "blog.daedalus.dev/real-node", "value": "true", "effect": "NoSchedule"} in (
        node["spec"]["taints"]
    )
    assert operator_pod["spec"]["nodeName"] == NODE_NAME
    assert ipaddress.ip_address(operator_pod["status"]["podIP"]) in POD_RANGE
    for service in kubectl.json("get", "services", "-A")["items"]:
        cluster_ip = service["spec"].get("clusterIP")
        if cluster_ip and cluster_ip != "None":
            assert ipaddress.ip_address(cluster_ip) in SERVICE_RANGE, service["metadata"]
    # The container really runs as the image's non-root user.
    assert in_operator_pod(kubectl, "import os; print(os.getuid())") == "65532"


def test_the_pods_bridge_keeps_its_address_as_pods_come_and_go(real_node: RealNode) -> None:
    # A bridge whose address was never set follows its lowest port's address:
    # a pod coming or going would change it under every open connection (a
    # client's request then stalls for a SYN retry). Pinned, the kernel
    # reports NET_ADDR_SET (3) and never changes it.
    bridge = Path("/sys/class/net/blogsite0")
    assert (bridge / "addr_assign_type").read_text().strip() == "3"
    assert (bridge / "address").read_text().strip() == "0a:58:c6:12:00:01"


def test_no_service_can_take_a_control_plane_port_as_its_node_port(
    kubectl: Kubectl, real_namespace: str
) -> None:
    """kube-proxy rejects new connections to every local address on the
    nodePort of a Service without endpoints: a Service given the API
    server's port would cut every client off it. The API server refuses
    such a nodePort. (The Service asked for carries the label that makes
    kube-proxy leave it alone, so a broken cluster that takes it is not cut
    off; a server-side dry run does not check the range.)"""
    server = kubectl.json("config", "view", "--minify")["clusters"][0]["cluster"]["server"]
    port = int(server.rsplit(":", 1)[1])
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "takes-the-api-port",
            "namespace": real_namespace,
            "labels": {"service.kubernetes.io/service-proxy-name": "nobody"},
        },
        "spec": {
            "type": "NodePort",
            "selector": {"nothing": "here"},
            "ports": [{"port": 80, "nodePort": port}],
        },
    }
    result = kubectl.run("create", "-f", "-", stdin=yaml.safe_dump(service), check=False)
    if result.returncode == 0:
        kubectl.run("delete", "service", "takes-the-api-port", "-n", real_namespace)
    assert result.returncode != 0, f"a Service may take nodePort {port}, the API server's"
    assert "provided port is not in the valid range" in result.stderr, result.stderr


def test_cluster_dns_answers_services_and_nothing_else(
    kubectl: Kubectl, operator_pod: dict[str, Any]
) -> None:
    code = (
        "import socket\n"
        "print(socket.gethostbyname('kubernetes.default.svc.cluster.local'))\n"
        "try:\n"
        "    print(socket.gethostbyname('example.com'))\n"
        "except OSError as e:\n"
        "    print('refused', type(e).__name__)\n"
    )
    kubernetes_ip, outside = in_operator_pod(kubectl, code).splitlines()
    assert kubernetes_ip == "198.19.0.1"
    assert outside.startswith("refused"), outside


def test_kwok_pods_stay_on_kwok_with_test_range_addresses(kubectl: Kubectl, namespace: str) -> None:
    kubectl.run(
        "create", "deployment", "fake", "-n", namespace, "--image=ghcr.io/example/daedalus:3f2c1a9"
    )
    pods = wait_for(
        lambda: [
            p
            for p in kubectl.json("get", "pods", "-n", namespace)["items"]
            if p["status"].get("podIP")
        ],
        what="a KWOK pod with an address",
    )
    assert pods[0]["spec"]["nodeName"] == "kwok-node-0"
    assert ipaddress.ip_address(pods[0]["status"]["podIP"]) in KWOK_POD_RANGE


def test_images_come_only_from_the_local_registry(kubectl: Kubectl, real_namespace: str) -> None:
    """The README's example image exists nowhere here: the pull fails locally."""
    kubectl.run(
        "run",
        "elsewhere",
        "-n",
        real_namespace,
        "--image=ghcr.io/example/daedalus:3f2c1a9",
        "--restart=Never",
    )

    def pull_failure() -> dict[str, Any] | None:
        pod = kubectl.json("get", "pod", "elsewhere", "-n", real_namespace)
        for status in pod["status"].get("containerStatuses") or []:
            waiting = status["state"].get("waiting") or {}
            if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff"):
                return waiting
        return None

    wait_for(pull_failure, timeout=60, what="a pull failure")
    # containerd asked the local registry (naming ghcr.io as the namespace it
    # stands in for), and nothing else.
    registry_log = Path(kubectl.kubeconfig).parent / "logs" / "node" / "registry.log"
    assert "/v2/example/daedalus/manifests/3f2c1a9?ns=ghcr.io" in registry_log.read_text(
        encoding="utf-8", errors="replace"
    )
    kubectl.run("delete", "pod", "elsewhere", "-n", real_namespace, "--wait=false")


# --- the chart's identity: what it may and may not do ------------------------

OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}"


def can_i(kubectl: Kubectl, user: str, *request: str) -> bool:
    result = kubectl.run("auth", "can-i", *request, f"--as={user}", check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


# (verb, resource[#subresource], namespace or "*" for all namespaces);
# "WATCHED" is the namespace the release runs sites in.
MUST = [
    ("watch", "blogsites.blog.daedalus.dev", "WATCHED"),
    ("patch", "blogsites.blog.daedalus.dev#status", "WATCHED"),
    ("create", "deployments.apps", "WATCHED"),
    ("patch", "secrets", "WATCHED"),
    ("delete", "configmaps", "WATCHED"),
    ("create", "roles.rbac.authorization.k8s.io", "WATCHED"),
    ("create", "events", "WATCHED"),
    ("list", "pods", "WATCHED"),
    # A site behind a Gateway: its routes, by name; Gateways read only.
    ("create", "httproutes.gateway.networking.k8s.io", "WATCHED"),
    ("patch", "tlsroutes.gateway.networking.k8s.io", "WATCHED"),
    ("delete", "httproutes.gateway.networking.k8s.io", "WATCHED"),
    ("get", "gateways.gateway.networking.k8s.io", "WATCHED"),
]
MUST_NOT = [
    ("delete", "blogsites.blog.daedalus.dev", "WATCHED"),
    ("update", "blogsites.blog.daedalus.dev", "WATCHED"),
    ("patch", "blogsites.blog.daedalus.dev", "WATCHED"),
    ("delete", "deployments.apps", "WATCHED"),
    ("delete", "secrets", "WATCHED"),
    ("patch", "pods", "WATCHED"),
    ("create", "pods#exec", "WATCHED"),
    ("get", "nodes", "*"),
    ("create", "clusterroles.rbac.authorization.k8s.io", "*"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", "*"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", "*"),
    ("escalate", "roles.rbac.authorization.k8s.io", "WATCHED"),
    ("bind", "roles.rbac.authorization.k8s.io", "WATCHED"),
    ("impersonate", "serviceaccounts", "WATCHED"),
    ("list", "httproutes.gateway.networking.k8s.io", "WATCHED"),
    ("patch", "gateways.gateway.networking.k8s.io", "WATCHED"),
    ("create", "gateways.gateway.networking.k8s.io", "WATCHED"),
    ("delete", "gateways.gateway.networking.k8s.io", "*"),
    ("create", "gatewayclasses.gateway.networking.k8s.io", "*"),
]
NAMESPACED_MUST_NOT = [
    ("get", "secrets", "kube-system"),
    ("list", "secrets", "*"),
    ("list", "pods", "*"),
    ("watch", "blogsites.blog.daedalus.dev", "*"),
    ("list", "blogsites.blog.daedalus.dev", "default"),
    ("create", "deployments.apps", "default"),
    ("create", "httproutes.gateway.networking.k8s.io", "default"),
    ("get", "gateways.gateway.networking.k8s.io", "default"),
]
CLUSTER_WIDE_MUST = [
    ("list", "secrets", "*"),
    ("watch", "blogsites.blog.daedalus.dev", "*"),
    ("create", "deployments.apps", "default"),
    ("get", "gateways.gateway.networking.k8s.io", "default"),
]


def check_rights(
    kubectl: Kubectl, user: str, watched: str, rules: list[tuple[str, str, str]], expected: bool
) -> None:
    wrong = []
    for verb, resource, namespace in rules:
        where = ["--all-namespaces"] if namespace == "*" else ["-n", namespace]
        where = ["-n", watched] if namespace == "WATCHED" else where
        kind, _, subresource = resource.partition("#")
        sub = [f"--subresource={subresource}"] if subresource else []
        if can_i(kubectl, user, verb, kind, *sub, *where) != expected:
            wrong.append(f"{verb} {resource} in {namespace}")
    assert not wrong, f"{user} {'may not' if expected else 'may'}: {wrong}"


def test_the_namespaced_release_has_the_rights_it_needs_and_no_others(
    kubectl: Kubectl, release: Release, operator_pod: dict[str, Any]
) -> None:
    assert operator_pod["spec"]["serviceAccountName"] == RELEASE
    install_gateway_api(kubectl)  # `kubectl auth can-i` knows only served resources
    check_rights(kubectl, OPERATOR_USER, release.watched, MUST, expected=True)
    check_rights(kubectl, OPERATOR_USER, release.watched, MUST_NOT, expected=False)
    check_rights(kubectl, OPERATOR_USER, release.watched, NAMESPACED_MUST_NOT, expected=False)
    # Its Lease, and no other.
    lease = ["-n", OPERATOR_NAMESPACE]
    assert can_i(kubectl, OPERATOR_USER, "update", f"leases/{LEASE}", *lease)
    assert not can_i(kubectl, OPERATOR_USER, "update", "leases/kube-scheduler", *lease)
    assert not can_i(kubectl, OPERATOR_USER, "get", "secrets", *lease)


def test_the_cluster_wide_rules_allow_every_namespace_and_nothing_more(
    kubectl: Kubectl, release: Release, namespace: str
) -> None:
    """The other mode's RBAC, rendered by helm and applied on its own."""
    rendered = release.helm_run(
        "template",
        "probe",
        str(CHART),
        "-n",
        namespace,
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
    )
    kubectl.run("apply", "-f", "-", stdin=rendered)
    install_gateway_api(kubectl)
    try:
        user = f"system:serviceaccount:{namespace}:probe-blogsite-operator"
        check_rights(kubectl, user, "default", MUST + CLUSTER_WIDE_MUST, expected=True)
        check_rights(kubectl, user, "default", MUST_NOT, expected=False)
    finally:
        kubectl.run("delete", "-f", "-", stdin=rendered, check=False)


# --- one ACME site, served by real pods -----------------------------------------


# Today's plain rolling update, judged by pod health alone (the default is Canary).
ROLLING = {"strategy": "RollingUpdate"}


def blogsite(node: RealNode, pebble: object, image: str, **changes: Any) -> dict[str, Any]:
    directory = f"https://{node.ip}:{PEBBLE_ENV['PEBBLE_PORT']}/dir"
    spec: dict[str, Any] = {
        "domains": DOMAINS,
        "redirectDomains": REDIRECT_DOMAINS,
        "daedalus": {
            "image": image,
            "replicas": 2,
            "healthCheck": {"path": "/healthz", "periodSeconds": 2},
        },
        "frontend": {"replicas": 2, "http": "serve"},
        "tls": {
            "acme": {
                "server": directory,
                "email": "ops@example.test",
                "caBundleSecretRef": {"name": "pebble-ca", "key": "ca.crt"},
            }
        },
        "rollout": {"readyTimeoutSeconds": READY_TIMEOUT, "maxRestarts": 2},
    }
    for key, value in changes.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "metadata": {"name": SITE},
        "spec": spec,
    }


def site_status(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    body: dict[str, Any] = kubectl.json("get", "blogsite", SITE, "-n", namespace)
    return body


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for item in (body.get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return dict(item)
    return {}


def served_certificate(kubectl: Kubectl, namespace: str) -> bytes:
    secret = kubectl.json("get", "secret", f"{SITE}-tls", "-n", namespace)
    return base64.b64decode(secret["data"]["tls.crt"])


@dataclass
class ServedSite:
    namespace: str
    frontend_ip: str
    root_pem: bytes
    good_image: str

    def traffic(self) -> Traffic:
        return Traffic(self.frontend_ip, 443, DOMAINS[0], tls_context(self.root_pem), PAGE)

    def plain_traffic(self) -> Traffic:
        """Plain HTTP to the other name (`http: serve`)."""
        return Traffic(self.frontend_ip, 80, DOMAINS[1], None, PAGE)


def deployment(
    kubectl: Kubectl, namespace: str, component: str, site: str = SITE
) -> dict[str, Any]:
    body: dict[str, Any] = kubectl.json("get", "deployment", f"{site}-{component}", "-n", namespace)
    return body


def rolled_out(
    kubectl: Kubectl, namespace: str, component: str, image: str | None = None, site: str = SITE
) -> bool:
    body = deployment(kubectl, namespace, component, site)
    spec, status = body["spec"], body.get("status") or {}
    replicas = spec["replicas"]
    current = spec["template"]["spec"]["containers"][0]["image"]
    return bool(
        (image is None or current == image)
        and status.get("observedGeneration", 0) >= body["metadata"]["generation"]
        and status.get("updatedReplicas", 0) == replicas
        and status.get("availableReplicas", 0) == replicas
        and status.get("replicas", 0) == replicas
    )


def wait_rolled_out(  # noqa: PLR0917 - the wait, and what it is for
    kubectl: Kubectl, namespace: str, component: str, image: str, what: str, timeout: float = 180
) -> None:
    """Wait for `rolled_out`; on timeout, say where the rollout stood: the
    Deployment's conditions and each pod's phase and waiting reasons."""
    try:
        wait_for(
            lambda: rolled_out(kubectl, namespace, component, image),
            timeout=timeout,
            interval=1,
            what=what,
        )
    except AssertionError as error:
        raise AssertionError(f"{error}\n{rollout_state(kubectl, namespace, component)}") from None


def rollout_state(kubectl: Kubectl, namespace: str, component: str) -> str:
    body = deployment(kubectl, namespace, component)
    lines = [
        f"{c['type']}={c['status']} {c.get('reason')}: {c.get('message')}"
        for c in (body.get("status") or {}).get("conditions") or []
    ]
    site = condition(site_status(kubectl, namespace), "RolloutHealthy")
    lines.append(f"RolloutHealthy={site.get('status')} {site.get('reason')}: {site.get('message')}")
    selector = f"app.kubernetes.io/component={component},app.kubernetes.io/instance={SITE}"
    for pod in kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]:
        status = pod.get("status") or {}
        waiting = [
            f"{c['name']}: {c['state']['waiting'].get('reason')} "
            f"{c['state']['waiting'].get('message', '')}"
            for c in [
                *(status.get("initContainerStatuses") or []),
                *(status.get("containerStatuses") or []),
            ]
            if "waiting" in (c.get("state") or {})
        ]
        conditions = {
            c["type"]: c["status"]
            if c["status"] == "True"
            else f"{c.get('reason')}: {c.get('message')}"
            for c in status.get("conditions") or []
        }
        lines.append(
            f"pod {pod['metadata']['name']} {status.get('phase')} {conditions} "
            f"deleting={bool(pod['metadata'].get('deletionTimestamp'))} {waiting}"
        )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def served_site(
    kubectl: Kubectl,
    real_node: RealNode,
    real_namespace: str,
    pebble: Pebble,
    operator_pod: dict[str, Any],
) -> ServedSite:
    return serve_site(kubectl, real_node, real_namespace, pebble)


def serve_site(kubectl: Kubectl, node: RealNode, namespace: str, pebble: Pebble) -> ServedSite:
    """The ACME site applied in `namespace`, once it is certified, Ready and
    every frontend pod serves its certificate."""
    kubectl.run(
        "create",
        "secret",
        "generic",
        "pebble-ca",
        "-n",
        namespace,
        f"--from-file=ca.crt={pebble.state_dir / 'pebble-ca.pem'}",
    )
    started = time.monotonic()
    kubectl.apply(blogsite(node, pebble, node.daedalus()), namespace)
    service = wait_for(
        lambda: (
            kubectl.json("get", "service", f"{SITE}-frontend", "-n", namespace)
            if kubectl.exists("service", f"{SITE}-frontend", namespace)
            else None
        ),
        what="the frontend Service",
    )
    frontend_ip = service["spec"]["clusterIP"]
    # Pebble's DNS sends every name of the site to its frontend Service.
    for name in DOMAINS + REDIRECT_DOMAINS:
        pebble.resolve(name, frontend_ip)

    def certified_and_ready() -> dict[str, Any] | None:
        body = site_status(kubectl, namespace)
        certificate = condition(body, "CertificateReady")
        ready = condition(body, "Ready")
        if certificate.get("status") == "True" and ready.get("status") == "True":
            return body
        return None

    body = wait_for(
        certified_and_ready, timeout=300, interval=1, what="the site certified and Ready"
    )
    FIGURES.append(
        f"real node: ACME site applied -> certified and Ready in {time.monotonic() - started:.1f}s"
    )
    root = pebble.root_pem()
    # CertificateReady counts Ready frontend pods only, and judges them by
    # their template's hash: check what each real nginx serves, too.
    issued = served_certificate(kubectl, namespace)
    wait_for(
        lambda: frontend_serves(kubectl, namespace, issued),
        timeout=120,
        what="the frontend rolled out with the issued certificate",
    )
    assert body["status"]["certificate"]["dnsNames"]
    return ServedSite(namespace, frontend_ip, root, node.daedalus())


def test_acme_certificate_validated_through_real_pods_and_served_for_every_name(
    kubectl: Kubectl,
    served_site: ServedSite,
    pebble: Pebble,
    release: Release,
    tmp_path: Path,
) -> None:
    site = served_site
    issued = x509.load_pem_x509_certificate(served_certificate(kubectl, site.namespace))
    names = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == sorted(DOMAINS + REDIRECT_DOMAINS)
    tls = tls_context(site.root_pem)
    # Ten connections in a row: every frontend pod behind the Service, not
    # only the first to roll out, serves it.
    wait_for(
        lambda: all(serial_served(site, tls) == issued.serial_number for _ in range(10)),
        timeout=60,
        what=f"nginx serving the issued certificate {issued.serial_number}",
    )
    for name in DOMAINS:
        response = request(site.frontend_ip, 443, name, tls=tls)
        assert_page(response)
        assert name in response.body  # daedalus saw the Host nginx passed on
        assert_page(request(site.frontend_ip, 80, name))  # http: serve
    # The frontend image's nginx speaks HTTP/2 (ALPN h2): curl's nghttp2 for real.
    root_file = tmp_path / "root.pem"
    root_file.write_bytes(site.root_pem)
    answer = subprocess.run(
        [
            "curl", "-sS", "--http2", "--max-time", "10", "--cacert", str(root_file),
            "--resolve", f"{DOMAINS[0]}:443:{site.frontend_ip}",
            "-o", "/dev/null", "-w", "%{http_version} %{response_code}",
            f"https://{DOMAINS[0]}/",
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert answer.stdout == "2 200", answer
    for name in REDIRECT_DOMAINS:
        response = request(site.frontend_ip, 443, name, path="/a?b=1", tls=tls)
        assert response.status == 301
        assert response.headers["Location"] == f"https://{DOMAINS[0]}/a?b=1"
    # A Host named nowhere in the BlogSite still reaches the blog.
    unknown = request(
        site.frontend_ip,
        443,
        "unknown.example.test",
        tls=tls_context(site.root_pem, check_hostname=False),
    )
    assert_page(unknown)
    # The challenge path goes to the real cert-refresh pod (404: no order now).
    challenge = request(site.frontend_ip, 80, DOMAINS[0], "/.well-known/acme-challenge/none")
    assert challenge.status == 404
    # The operator checked its answers through the frontend Service itself.
    assert "SelfCheckFailed" not in release.logs()
    # And the operator's own probe asked every Ready frontend pod for every name.
    served = wait_for(
        lambda: served_condition(kubectl, site.namespace, "True"),
        timeout=60,
        what="CertificateServed True",
    )
    pods = len(ready_frontend_pods(kubectl, site.namespace))
    assert f"{pods} Ready frontend pod" in served["message"], served
    assert format(issued.serial_number, "x") in served["message"], served


def served_condition(kubectl: Kubectl, namespace: str, status: str) -> dict[str, Any] | None:
    found = condition(site_status(kubectl, namespace), "CertificateServed")
    return found if found.get("status") == status else None


def ready_frontend_pods(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = kubectl.json(
        "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=frontend"
    )["items"]
    return [
        p
        for p in pods
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions") or []
        )
    ]


def cert_refresh_pods(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = kubectl.json(
        "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=cert-refresh"
    )["items"]
    return pods


def test_an_answer_the_frontend_does_not_serve_stops_the_order_before_the_ca_is_asked(
    kubectl: Kubectl, served_site: ServedSite, pebble: Pebble
) -> None:
    """Through the real frontend: with no cert-refresh pod behind it (the
    node takes no new pod, the old one is deleted), the frontend cannot serve
    the answers, and the CA must not hear of the renewal. The preflight (on
    by default) fetches its own answer through each name's address, the
    frontend, as the CA would, and stops it before any order. When the
    preflight cannot tell (its resolver fails), the self-check of each real
    answer through the frontend stops the order before the CA is asked to
    validate. Once the answers are served, the renewal goes through."""
    site = served_site
    before = served_certificate(kubectl, site.namespace)
    taint = "blog.daedalus.dev/test-hold=1:NoSchedule"
    kubectl.run("taint", "node", NODE_NAME, taint)
    try:
        kubectl.run(
            "delete", "pods", "-n", site.namespace, "-l", "app.kubernetes.io/component=cert-refresh"
        )
        wait_for(
            lambda: all(
                p["status"].get("phase") == "Pending"
                for p in cert_refresh_pods(kubectl, site.namespace)
            ),
            what="no cert-refresh pod running",
        )
        asked = failed_renewal(kubectl, site.namespace, pebble, "self-check", "PreflightFailed")
        assert "POST /order-plz" not in asked, "an order reached the CA"
        assert "POST /chalZ/" not in asked, "the CA was asked to validate an answer not served"
        body = site_status(kubectl, site.namespace)
        for name in DOMAINS + REDIRECT_DOMAINS:
            assert (
                f"{name} resolves to {site.frontend_ip}"
                in condition(body, "CertificateReady")["message"]
            ), body
        # Meanwhile the site keeps its certificate.
        assert served_certificate(kubectl, site.namespace) == before
        # A resolver in trouble leaves the preflight nothing to say, and the
        # order goes; the self-check of each real answer through the frontend
        # then stops it before the CA is asked to validate one.
        mark = pebble.log_path.stat().st_size  # before: the preflight's retry may order too
        for name in DOMAINS + REDIRECT_DOMAINS:
            pebble.fail_to_resolve(name)
        try:
            asked = failed_renewal(
                kubectl, site.namespace, pebble, "behind-the-preflight", "SelfCheckFailed", mark
            )
        finally:
            for name in DOMAINS + REDIRECT_DOMAINS:
                pebble.fail_to_resolve(name, failing=False)
        assert "POST /order-plz" in asked, "the order never reached the CA"
        assert "POST /chalZ/" not in asked, "the CA was asked to validate an answer not served"
        assert served_certificate(kubectl, site.namespace) == before
    finally:
        kubectl.run("taint", "node", NODE_NAME, taint.split("=", 1)[0] + "-")
    # Served again, the next try renews.
    wait_for(
        lambda: served_certificate(kubectl, site.namespace) != before,
        timeout=180,
        interval=1,
        what="the renewal once the answers are served",
    )
    wait_for(
        lambda: frontend_serves(
            kubectl, site.namespace, served_certificate(kubectl, site.namespace)
        ),
        timeout=120,
        what="the frontend serving the renewed certificate",
    )


def failed_renewal(  # noqa: PLR0917 - one scenario's settings
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    request: str,
    reason: str,
    mark: int | None = None,
) -> str:
    """Ask for a renewal and wait until it fails for `reason`; what the CA
    was sent since `mark` (a size of Pebble's log, which has every request;
    by default, now)."""
    mark = pebble.log_path.stat().st_size if mark is None else mark

    def last_failure() -> str | None:
        certificate = site_status(kubectl, namespace)["status"].get("certificate") or {}
        found: str | None = (certificate.get("lastFailure") or {}).get("reason")
        return found

    request_renewal(kubectl, namespace, request)
    wait_for(lambda: last_failure() == reason, timeout=120, interval=1, what=f"a {reason}")
    with pebble.log_path.open("rb") as log:
        log.seek(mark)
        return log.read().decode(errors="replace")


def test_a_frontend_pod_given_an_old_certificate_starts_nginx_only_with_the_named_one(
    kubectl: Kubectl, served_site: ServedSite
) -> None:
    """The kubelet fills a Secret volume from its own watch, so a pod created
    just after the Secret changed may get the old content; nginx would serve
    it for the pod's life. Here the volume certainly holds another certificate
    than the template names, until the Secret is brought up to date."""
    site = served_site
    issued = kubectl.json("get", "secret", f"{SITE}-tls", "-n", site.namespace)
    issued_pem = base64.b64decode(issued["data"]["tls.crt"])
    secret = tls_secret("await-tls", *certs.self_signed_placeholder(["other.example.test"]))
    kubectl.apply(secret, site.namespace)
    template = deployment(kubectl, site.namespace, "frontend")["spec"]["template"]
    pod_spec = mounting(template["spec"], "await-tls")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "await-certificate",
            "labels": {"test": "await-certificate"},  # no Service or ReplicaSet selects it
            "annotations": {TLS_HASH_ANNOTATION: hashlib.sha256(issued_pem).hexdigest()},
        },
        "spec": pod_spec,
    }
    kubectl.apply(pod, site.namespace)
    try:

        def nginx_state() -> dict[str, Any]:
            body = kubectl.json("get", "pod", "await-certificate", "-n", site.namespace)
            statuses = (body.get("status") or {}).get("containerStatuses") or [{}]
            state: dict[str, Any] = statuses[0].get("state") or {}
            return state

        wait_for(
            lambda: (
                "waiting"
                in kubectl.run(
                    "logs",
                    "await-certificate",
                    "-c",
                    "await-certificate",
                    "-n",
                    site.namespace,
                    check=False,
                ).stdout
            ),
            timeout=90,
            what="the init container reporting that it waits",
        )
        assert "running" not in nginx_state(), "nginx started with another certificate"
        secret["data"] = issued["data"]
        updated = time.monotonic()
        kubectl.apply(secret, site.namespace)
        wait_for(
            lambda: "running" in nginx_state(),
            timeout=240,
            interval=1,
            what="nginx started once the kubelet brought the named certificate",
        )
        waited = time.monotonic() - updated
        address = kubectl.json("get", "pod", "await-certificate", "-n", site.namespace)["status"][
            "podIP"
        ]
        tls = tls_context(site.root_pem)
        served = wait_for(
            lambda: serial_at(address, FRONTEND_HTTPS_PORT, tls),
            timeout=30,
            what="the pod's nginx answering",
        )
        assert served == x509.load_pem_x509_certificate(issued_pem).serial_number
        FIGURES.append(
            f"real node: a frontend pod given another certificate started nginx {waited:.0f}s "
            "after its Secret was brought up to date (the kubelet's next sync of the pod)"
        )
    finally:
        kubectl.run("delete", "pod", "await-certificate", "-n", site.namespace, "--wait=false")
        kubectl.run("delete", "secret", "await-tls", "-n", site.namespace)


def test_a_frontend_pod_presenting_another_certificate_is_caught_by_the_probe(
    kubectl: Kubectl, served_site: ServedSite
) -> None:
    """A Ready frontend pod that names the Secret's certificate (so
    CertificateReady, inferred from that name, stays True) but presents
    another one: the served-certificate probe asks nginx itself, names the
    pod, and clears once it is gone. The pod is the site's frontend pod with
    another Secret mounted and no await-certificate init container, as no
    pod the operator made can be: the probe must not rely on that."""
    site = served_site
    issued = kubectl.json("get", "secret", f"{SITE}-tls", "-n", site.namespace)
    issued_pem = base64.b64decode(issued["data"]["tls.crt"])
    other_pem, other_key = certs.self_signed_placeholder(DOMAINS + REDIRECT_DOMAINS)
    other_serial = certs.certificate_info(other_pem).serial
    kubectl.apply(tls_secret("stale-tls", other_pem, other_key), site.namespace)
    template = deployment(kubectl, site.namespace, "frontend")["spec"]["template"]
    assert template["metadata"]["annotations"][TLS_HASH_ANNOTATION] == (
        hashlib.sha256(issued_pem).hexdigest()
    )
    pod_spec = mounting(template["spec"], "stale-tls")
    pod_spec.pop("initContainers", None)
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "stale-frontend", **template["metadata"]},
            "spec": pod_spec,
        },
        site.namespace,
    )
    try:
        wait_for(
            lambda: (
                "stale-frontend"
                in {p["metadata"]["name"] for p in ready_frontend_pods(kubectl, site.namespace)}
            ),
            timeout=120,
            what="the stale pod Ready",
        )
        ready_at = time.monotonic()
        caught = wait_for(
            lambda: served_condition(kubectl, site.namespace, "False"),
            timeout=PROBE_INTERVAL + 30,
            interval=0.5,
            what="CertificateServed False",
        )
        waited = time.monotonic() - ready_at
        assert caught["reason"] == "ServesOther", caught
        assert (
            f"pod stale-frontend for {DOMAINS[0]} presents serial {other_serial}"
            in (caught["message"])
        ), caught
        body = site_status(kubectl, site.namespace)
        assert condition(body, "CertificateReady")["status"] == "True"  # blind to it, by design
        FIGURES.append(
            f"real node: a frontend pod presenting another certificate caught by the probe "
            f"{waited:.1f}s after it became Ready (interval {PROBE_INTERVAL}s)"
        )
    finally:
        # Gone, not only terminating: the Service may still send it a request
        # or two until kube-proxy has caught up, and the next test's traffic
        # must not meet its certificate.
        kubectl.run("delete", "pod", "stale-frontend", "-n", site.namespace, "--timeout=120s")

    def stale_endpoint() -> bool:
        slices = kubectl.json(
            "get",
            "endpointslices",
            "-n",
            site.namespace,
            "-l",
            f"kubernetes.io/service-name={SITE}-frontend",
        )["items"]
        return any(
            (endpoint.get("targetRef") or {}).get("name") == "stale-frontend"
            for endpoint_slice in slices
            for endpoint in endpoint_slice.get("endpoints") or []
        )

    wait_for(lambda: not stale_endpoint(), timeout=60, what="the stale pod out of the Service")
    wait_for(
        lambda: served_condition(kubectl, site.namespace, "True"),
        timeout=PROBE_INTERVAL + 60,
        what="CertificateServed True once the pod is gone",
    )
    kubectl.run("delete", "secret", "stale-tls", "-n", site.namespace)


# The compressed soak's own Pebble: 90-second certificates from the
# `shortlived` profile, on ports of its own, reached through a fault proxy.
SOAK_LIFETIME_SECONDS = 90
SOAK_PEBBLE_ENV = {
    **PEBBLE_ENV,
    "PEBBLE_PORT": "14031",
    "PEBBLE_MANAGEMENT_PORT": "15031",
    "PEBBLE_DNS_PORT": "8084",
    "PEBBLE_CHALLTESTSRV_PORT": "8086",
    "PEBBLE_SHORTLIVED_SECONDS": str(SOAK_LIFETIME_SECONDS),
}
SOAK_SITE = "soak"
SOAK_DOMAINS = ["soak.example.test", "www.soak.example.test"]


def test_a_real_node_soak_of_compressed_renewals_through_ca_faults(
    kubectl: Kubectl,
    real_node: RealNode,
    pebble: Pebble,
    served_site: ServedSite,
    tmp_path: Path,
) -> None:
    """90-second certificates renewed three times or more in a row on real
    pods, by their lifetime alone, through the fault proxy: the first
    renewal's `replaces` is refused (alreadyReplaced), the CA is down across
    a later planned renewal until an order failed against it. The probe
    never finds a Ready pod presenting an expired or non-covering
    certificate and finds each new certificate on every pod for every name;
    a client checking twice a second is never handed a certificate it cannot
    verify; every renewal order names the certificate it replaces unless the
    CA just refused that; the ledger counts only what the CA's limits count.
    The KWOK soak (test_acme.py) runs the same faults with shorter ones."""
    namespace = served_site.namespace
    env = {**SOAK_PEBBLE_ENV, "PEBBLE_PUBLIC_ADDRESS": real_node.ip}
    with (
        running_pebble(env, tmp_path / "pebble") as soak_pebble,
        AcmeFaultProxy(soak_pebble, address=real_node.ip) as ca,
    ):
        site = blogsite(
            real_node,
            pebble,
            real_node.daedalus(),
            domains=SOAK_DOMAINS,
            redirectDomains=[],
            daedalus={"replicas": 1},
            tls={
                "acme": {
                    "server": ca.directory_url,
                    "profile": "shortlived",
                    # Both Pebbles' HTTPS certificates come from one minica.
                    "caBundleSecretRef": {"name": "pebble-ca", "key": "ca.crt"},
                }
            },
        )
        site["metadata"]["name"] = SOAK_SITE
        # Armed before any order: the first never names `replaces`, so the
        # first renewal is refused, however soon the CA's window lets it come.
        ca.refuse_replaces_once()
        kubectl.apply(site, namespace)
        try:
            frontend_ip = wait_for(
                lambda: cluster_ip(kubectl, namespace, f"{SOAK_SITE}-frontend"),
                what="the soak site's frontend Service",
            )
            for name in SOAK_DOMAINS:
                soak_pebble.resolve(name, frontend_ip)  # where its CA validates
                pebble.resolve(name, frontend_ip)  # where the operator's preflight looks
            check_soak(
                kubectl, namespace, ca, soak_run(kubectl, namespace, frontend_ip, soak_pebble, ca)
            )
        finally:
            # Gone before the CA is: an order in flight would otherwise wait for it.
            delete_sites(kubectl, namespace, [SOAK_SITE])


class SoakRun(NamedTuple):
    serials: list[str]  # in the order served
    outage: float  # seconds the CA was down until an order failed
    samples: list[tuple[datetime.datetime, dict[str, Any]]]  # each status written, and when
    client: HandshakeChecker


def soak_run(
    kubectl: Kubectl, namespace: str, frontend_ip: str, soak_pebble: Pebble, ca: AcmeFaultProxy
) -> SoakRun:
    def served_other_than(serial: str | None) -> str | None:
        """The serial of the certificate status describes, if it is not
        `serial` and the probe found it on every pod for every name."""
        now = kubectl.json("get", "blogsite", SOAK_SITE, "-n", namespace).get("status") or {}
        certificate = now.get("certificate") or {}
        current: str | None = certificate.get("serialNumber")
        found: dict[str, Any] = next(
            (c for c in now.get("conditions") or [] if c["type"] == "CertificateServed"), {}
        )
        every_pod = f"present serial {current} for every name" in found.get("message", "")
        if current in (None, serial) or certificate.get("placeholder"):
            return None
        return current if found.get("status") == "True" and every_pod else None

    def renewed_from(serial: str) -> str:
        renewed: str = wait_for(
            lambda: served_other_than(serial),
            timeout=2 * SOAK_LIFETIME_SECONDS,
            interval=0.5,
            what=f"a certificate after serial {serial} found on every pod",
        )
        return renewed

    first: str = wait_for(
        lambda: served_other_than(None),
        timeout=300,
        interval=1,
        what="the soak site's first certificate served",
    )
    # Served by every Ready pod is not yet every pod: those started with the
    # placeholder drain for 5 s, and a proxy that has not yet heard they are
    # leaving can still send a new connection there.
    wait_for(
        lambda: frontend_replaced(
            kubectl,
            namespace,
            deployment(kubectl, namespace, "frontend", SOAK_SITE)["spec"]["template"],
            SOAK_SITE,
        ),
        what="the soak site's placeholder pods gone",
    )
    client = HandshakeChecker(frontend_ip, SOAK_DOMAINS, tls_context(soak_pebble.root_pem()))
    with client, Watch(kubectl, namespace, f"blogsite/{SOAK_SITE}", "{.status}") as watch:
        serials, outage = renewals_through_an_outage(
            kubectl,
            namespace,
            SOAK_SITE,
            ca,
            serial=first,
            renewed_from=renewed_from,
            renewals=3,
            planned_ahead=5,
            down_at_most=0.75 * SOAK_LIFETIME_SECONDS,  # the latest planned renewal
        )
    samples = [
        (received, json.loads(line) if line else {})
        for received, line in zip(watch.received, watch.samples, strict=False)
    ]
    return SoakRun(serials, outage, samples, client)


def check_soak(
    kubectl: Kubectl,
    namespace: str,
    ca: AcmeFaultProxy,
    run: SoakRun,
) -> None:
    serials, outage, samples, client = run
    # What the probe found, at every status write: never an expired or a
    # non-covering certificate. A pod may still present, for a moment, a
    # valid certificate from before the one status describes (renewals faster
    # than rollouts, as Pebble's window allows): ServesOther, not a lapse.
    written = 0
    older = 0
    for received, body in samples:
        for found in body.get("conditions") or []:
            if found["type"] == "CertificateServed" and found["status"] == "False":
                assert "expired" not in found["message"], (received, found)
                assert "does not cover" not in found["message"], (received, found)
                older += 1
        certificate = body.get("certificate") or {}
        if certificate.get("serialNumber") and not certificate.get("placeholder"):
            assert parse_time(certificate["notAfter"]) > received, (received, certificate)
            assert sorted(certificate["dnsNames"]) == sorted(SOAK_DOMAINS), certificate
            written += 1
    assert written >= 3, samples
    # What a client was handed: never a certificate it could not verify.
    assert client.handshakes > 0, client.summary()
    assert not client.refused, client.summary()
    # The outage met a renewal: an order failed (and the next one renewed).
    assert any((body.get("certificate") or {}).get("failedAttempts") for _, body in samples)
    # Every renewal order named the certificate it replaces, but right after a refusal.
    answered = orders_naming_what_they_replace(ca)
    # The ledger of this CA's account counts the orders without `replaces`.
    ledgers = [
        account
        for account in kubectl.json(
            "get", "secrets", "-n", namespace, "-l", "blog.daedalus.dev/acme-account=true"
        )["items"]
        if account["metadata"]["annotations"].get("blog.daedalus.dev/acme-server")
        == ca.directory_url
    ]
    (account,) = ledgers
    ledger = Ledger.from_annotation(account["metadata"]["annotations"][LEDGER_ANNOTATION])
    counted = Counter(digest for _, digest in ledger.certificates)
    plain = issued_without_replaces(answered)
    assert counted == {names_digest(SOAK_DOMAINS): len(plain)}, (counted, plain)
    FIGURES.append(
        f"real node soak: {len(serials)} certificates of {SOAK_LIFETIME_SECONDS}s in a row "
        f"through a refused `replaces` and a {outage:.0f}s CA outage; {written} status writes "
        f"({older} with a pod still presenting an older valid one), "
        f"{client.handshakes} client handshakes, none refused"
    )


class HandshakeChecker:
    """A client that, twice a second, opens a TLS connection to the frontend
    for each name and verifies what it is handed against the CA's root: an
    expired or non-covering certificate is refused. Connections that fail
    otherwise (a pod draining) are counted apart: they are not certificates."""

    def __init__(self, address: str, names: list[str], tls: ssl.SSLContext) -> None:
        self.address, self.names, self.tls = address, names, tls
        self.handshakes = 0
        self.refused: list[str] = []
        self.other_errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="handshakes", daemon=True)

    def __enter__(self) -> HandshakeChecker:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for name in self.names:
                try:
                    with (
                        socket.create_connection((self.address, 443), timeout=5) as raw,
                        self.tls.wrap_socket(raw, server_hostname=name),
                    ):
                        self.handshakes += 1
                except ssl.SSLCertVerificationError as error:
                    after = time.monotonic() - self._started
                    self.refused.append(f"{name}: {error.verify_message} after {after:.1f}s")
                except OSError as error:
                    self.other_errors.append(f"{name}: {error}")

    def summary(self) -> str:
        return (
            f"{self.handshakes} handshakes, refused {self.refused[:5]}, "
            f"{len(self.other_errors)} other errors {self.other_errors[:5]}"
        )


def request_renewal(kubectl: Kubectl, namespace: str, value: str) -> None:
    """The renew annotation with a new value: one order, even during backoff."""
    kubectl.run(
        "annotate",
        "blogsite",
        SITE,
        "-n",
        namespace,
        "--overwrite",
        f"blog.daedalus.dev/renew-certificate={value}",
    )


def tls_secret(name: str, cert_pem: bytes, key_pem: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(cert_pem).decode(),
            "tls.key": base64.b64encode(key_pem).decode(),
        },
    }


def mounting(pod_spec: dict[str, Any], secret_name: str) -> dict[str, Any]:
    """A frontend pod spec with another Secret in its TLS volume."""
    for volume in pod_spec["volumes"]:
        if volume["name"] == "tls":
            volume["secret"]["secretName"] = secret_name
    return pod_spec


def serial_at(address: str, port: int, tls: ssl.SSLContext) -> int | None:
    try:
        der = request(address, port, DOMAINS[0], tls=tls).peer_certificate
    except OSError:
        return None
    return x509.load_der_x509_certificate(der or b"").serial_number


def serial_served(site: ServedSite, tls: ssl.SSLContext) -> int | str:
    """The serial of the certificate nginx presents for the primary domain."""
    try:
        der = request(site.frontend_ip, 443, DOMAINS[0], tls=tls).peer_certificate
    except OSError as error:
        return str(error)
    return x509.load_der_x509_certificate(der or b"").serial_number


def frontend_serves(kubectl: Kubectl, namespace: str, cert_pem: bytes) -> bool:
    """Every frontend pod runs the template made for this certificate, and the
    pods before it are gone: while they drain (5 s) they still serve theirs."""
    template = deployment(kubectl, namespace, "frontend")["spec"]["template"]
    annotations = template["metadata"].get("annotations") or {}
    if annotations.get(TLS_HASH_ANNOTATION) != hashlib.sha256(cert_pem).hexdigest():
        return False
    return frontend_replaced(kubectl, namespace, template)


def frontend_replaced(
    kubectl: Kubectl, namespace: str, template: dict[str, Any], site: str = SITE
) -> bool:
    """The frontend rolled out to this template and no other pod is left (one
    draining still answers): every pod carries the template's labels and
    annotations (a renewal changes an annotation, not the version label)."""
    replicas = deployment(kubectl, namespace, "frontend", site)["spec"]["replicas"]
    if not rolled_out(kubectl, namespace, "frontend", site=site):
        return False
    wanted = {**template["metadata"]["labels"], **(template["metadata"].get("annotations") or {})}
    selector = f"app.kubernetes.io/component=frontend,app.kubernetes.io/instance={site}"
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return len(pods) == replicas and all(
        wanted.items()
        <= {**p["metadata"]["labels"], **(p["metadata"].get("annotations") or {})}.items()
        for p in pods
    )


def assert_page(response: Response) -> None:
    assert response.status == 200, response
    assert PAGE in response.body, response


def change_and_wait_for_revert(
    kubectl: Kubectl, node: RealNode, pebble: Pebble, site: ServedSite, bad_image: str
) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    kubectl.apply(blogsite(node, pebble, bad_image), site.namespace)

    def reverted() -> dict[str, Any] | None:
        body = site_status(kubectl, site.namespace)
        rollout = condition(body, "RolloutHealthy")
        return body if rollout.get("reason") == "RolledBack" else None

    body = wait_for(reverted, timeout=240, interval=0.5, what=f"{bad_image} reverted")
    elapsed = time.monotonic() - started
    wait_for(
        lambda: rolled_out(kubectl, site.namespace, "daedalus", site.good_image),
        timeout=120,
        what="the last good image back in place",
    )
    return elapsed, body


@pytest.mark.parametrize(
    ("variant", "why"),
    [
        ("crash", "restarted"),
        # Its health check is also the liveness probe: restarts may come first.
        ("never-ready", "not Ready|restarted"),
        ("missing", "ImagePull|ErrImagePull"),
    ],
)
def test_bad_daedalus_version_is_reverted_without_a_failed_request(  # noqa: PLR0917
    kubectl: Kubectl,
    real_node: RealNode,
    pebble: Pebble,
    served_site: ServedSite,
    variant: str,
    why: str,
) -> None:
    site = served_site
    bad = (
        f"{real_node.daedalus_image.rsplit(':', 1)[0]}:not-in-the-registry"
        if variant == "missing"
        else real_node.daedalus(variant)
    )
    # Failure-free by construction: a version that never becomes Ready gets
    # no traffic, so this window is not evidence of zero downtime (that is
    # the frontend change's, the renewal's and the handovers'). It shows the
    # good pods kept serving while the bad ones failed and were reverted.
    with site.traffic() as traffic:
        elapsed, body = change_and_wait_for_revert(kubectl, real_node, pebble, site, bad)
        time.sleep(1)  # a last second of requests after the revert settled
    FIGURES.append(
        f"real node: {variant} daedalus reverted in {elapsed:.1f}s; traffic (no failure "
        f"possible: the bad pods were never Ready): {traffic.summary()}"
    )
    message = condition(body, "RolloutHealthy")["message"]
    assert any(reason in message for reason in why.split("|")), message
    assert (
        deployment(kubectl, site.namespace, "daedalus")["spec"]["template"]["spec"]["containers"][
            0
        ]["image"]
        == site.good_image
    )
    assert not traffic.failures, traffic.summary()
    assert traffic.sent > 20
    # Back to the good spec, so the next test starts from a healthy site.
    kubectl.apply(blogsite(real_node, pebble, site.good_image), site.namespace)
    wait_for(
        lambda: (
            condition(site_status(kubectl, site.namespace), "RolloutHealthy").get("status")
            == "True"
        ),
        timeout=60,
        what="RolloutHealthy again",
    )


def test_a_container_that_crashes_once_is_not_reverted(
    kubectl: Kubectl, real_node: RealNode, pebble: Pebble, served_site: ServedSite
) -> None:
    site = served_site
    image = real_node.daedalus("crash-once")
    with site.traffic() as traffic:
        kubectl.apply(blogsite(real_node, pebble, image, rollout=ROLLING), site.namespace)
        wait_rolled_out(
            kubectl, site.namespace, "daedalus", image, "the crash-once version rolled out"
        )
    FIGURES.append(f"real node: crash-once version rolled out; traffic: {traffic.summary()}")
    body = site_status(kubectl, site.namespace)
    assert condition(body, "RolloutHealthy")["status"] == "True", body["status"]
    pods = kubectl.json(
        "get", "pods", "-n", site.namespace, "-l", "app.kubernetes.io/component=daedalus"
    )["items"]
    restarts = [
        c["restartCount"]
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        for c in p["status"]["containerStatuses"]
    ]
    assert restarts, pods
    assert all(r == 1 for r in restarts), restarts
    assert not traffic.failures, traffic.summary()
    # The crash-once version is good from now on.
    served_site.good_image = image


# The canary with its defaults, except a shorter bake: the bake holds good
# versions, not the bad ones these tests revert.
CANARY_ROLLOUT = {"strategy": "Canary", "canary": {"bakeSeconds": 30}}


def standin_env(**env: str) -> dict[str, Any]:
    """daedalus settings making the stand-in behave (a new version, too)."""
    return {"env": [{"name": key, "value": value} for key, value in sorted(env.items())]}


def apply_version(  # noqa: PLR0917 - the site, and the version to give it
    kubectl: Kubectl,
    node: RealNode,
    pebble: Pebble,
    site: ServedSite,
    rollout: dict[str, Any],
    version: str,
    **env: str,
) -> None:
    """The good image as the stand-in's `version`, behaving as `env`."""
    changed = blogsite(
        node, pebble, site.good_image, rollout=rollout, daedalus=standin_env(VERSION=version, **env)
    )
    kubectl.apply(changed, site.namespace)


@dataclass
class CanaryWindow:
    """What users got from a change to the moment no request reaches the new version."""

    version: str
    changed: float
    answers: list[Answer]

    @functools.cached_property
    def new(self) -> list[Answer]:
        return [a for a in self.answers if a.at >= self.changed and a.version == self.version]

    @functools.cached_property
    def last_new(self) -> float:
        return max((a.at for a in self.new), default=self.changed)

    @functools.cached_property
    def window(self) -> list[Answer]:
        last = self.last_new
        return [a for a in self.answers if self.changed <= a.at <= last]

    @functools.cached_property
    def failed(self) -> list[Answer]:
        return [a for a in self.window if not a.ok]

    def describe(self) -> str:
        first = min((a.at for a in self.failed), default=None)
        share = len(self.failed) / len(self.window) if self.window else 0.0
        to_revert = f"{self.last_new - first:.1f}s" if first is not None else "-"
        return (
            f"{len(self.failed)} of {len(self.window)} requests failed ({share:.2%}) from the "
            f"change until the new version answered no more ({self.last_new - self.changed:.1f}s); "
            f"its first failure to its last answer {to_revert}; {len(self.new)} answered by it"
        )


def daedalus_env(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    """The env of the daedalus Deployment's container: the stand-in's version and behaviour."""
    container = deployment(kubectl, namespace, "daedalus")["spec"]["template"]["spec"][
        "containers"
    ][0]
    return list(container.get("env") or [])


def settled(kubectl: Kubectl, namespace: str) -> bool:
    """daedalus runs its Deployment's version in every pod, none going, and
    the canary has no pod: what a test leaves for the next one, so no request
    of the next reaches a version of this one while its pods drain."""
    wanted = deployment(kubectl, namespace, "daedalus")["spec"]["template"]["metadata"]["labels"][
        VERSION_LABEL
    ]
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={SITE}")
    for pod in pods["items"]:
        labels = pod["metadata"]["labels"]
        component = labels.get("app.kubernetes.io/component")
        if component == "canary":
            return False
        if component == "daedalus" and (
            labels.get(VERSION_LABEL) != wanted or pod["metadata"].get("deletionTimestamp")
        ):
            return False
    return rolled_out(kubectl, namespace, "daedalus")


def back_to_the_good_version(
    kubectl: Kubectl, node: RealNode, pebble: Pebble, site: ServedSite
) -> None:
    """The good spec as a rolling update, rolled out, the other versions' pods gone."""
    kubectl.apply(blogsite(node, pebble, site.good_image, rollout=ROLLING), site.namespace)
    wait_for(
        lambda: not daedalus_env(kubectl, site.namespace) and settled(kubectl, site.namespace),
        timeout=180,
        interval=1,
        what="the good version back, alone",
    )


def canary_revert(  # noqa: PLR0917 - one scenario's settings
    kubectl: Kubectl,
    node: RealNode,
    pebble: Pebble,
    site: ServedSite,
    version: str,
    env: dict[str, str],
    rollout: dict[str, Any],
) -> tuple[CanaryWindow, dict[str, Any]]:
    """Roll out the stand-in as `version` behaving as `env` under traffic,
    until the canary is reverted; the users' side and the status."""
    kubectl.apply(blogsite(node, pebble, site.good_image, rollout=rollout), site.namespace)
    wait_for(lambda: settled(kubectl, site.namespace), timeout=120, what="the site settled")
    https, plain = site.traffic(), site.plain_traffic()
    https.interval = plain.interval = 0.0  # without pause
    with https, plain:
        time.sleep(2)
        changed = time.monotonic()
        apply_version(kubectl, node, pebble, site, rollout, version, **env)

        def reverted() -> dict[str, Any] | None:
            body = site_status(kubectl, site.namespace)
            return body if condition(body, "RolloutHealthy").get("reason") == "RolledBack" else None

        body = wait_for(reverted, timeout=300, interval=0.5, what=f"{version} reverted")
        time.sleep(3)  # requests after the revert: none may reach the version
    answers = sorted([*https.answers, *plain.answers], key=lambda a: a.at)
    return CanaryWindow(version, changed, answers), body


# A version failing 60 s after start fails during the bake: the steps take
# about 35 s of it.
LATE_ROLLOUT = {"strategy": "Canary", "canary": {"bakeSeconds": 120}}


@pytest.mark.parametrize(
    ("version", "env", "rollout"),
    [
        ("all-500", {"ERROR_RATE": "1"}, CANARY_ROLLOUT),
        ("fifth-500", {"ERROR_RATE": "0.2"}, CANARY_ROLLOUT),
        ("slow", {"SLOW": "1500ms"}, CANARY_ROLLOUT),
        ("late", {"FAIL_AFTER": "60s"}, LATE_ROLLOUT),
    ],
)
def test_a_version_failing_users_behind_a_passing_health_check_is_reverted_by_its_canary(  # noqa: PLR0917
    kubectl: Kubectl,
    real_node: RealNode,
    pebble: Pebble,
    served_site: ServedSite,
    version: str,
    env: dict[str, str],
    rollout: dict[str, Any],
) -> None:
    site = served_site
    window, body = canary_revert(kubectl, real_node, pebble, site, version, env, rollout)
    FIGURES.append(f"real node: canary of a {version} version reverted: {window.describe()}")
    daedalus = body["status"]["components"]["daedalus"]
    assert daedalus["failedReason"].startswith("AnalysisFailed: "), daedalus
    assert window.new, "the canary answered no request: nothing was judged"
    # Every failure came from the canary; none after the revert.
    others = [a.failure for a in window.failed if a.version != version]
    assert not others, (window.describe(), others[:5])
    after = [a for a in window.answers if a.at > window.last_new]
    assert after, "no request after the revert"
    assert all(a.ok and a.version != version for a in after)
    assert rolled_out(kubectl, site.namespace, "daedalus", site.good_image)
    assert deployment(kubectl, site.namespace, "canary")["spec"]["replicas"] == 0
    # Back to the good spec as a rolling update, for the tests after this one.
    back_to_the_good_version(kubectl, real_node, pebble, site)


@pytest.mark.parametrize(
    ("version", "env", "seconds"),
    [
        ("all-500", {"ERROR_RATE": "1"}, 30),
        ("fifth-500", {"ERROR_RATE": "0.2"}, 30),
        ("slow", {"SLOW": "1500ms"}, 30),
        ("late", {"FAIL_AFTER": "60s"}, 100),
    ],
)
def test_the_health_gate_alone_keeps_a_version_failing_behind_its_health_check(  # noqa: PLR0917
    kubectl: Kubectl,
    real_node: RealNode,
    pebble: Pebble,
    served_site: ServedSite,
    version: str,
    env: dict[str, str],
    seconds: int,
) -> None:
    """The side-by-side figures: each canary scenario's version as a rolling
    update (what plain Kubernetes does too: it never reverts a Ready pod),
    watched as long as its failure needs to show."""
    site = served_site
    back_to_the_good_version(kubectl, real_node, pebble, site)
    # About 20 requests a second each, not without pause: a failed share
    # needs no more, and these windows are long beside the other tests.
    https, plain = site.traffic(), site.plain_traffic()
    with https, plain:
        time.sleep(2)
        changed = time.monotonic()
        # Another version than its canary twin's: a version that failed is
        # not rolled out again (no flip-flop), whatever the strategy.
        apply_version(kubectl, real_node, pebble, site, ROLLING, f"{version}-rolling", **env)
        time.sleep(seconds)
    window = [a for a in [*https.answers, *plain.answers] if a.at >= changed]
    failed = sum(not a.ok for a in window)
    first = min((a.at for a in window if not a.ok), default=changed)
    FIGURES.append(
        f"real node: the {version} version as a rolling update (health only; plain Kubernetes "
        f"alike): {failed} of {len(window)} requests failed ({failed / len(window):.2%}) in "
        f"{seconds}s from the change, first failure {first - changed:.1f}s after it, "
        "never reverted"
    )
    body = site_status(kubectl, site.namespace)
    assert condition(body, "RolloutHealthy")["status"] == "True", body["status"]
    assert {"name": "VERSION", "value": f"{version}-rolling"} in daedalus_env(
        kubectl, site.namespace
    )
    # Users got its failures (a slow one's are few: each holds a client 1.5 s),
    # and nothing reverted it.
    assert failed >= 10, failed
    back_to_the_good_version(kubectl, real_node, pebble, site)


def test_a_good_version_goes_through_every_canary_step_without_a_failed_request(
    kubectl: Kubectl, real_node: RealNode, pebble: Pebble, served_site: ServedSite
) -> None:
    site = served_site
    back_to_the_good_version(kubectl, real_node, pebble, site)
    kubectl.apply(
        blogsite(real_node, pebble, site.good_image, rollout=CANARY_ROLLOUT), site.namespace
    )
    wait_for(lambda: settled(kubectl, site.namespace), timeout=120, what="the site settled")
    https, plain = site.traffic(), site.plain_traffic()
    https.interval = plain.interval = 0.0
    phases: list[str] = []
    with https, plain:
        time.sleep(2)
        changed = time.monotonic()
        apply_version(kubectl, real_node, pebble, site, CANARY_ROLLOUT, "good-2")

        def promoted() -> bool:
            body = site_status(kubectl, site.namespace)
            canary = (body.get("status") or {}).get("canary")
            if canary is not None:
                where = f"{canary['phase']} {canary['step']}"
                if not phases or phases[-1] != where:
                    phases.append(where)
                return False
            env = daedalus_env(kubectl, site.namespace)
            return (
                bool(phases)
                and {"name": "VERSION", "value": "good-2"} in env
                and rolled_out(kubectl, site.namespace, "daedalus")
            )

        wait_for(promoted, timeout=600, interval=0.5, what="good-2 promoted to stable")
        took = time.monotonic() - changed
        time.sleep(2)
    answers = [*https.answers, *plain.answers]
    after = [a for a in answers if a.at > changed + took]
    FIGURES.append(
        f"real node: a good version through the canary steps to stable in {took:.1f}s "
        f"(phases {', '.join(phases)}); {len(answers)} requests, "
        f"{sum(not a.ok for a in answers)} failed, "
        f"{sum(a.version == 'good-2' for a in answers)} answered by it"
    )
    assert not https.failures, https.summary()
    assert not plain.failures, plain.summary()
    assert {"Step 1", "Step 3", "Bake 3"} <= set(phases), phases
    assert after
    assert all(a.version == "good-2" for a in after)
    body = site_status(kubectl, site.namespace)
    assert condition(body, "RolloutHealthy")["status"] == "True", body["status"]
    assert deployment(kubectl, site.namespace, "canary")["spec"]["replicas"] == 0

    # The price: the next good version as a plain rolling update, the same clients.
    https, plain = site.traffic(), site.plain_traffic()
    https.interval = plain.interval = 0.0
    with https, plain:
        changed = time.monotonic()
        apply_version(kubectl, real_node, pebble, site, ROLLING, "good-3")
        wait_for(
            lambda: (
                {"name": "VERSION", "value": "good-3"} in daedalus_env(kubectl, site.namespace)
                and settled(kubectl, site.namespace)
            ),
            timeout=180,
            interval=0.5,
            what="good-3 rolled out",
        )
        rolling = time.monotonic() - changed
    FIGURES.append(
        f"real node: the next good version as a plain rolling update in {rolling:.1f}s "
        f"(the canary with a 30 s bake took {took / rolling:.1f}x as long); "
        f"traffic: {https.summary()}; {plain.summary()}"
    )
    assert not https.failures, https.summary()
    assert not plain.failures, plain.summary()


@pytest.mark.timeout(1500)  # eleven releases, each through its steps and bake
def test_ten_good_releases_in_a_row_beside_a_flaky_stable_version_are_never_reverted(
    kubectl: Kubectl, real_node: RealNode, pebble: Pebble, served_site: ServedSite
) -> None:
    """No false revert: stable answers 1 % of pages with 500 and every answer
    jitters (0 to 45 ms); each release is as flaky, and each goes through."""
    site = served_site
    rollout = {
        "strategy": "Canary",
        "canary": {"steps": [10, 50], "stepSeconds": 5, "maxStepSeconds": 60, "bakeSeconds": 5},
    }

    def release(version: str) -> dict[str, Any]:
        env = standin_env(VERSION=version, ERROR_RATE="0.01")
        return blogsite(real_node, pebble, site.good_image, rollout=rollout, daedalus=env)

    def running(version: str) -> bool:
        body = site_status(kubectl, site.namespace)
        env = daedalus_env(kubectl, site.namespace)
        return (
            (body.get("status") or {}).get("canary") is None
            and {"name": "VERSION", "value": version} in env
            and rolled_out(kubectl, site.namespace, "daedalus")
        )

    kubectl.apply(release("flaky-0"), site.namespace)  # the flaky stable, as a canary too
    wait_for(lambda: running("flaky-0"), timeout=300, interval=1, what="flaky-0 stable")
    # The rollout memory keeps an earlier test's failed version: any new one is a revert.
    failed_before = site_status(kubectl, site.namespace)["status"]["components"]["daedalus"].get(
        "failedVersion"
    )
    https = site.traffic()
    https.interval = 0.0
    https.paths = ("/?delay=0ms", "/?delay=20ms", "/?delay=5ms", "/?delay=45ms")
    took = []
    with https:
        for number in range(1, 11):
            started = time.monotonic()
            version = f"flaky-{number}"
            kubectl.apply(release(version), site.namespace)
            wait_for(
                functools.partial(running, version),
                timeout=300,
                interval=1,
                what=f"{version} promoted",
            )
            took.append(time.monotonic() - started)
            rollout_condition = condition(site_status(kubectl, site.namespace), "RolloutHealthy")
            assert rollout_condition["status"] == "True", rollout_condition
    failed = sum(not a.ok for a in https.answers)
    FIGURES.append(
        f"real node: ten releases beside a stable failing 1 %, none reverted, each "
        f"{min(took):.0f}-{max(took):.0f}s; {failed} of {len(https.answers)} requests failed "
        f"({failed / len(https.answers):.2%}, the versions' own 1 %)"
    )
    daedalus = site_status(kubectl, site.namespace)["status"]["components"]["daedalus"]
    assert daedalus.get("failedVersion") == failed_before, daedalus
    back_to_the_good_version(kubectl, real_node, pebble, site)


def private_image(real_node: RealNode, env: dict[str, str]) -> str:
    """The blog image, by the address of the registry that wants a login."""
    repository = env["DAEDALUS_BLOG_IMAGE"].split("/", 1)[1]  # private/daedalus-blog:<tag>
    return f"{env['PRIVATE_REGISTRY']}/{repository}"


def waiting_reason(kubectl: Kubectl, namespace: str, pod: str) -> dict[str, str] | None:
    status = kubectl.json("get", "pod", pod, "-n", namespace).get("status") or {}
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in {"ErrImagePull", "ImagePullBackOff"}:
            return {"reason": waiting["reason"], "message": waiting.get("message", "")}
    return None


def test_pause_resume_abort_and_promote_steer_a_canary_under_traffic(
    kubectl: Kubectl, real_node: RealNode, pebble: Pebble, served_site: ServedSite
) -> None:
    site = served_site
    back_to_the_good_version(kubectl, real_node, pebble, site)
    # One step, held past stepSeconds by pause, then a bake that would last
    # ten minutes: only the commands move this canary on.
    rollout = {
        "strategy": "Canary",
        "canary": {"steps": [50], "stepSeconds": 5, "bakeSeconds": 600},
    }

    def release(version: str) -> dict[str, Any]:
        return blogsite(
            real_node,
            pebble,
            site.good_image,
            rollout=rollout,
            daedalus=standin_env(VERSION=version),
        )

    def canary() -> dict[str, Any]:
        return dict((site_status(kubectl, site.namespace).get("status") or {}).get("canary") or {})

    def command(name: str) -> None:
        result = plugin(kubectl, name, SITE, "-n", site.namespace)
        assert result.returncode == 0, result.stderr

    https = site.traffic()
    https.interval = 0.0  # a hundred canary requests a second: the step is judged in seconds
    with https:
        kubectl.apply(release("steered-1"), site.namespace)
        wait_for(lambda: canary().get("phase") == "Step", timeout=120, what="step 1")
        command("pause")
        wait_for(lambda: canary().get("paused"), timeout=30, what="the canary paused")
        # Far more requests than a pass needs, and past stepSeconds: held all the same.
        wait_for(
            lambda: (canary().get("canaryRequests") or 0) >= 1000,
            timeout=120,
            what="1000 canary requests in the paused step",
        )
        assert (canary()["phase"], canary()["step"], canary()["paused"]) == ("Step", 1, True)
        command("resume")
        wait_for(lambda: canary().get("phase") == "Bake", timeout=60, what="the bake")
        command("abort")
        wait_for(
            lambda: (
                condition(site_status(kubectl, site.namespace), "RolloutHealthy").get("reason")
                == "RolledBack"
            ),
            timeout=60,
            what="the aborted canary reverted",
        )
        wait_for(lambda: settled(kubectl, site.namespace), timeout=120, what="no canary pod")
        assert not daedalus_env(kubectl, site.namespace)  # stable never left the good version
        message = condition(site_status(kubectl, site.namespace), "RolloutHealthy")["message"]
        assert "kubectl blogsite abort" in message, message

        kubectl.apply(release("steered-2"), site.namespace)
        wait_for(lambda: canary().get("phase") == "Step", timeout=120, what="step 1 of steered-2")
        promoted_at = time.monotonic()
        command("promote")
        wait_for(
            lambda: (
                not canary()
                and {"name": "VERSION", "value": "steered-2"}
                in daedalus_env(kubectl, site.namespace)
                and settled(kubectl, site.namespace)
            ),
            timeout=180,
            what="steered-2 promoted to stable",
        )
        promotion = time.monotonic() - promoted_at
    FIGURES.append(
        f"real node: a canary paused, resumed, aborted; another promoted by hand in "
        f"{promotion:.1f}s (its bake was 600 s); traffic: {https.summary()}"
    )
    assert not https.failures, https.summary()
    back_to_the_good_version(kubectl, real_node, pebble, site)


def test_a_real_blog_image_from_a_private_registry_runs_as_its_own_user(
    kubectl: Kubectl, real_node: RealNode, pebble: Pebble, served_site: ServedSite
) -> None:
    """An image as real blogs come: from a registry that wants a login, running
    as its own uid, writing to /tmp and a cache at start (or exiting). The
    site gives it a pull secret, its uid, two writable directories and
    arguments, and the pod stays within the restricted standard."""
    site = served_site
    env = cluster_env()
    image = private_image(real_node, env)
    # The registry really wants the login: a pod without the Secret cannot pull.
    unauthorized = f"no-login-{uuid.uuid4().hex[:5]}"
    kubectl.run(
        "run", unauthorized, "-n", site.namespace, "--image", image, "--restart=Never",
        "--overrides", json.dumps({"spec": {"automountServiceAccountToken": False}}),
    )  # fmt: skip
    try:
        refused = wait_for(
            lambda: waiting_reason(kubectl, site.namespace, unauthorized),
            timeout=60,
            what="the pull without a login refused",
        )
        # containerd's words for the 401 and its Basic challenge.
        assert "no basic auth credentials" in refused["message"], refused
    finally:
        kubectl.run("delete", "pod", unauthorized, "-n", site.namespace, "--wait=false")
    kubectl.run(
        "create", "secret", "docker-registry", "private-login", "-n", site.namespace,
        "--docker-server", env["PRIVATE_REGISTRY"],
        "--docker-username", env["PRIVATE_REGISTRY_USER"],
        "--docker-password", env["PRIVATE_REGISTRY_PASSWORD"],
    )  # fmt: skip
    daedalus = {
        "imagePullSecrets": ["private-login"],
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "writablePaths": ["/tmp", "/var/cache/blog"],
        "args": ["-page", "a real blog"],
    }
    with site.traffic() as traffic:
        kubectl.apply(
            blogsite(real_node, pebble, image, daedalus=daedalus, rollout=ROLLING), site.namespace
        )
        wait_rolled_out(
            kubectl, site.namespace, "daedalus", image, "the private blog image rolled out"
        )
        # The old pods drain for a few seconds after the new ones are Ready.
        tls = tls_context(site.root_pem)
        wait_for(
            lambda: "a real blog" in request(site.frontend_ip, 443, DOMAINS[0], tls=tls).body,
            timeout=30,
            what="the page of the blog image, given its args",
        )
        # Back to the stand-in the other tests use (a change like any other).
        kubectl.apply(blogsite(real_node, pebble, site.good_image, rollout=ROLLING), site.namespace)
        wait_rolled_out(
            kubectl, site.namespace, "daedalus", site.good_image, "the stand-in rolled back in"
        )
    FIGURES.append(f"real node: private blog image in and out; traffic: {traffic.summary()}")
    assert not traffic.failures, traffic.summary()
    body = site_status(kubectl, site.namespace)
    assert condition(body, "RolloutHealthy")["status"] == "True", body["status"]


# hack/node.sh's state directory, which `cluster.sh down` removes: volumes
# made here for a test go there, so none outlives the cluster.
NODE_STATE = Path("/var/lib/blogsite-node")


def node_volume(kubectl: Kubectl, namespace: str, claim: str, directory: Path) -> None:
    """A PersistentVolume on the node (hostPath: the node is this machine)
    bound to a new claim `claim`, as a cluster's storage would provide."""
    directory.mkdir(parents=True)
    os.chown(directory, NONROOT_UID, NONROOT_UID)  # hostPath ignores fsGroup
    volume = f"{namespace}-{claim}"
    objects = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "16Mi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(directory), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "16Mi"}},
            },
        },
    ]
    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))


def kept_lines(kubectl: Kubectl, namespace: str, name: str) -> list[str]:
    ip = cluster_ip(kubectl, namespace, f"{name}-frontend")
    if ip is None:
        return []
    try:
        response = request(ip, 80, f"{name}.example.test", "/kept")
    except OSError:
        return []
    return response.body.splitlines() if response.status == 200 else []


def test_a_persistent_volume_keeps_the_blogs_files_across_a_rollout_and_the_site(
    kubectl: Kubectl, real_node: RealNode, real_namespace: str, operator_pod: dict[str, Any]
) -> None:
    """Two pods of one version, then two of the next, append to one file on
    the user's claim (ReadWriteOnce): the next version's pods read what the
    first wrote, and the claim and its files outlive the BlogSite."""
    namespace, name, claim = real_namespace, "keeps", "keeps-content"
    directory = NODE_STATE / "volumes" / f"{namespace}-{claim}"
    node_volume(kubectl, namespace, claim, directory)

    def site(version: str) -> dict[str, Any]:
        return {
            "apiVersion": "blog.daedalus.dev/v1alpha1",
            "kind": "BlogSite",
            "metadata": {"name": name},
            "spec": {
                "domains": [f"{name}.example.test"],
                "daedalus": {
                    "image": real_node.daedalus(),
                    "replicas": 2,
                    "healthCheck": {"path": "/healthz", "periodSeconds": 2},
                    "env": [
                        {"name": "KEEP_FILE", "value": "/var/lib/blog/kept"},
                        {"name": "VERSION", "value": version},
                    ],
                    "persistentVolume": {"claimName": claim, "mountPath": "/var/lib/blog"},
                },
                "frontend": {"replicas": 1, "http": "serve"},
                # Judged by pod health: no traffic here for a canary to judge.
                "rollout": {"readyTimeoutSeconds": READY_TIMEOUT, "strategy": "RollingUpdate"},
            },
        }

    try:
        for version, lines in (("v1", 2), ("v2", 4)):
            kubectl.apply(site(version), namespace)
            kept = wait_for(
                lambda lines=lines: (  # type: ignore[misc]
                    len(found := kept_lines(kubectl, namespace, name)) == lines and found
                ),
                timeout=180,
                interval=1,
                what=f"{lines} starts kept on the volume",
            )
        versions = [line.split()[1] for line in kept]
        assert versions == ["v1", "v1", "v2", "v2"], kept
        assert len({line.split()[0] for line in kept}) == 4, kept  # four pods
        written = directory / "kept"
        assert written.read_text().splitlines() == kept
        assert written.stat().st_uid == NONROOT_UID  # the pod's own user wrote it
        daedalus = kubectl.json("get", "deployment", f"{name}-daedalus", "-n", namespace)
        assert "podAffinity" in daedalus["spec"]["template"]["spec"]["affinity"]
        kubectl.run("delete", "blogsite", name, "-n", namespace, "--wait=true", timeout=180)
        wait_for(
            lambda: not kubectl.exists("deployment", f"{name}-daedalus", namespace),
            what="the site's Deployments gone",
        )
        assert kubectl.exists("persistentvolumeclaim", claim, namespace)
        assert written.read_text().splitlines() == kept
    finally:
        kubectl.run("delete", "blogsite", name, "-n", namespace, "--wait=true", check=False)
        kubectl.run("delete", "persistentvolumeclaim", claim, "-n", namespace, check=False)
        kubectl.run("delete", "persistentvolume", f"{namespace}-{claim}", check=False)
        shutil.rmtree(directory, ignore_errors=True)


def working_sets(kubectl: Kubectl, namespaces: dict[str, str]) -> dict[str, float]:
    """MiB of working set per pod, as the kubelet's stats summary reports it
    (what the kubelet evicts by), for the Deployments whose names start with
    `namespaces[namespace]`, keyed by the rest of the Deployment's name (or
    "operator" when nothing is left); "@" holds the time of the statistics,
    so a caller can wait for fresh ones."""
    summary = json.loads(
        kubectl.run("get", "--raw", f"/api/v1/nodes/{NODE_NAME}/proxy/stats/summary").stdout
    )
    found: dict[str, float] = {}
    times: list[float] = []
    for pod in summary.get("pods") or []:
        ref = pod["podRef"]
        prefix = namespaces.get(ref["namespace"])
        if prefix is None or not ref["name"].startswith(prefix):
            continue
        # <deployment>-<ReplicaSet hash>-<pod suffix>
        component = ref["name"].rsplit("-", 2)[0][len(prefix) :].strip("-") or "operator"
        memory = [c.get("memory") or {} for c in pod.get("containers") or []]
        mib = sum(m.get("workingSetBytes", 0) for m in memory) / 2**20
        found[component] = max(found.get(component, 0.0), mib)
        times += [
            datetime.datetime.fromisoformat(m["time"]).timestamp() for m in memory if "time" in m
        ]
    found["@"] = max(times, default=0.0)
    return found


def test_footprint_of_a_site_idle_and_under_50_requests_a_second(
    kubectl: Kubectl, served_site: ServedSite, operator_pod: dict[str, Any]
) -> None:
    """Figures for BENCHMARKS.md, every run: each pod's working set idle and
    under about 50 requests a second through the frontend (the highest of
    the samples taken while the traffic runs; the kubelet refreshes its
    statistics every 10 to 15 s)."""
    site = served_site
    pods = {site.namespace: f"{SITE}-", OPERATOR_NAMESPACE: RELEASE}
    idle = wait_for(
        lambda: (
            (found := working_sets(kubectl, pods)).keys()
            >= {"frontend", "daedalus", "cert-refresh"}
            and all(found.values())
            and found
        ),
        timeout=60,
        what="the kubelet's statistics of every pod of the site",
    )
    busy: dict[str, float] = {}
    traffic = Traffic(site.frontend_ip, 443, DOMAINS[0], tls_context(site.root_pem), PAGE, 0.02)
    with traffic:
        seen = idle["@"]
        for _ in range(3):  # three fresh samples while the traffic runs
            sample = wait_for(
                lambda: (found := working_sets(kubectl, pods))["@"] > seen and found,  # noqa: B023
                timeout=60,
                what="fresh statistics from the kubelet",
            )
            seen = sample.pop("@")
            for component, mib in sample.items():
                busy[component] = max(busy.get(component, 0.0), mib)
    idle.pop("@")
    seconds = traffic.completed[-1] - traffic.completed[0] if traffic.completed else 0.0
    rate = len(traffic.completed) / seconds if seconds else 0.0
    assert not traffic.failures, traffic.summary()
    for component in sorted(idle):
        FIGURES.append(
            f"footprint: {component} working set {idle[component]:.1f} MiB idle, "
            f"{busy.get(component, 0.0):.1f} MiB at {rate:.0f} requests/s"
        )
    assert busy.keys() >= idle.keys(), busy


def one_replica_site(node: RealNode, pebble: Pebble, name: str) -> dict[str, Any]:
    body = blogsite(
        node,
        pebble,
        node.daedalus(),
        domains=[f"{name}.example.test"],
        redirectDomains=[],
        daedalus={"replicas": 1},
        frontend={"replicas": 1},
    )
    body["metadata"]["name"] = name
    return body


def resolve_to_frontend(kubectl: Kubectl, pebble: Pebble, namespace: str, name: str) -> None:
    """Pebble's DNS sends `name`.example.test to the frontend Service of the
    one-replica site `name`, once that Service exists."""
    address = wait_for(
        lambda: cluster_ip(kubectl, namespace, f"{name}-frontend"),
        what=f"the frontend Service of {name}",
    )
    pebble.resolve(f"{name}.example.test", address)


def test_the_operator_at_ten_sites(
    kubectl: Kubectl,
    real_node: RealNode,
    pebble: Pebble,
    served_site: ServedSite,
    operator_pod: dict[str, Any],
) -> None:
    """The operator's working set with ten sites certified and Ready (the
    served site and nine one-replica ones), for BENCHMARKS.md."""
    namespace = served_site.namespace
    names = [f"ten-{i}" for i in range(1, 10)]
    for name in names:
        kubectl.apply(one_replica_site(real_node, pebble, name), namespace)
    try:
        for name in names:
            resolve_to_frontend(kubectl, pebble, namespace, name)

        def all_ready() -> bool:
            sites = kubectl.json("get", "blogsites", "-n", namespace)["items"]
            return len(sites) == 10 and all(
                condition(site, kind).get("status") == "True"
                for site in sites
                for kind in ("Ready", "CertificateReady")
            )

        started = time.monotonic()
        wait_for(all_ready, timeout=300, interval=2, what="ten sites certified and Ready")
        ready = time.monotonic() - started
        pods = {OPERATOR_NAMESPACE: RELEASE}
        seen = working_sets(kubectl, pods)["@"]
        found = wait_for(
            lambda: (sample := working_sets(kubectl, pods))["@"] > seen and sample,
            timeout=60,
            what="fresh statistics from the kubelet",
        )
        FIGURES.append(
            f"footprint: operator working set {found['operator']:.1f} MiB with ten sites "
            f"(nine more certified and Ready in {ready:.0f}s)"
        )
    finally:
        delete_sites(kubectl, namespace, names)


def delete_sites(kubectl: Kubectl, namespace: str, names: list[str]) -> None:
    """Delete the BlogSites `names` and wait until their pods are gone too."""
    kubectl.run("delete", "blogsite", *names, "-n", namespace, "--wait=true", timeout=300)
    selector = f"app.kubernetes.io/instance in ({','.join(names)})"
    wait_for(
        lambda: not kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"],
        timeout=180,
        what=f"the pods of {', '.join(names)} gone",
    )


def renew(kubectl: Kubectl, namespace: str, before: bytes) -> bytes:
    """Ask for a renewal with the annotation; the certificate that replaced `before`."""
    request_renewal(kubectl, namespace, datetime.datetime.now(datetime.UTC).isoformat())
    renewed: bytes = wait_for(
        lambda: (cert := served_certificate(kubectl, namespace)) != before and cert,
        timeout=120,
        interval=1,
        what="a renewed certificate in the Secret",
    )
    return renewed


def test_frontend_change_and_certificate_renewal_drop_no_request(
    kubectl: Kubectl, real_node: RealNode, pebble: Pebble, served_site: ServedSite
) -> None:
    site = served_site
    before = served_certificate(kubectl, site.namespace)
    frontend_version = deployment(kubectl, site.namespace, "frontend")["spec"]["template"][
        "metadata"
    ]["labels"][VERSION_LABEL]
    with site.traffic() as traffic:
        # (c) a frontend change: plain HTTP now redirects (a new nginx config).
        kubectl.apply(
            blogsite(
                real_node, pebble, site.good_image, frontend={"replicas": 2, "http": "redirect"}
            ),
            site.namespace,
        )
        # Old pods answer 200 while they drain, so wait until they are gone.
        wait_for(
            lambda: (
                (template := deployment(kubectl, site.namespace, "frontend")["spec"]["template"])
                and template["metadata"]["labels"][VERSION_LABEL] != frontend_version
                and frontend_replaced(kubectl, site.namespace, template)
            ),
            timeout=120,
            interval=1,
            what="the frontend change rolled out and the old pods gone",
        )
    FIGURES.append(f"real node: frontend change; traffic: {traffic.summary()}")
    assert not traffic.failures, traffic.summary()
    redirected = request(site.frontend_ip, 80, DOMAINS[0], "/x")
    assert redirected.status == 301, redirected
    assert redirected.headers["Location"] == f"https://{DOMAINS[0]}/x"

    with site.traffic() as traffic:
        # (d) a renewal, asked for with the annotation.
        renewed = renew(kubectl, site.namespace, before)
        serial = x509.load_pem_x509_certificate(renewed).serial_number
        tls = tls_context(site.root_pem)
        wait_for(
            lambda: (
                frontend_serves(kubectl, site.namespace, renewed)
                and serial_served(site, tls) == serial
            ),
            timeout=120,
            interval=1,
            what="nginx serving the renewed certificate",
        )
    FIGURES.append(f"real node: certificate renewal; traffic: {traffic.summary()}")
    assert not traffic.failures, traffic.summary()


def frontend_pods(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = kubectl.json(
        "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=frontend"
    )["items"]
    return pods


def mounted_nginx_config(template: dict[str, Any]) -> str:
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == "nginx-config"]
    return str(volume["configMap"]["name"])


def test_a_refused_extra_config_holds_back_only_itself(
    kubectl: Kubectl, real_node: RealNode, pebble: Pebble, served_site: ServedSite
) -> None:
    """The chart's default refuses extraConfig: the configuration waits, but a
    renewal still reaches nginx, and a pod re-created meanwhile serves it."""
    site = served_site
    frontend = {"replicas": 2, "http": "redirect"}
    template = deployment(kubectl, site.namespace, "frontend")["spec"]["template"]
    held_back = {**frontend, "extraConfig": "add_header X-Held-Back yes;"}
    kubectl.apply(blogsite(real_node, pebble, site.good_image, frontend=held_back), site.namespace)
    wait_for(
        lambda: (
            condition(site_status(kubectl, site.namespace), "ConfigValid").get("reason")
            == "NginxConfigInvalid"
        ),
        what="ConfigValid False for the refused extraConfig",
    )
    before = served_certificate(kubectl, site.namespace)
    renewed = renew(kubectl, site.namespace, before)
    serial = x509.load_pem_x509_certificate(renewed).serial_number
    tls = tls_context(site.root_pem)
    wait_for(
        lambda: frontend_serves(kubectl, site.namespace, renewed),
        timeout=120,
        interval=1,
        what="the frontend rolled out with the renewed certificate",
    )
    now = deployment(kubectl, site.namespace, "frontend")["spec"]["template"]
    assert mounted_nginx_config(now) == mounted_nginx_config(template)

    # A pod re-created from today's template (a drain, an eviction) starts.
    (victim, *_) = frontend_pods(kubectl, site.namespace)
    kubectl.run("delete", "pod", victim["metadata"]["name"], "-n", site.namespace)
    wait_for(
        lambda: (
            len(pods := frontend_pods(kubectl, site.namespace)) == frontend["replicas"]
            and victim["metadata"]["uid"] not in {p["metadata"]["uid"] for p in pods}
            and rolled_out(kubectl, site.namespace, "frontend")
        ),
        timeout=120,
        interval=1,
        what="the deleted frontend pod replaced by a Ready one",
    )
    wait_for(
        lambda: all(serial_served(site, tls) == serial for _ in range(10)),
        timeout=30,
        what=f"every frontend pod serving the renewed certificate {serial}",
    )
    response = request(site.frontend_ip, 443, DOMAINS[0], tls=tls)
    assert_page(response)
    assert "X-Held-Back" not in response.headers

    kubectl.apply(blogsite(real_node, pebble, site.good_image, frontend=frontend), site.namespace)
    wait_for(
        lambda: (
            condition(site_status(kubectl, site.namespace), "ConfigValid").get("status") == "True"
        ),
        what="ConfigValid True once extraConfig is gone",
    )


def test_a_deleted_tls_secret_is_put_back_and_clients_keep_the_issued_certificate(
    kubectl: Kubectl, served_site: ServedSite
) -> None:
    site = served_site
    issued = served_certificate(kubectl, site.namespace)
    serial = x509.load_pem_x509_certificate(issued).serial_number
    tls = tls_context(site.root_pem)
    pods = {p["metadata"]["uid"] for p in frontend_pods(kubectl, site.namespace)}
    kubectl.run("delete", "secret", f"{SITE}-tls", "-n", site.namespace)
    # What clients get, sampled while the operator notices and puts it back.
    served = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        served.append(serial_served(site, tls))
        time.sleep(0.2)
    assert set(served) == {serial}, set(served)
    assert served_certificate(kubectl, site.namespace) == issued
    assert {p["metadata"]["uid"] for p in frontend_pods(kubectl, site.namespace)} == pods
    FIGURES.append(
        f"real node: TLS Secret deleted; {len(served)} TLS handshakes over 20 s all got serial "
        f"{serial:x}, no frontend pod replaced"
    )


def cluster_ip(kubectl: Kubectl, namespace: str, service: str) -> str | None:
    if not kubectl.exists("service", service, namespace):
        return None
    address: str = kubectl.json("get", "service", service, "-n", namespace)["spec"]["clusterIP"]
    return address


def test_a_daedalus_service_created_again_is_reached_again_within_seconds(
    kubectl: Kubectl, served_site: ServedSite
) -> None:
    """nginx resolves its upstreams when it starts: a Service created again
    with a new ClusterIP rolls the frontend (see the README). The daedalus
    pods are replaced too, so no connection nginx opened to the old address
    (kept alive through conntrack) can carry requests on."""
    site = served_site
    service = f"{SITE}-daedalus"
    before = cluster_ip(kubectl, site.namespace, service)
    tls = tls_context(site.root_pem)
    with site.traffic() as traffic:
        deleted_at = time.monotonic()
        kubectl.run("delete", "service", service, "-n", site.namespace)
        after = wait_for(
            lambda: (address := cluster_ip(kubectl, site.namespace, service)) != before and address,
            what="the daedalus Service created again",
        )
        kubectl.run(
            "delete", "pods", "-n", site.namespace, "-l", "app.kubernetes.io/component=daedalus"
        )

        def serving() -> bool:
            try:
                return all(
                    request(site.frontend_ip, 443, DOMAINS[0], tls=tls, timeout=2).status == 200
                    for _ in range(20)
                )
            except (OSError, http.client.HTTPException):
                return False

        wait_for(serving, timeout=120, interval=0.5, what="20 requests in a row answered")
        recovered = time.monotonic() - deleted_at
    template = deployment(kubectl, site.namespace, "frontend")["spec"]["template"]
    restarted_for = template["metadata"]["annotations"][UPSTREAMS_RESTART_ANNOTATION]
    assert f"daedalus={after}" in restarted_for
    FIGURES.append(
        f"real node: daedalus Service deleted, created again ({before} -> {after}) and its pods "
        f"replaced; requests answered again {recovered:.1f}s after the deletion; traffic: "
        f"{traffic.summary()}"
    )


# --- high availability, upgrade and uninstall, under traffic -----------------


def apply_daedalus_replicas(
    kubectl: Kubectl, node: RealNode, pebble: Pebble, site: ServedSite, replicas: int
) -> float:
    """Change the site (the spec the tests above left, but for daedalus'
    replicas); seconds until the operator has applied it."""
    started = time.monotonic()
    changed = blogsite(
        node,
        pebble,
        site.good_image,
        frontend={"replicas": 2, "http": "redirect"},
        daedalus={"replicas": replicas},
    )
    kubectl.apply(changed, site.namespace)
    wait_for(
        lambda: deployment(kubectl, site.namespace, "daedalus")["spec"]["replicas"] == replicas,
        timeout=120,
        interval=0.2,
        what=f"daedalus scaled to {replicas} by the operator",
    )
    return time.monotonic() - started


def new_holder(release: Release, before: str) -> str:
    holder: str = wait_for(
        lambda: (holder := release.holder()) not in ("", before) and holder,
        timeout=120,
        interval=0.2,
        what="another operator process leading",
    )
    return holder


def test_a_site_outside_the_watched_namespaces_is_left_alone(
    kubectl: Kubectl, release: Release, real_node: RealNode, pebble: Pebble, served_site: ServedSite
) -> None:
    other = f"real-{uuid.uuid4().hex[:6]}"
    create_real_namespace(kubectl, other)
    try:
        kubectl.apply(blogsite(real_node, pebble, real_node.daedalus()), other)
        # Evidence that the operator worked meanwhile: a change made after it.
        apply_daedalus_replicas(kubectl, real_node, pebble, served_site, 3)
        apply_daedalus_replicas(kubectl, real_node, pebble, served_site, 2)
        assert kubectl.json("get", "all", "-n", other)["items"] == []
        assert "status" not in kubectl.json("get", "blogsite", SITE, "-n", other)
        assert "Forbidden" not in release.logs()
    finally:
        kubectl.run("delete", "namespace", other, "--wait=false", check=False)


def test_the_leader_pod_deleted_under_traffic_hands_over_in_seconds(
    kubectl: Kubectl,
    release: Release,
    real_node: RealNode,
    pebble: Pebble,
    served_site: ServedSite,
) -> None:
    leader = release.leader()
    before = release.holder()
    with served_site.traffic() as traffic:
        started = time.monotonic()
        kubectl.run(
            "delete", "pod", leader["metadata"]["name"], "-n", OPERATOR_NAMESPACE, "--wait=false"
        )
        new_holder(release, before)
        takeover = time.monotonic() - started
        release.handovers += 1
        applied = apply_daedalus_replicas(kubectl, real_node, pebble, served_site, 3)
    FIGURES.append(
        f"real node: leader pod deleted -> another leading after {takeover:.1f}s, "
        f"a change applied {applied:.1f}s later; traffic: {traffic.summary()}"
    )
    assert not traffic.failures, traffic.summary()
    # Released, not left to run out: taken well before a Lease could expire.
    assert takeover < LEASE_SECONDS - RENEW_SECONDS, takeover
    release.leader()


def operator_pids(pod_uid: str) -> list[int]:
    """Host PIDs of `blogsite-operator run` in this pod (the node is this machine)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cgroup = (proc / "cgroup").read_text()
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            f"pod{pod_uid}" in cgroup
            and b"run" in argv
            and any(arg.endswith(b"blogsite-operator") for arg in argv)
        ):
            pids.append(int(proc.name))
    return pids


def test_the_leader_killed_under_traffic_is_replaced_after_its_lease_runs_out(
    kubectl: Kubectl,
    release: Release,
    real_node: RealNode,
    pebble: Pebble,
    served_site: ServedSite,
) -> None:
    leader = release.leader()
    before = release.holder()
    pids = operator_pids(leader["metadata"]["uid"])
    assert pids, "the leader's process was not found on the node"
    # The killed container restarts, once, as a standby.
    release.expected_restarts[leader["metadata"]["uid"]] = 1
    with served_site.traffic() as traffic:
        started = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # no release: the Lease must run out
        new_holder(release, before)
        takeover = time.monotonic() - started
        release.handovers += 1
        applied = apply_daedalus_replicas(kubectl, real_node, pebble, served_site, 2)
    FIGURES.append(
        f"real node: leader SIGKILLed -> another leading after {takeover:.1f}s (lease 15 s), "
        f"a change applied {applied:.1f}s later; traffic: {traffic.summary()}"
    )
    assert not traffic.failures, traffic.summary()
    # Never before the Lease ran out (renewed at most 2 s before the kill, a
    # second for requests: two leaders otherwise), and at one of the
    # standby's next tries after it (each up to 2.4 s late, and this poll's).
    assert LEASE_SECONDS - RENEW_SECONDS - 1 <= takeover <= LEASE_SECONDS + 4 * RENEW_SECONDS, (
        takeover
    )
    release.leader()


@pytest.mark.parametrize("handover", ["killed", "deleted"])
def test_a_leader_lost_in_the_middle_of_a_canary_step_loses_no_step_and_no_request(  # noqa: PLR0917
    kubectl: Kubectl,
    release: Release,
    real_node: RealNode,
    pebble: Pebble,
    served_site: ServedSite,
    handover: str,
) -> None:
    """killed: SIGKILL, the standby leads once the Lease runs out; deleted:
    the pod is deleted, releases the Lease and the standby leads at once."""
    site = served_site
    version = f"good-3-{handover}"
    rollout = {
        "strategy": "Canary",
        "canary": {"steps": [10, 50], "stepSeconds": 40, "bakeSeconds": 10},
    }
    back_to_the_good_version(kubectl, real_node, pebble, site)
    kubectl.apply(blogsite(real_node, pebble, site.good_image, rollout=rollout), site.namespace)
    wait_for(lambda: settled(kubectl, site.namespace), timeout=120, what="the site settled")
    seen: list[tuple[str, int]] = []  # (phase, step) as status showed them, in order

    def canary_at(phase: str, step: int) -> bool:
        canary = (site_status(kubectl, site.namespace).get("status") or {}).get("canary")
        if canary is not None and (not seen or seen[-1] != (canary["phase"], canary["step"])):
            seen.append((canary["phase"], canary["step"]))
        return canary is not None and (canary["phase"], canary["step"]) == (phase, step)

    with site.traffic() as traffic:
        apply_version(kubectl, real_node, pebble, site, rollout, version)
        wait_for(lambda: canary_at("Step", 2), timeout=300, interval=0.5, what="step 2")
        leader = release.leader()
        before = release.holder()
        if handover == "killed":
            release.expected_restarts[leader["metadata"]["uid"]] = 1
            for pid in operator_pids(leader["metadata"]["uid"]):
                os.kill(pid, signal.SIGKILL)
        else:
            name = leader["metadata"]["name"]
            kubectl.run("delete", "pod", name, "-n", OPERATOR_NAMESPACE, "--wait=false")
        new_holder(release, before)
        release.handovers += 1

        def promoted() -> bool:
            canary_at("", 0)
            body = site_status(kubectl, site.namespace)
            env = daedalus_env(kubectl, site.namespace)
            return (body.get("status") or {}).get("canary") is None and {
                "name": "VERSION",
                "value": version,
            } in env

        wait_for(promoted, timeout=300, interval=0.5, what=f"{version} promoted after the handover")
    FIGURES.append(
        f"real node: leader {handover} in canary step 2; status went {seen}; "
        f"traffic: {traffic.summary()}"
    )
    assert not traffic.failures, traffic.summary()
    steps = [step for phase, step in seen if phase == "Step"]
    assert steps == sorted(steps), seen  # never back to an earlier step
    assert ("Starting", 1) not in seen[seen.index(("Step", 2)) :], seen
    started = [
        e
        for e in kubectl.json("get", "events", "-n", site.namespace)["items"]
        if e.get("reason") == "CanaryStarted"
        and "canary of" in e.get("message", "")
        and e.get("involvedObject", {}).get("name") == SITE
    ]
    versions = [e["message"] for e in started if (e.get("count") or 1) > 1]
    assert not versions, versions  # no canary started twice for one version
    release.leader()


def retag(node: RealNode, image: str, suffix: str) -> str:
    """The same image under a new tag in the local registry; returns the tag."""
    repository, tag = image.split("/", 1)[1].rsplit(":", 1)
    registry = f"http://{node.ip}:5000/v2/{repository}/manifests"
    accept = ", ".join(
        [
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ]
    )
    with urllib.request.urlopen(
        urllib.request.Request(f"{registry}/{tag}", headers={"Accept": accept}), timeout=30
    ) as response:
        manifest, media_type = response.read(), response.headers["Content-Type"]
    new_tag = f"{tag}-{suffix}"
    put = urllib.request.Request(
        f"{registry}/{new_tag}", data=manifest, method="PUT", headers={"Content-Type": media_type}
    )
    with urllib.request.urlopen(put, timeout=30) as response:
        assert response.status == 201, response.status
    return new_tag


def chart_with_changed_crd(tmp_path: Path) -> Path:
    """A copy of the chart whose CRD has one more printer column."""
    chart = tmp_path / "blogsite-operator"
    shutil.copytree(CHART, chart)
    crd_path = chart / "files" / "blogsite-crd.yaml"
    crd = yaml.safe_load(crd_path.read_text(encoding="utf-8"))
    for version in crd["spec"]["versions"]:
        version["additionalPrinterColumns"].append(
            {"name": "Upgraded", "type": "string", "jsonPath": ".metadata.uid", "priority": 1}
        )
    crd_path.write_text(yaml.safe_dump(crd), encoding="utf-8")
    return chart


def test_an_upgrade_rolls_the_operator_under_traffic_and_reaches_the_crd(  # noqa: PLR0917
    kubectl: Kubectl,
    release: Release,
    real_node: RealNode,
    pebble: Pebble,
    served_site: ServedSite,
    tmp_path: Path,
) -> None:
    new_tag = retag(real_node, real_node.operator_image, "upgrade")
    chart = chart_with_changed_crd(tmp_path)
    before = release.holder()
    with served_site.traffic() as traffic, PodCounts(release) as counts:
        started = time.monotonic()
        # kubectl still co-owns the CRD's fields it applied (server-side):
        # the README's first CRD-changing upgrade after a hand-over forces.
        release.install_or_upgrade(
            chart, f"image.tag={new_tag}", "logFormat=json", flags=("--force-conflicts",)
        )
        upgraded = time.monotonic() - started
        new_holder(release, before)
        release.handovers += 1
        applied = apply_daedalus_replicas(kubectl, real_node, pebble, served_site, 3)
    FIGURES.append(
        f"real node: helm upgrade (image, values, CRD) in {upgraded:.1f}s, "
        f"a change applied {applied:.1f}s later; traffic: {traffic.summary()}"
    )
    assert not traffic.failures, traffic.summary()
    # "Rolls the operator pods one at a time": never more than one pod over
    # the two replicas.
    assert counts.samples, "no pods sampled"
    assert max(counts.samples) <= 3, counts.samples

    # helm --wait returns once the new pods are Ready; the old ones end after.
    def two_pods() -> list[dict[str, Any]] | None:
        pods = release.pods()
        return pods if len(pods) == 2 else None

    pods = wait_for(two_pods, timeout=240, what="the old operator pods gone")
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        assert container["image"].endswith(f":{new_tag}")
        assert "--log-format=json" in container["args"]
    crd = kubectl.json("get", "crd", "blogsites.blog.daedalus.dev")
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    assert "Upgraded" in [c["name"] for c in columns]
    release.leader()


AUDIT_WRITES = ("create", "update", "patch", "delete", "deletecollection")


def audit_log(kubectl: Kubectl) -> Path:
    return Path(kubectl.kubeconfig).parent / "logs" / "audit.log"


def test_the_audit_log_shows_one_writing_operator_process_at_a_time(
    kubectl: Kubectl, release: Release
) -> None:
    """Across the takeovers and the upgrade above, from the API server's own
    record: each process's writes (Lease renewals aside) form one span, and
    no span begins before the one before it ended."""
    audit = audit_log(kubectl)
    assert release.audit_start is not None, "no audit log: recreate the test cluster"
    spans: dict[str, list[str]] = {}
    # From this module's release on, across the log's rotations.
    for line in audit_lines(audit, release.audit_start):
        event = json.loads(line)
        if (
            event.get("stage") != "ResponseComplete"
            or event.get("verb") not in AUDIT_WRITES
            or event["user"].get("username") != OPERATOR_USER
            or event["objectRef"].get("resource") == "leases"
        ):
            continue
        process = event.get("userAgent", "").rpartition("(")[2].rstrip(")")
        pod = event["user"]["extra"]["authentication.kubernetes.io/pod-name"][0]
        assert process.startswith(f"{pod}_"), (process, pod)  # the pod and its process
        span = spans.setdefault(process, [event["requestReceivedTimestamp"], ""])
        span[1] = max(span[1], event["stageTimestamp"])
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    FIGURES.append(f"real node: {len(ordered)} operator processes wrote, one after another")
    # The first leader and one for each handover the tests above caused (each
    # applied a change after it, so each new leader wrote).
    assert len(ordered) >= 1 + release.handovers, (release.handovers, ordered)
    for (before, (_, ended)), (after, (began, _)) in itertools.pairwise(ordered):
        assert ended < began, f"{after} wrote from {began}, before {before} stopped at {ended}"


def test_uninstall_leaves_the_crd_the_blogsites_and_the_sites_serving(
    kubectl: Kubectl,
    release: Release,
    real_node: RealNode,
    pebble: Pebble,
    served_site: ServedSite,
) -> None:
    with served_site.traffic() as traffic:
        release.helm_run(
            "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "5m"
        )
        wait_for(lambda: not release.pods(), timeout=300, what="the operator pods gone")
    assert not traffic.failures, traffic.summary()
    assert kubectl.exists("crd", "blogsites.blog.daedalus.dev", "default")
    assert kubectl.exists("blogsite", SITE, served_site.namespace)
    assert_page(
        request(served_site.frontend_ip, 443, DOMAINS[0], tls=tls_context(served_site.root_pem))
    )
    # Installed again, it takes the kept CRD back and runs the site again.
    release.install_or_upgrade()
    release.leader()
    apply_daedalus_replicas(kubectl, real_node, pebble, served_site, 2)
