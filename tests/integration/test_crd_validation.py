"""The API server itself refuses bad BlogSites, naming the field and the problem.

Every case goes through real kubectl to the real kube-apiserver (structural
schema + CEL rules generated from the models).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Kubectl

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "b" * 64


def valid() -> dict[str, Any]:
    return {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "metadata": {"name": "site"},
        "spec": {
            "domains": ["blog.example.com", "www.blog.example.com"],
            "redirectDomains": ["old.example.com"],
            "daedalus": {"image": "ghcr.io/example/daedalus:1.0"},
        },
    }


def with_spec(**changes: Any) -> dict[str, Any]:
    site = valid()
    site["spec"].update(changes)
    return site


def with_daedalus(**changes: Any) -> dict[str, Any]:
    site = valid()
    site["spec"]["daedalus"].update(changes)
    return site


def with_frontend(**changes: Any) -> dict[str, Any]:
    site = valid()
    site["spec"]["frontend"] = changes
    return site


def with_domains(site: dict[str, Any], count: int) -> dict[str, Any]:
    site["spec"]["domains"] = [f"n{i}.example.com" for i in range(count)]
    return site


def with_tls(tls: Any) -> dict[str, Any]:
    return with_spec(tls=tls)


def named(name: str) -> dict[str, Any]:
    site = valid()
    site["metadata"]["name"] = name
    return site


def without(field: str) -> dict[str, Any]:
    site = valid()
    del site["spec"][field]
    return site


# (case id, object, substrings the rejection must contain)
INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    ("no-spec", {k: v for k, v in valid().items() if k != "spec"}, ["spec", "Required"]),
    ("no-domains", without("domains"), ["spec.domains", "Required"]),
    ("empty-domains", with_spec(domains=[]), ["spec.domains", "at least 1"]),
    ("uppercase-domain", with_spec(domains=["Blog.example.com"]), ["spec.domains[0]", "RFC 1123"]),
    ("wildcard-domain", with_spec(domains=["*.example.com"]), ["spec.domains[0]", "no wildcards"]),
    ("trailing-dot", with_spec(domains=["blog.example.com."]), ["spec.domains[0]", "RFC 1123"]),
    ("underscore", with_spec(domains=["my_blog.example.com"]), ["spec.domains[0]", "RFC 1123"]),
    ("label-too-long", with_spec(domains=["a" * 64 + ".com"]), ["spec.domains[0]", "RFC 1123"]),
    (
        "name-too-long",
        with_spec(domains=[("a" * 60 + ".") * 5 + "com"]),
        ["spec.domains[0]", "253"],
    ),
    ("duplicate-domain", with_spec(domains=["a.com", "a.com"]), ["spec.domains[1]", "Duplicate"]),
    (
        "domain-also-redirect",
        with_spec(redirectDomains=["blog.example.com"]),
        ["spec.redirectDomains", "domains or in redirectDomains, not both"],
    ),
    (
        "bad-redirect",
        with_spec(redirectDomains=["bad domain"]),
        ["spec.redirectDomains[0]", "RFC 1123"],
    ),
    (
        "over-100-names",
        with_spec(
            domains=[f"d{i}.example.com" for i in range(60)],
            redirectDomains=[f"r{i}.example.com" for i in range(41)],
        ),
        ["spec.domains: Invalid value", "at most 100 names"],
    ),
    ("no-image", with_daedalus(image=None), ["spec.daedalus.image", "Required"]),
    (
        "untagged-image",
        with_daedalus(image="ghcr.io/example/daedalus"),
        ["spec.daedalus.image", "tag or a digest"],
    ),
    (
        "latest-image",
        with_daedalus(image="ghcr.io/example/daedalus:latest"),
        ["spec.daedalus.image", ":latest"],
    ),
    (
        "malformed-image",
        with_daedalus(image="daedalus:1 --privileged"),
        ["spec.daedalus.image", "image reference"],
    ),
    ("port-zero", with_daedalus(port=0), ["spec.daedalus.port", "greater than or equal to 1"]),
    (
        "port-too-big",
        with_daedalus(port=70000),
        ["spec.daedalus.port", "less than or equal to 65535"],
    ),
    (
        "replicas-zero",
        with_daedalus(replicas=0),
        ["spec.daedalus.replicas", "greater than or equal to 1"],
    ),
    (
        "replicas-too-many",
        with_daedalus(replicas=500),
        ["spec.daedalus.replicas", "less than or equal to 50"],
    ),
    ("port-as-string", with_daedalus(port="http"), ["spec.daedalus.port", "integer"]),
    (
        "relative-health-path",
        with_daedalus(healthCheck={"path": "healthz"}),
        ["spec.daedalus.healthCheck.path", "absolute URL path"],
    ),
    (
        "health-path-injection",
        with_daedalus(healthCheck={"path": "/x; return 200"}),
        ["spec.daedalus.healthCheck.path", "absolute URL path"],
    ),
    (
        "env-without-value",
        with_daedalus(env=[{"name": "A"}]),
        ["spec.daedalus.env[0]", "exactly one of value or secretKeyRef"],
    ),
    (
        "env-bad-name",
        with_daedalus(env=[{"name": "1A", "value": "x"}]),
        ["spec.daedalus.env[0].name", "environment variable name"],
    ),
    (
        "env-duplicate",
        with_daedalus(env=[{"name": "A", "value": "x"}, {"name": "A", "value": "y"}]),
        ["spec.daedalus.env[1]", "Duplicate"],
    ),
    (
        "bad-quantity",
        with_daedalus(resources={"limits": {"memory": "lots"}}),
        ["spec.daedalus.resources.limits.memory", "quantity"],
    ),
    (
        "writable-path-with-dots",
        with_daedalus(writablePaths=["/var/../etc"]),
        ["spec.daedalus.writablePaths[0]", "absolute directory"],
    ),
    (
        "daedalus-as-root",
        with_daedalus(runAsUser=0),
        ["spec.daedalus.runAsUser", "greater than or equal to 1"],
    ),
    (
        "read-write-once-pod-with-two-replicas",
        with_daedalus(
            persistentVolume={
                "claimName": "c",
                "mountPath": "/data",
                "accessMode": "ReadWriteOncePod",
            }
        ),
        ["spec.daedalus.replicas", "replicas must be 1"],
    ),
    (
        "persistent-volume-also-writable",
        with_daedalus(
            writablePaths=["/data"], persistentVolume={"claimName": "c", "mountPath": "/data"}
        ),
        ["spec.daedalus.persistentVolume.mountPath", "also in writablePaths"],
    ),
    (
        "persistent-volume-access-mode-unknown",
        with_daedalus(
            persistentVolume={"claimName": "c", "mountPath": "/data", "accessMode": "ReadOnlyMany"}
        ),
        ["spec.daedalus.persistentVolume.accessMode", "Unsupported value"],
    ),
    (
        "pull-secret-not-a-name",
        with_daedalus(imagePullSecrets=["Registry Login"]),
        ["spec.daedalus.imagePullSecrets[0]", "Secret name"],
    ),
    (
        "bad-http-policy",
        with_frontend(http="sometimes"),
        ["spec.frontend.http", "Unsupported value"],
    ),
    ("redirect-without-tls", with_frontend(http="redirect"), ["spec.frontend.http", "needs tls"]),
    ("hsts-without-tls", with_frontend(hsts={}), ["spec.frontend.hsts", "needs tls"]),
    (
        "trusted-proxy-not-a-cidr",
        with_frontend(trustedProxies=["198.18.0.1"]),
        ["spec.frontend.trustedProxies", "CIDR"],
    ),
    (
        "proxy-protocol-without-trusted-proxies",
        with_frontend(proxyProtocol=True),
        ["spec.frontend.proxyProtocol", "needs trustedProxies"],
    ),
    (
        "gateway-without-name",
        with_frontend(gateway={"namespace": "gateway-system"}),
        ["spec.frontend.gateway.name", "Required value"],
    ),
    (
        "gateway-name-not-a-name",
        with_frontend(gateway={"name": "Shared Gateway"}),
        ["spec.frontend.gateway.name", "DNS subdomain"],
    ),
    (
        "gateway-namespace-not-a-namespace",
        with_frontend(gateway={"name": "shared", "namespace": "gateway.system"}),
        ["spec.frontend.gateway.namespace", "namespace name"],
    ),
    (
        "gateway-listener-not-a-name",
        with_frontend(gateway={"name": "shared", "tlsListener": "TLS_443"}),
        ["spec.frontend.gateway.tlsListener", "DNS subdomain"],
    ),
    (
        "gateway-with-local-traffic-policy-and-no-type",
        with_frontend(gateway={"name": "shared"}, service={"externalTrafficPolicy": "Local"}),
        ["spec.frontend.service", "need service.type"],
    ),
    (
        "gateway-with-seventeen-names",
        with_domains(with_frontend(gateway={"name": "shared"}), 17),
        ["spec.domains", "at most 16 names"],
    ),
    (
        "gateway-with-proxy-protocol",
        with_frontend(
            gateway={"name": "shared"}, trustedProxies=["198.18.0.0/15"], proxyProtocol=True
        ),
        ["spec.frontend.proxyProtocol", "cannot be used with gateway"],
    ),
    (
        "external-traffic-policy-on-cluster-ip",
        with_frontend(service={"type": "ClusterIP", "externalTrafficPolicy": "Local"}),
        ["spec.frontend.service.externalTrafficPolicy", "applies only to types"],
    ),
    (
        "hsts-max-age-past-two-years",
        with_frontend(hsts={"maxAgeSeconds": 63072001}),
        ["spec.frontend.hsts.maxAgeSeconds", "less than or equal to 63072000"],
    ),
    (
        "bad-service-type",
        with_frontend(service={"type": "ExternalName"}),
        ["spec.frontend.service.type", "Unsupported value"],
    ),
    (
        "bad-source-range",
        with_frontend(service={"loadBalancerSourceRanges": ["not-a-cidr"]}),
        ["spec.frontend.service.loadBalancerSourceRanges", "CIDR"],
    ),
    (
        "source-range-without-lb",
        with_frontend(service={"type": "ClusterIP", "loadBalancerSourceRanges": ["198.18.0.0/15"]}),
        ["spec.frontend.service.loadBalancerSourceRanges", "only to type LoadBalancer"],
    ),
    (
        "bad-annotation-key",
        with_frontend(service={"annotations": {"bad key!": "x"}}),
        ["spec.frontend.service.annotations", "annotation keys"],
    ),
    ("frontend-latest", with_frontend(image="nginx:latest"), ["spec.frontend.image", ":latest"]),
    ("tls-empty", with_tls({}), ["spec.tls", "exactly one of tls.acme"]),
    (
        "tls-both",
        with_tls({"secretName": "mine", "acme": {"email": "a@example.com"}}),
        ["spec.tls", "exactly one of tls.acme"],
    ),
    (
        "acme-bad-email",
        with_tls({"acme": {"email": "nobody"}}),
        ["spec.tls.acme.email", "email address"],
    ),
    (
        "acme-http-server",
        with_tls({"acme": {"email": "a@example.com", "server": "http://acme.example.com/dir"}}),
        ["spec.tls.acme.server", "https:// ACME directory URL"],
    ),
    (
        "acme-http-fallback",
        with_tls({"acme": {"fallback": [{"server": "http://acme.example.com/dir"}]}}),
        ["spec.tls.acme.fallback[0].server", "https:// ACME directory URL"],
    ),
    (
        "acme-fallback-same-server",
        with_tls(
            {
                "acme": {
                    "server": "https://acme.example.com/dir",
                    "fallback": [{"server": "https://acme.example.com/dir"}],
                }
            }
        ),
        ["spec.tls.acme.fallback", "differ from tls.acme.server"],
    ),
    (
        "acme-fallback-twice",
        with_tls(
            {
                "acme": {
                    "fallback": [
                        {"server": "https://acme.example.com/dir"},
                        {"server": "https://acme.example.com/dir"},
                    ],
                }
            }
        ),
        ["spec.tls.acme.fallback", "the other fallbacks"],
    ),
    (
        "acme-bad-key",
        with_tls({"acme": {"email": "a@example.com", "keyAlgorithm": "DSA"}}),
        ["spec.tls.acme.keyAlgorithm", "Unsupported value"],
    ),
    (
        "bad-secret-name",
        with_tls({"secretName": "Not_Valid"}),
        ["spec.tls.secretName", "Secret name"],
    ),
    (
        "rollout-timeout",
        with_spec(rollout={"readyTimeoutSeconds": 1}),
        ["spec.rollout.readyTimeoutSeconds", "greater than or equal to 10"],
    ),
    ("unknown-field", with_spec(colour="blue"), ['unknown field "spec.colour"']),
    ("site-name-too-long", named("a" * 51), ["at most 50 characters"]),
    ("site-name-digit", named("1blog"), ["starting with a letter"]),
]


@pytest.mark.parametrize(("case", "site", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_blogsite_is_rejected(
    kubectl: Kubectl, namespace: str, case: str, site: dict[str, Any], expected: list[str]
) -> None:
    site = copy.deepcopy(site)
    if site.get("spec", {}).get("daedalus", {}).get("image", "") is None:
        del site["spec"]["daedalus"]["image"]
    result = kubectl.run(
        "create",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        "-",
        stdin=yaml.safe_dump(site),
        check=False,
    )
    assert result.returncode != 0, f"{case} was accepted"
    for text in expected:
        assert text in result.stderr, f"{case}: {text!r} not in:\n{result.stderr}"
    assert not kubectl.exists("blogsite", site["metadata"]["name"], namespace)


def test_at_least_25_distinct_rejections() -> None:
    assert len({case for case, _, _ in INVALID}) >= 25


def test_an_acme_site_needs_no_email(kubectl: Kubectl, namespace: str) -> None:
    """Let's Encrypt sends no expiry e-mail any more: the contact is optional."""
    site = with_tls({"acme": {"server": "letsencrypt-staging"}})
    body = yaml.safe_dump(site)
    kubectl.run("create", "--dry-run=server", "-n", namespace, "-f", "-", stdin=body)


