"""The operator's metrics as a real Prometheus (Debian's package) scrapes them,
while the operator issues a certificate from Pebble and reverts a bad rollout."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from tests.integration.conftest import Kubectl, OperatorProcess
from tests.integration.test_acme import (
    SITE,
    acme_site,
    condition,
    pebble,  # noqa: F401 - the fixture, shared with the ACME tests
    served_chain,
    trust_pebble,
    wait_for_certificate,
)
from tests.integration.test_plugin import plugin
from tests.pebble import ChallengeServer, Pebble
from tests.support import FIGURES, free_port, wait_for

CRASHING = "ghcr.io/example/daedalus:2-kwok-crash-loop"


@dataclass
class Prometheus:
    url: str

    def query(self, expression: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def metrics_port(operator_process: OperatorProcess) -> int:
    """The test operator, restarted to serve /metrics on a loopback port."""
    port = free_port()
    assert operator_process.stop() == 0
    operator_process.extra_args.append(f"--health-address=127.0.0.1:{port}")
    operator_process.start()
    return port


@pytest.fixture
def prometheus(metrics_port: int, tmp_path: Path) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: hack/system-deps.sh installs Debian's package"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "blogsite-operator",
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_for(ready, timeout=60, interval=0.2, what="Prometheus ready")
        wait_for(
            lambda: server.value('up{job="blogsite-operator"}') == 1.0,
            timeout=60,
            interval=0.5,
            what="Prometheus scraping the operator",
        )
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_prometheus_sees_the_certificate_a_revert_and_the_passes(  # noqa: PLR0917
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,  # noqa: F811 - the fixture imported above
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
    metrics_port: int,
    prometheus: Prometheus,
) -> None:
    trust_pebble(kubectl, namespace, pebble)
    site = acme_site(pebble)
    site["spec"]["rollout"] = {"maxRestarts": 3, "readyTimeoutSeconds": 15}
    kubectl.apply(site, namespace)
    wait_for_certificate(kubectl, namespace)
    chain, _ = served_chain(kubectl, namespace)
    issued = x509.load_pem_x509_certificates(chain)
    assert len(issued) >= 2, "the issued chain (leaf and intermediate), not the placeholder"
    not_after = issued[0].not_valid_after_utc.timestamp()
    status = kubectl.json("get", "blogsite", SITE, "-n", namespace)["status"]["certificate"]
    assert status["notAfter"] == issued[0].not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = f'namespace="{namespace}",name="{SITE}"'

    # The expiry series comes to equal the Secret's certificate's notAfter
    # (before it, the placeholder's).
    expiry = f"blogsite_certificate_expiration_timestamp_seconds{{{labels}}}"
    wait_for(
        lambda: prometheus.value(expiry) == not_after,
        timeout=60,
        what="the issued certificate's expiry in Prometheus",
    )
    # Its lifetime, which the certificate alerts measure in, as Prometheus computes it.
    lifetime = f"{expiry} - blogsite_certificate_issued_timestamp_seconds{{{labels}}}"
    issued_for = not_after - issued[0].not_valid_before_utc.timestamp()
    wait_for(
        lambda: prometheus.value(lifetime) == issued_for,
        timeout=60,
        what="the issued certificate's lifetime in Prometheus",
    )
    ready = f'blogsite_certificate_ready_status{{{labels},condition="True"}}'
    wait_for(
        lambda: prometheus.value(ready) == 1.0, timeout=60, what="CertificateReady in Prometheus"
    )

    # A bad version, reverted: the counter goes from nothing to one.
    assert prometheus.value("sum(blogsite_rollout_reverts_total)") in (None, 0.0)
    wait_for(
        lambda: (
            (body := kubectl.json("get", "blogsite", SITE, "-n", namespace))
            and condition(body, "RolloutHealthy").get("reason") == "Healthy"
        ),
        timeout=90,
        what="the first version healthy",
    )
    site["spec"]["daedalus"]["image"] = CRASHING
    kubectl.apply(site, namespace)
    wait_for(
        lambda: (
            condition(kubectl.json("get", "blogsite", SITE, "-n", namespace), "RolloutHealthy").get(
                "reason"
            )
            == "RolledBack"
        ),
        timeout=120,
        what="the revert",
    )
    reverts = 'sum(blogsite_rollout_reverts_total{component="daedalus"})'
    wait_for(lambda: prometheus.value(reverts) == 1.0, timeout=60, what="one revert counted")
    reverted = f'blogsite_rollout_reverted_status{{{labels},component="daedalus"}}'
    wait_for(lambda: prometheus.value(reverted) == 1.0, timeout=60, what="the reverted series")

    # Reconcile passes and ACME orders have samples.
    passes = prometheus.value('sum(blogsite_reconcile_total{outcome="success"})')
    assert passes is not None
    assert passes > 0
    histogram = prometheus.value("sum(blogsite_reconcile_duration_seconds_count)")
    assert histogram is not None
    assert histogram >= passes
    assert prometheus.value('sum(blogsite_acme_orders_total{outcome="issued"})') == 1.0
    new_orders = prometheus.value(
        'sum(blogsite_acme_client_requests_total{endpoint="newOrder",status="201"})'
    )
    assert new_orders == 1.0
    assert prometheus.value("blogsite_leader_election_master_status") == 1.0
    FIGURES.append(
        f"metrics: Prometheus saw expiry {not_after:.0f}, {passes:.0f} passes, 1 revert, 1 order"
    )
    FIGURES.append(f"metrics: Prometheus answers {expiry}: {prometheus.query(expiry)}")

    # The day-2 screen of the same site tells the same story.
    screen = plugin(kubectl, "status", SITE, "-n", namespace).stdout
    assert re.search(r"^  CertificateReady +True ", screen, re.M), screen
    assert "RolledBack" in screen, screen
    FIGURES.append(f"kubectl blogsite status {SITE} -n {namespace}:\n{screen.rstrip()}")

    # promtool finds nothing wrong with the live /metrics.
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert "PRIVATE KEY" not in text
    promtool = shutil.which("promtool")
    assert promtool
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert chain  # the certificate the metrics describe was served
