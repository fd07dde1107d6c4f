"""On the real node: real containers from the images built here, the operator
itself in a pod, Pebble validating HTTP-01 through a real nginx, and requests
counted while versions fail, revert, change and renew.

The tests in this module share one operator pod, one Pebble and one site,
and run in file order: each leaves the site healthy for the next.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from blogsite_operator.render.site import TLS_HASH_ANNOTATION, VERSION_LABEL
from tests.integration.conftest import ROOT, Kubectl, cluster_env
from tests.pebble import Pebble, running_pebble
from tests.support import FIGURES, wait_for
from tests.traffic import Response, Traffic, request, tls_context

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
}
SITE = "blog"
DOMAINS = ["blog.example.test", "www.blog.example.test"]
REDIRECT_DOMAINS = ["old-blog.example.test"]
PAGE = "daedalus stand-in"
# rollout.readyTimeoutSeconds of the site: past the second restart of a
# crashing container (back-offs of 10 s and 20 s), so crashes are judged by
# their restarts, as they would be with the defaults.
READY_TIMEOUT = 45


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
        pytest.skip("the real node belongs to the local cluster of hack/cluster.sh")
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


def operator_manifests(node: RealNode, watched: str) -> list[dict[str, Any]]:
    """deploy/operator/operator.yaml with the images built here and test timings."""
    text = (ROOT / "deploy" / "operator" / "operator.yaml").read_text(encoding="utf-8")
    text = text.replace("@OPERATOR_IMAGE@", node.operator_image)
    text = text.replace("@FRONTEND_IMAGE@", node.frontend_image)
    documents = [d for d in yaml.safe_load_all(text) if d]
    for document in documents:
        if document["kind"] == "Namespace":
            document["metadata"]["annotations"] = REAL_NODE_ANNOTATIONS
        if document["kind"] == "Deployment":
            container = document["spec"]["template"]["spec"]["containers"][0]
            container["env"] += [
                {"name": "BLOGSITE_OPERATOR_NAMESPACES", "value": watched},
                {"name": "BLOGSITE_OPERATOR_ACME_BACKOFF_SECONDS", "value": "2"},
                {"name": "BLOGSITE_OPERATOR_ACME_MAX_BACKOFF_SECONDS", "value": "8"},
                {"name": "BLOGSITE_OPERATOR_ACME_ORDER_TIMEOUT_SECONDS", "value": "120"},
            ]
    return documents


@pytest.fixture(scope="module")
def operator_pod(
    kubectl: Kubectl, real_node: RealNode, real_namespace: str
) -> Iterator[dict[str, Any]]:
    """The operator, from the image built from the Dockerfile, in a pod on the real node."""
    documents = operator_manifests(real_node, real_namespace)
    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump_all(documents))

    def ready() -> dict[str, Any] | None:
        for pod in kubectl.json(
            "get",
            "pods",
            "-n",
            OPERATOR_NAMESPACE,
            "-l",
            "app.kubernetes.io/name=blogsite-operator",
        )["items"]:
            for status in pod["status"].get("containerStatuses") or []:
                if status["restartCount"] > 0:  # fail at once, with its words
                    logs = kubectl.run(
                        "logs",
                        "-n",
                        OPERATOR_NAMESPACE,
                        pod["metadata"]["name"],
                        "--previous",
                        check=False,
                    )
                    raise AssertionError(f"the operator pod crashed:\n{logs.stdout[-3000:]}")
                if status.get("ready"):
                    return dict(pod)
        return None

    pod = wait_for(ready, timeout=180, interval=1, what="the operator pod Ready")
    yield pod
    logs = kubectl.run(
        "logs", "-n", OPERATOR_NAMESPACE, "deployment/blogsite-operator", check=False
    ).stdout
    kubectl.run(
        "delete",
        "-f",
        "-",
        "--wait=true",
        stdin=yaml.safe_dump_all(documents),
        check=False,
        timeout=180,
    )
    assert "Traceback" not in logs, logs[-5000:]


def in_operator_pod(kubectl: Kubectl, code: str) -> str:
    """Run Python in the operator's container (kubectl exec: API server -> kubelet)."""
    return kubectl.run(
        "exec",
        "-n",
        OPERATOR_NAMESPACE,
        "deployment/blogsite-operator",
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


# --- one ACME site, served by real pods -----------------------------------------


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


def deployment(kubectl: Kubectl, namespace: str, component: str) -> dict[str, Any]:
    body: dict[str, Any] = kubectl.json("get", "deployment", f"{SITE}-{component}", "-n", namespace)
    return body


def rolled_out(kubectl: Kubectl, namespace: str, component: str, image: str | None = None) -> bool:
    body = deployment(kubectl, namespace, component)
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


@pytest.fixture(scope="module")
def served_site(
    kubectl: Kubectl,
    real_node: RealNode,
    real_namespace: str,
    pebble: Pebble,
    operator_pod: dict[str, Any],
) -> ServedSite:
    namespace = real_namespace
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
    kubectl.apply(blogsite(real_node, pebble, real_node.daedalus()), namespace)
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
    # Ready and CertificateReady may come before the frontend pods carry the
    # certificate (issue 12's first item): wait until every one does.
    issued = served_certificate(kubectl, namespace)
    wait_for(
        lambda: frontend_serves(kubectl, namespace, issued),
        timeout=120,
        what="the frontend rolled out with the issued certificate",
    )
    assert body["status"]["certificate"]["dnsNames"]
    return ServedSite(namespace, frontend_ip, root, real_node.daedalus())


def test_acme_certificate_validated_through_real_pods_and_served_for_every_name(
    kubectl: Kubectl, served_site: ServedSite, pebble: Pebble
) -> None:
    site = served_site
    issued = x509.load_pem_x509_certificate(served_certificate(kubectl, site.namespace))
    names = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == sorted(DOMAINS + REDIRECT_DOMAINS)
    tls = tls_context(site.root_pem)
    wait_for(
        lambda: serial_served(site, tls) == issued.serial_number,
        timeout=60,
        what=f"nginx serving the issued certificate {issued.serial_number}",
    )
    for name in DOMAINS:
        response = request(site.frontend_ip, 443, name, tls=tls)
        assert_page(response)
        assert name in response.body  # daedalus saw the Host nginx passed on
        assert_page(request(site.frontend_ip, 80, name))  # http: serve
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
    logs = kubectl.run("logs", "-n", OPERATOR_NAMESPACE, "deployment/blogsite-operator").stdout
    assert "SelfCheckFailed" not in logs


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


def frontend_replaced(kubectl: Kubectl, namespace: str, template: dict[str, Any]) -> bool:
    """The frontend rolled out to this template and no older pod is left."""
    if not rolled_out(kubectl, namespace, "frontend"):
        return False
    version = template["metadata"]["labels"][VERSION_LABEL]
    pods = kubectl.json(
        "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=frontend"
    )["items"]
    return all(p["metadata"]["labels"].get(VERSION_LABEL) == version for p in pods)


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
    with site.traffic() as traffic:
        elapsed, body = change_and_wait_for_revert(kubectl, real_node, pebble, site, bad)
        time.sleep(1)  # a last second of requests after the revert settled
    FIGURES.append(
        f"real node: {variant} daedalus reverted in {elapsed:.1f}s; traffic: {traffic.summary()}"
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
        kubectl.apply(blogsite(real_node, pebble, image), site.namespace)
        wait_for(
            lambda: rolled_out(kubectl, site.namespace, "daedalus", image),
            timeout=180,
            interval=1,
            what="the crash-once version rolled out",
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
        kubectl.run(
            "annotate",
            "blogsite",
            SITE,
            "-n",
            site.namespace,
            "--overwrite",
            f"blog.daedalus.dev/renew-certificate={datetime.datetime.now(datetime.UTC).isoformat()}",
        )
        renewed = wait_for(
            lambda: (cert := served_certificate(kubectl, site.namespace)) != before and cert,
            timeout=120,
            interval=1,
            what="a renewed certificate in the Secret",
        )
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
