"""`make run`'s playground, followed as the README says, twice.

hack/run.sh against the test cluster (its real node runs the demo's pods),
with its own Pebble, challenge server and operator; the local example applied;
the page fetched over HTTPS trusting only the root that run's Pebble printed.
Pebble makes a new root at every start, so the second run must not serve the
certificate the first one issued. The operator runs cluster-wide, as
`make run`'s does: the test is exclusive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import HACK, ROOT, TEST_CLUSTER_ENV, Kubectl, cluster_env
from tests.support import FIGURES, wait_for
from tests.traffic import request, tls_context

EXAMPLE = ROOT / "deploy" / "examples" / "local"
NAMESPACE = "blogsite-demo"
SITE = "pebble-demo"
HOST = "blog.localhost.example"


def run_playground(kubectl: Kubectl, state: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **TEST_CLUSTER_ENV,
        "KUBECONFIG": kubectl.kubeconfig,
        "PEBBLE_STATE_DIR": str(state),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(HACK / "run.sh")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the whole group
        )
    wait_for(
        lambda: "The BlogSite CRD is installed" in log.read_text(errors="replace"),
        timeout=300,
        what="make run's operator starting",
    )
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def page_over_https(kubectl: Kubectl, root_pem: bytes) -> str | None:
    """The demo's page, as the README's curl line fetches it; None until it verifies."""
    if not kubectl.exists("service", f"{SITE}-frontend", NAMESPACE):
        return None
    service = kubectl.json("get", "service", f"{SITE}-frontend", "-n", NAMESPACE)
    try:
        response = request(service["spec"]["clusterIP"], 443, HOST, tls=tls_context(root_pem))
    except OSError:  # ssl.SSLError (an unknown issuer) too
        return None
    return response.body if response.status == 200 else None


@pytest.mark.exclusive
def test_the_playground_serves_its_page_when_followed_twice(
    kubectl: Kubectl, tmp_path: Path
) -> None:
    assert cluster_env().get("NODE_IP"), "the playground's pods need the real node"
    state = tmp_path / "pebble"
    try:
        for attempt in (1, 2):
            started = time.monotonic()
            log = tmp_path / f"run-{attempt}.log"
            process = run_playground(kubectl, state, log)
            try:
                kubectl.run("apply", "-f", str(EXAMPLE))
                root_pem = (state / "root.pem").read_bytes()
                body: str = wait_for(
                    lambda: page_over_https(kubectl, root_pem),  # noqa: B023 - called here
                    timeout=300,
                    interval=2,
                    what=f"run {attempt}: the demo's page, trusting this Pebble's root only",
                )
                assert "daedalus stand-in" in body
            finally:
                stop(process)
            FIGURES.append(
                f"playground run {attempt}: page over HTTPS after {time.monotonic() - started:.1f}s"
            )
        assert "issued by an earlier Pebble" in (tmp_path / "run-2.log").read_text()
    finally:
        kubectl.run("delete", "namespace", NAMESPACE, "--wait=false", check=False)
