"""Hostile strings where the spec's schema cannot reach: the BlogSite's name
at its longest and its annotations and labels. The operator reads one
annotation (the renew request); none of it may reach nginx's configuration,
an Event or a child's name in a form the API server refuses.

The spec's own fields meet hostile strings in test_generated_specs.py.
"""

from __future__ import annotations

from blogsite_operator.issuance.driver import RENEW_ANNOTATION
from tests.integration.conftest import Kubectl, OperatorProcess
from tests.integration.test_acme import pebble, trust_pebble  # noqa: F401 - the fixture
from tests.integration.test_chaos import conditions_true, issued_certificate
from tests.pebble import ChallengeServer, Pebble
from tests.support import wait_for

# The CRD's limit (children's names end in at most 13 characters, and a
# Service's name may have 63).
NAME = "l" + "o" * 48 + "g"
INJECTION = "x;\n}\nserver { listen 80; return 200 'owned'; }\r\nX-Injected: 1 ${host} $host"
HOSTILE_ANNOTATIONS = {
    RENEW_ANNOTATION: INJECTION + " ünïcödé " + "x" * 4000,
    "example.com/note": "{{ .Values }} \x07 '\"` $(id) #",
    "example.com/empty": "",
}
HOSTILE_LABELS = {"example.com/team": "a-b_c.D9", "app.kubernetes.io/instance": "someone-else"}


def blogsite(ca: Pebble, annotations: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "metadata": {"name": NAME, "annotations": annotations, "labels": HOSTILE_LABELS},
        "spec": {
            "domains": ["hostile.example"],
            "daedalus": {"image": "ghcr.io/example/daedalus:1"},
            "tls": {
                "acme": {
                    "server": ca.directory_url,
                    "email": "ops@hostile.example",
                    "caBundleSecretRef": {"name": "pebble-ca", "key": "ca.crt"},
                }
            },
        },
    }


def strings(value: object) -> list[str]:
    """Every string in a decoded JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*strings(list(value.keys())), *strings(list(value.values()))]
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return []


def serial(kubectl: Kubectl, namespace: str) -> str | None:
    """The serial of the issued certificate in NAME-tls (not a placeholder)."""
    info = issued_certificate(kubectl, namespace, NAME)
    return info.serial if info is not None else None


def ready(kubectl: Kubectl, namespace: str) -> bool:
    return conditions_true(kubectl, namespace, NAME, "Ready", "CertificateReady")


def test_the_longest_name_and_hostile_metadata_reach_nothing_they_should_not(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,  # noqa: F811 - the fixture imported above
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    trust_pebble(kubectl, namespace, pebble)
    kubectl.apply(blogsite(pebble, HOSTILE_ANNOTATIONS), namespace)
    first = wait_for(
        lambda: ready(kubectl, namespace) and serial(kubectl, namespace),
        timeout=90,
        what="the site Ready with an issued certificate",
    )
    # Every child exists under its full-length name, labelled as the
    # operator's, whatever the BlogSite's own labels say.
    for kind, suffix in (
        ("deployment", "frontend"),
        ("deployment", "daedalus"),
        ("deployment", "cert-refresh"),
        ("service", "frontend"),
        ("service", "daedalus"),
        ("service", "cert-refresh"),
        ("configmap", "acme-http01"),
    ):
        child = kubectl.json("get", kind, f"{NAME}-{suffix}", "-n", namespace)
        assert child["metadata"]["labels"]["app.kubernetes.io/instance"] == NAME

    # A new value of the renew annotation, however hostile, orders once more.
    again = {**HOSTILE_ANNOTATIONS, RENEW_ANNOTATION: "\n{again}\n"}
    kubectl.apply(blogsite(pebble, again), namespace)
    wait_for(
        lambda: ready(kubectl, namespace) and serial(kubectl, namespace) not in (None, first),
        timeout=90,
        what="a renewal for the new annotation value",
    )

    # None of the hostile text reaches nginx's configuration, an Event or the
    # status: every string in them, as stored (not JSON-escaped, where
    # "ünïcödé" and "\x07" could never match).
    configs = kubectl.json("get", "configmaps", "-n", namespace)["items"]
    events = kubectl.json("get", "events", "-n", namespace)["items"]
    status = kubectl.json("get", "blogsite", NAME, "-n", namespace)["status"]
    texts = [*strings([c.get("data") for c in configs]), *strings(events), *strings(status)]
    assert any("issued" in text.lower() for text in texts)  # the strings were read
    for text in texts:
        for piece in ("X-Injected", "owned", "ünïcödé", "{again}", "$(id)", "\x07"):
            assert piece not in text, (piece, text[:500])
    logs = operator_process.logs()
    issued = logs.count(f"[{namespace}/{NAME}] issued a certificate")
    assert issued == 2, issued  # the first order (the annotation was there at once) and one more
    assert "Traceback" not in logs, logs[-5000:]
