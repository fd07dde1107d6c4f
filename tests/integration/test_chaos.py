"""Chaos: the operator SIGKILLed at random moments while sites are created,
changed and issued certificates, and started again each time; and SIGTERMed
in the middle of orders.

Bounded in `make test` (20 sites, 6 kills); `make chaos` runs 50 sites and
20 kills (BLOGSITE_CHAOS_SITES, BLOGSITE_CHAOS_KILLS). Afterwards every site
is Ready on its latest spec, nothing is orphaned or duplicated, every change
made while the operator was down is applied, every ACME site holds one valid
certificate, and no site needed more orders than the kills it went through.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import time
from collections import Counter
from typing import Any

from cryptography import x509

from blogsite_operator.reconcile import read_served_certificate
from tests.integration.conftest import Kubectl, OperatorProcess
from tests.integration.test_acme import pebble, trust_pebble  # noqa: F401 - the fixture
from tests.pebble import ChallengeServer, Pebble
from tests.support import FIGURES, wait_for

SITES = int(os.environ.get("BLOGSITE_CHAOS_SITES", "20"))
KILLS = int(os.environ.get("BLOGSITE_CHAOS_KILLS", "6"))
IMAGES = ["ghcr.io/example/daedalus:1", "ghcr.io/example/daedalus:2", "ghcr.io/example/daedalus:3"]


def site(index: int, ca: Pebble, image: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "domains": [f"c{index}.chaos.example"],
        "daedalus": {"image": image, "replicas": 1},
        "frontend": {"replicas": 1},
    }
    if index % 2 == 0:
        spec["tls"] = {
            "acme": {
                "server": ca.directory_url,
                "email": "ops@chaos.example",
                "caBundleSecretRef": {"name": "pebble-ca", "key": "ca.crt"},
            }
        }
    return {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "metadata": {"name": f"c{index}"},
        "spec": spec,
    }


def kill(operator: OperatorProcess) -> None:
    assert operator.process is not None
    operator.process.send_signal(signal.SIGKILL)
    operator.process.wait(timeout=30)
    operator.process = None


def test_sigkill_at_random_moments_loses_nothing(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,  # noqa: F811 - the fixture imported above
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    # Random moments, repeatable: the seed is printed with the figures.
    seed = os.environ.get("BLOGSITE_CHAOS_SEED") or str(random.SystemRandom().randrange(10**6))
    chance = random.Random(seed)  # noqa: S311 - timing, not secrecy
    trust_pebble(kubectl, namespace, pebble)
    wanted: dict[int, str] = {}  # site -> the image its spec asks for now
    started = time.monotonic()
    created = 0
    for _ in range(KILLS):
        # Work for the operator: new sites and new images for old ones.
        for _ in range(max(1, SITES // KILLS)):
            if created < SITES:
                wanted[created] = IMAGES[0]
                kubectl.apply(site(created, pebble, IMAGES[0]), namespace)
                created += 1
        for index in chance.sample(sorted(wanted), k=min(2, len(wanted))):
            wanted[index] = chance.choice(IMAGES)
            kubectl.apply(site(index, pebble, wanted[index]), namespace)
        # Killed at a random moment of that work, orders included.
        time.sleep(chance.uniform(0.2, 3.0))
        kill(operator_process)
        # A change while it is down must not be lost.
        index = chance.choice(sorted(wanted))
        wanted[index] = chance.choice(IMAGES)
        kubectl.apply(site(index, pebble, wanted[index]), namespace)
        operator_process.start()
    while created < SITES:
        wanted[created] = IMAGES[0]
        kubectl.apply(site(created, pebble, IMAGES[0]), namespace)
        created += 1

    def converged() -> bool:
        sites = kubectl.json("get", "blogsites", "-n", namespace)["items"]
        deployments = {
            d["metadata"]["name"]: d
            for d in kubectl.json("get", "deployments", "-n", namespace)["items"]
        }
        for body in sites:
            index = int(body["metadata"]["name"][1:])
            status = body.get("status") or {}
            conditions = {c["type"]: c for c in status.get("conditions") or []}
            daedalus = deployments.get(f"c{index}-daedalus")
            if (
                status.get("observedGeneration") != body["metadata"]["generation"]
                or conditions.get("Ready", {}).get("status") != "True"
                or conditions.get("Progressing", {}).get("status") != "False"
                or daedalus is None
                or daedalus["spec"]["template"]["spec"]["containers"][0]["image"] != wanted[index]
            ):
                return False
            if index % 2 == 0 and conditions.get("CertificateReady", {}).get("status") != "True":
                return False
        return len(sites) == SITES

    wait_for(
        converged,
        timeout=300,
        interval=1,
        what=f"{SITES} sites converged, {KILLS} kills, seed {seed}",
    )
    elapsed = time.monotonic() - started

    # Nothing orphaned or duplicated: three Deployments and Services per site.
    for kind in ("deployments", "services"):
        owners = Counter(
            obj["metadata"]["labels"]["app.kubernetes.io/instance"]
            for obj in kubectl.json("get", kind, "-n", namespace)["items"]
            if "app.kubernetes.io/instance" in (obj["metadata"].get("labels") or {})
        )
        assert owners == {f"c{i}": 3 for i in range(SITES)}, (kind, owners)

    # Every ACME site serves one valid certificate for its name, and the
    # kills cost no site more than one extra order each.
    logs = operator_process.logs()
    orders: Counter[int] = Counter()
    for index in range(0, SITES, 2):
        secret = kubectl.json("get", "secret", f"c{index}-tls", "-n", namespace)
        leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert names.value.get_values_for_type(x509.DNSName) == [f"c{index}.chaos.example"]
        assert "Pebble" in leaf.issuer.rfc4514_string()
        orders[index] = logs.count(f"[{namespace}/c{index}] issued a certificate")
        assert orders[index] <= 1 + KILLS, (index, orders[index])
    assert "Traceback" not in logs, logs[-5000:]
    FIGURES.append(
        f"chaos (seed {seed}): {SITES} sites, {KILLS} SIGKILLs, converged {elapsed:.0f}s "
        "after the first; "
        f"orders per ACME site: {dict(Counter(orders.values()))} (count: sites)"
    )


def test_sigterm_during_an_order_ends_it_cleanly_and_writes_nothing_half(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,  # noqa: F811 - the fixture imported above
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    trust_pebble(kubectl, namespace, pebble)
    sites = range(0, 8, 2)  # ACME sites, ordering at once
    for index in sites:
        kubectl.apply(site(index, pebble, IMAGES[0]), namespace)

    def answers_published() -> bool:
        maps = kubectl.json("get", "configmaps", "-n", namespace)["items"]
        return any(m["metadata"]["name"].endswith("-acme-http01") and m.get("data") for m in maps)

    # An order is half-way: its answers are up for the CA to fetch.
    wait_for(answers_published, timeout=60, interval=0.05, what="an order under way")
    stopping = time.monotonic()
    assert operator_process.stop() == 0  # SIGTERM; fails past 30 s
    stopped = time.monotonic() - stopping
    # Nothing half-written: each TLS Secret is a placeholder or a chain whose
    # key is its own.
    for index in sites:
        secret = kubectl.json("get", "secret", f"c{index}-tls", "-n", namespace)
        served = read_served_certificate(f"c{index}-tls", secret)
        assert served.info is not None, served.problem
    # Started again, it finishes the work with no second certificate.
    operator_process.start()
    wait_for(
        lambda: all(
            any(
                c["type"] == "CertificateReady" and c["status"] == "True"
                for c in kubectl.json("get", "blogsite", f"c{i}", "-n", namespace)["status"][
                    "conditions"
                ]
            )
            for i in sites
        ),
        timeout=120,
        what="every site certified after the restart",
    )
    logs = operator_process.logs()
    for index in sites:
        assert logs.count(f"[{namespace}/c{index}] issued a certificate") <= 1
    FIGURES.append(f"chaos: SIGTERM during {len(sites)} orders: stopped in {stopped:.1f}s, exit 0")
