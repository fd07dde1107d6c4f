"""ACME against a real Pebble with real HTTP-01 validation.

Pebble's validator resolves every name to 127.0.0.1 (challtestsrv) and
connects to PEBBLE_HTTP01_PORT, where the real `challenge-server` serves the answers
the operator published in the test namespace, watched through the API.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import itertools
import json
import re
import secrets
import ssl
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from kubernetes import config

from blogsite_operator import certs, kube, models
from blogsite_operator.issuance.driver import renew_request_digest
from blogsite_operator.issuance.issuer import CertificateIssuer, IssueJob
from blogsite_operator.issuance.protocol import AccountConfig, IssuanceError, OrderRequest, Session
from blogsite_operator.policies.ledger import LEDGER_ANNOTATION, Ledger, names_digest
from blogsite_operator.render.site import SiteRef, render_challenges_config_map
from blogsite_operator.settings import AcmeSettings
from tests.acme_faults import (
    AcmeFaultProxy,
    issued_without_replaces,
    orders_naming_what_they_replace,
)
from tests.integration.conftest import (
    PEBBLE_DNS_PORT,
    PEBBLE_HTTP01_PORT,
    Kubectl,
    OperatorProcess,
    Watch,
    parse_time,
    renewals_through_an_outage,
)
from tests.nginx_harness import json_body, launch_nginx, start_stub
from tests.pebble import ChallengeServer, Pebble, running_pebble
from tests.support import FIGURES, free_port, wait_for, worker_port

DOMAINS = ["blog.example", "www.blog.example"]
REDIRECTS = ["old-blog.example", "www.old-blog.example"]
SITE = "notes"


@pytest.fixture
def pebble() -> Iterator[Pebble]:
    with running_pebble() as server:
        yield server


def acme_site(pebble: Pebble, **acme: Any) -> dict[str, Any]:
    return {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "metadata": {"name": SITE},
        "spec": {
            "domains": DOMAINS,
            "redirectDomains": REDIRECTS,
            "daedalus": {"image": "ghcr.io/example/daedalus:1", "replicas": 1},
            "frontend": {"replicas": 1, "http": "redirect"},
            "tls": {
                "acme": {
                    "server": pebble.directory_url,
                    "email": "ops@blog.example",
                    "caBundleSecretRef": {"name": "pebble-ca", "key": "ca.crt"},
                    **acme,
                }
            },
        },
    }


def trust_pebble(kubectl: Kubectl, namespace: str, pebble: Pebble) -> None:
    """The CA of Pebble's own HTTPS, as a user would supply a private CA's."""
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "pebble-ca"},
            "data": {"ca.crt": base64.b64encode(pebble.ca_pem).decode()},
        },
        namespace,
    )


def apply_acme_site(
    kubectl: Kubectl, namespace: str, pebble: Pebble, **acme: Any
) -> dict[str, Any]:
    """The example site, ordering from this Pebble and trusting it; returns the manifest."""
    trust_pebble(kubectl, namespace, pebble)
    site = acme_site(pebble, **acme)
    kubectl.apply(site, namespace)
    return site


def blogsite(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    result: dict[str, Any] = kubectl.json("get", "blogsite", SITE, "-n", namespace)
    return result


def condition(site: dict[str, Any], kind: str) -> dict[str, Any]:
    for item in (site.get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return dict(item)
    return {}


def served_chain(kubectl: Kubectl, namespace: str) -> tuple[bytes, bytes]:
    secret = kubectl.json("get", "secret", f"{SITE}-tls", "-n", namespace)
    return (
        base64.b64decode(secret["data"]["tls.crt"]),
        base64.b64decode(secret["data"]["tls.key"]),
    )


def leaf(chain: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(chain)[0]


def wait_for_certificate(
    kubectl: Kubectl, namespace: str, *, other_than: str | None = None, timeout: float = 90
) -> dict[str, Any]:
    """The site once CertificateReady is True for a real (non-placeholder) certificate."""

    def issued() -> dict[str, Any] | None:
        site = blogsite(kubectl, namespace)
        certificate = (site.get("status") or {}).get("certificate") or {}
        ready = condition(site, "CertificateReady").get("status") == "True"
        fresh = certificate.get("serialNumber") not in (None, other_than)
        return site if ready and fresh and not certificate.get("placeholder") else None

    result: dict[str, Any] = wait_for(issued, timeout=timeout, what="a certificate from Pebble")
    return result


def first_certificate(kubectl: Kubectl, namespace: str, pebble: Pebble) -> dict[str, Any]:
    """The example site applied, trusting Pebble: its first status.certificate."""
    apply_acme_site(kubectl, namespace, pebble)
    certificate: dict[str, Any] = wait_for_certificate(kubectl, namespace)["status"]["certificate"]
    return certificate


def verify_against_root(chain: bytes, root_pem: bytes, name: str) -> None:
    """Path validation as a TLS client does it: root -> intermediate -> leaf, for `name`."""
    certificates = x509.load_pem_x509_certificates(chain)
    store = Store(x509.load_pem_x509_certificates(root_pem))
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
    verifier.verify(certificates[0], certificates[1:])


def events(kubectl: Kubectl, namespace: str, reason: str | None = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl.json("get", "events", "-n", namespace)["items"]
    return [e for e in items if reason is None or e.get("reason") == reason]


def key_probes(key_pem: bytes) -> list[str]:
    """Parts of a private key that only it has, in every form it travels in:
    its PEM body, the base64 of the PEM (a Secret's data), and the private
    value itself in hex. (A PEM's first characters are a header that every
    key of the same type shares.)"""
    body = b"".join(key_pem.strip().splitlines()[1:-1]).decode()
    as_secret_data = base64.b64encode(key_pem).decode()
    key = serialization.load_pem_private_key(key_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        secret = format(key.private_numbers().private_value, "x")
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        secret = format(key.private_numbers().d, "x")
    return [
        body[-40:-4],
        as_secret_data[len(as_secret_data) // 2 :][:32],
        secret[8:40],
    ]


def assert_no_key_material(text: str, *keys_pem: bytes) -> None:
    assert "PRIVATE KEY" not in text
    for key_pem in keys_pem:
        for probe in key_probes(key_pem):
            assert probe not in text, "private key material leaked"


def account_key(kubectl: Kubectl, namespace: str) -> bytes:
    (secret,) = kubectl.json(
        "get", "secrets", "-n", namespace, "-l", "blog.daedalus.dev/acme-account=true"
    )["items"]
    return base64.b64decode(secret["data"]["key.pem"])


def test_first_issuance_covers_every_name_and_verifies_against_pebbles_root(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    apply_acme_site(kubectl, namespace, pebble)
    site = wait_for_certificate(kubectl, namespace)

    chain, key = served_chain(kubectl, namespace)
    assert len(x509.load_pem_x509_certificates(chain)) >= 2, "leaf + intermediate"
    root = pebble.root_pem()
    for name in DOMAINS + REDIRECTS:
        verify_against_root(chain, root, name)
    with pytest.raises(VerificationError, match="no matching subjectAltName"):
        verify_against_root(chain, root, "not-on-it.example")
    certificate = leaf(chain)
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey), "P-256 by default"

    status = site["status"]["certificate"]
    assert status["serialNumber"] == format(certificate.serial_number, "x")
    assert sorted(status["dnsNames"]) == sorted(DOMAINS + REDIRECTS)
    assert status["notAfter"] == certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    renewal = datetime.datetime.fromisoformat(status["renewalTime"])
    assert certificate.not_valid_before_utc < renewal < certificate.not_valid_after_utc
    assert "failedAttempts" not in status
    # Pebble is a test CA: said in status, in `kubectl get -o wide`, and in an Event.
    issuer = certificate.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert status["issuer"] == issuer
    assert str(issuer).startswith("Pebble")
    assert status["testIssuer"] is True
    wide = kubectl.run("get", "blogsite", SITE, "-n", namespace, "-o", "wide").stdout
    assert str(issuer) in wide
    assert "TEST-CA" in wide.splitlines()[0]
    wait_for(
        lambda: events(kubectl, namespace, "TestCertificate"),
        what="a TestCertificate Warning Event",
    )
    accounts = kubectl.json(
        "get", "secrets", "-n", namespace, "-l", "blog.daedalus.dev/acme-account=true"
    )["items"]
    assert len(accounts) == 1, "one account key, kept for every later order"

    # The frontend picks the certificate up through a rollout of its template.
    wait_for(
        lambda: tls_hash_of_frontend(kubectl, namespace) == hashlib.sha256(chain).hexdigest(),
        what="the frontend template carrying the issued certificate",
    )

    issued = events(kubectl, namespace, "CertificateIssued")
    assert issued, "a CertificateIssued Event"
    everything = "\n".join(json.dumps(e) for e in events(kubectl, namespace))
    keys = (key, account_key(kubectl, namespace))
    assert_no_key_material(everything + json.dumps(site), *keys)
    assert_no_key_material(operator_process.logs(), *keys)
    # The answers are gone once the order is over (the canary's settings,
    # keys with a dot, which no token has, stay).
    answers = kubectl.json("get", "configmap", f"{SITE}-acme-http01", "-n", namespace)
    assert not [key for key in answers.get("data") or {} if "." not in key], answers
    assert (answers.get("data") or {}).get("canary.weight", "0") == "0"


def certificate_status(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = (blogsite(kubectl, namespace).get("status") or {}).get(
        "certificate"
    ) or {}
    return status


def test_short_lived_certificate_is_renewed_within_its_ari_window_before_it_expires(
    kubectl: Kubectl,
    namespace: str,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    # Pebble's renewal info for a 20 s certificate suggests a window over its
    # whole lifetime; the operator picks a time in it and renews then.
    with running_pebble({"PEBBLE_SHORTLIVED_SECONDS": "20"}) as pebble:
        apply_acme_site(kubectl, namespace, pebble, profile="shortlived")
        wait_for_certificate(kubectl, namespace)
        seen: dict[str, dict[str, Any]] = {}  # serial -> the last status written for it
        # serial -> the last status that showed the CA's renewal info for it:
        # the pass that takes in a renewal's result shows the old serial
        # without it until the new Secret's pass, and may be the last written.
        with_info: dict[str, dict[str, Any]] = {}
        # Every status write, from a watch: a plan the CA's renewal info moved
        # earlier may stand for well under a second before the renewal, and
        # samples would miss it and judge the renewal by the plan before.
        with Watch(kubectl, namespace, f"blogsite/{SITE}", "{.status.certificate}") as watch:
            # Two renewals of 20 s certificates: about 40 s, allowed 120 s
            # on a loaded machine (what is checked is each one's timing
            # against its own plan, not how fast the test ran).
            deadline = time.monotonic() + 120
            read = 0
            while time.monotonic() < deadline and len(seen) < 3:
                for sample in watch.samples[read:]:
                    read += 1
                    status = json.loads(sample) if sample else {}
                    serial = status.get("serialNumber")
                    if serial and not status.get("placeholder"):
                        seen[serial] = status
                        if (status.get("renewalInfo") or {}).get("serialNumber") == serial:
                            with_info[serial] = status
                time.sleep(0.1)

    assert len(seen) >= 3, f"expected at least two renewals in 120 s, saw {list(seen)}"
    certificates = sorted(seen.values(), key=lambda s: s["notBefore"])
    for old, new in itertools.pairwise(certificates):
        lifetime = parse_time(old["notAfter"]) - parse_time(old["notBefore"])
        assert lifetime <= datetime.timedelta(seconds=21), "the shortlived profile was used"
        planned = parse_time(old["renewalTime"])
        # On time: not before the planned moment, and before the old one expired.
        assert parse_time(new["notBefore"]) >= planned - datetime.timedelta(seconds=1)
        assert parse_time(new["notBefore"]) < parse_time(old["notAfter"])
    # The CA's renewal info was asked for and followed: by every certificate
    # that had it in status before its renewal, and at least one did.
    renewed_with_info = [
        with_info[s["serialNumber"]] for s in certificates[:-1] if s["serialNumber"] in with_info
    ]
    assert renewed_with_info, "no certificate's status shows the CA's renewal info"
    for status in renewed_with_info:
        assert status["renewalTime"] == status["renewalInfo"]["renewalTime"], status


def test_renewal_follows_a_renewal_window_the_ca_moves(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    first = first_certificate(kubectl, namespace, pebble)
    chain, _ = served_chain(kubectl, namespace)
    # A 90-day certificate; the CA now says: renew within the next 8-14 s.
    start = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(seconds=8)
    end = start + datetime.timedelta(seconds=6)
    pebble.set_renewal_info(chain, start, end)

    def planned_in_window() -> str | None:
        status = certificate_status(kubectl, namespace)
        info = status.get("renewalInfo") or {}
        moved = info.get("serialNumber") == first["serialNumber"] and info.get("renewalTime")
        return str(status["renewalTime"]) if moved and parse_time(moved) < end else None

    planned = wait_for(planned_in_window, timeout=20, what="the new renewal window in status")
    # Status times are whole seconds: allow the truncation.
    second = datetime.timedelta(seconds=1)
    assert start - second <= parse_time(planned) <= end
    renewed = wait_for_certificate(kubectl, namespace, other_than=first["serialNumber"])
    issued_at = parse_time(renewed["status"]["certificate"]["notBefore"])
    # Not before the window opened (each renewal-info check picks a new random
    # time in it, so the plan read above may have moved since). How late after
    # the window it came is a figure, not a rule: a loaded machine is slow.
    assert issued_at >= start - second
    FIGURES.append(
        f"ACME: renewal issued {(issued_at - start).total_seconds():.0f}s after the CA's "
        f"6 s window opened"
    )


def test_changed_names_and_the_renew_annotation_each_reissue(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    site = apply_acme_site(kubectl, namespace, pebble)
    first = wait_for_certificate(kubectl, namespace)["status"]["certificate"]
    template_hash = tls_hash_of_frontend(kubectl, namespace)

    site["spec"]["domains"] = [*DOMAINS, "new.blog.example"]
    kubectl.apply(site, namespace)

    def covers_new_name() -> dict[str, Any] | None:
        status = certificate_status(kubectl, namespace)
        return status if "new.blog.example" in status.get("dnsNames", []) else None

    second = wait_for(covers_new_name, timeout=60, what="a certificate with the new name")
    assert second["serialNumber"] != first["serialNumber"]
    chain, _ = served_chain(kubectl, namespace)
    verify_against_root(chain, pebble.root_pem(), "new.blog.example")
    wait_for(
        lambda: tls_hash_of_frontend(kubectl, namespace) != template_hash,
        what="the frontend rolling out the new certificate",
    )

    kubectl.run(
        "annotate", "blogsite", SITE, "-n", namespace, "blog.daedalus.dev/renew-certificate=1"
    )
    third = wait_for_certificate(kubectl, namespace, other_than=second["serialNumber"])
    assert third["status"]["certificate"]["renewalRequest"] == renew_request_digest("1")
    # The same value again asks for nothing: a pass after it starts no order.
    operator_process.looked_again(SITE)
    site_now = blogsite(kubectl, namespace)
    assert condition(site_now, "CertificateReady")["reason"] != "Issuing"
    assert (
        site_now["status"]["certificate"]["serialNumber"]
        == (third["status"]["certificate"]["serialNumber"])
    )


TLS_HASH = "blog.daedalus.dev/tls-certificate-sha256"
FRONTEND_PODS = f"app.kubernetes.io/instance={SITE},app.kubernetes.io/component=frontend"


def tls_hash_of_frontend(kubectl: Kubectl, namespace: str) -> str:
    frontend = kubectl.json("get", "deployment", f"{SITE}-frontend", "-n", namespace)
    annotations = frontend["spec"]["template"]["metadata"].get("annotations") or {}
    return str(annotations.get(TLS_HASH))


def failures(kubectl: Kubectl, namespace: str, reason: str) -> list[dict[str, Any]]:
    return sorted(events(kubectl, namespace, reason), key=lambda e: e.get("firstTimestamp") or "")


def test_acme_server_down_backs_off_then_recovers(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    trust_pebble(kubectl, namespace, pebble)
    pebble.stop()
    kubectl.apply(acme_site(pebble), namespace)

    def reported() -> dict[str, Any] | None:
        site = blogsite(kubectl, namespace)
        ready = condition(site, "CertificateReady")
        attempts = certificate_status(kubectl, namespace).get("failedAttempts", 0)
        return site if ready.get("reason") == "AcmeServerUnreachable" and attempts >= 2 else None

    site = wait_for(reported, timeout=30, what="the unreachable ACME server in status")
    status = site["status"]["certificate"]
    assert status["placeholder"] is True
    assert status["lastFailure"]["reason"] == "AcmeServerUnreachable"
    assert "next attempt" in condition(site, "CertificateReady")["message"] or status["nextAttempt"]

    # Backoff: 2 s, 4 s, 8 s, 8 s ... (base 2, cap 8 in the test settings).
    # Each wait is at least what the schedule says: never a hot loop.
    def five_attempts() -> list[dict[str, Any]] | None:
        attempts = certificate_status(kubectl, namespace).get("failedAttempts", 0)
        warned = failures(kubectl, namespace, "AcmeServerUnreachable")
        # One Warning Event per failed attempt.
        return warned if attempts >= 5 and len(warned) == attempts else None

    warned = wait_for(five_attempts, timeout=120, what="five failed attempts, an Event each")
    times = [parse_time(e["firstTimestamp"]) for e in warned]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    # Event times are whole seconds: allow one.
    for gap, backoff in zip(gaps, (2, 4, 8, 8), strict=False):
        assert gap >= backoff - 1, gaps

    pebble.start()
    recovered = wait_for_certificate(kubectl, namespace, timeout=40)
    chain, _ = served_chain(kubectl, namespace)
    verify_against_root(chain, pebble.root_pem(), DOMAINS[0])
    assert "failedAttempts" not in recovered["status"]["certificate"]
    assert "lastFailure" not in recovered["status"]["certificate"]


def test_failed_renewal_keeps_the_valid_certificate_serving(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    first = first_certificate(kubectl, namespace, pebble)
    chain_before = served_chain(kubectl, namespace)

    pebble.stop()
    kubectl.run(
        "annotate", "blogsite", SITE, "-n", namespace, "blog.daedalus.dev/renew-certificate=now"
    )

    def renewal_failed() -> dict[str, Any] | None:
        site = blogsite(kubectl, namespace)
        return site if site["status"]["certificate"].get("failedAttempts") else None

    site = wait_for(renewal_failed, timeout=30, what="the failed renewal in status")
    ready = condition(site, "CertificateReady")
    assert ready["status"] == "True", "a valid certificate is still served"
    assert "renewal failing" in ready["message"]
    assert served_chain(kubectl, namespace) == chain_before, "the Secret was not touched"

    pebble.start()  # a new CA (Pebble forgets everything): a new account, a new chain
    renewed = wait_for_certificate(kubectl, namespace, other_than=first["serialNumber"], timeout=40)
    chain, _ = served_chain(kubectl, namespace)
    verify_against_root(chain, pebble.root_pem(), DOMAINS[0])
    assert "failedAttempts" not in renewed["status"]["certificate"]


@pytest.mark.exclusive
def test_a_renewal_waiting_for_room_is_not_reverted_and_status_shows_what_is_served(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    trust_pebble(kubectl, namespace, pebble)
    site = acme_site(pebble)
    site["spec"]["rollout"] = {"readyTimeoutSeconds": 10}
    kubectl.apply(site, namespace)
    first = wait_for_certificate(kubectl, namespace)["status"]["certificate"]
    try:
        # No room anywhere: the renewed certificate's frontend pod stays Pending.
        kubectl.run("cordon", "kwok-node-0")
        kubectl.run(
            "annotate", "blogsite", SITE, "-n", namespace, "blog.daedalus.dev/renew-certificate=1"
        )
        wait_for(
            lambda: (
                leaf(served_chain(kubectl, namespace)[0]).serial_number
                != int(first["serialNumber"], 16)
            ),
            timeout=60,
            what="the renewed certificate in the Secret",
        )
        renewed_hash = hashlib.sha256(served_chain(kubectl, namespace)[0]).hexdigest()

        def waited_past_the_ready_timeout() -> bool:
            pods = kubectl.json("get", "pods", "-n", namespace, "-l", FRONTEND_PODS)["items"]
            return any(
                (pod["metadata"].get("annotations") or {}).get(TLS_HASH) == renewed_hash
                and any(
                    c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                    for c in pod["status"].get("conditions") or []
                )
                and time.time() - parse_time(pod["metadata"]["creationTimestamp"]).timestamp() > 12
                for pod in pods
            )

        wait_for(waited_past_the_ready_timeout, timeout=60, what="a renewed pod Pending for 12s")
        operator_process.looked_again(SITE)
        waiting = blogsite(kubectl, namespace)
        # Not judged, not reverted: the Deployment still asks for the renewal.
        assert condition(waiting, "RolloutHealthy")["reason"] == "Progressing", waiting["status"]
        assert tls_hash_of_frontend(kubectl, namespace) == renewed_hash
        # And the status says what nginx serves: the first certificate.
        assert waiting["status"]["certificate"]["serialNumber"] == first["serialNumber"]
        ready = condition(waiting, "CertificateReady")
        assert ready["status"] == "True", ready
        assert (
            f"serving the previous certificate (serial {first['serialNumber']}" in ready["message"]
        )
    finally:
        kubectl.run("uncordon", "kwok-node-0")
    renewed = wait_for_certificate(kubectl, namespace, other_than=first["serialNumber"])
    assert leaf(served_chain(kubectl, namespace)[0]).serial_number == int(
        renewed["status"]["certificate"]["serialNumber"], 16
    )
    assert condition(renewed, "Ready")["status"] == "True"
    assert events(kubectl, namespace, "NotReady") == []
    assert events(kubectl, namespace, "RolledBack") == []


def names_in_secret(kubectl: Kubectl, namespace: str) -> list[str]:
    names = leaf(served_chain(kubectl, namespace)[0]).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    return list(names.value.get_values_for_type(x509.DNSName))


@pytest.mark.exclusive
def test_a_domain_added_is_not_certificate_ready_until_a_certificate_with_it_serves(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    trust_pebble(kubectl, namespace, pebble)
    site = acme_site(pebble)
    kubectl.apply(site, namespace)
    first = wait_for_certificate(kubectl, namespace)["status"]["certificate"]
    added = "new.blog.example"
    site["spec"]["domains"] = [*DOMAINS, added]
    jsonpath = (
        '{.status.observedGeneration} {.status.conditions[?(@.type=="CertificateReady")].status} '
        "{.status.certificate.dnsNames}"
    )
    with Watch(kubectl, namespace, f"blogsite/{SITE}", jsonpath) as watch:
        try:
            # No room for the frontend pod that would serve the new certificate.
            kubectl.run("cordon", "kwok-node-0")
            kubectl.apply(site, namespace)
            generation = blogsite(kubectl, namespace)["metadata"]["generation"]
            wait_for(
                lambda: added in names_in_secret(kubectl, namespace),
                timeout=60,
                what="the certificate with the new domain in the Secret",
            )
            new_hash = hashlib.sha256(served_chain(kubectl, namespace)[0]).hexdigest()
            wait_for(
                lambda: tls_hash_of_frontend(kubectl, namespace) == new_hash,
                what="the frontend template naming the new certificate",
            )
            operator_process.looked_again(SITE)
            waiting = blogsite(kubectl, namespace)
            ready = condition(waiting, "CertificateReady")
            assert (ready["status"], ready["reason"]) == ("False", "NamesNotCovered"), ready
            assert added in ready["message"]
            assert waiting["status"]["certificate"]["serialNumber"] == first["serialNumber"]
        finally:
            kubectl.run("uncordon", "kwok-node-0")
        served = wait_for_certificate(kubectl, namespace, other_than=first["serialNumber"])
        assert added in served["status"]["certificate"]["dnsNames"]
    # Every status written for the new spec: never True without the new name.
    samples = [[*sample.split(" ", 2), "", ""][:3] for sample in watch.samples]
    after_change = [s for s in samples if s[0].isdigit() and int(s[0]) >= generation]
    assert after_change, watch.samples
    for _, ready_status, names in after_change:
        assert ready_status != "True" or added in names, watch.samples


def test_a_certificate_outlives_its_blogsite_and_is_reused_when_it_comes_back(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    site = apply_acme_site(kubectl, namespace, pebble)
    first = wait_for_certificate(kubectl, namespace)["status"]["certificate"]
    secret_uid = kubectl.json("get", "secret", f"{SITE}-tls", "-n", namespace)["metadata"]["uid"]
    for _ in range(2):  # a migration, a GitOps prune, a re-install
        kubectl.run("delete", "blogsite", SITE, "-n", namespace, "--wait=true")
        wait_for(
            lambda: not kubectl.exists("deployment", f"{SITE}-frontend", namespace),
            what="the BlogSite's Deployments collected",
        )
        assert kubectl.exists("secret", f"{SITE}-tls", namespace), "the certificate is kept"
        kubectl.apply(site, namespace)
        again = wait_for_certificate(kubectl, namespace)
        assert again["status"]["certificate"]["serialNumber"] == first["serialNumber"]
    secret = kubectl.json("get", "secret", f"{SITE}-tls", "-n", namespace)
    assert secret["metadata"]["uid"] == secret_uid, "the same Secret, never rewritten"
    assert not secret["metadata"].get("ownerReferences")
    # Nothing a GitOps tool's label tracking takes for an Application's own.
    assert "app.kubernetes.io/instance" not in secret["metadata"]["labels"]
    assert secret["metadata"]["labels"]["blog.daedalus.dev/site"] == SITE
    orders = operator_process.logs().count(f"[{namespace}/{SITE}] issued a certificate")
    assert orders == 1, f"{orders} orders for one site deleted and created twice"
    assert len(events(kubectl, namespace, "CertificateRecovered")) >= 1
    FIGURES.append("ACME: a site deleted and created again twice: 1 order in all")


def test_name_churn_gets_at_most_five_certificates_per_exact_set_across_a_restart(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    """A redirect name toggled out and in again and again: each change orders
    (Pebble enforces no limits), until the account's ledger counts five
    certificates for one exact set in 168 hours, Let's Encrypt's limit; the
    sixth order is held, saying why and until when. The ledger lives in the
    account Secret: an operator restarted halfway counts on."""
    site = apply_acme_site(kubectl, namespace, pebble)
    both, fewer = sorted(DOMAINS + REDIRECTS), sorted(DOMAINS)
    issued: list[list[str]] = []
    serials: set[str] = set()
    serial = None
    for turn in range(10):  # both, fewer, both, ...: five certificates of each
        if turn:
            site["spec"]["redirectDomains"] = REDIRECTS if turn % 2 == 0 else []
            kubectl.apply(site, namespace)
        if turn == 5:  # the ledger outlives the process
            assert operator_process.stop() == 0
            operator_process.start()
        wanted = both if turn % 2 == 0 else fewer
        done = wait_for_certificate(kubectl, namespace, other_than=serial)
        certificate = done["status"]["certificate"]
        assert sorted(certificate["dnsNames"]) == wanted, (turn, certificate["dnsNames"])
        serial = certificate["serialNumber"]
        serials.add(serial)
        issued.append(wanted)
    assert issued.count(both) == issued.count(fewer) == 5

    site["spec"]["redirectDomains"] = REDIRECTS
    kubectl.apply(site, namespace)  # a sixth certificate for `both`: held

    def held() -> dict[str, Any] | None:
        body = blogsite(kubectl, namespace)
        certificate = (body.get("status") or {}).get("certificate") or {}
        return body if certificate.get("rateLimitHold") else None

    body = wait_for(held, timeout=60, what="the sixth order held by the ledger")
    hold = body["status"]["certificate"]["rateLimitHold"]
    assert "5 certificates for exactly these names in 168 hours" in hold, hold
    assert re.search(r"the next order goes at 20\d\d-\d\d-\d\dT", hold), hold
    ready = condition(body, "CertificateReady")
    assert (ready["status"], ready["reason"]) == ("False", "RateLimitLedger"), ready
    (event,) = events(kubectl, namespace, "RateLimitLedger")
    assert event["type"] == "Warning"
    # Held, not ordered: no order starts while the ledger says no.
    orders = len(events(kubectl, namespace, "Issuing"))
    operator_process.looked_again(SITE)
    assert len(events(kubectl, namespace, "Issuing")) == orders
    assert len(serials) == 10
    # The ledger in the account Secret counts those ten, five per set (an
    # order that ended while the operator restarted included: its result
    # shows as CertificateRecovered, not CertificateIssued).
    (account,) = kubectl.json(
        "get", "secrets", "-n", namespace, "-l", "blog.daedalus.dev/acme-account=true"
    )["items"]
    ledger = Ledger.from_annotation(account["metadata"]["annotations"][LEDGER_ANNOTATION])
    counted = Counter(digest for _, digest in ledger.certificates)
    assert counted == {names_digest(both): 5, names_digest(fewer): 5}, counted
    FIGURES.append(f"ACME: name churn, 10 certificates, the 11th held: {hold}")


def test_failed_challenge_is_reported_and_retried_until_it_validates(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    tmp_path: Path,
) -> None:
    # No preflight or self-check: the CA itself finds nobody answering on
    # port 80 (5012 here).
    operator = OperatorProcess(
        kubectl,
        namespace,
        tmp_path / "operator.log",
        extra_env={
            "BLOGSITE_OPERATOR_ACME_SELF_CHECK": "off",
            "BLOGSITE_OPERATOR_ACME_PREFLIGHT": "off",
        },
    )
    operator.start()
    server = ChallengeServer(kubectl.kubeconfig, namespace, tmp_path / "challenge-server.log")
    try:
        apply_acme_site(kubectl, namespace, pebble)

        def challenge_failed() -> dict[str, Any] | None:
            site = blogsite(kubectl, namespace)
            ready = condition(site, "CertificateReady")
            return site if ready.get("reason") == "ChallengeFailed" else None

        site = wait_for(challenge_failed, timeout=60, what="ChallengeFailed in status")
        message = condition(site, "CertificateReady")["message"]
        assert "HTTP-01 validation failed" in message
        assert DOMAINS[0] in message or REDIRECTS[0] in message, message
        assert failures(kubectl, namespace, "ChallengeFailed")

        server.start()
        wait_for_certificate(kubectl, namespace, timeout=40)
    finally:
        server.stop()
        assert operator.stop() == 0
    assert "Traceback" not in operator.logs()


def test_issuance_survives_a_high_nonce_rejection_rate(
    kubectl: Kubectl,
    namespace: str,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    # Pebble rejects half the nonces: the `acme` package alone retries only once.
    with running_pebble({"PEBBLE_WFE_NONCEREJECT": "50"}) as pebble:
        apply_acme_site(kubectl, namespace, pebble)
        wait_for_certificate(kubectl, namespace, timeout=60)
        chain, _ = served_chain(kubectl, namespace)
        for name in DOMAINS + REDIRECTS:
            verify_against_root(chain, pebble.root_pem(), name)
    retried = operator_process.logs().count("rejected a nonce; retrying")
    assert retried >= 3, "Pebble did reject nonces, and the operator retried them"
    issued = [e["message"] for e in events(kubectl, namespace, "CertificateIssued")]
    assert len(issued) == 1, issued


@pytest.mark.nginx
@pytest.mark.usefixtures("challenge_server", "operator_process")
def test_end_to_end_real_nginx_serves_the_issued_certificate_for_every_name(
    kubectl: Kubectl, namespace: str, pebble: Pebble, tmp_path: Path
) -> None:
    site = apply_acme_site(kubectl, namespace, pebble)
    wait_for_certificate(kubectl, namespace)
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())

    # The frontend configuration the operator renders for this site, with the
    # issued chain and key, in real nginx; cert-refresh is the real challenge server.
    daedalus = start_stub("daedalus")
    nginx, process = launch_nginx(
        site["spec"],
        tmp_path / "nginx",
        (daedalus.address, f"127.0.0.1:{PEBBLE_HTTP01_PORT}"),
        certificate=served_chain(kubectl, namespace),
    )
    try:
        for name in DOMAINS:
            response = nginx.https(name, "/post?id=7", trust=root)
            assert response.status == 200, name
            assert json_body(response)["upstream"] == "daedalus"
        for name in REDIRECTS:
            response = nginx.https(name, "/post?id=7", trust=root)
            assert response.status == 301, name
            assert response.getheader("Location") == f"https://{DOMAINS[0]}/post?id=7"
        # Trusting anything else fails: this really is Pebble's chain.
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            nginx.https(DOMAINS[0], "/", trust=Path(challenge_ca_file(tmp_path, pebble)))
        # Port 80 hands ACME challenges to cert-refresh, for every name.
        for name in DOMAINS + REDIRECTS:
            response = nginx.http(name, "/.well-known/acme-challenge/unknown-token")
            assert response.status == 404
            assert response.read() == b"no such challenge token\n"
    finally:
        process.terminate()
        process.wait(timeout=10)
        daedalus.server.shutdown()


def challenge_ca_file(tmp_path: Path, pebble: Pebble) -> str:
    path = tmp_path / "not-pebbles-root.pem"
    path.write_bytes(pebble.ca_pem)  # the CA of Pebble's HTTPS, not of issued certificates
    return str(path)


def test_external_account_binding_rsa_keys_and_a_change_of_server(
    kubectl: Kubectl,
    namespace: str,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    hmac = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    with running_pebble({"PEBBLE_EAB_KID": "kid-1", "PEBBLE_EAB_HMAC": hmac}) as pebble:
        binding = {"keyId": "kid-1", "hmacKeySecretRef": {"name": "eab", "key": "hmac"}}
        site = apply_acme_site(
            kubectl, namespace, pebble, externalAccountBinding=binding, keyAlgorithm="RSA2048"
        )

        # The HMAC Secret is missing: said plainly, and nothing is sent to the CA.
        def misconfigured() -> dict[str, Any] | None:
            ready = condition(blogsite(kubectl, namespace), "CertificateReady")
            return ready if ready.get("reason") == "ConfigurationError" else None

        ready = wait_for(misconfigured, timeout=30, what="ConfigurationError in status")
        assert "Secret eab does not exist" in ready["message"]

        kubectl.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "eab"},
                "stringData": {"hmac": hmac},
            },
            namespace,
        )
        first = wait_for_certificate(kubectl, namespace, timeout=40)["status"]["certificate"]
        chain, key = served_chain(kubectl, namespace)
        public = leaf(chain).public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        assert public.key_size == 2048
        assert_no_key_material(str(events(kubectl, namespace)), key)
        assert hmac not in operator_process.logs()
        assert first["issuedBy"]["server"] == pebble.directory_url

        # Another directory URL (as from staging to production): a new certificate.
        moved = pebble.directory_url.replace("127.0.0.1", "localhost")
        site["spec"]["tls"]["acme"]["server"] = moved
        kubectl.apply(site, namespace)
        second = wait_for_certificate(kubectl, namespace, other_than=first["serialNumber"])
        assert second["status"]["certificate"]["issuedBy"]["server"] == moved


def test_sites_ordering_at_once_share_one_account(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    trust_pebble(kubectl, namespace, pebble)
    sites = []
    for n in range(4):
        site = acme_site(pebble)
        site["metadata"]["name"] = f"site-{n}"
        site["spec"]["domains"] = [f"site-{n}.blog.example"]
        site["spec"]["redirectDomains"] = []
        sites.append(site)
    kubectl.run("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(sites))

    def all_issued() -> bool:
        items = kubectl.json("get", "blogsites", "-n", namespace)["items"]
        return len(items) == 4 and all(
            condition(item, "CertificateReady").get("status") == "True" for item in items
        )

    wait_for(all_issued, timeout=60, what="four certificates")
    accounts = kubectl.json(
        "get", "secrets", "-n", namespace, "-l", "blog.daedalus.dev/acme-account=true"
    )["items"]
    assert len(accounts) == 1
    lost = failures(kubectl, namespace, "AcmeError")
    assert not lost, [event["message"] for event in lost]  # no order lost to the shared account

    # Another email is another account.
    other = acme_site(pebble)
    other["metadata"]["name"] = "site-other"
    other["spec"]["domains"] = ["other.blog.example"]
    other["spec"]["redirectDomains"] = []
    other["spec"]["tls"]["acme"]["email"] = "someone-else@example.test"
    kubectl.apply(other, namespace)
    wait_for(
        lambda: (
            condition(
                kubectl.json("get", "blogsite", "site-other", "-n", namespace), "CertificateReady"
            ).get("status")
            == "True"
        ),
        timeout=60,
        what="the other account's certificate",
    )

    def account_secrets() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = kubectl.json(
            "get", "secrets", "-n", namespace, "-l", "blog.daedalus.dev/acme-account=true"
        )["items"]
        return items

    assert len(account_secrets()) == 2
    # The accounts outlive every site (a new site reuses them; no new account).
    kubectl.run("delete", "blogsites", "--all", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(
        lambda: not kubectl.exists("deployment", "site-0-frontend", namespace),
        timeout=90,
        what="the sites' children collected",
    )
    kept = account_secrets()
    assert len(kept) == 2
    assert all(not s["metadata"].get("ownerReferences") for s in kept)
    assert kubectl.exists("secret", "site-0-tls", namespace), "issued certificates are kept too"


def test_cert_refresh_identity_can_read_its_answers_and_nothing_else(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    operator_process: OperatorProcess,
    tmp_path: Path,
) -> None:
    apply_acme_site(kubectl, namespace, pebble)
    account = f"system:serviceaccount:{namespace}:{SITE}-cert-refresh"
    wait_for(
        lambda: kubectl.exists("rolebinding", f"{SITE}-cert-refresh", namespace),
        what="cert-refresh's RoleBinding",
    )

    def can(*args: str) -> bool:
        result = kubectl.run("auth", "can-i", *args, "-n", namespace, "--as", account, check=False)
        return result.stdout.strip() == "yes"

    answers = f"configmaps/{SITE}-acme-http01"
    assert can("watch", answers)
    assert can("list", answers)
    assert not can("get", "secrets")
    assert not can("list", "configmaps")  # only its own, by name
    assert not can("get", f"configmaps/{SITE}-nginx-x")
    assert not can("create", "configmaps")

    # The challenge server, run as that ServiceAccount exactly as in its pod
    # (one ConfigMap, by name), is where Pebble validates: issuance works.
    token = kubectl.run("create", "token", f"{SITE}-cert-refresh", "-n", namespace).stdout.strip()
    config = yaml.safe_load(Path(kubectl.kubeconfig).read_text(encoding="utf-8"))
    config["users"] = [{"name": "cert-refresh", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "cert-refresh"
    restricted = tmp_path / "cert-refresh.kubeconfig"
    restricted.write_text(yaml.safe_dump(config), encoding="utf-8")
    server = ChallengeServer(
        str(restricted),
        namespace,
        tmp_path / "challenge-server.log",
        config_map=f"{SITE}-acme-http01",
    )
    server.start()
    try:
        wait_for_certificate(kubectl, namespace, timeout=60)
    finally:
        server.stop()
    assert "Forbidden" not in server.log_path.read_text(encoding="utf-8")


def test_a_deleted_or_damaged_secret_gets_the_issued_certificate_back_without_the_ca(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    serial = first_certificate(kubectl, namespace, pebble)["serialNumber"]
    issued = served_chain(kubectl, namespace)
    frontend_hash = tls_hash_of_frontend(kubectl, namespace)
    wait_for(
        lambda: kubectl.exists("secret", f"{SITE}-tls-last-issued", namespace),
        what="the copy of the issued certificate",
    )
    pebble.stop()  # the CA is down: nothing can be ordered again
    orders = len(events(kubectl, namespace, "Issuing"))

    kubectl.run("delete", "secret", f"{SITE}-tls", "-n", namespace)
    wait_for(
        lambda: (
            kubectl.exists("secret", f"{SITE}-tls", namespace)
            and served_chain(kubectl, namespace) == issued
        ),
        what="the issued certificate put back",
    )
    # A key that does not belong to the certificate: damaged, so put back too.
    other_key = base64.b64encode(certs.generate_private_key("ECDSAP256")).decode()
    patch = json.dumps({"data": {"tls.key": other_key}})
    kubectl.run("patch", "secret", f"{SITE}-tls", "-n", namespace, "--type=merge", "-p", patch)
    wait_for(lambda: served_chain(kubectl, namespace) == issued, what="the key put back")
    operator_process.looked_again(SITE)
    site = blogsite(kubectl, namespace)
    assert site["status"]["certificate"]["serialNumber"] == serial
    assert condition(site, "CertificateReady")["status"] == "True", site["status"]
    # The frontend's pods were never asked to load anything else.
    assert tls_hash_of_frontend(kubectl, namespace) == frontend_hash
    assert len(events(kubectl, namespace, "Issuing")) == orders
    assert len(events(kubectl, namespace, "CertificateRestored")) >= 1


def test_a_tls_secret_that_belongs_to_someone_else_is_never_written(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    theirs = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{SITE}-tls", "labels": {"owner": "someone-else"}},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64.b64encode(b"theirs").decode(), "tls.key": ""},
    }
    kubectl.apply(theirs, namespace)
    before = kubectl.json("get", "secret", f"{SITE}-tls", "-n", namespace)
    apply_acme_site(kubectl, namespace, pebble)

    def reported() -> dict[str, Any] | None:
        site = blogsite(kubectl, namespace)
        return site if condition(site, "Reconciled").get("reason") == "NameConflict" else None

    site = wait_for(reported, timeout=60, what="the name conflict reported")
    assert f"{SITE}-tls" in condition(site, "Reconciled")["message"]
    # Passes after it (an order among them, if one were made) leave it alone.
    for _ in range(2):
        operator_process.looked_again(SITE)
    after = kubectl.json("get", "secret", f"{SITE}-tls", "-n", namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["data"] == before["data"]
    assert not events(kubectl, namespace, "CertificateIssued")


def registered_session(pebble: Pebble) -> Session:
    """The operator's ACME session with a new account at Pebble."""
    account = AccountConfig(
        server=pebble.directory_url,
        email="ops@blog.example",
        key_pem=certs.generate_private_key("ECDSAP256"),
        ca_bundle_path=str(pebble.state_dir / "pebble-ca.pem"),
    )
    session = Session(account)
    session.register()
    return session


def test_a_failed_self_check_deactivates_the_orders_authorizations_at_the_ca(
    pebble: Pebble,
) -> None:
    """Against Pebble itself: an order the operator will not answer leaves no
    authorization pending at the CA (which caps them per account)."""
    session = registered_session(pebble)
    orders: list[Any] = []
    new_order = session.client.new_order

    def recording_new_order(*args: Any, **kwargs: Any) -> Any:
        order = new_order(*args, **kwargs)  # the real request to Pebble
        orders.append(order)
        return order

    session.client.new_order = recording_new_order  # type: ignore[method-assign]

    def failing_self_check(checks: list[tuple[str, str, str]]) -> None:
        raise IssuanceError("SelfCheckFailed", "the frontend did not answer")

    request = OrderRequest(
        names=("a.blog.example", "b.blog.example"),
        key_algorithm="ECDSAP256",
        profile=None,
        timeout=datetime.timedelta(seconds=30),
    )
    with pytest.raises(IssuanceError, match="the frontend did not answer"):
        session.order(request, publish=lambda answers: None, self_check=failing_self_check)
    (order,) = orders
    assert len(order.authorizations) == 2
    for authorization in order.authorizations:
        polled, _ = session.client.poll(authorization)
        assert polled.body.status == messages.STATUS_DEACTIVATED, polled.body.status


def test_a_renewal_names_the_certificate_it_replaces_and_orders_again_when_refused(
    pebble: Pebble, http01_server: dict[str, str]
) -> None:
    """Against Pebble, which implements RFC 9773: an order naming the
    certificate it renews is taken; naming one already replaced is refused
    with alreadyReplaced, and the order is placed again without it."""
    session = registered_session(pebble)
    request = OrderRequest(
        names=("ari.blog.example",),
        key_algorithm="ECDSAP256",
        profile=None,
        timeout=datetime.timedelta(seconds=60),
    )
    first = session.order(request, publish=http01_server.update)
    first_id = certs.ari_certificate_id(first.fullchain_pem)
    assert first_id is not None
    renewing = dataclasses.replace(request, replaces=first_id)
    second = session.order(renewing, publish=http01_server.update)
    assert (second.replaced, second.replaces_refused) == (first_id, None)
    # Pebble marked the first certificate replaced: naming it again is refused.
    third = session.order(renewing, publish=http01_server.update)
    assert third.replaced is None
    assert third.replaces_refused is not None
    assert "alreadyReplaced" in third.replaces_refused, third.replaces_refused
    serials = {leaf(issued.fullchain_pem).serial_number for issued in (first, second, third)}
    assert len(serials) == 3
    for issued in (second, third):
        verify_against_root(issued.fullchain_pem, pebble.root_pem(), "ari.blog.example")


def test_a_certificate_for_names_the_spec_no_longer_has_is_never_written(
    kubectl: Kubectl, namespace: str, pebble: Pebble, challenge_server: ChallengeServer
) -> None:
    """The issuer itself, against this cluster and Pebble: an order whose names
    the BlogSite dropped while it ran ends Superseded, and its certificate is
    not written over the one the site needs."""
    trust_pebble(kubectl, namespace, pebble)
    site = acme_site(pebble)
    kubectl.apply(site, namespace)
    body = blogsite(kubectl, namespace)
    ref = SiteRef(name=SITE, namespace=namespace, uid=body["metadata"]["uid"])
    kubectl.apply(render_challenges_config_map(ref), namespace)
    api_client = config.new_client_from_config(config_file=kubectl.kubeconfig)  # type: ignore[no-untyped-call]
    finished = threading.Event()
    # With the self-check, as the operator runs here: Pebble is asked only
    # once the challenge server (its watch perhaps slow) serves the answers.
    settings = AcmeSettings(
        self_check=f"127.0.0.1:{PEBBLE_HTTP01_PORT}",
        preflight_resolver=f"127.0.0.1:{PEBBLE_DNS_PORT}",
        preflight_http_port=PEBBLE_HTTP01_PORT,
    )
    issuer = CertificateIssuer(kube.Api(api_client), settings, lambda *_: finished.set())
    try:
        acme = models.parse_spec(site["spec"]).tls.acme  # type: ignore[union-attr]
        assert acme is not None
        # The names of an order started before the spec dropped one.
        stale = (*DOMAINS, *REDIRECTS, "dropped.blog.example")
        assert issuer.submit(IssueJob(ref, stale, acme))
        assert finished.wait(60), "the order never ended"
        _, result = issuer.state((namespace, SITE))
        assert result is not None
        assert result.error is not None
        assert result.error.reason == "Superseded", result.error.message
        assert not kubectl.exists("secret", f"{SITE}-tls", namespace)
    finally:
        issuer.shutdown(wait=True)
        api_client.close()


def test_a_name_pointing_elsewhere_stops_the_order_before_the_ca_hears_of_it(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    """Pebble's DNS sends one name to an address where nothing of this site
    answers (127.0.0.2: the challenge server listens on 127.0.0.1 only): the
    preflight names it and what it resolves to, and no order reaches Pebble
    (no failed authorization spent). Once the record is fixed, the site is
    ordered for within a minute, without waiting out a backoff."""
    wrong = REDIRECTS[1]
    pebble.resolve(wrong, "127.0.0.2")
    log_start = pebble.log_path.stat().st_size
    apply_acme_site(kubectl, namespace, pebble)

    def refused() -> dict[str, Any] | None:
        found = condition(blogsite(kubectl, namespace), "CertificateReady")
        return found if found.get("reason") == "PreflightFailed" else None

    found = wait_for(refused, timeout=60, what="CertificateReady PreflightFailed")
    assert f"{wrong} resolves to 127.0.0.2" in found["message"], found
    assert "refused" in found["message"].lower(), found
    assert found["message"].count(" resolves to ") == 1, "only the wrong name is named"
    failed_check = "the ACME order failed: PreflightFailed"
    wait_for(
        lambda: operator_process.logs().count(failed_check) >= 3,
        timeout=30,
        what="the preflight made again (every 2 s here: the backoff's base, at most 30 s)",
    )
    warnings = events(kubectl, namespace, "PreflightFailed")
    # A Warning when the finding is new, not at every check.
    assert [e["type"] for e in warnings] == ["Warning"], warnings
    assert warnings[0].get("count", 1) == 1, warnings
    asked = pebble.log_path.read_text(errors="replace")[log_start:]
    assert "/order-plz" not in asked, "an order reached the CA"
    assert "failedAttempts" not in certificate_status(kubectl, namespace)

    fixed = time.monotonic()
    pebble.resolve(wrong, "127.0.0.1")
    wait_for_certificate(kubectl, namespace, timeout=60)
    FIGURES.append(
        f"preflight: a fixed DNS record led to a certificate in {time.monotonic() - fixed:.1f}s"
    )


# A second Pebble beside the test's, for the fallback: ports of its own, the
# same HTTP-01 port (the same challenge server answers both).
SECOND_PEBBLE_ENV = {
    "PEBBLE_PORT": str(worker_port(14060)),
    "PEBBLE_MANAGEMENT_PORT": str(worker_port(15060)),
    "PEBBLE_DNS_PORT": str(worker_port(8203)),
    "PEBBLE_CHALLTESTSRV_PORT": str(worker_port(8205)),
}
LIFETIME_SECONDS = 90  # a sixth (15 s) for the fallback order, on a loaded machine too


def served_from_ca(
    kubectl: Kubectl, namespace: str, index: int
) -> Callable[[], dict[str, Any] | None]:
    """status.certificate once the certificate served came from CA `index`
    of tls.acme (0: server, 1: the first fallback)."""

    def served() -> dict[str, Any] | None:
        status = certificate_status(kubectl, namespace)
        by = status.get("issuedBy") or {}
        ours = by.get("serialNumber") == status.get("serialNumber")
        return status if ours and by.get("fallback") == index else None

    return served


def test_a_fallback_ca_issues_before_the_certificate_of_a_ca_that_is_down_expires(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    """Two Pebbles, 90-second certificates. The first issues, then stops:
    its renewals fail, and once less than a sixth of the lifetime is left
    the operator orders from the second, which issues before the first's
    certificate expires; status, an Event and the metric say which CA. With
    the first back, the next renewal comes from it again."""
    lifetime = {"PEBBLE_SHORTLIVED_SECONDS": str(LIFETIME_SECONDS)}
    with (
        running_pebble(lifetime) as first,
        running_pebble({**SECOND_PEBBLE_ENV, **lifetime}) as second,
    ):
        # The preflight asks the second's DNS: the first's goes down with it,
        # and a name that does not resolve is the site's problem, not the CA's.
        metrics_port = free_port()
        operator = OperatorProcess(
            kubectl,
            namespace,
            tmp_path / "operator.log",
            extra_env={
                "BLOGSITE_OPERATOR_ACME_PREFLIGHT_RESOLVER": f"127.0.0.1:{second.dns_port}",
            },
            extra_args=[f"--health-address=127.0.0.1:{metrics_port}"],
        )
        server = ChallengeServer(kubectl.kubeconfig, namespace, tmp_path / "challenge.log")
        operator.start()
        server.start()
        try:
            fallback = {
                "server": second.directory_url,
                "profile": "shortlived",
                # Both Pebbles serve HTTPS under the same minica.
                "caBundleSecretRef": {"name": "pebble-ca", "key": "ca.crt"},
            }
            apply_acme_site(kubectl, namespace, first, profile="shortlived", fallback=[fallback])
            issued = wait_for_certificate(kubectl, namespace)["status"]["certificate"]
            assert issued["issuedBy"]["server"] == first.directory_url
            assert issued["issuedBy"]["fallback"] == 0
            first.stop()

            fell_back = wait_for(
                served_from_ca(kubectl, namespace, 1),
                timeout=3 * LIFETIME_SECONDS,
                what="a certificate from the second CA",
            )
            assert fell_back["issuedBy"]["server"] == second.directory_url
            assert parse_time(fell_back["notBefore"]) < parse_time(issued["notAfter"])
            assert fell_back["issuer"] != issued["issuer"]  # each Pebble has its own CA
            gap = parse_time(issued["notAfter"]) - parse_time(fell_back["notBefore"])
            (moved,) = events(kubectl, namespace, "FallingBack")
            assert first.directory_url in moved["message"], moved
            assert second.directory_url in moved["message"], moved
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                metrics = response.read().decode()
            series = f'blogsite_certificate_fallback_index{{name="{SITE}",namespace="{namespace}"}}'
            assert f"{series} 1.0" in metrics

            first.start()

            wait_for(
                served_from_ca(kubectl, namespace, 0),
                timeout=3 * LIFETIME_SECONDS,
                what="the next renewal from the first CA",
            )
            FIGURES.append(
                f"ACME fallback: the second CA's certificate came {gap.total_seconds():.0f}s "
                f"before the first's ({LIFETIME_SECONDS}s lifetime) expired"
            )
        finally:
            operator.stop()  # first: an order in flight needs the challenge server to end
            server.stop()


SOAK_LIFETIME_SECONDS = 40


def test_a_compressed_soak_of_renewals_through_an_outage_and_a_refused_replaces(
    kubectl: Kubectl,
    namespace: str,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    """40-second certificates, renewed four times or more in a row through
    the fault proxy: the first renewal's `replaces` is refused
    (alreadyReplaced), the CA is down across a later renewal's planned time.
    Every status written describes an
    unexpired certificate for every name, every renewal order names the
    certificate it replaces unless the CA just refused that (then it is
    ordered again without it, once), and the ledger counts only the
    certificates the CA's limits count. KWOK's pods run no nginx: what pods
    present is the real node's test
    (test_a_frontend_pod_presenting_another_certificate_is_caught_by_the_probe)."""
    names = DOMAINS + REDIRECTS
    with (
        running_pebble({"PEBBLE_SHORTLIVED_SECONDS": str(SOAK_LIFETIME_SECONDS)}) as pebble,
        AcmeFaultProxy(pebble) as ca,
    ):
        trust_pebble(kubectl, namespace, pebble)
        site = acme_site(pebble, profile="shortlived")
        site["spec"]["tls"]["acme"]["server"] = ca.directory_url
        # Armed before any order: the first never names `replaces`, so the
        # first renewal is refused, however soon the CA's window lets it come.
        ca.refuse_replaces_once()
        kubectl.apply(site, namespace)
        first = wait_for_certificate(kubectl, namespace)["status"]["certificate"]
        with Watch(kubectl, namespace, f"blogsite/{SITE}", "{.status.certificate}") as watch:
            certificates = {first["serialNumber"]: first}

            def renewed_from(serial: str) -> str:
                site = wait_for_certificate(
                    kubectl, namespace, other_than=serial, timeout=3 * SOAK_LIFETIME_SECONDS
                )
                certificate: dict[str, Any] = site["status"]["certificate"]
                certificates[certificate["serialNumber"]] = certificate
                return str(certificate["serialNumber"])

            serials, _ = renewals_through_an_outage(
                kubectl,
                namespace,
                SITE,
                ca,
                serial=first["serialNumber"],
                renewed_from=renewed_from,
                renewals=4,
                planned_ahead=3,
                down_at_most=0.75 * SOAK_LIFETIME_SECONDS,  # the latest planned renewal
            )
            samples = [
                (received, json.loads(line) if line else {})
                for received, line in zip(watch.received, watch.samples, strict=False)
            ]

    # Every status written while it ran: a real, unexpired certificate for every name.
    checked = 0
    for received, status in samples:
        if not status or status.get("placeholder"):
            continue
        assert parse_time(status["notAfter"]) > received, (received, status)
        assert sorted(status["dnsNames"]) == sorted(names), status
        checked += 1
    assert checked >= 5, samples
    # The outage met a renewal: an order failed (and the next one renewed).
    assert any(status.get("failedAttempts") for _, status in samples), samples
    # Every renewal order named the certificate it replaces, but the one refused.
    answered = orders_naming_what_they_replace(ca)
    assert events(kubectl, namespace, "ReplacesRefused")
    for serial in serials[2:]:  # after the refused one and its retry
        assert certificates[serial]["issuedBy"].get("replaced"), certificates[serial]
    # The ledger counts what the limits count: the certificates of orders
    # that named no certificate to replace (the first, and each retry).
    (account,) = kubectl.json(
        "get", "secrets", "-n", namespace, "-l", "blog.daedalus.dev/acme-account=true"
    )["items"]
    ledger = Ledger.from_annotation(account["metadata"]["annotations"][LEDGER_ANNOTATION])
    counted = Counter(digest for _, digest in ledger.certificates)
    plain = issued_without_replaces(answered)
    assert counted == {names_digest(names): len(plain)}, (counted, plain)
    FIGURES.append(
        f"ACME soak: {len(serials)} certificates of {SOAK_LIFETIME_SECONDS}s in a row through "
        f"a refused `replaces` and a CA outage; {checked} status writes, none expired or "
        "missing a name"
    )