def test_examples_are_accepted(kubectl: Kubectl, namespace: str) -> None:
    examples = sorted((ROOT / "deploy" / "examples").glob("**/*.yaml"))
    assert examples
    for example in examples:
        documents = list(yaml.safe_load_all(example.read_text(encoding="utf-8")))
        for document in documents:
            document["metadata"].pop("namespace", None)  # into the test's own
        result = kubectl.run(
            "create",
            "--validate=strict",
            "-n",
            namespace,
            "-f",
            "-",
            stdin=yaml.safe_dump_all(documents),
            check=False,
        )
        assert result.returncode == 0, f"{example.name}: {result.stderr}"


def test_defaults_are_applied_by_the_api_server(kubectl: Kubectl, namespace: str) -> None:
    kubectl.run("create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(valid()))
    spec = kubectl.json("get", "blogsite", "site", "-n", namespace)["spec"]
    assert spec["daedalus"]["port"] == 8080
    assert spec["daedalus"]["replicas"] == 2


def test_kubectl_explain_describes_fields(kubectl: Kubectl) -> None:
    result = kubectl.run("explain", "blogsite.spec.daedalus.image")
    assert "':latest' is refused" in result.stdout
    result = kubectl.run("explain", "blogsite.spec.tls")
    assert "plain HTTP only" in result.stdout
