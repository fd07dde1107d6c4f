"""The metrics' pure parts: per-site series from status, bounded labels."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from blogsite_operator.metrics import Metrics, acme_endpoint, verb_of

STATUS = {
    "certificate": {
        "notBefore": "2026-10-03T00:00:00Z",
        "notAfter": "2027-01-01T00:00:00Z",
        "renewalTime": "2026-12-02T00:00:00Z",
    },
    "conditions": [
        {"type": "Ready", "status": "True"},
        {"type": "CertificateReady", "status": "False"},
        {"type": "RolloutHealthy", "status": "False"},
    ],
    "components": {
        "daedalus": {"version": "v1", "lastGoodVersion": "v1", "failedVersion": "v2"},
        "frontend": {"version": "f2", "lastGoodVersion": "f2"},
    },
}


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = metrics.expose().decode()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_a_sites_certificate_and_conditions_become_series() -> None:
    metrics = Metrics()
    metrics.observe_site("blogs", "lethain", STATUS)
    site = (("name", "lethain"), ("namespace", "blogs"))
    assert samples(metrics, "blogsite_certificate_expiration_timestamp_seconds") == {
        site: 1798761600.0
    }
    assert samples(metrics, "blogsite_certificate_renewal_timestamp_seconds") == {
        site: 1796169600.0
    }
    # notBefore: with the expiration, the lifetime the alerts measure in.
    assert samples(metrics, "blogsite_certificate_issued_timestamp_seconds") == {site: 1790985600.0}
    ready = samples(metrics, "blogsite_certificate_ready_status")
    assert ready == {
        tuple(sorted((*site, ("condition", value)))): float(value == "False")
        for value in ("True", "False", "Unknown")
    }
    conditions = samples(metrics, "blogsite_site_condition")
    assert conditions[tuple(sorted((*site, ("type", "Ready"), ("status", "True"))))] == 1.0
    assert conditions[tuple(sorted((*site, ("type", "Ready"), ("status", "False"))))] == 0.0
    assert len(conditions) == 3 * 3
    reverted = samples(metrics, "blogsite_rollout_reverted_status")
    assert reverted == {
        tuple(sorted((*site, ("component", "daedalus")))): 1.0,
        tuple(sorted((*site, ("component", "frontend")))): 0.0,
    }


def test_a_deleted_site_leaves_no_series_and_others_stay() -> None:
    metrics = Metrics()
    metrics.observe_site("blogs", "lethain", STATUS)
    metrics.observe_site("blogs", "other", STATUS)
    metrics.forget_site("blogs", "lethain")
    for name in (
        "blogsite_certificate_expiration_timestamp_seconds",
        "blogsite_certificate_issued_timestamp_seconds",
        "blogsite_certificate_ready_status",
        "blogsite_site_condition",
        "blogsite_rollout_reverted_status",
    ):
        names = {dict(labels)["name"] for labels in samples(metrics, name)}
        assert names == {"other"}, name


def test_a_site_without_a_certificate_has_no_certificate_series() -> None:
    metrics = Metrics()
    metrics.observe_site("blogs", "lethain", STATUS)
    metrics.observe_site("blogs", "lethain", {"conditions": [{"type": "Ready", "status": "True"}]})
    assert samples(metrics, "blogsite_certificate_expiration_timestamp_seconds") == {}
    assert samples(metrics, "blogsite_certificate_ready_status") == {}


DIRECTORY = {
    "directory": "https://ca.test/dir",
    "newNonce": "https://ca.test/nonce-plz",
    "newOrder": "https://ca.test/order-plz",
    "renewalInfo": "https://ca.test/draft-ietf-acme-ari-03/renewalInfo",
}


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://ca.test/nonce-plz", "newNonce"),
        ("https://ca.test/order-plz", "newOrder"),
        ("https://ca.test/dir", "directory"),
        ("https://ca.test/authZ/abc", "authorization"),
        ("https://ca.test/chalZ/abc", "challenge"),
        ("https://ca.test/finalize-order/abc", "finalize"),
        ("https://ca.test/certZ/abc", "certificate"),
        ("https://ca.test/my-order/abc", "order"),
        ("https://ca.test/my-account/1", "account"),
        ("https://ca.test/draft-ietf-acme-ari-03/renewalInfo/abc.def", "renewalInfo"),
        ("https://ca.test/something/else", "other"),
    ],
)
def test_acme_urls_get_a_bounded_endpoint_name(url: str, endpoint: str) -> None:
    assert acme_endpoint(url, DIRECTORY) == endpoint


@pytest.mark.parametrize(
    ("method", "path", "query", "verb"),
    [
        ("GET", "/api/v1/namespaces/ns/pods", None, "list"),
        ("GET", "/api/v1/namespaces/ns/pods/p", None, "get"),
        ("GET", "/api/v1/pods", None, "list"),
        ("GET", "/apis/apps/v1/namespaces/ns/deployments", [("watch", "true")], "watch"),
        ("GET", "/apis/apps/v1/namespaces/ns/deployments/d", None, "get"),
        ("GET", "/apis/blog.daedalus.dev/v1alpha1/blogsites", None, "list"),
        ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/d", None, "patch"),
        ("POST", "/api/v1/namespaces/ns/events", None, "create"),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l", None, "update"),
        ("DELETE", "/api/v1/namespaces/ns/configmaps/c", None, "delete"),
    ],
)
def test_api_requests_are_named_by_client_go_verbs(
    method: str, path: str, query: list[tuple[str, str]] | None, verb: str
) -> None:
    assert verb_of(method, path, query) == verb


def test_a_condition_the_site_no_longer_has_leaves_no_series() -> None:
    metrics = Metrics()
    metrics.observe_site("blogs", "lethain", STATUS)
    without_tls = {"conditions": [{"type": "Ready", "status": "True"}]}
    metrics.observe_site("blogs", "lethain", without_tls)
    types = {dict(labels)["type"] for labels in samples(metrics, "blogsite_site_condition")}
    assert types == {"Ready"}


def test_a_placeholder_is_a_series_of_its_own_and_has_no_expiry() -> None:
    metrics = Metrics()
    placeholder = {"certificate": {"notAfter": "2027-03-01T00:00:00Z", "placeholder": True}}
    metrics.observe_site("blogs", "new", placeholder)
    site = (("name", "new"), ("namespace", "blogs"))
    assert samples(metrics, "blogsite_certificate_placeholder_status") == {site: 1.0}
    assert samples(metrics, "blogsite_certificate_expiration_timestamp_seconds") == {}
    metrics.observe_site("blogs", "new", STATUS)
    assert samples(metrics, "blogsite_certificate_placeholder_status") == {site: 0.0}
    assert samples(metrics, "blogsite_certificate_expiration_timestamp_seconds") == {
        site: 1798761600.0
    }


def test_which_ca_issued_is_a_series_only_for_the_certificate_served() -> None:
    metrics = Metrics()
    certificate: dict[str, Any] = {
        "notBefore": "2026-10-03T00:00:00Z",
        "notAfter": "2027-01-01T00:00:00Z",
        "serialNumber": "abc",
        "issuedBy": {"server": "https://b.test/dir", "serialNumber": "abc", "fallback": 1},
    }
    metrics.observe_site("blogs", "lethain", {**STATUS, "certificate": certificate})
    site = (("name", "lethain"), ("namespace", "blogs"))
    assert samples(metrics, "blogsite_certificate_fallback_index") == {site: 1.0}
    # The frontend still serves an older certificate than the one ordered last.
    older = {**certificate, "serialNumber": "0ld"}
    metrics.observe_site("blogs", "lethain", {**STATUS, "certificate": older})
    assert samples(metrics, "blogsite_certificate_fallback_index") == {}
    metrics.observe_site("blogs", "lethain", {**STATUS, "certificate": certificate})
    metrics.forget_site("blogs", "lethain")
    assert samples(metrics, "blogsite_certificate_fallback_index") == {}
