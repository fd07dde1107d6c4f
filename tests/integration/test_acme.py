"""ACME against a real Pebble with real HTTP-01 validation.

Pebble's validator resolves every name to 127.0.0.1 (challtestsrv) and
connects to PEBBLE_HTTP01_PORT, where the real `challenge-server` serves the answers
the operator published in the test namespace, watched through the API.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from tests.integration.conftest import ChallengeServer, Kubectl, OperatorProcess
from tests.pebble import Pebble, running_pebble
from tests.support import wait_for

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


def verify_against_root(chain: bytes, root_pem: bytes, name: str) -> None:
    """Path validation as a TLS client does it: root -> intermediate -> leaf, for `name`."""
    certificates = x509.load_pem_x509_certificates(chain)
    store = Store(x509.load_pem_x509_certificates(root_pem))
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
    verifier.verify(certificates[0], certificates[1:])


def events(kubectl: Kubectl, namespace: str, reason: str | None = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl.json("get", "events", "-n", namespace)["items"]
    return [e for e in items if reason is None or e.get("reason") == reason]


def assert_no_key_material(text: str, key_pem: bytes) -> None:
    body = b"".join(key_pem.strip().splitlines()[1:-1]).decode()
    assert "PRIVATE KEY" not in text
    assert body[:40] not in text


def test_first_issuance_covers_every_name_and_verifies_against_pebbles_root(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    trust_pebble(kubectl, namespace, pebble)
    kubectl.apply(acme_site(pebble), namespace)
    site = wait_for_certificate(kubectl, namespace)

    chain, key = served_chain(kubectl, namespace)
    assert len(x509.load_pem_x509_certificates(chain)) >= 2, "leaf + intermediate"
    root = pebble.root_pem()
    for name in DOMAINS + REDIRECTS:
        verify_against_root(chain, root, name)
    with pytest.raises(VerificationError):
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
    assert kubectl.exists("secret", f"{SITE}-acme-account", namespace)

    # The frontend picks the certificate up through a rollout of its template.
    frontend = kubectl.json("get", "deployment", f"{SITE}-frontend", "-n", namespace)
    annotations = frontend["spec"]["template"]["metadata"].get("annotations") or {}
    assert any(v for k, v in annotations.items() if "tls-certificate" in k)

    issued = events(kubectl, namespace, "CertificateIssued")
    assert issued, "a CertificateIssued Event"
    everything = "\n".join(e.get("message", "") for e in events(kubectl, namespace))
    assert_no_key_material(everything + str(site), key)
    assert_no_key_material(operator_process.logs(), key)
    # The answers are gone once the order is over.
    answers = kubectl.json("get", "configmap", f"{SITE}-acme-http01", "-n", namespace)
    assert not answers.get("data")
