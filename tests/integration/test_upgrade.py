"""`helm upgrade` from the previous release, with a site running.

The previous release is PREVIOUS_RELEASE in hack/versions.env: its chart and
its images (operator, frontend), built by its own hack/images.sh
(hack/previous-release.sh). It installs and runs an ACME site on the real
node; then the chart of this tree upgrades it in place, as a user would, and
the site must keep serving through every change the new release makes to
it: the CRD, the operator, requests, labels, the frontend image and its
nginx configuration. Exclusive: the old chart puts its own CRD in place,
which the tests running beside it would see.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from blogsite_operator.render.site import SITE_LABEL
from tests.chart.conftest import CHART
from tests.integration.conftest import HACK, ROOT, Kubectl
from tests.integration.test_real_node import (
    DOMAINS,
    OPERATOR_NAMESPACE,
    RELEASE,
    SITE,
    RealNode,
    Release,
    ServedSite,
    condition,
    create_real_namespace,
    deployment,
    new_release,
    one_replica_site,
    pebble,
    real_node,
    release_values,
    resolve_to_frontend,
    rolled_out,
    serial_served,
    serve_site,
    site_status,
)
from tests.pebble import Pebble
from tests.support import FIGURES, wait_for
from tests.traffic import tls_context

pytestmark = pytest.mark.exclusive
__all__ = ["pebble", "real_node"]  # module fixtures taken from test_real_node


@dataclass(frozen=True)
class PreviousRelease:
    chart: Path
    node: RealNode  # the node, with the previous release's images


@pytest.fixture(scope="module")
def previous(real_node: RealNode) -> PreviousRelease:
    """The previous release's chart and images, pushed to the node's registry
    (a cold build takes a few minutes; then they are cached)."""
    built = subprocess.run(
        [str(HACK / "previous-release.sh"), "push", f"{real_node.ip}:5000"],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    env = dict(line.split("=", 1) for line in built.stdout.splitlines() if "=" in line)
    return PreviousRelease(
        Path(env["PREVIOUS_CHART"]),
        RealNode(
            real_node.ip,
            env["PREVIOUS_OPERATOR_IMAGE"],
            env["PREVIOUS_FRONTEND_IMAGE"],
            real_node.daedalus_image,  # the user's blog does not change
        ),
    )


@pytest.fixture(scope="module")
def installed(
    kubectl: Kubectl,
    previous: PreviousRelease,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    """The previous release installed, watching a namespace of its own."""
    namespace = f"upgrade-{int(time.time())}"
    create_real_namespace(kubectl, namespace)
    handle = new_release(kubectl, previous.node, namespace, tmp_path_factory)
    try:
        # The session applied the CRD with kubectl: forced, the previous
        # release owns it as if it had installed it, and the upgrade below
        # needs no force, as a user's would not.
        # With only the values the previous chart knows (its schema refuses
        # others); the upgrade below takes this tree's.
        values = yaml.safe_load(handle.values_path.read_text())
        known = yaml.safe_load((previous.chart / "values.yaml").read_text())
        handle.values_path.write_text(yaml.safe_dump({k: values[k] for k in values if k in known}))
        handle.install_or_upgrade(previous.chart, flags=("--take-ownership", "--force-conflicts"))
        handle.values_path.write_text(yaml.safe_dump(values))
        yield handle
    finally:
        handle.helm_run(
            "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "5m", check=False
        )
        handle.kept_logs.stop()
        kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)
        # Whatever happened, the CRD of this tree for the tests after.
        kubectl.run(
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(ROOT / "crds" / "blogsite.yaml"),
        )


def issuing_events(kubectl: Kubectl, namespace: str) -> int:
    """Orders the operator started for the site: its Issuing Events."""
    events = kubectl.json(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind=BlogSite,involvedObject.name={SITE},reason=Issuing",
    )["items"]
    return sum(int(event.get("count") or 1) for event in events)


def container(kubectl: Kubectl, namespace: str, component: str) -> dict[str, object]:
    body = deployment(kubectl, namespace, component)
    first: dict[str, object] = body["spec"]["template"]["spec"]["containers"][0]
    return first


GONE = "gone"


def kept_secret(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    body: dict[str, Any] = kubectl.json("get", "secret", f"{GONE}-tls", "-n", namespace)
    return body


def keep_a_certificate(
    kubectl: Kubectl, node: RealNode, pebble: Pebble, namespace: str
) -> dict[str, Any]:
    """A second ACME site, certified, then deleted: the certificate the
    operator keeps for the next site of its name."""
    kubectl.apply(one_replica_site(node, pebble, GONE), namespace)
    resolve_to_frontend(kubectl, pebble, namespace, GONE)
    wait_for(
        lambda: (
            condition(
                kubectl.json("get", "blogsite", GONE, "-n", namespace), "CertificateReady"
            ).get("status")
            == "True"
        ),
        timeout=180,
        what=f"{GONE} certified",
    )
    kubectl.run("delete", "blogsite", GONE, "-n", namespace, "--wait=true", timeout=180)
    wait_for(
        lambda: not kubectl.exists("deployment", f"{GONE}-frontend", namespace),
        what=f"the Deployments of {GONE} gone",
    )
    return kept_secret(kubectl, namespace)


CERTIFICATE_FIELDS = ("serialNumber", "notBefore", "notAfter", "dnsNames", "sha256")


@pytest.mark.timeout(900)  # the site's daedalus goes through a canary onto the new release
def test_helm_upgrade_from_the_previous_release_keeps_the_site_and_its_certificate(
    kubectl: Kubectl,
    real_node: RealNode,
    pebble: Pebble,
    previous: PreviousRelease,
    installed: Release,
) -> None:
    release = installed
    namespace = release.watched
    release.leader()
    site = serve_site(kubectl, real_node, namespace, pebble)
    kept = keep_a_certificate(kubectl, real_node, pebble, namespace)
    assert kept["metadata"]["labels"]["app.kubernetes.io/instance"] == GONE  # as it was
    before = site_status(kubectl, namespace)["status"]
    secret = kubectl.json("get", "secret", f"{SITE}-tls", "-n", namespace)
    orders = issuing_events(kubectl, namespace)
    assert orders >= 1, "no Issuing Event for the first order: nothing to compare with"
    old_frontend = container(kubectl, namespace, "frontend")
    assert old_frontend["image"] == previous.node.frontend_image
    assert before["components"]["daedalus"]["lastGoodVersion"], before

    # This tree's chart and images, the same values otherwise.
    release.values_path.write_text(yaml.safe_dump(release_values(real_node, namespace)))
    started = time.monotonic()
    with site.traffic() as traffic:
        release.install_or_upgrade(CHART)
        upgraded = time.monotonic() - started

        def converged() -> bool:
            body = site_status(kubectl, namespace)
            daedalus = body["status"]["components"]["daedalus"]
            return bool(
                body["status"].get("observedGeneration") == body["metadata"]["generation"]
                # daedalus's pods as the new release renders them are a new
                # version: a canary (the default), judged and then promoted.
                and not body["status"].get("canary")
                and daedalus["version"] != before["components"]["daedalus"]["version"]
                and rolled_out(kubectl, namespace, "frontend", real_node.frontend_image)
                and rolled_out(kubectl, namespace, "cert-refresh", real_node.operator_image)
                and rolled_out(kubectl, namespace, "daedalus")
                and all(
                    condition(body, kind).get("status") == "True"
                    for kind in ("Ready", "CertificateReady", "RolloutHealthy")
                )
            )

        wait_for(converged, timeout=480, interval=1, what="the site rolled onto the new release")
        rolled = time.monotonic() - started
    FIGURES.append(
        f"real node: helm upgrade from the previous release in {upgraded:.1f}s, the site "
        f"rolled onto it in {rolled:.1f}s; traffic: {traffic.summary()}"
    )
    assert not traffic.failures, traffic.summary()

    # The certificate the old release kept loses the label GitOps tools
    # claim, before any site of its name comes back.
    relabelled = wait_for(
        lambda: (
            "app.kubernetes.io/instance"
            not in (body := kept_secret(kubectl, namespace))["metadata"]["labels"]
            and body
        ),
        timeout=60,
        what="the kept certificate relabelled",
    )
    assert relabelled["metadata"]["labels"][SITE_LABEL] == GONE
    assert relabelled["data"] == kept["data"]
    assert not relabelled["metadata"].get("ownerReferences")
    # No certificate ordered again: the same one in the Secret and served by
    # every frontend pod, and no Issuing Event since.
    after_secret = kubectl.json("get", "secret", f"{SITE}-tls", "-n", namespace)
    assert after_secret["data"]["tls.crt"] == secret["data"]["tls.crt"]
    assert issuing_events(kubectl, namespace) == orders
    tls = tls_context(site.root_pem)
    serial = int(before["certificate"]["serialNumber"], 16)
    assert all(serial_served(site, tls) == serial for _ in range(10))
    # The status carried over: the certificate it describes, and rollout
    # memory that went on from the old versions to the new ones.
    after = site_status(kubectl, namespace)["status"]
    for key in CERTIFICATE_FIELDS:
        assert after["certificate"].get(key) == before["certificate"].get(key), key
    for component in ("daedalus", "frontend"):
        now = after["components"][component]
        assert now["lastGoodVersion"] == now["version"], now
        assert now["version"] != before["components"][component]["version"], now
        assert not now.get("failedVersion"), now
    # What the new release changed reached the cluster and the site: the
    # CRD, the operator, the requests and the frontend's nginx (HTTP/2 now).
    crd = kubectl.json("get", "crd", "blogsites.blog.daedalus.dev")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert "hsts" in schema["properties"]["spec"]["properties"]["frontend"]["properties"]
    assert container(kubectl, namespace, "frontend")["resources"] != old_frontend["resources"]
    for pod in release.pods():
        assert pod["spec"]["containers"][0]["image"] == real_node.operator_image
    assert http_version(site) == "2 200"
    assert "Traceback" not in release.logs(), release.logs()[-5000:]


def http_version(site: ServedSite) -> str:
    """curl's HTTP version and status for the primary domain's page."""
    with tempfile.NamedTemporaryFile(suffix=".pem") as root:
        root.write(site.root_pem)
        root.flush()
        answer = subprocess.run(
            [
                "curl", "-sS", "--http2", "--max-time", "10", "--cacert", root.name,
                "--resolve", f"{DOMAINS[0]}:443:{site.frontend_ip}",
                "-o", "/dev/null", "-w", "%{http_version} %{response_code}",
                f"https://{DOMAINS[0]}/",
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    return answer.stdout or answer.stderr
